//! Kafka's classic group protocol on the broker's one coordinator ([`crate::group::Groups`]):
//! Kafka members assign partitions on the client (the leader's SyncGroup brings the
//! assignment); generations, fencing, session timeouts and committed offsets are the same ones
//! native members get, and the coordinator's errors become the Kafka codes that make clients
//! rejoin.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::data::partition_index;
use super::{Context, NODE_ID};
use crate::group::{
    Assignor, ClientProtocol, CommitError, CommittedOffset, GroupError, GroupState, JoinRequest,
    SyncAssignment, TopicPartition,
};
use crate::security::acl::{Operation, ResourceType};
use crate::security::Session;

/// Per topic, each partition with its committed offset (if any).
type TopicOffsets = Vec<(TopicName, Vec<(i32, Option<CommittedOffset>)>)>;

/// Per topic, each partition with the error found while checking it (if any).
type TopicChecks = Vec<(TopicName, Vec<(i32, Option<i16>)>)>;

fn group_code(e: GroupError) -> i16 {
    match e {
        GroupError::UnknownMember | GroupError::MemberRemoved => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        // Kafka has no bound on the number of groups; a refusal by the broker's policy is the
        // nearest code, and it is not retriable.
        GroupError::GroupsMaxReached => ResponseError::PolicyViolation,
        GroupError::OffsetMetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
    }
    .code()
}

