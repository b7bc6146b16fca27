//! Transactions on the Kafka listener: InitProducerId with a transactional id,
//! AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit and EndTxn, on the broker's one
//! [`crate::txn::Transactions`] coordinator; and what `read_committed` needs of a partition
//! (its last stable offset, the aborted transactions in a fetched range).
//!
//! Authorization is Kafka's: Write on the TransactionalId for every transactional request;
//! Write on each topic added to a transaction; Read on the group (and Read on each topic) for
//! offsets committed in one.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::fetch_response::AbortedTransaction;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId, TopicName, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use strand_client::batch::Batches;

use super::data::partition_index;
use super::{error_code, Context};
use crate::group::CommittedOffset;
use crate::security::acl::{Operation, ResourceType};
use crate::security::Session;
use crate::txn::TxnError;

/// The Kafka code for a refusal. Clients older than KIP-588 do not know PRODUCER_FENCED and
/// get INVALID_PRODUCER_EPOCH instead (`fenced_known`: the request version knows it).
fn txn_code(e: &TxnError, fenced_known: bool) -> i16 {
    let error = match e {
        TxnError::ProducerFenced if fenced_known => ResponseError::ProducerFenced,
        TxnError::ProducerFenced => ResponseError::InvalidProducerEpoch,
        TxnError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
        TxnError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        TxnError::ConcurrentTransactions => ResponseError::ConcurrentTransactions,
        TxnError::InvalidTransactionTimeout(..) => ResponseError::InvalidTransactionTimeout,
        TxnError::LimitReached { .. } => ResponseError::PolicyViolation,
        TxnError::Storage(e) => return error_code(e),
    };
    if !matches!(e, TxnError::ConcurrentTransactions) {
        tracing::debug!(error = %e, "transactional request refused");
    }
    error.code()
}

fn code_of(result: Result<(), TxnError>, fenced_known: bool) -> i16 {
    result.err().map_or(0, |e| txn_code(&e, fenced_known))
}

fn may_write_txn(cx: &Context, session: &Session, id: &str) -> bool {
    cx.allowed(session, Operation::Write, ResourceType::TransactionalId, id)
}

/// Whether an InitProducerId request is a transactional producer's.
pub(super) fn is_transactional(request: &InitProducerIdRequest) -> bool {
    request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty())
}

