//! Every request and response of the native protocol, with their encodings. The layouts are
//! specified in `docs/native-protocol.md`; keep the two in step.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{put_bytes, put_string, Reader};
use super::error::{DecodeError, ErrorCode};
use super::frame::{self, RequestHeader, ServerFrameKind, ServerHeader};

/// Request types. The numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiKey {
    Handshake = 0,
    CreateTopic = 1,
    DeleteTopic = 2,
    ListTopics = 3,
    DescribeTopic = 4,
    Produce = 5,
    Fetch = 6,
    ListOffsets = 7,
    Subscribe = 8,
    AddCredit = 9,
    Unsubscribe = 10,
    JoinGroup = 11,
    Heartbeat = 12,
    LeaveGroup = 13,
    OffsetCommit = 14,
    OffsetFetch = 15,
    ListGroups = 16,
    DescribeGroup = 17,
    /// Chooses a SASL mechanism (see `docs/native-protocol.md`, Authentication).
    SaslHandshake = 18,
    /// Carries one SASL token each way.
    SaslAuthenticate = 19,
    /// Adds or replaces a user's SCRAM credential.
    UpsertUser = 20,
    DeleteUser = 21,
    ListUsers = 22,
    CreateAcls = 23,
    DescribeAcls = 24,
    DeleteAcls = 25,
    /// Deletes a consumer group without members, with its committed offsets.
    DeleteGroup = 26,
}

impl ApiKey {
    pub const ALL: [ApiKey; 27] = [
        ApiKey::Handshake,
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::ListTopics,
        ApiKey::DescribeTopic,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::Subscribe,
        ApiKey::AddCredit,
        ApiKey::Unsubscribe,
        ApiKey::JoinGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroup,
        ApiKey::SaslHandshake,
        ApiKey::SaslAuthenticate,
        ApiKey::UpsertUser,
        ApiKey::DeleteUser,
        ApiKey::ListUsers,
        ApiKey::CreateAcls,
        ApiKey::DescribeAcls,
        ApiKey::DeleteAcls,
        ApiKey::DeleteGroup,
    ];

    /// The request type with this number; the numbers have gaps (see `docs/native-protocol.md`).
    pub fn from_u16(key: u16) -> Option<ApiKey> {
        ApiKey::ALL.into_iter().find(|k| *k as u16 == key)
    }

    /// Versions of this request this implementation speaks.
    pub fn versions(self) -> (u16, u16) {
        (0, 0)
    }

    pub fn name(self) -> &'static str {
        match self {
            ApiKey::Handshake => "handshake",
            ApiKey::CreateTopic => "create_topic",
            ApiKey::DeleteTopic => "delete_topic",
            ApiKey::ListTopics => "list_topics",
            ApiKey::DescribeTopic => "describe_topic",
            ApiKey::Produce => "produce",
            ApiKey::Fetch => "fetch",
            ApiKey::ListOffsets => "list_offsets",
            ApiKey::Subscribe => "subscribe",
            ApiKey::AddCredit => "add_credit",
            ApiKey::Unsubscribe => "unsubscribe",
            ApiKey::JoinGroup => "join_group",
            ApiKey::Heartbeat => "heartbeat",
            ApiKey::LeaveGroup => "leave_group",
            ApiKey::OffsetCommit => "offset_commit",
            ApiKey::OffsetFetch => "offset_fetch",
            ApiKey::ListGroups => "list_groups",
            ApiKey::DescribeGroup => "describe_group",
            ApiKey::SaslHandshake => "sasl_handshake",
            ApiKey::SaslAuthenticate => "sasl_authenticate",
            ApiKey::UpsertUser => "upsert_user",
            ApiKey::DeleteUser => "delete_user",
            ApiKey::ListUsers => "list_users",
            ApiKey::CreateAcls => "create_acls",
            ApiKey::DescribeAcls => "describe_acls",
            ApiKey::DeleteAcls => "delete_acls",
            ApiKey::DeleteGroup => "delete_group",
        }
    }
}

/// Acknowledgement level of a produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No response is sent.
    None = 0,
    /// Acknowledged once written to the log.
    Leader = 1,
    /// Acknowledged once an fsync covering the batches succeeded.
    Durable = 2,
}

/// Which offset a ListOffsets request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    Earliest,
    Latest,
    /// First offset whose record timestamp is at least this many ms since the epoch.
    Timestamp(i64),
}