/// A generation from the wire; a negative one matches no generation.
fn generation(g: i32) -> u32 {
    u32::try_from(g).unwrap_or(u32::MAX)
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// GROUP_AUTHORIZATION_FAILED, for a group the session may not use.
const GROUP_DENIED: i16 = ResponseError::GroupAuthorizationFailed.code();

/// Strand is every group's coordinator. Finding it needs Describe on the group (or on the
/// transactional id), as in Kafka.
pub(super) fn find_coordinator(
    cx: &Context,
    session: &Session,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    // Key type 1 names a transactional id; 0 (and anything else) a group.
    let refusal = |key: &str| {
        if request.key_type == 1 {
            (!cx.allowed(
                session,
                Operation::Describe,
                ResourceType::TransactionalId,
                key,
            ))
            .then(|| ResponseError::TransactionalIdAuthorizationFailed.code())
        } else {
            (!cx.allowed_on_group(session, Operation::Describe, key)).then_some(GROUP_DENIED)
        }
    };
    let host = str_bytes(cx.advertised.0.clone());
    let coordinators = request
        .coordinator_keys
        .iter()
        .map(|key| match refusal(key) {
            Some(code) => Coordinator::default()
                .with_key(key.clone())
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_port(-1),
            None => Coordinator::default()
                .with_key(key.clone())
                .with_node_id(BrokerId(NODE_ID))
                .with_host(host.clone())
                .with_port(cx.advertised.1),
        })
        .collect();
    if version < 4 {
        if let Some(code) = refusal(&request.key) {
            return FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_port(-1);
        }
    }
    // v4 and later answer per key only: the top-level fields are not in their layout (the
    // crate refuses to encode them set).
    if version >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_node_id(BrokerId(NODE_ID))
        .with_host(host)
        .with_port(cx.advertised.1)
}

/// The topics a `consumer` member subscribes to, from its protocol metadata (a version, then
/// ConsumerProtocolSubscription). Used for describe only; the leader does the assigning.
fn subscribed_topics(metadata: &Bytes) -> Vec<String> {
    let mut buf = metadata.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16().clamp(0, 3);
    ConsumerProtocolSubscription::decode(&mut buf, version)
        .map(|s| s.topics.into_iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

/// The partitions an assignment names (a version, then ConsumerProtocolAssignment).
fn assigned_partitions(assignment: &Bytes) -> Vec<TopicPartition> {
    let mut buf = assignment.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16().clamp(0, 3);
    ConsumerProtocolAssignment::decode(&mut buf, version)
        .map(|a| {
            a.assigned_partitions
                .into_iter()
                .flat_map(|t| {
                    let topic = t.topic.0.to_string();
                    t.partitions
                        .into_iter()
                        .filter_map(move |p| Some((topic.clone(), u32::try_from(p).ok()?)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Encodes partitions as a v0 consumer assignment, so Kafka tools can show any group's members.
fn encode_assignment(partitions: &[TopicPartition]) -> Bytes {
    let mut by_topic: Vec<AssignedPartitions> = Vec::new();
    for (topic, p) in partitions {
        match by_topic.last_mut() {
            Some(t) if t.topic.0.as_str() == topic => t.partitions.push(*p as i32),
            _ => by_topic.push(
                AssignedPartitions::default()
                    .with_topic(TopicName(str_bytes(topic.clone())))
                    .with_partitions(vec![*p as i32]),
            ),
        }
    }
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    match ConsumerProtocolAssignment::default()
        .with_assigned_partitions(by_topic)
        .encode(&mut buf, 0)
    {
        Ok(()) => buf.freeze(),
        Err(_) => Bytes::new(),
    }
}

pub(super) async fn join(
    cx: &Context,
    session: &Session,
    request: JoinGroupRequest,
    version: i16,
    client_id: String,
) -> JoinGroupResponse {
    let failed = |code: i16| {
        JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1)
            .with_protocol_name(Some(StrBytes::default()))
            .with_member_id(request.member_id.clone())
    };
    if request.group_id.0.is_empty() {
        return failed(ResponseError::InvalidGroupId.code());
    }
    if !cx.allowed_on_group(session, Operation::Read, &request.group_id.0) {
        return failed(GROUP_DENIED);
    }
    let session_timeout_ms = u64::try_from(request.session_timeout_ms).unwrap_or(0);
    // JoinGroup v0 has no rebalance timeout: the session timeout stands in, as in Kafka.
    let rebalance_timeout_ms = match u64::try_from(request.rebalance_timeout_ms) {
        Ok(ms) if version >= 1 && ms > 0 => ms,
        _ => session_timeout_ms,
    };
    let topics = match (request.protocol_type.as_str(), request.protocols.first()) {
        ("consumer", Some(p)) => subscribed_topics(&p.metadata).into_iter().collect(),
        _ => Default::default(),
    };
    let join = JoinRequest {
        group: request.group_id.0.to_string(),
        member_id: (!request.member_id.is_empty()).then(|| request.member_id.to_string()),
        client_id,
        topics,
        session_timeout_ms,
        rebalance_timeout_ms,
        assignor: Assignor::default(),
        client_protocol: Some(ClientProtocol {
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.to_vec()))
                .collect(),
        }),
    };
    match cx.broker.groups.join(join).await {
        Err(e) => failed(group_code(e)),
        Ok(joined) => {
            let client = joined.client.unwrap_or_default();
            JoinGroupResponse::default()
                .with_generation_id(joined.generation as i32)
                .with_protocol_type(Some(str_bytes(client.protocol_type)))
                .with_protocol_name(Some(str_bytes(client.protocol_name)))
                .with_leader(str_bytes(client.leader))
                .with_member_id(str_bytes(joined.member_id))
                .with_members(
                    client
                        .members
                        .into_iter()
                        .map(|(id, metadata)| {
                            JoinGroupResponseMember::default()
                                .with_member_id(str_bytes(id))
                                .with_metadata(Bytes::from(metadata))
                        })
                        .collect(),
                )
        }
    }
}

pub(super) async fn sync(
    cx: &Context,
    session: &Session,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    if !cx.allowed_on_group(session, Operation::Read, &request.group_id.0) {
        return SyncGroupResponse::default().with_error_code(GROUP_DENIED);
    }
    let assignments = request
        .assignments
        .iter()
        .map(|a| SyncAssignment {
            member_id: a.member_id.to_string(),
            assignment: a.assignment.to_vec(),
            partitions: assigned_partitions(&a.assignment),
        })
        .collect();
    let result = cx
        .broker
        .groups
        .sync(
            &request.group_id.0,
            &request.member_id,
            generation(request.generation_id),
            assignments,
        )
        .await;
    let response = SyncGroupResponse::default()
        .with_protocol_type(request.protocol_type)
        .with_protocol_name(request.protocol_name);
    match result {
        Ok(bytes) => response.with_assignment(Bytes::from(bytes)),
        Err(e) => response.with_error_code(group_code(e)),
    }
}

pub(super) fn heartbeat(
    cx: &Context,
    session: &Session,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    if !cx.allowed_on_group(session, Operation::Read, &request.group_id.0) {
        return HeartbeatResponse::default().with_error_code(GROUP_DENIED);
    }
    let result = cx.broker.groups.heartbeat(
        &request.group_id.0,
        &request.member_id,
        generation(request.generation_id),
    );
    HeartbeatResponse::default().with_error_code(result.err().map_or(0, group_code))
}

pub(super) fn leave(
    cx: &Context,
    session: &Session,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let group = request.group_id.0.to_string();
    if !cx.allowed_on_group(session, Operation::Read, &group) {
        return LeaveGroupResponse::default().with_error_code(GROUP_DENIED);
    }
    if request.members.is_empty() {
        // v0-v2: one member, the sender.
        let result = cx.broker.groups.leave(&group, &request.member_id);
        return LeaveGroupResponse::default().with_error_code(result.err().map_or(0, group_code));
    }
    let members = request
        .members
        .into_iter()
        .map(|m| {
            let result = cx.broker.groups.leave(&group, &m.member_id);
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(result.err().map_or(0, group_code))
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

/// Commits need Read on the group (else every partition is GROUP_AUTHORIZATION_FAILED and
/// nothing is committed) and Read on each topic (else its partitions are
/// TOPIC_AUTHORIZATION_FAILED and only the others are committed), as in Kafka.
pub(super) async fn offset_commit(
    cx: &Context,
    session: &Session,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group_allowed = cx.allowed_on_group(session, Operation::Read, &request.group_id.0);
    // Per partition: the error found while checking it, else the commit's outcome.
    let mut checked: TopicChecks = Vec::new();
    let mut offsets = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let n_partitions = cx.broker.topics.get(&name).map(|t| t.partitions.len());
        let topic_allowed = cx.allowed_on_topic(session, Operation::Read, &name);
        let mut partitions = Vec::new();
        for p in &topic.partitions {
            let metadata = p
                .committed_metadata
                .as_ref()
                .map_or_else(String::new, |m| m.to_string());
            let known =
                n_partitions.is_some_and(|n| (partition_index(p.partition_index) as usize) < n);
            let error = if !group_allowed {
                Some(GROUP_DENIED)
            } else if !topic_allowed {
                Some(ResponseError::TopicAuthorizationFailed.code())
            } else if !known {
                Some(ResponseError::UnknownTopicOrPartition.code())
            } else if metadata.len() > cx.broker.groups.commit_metadata_bytes_max() {
                Some(ResponseError::OffsetMetadataTooLarge.code())
            } else if p.committed_offset < 0 {
                Some(ResponseError::InvalidCommitOffsetSize.code())
            } else {
                offsets.push((
                    (name.clone(), p.partition_index as u32),
                    CommittedOffset {
                        offset: p.committed_offset as u64,
                        metadata,
                    },
                ));
                None
            };
            partitions.push((p.partition_index, error));
        }
        checked.push((topic.name.clone(), partitions));
    }
    let outcome = if request.group_id.0.is_empty() {
        ResponseError::InvalidGroupId.code()
    } else if offsets.is_empty() {
        0
    } else {
        // Generation -1 with no member id: a commit from outside any membership (a consumer
        // with manually assigned partitions), accepted while the group has no members.
        let (member, generation) =
            if request.generation_id_or_member_epoch < 0 && request.member_id.is_empty() {
                (String::new(), 0)
            } else {
                (
                    request.member_id.to_string(),
                    generation(request.generation_id_or_member_epoch),
                )
            };
        match cx
            .broker
            .groups
            .commit(&request.group_id.0, &member, generation, offsets)
            .await
        {
            Ok(()) => 0,
            Err(CommitError::Fenced(e)) => group_code(e),
            Err(CommitError::Storage(e)) => {
                tracing::error!(error = %e, "persisting kafka commit failed");
                ResponseError::CoordinatorNotAvailable.code()
            }
        }
    };
    let topics = checked
        .into_iter()
        .map(|(name, partitions)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, error)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(index)
                                .with_error_code(error.unwrap_or(outcome))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// One group's committed offsets for the asked topics (all of its commits when `None`).
fn committed_offsets(
    cx: &Context,
    group: &str,
    topics: Option<Vec<(TopicName, Vec<i32>)>>,
) -> TopicOffsets {
    match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(name, partitions)| {
                let offsets = partitions
                    .into_iter()
                    .map(|p| {
                        let tp = (name.0.to_string(), partition_index(p));
                        (p, cx.broker.groups.committed(group, &tp))
                    })
                    .collect();
                (name, offsets)
            })
            .collect(),
        None => {
            let mut all: TopicOffsets = Vec::new();
            let committed = cx
                .broker
                .groups
                .describe(group)
                .map(|d| d.committed)
                .unwrap_or_default();
            for ((topic, p), offset) in committed {
                match all.last_mut() {
                    Some((name, list)) if name.0.as_str() == topic => {
                        list.push((p as i32, Some(offset)))
                    }
                    _ => all.push((TopicName(str_bytes(topic)), vec![(p as i32, Some(offset))])),
                }
            }
            all
        }
    }
}

/// As in Kafka: Describe on the group (else GROUP_AUTHORIZATION_FAILED and no offsets), and
/// on each topic (named topics the session may not Describe are TOPIC_AUTHORIZATION_FAILED;
/// when all of the group's offsets are asked, such topics are left out).
pub(super) fn offset_fetch(
    cx: &Context,
    session: &Session,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    fn fields(offset: &Option<CommittedOffset>) -> (i64, StrBytes) {
        match offset {
            Some(c) => (c.offset as i64, str_bytes(c.metadata.clone())),
            None => (-1, StrBytes::default()),
        }
    }
    let topic_denied = |name: &TopicName| {
        (!cx.allowed_on_topic(session, Operation::Describe, name.0.as_str()))
            .then(|| ResponseError::TopicAuthorizationFailed.code())
    };
    // The asked offsets, each topic with the code its partitions are refused with (if any).
    let offsets = |group: &str, topics: Option<Vec<(TopicName, Vec<i32>)>>| {
        let all = topics.is_none();
        committed_offsets(cx, group, topics)
            .into_iter()
            .map(|(name, partitions)| {
                let denied = topic_denied(&name);
                (name, partitions, denied)
            })
            .filter(move |(_, _, denied)| !(all && denied.is_some()))
    };
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                if !cx.allowed_on_group(session, Operation::Describe, &g.group_id.0) {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_error_code(GROUP_DENIED);
                }
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect()
                });
                let topics = offsets(&g.group_id.0, topics)
                    .map(|(name, partitions, denied)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(name)
                            .with_partitions(
                                partitions
                                    .iter()
                                    .map(|(index, offset)| {
                                        let (committed, metadata) = match denied {
                                            Some(_) => (-1, StrBytes::default()),
                                            None => fields(offset),
                                        };
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(*index)
                                            .with_committed_offset(committed)
                                            .with_metadata(Some(metadata))
                                            .with_error_code(denied.unwrap_or(0))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect::<Vec<_>>()
    });
    if !cx.allowed_on_group(session, Operation::Describe, &request.group_id.0) {
        // v2+ carries the refusal at the top; v1 only per partition, so each asked partition
        // carries it too.
        let topics = topics
            .unwrap_or_default()
            .into_iter()
            .map(|(name, partitions)| {
                OffsetFetchResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|index| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_committed_offset(-1)
                                    .with_metadata(Some(StrBytes::default()))
                                    .with_error_code(GROUP_DENIED)
                            })
                            .collect(),
                    )
            })
            .collect();
        let response = OffsetFetchResponse::default().with_topics(topics);
        return if version >= 2 {
            response.with_error_code(GROUP_DENIED)
        } else {
            response
        };
    }
    let topics = offsets(&request.group_id.0, topics)
        .map(|(name, partitions, denied)| {
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    partitions
                        .iter()
                        .map(|(index, offset)| {
                            let (committed, metadata) = match denied {
                                Some(_) => (-1, StrBytes::default()),
                                None => fields(offset),
                            };
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(*index)
                                .with_committed_offset(committed)
                                .with_metadata(Some(metadata))
                                .with_error_code(denied.unwrap_or(0))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

fn state_name(state: GroupState) -> &'static str {
    match state {
        GroupState::Empty => "Empty",
        GroupState::Rebalancing => "PreparingRebalance",
        GroupState::AwaitingSync => "CompletingRebalance",
        GroupState::Stable => "Stable",
    }
}

/// Every group with Describe on the cluster; else only the groups the session may Describe.
pub(super) fn list(cx: &Context, session: &Session) -> ListGroupsResponse {
    let all = cx.allowed_on_cluster(session, Operation::Describe);
    let groups = cx
        .broker
        .groups
        .list()
        .into_iter()
        .filter(|name| all || cx.allowed_on_group(session, Operation::Describe, name))
        .filter_map(|name| cx.broker.groups.describe(&name))
        .map(|d| {
            let protocol_type = d
                .protocol
                .map_or_else(|| "consumer".to_string(), |(t, _)| t);
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(d.group)))
                .with_protocol_type(str_bytes(protocol_type))
                .with_group_state(StrBytes::from_static_str(state_name(d.state)))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub(super) fn describe(
    cx: &Context,
    session: &Session,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let groups = request
        .groups
        .into_iter()
        .map(|name| {
            if !cx.allowed_on_group(session, Operation::Describe, &name.0) {
                return DescribedGroup::default()
                    .with_group_id(name)
                    .with_error_code(GROUP_DENIED);
            }
            describe_one(cx, name)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

/// One group as DescribeGroups shows it (Dead when unknown, as in Kafka).
fn describe_one(cx: &Context, name: GroupId) -> DescribedGroup {
    match cx.broker.groups.describe(&name.0) {
        // Kafka describes a group it does not know as Dead, without an error.
        None => DescribedGroup::default()
            .with_group_id(name)
            .with_group_state(StrBytes::from_static_str("Dead")),
        Some(d) => {
            let (protocol_type, protocol) = d.protocol.unwrap_or_else(|| {
                // Native groups assign on the broker; name the assignor like Kafka's.
                let assignor = match d.assignor {
                    Assignor::Range => "range",
                    Assignor::RoundRobin => "roundrobin",
                    Assignor::CooperativeSticky => "cooperative-sticky",
                };
                ("consumer".to_string(), assignor.to_string())
            });
            DescribedGroup::default()
                .with_group_id(name)
                .with_group_state(StrBytes::from_static_str(state_name(d.state)))
                .with_protocol_type(str_bytes(protocol_type))
                .with_protocol_data(str_bytes(protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_assignment(encode_assignment(&m.assignment))
                                .with_member_id(str_bytes(m.member_id))
                                .with_client_id(str_bytes(m.client_id))
                        })
                        .collect(),
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_round_trip_through_the_consumer_protocol() {
        let partitions = vec![
            ("orders".to_string(), 0),
            ("orders".to_string(), 2),
            ("payments".to_string(), 1),
        ];
        assert_eq!(
            assigned_partitions(&encode_assignment(&partitions)),
            partitions
        );
        assert!(assigned_partitions(&Bytes::from_static(b"\x00")).is_empty());
        assert!(assigned_partitions(&Bytes::from_static(b"\x00\x00\xff\xff\xff")).is_empty());
    }

    #[test]
    fn subscriptions_decode_and_garbage_gives_nothing() {
        let mut buf = BytesMut::new();
        buf.put_i16(1);
        ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("order-events")])
            .encode(&mut buf, 1)
            .unwrap();
        assert_eq!(subscribed_topics(&buf.freeze()), vec!["order-events"]);
        assert!(subscribed_topics(&Bytes::from_static(b"\x00\x00\x7f")).is_empty());
    }
}