pub(super) async fn init_producer_id(
    cx: &Context,
    session: &Session,
    request: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let refused = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    let id = request
        .transactional_id
        .as_ref()
        .map(|id| id.0.to_string())
        .unwrap_or_default();
    if !may_write_txn(cx, session, &id) {
        return refused(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    let producer =
        (request.producer_id.0 >= 0).then_some((request.producer_id.0, request.producer_epoch));
    match cx
        .broker
        .txns
        .init_producer(&id, i64::from(request.transaction_timeout_ms), producer)
        .await
    {
        Ok((producer_id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch),
        Err(e) => refused(txn_code(&e, version >= 4)),
    }
}

pub(super) async fn add_partitions(
    cx: &Context,
    session: &Session,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let id = request.v3_and_below_transactional_id.0.to_string();
    let txn_allowed = may_write_txn(cx, session, &id);
    // Each partition's code before the coordinator is asked; any refusal means nothing is
    // added and the others are OPERATION_NOT_ATTEMPTED, as Kafka answers.
    let mut checked: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    let mut wanted = Vec::new();
    let mut any_refused = false;
    for topic in &request.v3_and_below_topics {
        let name = topic.name.0.to_string();
        let topic_code = if !txn_allowed {
            Some(ResponseError::TransactionalIdAuthorizationFailed)
        } else if !cx.allowed_on_topic(session, Operation::Write, &name) {
            Some(ResponseError::TopicAuthorizationFailed)
        } else if super::is_internal_topic(&name) {
            Some(ResponseError::InvalidTopicException)
        } else {
            None
        };
        let n_partitions = cx.broker.topics.get(&name).map(|t| t.partitions.len());
        let partitions = topic
            .partitions
            .iter()
            .map(|&p| {
                let exists = n_partitions.is_some_and(|n| (partition_index(p) as usize) < n);
                let code = match topic_code {
                    Some(code) => Some(code),
                    None if !exists => Some(ResponseError::UnknownTopicOrPartition),
                    None => None,
                };
                any_refused |= code.is_some();
                if code.is_none() {
                    wanted.push((name.clone(), partition_index(p)));
                }
                (p, code.map_or(0, |c| c.code()))
            })
            .collect();
        checked.push((topic.name.clone(), partitions));
    }
    let coordinator_code = if any_refused {
        ResponseError::OperationNotAttempted.code()
    } else {
        let result = cx
            .broker
            .txns
            .add_partitions(
                &id,
                request.v3_and_below_producer_id.0,
                request.v3_and_below_producer_epoch,
                wanted,
            )
            .await;
        code_of(result, version >= 2)
    };
    let results = checked
        .into_iter()
        .map(|(name, partitions)| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(name)
                .with_results_by_partition(
                    partitions
                        .into_iter()
                        .map(|(p, code)| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(if code != 0 {
                                    code
                                } else {
                                    coordinator_code
                                })
                        })
                        .collect(),
                )
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

pub(super) async fn add_offsets(
    cx: &Context,
    session: &Session,
    request: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let id = request.transactional_id.0.to_string();
    let group = request.group_id.0.to_string();
    let code = if !may_write_txn(cx, session, &id) {
        ResponseError::TransactionalIdAuthorizationFailed.code()
    } else if !cx.allowed_on_group(session, Operation::Read, &group) {
        ResponseError::GroupAuthorizationFailed.code()
    } else {
        let result = cx
            .broker
            .txns
            .add_offsets(&id, request.producer_id.0, request.producer_epoch, &group)
            .await;
        code_of(result, version >= 2)
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

pub(super) async fn txn_offset_commit(
    cx: &Context,
    session: &Session,
    request: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let id = request.transactional_id.0.to_string();
    let group = request.group_id.0.to_string();
    let all_code = if !may_write_txn(cx, session, &id) {
        Some(ResponseError::TransactionalIdAuthorizationFailed.code())
    } else if !cx.allowed_on_group(session, Operation::Read, &group) {
        Some(ResponseError::GroupAuthorizationFailed.code())
    } else {
        None
    };
    // Per topic, each partition with the code it is refused with, if any.
    type Codes = Vec<(i32, Option<i16>)>;
    let mut codes: Vec<(TopicName, Codes)> = Vec::new();
    let mut offsets = Vec::new();
    let metadata_max = cx.broker.groups.commit_metadata_bytes_max();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let readable = cx.allowed_on_topic(session, Operation::Read, &name);
        let mut partitions = Vec::new();
        for p in topic.partitions {
            let metadata = p
                .committed_metadata
                .map(|m| m.to_string())
                .unwrap_or_default();
            let code = if all_code.is_some() {
                all_code
            } else if !readable {
                Some(ResponseError::TopicAuthorizationFailed.code())
            } else if metadata.len() > metadata_max {
                Some(ResponseError::OffsetMetadataTooLarge.code())
            } else if p.committed_offset < 0 {
                Some(ResponseError::InvalidCommitOffsetSize.code())
            } else {
                offsets.push((
                    (name.clone(), partition_index(p.partition_index)),
                    CommittedOffset {
                        offset: p.committed_offset as u64,
                        metadata,
                    },
                ));
                None
            };
            partitions.push((p.partition_index, code));
        }
        codes.push((topic.name, partitions));
    }
    let coordinator_code = if offsets.is_empty() {
        0
    } else {
        let result = cx
            .broker
            .txns
            .commit_offsets(
                &id,
                request.producer_id.0,
                request.producer_epoch,
                &group,
                offsets,
            )
            .await;
        code_of(result, version >= 3)
    };
    let topics = codes
        .into_iter()
        .map(|(name, partitions)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(p, code)| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(code.unwrap_or(coordinator_code))
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub(super) async fn end_txn(
    cx: &Context,
    session: &Session,
    request: EndTxnRequest,
    version: i16,
) -> EndTxnResponse {
    let id = request.transactional_id.0.to_string();
    let code = if !may_write_txn(cx, session, &id) {
        ResponseError::TransactionalIdAuthorizationFailed.code()
    } else {
        let result = cx
            .broker
            .txns
            .end(
                &id,
                request.producer_id.0,
                request.producer_epoch,
                request.committed,
            )
            .await;
        code_of(result, version >= 2)
    };
    EndTxnResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

/// A partition as a fetch at `isolation_level` sees it: the last stable offset and, for
/// `read_committed`, the records cut to it with the aborted transactions among them.
pub(super) struct StableView {
    pub last_stable_offset: u64,
    pub records: Bytes,
    pub aborted: Option<Vec<AbortedTransaction>>,
}

/// The first offset no transaction leaves unstable (`high_watermark` when none is open).
pub(super) fn last_stable_offset(
    cx: &Context,
    topic: &str,
    partition: u32,
    high_watermark: u64,
) -> u64 {
    cx.broker
        .topics
        .get(topic)
        .and_then(|t| t.partitions.get(partition as usize).cloned())
        .and_then(|p| p.txns.lock().first_unstable())
        .map_or(high_watermark, |first| first.min(high_watermark))
}

/// Cuts what a fetch read to the partition's last stable offset when `read_committed`, and
/// lists the aborted transactions of the records it keeps. The index is consulted before the
/// read's high watermark is trusted: every batch below the stable offset taken here has its
/// fate (commit or abort marker) already written.
pub(super) fn stable_view(
    fetch_offset: u64,
    read_committed: bool,
    (first_unstable, aborted): (Option<u64>, Vec<crate::txn::AbortedTxn>),
    high_watermark: u64,
    records: Bytes,
) -> StableView {
    let last_stable_offset = first_unstable.map_or(high_watermark, |f| f.min(high_watermark));
    if !read_committed {
        return StableView {
            last_stable_offset,
            records,
            aborted: None,
        };
    }
    let mut keep = 0usize;
    let mut end = fetch_offset;
    for (header, bytes) in Batches::new(&records) {
        if header.base_offset.max(0) as u64 >= last_stable_offset {
            break;
        }
        keep += bytes.len();
        end = end.max(u64::try_from(header.last_offset()).unwrap_or(0) + 1);
    }
    let aborted = aborted
        .into_iter()
        .filter(|a| a.last_offset >= fetch_offset && a.first_offset < end)
        .map(|a| {
            AbortedTransaction::default()
                .with_producer_id(ProducerId(a.producer_id))
                .with_first_offset(a.first_offset as i64)
        })
        .collect();
    StableView {
        last_stable_offset,
        records: records.slice(..keep),
        aborted: Some(aborted),
    }
}

/// The partition's transaction index as a `read_committed` fetch needs it, taken before the
/// read: the first unstable offset and the aborted transactions from `fetch_offset` on.
pub(super) fn snapshot(
    cx: &Context,
    topic: &str,
    partition: u32,
    fetch_offset: u64,
) -> (Option<u64>, Vec<crate::txn::AbortedTxn>) {
    let Some(p) = cx
        .broker
        .topics
        .get(topic)
        .and_then(|t| t.partitions.get(partition as usize).cloned())
    else {
        return (None, Vec::new());
    };
    let txns = p.txns.lock();
    (
        txns.first_unstable(),
        txns.aborted_between(fetch_offset, u64::MAX),
    )
}

/// Waits until a `read_committed` fetch at `offset` has something stable to read: the last
/// stable offset passes it. Returns at once when the partition does not exist.
pub(super) async fn wait_stable(cx: &Context, topic: &str, partition: u32, offset: u64) {
    let Some(p) = cx
        .broker
        .topics
        .get(topic)
        .and_then(|t| t.partitions.get(partition as usize).cloned())
    else {
        return;
    };
    loop {
        let mut moved = p.txns.subscribe();
        let high_watermark = p.reader().high_watermark();
        let first_unstable = p.txns.lock().first_unstable();
        let stable = first_unstable.map_or(high_watermark, |f| f.min(high_watermark));
        if stable > offset {
            return;
        }
        if high_watermark <= offset {
            if p.reader().wait_for_data(offset).await.is_none() {
                return;
            }
        } else if moved.changed().await.is_err() {
            return;
        }
    }
}
