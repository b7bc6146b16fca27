//! CreateTopics, DeleteTopics and InitProducerId.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{error_code, Context};
use crate::security::acl::{Operation, ResourceType};
use crate::security::Session;
use crate::topics::{validate_topic_name, TopicConfig};

/// Kafka topic settings that do not apply to a single broker without replication; accepted
/// (so tools that always send them work) and ignored.
const IGNORED_CONFIGS: [&str; 8] = [
    "min.insync.replicas",
    "unclean.leader.election.enable",
    "message.timestamp.type",
    "compression.type",
    "max.message.bytes",
    "segment.ms",
    "delete.retention.ms",
    "preallocate",
];

/// Why a CreateTopics entry is refused: the Kafka code and a message for the client.
type Refusal = (ResponseError, String);

/// The topic settings a CreateTopics entry asks for, or why it is refused.
fn topic_config(topic: &CreatableTopic, default_partitions: u32) -> Result<TopicConfig, Refusal> {
    let name = topic.name.0.as_str();
    validate_topic_name(name).map_err(|e| (ResponseError::InvalidTopicException, e.to_string()))?;
    if super::is_internal_topic(name) {
        return Err((
            ResponseError::InvalidTopicException,
            format!("{name} is an internal topic"),
        ));
    }
    let partitions = match topic.num_partitions {
        -1 => default_partitions,
        n if n >= 1 => n as u32,
        n => {
            return Err((
                ResponseError::InvalidPartitions,
                format!("{n} partitions: give at least 1, or -1 for the default"),
            ))
        }
    };
    if !matches!(topic.replication_factor, -1 | 1) {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {}: Strand is a single broker, use 1 (or -1)",
                topic.replication_factor
            ),
        ));
    }
    if !topic.assignments.is_empty() {
        return Err((
            ResponseError::InvalidReplicaAssignment,
            "manual replica assignment is not supported".into(),
        ));
    }
    let mut config = TopicConfig {
        partitions,
        ..TopicConfig::default()
    };
    for c in &topic.configs {
        let key = c.name.as_str();
        let value = c.value.as_ref().map_or("", |v| v.as_str());
        let bad = || {
            (
                ResponseError::InvalidConfig,
                format!("{key}={value:?} is not valid"),
            )
        };
        match key {
            "cleanup.policy" => {
                config.compact = match value {
                    "compact" => true,
                    "delete" => false,
                    _ => return Err(bad()),
                }
            }
            "retention.ms" => config.retention_ms = Some(value.parse().map_err(|_| bad())?),
            "retention.bytes" => config.retention_bytes = Some(value.parse().map_err(|_| bad())?),
            "segment.bytes" => config.segment_bytes_max = Some(value.parse().map_err(|_| bad())?),
            k if IGNORED_CONFIGS.contains(&k) => {}
            _ => {
                return Err((
                    ResponseError::InvalidConfig,
                    format!("unknown topic config {key:?}"),
                ))
            }
        }
    }
    Ok(config)
}

