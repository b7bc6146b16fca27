//! Metadata, Produce, Fetch and ListOffsets: the data path. Batches are stored and served as
//! the clients sent them (compressed or not); nothing is re-encoded.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::future::{select_all, FutureExt};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterResponse, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{error_code, Context, NODE_ID};
use crate::budget::Charge;
use crate::log::{FirstBatch, ReadResult};
use crate::security::acl::{Operation, ResourceType};
use crate::security::Session;
use crate::service::{OffsetSpec, ServiceError};
use crate::topics::{validate_topic_name, TopicConfig, TopicError};

const CLUSTER_ID: &str = "strand";

/// A partition index from the wire; a negative one names no partition.
pub(super) fn partition_index(index: i32) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// Topics the session may not Describe are left out of an all-topics answer and answered
/// TOPIC_AUTHORIZATION_FAILED when named (whether they exist or not, so names do not leak);
/// auto-creation needs Create on the cluster or on the topic, as in Kafka.
pub(super) async fn metadata(
    cx: &Context,
    session: &Session,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    // Metadata v0 has no null list: an empty one means every topic.
    let wanted: Option<Vec<String>> = request
        .topics
        .filter(|topics| !(version == 0 && topics.is_empty()))
        .map(|topics| {
            topics
                .into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect()
        });
    // Before v4 there is no flag and Kafka always auto-creates.
    let auto_create =
        cx.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    // Topics whose auto-create was refused, with the Kafka code to answer them with.
    let mut refused: HashMap<String, i16> = HashMap::new();
    let describable = |name: &str| cx.allowed_on_topic(session, Operation::Describe, name);
    if let (Some(names), true) = (&wanted, auto_create) {
        let mut n_created = 0u32;
        let mut limit_code = None;
        let may_create_any = cx.allowed_on_cluster(session, Operation::Create);
        for name in names {
            if cx.broker.topics.get(name).is_some()
                || super::is_internal_topic(name)
                || validate_topic_name(name).is_err()
                || !describable(name)
            {
                continue;
            }
            if !may_create_any && !cx.allowed_on_topic(session, Operation::Create, name) {
                refused.insert(name.clone(), ResponseError::TopicAuthorizationFailed.code());
                continue;
            }
            if let Some(code) = limit_code {
                // A limit refuses every later create of this request alike.
                refused.insert(name.clone(), code);
                continue;
            }
            if n_created >= cx.config.metadata_auto_create_topics_max {
                // Left for a later request (answered UNKNOWN_TOPIC_OR_PARTITION, which clients
                // retry), so one request cannot create topics without bound.
                continue;
            }
            let config = TopicConfig {
                partitions: cx.config.default_partitions,
                ..TopicConfig::default()
            };
            n_created += 1;
            match cx.broker.create_topic(name.clone(), config).await {
                Ok(_) => tracing::info!(topic = %name, "auto-created topic for a kafka client"),
                Err(e) => {
                    tracing::debug!(topic = %name, error = %e, "auto-create failed");
                    if matches!(e, ServiceError::Topic(TopicError::LimitReached { .. })) {
                        refused.insert(name.clone(), error_code(&e));
                        limit_code = Some(error_code(&e));
                    }
                }
            }
        }
    }
    let all = cx.broker.list_topics();
    let topics = match wanted {
        None => all
            .iter()
            .filter(|t| describable(&t.name))
            .map(|t| metadata_topic(&t.name, Some(t.partitions.len())))
            .collect(),
        Some(names) => names
            .iter()
            .map(|name| {
                if !describable(name) {
                    return metadata_topic(name, None)
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                }
                let found = all.iter().find(|t| &t.name == name);
                match found {
                    Some(t) => metadata_topic(name, Some(t.partitions.len())),
                    None if refused.contains_key(name) => {
                        metadata_topic(name, None).with_error_code(refused[name])
                    }
                    None if validate_topic_name(name).is_err() => metadata_topic(name, None)
                        .with_error_code(ResponseError::InvalidTopicException.code()),
                    None => metadata_topic(name, None),
                }
            })
            .collect(),
    };
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(StrBytes::from_string(cx.advertised.0.clone()))
            .with_port(cx.advertised.1)])
        .with_cluster_id(Some(StrBytes::from_static_str(CLUSTER_ID)))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
}

fn metadata_topic(name: &str, partitions: Option<usize>) -> MetadataResponseTopic {
    let topic = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
        .with_is_internal(super::is_internal_topic(name));
    match partitions {
        None => topic.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
        Some(n) => topic.with_partitions(
            (0..n as i32)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(BrokerId(NODE_ID))
                        .with_replica_nodes(vec![BrokerId(NODE_ID)])
                        .with_isr_nodes(vec![BrokerId(NODE_ID)])
                })
                .collect(),
        ),
    }
}

