//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`) from the real encoders:
//! a handful of valid inputs per target, and a few edge cases. Run from the repository root:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml -p strand-fuzz-seeds
//!
//! Files are named after what they hold, so rerunning rewrites the same files; inputs the
//! fuzzer found (crashes kept as regressions) live beside them under other names.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{self as k, ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Encodable, StrBytes};
use serde_json::json;
use strand_client::batch::BatchBuilder;
use strand_client::native::messages::{
    AclBinding, AclBindingFilter, GroupInfo, GroupMember, GroupOffset, OffsetEntry,
};
use strand_client::native::{
    Acks, ErrorCode, OffsetQuery, PartitionState, Push, Request, Response, ResponseBody,
    TopicDescription, TopicSettings,
};

fn main() {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    native(&root.join("native_frames"));
    kafka(&root.join("kafka_request"));
    batches(&root.join("record_batch"));
    sagas(&root.join("saga_definition"));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("corpus folder");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed written");
}

/// Uncompressed batches as the producer builds them.
fn sample_batches() -> Vec<(&'static str, Vec<u8>)> {
    let mut b = BatchBuilder::new();
    b.push(1_700_000_000_000, None, Some(b"hello"), &[]);
    let one = b.finish();
    let mut b = BatchBuilder::new();
    b.push(
        1_700_000_000_000,
        Some(b"k1"),
        Some(b"v1"),
        &[(b"h", Some(b"x"))],
    );
    b.push(1_700_000_000_005, Some(b"k2"), None, &[]);
    b.push(
        1_700_000_000_009,
        None,
        Some(b""),
        &[(b"a", None), (b"b", Some(b""))],
    );
    let three = b.finish();
    vec![("one-record", one), ("three-records", three)]
}

/// Allow User:alice to Read the topic `orders` from any host, with Kafka's codes.
fn seed_acl() -> AclBinding {
    AclBinding {
        resource_type: 2,
        resource_name: "orders".into(),
        pattern_type: 3,
        principal: "User:alice".into(),
        host: "*".into(),
        operation: 3,
        permission: 3,
    }
}

