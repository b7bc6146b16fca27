//! Request versions Kafka 3.9 serves that `kafka-protocol` no longer encodes (its schemas are
//! Kafka 4's, which dropped them): OffsetCommit v0-v1, OffsetFetch v0, ListOffsets v0,
//! CreateTopics v0-v1, DeleteTopics v0, Produce v0-v2, Fetch v0-v3, and CreateAcls,
//! DescribeAcls and DeleteAcls v0 (which name only literal resource patterns).
//!
//! Each is read into the crate's request type (the shape of the crate's lowest version), is
//! served by the same handler as every other version, and its answer is written in the old
//! version's layout. Where an old layout is a newer one with a field more or less at a fixed
//! place, the bytes are spliced and the crate does the rest; otherwise the fields are read and
//! written here one by one, with the few primitives below.
//!
//! Produce v0-v2 carry message sets v0/v1 and Fetch v0-v3 expect them back; Strand stores only
//! record batches v2. Fetch answers are converted down, as Kafka does: each batch read is
//! decoded (decompressed) and its records written as uncompressed messages of magic 0 (Fetch
//! v0-v1) or 1 (v2-v3, with timestamps); headers and control records have no place there and
//! are left out. An answer's message sets hold about as many bytes as the batches read (at
//! least one batch each), so conversion holds at most one batch's decompressed records beyond
//! what the fetch was charged for. Produce is not converted up: it is answered, not dropped, with
//! UNSUPPORTED_FOR_MESSAGE_FORMAT for every partition, and nothing is written.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, CreateAclsRequest, CreateTopicsRequest, DeleteAclsRequest, DeleteTopicsRequest,
    DescribeAclsRequest, FetchRequest, FetchResponse, ListOffsetsRequest, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, ProduceResponse, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Whether `version` of `api_key` is one this module reads and writes (below the crate's
/// lowest version).
pub(super) fn is_legacy(api_key: ApiKey, version: i16) -> bool {
    version >= 0 && version < api_key.valid_versions().min
}

type Result<T> = std::result::Result<T, String>;

fn bad(api_key: ApiKey, version: i16) -> impl Fn(anyhow::Error) -> String {
    move |e| format!("bad {api_key:?} v{version}: {e}")
}

fn need(buf: &Bytes, n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        buf.remaining() >= n,
        "{n} bytes needed, {} left",
        buf.remaining()
    );
    Ok(())
}

fn get_i8(buf: &mut Bytes) -> anyhow::Result<i8> {
    need(buf, 1)?;
    Ok(buf.get_i8())
}

fn get_i32(buf: &mut Bytes) -> anyhow::Result<i32> {
    need(buf, 4)?;
    Ok(buf.get_i32())
}

fn get_i64(buf: &mut Bytes) -> anyhow::Result<i64> {
    need(buf, 8)?;
    Ok(buf.get_i64())
}

/// A nullable string (i16 length, -1 for null).
fn get_nullable_string(buf: &mut Bytes) -> anyhow::Result<Option<StrBytes>> {
    need(buf, 2)?;
    let len = buf.get_i16();
    let Ok(len) = usize::try_from(len) else {
        return Ok(None);
    };
    need(buf, len)?;
    Ok(Some(StrBytes::from_utf8(buf.split_to(len))?))
}

fn get_string(buf: &mut Bytes) -> anyhow::Result<StrBytes> {
    get_nullable_string(buf)?.ok_or_else(|| anyhow::anyhow!("null where a string is required"))
}

/// Reads an array's element count: -1 (null) as none, and never more elements than the bytes
/// left could hold, so a hostile count fails when the bytes run out instead of allocating.
fn count(buf: &mut Bytes) -> anyhow::Result<usize> {
    let n = usize::try_from(get_i32(buf)?).unwrap_or(0);
    anyhow::ensure!(n <= buf.remaining(), "array of {n} elements in fewer bytes");
    Ok(n)
}