/// Topic settings in CreateTopic; `None` takes the broker default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSettings {
    pub partitions: u32,
    pub compact: bool,
    /// -1 keeps data forever.
    pub retention_ms: Option<i64>,
    /// -1 keeps data of any size.
    pub retention_bytes: Option<i64>,
    pub segment_bytes: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Handshake {
        client: String,
        versions: Vec<(u16, u16, u16)>,
    },
    CreateTopic {
        name: String,
        settings: TopicSettings,
    },
    DeleteTopic {
        name: String,
    },
    ListTopics,
    DescribeTopic {
        name: String,
    },
    Produce {
        topic: String,
        partition: u32,
        acks: Acks,
        records: Bytes,
    },
    Fetch {
        topic: String,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    },
    ListOffsets {
        topic: String,
        partition: u32,
        query: OffsetQuery,
    },
    Subscribe {
        topic: String,
        partition: u32,
        offset: u64,
        credit_bytes: u32,
    },
    AddCredit {
        subscription: u32,
        credit_bytes: u32,
    },
    Unsubscribe {
        subscription: u32,
    },
    /// Joins (empty `member_id` for a new member) and waits for the rebalance to complete.
    JoinGroup {
        group: String,
        member_id: String,
        client_id: String,
        topics: Vec<String>,
        session_timeout_ms: u32,
        rebalance_timeout_ms: u32,
        /// range, round-robin or cooperative-sticky
        assignor: String,
    },
    Heartbeat {
        group: String,
        member_id: String,
        generation: u32,
    },
    LeaveGroup {
        group: String,
        member_id: String,
    },
    /// Empty `member_id` and generation 0: an admin commit, allowed while the group is empty.
    OffsetCommit {
        group: String,
        member_id: String,
        generation: u32,
        offsets: Vec<OffsetEntry>,
    },
    OffsetFetch {
        group: String,
        partitions: Vec<(String, u32)>,
    },
    ListGroups,
    DescribeGroup {
        group: String,
    },
    /// The mechanism the connection will authenticate with (`PLAIN`, `SCRAM-SHA-256`,
    /// `SCRAM-SHA-512`).
    SaslHandshake {
        mechanism: String,
    },
    /// The client's next SASL token.
    SaslAuthenticate {
        token: Bytes,
    },
    /// A SCRAM credential salted by the client (`Hi(password, salt, iterations)`), so that the
    /// password never crosses the wire; as Kafka's AlterUserScramCredentials.
    UpsertUser {
        name: String,
        mechanism: String,
        iterations: u32,
        salt: Bytes,
        salted_password: Bytes,
    },
    /// Deletes the user's credential for `mechanism`, or all of them when it is empty.
    DeleteUser {
        name: String,
        mechanism: String,
    },
    ListUsers,
    /// Adds ACL bindings: all of them, or none (the error says why).
    CreateAcls {
        bindings: Vec<AclBinding>,
    },
    /// The bindings the filter matches.
    DescribeAcls {
        filter: AclBindingFilter,
    },
    /// Removes the bindings any of the filters match, and answers with them.
    DeleteAcls {
        filters: Vec<AclBindingFilter>,
    },
    /// Deletes a group that has no members, and its commits (durably, before the answer).
    DeleteGroup {
        group: String,
    },
}

/// One ACL binding, with Kafka's codes: resource type 2 topic, 3 group, 4 cluster, 5
/// transactional id; pattern type 3 literal, 4 prefixed; operation 2 all, 3 read, 4 write,
/// 5 create, 6 delete, 7 alter, 8 describe, 9 cluster action, 10 describe configs, 11 alter
/// configs, 12 idempotent write; permission 2 deny, 3 allow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclBinding {
    pub resource_type: u8,
    pub resource_name: String,
    pub pattern_type: u8,
    /// `User:alice`, or `User:*` for every user.
    pub principal: String,
    /// An IP address, or `*` for every host.
    pub host: String,
    pub operation: u8,
    pub permission: u8,
}

/// Selects ACL bindings, with Kafka's filter codes: 1 is "any" for the resource type, pattern
/// type, operation and permission; pattern type 2 ("match") selects every binding that applies
/// to the named resource (its literal name, `*`, its prefixes). `None` strings match any value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AclBindingFilter {
    pub resource_type: u8,
    pub resource_name: Option<String>,
    pub pattern_type: u8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: u8,
    pub permission: u8,
}

impl AclBindingFilter {
    /// Matches every binding.
    pub fn any() -> AclBindingFilter {
        AclBindingFilter {
            resource_type: 1,
            resource_name: None,
            pattern_type: 1,
            principal: None,
            host: None,
            operation: 1,
            permission: 1,
        }
    }
}

fn put_acl(buf: &mut BytesMut, b: &AclBinding) {
    buf.put_u8(b.resource_type);
    put_string(buf, &b.resource_name);
    buf.put_u8(b.pattern_type);
    put_string(buf, &b.principal);
    put_string(buf, &b.host);
    buf.put_u8(b.operation);
    buf.put_u8(b.permission);
}

fn get_acl(r: &mut Reader) -> Result<AclBinding, DecodeError> {
    Ok(AclBinding {
        resource_type: r.u8("resource_type")?,
        resource_name: r.string("resource_name")?,
        pattern_type: r.u8("pattern_type")?,
        principal: r.string("principal")?,
        host: r.string("host")?,
        operation: r.u8("operation")?,
        permission: r.u8("permission")?,
    })
}

/// Encoded size of the smallest binding: four one-byte codes and three empty strings.
const ACL_BYTES_MIN: usize = 10;

fn put_acls(buf: &mut BytesMut, bindings: &[AclBinding]) {
    buf.put_u32(bindings.len() as u32);
    for b in bindings {
        put_acl(buf, b);
    }
}

fn get_acls(r: &mut Reader, what: &'static str) -> Result<Vec<AclBinding>, DecodeError> {
    let n = r.count(what, ACL_BYTES_MIN)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get_acl(r)?);
    }
    Ok(out)
}

/// An optional string: a presence byte (0 or 1), then the string if present.
fn put_opt_string(buf: &mut BytesMut, s: &Option<String>) {
    match s {
        None => buf.put_u8(0),
        Some(s) => {
            buf.put_u8(1);
            put_string(buf, s);
        }
    }
}

fn get_opt_string(r: &mut Reader, what: &'static str) -> Result<Option<String>, DecodeError> {
    Ok(if r.bool(what)? {
        Some(r.string(what)?)
    } else {
        None
    })
}

fn put_acl_filter(buf: &mut BytesMut, f: &AclBindingFilter) {
    buf.put_u8(f.resource_type);
    put_opt_string(buf, &f.resource_name);
    buf.put_u8(f.pattern_type);
    put_opt_string(buf, &f.principal);
    put_opt_string(buf, &f.host);
    buf.put_u8(f.operation);
    buf.put_u8(f.permission);
}