/// Creating a topic needs Create on the cluster or on the topic, as in Kafka.
pub(super) async fn create_topics(
    cx: &Context,
    session: &Session,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let may_create_any = cx.allowed_on_cluster(session, Operation::Create);
    let mut results = Vec::new();
    for topic in request.topics {
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        let allowed =
            may_create_any || cx.allowed_on_topic(session, Operation::Create, &topic.name.0);
        let outcome = match topic_config(&topic, cx.config.default_partitions) {
            _ if !allowed => Err((
                ResponseError::TopicAuthorizationFailed,
                format!(
                    "{} is not authorized to Create topic {:?}",
                    session.principal,
                    topic.name.0.as_str()
                ),
            )),
            Err(refusal) => Err(refusal),
            Ok(config) if request.validate_only => {
                if cx.broker.topics.get(&topic.name.0).is_some() {
                    Err((
                        ResponseError::TopicAlreadyExists,
                        format!("topic {:?} already exists", topic.name.0.as_str()),
                    ))
                } else {
                    match cx
                        .broker
                        .topics
                        .check_limits(&topic.name.0, config.partitions)
                    {
                        Ok(()) => Ok(config.partitions),
                        Err(e) => {
                            let e = crate::service::ServiceError::Topic(e);
                            Err((
                                ResponseError::try_from_code(error_code(&e))
                                    .unwrap_or(ResponseError::UnknownServerError),
                                e.to_string(),
                            ))
                        }
                    }
                }
            }
            Ok(config) => {
                let partitions = config.partitions;
                match cx
                    .broker
                    .create_topic(topic.name.0.to_string(), config)
                    .await
                {
                    Ok(_) => Ok(partitions),
                    Err(e) => Err((
                        ResponseError::try_from_code(error_code(&e))
                            .unwrap_or(ResponseError::UnknownServerError),
                        e.to_string(),
                    )),
                }
            }
        };
        results.push(match outcome {
            Ok(partitions) => result
                .with_num_partitions(partitions as i32)
                .with_replication_factor(1),
            Err((error, message)) => result
                .with_error_code(error.code())
                .with_error_message(Some(StrBytes::from_string(message)))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Deleting a topic needs Delete on it.
pub(super) async fn delete_topics(
    cx: &Context,
    session: &Session,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v6 names topics in `topics` (by name; topic ids are not used by Strand).
    let names: Vec<Option<TopicName>> = if version >= 6 {
        request.topics.into_iter().map(|t| t.name).collect()
    } else {
        request.topic_names.into_iter().map(Some).collect()
    };
    let mut responses = Vec::new();
    for name in names {
        let result = DeletableTopicResult::default().with_name(name.clone());
        let outcome = match &name {
            None => Err((
                ResponseError::UnknownTopicId,
                "topics are deleted by name on Strand".to_string(),
            )),
            Some(n) if !cx.allowed_on_topic(session, Operation::Delete, &n.0) => Err((
                ResponseError::TopicAuthorizationFailed,
                format!(
                    "{} is not authorized to Delete topic {:?}",
                    session.principal,
                    n.0.as_str()
                ),
            )),
            Some(n) => cx.broker.delete_topic(n.0.to_string()).await.map_err(|e| {
                (
                    ResponseError::try_from_code(error_code(&e))
                        .unwrap_or(ResponseError::UnknownServerError),
                    e.to_string(),
                )
            }),
        };
        responses.push(match outcome {
            Ok(()) => result,
            Err((error, message)) => result
                .with_error_code(error.code())
                .with_error_message(Some(StrBytes::from_string(message))),
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// Producer ids come from the transaction coordinator's one sequence (unique across restarts).
fn next_producer_id() -> i64 {
    crate::txn::next_producer_id()
}

/// An idempotent producer needs IdempotentWrite on the cluster or Write on some topic
/// (KIP-679), else CLUSTER_AUTHORIZATION_FAILED. A transactional producer's request is
/// served by `super::txn` (the listener routes it there).
pub(super) fn init_producer_id(
    cx: &Context,
    session: &Session,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let refused = |code: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if let Some(id) = request
        .transactional_id
        .as_ref()
        .filter(|id| !id.0.is_empty())
    {
        if !cx.allowed(
            session,
            Operation::Write,
            ResourceType::TransactionalId,
            &id.0,
        ) {
            return refused(ResponseError::TransactionalIdAuthorizationFailed);
        }
    } else if !cx.allowed_on_cluster(session, Operation::IdempotentWrite)
        && !cx
            .broker
            .authorizer
            .authorize_any(session, Operation::Write, ResourceType::Topic)
    {
        return refused(ResponseError::ClusterAuthorizationFailed);
    }
    // Without a transactional id, Kafka always hands out a new producer id, whatever id and
    // epoch the request carries (KIP-360's bump applies to transactional producers only). Taking
    // the request's id and bumping its epoch would let any client fence any producer whose id
    // it names: the victim's next batch would carry an older epoch and be refused.
    InitProducerIdResponse::default()
        .with_producer_id(ProducerId(next_producer_id()))
        .with_producer_epoch(0)
}