pub(super) fn describe_cluster(cx: &Context) -> DescribeClusterResponse {
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_static_str(CLUSTER_ID))
        .with_controller_id(BrokerId(NODE_ID))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(NODE_ID))
            .with_host(StrBytes::from_string(cx.advertised.0.clone()))
            .with_port(cx.advertised.1)])
}

/// Appends each partition's batches in request order; `None` for acks=0 (no answer). A topic
/// the session may not Write is answered TOPIC_AUTHORIZATION_FAILED and nothing of it is
/// appended; Write on the topic is also what an idempotent producer's batches need (KIP-679).
pub(super) async fn produce(
    cx: &Context,
    session: &Session,
    request: ProduceRequest,
) -> Option<ProduceResponse> {
    let broker = &cx.broker;
    let mut topics = Vec::new();
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let mut writable =
            broker
                .authorizer
                .check(session, Operation::Write, ResourceType::Topic, &name);
        // A transactional producer also needs Write on its transactional id, as in Kafka.
        if let Some(id) = request
            .transactional_id
            .as_ref()
            .filter(|id| !id.0.is_empty())
        {
            if let Err(denied) = broker.authorizer.check(
                session,
                Operation::Write,
                ResourceType::TransactionalId,
                &id.0,
            ) {
                writable = Err(denied);
            }
        }
        let mut partitions = Vec::new();
        for data in topic.partition_data {
            let mut response = PartitionProduceResponse::default()
                .with_index(data.index)
                .with_log_append_time_ms(-1);
            let records = data.records.unwrap_or_default();
            let index = partition_index(data.index);
            let result = match &writable {
                Ok(()) => broker.append(&name, index, &mut records.to_vec()),
                Err(denied) => Err(ServiceError::Denied(denied.clone())),
            };
            let result = match result {
                Ok(info) if request.acks == -1 => broker
                    .wait_durable(&name, index, info.last_offset)
                    .await
                    .map(|()| info),
                other => other,
            };
            response = match result {
                Ok(info) => response
                    .with_base_offset(info.base_offset as i64)
                    .with_log_start_offset(
                        broker
                            .partition_info(&name, index)
                            .map_or(0, |p| p.log_start_offset as i64),
                    ),
                Err(e) => {
                    tracing::debug!(topic = %name, partition = data.index, error = %e, "kafka produce failed");
                    response
                        .with_error_code(error_code(&e))
                        .with_error_message(Some(StrBytes::from_string(e.to_string())))
                        .with_base_offset(-1)
                }
            };
            partitions.push(response);
        }
        topics.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partitions),
        );
    }
    (request.acks != 0).then(|| ProduceResponse::default().with_responses(topics))
}

/// Reads the asked partitions; when none has data, waits (up to the request's max wait and
/// the broker's limit) for data on any of them and reads again. The answer's records are at
/// most the request's `max_bytes` and the broker's `fetch_bytes_max`, except that the first
/// partition with data gets at least one whole batch (KIP-74, so a consumer never stalls on a
/// batch larger than its limits; no batch is larger than the broker's limits). They come with
/// their budget charge, which the caller holds until the answer is written.
pub(super) async fn fetch(
    cx: &Context,
    session: &Session,
    request: FetchRequest,
) -> (FetchResponse, Charge) {
    let max_wait =
        Duration::from_millis(request.max_wait_ms.max(0) as u64).min(cx.broker.fetch_wait_max);
    let started = std::time::Instant::now();
    let read_committed = request.isolation_level == 1;
    // Topics the session may not Read are answered TOPIC_AUTHORIZATION_FAILED, unread.
    let unreadable: HashSet<String> = request
        .topics
        .iter()
        .map(|t| t.topic.0.to_string())
        .filter(|name| !cx.allowed_on_topic(session, Operation::Read, name))
        .collect();
    let (response, charge) = fetch_once(cx, &request, &unreadable).await;
    tracing::debug!(
        n_bytes = charge.bytes(),
        n_partitions = request
            .topics
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>(),
        max_bytes = request.max_bytes,
        elapsed_us = started.elapsed().as_micros() as u64,
        "fetch"
    );
    if charge.bytes() > 0 || max_wait.is_zero() {
        return (response, charge);
    }
    // Wait once per distinct partition (a request may name one many times).
    let mut distinct = HashSet::new();
    let waits: Vec<_> = request
        .topics
        .iter()
        .flat_map(|t| {
            let name = t.topic.0.to_string();
            t.partitions.iter().map(move |p| (name.clone(), p))
        })
        .filter(|(name, p)| {
            !unreadable.contains(name) && distinct.insert((name.clone(), p.partition))
        })
        .map(|(name, p)| {
            let partition = partition_index(p.partition);
            let offset = p.fetch_offset.max(0) as u64;
            async move {
                if read_committed {
                    // Data past the last stable offset is not for this fetch: wait for it to move.
                    super::txn::wait_stable(cx, &name, partition, offset).await;
                } else {
                    let _ = cx.broker.wait_for_data(&name, partition, offset).await;
                }
            }
            .boxed()
        })
        .collect();
    if waits.is_empty() {
        return (response, charge);
    }
    if tokio::time::timeout(max_wait, select_all(waits))
        .await
        .is_err()
    {
        return (response, charge);
    }
    fetch_once(cx, &request, &unreadable).await
}