fn get_acl_filter(r: &mut Reader) -> Result<AclBindingFilter, DecodeError> {
    Ok(AclBindingFilter {
        resource_type: r.u8("resource_type")?,
        resource_name: get_opt_string(r, "resource_name")?,
        pattern_type: r.u8("pattern_type")?,
        principal: get_opt_string(r, "principal")?,
        host: get_opt_string(r, "host")?,
        operation: r.u8("operation")?,
        permission: r.u8("permission")?,
    })
}

/// A user and the SCRAM mechanisms (with iteration counts) it has credentials for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub mechanisms: Vec<(String, u32)>,
}

/// One partition's committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetEntry {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

/// A member in a group description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    pub assignment: Vec<(String, u32)>,
}

/// A committed offset with the partition's lag (high watermark minus committed offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// -1 when the partition no longer exists.
    pub lag: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub group: String,
    /// empty, rebalancing or stable
    pub state: String,
    pub generation: u32,
    pub assignor: String,
    pub members: Vec<GroupMember>,
    pub offsets: Vec<GroupOffset>,
}

fn put_tps(buf: &mut BytesMut, tps: &[(String, u32)]) {
    buf.put_u32(tps.len() as u32);
    for (topic, partition) in tps {
        put_string(buf, topic);
        buf.put_u32(*partition);
    }
}

fn get_tps(r: &mut Reader, what: &'static str) -> Result<Vec<(String, u32)>, DecodeError> {
    let n = r.count(what, 6)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push((r.string("topic")?, r.u32("partition")?));
    }
    Ok(out)
}

fn put_strings(buf: &mut BytesMut, items: &[String]) {
    buf.put_u32(items.len() as u32);
    for item in items {
        put_string(buf, item);
    }
}

fn get_strings(r: &mut Reader, what: &'static str) -> Result<Vec<String>, DecodeError> {
    let n = r.count(what, 2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.string(what)?);
    }
    Ok(out)
}

/// Sentinel for "broker default" in optional i64 settings.
const DEFAULT_SETTING: i64 = -2;

fn put_opt(buf: &mut BytesMut, v: Option<i64>) {
    buf.put_i64(v.unwrap_or(DEFAULT_SETTING));
}

fn get_opt(r: &mut Reader, what: &'static str) -> Result<Option<i64>, DecodeError> {
    let v = r.i64(what)?;
    Ok((v != DEFAULT_SETTING).then_some(v))
}

impl Request {
    pub fn api_key(&self) -> ApiKey {
        match self {
            Request::Handshake { .. } => ApiKey::Handshake,
            Request::CreateTopic { .. } => ApiKey::CreateTopic,
            Request::DeleteTopic { .. } => ApiKey::DeleteTopic,
            Request::ListTopics => ApiKey::ListTopics,
            Request::DescribeTopic { .. } => ApiKey::DescribeTopic,
            Request::Produce { .. } => ApiKey::Produce,
            Request::Fetch { .. } => ApiKey::Fetch,
            Request::ListOffsets { .. } => ApiKey::ListOffsets,
            Request::Subscribe { .. } => ApiKey::Subscribe,
            Request::AddCredit { .. } => ApiKey::AddCredit,
            Request::Unsubscribe { .. } => ApiKey::Unsubscribe,
            Request::JoinGroup { .. } => ApiKey::JoinGroup,
            Request::Heartbeat { .. } => ApiKey::Heartbeat,
            Request::LeaveGroup { .. } => ApiKey::LeaveGroup,
            Request::OffsetCommit { .. } => ApiKey::OffsetCommit,
            Request::OffsetFetch { .. } => ApiKey::OffsetFetch,
            Request::ListGroups => ApiKey::ListGroups,
            Request::DescribeGroup { .. } => ApiKey::DescribeGroup,
            Request::SaslHandshake { .. } => ApiKey::SaslHandshake,
            Request::SaslAuthenticate { .. } => ApiKey::SaslAuthenticate,
            Request::UpsertUser { .. } => ApiKey::UpsertUser,
            Request::DeleteUser { .. } => ApiKey::DeleteUser,
            Request::ListUsers => ApiKey::ListUsers,
            Request::CreateAcls { .. } => ApiKey::CreateAcls,
            Request::DescribeAcls { .. } => ApiKey::DescribeAcls,
            Request::DeleteAcls { .. } => ApiKey::DeleteAcls,
            Request::DeleteGroup { .. } => ApiKey::DeleteGroup,
        }
    }

    /// Whether the server answers this request (acks=none produce and AddCredit get none).
    pub fn expects_response(&self) -> bool {
        !matches!(
            self,
            Request::Produce {
                acks: Acks::None,
                ..
            } | Request::AddCredit { .. }
        )
    }

    /// [`Request::encode`] without a produce request's records, which it returns (empty for
    /// any other request) for the caller to write after `buf` as they are: the frame's length
    /// already counts them, so a batch goes to the socket without being copied into the frame.
    pub fn encode_head(&self, correlation_id: u32, buf: &mut BytesMut) -> Bytes {
        let Request::Produce {
            topic,
            partition,
            acks,
            records,
        } = self
        else {
            self.encode(correlation_id, buf);
            return Bytes::new();
        };
        let at = frame::begin_frame(buf);
        frame::put_request_header(
            buf,
            RequestHeader {
                api_key: ApiKey::Produce as u16,
                version: 0,
                correlation_id,
            },
        );
        put_string(buf, topic);
        buf.put_u32(*partition);
        buf.put_u8(*acks as u8);
        buf.put_u32(records.len() as u32);
        end_frame_with_tail(buf, at, records.len());
        records.clone()
    }

