//! The real `strand-broker` binary under clients that mean harm and data it did not expect: the
//! offsets topic is the broker's own, whatever is in its log the broker starts, limits refuse
//! what would exhaust it, and no client can fence another's producer id.

use bytes::Bytes;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    InitProducerIdRequest, InitProducerIdResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, TimestampType};
use strand_broker::log::{Log, LogConfig};
use strand_client::native::messages::OffsetEntry;
use strand_client::native::{ErrorCode, OffsetQuery, Request, ResponseBody};
use strand_client::{Acks, Client, TopicSettings};
use tokio::net::TcpStream;

use super::broker_process::{client, start_broker, start_broker_with, stop, BrokerProcess};
use super::kafka_clients::{idempotent_batch, kafka_call};
use super::support::{batch, encode_batch, values};

const OFFSETS: &str = "__consumer_offsets";

// Kafka error codes the tests expect.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const INVALID_PARTITIONS: i16 = 37;
const POLICY_VIOLATION: i16 = 44;
const INVALID_PRODUCER_EPOCH: i16 = 47;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

async fn create(
    c: &Client,
    topic: &str,
    partitions: u32,
) -> Result<(), strand_client::ClientError> {
    c.admin()
        .create_topic(
            topic,
            TopicSettings {
                partitions,
                ..TopicSettings::default()
            },
        )
        .await
}

async fn commit(c: &Client, group: &str, offset: u64) {
    let request = Request::OffsetCommit {
        group: group.into(),
        member_id: String::new(),
        generation: 0,
        offsets: vec![OffsetEntry {
            topic: "t".into(),
            partition: 0,
            offset,
            metadata: format!("{group}-meta"),
        }],
    };
    c.request(request).await.unwrap();
}

/// The group's committed offset and metadata on `t`/0, if any.
async fn committed(c: &Client, group: &str) -> Option<(u64, String)> {
    let request = Request::OffsetFetch {
        group: group.into(),
        partitions: vec![("t".into(), 0)],
    };
    match c.request(request).await.unwrap() {
        ResponseBody::Committed(mut entries) => entries
            .remove(0)
            .map(|entry| (entry.offset, entry.metadata)),
        other => panic!("{other:?}"),
    }
}

async fn latest(c: &Client, topic: &str) -> u64 {
    c.admin()
        .list_offset(topic, 0, OffsetQuery::Latest)
        .await
        .unwrap()
        .unwrap()
}

/// 200 compressible records, as `kcat -P -z gzip` sends them: nothing like a commit.
fn kcat_like_batch(compression: Compression) -> Bytes {
    let records: Vec<Record> = (0..200)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!(
                "line {i} aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            ))),
            headers: IndexMap::new(),
            delete_horizon: false,
        })
        .collect();
    encode_batch(&records, compression)
}

/// One Produce v7 (acks=all) of `records` to `topic`/0 over the Kafka listener: the error code.
async fn kafka_produce(broker: &BrokerProcess, topic: &str, records: Bytes) -> i16 {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    let response: ProduceResponse = kafka_call(&mut socket, ApiKey::Produce, 7, &request).await;
    response.responses[0].partition_responses[0].error_code
}