fn native(dir: &Path) {
    let (_, batch) = sample_batches().remove(1);
    let offsets = vec![OffsetEntry {
        topic: "orders".into(),
        partition: 0,
        offset: 42,
        metadata: "m".into(),
    }];
    let requests = [
        (
            "handshake",
            Request::Handshake {
                client: "strand-cli".into(),
                versions: vec![(0, 0, 0), (5, 0, 0)],
            },
        ),
        (
            "create-topic",
            Request::CreateTopic {
                name: "orders".into(),
                settings: TopicSettings {
                    partitions: 3,
                    compact: true,
                    retention_ms: Some(60_000),
                    retention_bytes: None,
                    segment_bytes: Some(1 << 20),
                },
            },
        ),
        (
            "delete-topic",
            Request::DeleteTopic {
                name: "orders".into(),
            },
        ),
        ("list-topics", Request::ListTopics),
        (
            "describe-topic",
            Request::DescribeTopic {
                name: "orders".into(),
            },
        ),
        (
            "produce",
            Request::Produce {
                topic: "orders".into(),
                partition: 1,
                acks: Acks::Durable,
                records: Bytes::from(batch.clone()),
            },
        ),
        (
            "fetch",
            Request::Fetch {
                topic: "orders".into(),
                partition: 0,
                offset: 7,
                max_bytes: 1 << 20,
                max_wait_ms: 500,
            },
        ),
        (
            "list-offsets",
            Request::ListOffsets {
                topic: "orders".into(),
                partition: 0,
                query: OffsetQuery::Timestamp(1_700_000_000_000),
            },
        ),
        (
            "subscribe",
            Request::Subscribe {
                topic: "orders".into(),
                partition: 0,
                offset: 0,
                credit_bytes: 65_536,
            },
        ),
        (
            "add-credit",
            Request::AddCredit {
                subscription: 3,
                credit_bytes: 4096,
            },
        ),
        ("unsubscribe", Request::Unsubscribe { subscription: 3 }),
        (
            "join-group",
            Request::JoinGroup {
                group: "billing".into(),
                member_id: String::new(),
                client_id: "c".into(),
                topics: vec!["orders".into(), "refunds".into()],
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 30_000,
                assignor: "range".into(),
            },
        ),
        (
            "heartbeat",
            Request::Heartbeat {
                group: "billing".into(),
                member_id: "m-1".into(),
                generation: 2,
            },
        ),
        (
            "leave-group",
            Request::LeaveGroup {
                group: "billing".into(),
                member_id: "m-1".into(),
            },
        ),
        (
            "offset-commit",
            Request::OffsetCommit {
                group: "billing".into(),
                member_id: "m-1".into(),
                generation: 2,
                offsets: offsets.clone(),
            },
        ),
        (
            "offset-fetch",
            Request::OffsetFetch {
                group: "billing".into(),
                partitions: vec![("orders".into(), 0), ("orders".into(), 1)],
            },
        ),
        ("list-groups", Request::ListGroups),
        (
            "describe-group",
            Request::DescribeGroup {
                group: "billing".into(),
            },
        ),
        (
            "create-acls",
            Request::CreateAcls {
                bindings: vec![seed_acl()],
            },
        ),
        (
            "describe-acls",
            Request::DescribeAcls {
                filter: AclBindingFilter {
                    resource_name: Some("orders".into()),
                    pattern_type: 2,
                    ..AclBindingFilter::any()
                },
            },
        ),
        (
            "delete-acls",
            Request::DeleteAcls {
                filters: vec![AclBindingFilter::any()],
            },
        ),
    ];
    let mut all = vec![0u8];
    for (i, (name, request)) in requests.iter().enumerate() {
        let mut buf = BytesMut::new();
        buf.put_u8(0); // client to broker
        request.encode(i as u32 + 1, &mut buf);
        write(dir, &format!("request-{name}"), &buf);
        all.extend_from_slice(&buf[1..]);
    }
    write(dir, "requests-pipelined", &all);
    // Edge cases: an unknown request kind, a version nobody speaks, a frame cut short.
    write(
        dir,
        "request-unknown-kind",
        &[0, 0, 0, 0, 8, 0, 99, 0, 0, 0, 0, 0, 1],
    );
    write(
        dir,
        "request-unknown-version",
        &[0, 0, 0, 0, 8, 0, 3, 0, 7, 0, 0, 0, 1],
    );
    write(
        dir,
        "request-truncated",
        &[0, 0, 0, 0, 20, 0, 1, 0, 0, 0, 0, 0, 1, 0],
    );

    // Server to client: the first byte is 1 + 2 * (the request kind's index in ApiKey::ALL).
    let topic = TopicDescription {
        name: "orders".into(),
        compact: false,
        retention_ms: -1,
        retention_bytes: -1,
        partitions: vec![PartitionState {
            partition: 0,
            log_start_offset: 0,
            high_watermark: 3,
        }],
    };
    let responses = [
        (
            0u8,
            "handshake",
            Response::Ok(ResponseBody::Handshake {
                server: "strand".into(),
                versions: vec![(0, 0, 0)],
                frame_bytes_max: 8 << 20,
                in_flight_max: 64,
            }),
        ),
        (
            3,
            "list-topics",
            Response::Ok(ResponseBody::Topics(vec![topic.clone()])),
        ),
        (
            4,
            "describe-topic",
            Response::Ok(ResponseBody::Topic(topic)),
        ),
        (
            5,
            "produce",
            Response::Ok(ResponseBody::Produced {
                base_offset: 4,
                last_offset: 6,
            }),
        ),
        (
            6,
            "fetch",
            Response::Ok(ResponseBody::Fetched {
                high_watermark: 3,
                log_start_offset: 0,
                records: Bytes::from(batch.clone()),
            }),
        ),
        (
            7,
            "list-offsets",
            Response::Ok(ResponseBody::Offset(Some(9))),
        ),
        (
            11,
            "join-group",
            Response::Ok(ResponseBody::Joined {
                member_id: "m-1".into(),
                generation: 2,
                assignment: vec![("orders".into(), 0)],
            }),
        ),
        (
            15,
            "offset-fetch",
            Response::Ok(ResponseBody::Committed(vec![
                Some(offsets[0].clone()),
                None,
            ])),
        ),
        (
            16,
            "list-groups",
            Response::Ok(ResponseBody::Groups(vec!["billing".into()])),
        ),
        (
            17,
            "describe-group",
            Response::Ok(ResponseBody::Group(GroupInfo {
                group: "billing".into(),
                state: "stable".into(),
                generation: 2,
                assignor: "range".into(),
                members: vec![GroupMember {
                    member_id: "m-1".into(),
                    client_id: "c".into(),
                    assignment: vec![("orders".into(), 0)],
                }],
                offsets: vec![GroupOffset {
                    topic: "orders".into(),
                    partition: 0,
                    offset: 2,
                    lag: 1,
                }],
            })),
        ),
        (
            19,
            "describe-acls",
            Response::Ok(ResponseBody::Acls(vec![seed_acl()])),
        ),
        (
            1,
            "error",
            Response::error(ErrorCode::TopicAlreadyExists, "topic \"orders\" exists"),
        ),
    ];
    for (key_idx, name, response) in responses {
        let mut buf = BytesMut::new();
        buf.put_u8(1 + 2 * key_idx);
        response.encode(7, &mut buf);
        write(dir, &format!("response-{name}"), &buf);
    }
    let mut buf = BytesMut::new();
    buf.put_u8(1 + 2 * 8); // pushes belong to Subscribe
    Push {
        high_watermark: 3,
        records: Bytes::from(batch),
    }
    .encode(1, &mut buf);
    write(dir, "push", &buf);
}