    /// Appends the whole frame (length prefix included) to `buf`.
    pub fn encode(&self, correlation_id: u32, buf: &mut BytesMut) {
        let at = frame::begin_frame(buf);
        frame::put_request_header(
            buf,
            RequestHeader {
                api_key: self.api_key() as u16,
                version: 0,
                correlation_id,
            },
        );
        match self {
            Request::Handshake { client, versions } => {
                put_string(buf, client);
                buf.put_u32(versions.len() as u32);
                for (key, min, max) in versions {
                    buf.put_u16(*key);
                    buf.put_u16(*min);
                    buf.put_u16(*max);
                }
            }
            Request::CreateTopic { name, settings } => {
                put_string(buf, name);
                buf.put_u32(settings.partitions);
                buf.put_u8(settings.compact.into());
                put_opt(buf, settings.retention_ms);
                put_opt(buf, settings.retention_bytes);
                put_opt(buf, settings.segment_bytes);
            }
            Request::DeleteTopic { name } | Request::DescribeTopic { name } => {
                put_string(buf, name)
            }
            Request::ListTopics => {}
            Request::Produce {
                topic,
                partition,
                acks,
                records,
            } => {
                put_string(buf, topic);
                buf.put_u32(*partition);
                buf.put_u8(*acks as u8);
                put_bytes(buf, records);
            }
            Request::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                max_wait_ms,
            } => {
                put_string(buf, topic);
                buf.put_u32(*partition);
                buf.put_u64(*offset);
                buf.put_u32(*max_bytes);
                buf.put_u32(*max_wait_ms);
            }
            Request::ListOffsets {
                topic,
                partition,
                query,
            } => {
                put_string(buf, topic);
                buf.put_u32(*partition);
                let (kind, ts) = match query {
                    OffsetQuery::Earliest => (0, 0),
                    OffsetQuery::Latest => (1, 0),
                    OffsetQuery::Timestamp(ts) => (2, *ts),
                };
                buf.put_u8(kind);
                buf.put_i64(ts);
            }
            Request::Subscribe {
                topic,
                partition,
                offset,
                credit_bytes,
            } => {
                put_string(buf, topic);
                buf.put_u32(*partition);
                buf.put_u64(*offset);
                buf.put_u32(*credit_bytes);
            }
            Request::AddCredit {
                subscription,
                credit_bytes,
            } => {
                buf.put_u32(*subscription);
                buf.put_u32(*credit_bytes);
            }
            Request::Unsubscribe { subscription } => buf.put_u32(*subscription),
            Request::JoinGroup {
                group,
                member_id,
                client_id,
                topics,
                session_timeout_ms,
                rebalance_timeout_ms,
                assignor,
            } => {
                put_string(buf, group);
                put_string(buf, member_id);
                put_string(buf, client_id);
                put_strings(buf, topics);
                buf.put_u32(*session_timeout_ms);
                buf.put_u32(*rebalance_timeout_ms);
                put_string(buf, assignor);
            }
            Request::Heartbeat {
                group,
                member_id,
                generation,
            } => {
                put_string(buf, group);
                put_string(buf, member_id);
                buf.put_u32(*generation);
            }
            Request::LeaveGroup { group, member_id } => {
                put_string(buf, group);
                put_string(buf, member_id);
            }
            Request::OffsetCommit {
                group,
                member_id,
                generation,
                offsets,
            } => {
                put_string(buf, group);
                put_string(buf, member_id);
                buf.put_u32(*generation);
                buf.put_u32(offsets.len() as u32);
                for o in offsets {
                    put_string(buf, &o.topic);
                    buf.put_u32(o.partition);
                    buf.put_u64(o.offset);
                    put_string(buf, &o.metadata);
                }
            }
            Request::OffsetFetch { group, partitions } => {
                put_string(buf, group);
                put_tps(buf, partitions);
            }
            Request::ListGroups => {}
            Request::DescribeGroup { group } | Request::DeleteGroup { group } => {
                put_string(buf, group)
            }
            Request::SaslHandshake { mechanism } => put_string(buf, mechanism),
            Request::SaslAuthenticate { token } => put_bytes(buf, token),
            Request::UpsertUser {
                name,
                mechanism,
                iterations,
                salt,
                salted_password,
            } => {
                put_string(buf, name);
                put_string(buf, mechanism);
                buf.put_u32(*iterations);
                put_bytes(buf, salt);
                put_bytes(buf, salted_password);
            }
            Request::DeleteUser { name, mechanism } => {
                put_string(buf, name);
                put_string(buf, mechanism);
            }
            Request::ListUsers => {}
            Request::CreateAcls { bindings } => put_acls(buf, bindings),
            Request::DescribeAcls { filter } => put_acl_filter(buf, filter),
            Request::DeleteAcls { filters } => {
                buf.put_u32(filters.len() as u32);
                for f in filters {
                    put_acl_filter(buf, f);
                }
            }
        }
        frame::end_frame(buf, at);
    }

    /// Decodes a request body whose header has been read.
    pub fn decode(header: &RequestHeader, body: Bytes) -> Result<Request, DecodeError> {
        let key = ApiKey::from_u16(header.api_key).ok_or(DecodeError::UnknownRequest {
            api_key: header.api_key,
        })?;
        let (min, max) = key.versions();
        if header.version < min || header.version > max {
            return Err(DecodeError::UnsupportedVersion {
                api_key: header.api_key,
                version: header.version,
            });
        }
        let mut r = Reader::new(body);
        let request = match key {
            ApiKey::Handshake => {
                let client = r.string("client")?;
                let n = r.count("versions", 6)?;
                let mut versions = Vec::with_capacity(n);
                for _ in 0..n {
                    versions.push((
                        r.u16("api_key")?,
                        r.u16("min_version")?,
                        r.u16("max_version")?,
                    ));
                }
                Request::Handshake { client, versions }
            }
            ApiKey::CreateTopic => Request::CreateTopic {
                name: r.string("name")?,
                settings: TopicSettings {
                    partitions: r.u32("partitions")?,
                    compact: r.bool("compact")?,
                    retention_ms: get_opt(&mut r, "retention_ms")?,
                    retention_bytes: get_opt(&mut r, "retention_bytes")?,
                    segment_bytes: get_opt(&mut r, "segment_bytes")?,
                },
            },
            ApiKey::DeleteTopic => Request::DeleteTopic {
                name: r.string("name")?,
            },
            ApiKey::ListTopics => Request::ListTopics,
            ApiKey::DescribeTopic => Request::DescribeTopic {
                name: r.string("name")?,
            },
            ApiKey::Produce => Request::Produce {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                acks: match r.u8("acks")? {
                    0 => Acks::None,
                    1 => Acks::Leader,
                    2 => Acks::Durable,
                    _ => {
                        return Err(DecodeError::Invalid {
                            field: "acks",
                            reason: "must be 0, 1 or 2",
                        })
                    }
                },
                records: r.bytes("records")?,
            },
            ApiKey::Fetch => Request::Fetch {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
                max_bytes: r.u32("max_bytes")?,
                max_wait_ms: r.u32("max_wait_ms")?,
            },
            ApiKey::ListOffsets => {
                let topic = r.string("topic")?;
                let partition = r.u32("partition")?;
                let kind = r.u8("query")?;
                let ts = r.i64("timestamp")?;
                let query = match kind {
                    0 => OffsetQuery::Earliest,
                    1 => OffsetQuery::Latest,
                    2 => OffsetQuery::Timestamp(ts),
                    _ => {
                        return Err(DecodeError::Invalid {
                            field: "query",
                            reason: "must be 0, 1 or 2",
                        })
                    }
                };
                Request::ListOffsets {
                    topic,
                    partition,
                    query,
                }
            }
            ApiKey::Subscribe => Request::Subscribe {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
                credit_bytes: r.u32("credit_bytes")?,
            },
            ApiKey::AddCredit => Request::AddCredit {
                subscription: r.u32("subscription")?,
                credit_bytes: r.u32("credit_bytes")?,
            },
            ApiKey::Unsubscribe => Request::Unsubscribe {
                subscription: r.u32("subscription")?,
            },
            ApiKey::JoinGroup => Request::JoinGroup {
                group: r.string("group")?,
                member_id: r.string("member_id")?,
                client_id: r.string("client_id")?,
                topics: get_strings(&mut r, "topics")?,
                session_timeout_ms: r.u32("session_timeout_ms")?,
                rebalance_timeout_ms: r.u32("rebalance_timeout_ms")?,
                assignor: r.string("assignor")?,
            },
            ApiKey::Heartbeat => Request::Heartbeat {
                group: r.string("group")?,
                member_id: r.string("member_id")?,
                generation: r.u32("generation")?,
            },
            ApiKey::LeaveGroup => Request::LeaveGroup {
                group: r.string("group")?,
                member_id: r.string("member_id")?,
            },
            ApiKey::OffsetCommit => {
                let group = r.string("group")?;
                let member_id = r.string("member_id")?;
                let generation = r.u32("generation")?;
                // Topic and metadata strings (2 bytes each when empty), partition, offset.
                let n = r.count("offsets", 16)?;
                let mut offsets = Vec::with_capacity(n);
                for _ in 0..n {
                    offsets.push(OffsetEntry {
                        topic: r.string("topic")?,
                        partition: r.u32("partition")?,
                        offset: r.u64("offset")?,
                        metadata: r.string("metadata")?,
                    });
                }
                Request::OffsetCommit {
                    group,
                    member_id,
                    generation,
                    offsets,
                }
            }
            ApiKey::OffsetFetch => Request::OffsetFetch {
                group: r.string("group")?,
                partitions: get_tps(&mut r, "partitions")?,
            },
            ApiKey::ListGroups => Request::ListGroups,
            ApiKey::DescribeGroup => Request::DescribeGroup {
                group: r.string("group")?,
            },
            ApiKey::DeleteGroup => Request::DeleteGroup {
                group: r.string("group")?,
            },
            ApiKey::SaslHandshake => Request::SaslHandshake {
                mechanism: r.string("mechanism")?,
            },
            ApiKey::SaslAuthenticate => Request::SaslAuthenticate {
                token: r.bytes("token")?,
            },
            ApiKey::UpsertUser => Request::UpsertUser {
                name: r.string("name")?,
                mechanism: r.string("mechanism")?,
                iterations: r.u32("iterations")?,
                salt: r.bytes("salt")?,
                salted_password: r.bytes("salted_password")?,
            },
            ApiKey::DeleteUser => Request::DeleteUser {
                name: r.string("name")?,
                mechanism: r.string("mechanism")?,
            },
            ApiKey::ListUsers => Request::ListUsers,
            ApiKey::CreateAcls => Request::CreateAcls {
                bindings: get_acls(&mut r, "bindings")?,
            },
            ApiKey::DescribeAcls => Request::DescribeAcls {
                filter: get_acl_filter(&mut r)?,
            },
            ApiKey::DeleteAcls => {
                // Four codes and three absent strings.
                let n = r.count("filters", 7)?;
                let mut filters = Vec::with_capacity(n);
                for _ in 0..n {
                    filters.push(get_acl_filter(&mut r)?);
                }
                Request::DeleteAcls { filters }
            }
        };
        r.finish()?;
        Ok(request)
    }
}