/// `kcat -P -t __consumer_offsets -z gzip` and its native equivalents are refused, and so are
/// deleting and creating the topic; reading it stays allowed; nothing changes, and the broker
/// restarts with its commits. A `__saga_*` topic stays an ordinary, writable topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_can_read_the_offsets_topic_but_not_write_or_delete_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let c = client(&broker.addr).await;
    create(&c, "t", 1).await.unwrap();
    commit(&c, "g", 42).await;
    let end = latest(&c, OFFSETS).await;
    assert_eq!(end, 1, "the commit is the offsets topic's one record");

    // Kafka: produce (gzip, as kcat) and delete are refused with Kafka's codes for internal
    // topics.
    for compression in [Compression::Gzip, Compression::None] {
        let code = kafka_produce(&broker, OFFSETS, kcat_like_batch(compression)).await;
        assert_eq!(code, INVALID_TOPIC_EXCEPTION, "{compression:?}");
    }
    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    let deleted: DeleteTopicsResponse = kafka_call(
        &mut socket,
        ApiKey::DeleteTopics,
        4,
        &DeleteTopicsRequest::default()
            .with_topic_names(vec![name(OFFSETS)])
            .with_timeout_ms(10_000),
    )
    .await;
    assert_eq!(deleted.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    let created: CreateTopicsResponse = kafka_call(
        &mut socket,
        ApiKey::CreateTopics,
        4,
        &CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(name(OFFSETS))
                .with_num_partitions(1)
                .with_replication_factor(1)])
            .with_timeout_ms(10_000),
    )
    .await;
    assert_eq!(created.topics[0].error_code, INVALID_TOPIC_EXCEPTION);

    // Native: produce, delete and create are refused with InternalTopic.
    let produce = Request::Produce {
        topic: OFFSETS.into(),
        partition: 0,
        acks: Acks::Durable,
        records: Bytes::from(batch(&values("x", 3, 10), 1)),
    };
    let refusals = [
        c.request(produce).await.map(drop),
        c.admin().delete_topic(OFFSETS).await,
        create(&c, OFFSETS, 1).await,
    ];
    for refusal in refusals {
        let e = refusal.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InternalTopic), "{e}");
        assert!(e.to_string().contains(OFFSETS), "{e}");
    }

    // Nothing changed, and reading is allowed on both protocols.
    assert_eq!(latest(&c, OFFSETS).await, end);
    let fetch = Request::Fetch {
        topic: OFFSETS.into(),
        partition: 0,
        offset: 0,
        max_bytes: 1 << 20,
        max_wait_ms: 0,
    };
    match c.request(fetch).await.unwrap() {
        ResponseBody::Fetched { records, .. } => assert!(!records.is_empty()),
        other => panic!("{other:?}"),
    }
    let metadata: MetadataResponse = kafka_call(
        &mut socket,
        ApiKey::Metadata,
        9,
        &MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name(OFFSETS)))
            ]))
            .with_allow_auto_topic_creation(false),
    )
    .await;
    assert_eq!(metadata.topics[0].error_code, 0);
    assert!(metadata.topics[0].is_internal);

    // The saga orchestrator's journals are ordinary topics it writes as a client.
    create(&c, "__saga_journal", 1).await.unwrap();
    assert_eq!(
        kafka_produce(
            &broker,
            "__saga_journal",
            kcat_like_batch(Compression::Gzip)
        )
        .await,
        0
    );

    assert!(stop(broker).success());
    let broker = start_broker(dir.path());
    let c = client(&broker.addr).await;
    assert_eq!(committed(&c, "g").await, Some((42, "g-meta".into())));
    assert_eq!(latest(&c, "__saga_journal").await, 200);
    assert!(stop(broker).success());
}

/// What the listener now refuses may already be in an offsets log (written by an older
/// broker, or restored from a backup): a compressed batch of commits is read, and batches and
/// records that are no commits are skipped. The broker starts and every commit is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_starts_whatever_valid_batches_the_offsets_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let c = client(&broker.addr).await;
    create(&c, "t", 1).await.unwrap();
    commit(&c, "before", 42).await;
    assert!(stop(broker).success());

    // Written straight into the log, as the Kafka listener used to accept them.
    let log_dir = dir.path().join("topics").join(OFFSETS).join("0");
    let config = LogConfig {
        retention_ms: None,
        ..LogConfig::default()
    };
    let (mut log, _) = Log::open(&log_dir, config).unwrap();
    // What kcat wrote: 200 gzip records with no key.
    log.append(&mut kcat_like_batch(Compression::Gzip).to_vec())
        .unwrap();
    // Well-formed, CRC-valid records that are no commits: a key without the separators, a
    // value too short for an offset.
    let garbage = super::support::encode_records(
        &[
            (
                Some(Bytes::from_static(b"garbage")),
                Some(Bytes::from_static(b"x")),
                1,
            ),
            (
                Some(Bytes::from_static(b"g\0t\0\0\0\0\0")),
                Some(Bytes::from_static(b"short")),
                2,
            ),
        ],
        Compression::None,
    );
    log.append(&mut garbage.clone()).unwrap();
    // A compressed batch whose compressed bytes are garbage, with a CRC made to match.
    let mut broken = kcat_like_batch(Compression::Gzip).to_vec();
    let middle = 61 + (broken.len() - 61) / 2;
    for b in &mut broken[middle..middle + 16] {
        *b ^= 0x5a;
    }
    let crc = crc32c::crc32c(&broken[21..]);
    broken[17..21].copy_from_slice(&crc.to_be_bytes());
    log.append(&mut broken).unwrap();
    // Real commits in batches compressed by each codec, after all of that.
    let codecs = [
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ];
    for (i, (group, compression)) in codecs.iter().enumerate() {
        let mut key = format!("{group}\0t\0").into_bytes();
        key.extend_from_slice(&0u32.to_be_bytes());
        let mut value = (100 + i as u64).to_be_bytes().to_vec();
        value.extend_from_slice(format!("{group}-meta").as_bytes());
        let records = [(Some(Bytes::from(key)), Some(Bytes::from(value)), 3)];
        log.append(&mut super::support::encode_records(&records, *compression))
            .unwrap();
    }
    log.close().unwrap();

    let broker = start_broker(dir.path());
    let c = client(&broker.addr).await;
    assert_eq!(
        committed(&c, "before").await,
        Some((42, "before-meta".into()))
    );
    for (i, (group, _)) in codecs.iter().enumerate() {
        assert_eq!(
            committed(&c, group).await,
            Some((100 + i as u64, format!("{group}-meta"))),
            "{group}"
        );
    }
    // New commits still work and survive the next restart.
    commit(&c, "after", 7).await;
    assert!(stop(broker).success());
    let broker = start_broker(dir.path());
    let c = client(&broker.addr).await;
    assert_eq!(committed(&c, "after").await, Some((7, "after-meta".into())));
    assert_eq!(
        committed(&c, "before").await,
        Some((42, "before-meta".into()))
    );
    assert!(stop(broker).success());
}

