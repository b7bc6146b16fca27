//! Strand's native TCP protocol, shared by the broker (server side) and the client.
//!
//! - `frame`: length-prefixed frames, `check` before any allocation, headers.
//! - `codec`: primitive field encoding with bounded lengths.
//! - `messages`: every request, response and push, with their encodings.
//! - `error`: response error codes and decode errors.
//!
//! The specification is `docs/native-protocol.md`.

pub mod codec;
pub mod error;
pub mod frame;
pub mod messages;

pub use error::{DecodeError, ErrorCode};
pub use frame::{RequestHeader, ServerFrameKind, ServerHeader, FRAME_BYTES_MAX_DEFAULT};
pub use messages::{
    Acks, ApiKey, OffsetQuery, PartitionState, Push, Request, Response, ResponseBody,
    TopicDescription, TopicSettings,
};

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{0,40}"
    }

    fn blob() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from)
    }

    fn request() -> impl Strategy<Value = Request> {
        let acks = prop_oneof![Just(Acks::None), Just(Acks::Leader), Just(Acks::Durable)];
        let query = prop_oneof![
            Just(OffsetQuery::Earliest),
            Just(OffsetQuery::Latest),
            any::<i64>().prop_map(OffsetQuery::Timestamp)
        ];
        let opt = proptest::option::of(-1i64..i64::MAX);
        prop_oneof![
            (
                name(),
                proptest::collection::vec(any::<(u16, u16, u16)>(), 0..5)
            )
                .prop_map(|(client, versions)| Request::Handshake { client, versions }),
            (
                name(),
                any::<u32>(),
                any::<bool>(),
                opt.clone(),
                opt.clone(),
                opt
            )
                .prop_map(
                    |(name, partitions, compact, retention_ms, retention_bytes, segment_bytes)| {
                        Request::CreateTopic {
                            name,
                            settings: TopicSettings {
                                partitions,
                                compact,
                                retention_ms,
                                retention_bytes,
                                segment_bytes,
                            },
                        }
                    }
                ),
            name().prop_map(|name| Request::DeleteTopic { name }),
            Just(Request::ListTopics),
            name().prop_map(|name| Request::DescribeTopic { name }),
            (name(), any::<u32>(), acks, blob()).prop_map(|(topic, partition, acks, records)| {
                Request::Produce {
                    topic,
                    partition,
                    acks,
                    records,
                }
            }),
            (
                name(),
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(|(topic, partition, offset, max_bytes, max_wait_ms)| {
                    Request::Fetch {
                        topic,
                        partition,
                        offset,
                        max_bytes,
                        max_wait_ms,
                    }
                }),
            (name(), any::<u32>(), query).prop_map(|(topic, partition, query)| {
                Request::ListOffsets {
                    topic,
                    partition,
                    query,
                }
            }),
            (name(), any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
                |(topic, partition, offset, credit_bytes)| {
                    Request::Subscribe {
                        topic,
                        partition,
                        offset,
                        credit_bytes,
                    }
                }
            ),
            (any::<u32>(), any::<u32>()).prop_map(|(subscription, credit_bytes)| {
                Request::AddCredit {
                    subscription,
                    credit_bytes,
                }
            }),
            any::<u32>().prop_map(|subscription| Request::Unsubscribe { subscription }),
            (
                name(),
                name(),
                name(),
                proptest::collection::vec(name(), 0..4),
                any::<u32>(),
                any::<u32>(),
                name()
            )
                .prop_map(
                    |(
                        group,
                        member_id,
                        client_id,
                        topics,
                        session_timeout_ms,
                        rebalance_timeout_ms,
                        assignor,
                    )| Request::JoinGroup {
                        group,
                        member_id,
                        client_id,
                        topics,
                        session_timeout_ms,
                        rebalance_timeout_ms,
                        assignor
                    }
                ),
            (name(), name(), any::<u32>()).prop_map(|(group, member_id, generation)| {
                Request::Heartbeat {
                    group,
                    member_id,
                    generation,
                }
            }),
            (name(), name())
                .prop_map(|(group, member_id)| Request::LeaveGroup { group, member_id }),
            (
                name(),
                name(),
                any::<u32>(),
                proptest::collection::vec(offset_entry(), 0..4)
            )
                .prop_map(|(group, member_id, generation, offsets)| {
                    Request::OffsetCommit {
                        group,
                        member_id,
                        generation,
                        offsets,
                    }
                }),
            (
                name(),
                proptest::collection::vec((name(), any::<u32>()), 0..4)
            )
                .prop_map(|(group, partitions)| Request::OffsetFetch { group, partitions }),
            Just(Request::ListGroups),
            name().prop_map(|group| Request::DescribeGroup { group }),
            name().prop_map(|group| Request::DeleteGroup { group }),
            name().prop_map(|mechanism| Request::SaslHandshake { mechanism }),
            blob().prop_map(|token| Request::SaslAuthenticate { token }),
            (name(), name(), any::<u32>(), blob(), blob()).prop_map(
                |(name, mechanism, iterations, salt, salted_password)| Request::UpsertUser {
                    name,
                    mechanism,
                    iterations,
                    salt,
                    salted_password,
                }
            ),
            (name(), name()).prop_map(|(name, mechanism)| Request::DeleteUser { name, mechanism }),
            Just(Request::ListUsers),
            proptest::collection::vec(acl(), 0..4)
                .prop_map(|bindings| Request::CreateAcls { bindings }),
            acl_filter().prop_map(|filter| Request::DescribeAcls { filter }),
            proptest::collection::vec(acl_filter(), 0..4)
                .prop_map(|filters| Request::DeleteAcls { filters }),
        ]
    }

    fn acl() -> impl Strategy<Value = messages::AclBinding> {
        (any::<[u8; 4]>(), name(), name(), name()).prop_map(
            |(codes, resource_name, principal, host)| messages::AclBinding {
                resource_type: codes[0],
                resource_name,
                pattern_type: codes[1],
                principal,
                host,
                operation: codes[2],
                permission: codes[3],
            },
        )
    }

    fn acl_filter() -> impl Strategy<Value = messages::AclBindingFilter> {
        (
            any::<[u8; 4]>(),
            proptest::option::of(name()),
            proptest::option::of(name()),
            proptest::option::of(name()),
        )
            .prop_map(|(codes, resource_name, principal, host)| {
                messages::AclBindingFilter {
                    resource_type: codes[0],
                    resource_name,
                    pattern_type: codes[1],
                    principal,
                    host,
                    operation: codes[2],
                    permission: codes[3],
                }
            })
    }

    fn offset_entry() -> impl Strategy<Value = messages::OffsetEntry> {
        (name(), any::<u32>(), any::<u64>(), name()).prop_map(
            |(topic, partition, offset, metadata)| messages::OffsetEntry {
                topic,
                partition,
                offset,
                metadata,
            },
        )
    }

    fn group_info() -> impl Strategy<Value = messages::GroupInfo> {
        (
            name(),
            name(),
            any::<u32>(),
            name(),
            proptest::collection::vec(
                (
                    name(),
                    name(),
                    proptest::collection::vec((name(), any::<u32>()), 0..3),
                ),
                0..3,
            ),
            proptest::collection::vec((name(), any::<u32>(), any::<u64>(), any::<i64>()), 0..3),
        )
            .prop_map(|(group, state, generation, assignor, members, offsets)| {
                messages::GroupInfo {
                    group,
                    state,
                    generation,
                    assignor,
                    members: members
                        .into_iter()
                        .map(|(member_id, client_id, assignment)| messages::GroupMember {
                            member_id,
                            client_id,
                            assignment,
                        })
                        .collect(),
                    offsets: offsets
                        .into_iter()
                        .map(|(topic, partition, offset, lag)| messages::GroupOffset {
                            topic,
                            partition,
                            offset,
                            lag,
                        })
                        .collect(),
                }
            })
    }

    fn description() -> impl Strategy<Value = TopicDescription> {
        (
            name(),
            any::<bool>(),
            any::<i64>(),
            any::<i64>(),
            proptest::collection::vec(any::<(u32, u64, u64)>(), 0..4),
        )
            .prop_map(|(name, compact, retention_ms, retention_bytes, ps)| {
                TopicDescription {
                    name,
                    compact,
                    retention_ms,
                    retention_bytes,
                    partitions: ps
                        .into_iter()
                        .map(
                            |(partition, log_start_offset, high_watermark)| PartitionState {
                                partition,
                                log_start_offset,
                                high_watermark,
                            },
                        )
                        .collect(),
                }
            })
    }

    /// A response together with the request type it answers.
    fn response() -> impl Strategy<Value = (ApiKey, Response)> {
        let ok = |key: ApiKey, body: ResponseBody| (key, Response::Ok(body));
        prop_oneof![
            (
                name(),
                proptest::collection::vec(any::<(u16, u16, u16)>(), 0..5),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(
                    move |(server, versions, frame_bytes_max, in_flight_max)| ok(
                        ApiKey::Handshake,
                        ResponseBody::Handshake {
                            server,
                            versions,
                            frame_bytes_max,
                            in_flight_max
                        }
                    )
                ),
            Just(ok(ApiKey::CreateTopic, ResponseBody::Empty)),
            proptest::collection::vec(description(), 0..3)
                .prop_map(move |t| ok(ApiKey::ListTopics, ResponseBody::Topics(t))),
            description().prop_map(move |t| ok(ApiKey::DescribeTopic, ResponseBody::Topic(t))),
            (any::<u64>(), any::<u64>()).prop_map(move |(base_offset, last_offset)| ok(
                ApiKey::Produce,
                ResponseBody::Produced {
                    base_offset,
                    last_offset
                }
            )),
            (any::<u64>(), any::<u64>(), blob()).prop_map(
                move |(high_watermark, log_start_offset, records)| ok(
                    ApiKey::Fetch,
                    ResponseBody::Fetched {
                        high_watermark,
                        log_start_offset,
                        records
                    }
                )
            ),
            proptest::option::of(0u64..i64::MAX as u64)
                .prop_map(move |o| ok(ApiKey::ListOffsets, ResponseBody::Offset(o))),
            (
                name(),
                any::<u32>(),
                proptest::collection::vec((name(), any::<u32>()), 0..4)
            )
                .prop_map(move |(member_id, generation, assignment)| ok(
                    ApiKey::JoinGroup,
                    ResponseBody::Joined {
                        member_id,
                        generation,
                        assignment
                    }
                )),
            Just(ok(ApiKey::Heartbeat, ResponseBody::Empty)),
            proptest::collection::vec(proptest::option::of(offset_entry()), 0..4)
                .prop_map(move |entries| ok(ApiKey::OffsetFetch, ResponseBody::Committed(entries))),
            proptest::collection::vec(name(), 0..4)
                .prop_map(move |groups| ok(ApiKey::ListGroups, ResponseBody::Groups(groups))),
            group_info().prop_map(move |g| ok(ApiKey::DescribeGroup, ResponseBody::Group(g))),
            proptest::collection::vec(name(), 0..4)
                .prop_map(move |m| ok(ApiKey::SaslHandshake, ResponseBody::SaslMechanisms(m))),
            blob().prop_map(move |t| ok(ApiKey::SaslAuthenticate, ResponseBody::SaslToken(t))),
            Just(ok(ApiKey::UpsertUser, ResponseBody::Empty)),
            proptest::collection::vec(
                (
                    name(),
                    proptest::collection::vec((name(), any::<u32>()), 0..3)
                ),
                0..4
            )
            .prop_map(move |users| ok(
                ApiKey::ListUsers,
                ResponseBody::Users(
                    users
                        .into_iter()
                        .map(|(name, mechanisms)| messages::UserEntry { name, mechanisms })
                        .collect()
                )
            )),
            Just(ok(ApiKey::CreateAcls, ResponseBody::Empty)),
            proptest::collection::vec(acl(), 0..4)
                .prop_map(move |a| ok(ApiKey::DescribeAcls, ResponseBody::Acls(a))),
            proptest::collection::vec(acl(), 0..4)
                .prop_map(move |a| ok(ApiKey::DeleteAcls, ResponseBody::Acls(a))),
            (0usize..ApiKey::ALL.len(), 1u16..30, name()).prop_map(|(k, code, message)| (
                ApiKey::ALL[k],
                Response::Err {
                    code: ErrorCode::from_u16(code),
                    message
                }
            )),
        ]
    }

    fn encoded_request(request: &Request, correlation_id: u32) -> BytesMut {
        let mut buf = BytesMut::new();
        request.encode(correlation_id, &mut buf);
        buf
    }

    proptest! {
        #[test]
        fn requests_round_trip(request in request(), correlation_id in any::<u32>()) {
            let buf = encoded_request(&request, correlation_id).freeze();
            let len = frame::check(&buf, usize::MAX, frame::REQUEST_HEADER_BYTES).unwrap().unwrap();
            prop_assert_eq!(len, buf.len());
            let (header, body) = frame::split_request(buf);
            prop_assert_eq!(header.correlation_id, correlation_id);
            prop_assert_eq!(Request::decode(&header, body).unwrap(), request);
        }

        #[test]
        fn responses_round_trip((key, response) in response(), correlation_id in any::<u32>()) {
            let mut buf = BytesMut::new();
            response.encode(correlation_id, &mut buf);
            let buf = buf.freeze();
            prop_assert_eq!(frame::check(&buf, usize::MAX, frame::SERVER_HEADER_BYTES).unwrap(), Some(buf.len()));
            let (header, body) = frame::split_server(buf).unwrap();
            prop_assert_eq!(header, ServerHeader { kind: ServerFrameKind::Response, correlation_id });
            prop_assert_eq!(Response::decode(key, body).unwrap(), response);
        }

        #[test]
        fn pushes_round_trip(high_watermark in any::<u64>(), records in blob(), sub in any::<u32>()) {
            let push = Push { high_watermark, records };
            let mut buf = BytesMut::new();
            push.encode(sub, &mut buf);
            let (header, body) = frame::split_server(buf.freeze()).unwrap();
            prop_assert_eq!(header.kind, ServerFrameKind::Push);
            prop_assert_eq!(header.correlation_id, sub);
            prop_assert_eq!(Push::decode(body).unwrap(), push);
        }

        #[test]
        fn every_prefix_of_a_frame_is_incomplete_not_an_error(request in request()) {
            let buf = encoded_request(&request, 7);
            for cut in 0..buf.len() {
                prop_assert_eq!(frame::check(&buf[..cut], usize::MAX, frame::REQUEST_HEADER_BYTES), Ok(None));
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), key in 0u16..30, version in 0u16..2) {
            let header = RequestHeader { api_key: key, version, correlation_id: 1 };
            let _ = Request::decode(&header, Bytes::from(bytes.clone()));
            for k in ApiKey::ALL {
                let _ = Response::decode(k, Bytes::from(bytes.clone()));
            }
            let _ = Push::decode(Bytes::from(bytes.clone()));
            let _ = frame::check(&bytes, 1 << 20, frame::REQUEST_HEADER_BYTES);
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_the_prefix_alone() {
        let prefix = (64u32 << 20).to_be_bytes();
        assert_eq!(
            frame::check(
                &prefix,
                FRAME_BYTES_MAX_DEFAULT,
                frame::REQUEST_HEADER_BYTES
            ),
            Err(DecodeError::FrameTooLarge {
                len: 64 << 20,
                max: FRAME_BYTES_MAX_DEFAULT
            })
        );
        assert_eq!(
            frame::check(&3u32.to_be_bytes(), 100, frame::REQUEST_HEADER_BYTES),
            Err(DecodeError::FrameTooShort { len: 3 })
        );
    }

    #[test]
    fn unknown_requests_and_versions_keep_the_correlation_id_for_the_answer() {
        let mut buf = BytesMut::new();
        Request::ListTopics.encode(42, &mut buf);
        buf[4..6].copy_from_slice(&99u16.to_be_bytes());
        let (header, body) = frame::split_request(buf.freeze());
        let err = Request::decode(&header, body).unwrap_err();
        assert_eq!(
            (header.correlation_id, err.code()),
            (42, ErrorCode::UnsupportedRequest)
        );

        let mut buf = BytesMut::new();
        Request::ListTopics.encode(43, &mut buf);
        buf[6..8].copy_from_slice(&5u16.to_be_bytes());
        let (header, body) = frame::split_request(buf.freeze());
        assert_eq!(
            Request::decode(&header, body).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
    }

    #[test]
    fn arrays_of_tiny_items_are_capped() {
        // 100,000 empty topic names: 200 KB on the wire, 2.4 MB of Strings if decoded.
        let mut buf = BytesMut::new();
        Request::JoinGroup {
            group: "g".into(),
            member_id: String::new(),
            client_id: "c".into(),
            topics: vec![String::new(); 100_000],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            assignor: "range".into(),
        }
        .encode(1, &mut buf);
        let (header, body) = frame::split_request(buf.freeze());
        assert!(matches!(
            Request::decode(&header, body),
            Err(DecodeError::Invalid {
                field: "topics",
                ..
            })
        ));
    }

    #[test]
    fn lying_lengths_inside_a_frame_are_errors_not_allocations() {
        let mut buf = BytesMut::new();
        Request::Produce {
            topic: "t".into(),
            partition: 0,
            acks: Acks::Leader,
            records: Bytes::from_static(b"abc"),
        }
        .encode(1, &mut buf);
        // The records length says 4 GiB; only 3 bytes follow.
        let at = buf.len() - 3 - 4;
        buf[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let (header, body) = frame::split_request(buf.freeze());
        assert_eq!(
            Request::decode(&header, body),
            Err(DecodeError::Truncated { field: "records" })
        );
    }
}