/// The request kinds the Kafka listener serves, each in every version it accepts with default
/// fields, and a few with real content.
fn kafka(dir: &Path) {
    let name = |s: &'static str| StrBytes::from_static_str(s);
    let (_, batch) = sample_batches().remove(1);
    for (key, min, max) in strand_broker::kafka::SUPPORTED {
        // Produce v0-v2 (legacy message sets) are advertised but refused.
        let min = if key == ApiKey::Produce { min.max(3) } else { min };
        // One seed per version at both ends and the middle keeps the corpus small.
        let mut versions = vec![min, (min + max) / 2, max];
        versions.dedup();
        for version in versions {
            let request = match key {
                ApiKey::Produce => {
                    use k::produce_request::{PartitionProduceData, TopicProduceData};
                    RequestKind::Produce(
                        k::ProduceRequest::default()
                            .with_acks(-1)
                            .with_timeout_ms(30_000)
                            .with_topic_data(vec![TopicProduceData::default()
                                .with_name(name("orders").into())
                                .with_partition_data(vec![PartitionProduceData::default()
                                    .with_index(0)
                                    .with_records(Some(Bytes::from(batch.clone())))])]),
                    )
                }
                ApiKey::Fetch => {
                    use k::fetch_request::{FetchPartition, FetchTopic};
                    RequestKind::Fetch(
                        k::FetchRequest::default()
                            .with_max_wait_ms(500)
                            .with_max_bytes(1 << 20)
                            .with_topics(vec![FetchTopic::default()
                                .with_topic(name("orders").into())
                                .with_partitions(vec![FetchPartition::default()
                                    .with_partition(0)
                                    .with_fetch_offset(7)
                                    .with_partition_max_bytes(1 << 20)])]),
                    )
                }
                ApiKey::ListOffsets => RequestKind::ListOffsets(k::ListOffsetsRequest::default()),
                ApiKey::Metadata => {
                    use k::metadata_request::MetadataRequestTopic;
                    RequestKind::Metadata(k::MetadataRequest::default().with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(name("orders").into())),
                    ])))
                }
                ApiKey::OffsetCommit => {
                    use k::offset_commit_request::{
                        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
                    };
                    RequestKind::OffsetCommit(
                        k::OffsetCommitRequest::default()
                            .with_group_id(name("billing").into())
                            .with_topics(vec![OffsetCommitRequestTopic::default()
                                .with_name(name("orders").into())
                                .with_partitions(vec![OffsetCommitRequestPartition::default()
                                    .with_committed_offset(42)])]),
                    )
                }
                ApiKey::OffsetFetch => RequestKind::OffsetFetch(
                    k::OffsetFetchRequest::default().with_group_id(name("billing").into()),
                ),
                ApiKey::FindCoordinator => RequestKind::FindCoordinator(
                    k::FindCoordinatorRequest::default().with_key(name("billing")),
                ),
                ApiKey::JoinGroup => {
                    use k::join_group_request::JoinGroupRequestProtocol;
                    RequestKind::JoinGroup(
                        k::JoinGroupRequest::default()
                            .with_group_id(name("billing").into())
                            .with_session_timeout_ms(10_000)
                            .with_rebalance_timeout_ms(30_000)
                            .with_protocol_type(name("consumer"))
                            .with_protocols(vec![JoinGroupRequestProtocol::default()
                                .with_name(name("range"))
                                .with_metadata(Bytes::from_static(
                                    b"\x00\x01\x00\x00\x00\x01\x00\x06orders\xff\xff\xff\xff",
                                ))]),
                    )
                }
                ApiKey::Heartbeat => RequestKind::Heartbeat(
                    k::HeartbeatRequest::default().with_group_id(name("billing").into()),
                ),
                ApiKey::LeaveGroup => RequestKind::LeaveGroup(
                    k::LeaveGroupRequest::default().with_group_id(name("billing").into()),
                ),
                ApiKey::SyncGroup => RequestKind::SyncGroup(
                    k::SyncGroupRequest::default().with_group_id(name("billing").into()),
                ),
                ApiKey::DescribeGroups => RequestKind::DescribeGroups(
                    k::DescribeGroupsRequest::default().with_groups(vec![name("billing").into()]),
                ),
                ApiKey::ListGroups => RequestKind::ListGroups(k::ListGroupsRequest::default()),
                ApiKey::ApiVersions => RequestKind::ApiVersions(
                    k::ApiVersionsRequest::default()
                        .with_client_software_name(name("librdkafka"))
                        .with_client_software_version(name("2.11.0")),
                ),
                ApiKey::CreateTopics => {
                    use k::create_topics_request::CreatableTopic;
                    RequestKind::CreateTopics(
                        k::CreateTopicsRequest::default()
                            .with_timeout_ms(5_000)
                            .with_topics(vec![CreatableTopic::default()
                                .with_name(name("orders").into())
                                .with_num_partitions(3)
                                .with_replication_factor(1)]),
                    )
                }
                ApiKey::DeleteTopics => RequestKind::DeleteTopics(
                    k::DeleteTopicsRequest::default().with_topic_names(vec![name("orders").into()]),
                ),
                ApiKey::InitProducerId => RequestKind::InitProducerId(
                    k::InitProducerIdRequest::default().with_transaction_timeout_ms(60_000),
                ),
                ApiKey::DescribeCluster => {
                    RequestKind::DescribeCluster(k::DescribeClusterRequest::default())
                }
                ApiKey::SaslHandshake => RequestKind::SaslHandshake(
                    k::SaslHandshakeRequest::default().with_mechanism(name("PLAIN")),
                ),
                ApiKey::CreateAcls => {
                    use k::create_acls_request::AclCreation;
                    RequestKind::CreateAcls(k::CreateAclsRequest::default().with_creations(vec![
                        AclCreation::default()
                            .with_resource_type(2)
                            .with_resource_name(name("orders"))
                            .with_resource_pattern_type(3)
                            .with_principal(name("User:alice"))
                            .with_host(name("*"))
                            .with_operation(3)
                            .with_permission_type(3),
                    ]))
                }
                ApiKey::DescribeAcls => RequestKind::DescribeAcls(
                    k::DescribeAclsRequest::default()
                        .with_resource_type_filter(1)
                        .with_resource_name_filter(None)
                        .with_pattern_type_filter(1)
                        .with_principal_filter(None)
                        .with_host_filter(None)
                        .with_operation(1)
                        .with_permission_type(1),
                ),
                ApiKey::DeleteAcls => {
                    use k::delete_acls_request::DeleteAclsFilter;
                    RequestKind::DeleteAcls(k::DeleteAclsRequest::default().with_filters(vec![
                        DeleteAclsFilter::default()
                            .with_resource_type_filter(2)
                            .with_resource_name_filter(Some(name("orders")))
                            .with_pattern_type_filter(2)
                            .with_principal_filter(None)
                            .with_host_filter(None)
                            .with_operation(1)
                            .with_permission_type(1),
                    ]))
                }
                _ => unreachable!("only the kinds listed"),
            };
            let mut buf = BytesMut::new();
            let header = RequestHeader::default()
                .with_request_api_key(key as i16)
                .with_request_api_version(version)
                .with_correlation_id(7)
                .with_client_id(Some(name("rdkafka")));
            header
                .encode(&mut buf, key.request_header_version(version))
                .expect("header encodes");
            // Some versions cannot carry some of the fields set above; those are left out.
            if request.encode(&mut buf, version).is_ok() {
                write(dir, &format!("{key:?}-v{version}"), &buf);
            }
        }
    }
    // The hostile array length that once aborted the broker (see broker/src/alloc.rs).
    let mut b = BytesMut::new();
    b.put_i16(11);
    b.put_i16(0);
    b.put_i32(7);
    b.put_i16(1);
    b.put_slice(b"c");
    b.put_i16(1);
    b.put_slice(b"g");
    b.put_i32(10_000);
    b.put_i16(0);
    b.put_i16(8);
    b.put_slice(b"consumer");
    b.put_i32(i32::MAX);
    write(dir, "JoinGroup-v0-hostile-array-length", &b);
    // ApiVersions newer than the listener speaks: the v0 fallback.
    write(
        dir,
        "ApiVersions-v9-fallback",
        &[0, 18, 0, 9, 0, 0, 0, 7, 0, 0, 0],
    );
}