fn creatable(topic: &str, partitions: i32) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
}

async fn metadata_for(socket: &mut TcpStream, names: &[String]) -> MetadataResponse {
    let topics = names
        .iter()
        .map(|n| MetadataRequestTopic::default().with_name(Some(name(n))))
        .collect();
    kafka_call(
        socket,
        ApiKey::Metadata,
        9,
        &MetadataRequest::default()
            .with_topics(Some(topics))
            .with_allow_auto_topic_creation(true),
    )
    .await
}

fn codes(metadata: &MetadataResponse) -> std::collections::BTreeMap<i16, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for t in &metadata.topics {
        *counts.entry(t.error_code).or_default() += 1;
    }
    counts
}

/// A client asking for 10,000 topics, by Metadata auto-create and by CreateTopics, gets what
/// the limits allow and clear errors for the rest; the broker keeps serving the topics it has
/// and restarts cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_topics_are_refused_past_the_limits_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--topics-max",
        "10",
        "--partitions-max",
        "40",
        "--metadata-auto-create-topics-max",
        "5",
    ];
    let broker = start_broker_with(dir.path(), &flags);
    let c = client(&broker.addr).await;
    create(&c, "keep", 2).await.unwrap();
    let produced = c
        .request(Request::Produce {
            topic: "keep".into(),
            partition: 0,
            acks: Acks::Durable,
            records: Bytes::from(batch(&values("keep", 10, 20), 1)),
        })
        .await
        .unwrap();
    assert!(matches!(
        produced,
        ResponseBody::Produced { last_offset: 9, .. }
    ));

    // Metadata naming 10,000 new topics auto-creates 5 (the per-request bound); the others are
    // unknown for now, which Kafka clients retry.
    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    let wanted: Vec<String> = (0..10_000).map(|i| format!("auto-{i}")).collect();
    let metadata = metadata_for(&mut socket, &wanted).await;
    assert_eq!(metadata.topics.len(), 10_000);
    assert_eq!(
        codes(&metadata),
        [(0, 5), (UNKNOWN_TOPIC_OR_PARTITION, 9_995)].into()
    );

    // CreateTopics with 10,000 topics: 4 fit under topics_max = 10, the others are refused
    // with POLICY_VIOLATION and a message naming the limit.
    let request = CreateTopicsRequest::default()
        .with_topics(
            (0..10_000)
                .map(|i| creatable(&format!("made-{i}"), 1))
                .collect(),
        )
        .with_timeout_ms(30_000);
    let created: CreateTopicsResponse =
        kafka_call(&mut socket, ApiKey::CreateTopics, 4, &request).await;
    assert_eq!(created.topics.len(), 10_000);
    let ok = created.topics.iter().filter(|t| t.error_code == 0).count();
    assert_eq!(ok, 4);
    let refused = &created.topics[9_999];
    assert_eq!(refused.error_code, POLICY_VIOLATION);
    let message = refused.error_message.as_ref().unwrap().to_string();
    assert!(message.contains("topics_max is 10"), "{message}");

    // Now Metadata auto-create is refused by the same limit, with the same code.
    let wanted: Vec<String> = (0..10_000).map(|i| format!("late-{i}")).collect();
    let metadata = metadata_for(&mut socket, &wanted).await;
    assert_eq!(codes(&metadata), [(POLICY_VIOLATION, 10_000)].into());
    // A topic of more partitions than one topic may have: INVALID_PARTITIONS.
    let request = CreateTopicsRequest::default()
        .with_topics(vec![creatable("wide", 5_000)])
        .with_timeout_ms(30_000);
    let created: CreateTopicsResponse =
        kafka_call(&mut socket, ApiKey::CreateTopics, 4, &request).await;
    assert_eq!(created.topics[0].error_code, INVALID_PARTITIONS);
    // The native protocol says LimitReached and names the limit.
    let e = create(&c, "native", 1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LimitReached), "{e}");
    assert!(e.to_string().contains("topics_max"), "{e}");

    // The topics there are still serve reads and writes.
    let produced = c
        .request(Request::Produce {
            topic: "keep".into(),
            partition: 1,
            acks: Acks::Durable,
            records: Bytes::from(batch(&values("keep", 5, 20), 2)),
        })
        .await
        .unwrap();
    assert!(matches!(
        produced,
        ResponseBody::Produced { last_offset: 4, .. }
    ));
    assert_eq!(latest(&c, "keep").await, 10);
    assert_eq!(
        kafka_produce(&broker, "auto-0", kcat_like_batch(Compression::Gzip)).await,
        0
    );

    let status = stop(broker);
    assert!(status.success(), "{status:?}");
    let broker = start_broker_with(dir.path(), &flags);
    let c = client(&broker.addr).await;
    let mut names: Vec<String> = c
        .admin()
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .filter(|n| n != OFFSETS && n != "__transaction_state")
        .collect();
    names.sort();
    assert_eq!(names.len(), 10, "{names:?}");
    assert!(names.contains(&"keep".to_string()));
    assert_eq!(latest(&c, "keep").await, 10);
    assert_eq!(latest(&c, "auto-0").await, 200);
    assert!(stop(broker).success());
}