/// One partition's bounds, in topic descriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: u32,
    pub log_start_offset: u64,
    pub high_watermark: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub compact: bool,
    /// Effective retention; -1 for none.
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub partitions: Vec<PartitionState>,
}

/// The body of a successful response, by request type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    Handshake {
        server: String,
        versions: Vec<(u16, u16, u16)>,
        frame_bytes_max: u32,
        in_flight_max: u32,
    },
    /// CreateTopic, DeleteTopic, Unsubscribe and Subscribe answer with no fields.
    Empty,
    Topics(Vec<TopicDescription>),
    Topic(TopicDescription),
    Produced {
        base_offset: u64,
        last_offset: u64,
    },
    Fetched {
        high_watermark: u64,
        log_start_offset: u64,
        records: Bytes,
    },
    /// `None` when no record is as new as the timestamp asked for.
    Offset(Option<u64>),
    Joined {
        member_id: String,
        generation: u32,
        assignment: Vec<(String, u32)>,
    },
    /// Committed offsets in request order; `None` where the group has none.
    Committed(Vec<Option<OffsetEntry>>),
    Groups(Vec<String>),
    Group(GroupInfo),
    /// SaslHandshake: the mechanisms the broker has enabled.
    SaslMechanisms(Vec<String>),
    /// SaslAuthenticate: the server's next token (empty after PLAIN).
    SaslToken(Bytes),
    Users(Vec<UserEntry>),
    /// DescribeAcls: the bindings matched; DeleteAcls: the bindings removed.
    Acls(Vec<AclBinding>),
}