fn put_string(out: &mut BytesMut, s: &str) -> anyhow::Result<()> {
    let len = i16::try_from(s.len())?;
    out.put_i16(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_nullable_string(out: &mut BytesMut, s: Option<&str>) -> anyhow::Result<()> {
    match s {
        Some(s) => put_string(out, s),
        None => {
            out.put_i16(-1);
            Ok(())
        }
    }
}

fn put_count(out: &mut BytesMut, n: usize) -> anyhow::Result<()> {
    out.put_i32(i32::try_from(n)?);
    Ok(())
}

/// Reads the body of a legacy request into the crate's request type.
pub(super) fn decode(api_key: ApiKey, version: i16, mut body: Bytes) -> Result<RequestKind> {
    let bad = bad(api_key, version);
    Ok(match api_key {
        // v0 (offsets kept in ZooKeeper by old Kafka) has v1's layout.
        ApiKey::OffsetFetch => {
            RequestKind::OffsetFetch(OffsetFetchRequest::decode(&mut body, 1).map_err(bad)?)
        }
        // v0 has v1's layout.
        ApiKey::DeleteTopics => {
            RequestKind::DeleteTopics(DeleteTopicsRequest::decode(&mut body, 1).map_err(bad)?)
        }
        // v1 has v2's layout; v0 lacks v1's trailing validate_only.
        ApiKey::CreateTopics => {
            let mut spliced = BytesMut::from(&body[..]);
            if version == 0 {
                spliced.put_u8(0);
            }
            RequestKind::CreateTopics(
                CreateTopicsRequest::decode(&mut spliced.freeze(), 2).map_err(bad)?,
            )
        }
        // v0-v2 lack v3's leading transactional_id (null for them).
        ApiKey::Produce => {
            let mut spliced = BytesMut::with_capacity(body.len() + 2);
            spliced.put_i16(-1);
            spliced.put_slice(&body);
            RequestKind::Produce(ProduceRequest::decode(&mut spliced.freeze(), 3).map_err(bad)?)
        }
        // v4 adds isolation_level after v3's max_bytes, which v0-v2 lack; both sit after the
        // fixed replica_id, max_wait_ms and min_bytes.
        ApiKey::Fetch => {
            let fixed = if version == 3 { 16 } else { 12 };
            if body.len() < fixed {
                return Err(format!("bad Fetch v{version}: {} bytes", body.len()));
            }
            let mut spliced = BytesMut::with_capacity(body.len() + 5);
            spliced.put_slice(&body[..fixed]);
            if version < 3 {
                spliced.put_i32(i32::MAX);
            }
            spliced.put_i8(0);
            spliced.put_slice(&body[fixed..]);
            RequestKind::Fetch(FetchRequest::decode(&mut spliced.freeze(), 4).map_err(bad)?)
        }
        ApiKey::OffsetCommit => {
            RequestKind::OffsetCommit(offset_commit(&mut body, version).map_err(bad)?)
        }
        ApiKey::ListOffsets => RequestKind::ListOffsets(list_offsets(&mut body).map_err(bad)?),
        ApiKey::CreateAcls => RequestKind::CreateAcls(create_acls(&mut body).map_err(bad)?),
        ApiKey::DescribeAcls => {
            let f = acl_filter(&mut body).map_err(bad)?;
            RequestKind::DescribeAcls(
                DescribeAclsRequest::default()
                    .with_resource_type_filter(f.resource_type_filter)
                    .with_resource_name_filter(f.resource_name_filter)
                    .with_pattern_type_filter(f.pattern_type_filter)
                    .with_principal_filter(f.principal_filter)
                    .with_host_filter(f.host_filter)
                    .with_operation(f.operation)
                    .with_permission_type(f.permission_type),
            )
        }
        ApiKey::DeleteAcls => {
            let mut filters = Vec::new();
            for _ in 0..count(&mut body).map_err(&bad)? {
                filters.push(acl_filter(&mut body).map_err(&bad)?);
            }
            RequestKind::DeleteAcls(DeleteAclsRequest::default().with_filters(filters))
        }
        other => return Err(format!("{other:?} v{version} is not served")),
    })
}

/// OffsetCommit v0: group, then per partition offset and metadata. v1 adds the generation and
/// member id, and a commit timestamp per partition (which Strand, keeping offsets until they
/// are replaced, has no use for, like v2-v4's retention time).
fn offset_commit(buf: &mut Bytes, version: i16) -> anyhow::Result<OffsetCommitRequest> {
    let group_id = get_string(buf)?;
    let (generation, member_id) = if version >= 1 {
        let generation = get_i32(buf)?;
        let member_id = get_string(buf)?;
        (generation, member_id)
    } else {
        // A v0 commit comes from outside any membership, as generation -1 with no member id.
        (-1, StrBytes::default())
    };
    let mut topics = Vec::new();
    for _ in 0..count(buf)? {
        let name = get_string(buf)?;
        let mut partitions = Vec::new();
        for _ in 0..count(buf)? {
            let index = get_i32(buf)?;
            let offset = get_i64(buf)?;
            if version >= 1 {
                let _commit_timestamp = get_i64(buf)?;
            }
            let metadata = get_nullable_string(buf)?;
            partitions.push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(index)
                    .with_committed_offset(offset)
                    .with_committed_metadata(metadata),
            );
        }
        topics.push(
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(name))
                .with_partitions(partitions),
        );
    }
    Ok(OffsetCommitRequest::default()
        .with_group_id(group_id.into())
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(member_id)
        .with_retention_time_ms(-1)
        .with_topics(topics))
}