async fn init_producer_id(socket: &mut TcpStream, id: i64, epoch: i16) -> (i64, i16) {
    let response: InitProducerIdResponse = kafka_call(
        socket,
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(id.into())
            .with_producer_epoch(epoch),
    )
    .await;
    assert_eq!(response.error_code, 0);
    (response.producer_id.0, response.producer_epoch)
}

/// Another client naming a producer's id and epoch in InitProducerId gets a new id of its
/// own, as on Kafka, so it cannot bump that producer's epoch and fence it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_producer_id_never_hands_out_another_producers_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let c = client(&broker.addr).await;
    create(&c, "t", 1).await.unwrap();
    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    let (victim, epoch) = init_producer_id(&mut socket, -1, -1).await;
    assert_eq!(
        kafka_produce(&broker, "t", idempotent_batch(victim, epoch, 0, 5)).await,
        0
    );

    let (attacker, attacker_epoch) = init_producer_id(&mut socket, victim, epoch).await;
    assert_ne!(
        attacker, victim,
        "the request's producer id is not handed out again"
    );
    assert_eq!(attacker_epoch, 0);
    // The attacker writes with whatever it got; the victim's next batch is still accepted.
    kafka_produce(
        &broker,
        "t",
        idempotent_batch(attacker, attacker_epoch, 0, 1),
    )
    .await;
    let code = kafka_produce(&broker, "t", idempotent_batch(victim, epoch, 5, 5)).await;
    assert_ne!(code, INVALID_PRODUCER_EPOCH);
    assert_eq!(code, 0);
    assert!(stop(broker).success());
}

fn join_request(group: &str) -> Request {
    Request::JoinGroup {
        group: group.into(),
        member_id: String::new(),
        client_id: "hostile".into(),
        topics: vec!["t".into()],
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        assignor: "range".into(),
    }
}

/// Members, groups and commit metadata are bounded over the wire: past a limit the native
/// client gets LimitReached (or TooLarge) and nothing changes; the groups there are keep their
/// members and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_members_and_commit_metadata_are_refused_past_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--groups-max",
        "2",
        "--members-per-group-max",
        "1",
        "--commit-metadata-bytes-max",
        "16",
    ];
    let broker = start_broker_with(dir.path(), &flags);
    let c = client(&broker.addr).await;
    create(&c, "t", 1).await.unwrap();
    let joined = c.request(join_request("g")).await.unwrap();
    assert!(matches!(joined, ResponseBody::Joined { .. }), "{joined:?}");
    // A second member of the same group: refused.
    let e = c.request(join_request("g")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LimitReached), "{e}");
    // A second group by commit fits; a third, by join or by commit, does not.
    commit(&c, "other", 1).await;
    let e = c.request(join_request("third")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LimitReached), "{e}");
    let third = Request::OffsetCommit {
        group: "third".into(),
        member_id: String::new(),
        generation: 0,
        offsets: vec![OffsetEntry {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            metadata: String::new(),
        }],
    };
    let e = c.request(third).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LimitReached), "{e}");
    // Commit metadata over 16 bytes is refused and the earlier commit stays.
    let long = Request::OffsetCommit {
        group: "other".into(),
        member_id: String::new(),
        generation: 0,
        offsets: vec![OffsetEntry {
            topic: "t".into(),
            partition: 0,
            offset: 9,
            metadata: "x".repeat(17),
        }],
    };
    let e = c.request(long).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TooLarge), "{e}");
    assert_eq!(committed(&c, "other").await, Some((1, "other-meta".into())));
    let groups = match c.request(Request::ListGroups).await.unwrap() {
        ResponseBody::Groups(groups) => groups,
        other => panic!("{other:?}"),
    };
    assert_eq!(groups, vec!["g".to_string(), "other".to_string()]);
    assert!(stop(broker).success());
}