/// A response: an error code with a human message, then the body when the code is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ok(ResponseBody),
    Err { code: ErrorCode, message: String },
}

fn put_description(buf: &mut BytesMut, t: &TopicDescription) {
    put_string(buf, &t.name);
    buf.put_u8(t.compact.into());
    buf.put_i64(t.retention_ms);
    buf.put_i64(t.retention_bytes);
    buf.put_u32(t.partitions.len() as u32);
    for p in &t.partitions {
        buf.put_u32(p.partition);
        buf.put_u64(p.log_start_offset);
        buf.put_u64(p.high_watermark);
    }
}

fn get_description(r: &mut Reader) -> Result<TopicDescription, DecodeError> {
    let name = r.string("name")?;
    let compact = r.bool("compact")?;
    let retention_ms = r.i64("retention_ms")?;
    let retention_bytes = r.i64("retention_bytes")?;
    let n = r.count("partitions", 20)?;
    let mut partitions = Vec::with_capacity(n);
    for _ in 0..n {
        partitions.push(PartitionState {
            partition: r.u32("partition")?,
            log_start_offset: r.u64("log_start_offset")?,
            high_watermark: r.u64("high_watermark")?,
        });
    }
    Ok(TopicDescription {
        name,
        compact,
        retention_ms,
        retention_bytes,
        partitions,
    })
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Err {
            code,
            message: message.into(),
        }
    }

    /// The head of a successful fetch answer whose `records_len` bytes of records the caller
    /// writes after it (from a file, say): the frame's length counts them.
    pub fn encode_fetched_head(
        correlation_id: u32,
        high_watermark: u64,
        log_start_offset: u64,
        records_len: usize,
        buf: &mut BytesMut,
    ) {
        let at = frame::begin_frame(buf);
        frame::put_server_header(
            buf,
            ServerHeader {
                kind: ServerFrameKind::Response,
                correlation_id,
            },
        );
        buf.put_u16(ErrorCode::None as u16);
        put_string(buf, "");
        buf.put_u64(high_watermark);
        buf.put_u64(log_start_offset);
        buf.put_u32(records_len as u32);
        end_frame_with_tail(buf, at, records_len);
    }

    /// Encodes the answer into `buf` except the records a fetch answer ends with, which it
    /// returns (empty for any other answer) for the caller to write after `buf` as they are:
    /// the frame's length already counts them. `buf` followed by the records is exactly what
    /// [`Response::encode`] writes.
    pub fn encode_head(&self, correlation_id: u32, buf: &mut BytesMut) -> Bytes {
        let Response::Ok(ResponseBody::Fetched {
            high_watermark,
            log_start_offset,
            records,
        }) = self
        else {
            self.encode(correlation_id, buf);
            return Bytes::new();
        };
        Response::encode_fetched_head(
            correlation_id,
            *high_watermark,
            *log_start_offset,
            records.len(),
            buf,
        );
        records.clone()
    }

    /// Appends the whole response frame to `buf`.
    pub fn encode(&self, correlation_id: u32, buf: &mut BytesMut) {
        let at = frame::begin_frame(buf);
        frame::put_server_header(
            buf,
            ServerHeader {
                kind: ServerFrameKind::Response,
                correlation_id,
            },
        );
        match self {
            Response::Err { code, message } => {
                buf.put_u16(*code as u16);
                put_string(buf, message);
            }
            Response::Ok(body) => {
                buf.put_u16(ErrorCode::None as u16);
                put_string(buf, "");
                match body {
                    ResponseBody::Handshake {
                        server,
                        versions,
                        frame_bytes_max,
                        in_flight_max,
                    } => {
                        put_string(buf, server);
                        buf.put_u32(versions.len() as u32);
                        for (key, min, max) in versions {
                            buf.put_u16(*key);
                            buf.put_u16(*min);
                            buf.put_u16(*max);
                        }
                        buf.put_u32(*frame_bytes_max);
                        buf.put_u32(*in_flight_max);
                    }
                    ResponseBody::Empty => {}
                    ResponseBody::Topics(topics) => {
                        buf.put_u32(topics.len() as u32);
                        for t in topics {
                            put_description(buf, t);
                        }
                    }
                    ResponseBody::Topic(t) => put_description(buf, t),
                    ResponseBody::Produced {
                        base_offset,
                        last_offset,
                    } => {
                        buf.put_u64(*base_offset);
                        buf.put_u64(*last_offset);
                    }
                    ResponseBody::Fetched {
                        high_watermark,
                        log_start_offset,
                        records,
                    } => {
                        buf.put_u64(*high_watermark);
                        buf.put_u64(*log_start_offset);
                        put_bytes(buf, records);
                    }
                    ResponseBody::Offset(offset) => buf.put_i64(offset.map_or(-1, |o| o as i64)),
                    ResponseBody::Joined {
                        member_id,
                        generation,
                        assignment,
                    } => {
                        put_string(buf, member_id);
                        buf.put_u32(*generation);
                        put_tps(buf, assignment);
                    }
                    ResponseBody::Committed(entries) => {
                        buf.put_u32(entries.len() as u32);
                        for entry in entries {
                            match entry {
                                None => buf.put_u8(0),
                                Some(o) => {
                                    buf.put_u8(1);
                                    put_string(buf, &o.topic);
                                    buf.put_u32(o.partition);
                                    buf.put_u64(o.offset);
                                    put_string(buf, &o.metadata);
                                }
                            }
                        }
                    }
                    ResponseBody::Groups(groups) | ResponseBody::SaslMechanisms(groups) => {
                        put_strings(buf, groups)
                    }
                    ResponseBody::SaslToken(token) => put_bytes(buf, token),
                    ResponseBody::Users(users) => {
                        buf.put_u32(users.len() as u32);
                        for u in users {
                            put_string(buf, &u.name);
                            buf.put_u32(u.mechanisms.len() as u32);
                            for (mechanism, iterations) in &u.mechanisms {
                                put_string(buf, mechanism);
                                buf.put_u32(*iterations);
                            }
                        }
                    }
                    ResponseBody::Group(g) => {
                        put_string(buf, &g.group);
                        put_string(buf, &g.state);
                        buf.put_u32(g.generation);
                        put_string(buf, &g.assignor);
                        buf.put_u32(g.members.len() as u32);
                        for m in &g.members {
                            put_string(buf, &m.member_id);
                            put_string(buf, &m.client_id);
                            put_tps(buf, &m.assignment);
                        }
                        buf.put_u32(g.offsets.len() as u32);
                        for o in &g.offsets {
                            put_string(buf, &o.topic);
                            buf.put_u32(o.partition);
                            buf.put_u64(o.offset);
                            buf.put_i64(o.lag);
                        }
                    }
                    ResponseBody::Acls(bindings) => put_acls(buf, bindings),
                }
            }
        }
        frame::end_frame(buf, at);
    }

    /// Decodes the body of a response to a request of type `key`.
    pub fn decode(key: ApiKey, body: Bytes) -> Result<Response, DecodeError> {
        let mut r = Reader::new(body);
        let code = ErrorCode::from_u16(r.u16("error_code")?);
        let message = r.string("error_message")?;
        if code != ErrorCode::None {
            r.finish()?;
            return Ok(Response::Err { code, message });
        }
        let body = match key {
            ApiKey::Handshake => {
                let server = r.string("server")?;
                let n = r.count("versions", 6)?;
                let mut versions = Vec::with_capacity(n);
                for _ in 0..n {
                    versions.push((
                        r.u16("api_key")?,
                        r.u16("min_version")?,
                        r.u16("max_version")?,
                    ));
                }
                ResponseBody::Handshake {
                    server,
                    versions,
                    frame_bytes_max: r.u32("frame_bytes_max")?,
                    in_flight_max: r.u32("in_flight_max")?,
                }
            }
            ApiKey::CreateTopic
            | ApiKey::DeleteTopic
            | ApiKey::Subscribe
            | ApiKey::Unsubscribe
            | ApiKey::AddCredit
            | ApiKey::CreateAcls
            | ApiKey::DeleteGroup => ResponseBody::Empty,
            ApiKey::DescribeAcls | ApiKey::DeleteAcls => {
                ResponseBody::Acls(get_acls(&mut r, "bindings")?)
            }
            ApiKey::ListTopics => {
                let n = r.count("topics", 23)?;
                let mut topics = Vec::with_capacity(n);
                for _ in 0..n {
                    topics.push(get_description(&mut r)?);
                }
                ResponseBody::Topics(topics)
            }
            ApiKey::DescribeTopic => ResponseBody::Topic(get_description(&mut r)?),
            ApiKey::Produce => ResponseBody::Produced {
                base_offset: r.u64("base_offset")?,
                last_offset: r.u64("last_offset")?,
            },
            ApiKey::Fetch => ResponseBody::Fetched {
                high_watermark: r.u64("high_watermark")?,
                log_start_offset: r.u64("log_start_offset")?,
                records: r.bytes("records")?,
            },
            ApiKey::ListOffsets => {
                let offset = r.i64("offset")?;
                ResponseBody::Offset((offset >= 0).then_some(offset as u64))
            }
            ApiKey::Heartbeat | ApiKey::LeaveGroup | ApiKey::OffsetCommit => ResponseBody::Empty,
            ApiKey::JoinGroup => ResponseBody::Joined {
                member_id: r.string("member_id")?,
                generation: r.u32("generation")?,
                assignment: get_tps(&mut r, "assignment")?,
            },
            ApiKey::OffsetFetch => {
                let n = r.count("offsets", 1)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(match r.u8("present")? {
                        0 => None,
                        1 => Some(OffsetEntry {
                            topic: r.string("topic")?,
                            partition: r.u32("partition")?,
                            offset: r.u64("offset")?,
                            metadata: r.string("metadata")?,
                        }),
                        _ => {
                            return Err(DecodeError::Invalid {
                                field: "present",
                                reason: "must be 0 or 1",
                            })
                        }
                    });
                }
                ResponseBody::Committed(entries)
            }
            ApiKey::ListGroups => ResponseBody::Groups(get_strings(&mut r, "groups")?),
            ApiKey::SaslHandshake => {
                ResponseBody::SaslMechanisms(get_strings(&mut r, "mechanisms")?)
            }
            ApiKey::SaslAuthenticate => ResponseBody::SaslToken(r.bytes("token")?),
            ApiKey::UpsertUser | ApiKey::DeleteUser => ResponseBody::Empty,
            ApiKey::ListUsers => {
                let n = r.count("users", 6)?;
                let mut users = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.string("name")?;
                    let k = r.count("mechanisms", 6)?;
                    let mut mechanisms = Vec::with_capacity(k);
                    for _ in 0..k {
                        mechanisms.push((r.string("mechanism")?, r.u32("iterations")?));
                    }
                    users.push(UserEntry { name, mechanisms });
                }
                ResponseBody::Users(users)
            }
            ApiKey::DescribeGroup => {
                let group = r.string("group")?;
                let state = r.string("state")?;
                let generation = r.u32("generation")?;
                let assignor = r.string("assignor")?;
                let n = r.count("members", 8)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(GroupMember {
                        member_id: r.string("member_id")?,
                        client_id: r.string("client_id")?,
                        assignment: get_tps(&mut r, "assignment")?,
                    });
                }
                let n = r.count("offsets", 22)?;
                let mut offsets = Vec::with_capacity(n);
                for _ in 0..n {
                    offsets.push(GroupOffset {
                        topic: r.string("topic")?,
                        partition: r.u32("partition")?,
                        offset: r.u64("offset")?,
                        lag: r.i64("lag")?,
                    });
                }
                ResponseBody::Group(GroupInfo {
                    group,
                    state,
                    generation,
                    assignor,
                    members,
                    offsets,
                })
            }
        };
        r.finish()?;
        Ok(Response::Ok(body))
    }
}