/// Kafka's code for the literal resource pattern, the only one ACL requests v0 can name.
const PATTERN_LITERAL: i8 = 3;

/// CreateAcls v0: v1 without the resource pattern type, which is literal.
fn create_acls(buf: &mut Bytes) -> anyhow::Result<CreateAclsRequest> {
    let mut creations = Vec::new();
    for _ in 0..count(buf)? {
        let resource_type = get_i8(buf)?;
        let resource_name = get_string(buf)?;
        let principal = get_string(buf)?;
        let host = get_string(buf)?;
        let operation = get_i8(buf)?;
        let permission_type = get_i8(buf)?;
        creations.push(
            AclCreation::default()
                .with_resource_type(resource_type)
                .with_resource_name(resource_name)
                .with_resource_pattern_type(PATTERN_LITERAL)
                .with_principal(principal)
                .with_host(host)
                .with_operation(operation)
                .with_permission_type(permission_type),
        );
    }
    Ok(CreateAclsRequest::default().with_creations(creations))
}

/// An ACL filter of DescribeAcls or DeleteAcls v0: v1's without the pattern type, which is
/// literal (Kafka matches v0 filters against literal patterns only).
fn acl_filter(buf: &mut Bytes) -> anyhow::Result<DeleteAclsFilter> {
    let resource_type_filter = get_i8(buf)?;
    let resource_name_filter = get_nullable_string(buf)?;
    let principal_filter = get_nullable_string(buf)?;
    let host_filter = get_nullable_string(buf)?;
    let operation = get_i8(buf)?;
    let permission_type = get_i8(buf)?;
    Ok(DeleteAclsFilter::default()
        .with_resource_type_filter(resource_type_filter)
        .with_resource_name_filter(resource_name_filter)
        .with_pattern_type_filter(PATTERN_LITERAL)
        .with_principal_filter(principal_filter)
        .with_host_filter(host_filter)
        .with_operation(operation)
        .with_permission_type(permission_type))
}

/// ListOffsets v0: v1 with a maximum number of offsets per partition, which is at most one
/// here (see [`encode`]).
fn list_offsets(buf: &mut Bytes) -> anyhow::Result<ListOffsetsRequest> {
    let replica_id = get_i32(buf)?;
    let mut topics = Vec::new();
    for _ in 0..count(buf)? {
        let name = get_string(buf)?;
        let mut partitions = Vec::new();
        for _ in 0..count(buf)? {
            let index = get_i32(buf)?;
            let timestamp = get_i64(buf)?;
            let _max_num_offsets = get_i32(buf)?;
            partitions.push(
                ListOffsetsPartition::default()
                    .with_partition_index(index)
                    .with_timestamp(timestamp),
            );
        }
        topics.push(
            ListOffsetsTopic::default()
                .with_name(TopicName(name))
                .with_partitions(partitions),
        );
    }
    Ok(ListOffsetsRequest::default()
        .with_replica_id(replica_id.into())
        .with_topics(topics))
}

/// The answer to a legacy Produce, which is refused without writing anything (see the module
/// doc); `None` for the other requests, which are served. A Produce with acks=0 is answered
/// with nothing, as any acks=0 Produce.
pub(super) fn refused(request: &RequestKind) -> Option<Option<ResponseKind>> {
    match request {
        RequestKind::Produce(r) => Some((r.acks != 0).then(|| {
            let code = ResponseError::UnsupportedForMessageFormat.code();
            let responses = r
                .topic_data
                .iter()
                .map(|t| {
                    TopicProduceResponse::default()
                        .with_name(t.name.clone())
                        .with_partition_responses(
                            t.partition_data
                                .iter()
                                .map(|p| {
                                    PartitionProduceResponse::default()
                                        .with_index(p.index)
                                        .with_error_code(code)
                                        .with_base_offset(-1)
                                        .with_log_append_time_ms(-1)
                                })
                                .collect(),
                        )
                })
                .collect();
            ResponseKind::Produce(ProduceResponse::default().with_responses(responses))
        })),
        _ => None,
    }
}