/// One pass over the asked partitions, in request order, reading one partition at a time
/// within what is left of the request's byte limit: once it is used up, the remaining
/// partitions are answered from their bounds without reading. A partition named more than once
/// is read for its first entry only; the others get INVALID_REQUEST.
///
/// The whole pass is charged to the budget once, before any read (a task never waits for the
/// budget while holding some of it), and the charge is cut to what was read.
async fn fetch_once(
    cx: &Context,
    request: &FetchRequest,
    unreadable: &HashSet<String>,
) -> (FetchResponse, Charge) {
    let bytes_max = (request.max_bytes.max(1) as usize).min(cx.config.fetch_bytes_max);
    let mut charge = cx
        .config
        .budget
        .charge(cx.broker.read_bytes_max(bytes_max, FirstBatch::Whole))
        .await;
    let mut n_bytes = 0usize;
    let mut seen = HashSet::new();
    let mut responses = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.topic.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let response = PartitionData::default().with_partition_index(p.partition);
            if unreadable.contains(&name) {
                partitions.push(
                    response
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1),
                );
                continue;
            }
            if !seen.insert((name.clone(), p.partition)) {
                partitions.push(
                    response
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1),
                );
                continue;
            }
            let index = partition_index(p.partition);
            let fetch_offset = p.fetch_offset.max(0) as u64;
            // Taken before the read, so everything the read returns below the stable offset
            // has its transaction's marker written already.
            let txns = super::txn::snapshot(cx, &name, index, fetch_offset);
            let left = bytes_max.saturating_sub(n_bytes);
            let read = if left == 0 {
                // Nothing more fits: say where the partition stands without reading it.
                cx.broker
                    .partition_info(&name, index)
                    .map(|info| ReadResult {
                        batches: Default::default(),
                        high_watermark: info.high_watermark,
                        log_start_offset: info.log_start_offset,
                    })
            } else {
                let first_batch = if n_bytes == 0 {
                    FirstBatch::Whole
                } else {
                    FirstBatch::WithinLimit
                };
                let max_bytes = (p.partition_max_bytes.max(1) as usize).min(left);
                cx.broker
                    .read_limited(
                        &name,
                        index,
                        p.fetch_offset.max(0) as u64,
                        max_bytes,
                        first_batch,
                    )
                    .await
            };
            partitions.push(match read {
                Ok(read) => {
                    let view = super::txn::stable_view(
                        fetch_offset,
                        request.isolation_level == 1,
                        txns,
                        read.high_watermark,
                        read.batches,
                    );
                    n_bytes += view.records.len();
                    response
                        .with_high_watermark(read.high_watermark as i64)
                        .with_last_stable_offset(view.last_stable_offset as i64)
                        .with_log_start_offset(read.log_start_offset as i64)
                        .with_aborted_transactions(view.aborted)
                        .with_records(Some(view.records))
                }
                Err(e) => response
                    .with_error_code(error_code(&e))
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1),
            });
        }
        responses.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    charge.shrink_to(n_bytes);
    (FetchResponse::default().with_responses(responses), charge)
}

/// Offsets of the topics the session may Describe; the others are TOPIC_AUTHORIZATION_FAILED.
pub(super) async fn list_offsets(
    cx: &Context,
    session: &Session,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let describable = cx.allowed_on_topic(session, Operation::Describe, &name);
        let mut partitions = Vec::new();
        for p in topic.partitions {
            if !describable {
                partitions.push(
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                        .with_timestamp(-1)
                        .with_offset(-1),
                );
                continue;
            }
            let spec = match p.timestamp {
                // -4 (v8): the earliest offset on local storage, which is all of it here.
                -2 | -4 => OffsetSpec::Earliest,
                -1 => OffsetSpec::Latest,
                ts => OffsetSpec::Timestamp(ts),
            };
            let response = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1);
            let index = partition_index(p.partition_index);
            let listed = cx.broker.list_offset(&name, index, spec).await;
            // read_committed consumers start at the end of what is stable, not the log's end.
            let listed = match listed {
                Ok(Some(end)) if spec == OffsetSpec::Latest && request.isolation_level == 1 => {
                    Ok(Some(super::txn::last_stable_offset(cx, &name, index, end)))
                }
                other => other,
            };
            partitions.push(match listed {
                Ok(offset) => response.with_offset(offset.map_or(-1, |o| o as i64)),
                Err(e) => response.with_error_code(error_code(&e)).with_offset(-1),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