fn batches(dir: &Path) {
    for (name, batch) in sample_batches() {
        write(dir, name, &batch);
        // The same batch marked gzip: its records are not walked, the counts still checked.
        let mut gzip = batch.clone();
        gzip[22] |= 1;
        let crc = crc32c(&gzip[21..]);
        gzip[17..21].copy_from_slice(&crc.to_be_bytes());
        write(dir, &format!("{name}-gzip"), &gzip);
        // Two batches back to back, as a fetch returns them.
        write(
            dir,
            &format!("{name}-twice"),
            &[batch.clone(), batch].concat(),
        );
    }
    write(dir, "header-only", &sample_batches()[0].1[..61]);
}

/// CRC-32C (Castagnoli), bit by bit: enough for a few seeds.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn sagas(dir: &Path) {
    let http = |url: &str| json!({"type": "http", "url": url});
    let order = json!({
        "description": "order, charge, ship, notify",
        "deadline_ms": 60_000,
        "steps": [
            {"name": "order", "action": http("http://o/orders"), "compensation": http("http://o/cancel/{{ steps.order.output.id }}")},
            {"name": "charge", "timeout_ms": 2_000,
             "retry": {"max_attempts": 5, "initial_backoff_ms": 50, "max_backoff_ms": 1_000, "multiplier": 2.0, "jitter": 0.1},
             "action": {"type": "http", "method": "PUT", "url": "http://p/charge", "headers": {"x-order": "{{ input.order_id }}"},
                "body": {"order": "{{ steps.order.output.id }}", "amount": "{{ input.amount }}", "note": "for {{ input.customer.name | upper }}"}},
             "compensation": {"type": "http", "url": "http://p/refund",
                "body": {"payment": "{{ steps.charge.output.id }}", "saga": "{{ saga_id }}"}}},
            {"name": "ship", "kind": "pivot", "action": {"type": "broker", "topic": "ship", "reply_topic": "ship-replies",
                "body": {"items": "{{ input.items }}", "first": "{% for i in input.items %}{{ i }},{% endfor %}"}}},
            {"name": "notify", "kind": "retriable", "action": {"type": "broker", "topic": "mail", "reply_topic": "mail-replies"}}
        ],
        "trigger": {"topic": "orders", "group": "sagas", "idempotency_field": "order_id"},
        "outcome_topic": "saga-outcomes"
    });
    let one = json!({"steps": [{"name": "a", "kind": "pivot", "action": http("http://a/{{ input.x }}")}]});
    let invalid = json!({"steps": [
        {"name": "", "kind": "retriable", "action": http("ftp://x"), "compensation": http("http://y/{{ steps.zz.output }}")},
        {"name": "b", "kind": "pivot", "timeout_ms": 0, "action": {"type": "broker", "topic": "", "reply_topic": "r", "body": "{{ input.x"}}
    ]});
    let input =
        json!({"order_id": 42, "amount": 12.5, "customer": {"name": "Ada"}, "items": [1, 2, 3]});
    write(dir, "order", order.to_string().as_bytes());
    write(
        dir,
        "order-with-input",
        &[
            order.to_string().as_bytes(),
            b"\0",
            input.to_string().as_bytes(),
        ]
        .concat(),
    );
    write(dir, "one-pivot", one.to_string().as_bytes());
    write(dir, "invalid", invalid.to_string().as_bytes());
}