/// Data the server pushes on a subscription: whole batches from the next offset, and the
/// partition's high watermark when they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub high_watermark: u64,
    pub records: Bytes,
}

impl Push {
    /// [`Push::encode`] without the records, which the caller writes after `buf` (the
    /// frame's length counts them).
    pub fn encode_head(&self, subscription: u32, buf: &mut BytesMut) {
        let at = frame::begin_frame(buf);
        frame::put_server_header(
            buf,
            ServerHeader {
                kind: ServerFrameKind::Push,
                correlation_id: subscription,
            },
        );
        buf.put_u64(self.high_watermark);
        buf.put_u32(self.records.len() as u32);
        end_frame_with_tail(buf, at, self.records.len());
    }

    pub fn encode(&self, subscription: u32, buf: &mut BytesMut) {
        self.encode_head(subscription, buf);
        buf.extend_from_slice(&self.records);
    }

    pub fn decode(body: Bytes) -> Result<Push, DecodeError> {
        let mut r = Reader::new(body);
        let push = Push {
            high_watermark: r.u64("high_watermark")?,
            records: r.bytes("records")?,
        };
        r.finish()?;
        Ok(push)
    }
}

/// [`frame::end_frame`] for a frame whose last `tail` bytes are written separately.
fn end_frame_with_tail(buf: &mut BytesMut, at: usize, tail: usize) {
    let len = (buf.len() - at - frame::LENGTH_BYTES + tail) as u32;
    buf[at..at + frame::LENGTH_BYTES].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod head_tests {
    use super::*;

    #[test]
    fn a_head_and_its_records_are_the_whole_frame() {
        let records = Bytes::from(vec![7u8; 1000]);
        let answers = [
            Response::Ok(ResponseBody::Fetched {
                high_watermark: 42,
                log_start_offset: 3,
                records: records.clone(),
            }),
            Response::Ok(ResponseBody::Fetched {
                high_watermark: 0,
                log_start_offset: 0,
                records: Bytes::new(),
            }),
            Response::Ok(ResponseBody::Offset(Some(9))),
            Response::error(
                ErrorCode::UnknownTopicOrPartition,
                "no such topic".to_string(),
            ),
        ];
        for answer in answers {
            head_and_tail_are_whole(
                |buf| answer.encode(17, buf),
                |buf| answer.encode_head(17, buf),
                &answer,
            );
        }
        let push = Push {
            high_watermark: 5,
            records,
        };
        let mut whole = BytesMut::new();
        push.encode(3, &mut whole);
        let mut head = BytesMut::new();
        push.encode_head(3, &mut head);
        head.extend_from_slice(&push.records);
        assert_eq!(head, whole);
        let requests = [
            Request::Produce {
                topic: "orders".to_string(),
                partition: 2,
                acks: Acks::Durable,
                records: push.records.clone(),
            },
            Request::Produce {
                topic: String::new(),
                partition: 0,
                acks: Acks::None,
                records: Bytes::new(),
            },
            Request::DescribeTopic {
                name: "orders".to_string(),
            },
        ];
        for request in requests {
            head_and_tail_are_whole(
                |buf| request.encode(11, buf),
                |buf| request.encode_head(11, buf),
                &request,
            );
        }
    }

    /// What `encode_head` writes followed by the tail it returns is what `encode` writes.
    fn head_and_tail_are_whole(
        encode: impl FnOnce(&mut BytesMut),
        encode_head: impl FnOnce(&mut BytesMut) -> Bytes,
        what: &dyn std::fmt::Debug,
    ) {
        let mut whole = BytesMut::new();
        encode(&mut whole);
        let mut head = BytesMut::new();
        let tail = encode_head(&mut head);
        head.extend_from_slice(&tail);
        assert_eq!(head, whole, "{what:?}");
    }
}