/// Rewrites the records of a Fetch v0-v3 answer as message sets (see the module doc). A
/// partition whose batches cannot be decoded is answered CORRUPT_MESSAGE with no records.
pub(super) fn down_convert(response: &mut FetchResponse, version: i16) {
    let magic = if version >= 2 { 1 } else { 0 };
    for topic in &mut response.responses {
        for p in &mut topic.partitions {
            let Some(batches) = p.records.take().filter(|b| !b.is_empty()) else {
                p.records = Some(Bytes::new());
                continue;
            };
            match message_set(batches, magic) {
                Ok(set) => p.records = Some(set),
                Err(e) => {
                    tracing::warn!(topic = %topic.topic.0, partition = p.partition_index, error = %e, "cannot convert stored batches for an old fetcher");
                    p.error_code = ResponseError::CorruptMessage.code();
                    p.records = Some(Bytes::new());
                }
            }
        }
    }
}

/// The records of `batches` as a message set of `magic` 0 or 1, uncompressed. Batches are
/// converted one at a time, and none is started once the output holds as many bytes as the
/// batches read: decompressed records may take many times the room of the batches the fetch
/// was charged for, and the fetcher asks again from where the answer stops. The first batch is
/// always converted, so a fetcher always makes progress.
fn message_set(batches: Bytes, magic: i8) -> anyhow::Result<Bytes> {
    use kafka_protocol::records::{RecordBatchDecoder, TimestampType};
    let limit = batches.len();
    let mut out = BytesMut::with_capacity(limit);
    let mut at = 0;
    for (header, raw) in strand_client::batch::Batches::new(&batches) {
        if at > 0 && out.len() >= limit {
            break;
        }
        let mut one = batches.slice(at..at + raw.len());
        at += header.total_len();
        let set = RecordBatchDecoder::decode(&mut one)?;
        for record in set.records.iter().filter(|r| !r.control) {
            let mut message = BytesMut::new();
            message.put_i8(magic);
            let log_append_time = record.timestamp_type == TimestampType::LogAppend;
            message.put_i8(if magic == 1 && log_append_time {
                0x08
            } else {
                0
            });
            if magic == 1 {
                message.put_i64(record.timestamp);
            }
            for field in [&record.key, &record.value] {
                match field {
                    None => message.put_i32(-1),
                    Some(b) => {
                        message.put_i32(i32::try_from(b.len())?);
                        message.put_slice(b);
                    }
                }
            }
            out.put_i64(record.offset);
            out.put_i32(i32::try_from(4 + message.len())?);
            out.put_u32(crc32fast::hash(&message));
            out.put_slice(&message);
        }
    }
    anyhow::ensure!(at > 0, "no whole batch in {} bytes", batches.len());
    Ok(out.freeze())
}

/// Writes the answer to a legacy request in its version's layout.
pub(super) fn encode(response: &ResponseKind, version: i16, out: &mut BytesMut) -> Result<()> {
    let failed = |e: anyhow::Error| format!("encoding a v{version} answer: {e}");
    match response {
        // v0 and v1 answers have v2's layout.
        ResponseKind::OffsetCommit(r) => r.encode(out, 2).map_err(failed),
        // v0's answer has v1's layout.
        ResponseKind::CreateAcls(r) => r.encode(out, 1).map_err(failed),
        // v0's answers are v1's without the pattern types.
        ResponseKind::DescribeAcls(r) => (|| {
            out.put_i32(r.throttle_time_ms);
            out.put_i16(r.error_code);
            put_nullable_string(out, r.error_message.as_deref())?;
            put_count(out, r.resources.len())?;
            for resource in &r.resources {
                out.put_i8(resource.resource_type);
                put_string(out, &resource.resource_name)?;
                put_count(out, resource.acls.len())?;
                for acl in &resource.acls {
                    put_string(out, &acl.principal)?;
                    put_string(out, &acl.host)?;
                    out.put_i8(acl.operation);
                    out.put_i8(acl.permission_type);
                }
            }
            Ok(())
        })()
        .map_err(failed),
        ResponseKind::DeleteAcls(r) => (|| {
            out.put_i32(r.throttle_time_ms);
            put_count(out, r.filter_results.len())?;
            for result in &r.filter_results {
                out.put_i16(result.error_code);
                put_nullable_string(out, result.error_message.as_deref())?;
                put_count(out, result.matching_acls.len())?;
                for acl in &result.matching_acls {
                    out.put_i16(acl.error_code);
                    put_nullable_string(out, acl.error_message.as_deref())?;
                    out.put_i8(acl.resource_type);
                    put_string(out, &acl.resource_name)?;
                    put_string(out, &acl.principal)?;
                    put_string(out, &acl.host)?;
                    out.put_i8(acl.operation);
                    out.put_i8(acl.permission_type);
                }
            }
            Ok(())
        })()
        .map_err(failed),
        ResponseKind::OffsetFetch(r) => r.encode(out, 1).map_err(failed),
        // v1's answer is v2's without the leading throttle time; v0's also has no messages.
        ResponseKind::CreateTopics(r) if version == 1 => {
            without_throttle_time(out, |b| r.encode(b, 2)).map_err(failed)
        }
        ResponseKind::CreateTopics(r) => (|| {
            put_count(out, r.topics.len())?;
            for t in &r.topics {
                put_string(out, &t.name.0)?;
                out.put_i16(t.error_code);
            }
            Ok(())
        })()
        .map_err(failed),
        // v0's answer is v1's without the leading throttle time.
        ResponseKind::DeleteTopics(r) => {
            without_throttle_time(out, |b| r.encode(b, 1)).map_err(failed)
        }
        ResponseKind::ListOffsets(r) => (|| {
            put_count(out, r.topics.len())?;
            for t in &r.topics {
                put_string(out, &t.name.0)?;
                put_count(out, t.partitions.len())?;
                for p in &t.partitions {
                    out.put_i32(p.partition_index);
                    out.put_i16(p.error_code);
                    // Old-style offsets: the one offset found, or none.
                    let offsets: Vec<i64> = (p.error_code == 0 && p.offset >= 0)
                        .then_some(p.offset)
                        .into_iter()
                        .collect();
                    put_count(out, offsets.len())?;
                    offsets.iter().for_each(|o| out.put_i64(*o));
                }
            }
            Ok(())
        })()
        .map_err(failed),
        // v2's answer has v3's layout; v1's lacks the log append time, v0's also the trailing
        // throttle time.
        ResponseKind::Produce(r) if version == 2 => r.encode(out, 3).map_err(failed),
        ResponseKind::Produce(r) => (|| {
            put_count(out, r.responses.len())?;
            for t in &r.responses {
                put_string(out, &t.name.0)?;
                put_count(out, t.partition_responses.len())?;
                for p in &t.partition_responses {
                    out.put_i32(p.index);
                    out.put_i16(p.error_code);
                    out.put_i64(p.base_offset);
                }
            }
            if version == 1 {
                out.put_i32(r.throttle_time_ms);
            }
            Ok(())
        })()
        .map_err(failed),
        // v1-v3 lead with the throttle time; each partition has no more than v0's fields.
        ResponseKind::Fetch(r) => (|| {
            if version >= 1 {
                out.put_i32(r.throttle_time_ms);
            }
            put_count(out, r.responses.len())?;
            for t in &r.responses {
                put_string(out, &t.topic.0)?;
                put_count(out, t.partitions.len())?;
                for p in &t.partitions {
                    out.put_i32(p.partition_index);
                    out.put_i16(p.error_code);
                    out.put_i64(p.high_watermark);
                    let records = p.records.as_deref().unwrap_or_default();
                    out.put_i32(i32::try_from(records.len())?);
                    out.put_slice(records);
                }
            }
            Ok(())
        })()
        .map_err(failed),
        _ => Err(format!("no v{version} layout for this answer")),
    }
}

/// Encodes with `encode` and drops the throttle time it writes first.
fn without_throttle_time(
    out: &mut BytesMut,
    encode: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut full = BytesMut::new();
    encode(&mut full)?;
    anyhow::ensure!(full.len() >= 4, "answer shorter than its throttle time");
    out.put_slice(&full[4..]);
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::list_offsets_response::{
        ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
    };
    use kafka_protocol::messages::{CreateTopicsResponse, ListOffsetsResponse};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn put_str(b: &mut BytesMut, s: &str) {
        b.put_i16(s.len() as i16);
        b.put_slice(s.as_bytes());
    }

    /// A request body in Kafka 3.9's layout for `version`, written field by field: topic `t`,
    /// partition 0, group `g`.
    pub(in crate::kafka) fn example_body(api_key: ApiKey, version: i16) -> BytesMut {
        let mut b = BytesMut::new();
        match api_key {
            ApiKey::Produce => {
                b.put_i16(1);
                b.put_i32(5_000);
                b.put_i32(1);
                put_str(&mut b, "t");
                b.put_i32(1);
                b.put_i32(0);
                b.put_i32(3);
                b.put_slice(b"abc"); // a message set, never looked at
            }
            ApiKey::Fetch => {
                b.put_i32(-1);
                b.put_i32(100);
                b.put_i32(1);
                if version == 3 {
                    b.put_i32(4096);
                }
                b.put_i32(1);
                put_str(&mut b, "t");
                b.put_i32(1);
                b.put_i32(0);
                b.put_i64(17);
                b.put_i32(1024);
            }
            ApiKey::ListOffsets => {
                b.put_i32(-1);
                b.put_i32(1);
                put_str(&mut b, "t");
                b.put_i32(1);
                b.put_i32(0);
                b.put_i64(-2);
                b.put_i32(1);
            }
            ApiKey::OffsetCommit => {
                put_str(&mut b, "g");
                if version == 1 {
                    b.put_i32(4);
                    put_str(&mut b, "m");
                }
                b.put_i32(1);
                put_str(&mut b, "t");
                b.put_i32(1);
                b.put_i32(0);
                b.put_i64(42);
                if version == 1 {
                    b.put_i64(1_700_000_000_000);
                }
                put_str(&mut b, "meta");
            }
            ApiKey::OffsetFetch => {
                put_str(&mut b, "g");
                b.put_i32(1);
                put_str(&mut b, "t");
                b.put_i32(1);
                b.put_i32(0);
            }
            ApiKey::CreateTopics => {
                b.put_i32(1);
                put_str(&mut b, "t");
                b.put_i32(3);
                b.put_i16(1);
                b.put_i32(0);
                b.put_i32(1);
                put_str(&mut b, "retention.ms");
                put_str(&mut b, "1000");
                b.put_i32(5_000);
                if version == 1 {
                    b.put_u8(1);
                }
            }
            ApiKey::DeleteTopics => {
                b.put_i32(1);
                put_str(&mut b, "t");
                b.put_i32(5_000);
            }
            ApiKey::CreateAcls => {
                b.put_i32(1);
                b.put_i8(2); // topic
                put_str(&mut b, "t");
                put_str(&mut b, "User:alice");
                put_str(&mut b, "*");
                b.put_i8(3); // read
                b.put_i8(3); // allow
            }
            ApiKey::DescribeAcls | ApiKey::DeleteAcls => {
                if api_key == ApiKey::DeleteAcls {
                    b.put_i32(1);
                }
                b.put_i8(1); // any resource type
                b.put_i16(-1); // any name
                put_str(&mut b, "User:alice");
                b.put_i16(-1); // any host
                b.put_i8(1); // any operation
                b.put_i8(1); // any permission
            }
            other => panic!("{other:?} has no legacy versions"),
        }
        b
    }

    fn decoded(api_key: ApiKey, version: i16) -> RequestKind {
        decode(api_key, version, example_body(api_key, version).freeze()).unwrap()
    }

    #[test]
    fn old_layouts_read_into_the_crate_types() {
        let RequestKind::OffsetCommit(v0) = decoded(ApiKey::OffsetCommit, 0) else {
            panic!()
        };
        assert_eq!(v0.generation_id_or_member_epoch, -1);
        assert!(v0.member_id.is_empty());
        let p = &v0.topics[0].partitions[0];
        assert_eq!(
            (p.committed_offset, p.committed_metadata.as_deref()),
            (42, Some("meta"))
        );
        let RequestKind::OffsetCommit(v1) = decoded(ApiKey::OffsetCommit, 1) else {
            panic!()
        };
        assert_eq!(
            (v1.generation_id_or_member_epoch, v1.member_id.as_str()),
            (4, "m")
        );
        assert_eq!(v1.topics[0].partitions[0].committed_offset, 42);

        let RequestKind::ListOffsets(l) = decoded(ApiKey::ListOffsets, 0) else {
            panic!()
        };
        assert_eq!(l.topics[0].partitions[0].timestamp, -2);

        for version in 0..=3 {
            let RequestKind::Fetch(f) = decoded(ApiKey::Fetch, version) else {
                panic!()
            };
            assert_eq!((f.max_wait_ms, f.min_bytes), (100, 1));
            assert_eq!(f.max_bytes, if version == 3 { 4096 } else { i32::MAX });
            let p = &f.topics[0].partitions[0];
            assert_eq!((p.fetch_offset, p.partition_max_bytes), (17, 1024));
        }
        for version in 0..=2 {
            let RequestKind::Produce(p) = decoded(ApiKey::Produce, version) else {
                panic!()
            };
            assert_eq!((p.acks, p.transactional_id.is_none()), (1, true));
            let data = &p.topic_data[0].partition_data[0];
            assert_eq!(data.records.as_deref(), Some(&b"abc"[..]));
        }
        for version in 0..=1 {
            let RequestKind::CreateTopics(c) = decoded(ApiKey::CreateTopics, version) else {
                panic!()
            };
            assert_eq!(c.topics[0].num_partitions, 3);
            assert_eq!(c.topics[0].configs[0].value.as_deref(), Some("1000"));
            assert_eq!(c.validate_only, version == 1);
        }
        let RequestKind::DeleteTopics(d) = decoded(ApiKey::DeleteTopics, 0) else {
            panic!()
        };
        assert_eq!(d.topic_names[0].as_str(), "t");
        let RequestKind::OffsetFetch(o) = decoded(ApiKey::OffsetFetch, 0) else {
            panic!()
        };
        assert_eq!(o.topics.unwrap()[0].partition_indexes, vec![0]);

        let RequestKind::CreateAcls(c) = decoded(ApiKey::CreateAcls, 0) else {
            panic!()
        };
        let c = &c.creations[0];
        assert_eq!((c.resource_type, c.resource_name.as_str()), (2, "t"));
        assert_eq!(
            (c.resource_pattern_type, c.principal.as_str()),
            (3, "User:alice")
        );
        assert_eq!(
            (c.host.as_str(), c.operation, c.permission_type),
            ("*", 3, 3)
        );
        let RequestKind::DescribeAcls(d) = decoded(ApiKey::DescribeAcls, 0) else {
            panic!()
        };
        assert_eq!((d.resource_type_filter, d.pattern_type_filter), (1, 3));
        assert_eq!(d.resource_name_filter, None);
        assert_eq!(d.principal_filter.as_deref(), Some("User:alice"));
        let RequestKind::DeleteAcls(d) = decoded(ApiKey::DeleteAcls, 0) else {
            panic!()
        };
        assert_eq!(d.filters[0].host_filter, None);
        assert_eq!(d.filters[0].pattern_type_filter, 3);
    }

    #[test]
    fn truncated_and_lying_bodies_are_errors() {
        for (api_key, version) in [
            (ApiKey::OffsetCommit, 0),
            (ApiKey::OffsetCommit, 1),
            (ApiKey::ListOffsets, 0),
            (ApiKey::Fetch, 2),
            (ApiKey::Produce, 0),
        ] {
            let body = example_body(api_key, version);
            for cut in 0..body.len() - 1 {
                let short = Bytes::copy_from_slice(&body[..cut]);
                let _ = decode(api_key, version, short);
            }
        }
        // A topic count far beyond the bytes left fails without allocating for it.
        let mut b = BytesMut::new();
        put_str(&mut b, "g");
        b.put_i32(i32::MAX);
        assert!(decode(ApiKey::OffsetCommit, 0, b.freeze()).is_err());
    }

    fn encoded(response: &ResponseKind, version: i16) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(response, version, &mut out).unwrap();
        out.to_vec()
    }

    #[test]
    fn answers_take_the_old_layouts() {
        let list = ResponseKind::ListOffsets(ListOffsetsResponse::default().with_topics(vec![
            ListOffsetsTopicResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![ListOffsetsPartitionResponse::default()
                    .with_partition_index(2)
                    .with_offset(9)]),
        ]));
        let mut v0 = vec![
            0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1,
        ];
        v0.extend_from_slice(&9i64.to_be_bytes());
        assert_eq!(encoded(&list, 0), v0);

        let created = CreateTopicsResponse::default()
            .with_throttle_time_ms(7)
            .with_topics(vec![CreatableTopicResult::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_error_code(36)
                .with_error_message(Some(StrBytes::from_static_str("x")))]);
        let created = ResponseKind::CreateTopics(created);
        assert_eq!(encoded(&created, 0), [0, 0, 0, 1, 0, 1, b't', 0, 36]);
        assert_eq!(
            encoded(&created, 1),
            [0, 0, 0, 1, 0, 1, b't', 0, 36, 0, 1, b'x']
        );

        let produce = refused(&decoded(ApiKey::Produce, 0)).unwrap().unwrap();
        let mut v0 = vec![0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 0, 0, 43];
        v0.extend_from_slice(&(-1i64).to_be_bytes());
        assert_eq!(encoded(&produce, 0), v0);
        let mut v1 = v0.clone();
        v1.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(encoded(&produce, 1), v1, "v1 adds the throttle time last");

        let fetch = ResponseKind::Fetch(FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![PartitionData::default()
                    .with_error_code(1)
                    .with_high_watermark(5)
                    .with_records(Some(Bytes::from_static(b"ab")))]),
        ]));
        let mut v0 = vec![0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        v0.extend_from_slice(&5i64.to_be_bytes());
        v0.extend_from_slice(&[0, 0, 0, 2, b'a', b'b']);
        assert_eq!(encoded(&fetch, 0), v0);
        let mut v1 = vec![0, 0, 0, 0];
        v1.extend_from_slice(&v0);
        assert_eq!(encoded(&fetch, 1), v1, "v1 leads with the throttle time");

        // An acks=0 Produce gets no answer, as at every version.
        let mut body = example_body(ApiKey::Produce, 0);
        body[..2].copy_from_slice(&0i16.to_be_bytes());
        let request = decode(ApiKey::Produce, 0, body.freeze()).unwrap();
        assert_eq!(refused(&request), Some(None));
    }

    /// Two stored batches, one gzip-compressed, with a key, a null value and a header, read as
    /// message sets of magic 0 and 1: every record in order, CRC-32 right, headers left out.
    #[test]
    fn fetched_batches_are_converted_to_message_sets() {
        let record = |offset: i64, key: Option<&'static [u8]>, value: Option<&'static [u8]>| {
            let mut headers = kafka_protocol::indexmap::IndexMap::new();
            headers.insert(
                StrBytes::from_static_str("h"),
                Some(Bytes::from_static(b"v")),
            );
            Record {
                transactional: false,
                control: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset,
                sequence: -1,
                timestamp: 1_700_000_000_000 + offset,
                key: key.map(Bytes::from_static),
                value: value.map(Bytes::from_static),
                headers,
                delete_horizon: false,
            }
        };
        let mut stored = BytesMut::new();
        for (records, compression) in [
            (vec![record(0, Some(b"k0"), Some(b"v0"))], Compression::None),
            (
                vec![record(1, None, Some(b"v1")), record(2, Some(b"k2"), None)],
                Compression::Gzip,
            ),
        ] {
            let options = RecordEncodeOptions {
                version: 2,
                compression,
            };
            RecordBatchEncoder::encode(&mut stored, &records, &options).unwrap();
        }
        for (version, magic) in [(0i16, 0i8), (1, 0), (2, 1), (3, 1)] {
            let mut response =
                FetchResponse::default()
                    .with_responses(vec![FetchableTopicResponse::default().with_partitions(
                        vec![PartitionData::default().with_records(Some(stored.clone().freeze()))],
                    )]);
            down_convert(&mut response, version);
            let p = &response.responses[0].partitions[0];
            assert_eq!(p.error_code, 0);
            let mut set = p.records.clone().unwrap();
            let mut seen = Vec::new();
            while set.has_remaining() {
                let offset = set.get_i64();
                let size = set.get_i32() as usize;
                let mut message = set.split_to(size);
                let crc = message.get_u32();
                assert_eq!(crc, crc32fast::hash(&message), "v{version}: CRC-32");
                assert_eq!(message.get_i8(), magic);
                assert_eq!(message.get_i8(), 0, "uncompressed, creation time");
                if magic == 1 {
                    assert_eq!(message.get_i64(), 1_700_000_000_000 + offset);
                }
                let mut field = || {
                    let len = message.get_i32();
                    (len >= 0).then(|| message.split_to(len as usize).to_vec())
                };
                let key = field();
                let value = field();
                assert!(!message.has_remaining(), "no headers");
                seen.push((offset, key, value));
            }
            assert_eq!(
                seen,
                vec![
                    (0, Some(b"k0".to_vec()), Some(b"v0".to_vec())),
                    (1, None, Some(b"v1".to_vec())),
                    (2, Some(b"k2".to_vec()), None),
                ],
                "v{version}"
            );
        }
        // Bytes that are no batch: CORRUPT_MESSAGE, no records.
        let mut response =
            FetchResponse::default()
                .with_responses(vec![FetchableTopicResponse::default().with_partitions(
                    vec![PartitionData::default().with_records(Some(Bytes::from_static(&[0; 70])))],
                )]);
        down_convert(&mut response, 2);
        let p = &response.responses[0].partitions[0];
        assert_eq!((p.error_code, p.records.as_deref()), (2, Some(&[][..])));
    }

    /// Batches that decompress to far more than they take stored: the answer stops after the
    /// first, whole, and the fetcher asks again from there.
    #[test]
    fn conversion_stops_near_the_bytes_read() {
        let mut stored = BytesMut::new();
        for offset in 0..3 {
            let record = Record {
                transactional: false,
                control: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset,
                sequence: -1,
                timestamp: 0,
                key: None,
                value: Some(Bytes::from(vec![b'z'; 100_000])),
                headers: Default::default(),
                delete_horizon: false,
            };
            let options = RecordEncodeOptions {
                version: 2,
                compression: Compression::Gzip,
            };
            RecordBatchEncoder::encode(&mut stored, [&record], &options).unwrap();
        }
        assert!(stored.len() < 3_000, "{} bytes stored", stored.len());
        let set = message_set(stored.freeze(), 1).unwrap();
        assert_eq!(
            set.len(),
            8 + 4 + 4 + 1 + 1 + 8 + 4 + 4 + 100_000,
            "one message"
        );
    }
}
