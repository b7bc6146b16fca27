//! The consumer-group coordinator as a pure state machine: `handle(input, now_ms)` returns what
//! to answer, and the network layer does the IO. Time is passed in, so every join, timeout and
//! rebalance sequence is tested without sockets or sleeps.
//!
//! Protocol (broker-side assignment, for native clients):
//! - A member joins (a new one gets an id). A join into a stable group starts a rebalance; the
//!   rebalance completes when every known member has (re)joined, or at the rebalance deadline,
//!   when members that did not rejoin are dropped. Completion bumps the generation, computes the
//!   assignment and answers every pending join with it.
//! - Members heartbeat with their generation; during a rebalance the answer tells them to
//!   rejoin. A member silent for its session timeout is removed, which starts a rebalance.
//! - Commits carry the member's id and generation: a stale generation is fenced
//!   (`IllegalGeneration`), so a member that lost its partitions cannot overwrite the commits of
//!   the member that took them. Commits from the current generation are accepted during a
//!   rebalance, so members can commit before they rejoin.
//!
//! Kafka's classic protocol assigns on the client instead: members join with their protocols
//! (assignor names and opaque metadata), the coordinator picks a protocol every member supports
//! and a leader, answers the leader's join with every member's metadata, and waits in
//! `AwaitingSync` until the leader's Sync carries the assignment, which it hands to every member's
//! Sync. Generations, fencing, timers and committed offsets are the same for both kinds; a group
//! is one kind or the other (a member of the other kind is refused with
//! `InconsistentGroupProtocol`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::assignor::{self, Assignor, MemberSubscription, TopicPartition};

/// Identifies a request whose answer the coordinator may hold back (a join).
pub type RequestId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupError {
    UnknownMember,
    IllegalGeneration,
    /// The group is rebalancing: rejoin.
    RebalanceInProgress,
    InvalidSessionTimeout,
    /// The member left (or was removed) while its join was pending.
    MemberRemoved,
    /// The member's protocol type or protocols match none of the group's.
    InconsistentGroupProtocol,
    /// The group has `members_per_group_max` members: a new one is refused.
    GroupMaxSizeReached,
    /// There are `groups_max` groups: a new one is refused.
    GroupsMaxReached,
    /// A commit's metadata is longer than `commit_metadata_bytes_max`.
    OffsetMetadataTooLarge,
}

/// Why a group cannot be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteGroupError {
    Unknown,
    /// Only a group without members can be deleted.
    NotEmpty {
        n_members: usize,
    },
}

/// How a Kafka client-assigned member joins: its protocol type (`consumer`) and the protocols it
/// supports, in preference order, each with its opaque metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientProtocol {
    pub protocol_type: String,
    pub protocols: Vec<(String, Vec<u8>)>,
}

/// What a client-assigned member learns from its join.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientJoin {
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    /// Every member's metadata for the chosen protocol; only the leader gets it.
    pub members: Vec<(String, Vec<u8>)>,
}

/// One member's assignment in the leader's Sync: the opaque bytes handed to the member, and the
/// partitions they name (decoded by the protocol layer) for describe and for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAssignment {
    pub member_id: String,
    pub assignment: Vec<u8>,
    pub partitions: Vec<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    pub member_id: String,
    pub generation: u32,
    /// Broker-assigned groups: this member's partitions. Empty for client-assigned groups, whose
    /// members learn their share from Sync.
    pub assignment: Vec<TopicPartition>,
    /// Client-assigned groups: the chosen protocol and leader.
    pub client: Option<ClientJoin>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: u64,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Join {
        request: RequestId,
        group: String,
        /// `None` for a new member.
        member_id: Option<String>,
        client_id: String,
        topics: BTreeSet<String>,
        session_timeout_ms: u64,
        rebalance_timeout_ms: u64,
        assignor: Assignor,
        /// `Some` for a Kafka client-assigned member (then `assignor` is not used).
        client_protocol: Option<ClientProtocol>,
    },
    /// A client-assigned member asks for its assignment; the leader brings everyone's.
    Sync {
        request: RequestId,
        group: String,
        member_id: String,
        generation: u32,
        assignments: Vec<SyncAssignment>,
    },
    Heartbeat {
        group: String,
        member_id: String,
        generation: u32,
    },
    Leave {
        group: String,
        member_id: String,
    },
    /// `member_id` empty with generation 0: a commit from outside any membership (an admin
    /// reset), accepted only while the group has no members.
    Commit {
        group: String,
        member_id: String,
        generation: u32,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    },
    /// Partition counts of the topics groups subscribe to (sent when they change).
    Partitions(BTreeMap<String, u32>),
    /// Time passes: session timeouts and rebalance deadlines.
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Joined {
        request: RequestId,
        result: Result<JoinResult, GroupError>,
    },
    /// The answer to a Sync: the member's assignment bytes.
    Synced {
        request: RequestId,
        result: Result<Vec<u8>, GroupError>,
    },
    Heartbeat(Result<(), GroupError>),
    Left(Result<(), GroupError>),
    /// The commit passed fencing: persist it, then answer success.
    CommitAccepted {
        group: String,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    },
    CommitRejected(GroupError),
    /// A rebalance finished (for logs and metrics).
    Rebalanced {
        group: String,
        generation: u32,
        n_members: usize,
    },
    /// A member was removed after its session timeout.
    Expired {
        group: String,
        member_id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    Rebalancing,
    /// Client-assigned groups between the joins' answers and the leader's Sync (Kafka's
    /// CompletingRebalance).
    AwaitingSync,
    Stable,
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    last_seen_ms: i64,
    assignment: Vec<TopicPartition>,
    pending_join: Option<RequestId>,
    protocols: Vec<(String, Vec<u8>)>,
    assignment_bytes: Vec<u8>,
    pending_sync: Option<RequestId>,
}

#[derive(Debug, Clone)]
struct Group {
    generation: u32,
    state: GroupState,
    assignor: Assignor,
    members: BTreeMap<String, Member>,
    rebalance_deadline_ms: i64,
    committed: BTreeMap<TopicPartition, CommittedOffset>,
    /// `Some(protocol type)` while the group is client-assigned.
    protocol_type: Option<String>,
    protocol_name: String,
    leader: Option<String>,
}

impl Group {
    fn new() -> Group {
        Group {
            generation: 0,
            state: GroupState::Empty,
            assignor: Assignor::default(),
            members: BTreeMap::new(),
            rebalance_deadline_ms: 0,
            committed: BTreeMap::new(),
            protocol_type: None,
            protocol_name: String::new(),
            leader: None,
        }
    }

    /// Whether a joining member fits the group's kind and shares a protocol with every member.
    fn accepts(&self, member_id: &str, client: Option<&ClientProtocol>) -> bool {
        let others = || {
            self.members
                .iter()
                .filter(|(id, _)| id.as_str() != member_id)
        };
        if others().next().is_none() {
            return true;
        }
        match (client, &self.protocol_type) {
            (None, None) => true,
            (Some(c), Some(t)) => {
                &c.protocol_type == t
                    && c.protocols.iter().any(|(name, _)| {
                        others().all(|(_, m)| m.protocols.iter().any(|(n, _)| n == name))
                    })
            }
            _ => false,
        }
    }
}

/// Limits on what members may ask for, and on how much state clients can make the
/// coordinator hold.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub session_timeout_ms_min: u64,
    pub session_timeout_ms_max: u64,
    /// Groups at most (with members or committed offsets); a join or commit that would make
    /// one more is refused (`GroupsMaxReached`). Groups restored at start are all kept.
    /// Default 10,000.
    pub groups_max: usize,
    /// Members of one group at most; one more is refused (`GroupMaxSizeReached`, Kafka's
    /// `group.max.size`). Default 1000.
    pub members_per_group_max: usize,
    /// Longest metadata string a commit may carry (Kafka's `offset.metadata.max.bytes`); a
    /// longer one refuses the commit (`OffsetMetadataTooLarge`). Default 4096.
    pub commit_metadata_bytes_max: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        // Kafka's group.min.session.timeout.ms and group.max.session.timeout.ms.
        CoordinatorConfig {
            session_timeout_ms_min: 6_000,
            session_timeout_ms_max: 1_800_000,
            groups_max: 10_000,
            members_per_group_max: 1000,
            commit_metadata_bytes_max: 4096,
        }
    }
}

/// A member as `describe` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub assignment: Vec<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group: String,
    pub state: GroupState,
    pub generation: u32,
    pub assignor: Assignor,
    /// Client-assigned groups: the protocol type and the chosen protocol (assignor) name.
    pub protocol: Option<(String, String)>,
    pub members: Vec<MemberDescription>,
    pub committed: BTreeMap<TopicPartition, CommittedOffset>,
}

#[derive(Debug, Default)]
pub struct Coordinator {
    config: CoordinatorConfig,
    groups: BTreeMap<String, Group>,
    partitions: BTreeMap<String, u32>,
    next_member: u64,
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig) -> Coordinator {
        Coordinator {
            config,
            ..Coordinator::default()
        }
    }

    /// Loads committed offsets (from the offsets topic) at start.
    pub fn restore_commit(&mut self, group: &str, tp: TopicPartition, committed: CommittedOffset) {
        self.groups
            .entry(group.to_string())
            .or_insert_with(Group::new)
            .committed
            .insert(tp, committed);
    }

    /// Replays a deletion read from the offsets log (a tombstone): the commit is forgotten,
    /// and the group with it once it has neither commits nor members.
    pub fn restore_deletion(&mut self, group: &str, tp: &TopicPartition) {
        if let Some(g) = self.groups.get_mut(group) {
            g.committed.remove(tp);
            if g.committed.is_empty() && g.members.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    /// Deletes a group that has no members, with every commit it holds (Kafka's DeleteGroups):
    /// answers the partitions whose commits must be deleted durably, or why it cannot.
    pub fn delete_group(&mut self, group: &str) -> Result<Vec<TopicPartition>, DeleteGroupError> {
        let g = self.groups.get(group).ok_or(DeleteGroupError::Unknown)?;
        if !g.members.is_empty() {
            return Err(DeleteGroupError::NotEmpty {
                n_members: g.members.len(),
            });
        }
        let g = self.groups.remove(group).ok_or(DeleteGroupError::Unknown)?;
        Ok(g.committed.into_keys().collect())
    }

    pub fn committed(&self, group: &str, tp: &TopicPartition) -> Option<&CommittedOffset> {
        self.groups.get(group)?.committed.get(tp)
    }

    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        let g = self.groups.get(group)?;
        Some(GroupDescription {
            group: group.to_string(),
            state: g.state,
            generation: g.generation,
            assignor: g.assignor,
            protocol: g
                .protocol_type
                .clone()
                .map(|t| (t, g.protocol_name.clone())),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
            committed: g.committed.clone(),
        })
    }

    pub fn handle(&mut self, input: Input, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Join {
                request,
                group,
                member_id,
                client_id,
                topics,
                session_timeout_ms,
                rebalance_timeout_ms,
                assignor,
                client_protocol,
            } => {
                if session_timeout_ms < self.config.session_timeout_ms_min
                    || session_timeout_ms > self.config.session_timeout_ms_max
                {
                    out.push(Output::Joined {
                        request,
                        result: Err(GroupError::InvalidSessionTimeout),
                    });
                    return out;
                }
                if member_id.is_none() {
                    let full = match self.groups.get(&group) {
                        None => (self.groups.len() >= self.config.groups_max)
                            .then_some(GroupError::GroupsMaxReached),
                        Some(g) => (g.members.len() >= self.config.members_per_group_max)
                            .then_some(GroupError::GroupMaxSizeReached),
                    };
                    if let Some(e) = full {
                        out.push(Output::Joined {
                            request,
                            result: Err(e),
                        });
                        return out;
                    }
                }
                let member_id = match member_id {
                    Some(id) => {
                        if !self
                            .groups
                            .get(&group)
                            .is_some_and(|g| g.members.contains_key(&id))
                        {
                            out.push(Output::Joined {
                                request,
                                result: Err(GroupError::UnknownMember),
                            });
                            return out;
                        }
                        id
                    }
                    None => {
                        self.next_member += 1;
                        format!("{client_id}-{}", self.next_member)
                    }
                };
                let g = self.groups.entry(group.clone()).or_insert_with(Group::new);
                if !g.accepts(&member_id, client_protocol.as_ref()) {
                    out.push(Output::Joined {
                        request,
                        result: Err(GroupError::InconsistentGroupProtocol),
                    });
                    return out;
                }
                if g.members.is_empty() {
                    g.assignor = assignor;
                    g.protocol_type = client_protocol.as_ref().map(|c| c.protocol_type.clone());
                    g.leader = None;
                }
                let member = g
                    .members
                    .entry(member_id.clone())
                    .or_insert_with(|| Member {
                        client_id: client_id.clone(),
                        topics: BTreeSet::new(),
                        session_timeout_ms,
                        rebalance_timeout_ms,
                        last_seen_ms: now_ms,
                        assignment: Vec::new(),
                        pending_join: None,
                        protocols: Vec::new(),
                        assignment_bytes: Vec::new(),
                        pending_sync: None,
                    });
                let protocols = client_protocol.map(|c| c.protocols).unwrap_or_default();
                let changed = member.topics != topics
                    || member.protocols != protocols
                    || member.pending_join.is_some();
                member.protocols = protocols;
                if let Some(previous) = member.pending_join.replace(request) {
                    // A second join from the same member replaces its first.
                    out.push(Output::Joined {
                        request: previous,
                        result: Err(GroupError::RebalanceInProgress),
                    });
                }
                member.topics = topics;
                member.session_timeout_ms = session_timeout_ms;
                member.rebalance_timeout_ms = rebalance_timeout_ms;
                member.last_seen_ms = now_ms;
                if g.state != GroupState::Rebalancing || changed {
                    start_rebalance(g, now_ms, &mut out);
                }
            }
            Input::Sync {
                request,
                group,
                member_id,
                generation,
                assignments,
            } => {
                let g = self.groups.get_mut(&group);
                let verdict = match &g {
                    None => Err(GroupError::UnknownMember),
                    Some(g) if !g.members.contains_key(&member_id) => {
                        Err(GroupError::UnknownMember)
                    }
                    Some(g) if g.state == GroupState::Rebalancing => {
                        Err(GroupError::RebalanceInProgress)
                    }
                    Some(g) if generation != g.generation => Err(GroupError::IllegalGeneration),
                    Some(_) => Ok(()),
                };
                match (verdict, g) {
                    (Ok(()), Some(g)) => {
                        sync(g, request, &member_id, assignments, now_ms, &mut out)
                    }
                    (verdict, _) => out.push(Output::Synced {
                        request,
                        result: verdict.map(|()| Vec::new()),
                    }),
                }
            }
            Input::Heartbeat {
                group,
                member_id,
                generation,
            } => {
                let result = match self.groups.get_mut(&group) {
                    None => Err(GroupError::UnknownMember),
                    Some(g) => match g.members.get_mut(&member_id) {
                        None => Err(GroupError::UnknownMember),
                        Some(m) => {
                            m.last_seen_ms = now_ms;
                            // Kafka answers heartbeats normally while the leader computes the
                            // assignment (the join answers already carried the generation).
                            if g.state == GroupState::Rebalancing {
                                Err(GroupError::RebalanceInProgress)
                            } else if generation != g.generation {
                                Err(GroupError::IllegalGeneration)
                            } else {
                                Ok(())
                            }
                        }
                    },
                };
                out.push(Output::Heartbeat(result));
            }
            Input::Leave { group, member_id } => {
                let result = match self
                    .groups
                    .get_mut(&group)
                    .and_then(|g| g.members.remove(&member_id).map(|m| (g, m)))
                {
                    None => Err(GroupError::UnknownMember),
                    Some((g, member)) => {
                        if let Some(request) = member.pending_join {
                            out.push(Output::Joined {
                                request,
                                result: Err(GroupError::MemberRemoved),
                            });
                        }
                        if let Some(request) = member.pending_sync {
                            out.push(Output::Synced {
                                request,
                                result: Err(GroupError::MemberRemoved),
                            });
                        }
                        start_rebalance(g, now_ms, &mut out);
                        Ok(())
                    }
                };
                out.push(Output::Left(result));
            }
            Input::Commit {
                group,
                member_id,
                generation,
                offsets,
            } => {
                if !self.groups.contains_key(&group) && self.groups.len() >= self.config.groups_max
                {
                    out.push(Output::CommitRejected(GroupError::GroupsMaxReached));
                    return out;
                }
                if offsets
                    .iter()
                    .any(|(_, c)| c.metadata.len() > self.config.commit_metadata_bytes_max)
                {
                    out.push(Output::CommitRejected(GroupError::OffsetMetadataTooLarge));
                    return out;
                }
                let g = self.groups.entry(group.clone()).or_insert_with(Group::new);
                let verdict = if member_id.is_empty() && generation == 0 {
                    if g.members.is_empty() {
                        Ok(())
                    } else {
                        Err(GroupError::RebalanceInProgress)
                    }
                } else if !g.members.contains_key(&member_id) {
                    Err(GroupError::UnknownMember)
                } else if generation != g.generation {
                    Err(GroupError::IllegalGeneration)
                } else {
                    Ok(())
                };
                match verdict {
                    Ok(()) => {
                        if let Some(m) = g.members.get_mut(&member_id) {
                            m.last_seen_ms = now_ms;
                        }
                        for (tp, committed) in &offsets {
                            g.committed.insert(tp.clone(), committed.clone());
                        }
                        out.push(Output::CommitAccepted { group, offsets });
                    }
                    Err(e) => out.push(Output::CommitRejected(e)),
                }
            }
            Input::Partitions(partitions) => {
                if partitions != self.partitions {
                    let changed: BTreeSet<&String> = partitions
                        .iter()
                        .filter(|(t, n)| self.partitions.get(*t) != Some(n))
                        .map(|(t, _)| t)
                        .chain(
                            self.partitions
                                .keys()
                                .filter(|t| !partitions.contains_key(*t)),
                        )
                        .collect();
                    // A partition-count change of a topic a broker-assigned group reads moves
                    // its partitions: that group rebalances. Other groups are left alone (a new
                    // topic elsewhere is none of their business), and client-assigned groups
                    // watch metadata and rejoin by themselves, as Kafka clients do.
                    for g in self.groups.values_mut().filter(|g| {
                        g.state == GroupState::Stable
                            && g.protocol_type.is_none()
                            && g.members
                                .values()
                                .any(|m| m.topics.iter().any(|t| changed.contains(t)))
                    }) {
                        start_rebalance(g, now_ms, &mut out);
                    }
                    self.partitions = partitions;
                }
            }
            Input::Tick => {
                // A group left with neither members nor commits holds nothing worth keeping
                // (Kafka drops such groups too); dropping it keeps groups_max about live ones.
                self.groups
                    .retain(|_, g| !(g.members.is_empty() && g.committed.is_empty()));
            }
        }
        self.expire_and_complete(now_ms, &mut out);
        out
    }

    fn expire_and_complete(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        for (name, g) in self.groups.iter_mut() {
            if g.state == GroupState::AwaitingSync && now_ms >= g.rebalance_deadline_ms {
                // The leader never sent the assignment: try again with whoever rejoins.
                start_rebalance(g, now_ms, out);
            }
            if matches!(g.state, GroupState::Stable | GroupState::AwaitingSync) {
                let expired: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, m)| now_ms - m.last_seen_ms > m.session_timeout_ms as i64)
                    .map(|(id, _)| id.clone())
                    .collect();
                if !expired.is_empty() {
                    for member_id in expired {
                        if let Some(request) =
                            g.members.remove(&member_id).and_then(|m| m.pending_sync)
                        {
                            out.push(Output::Synced {
                                request,
                                result: Err(GroupError::MemberRemoved),
                            });
                        }
                        out.push(Output::Expired {
                            group: name.clone(),
                            member_id,
                        });
                    }
                    start_rebalance(g, now_ms, out);
                }
            }
            if g.state == GroupState::Rebalancing {
                let all_joined = g.members.values().all(|m| m.pending_join.is_some());
                if !all_joined && now_ms < g.rebalance_deadline_ms {
                    continue;
                }
                // Members that did not rejoin in time are gone.
                let stragglers: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, m)| m.pending_join.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                for member_id in stragglers {
                    g.members.remove(&member_id);
                    out.push(Output::Expired {
                        group: name.clone(),
                        member_id,
                    });
                }
                complete_rebalance(name, g, &self.partitions, now_ms, out);
            }
        }
    }
}

fn start_rebalance(g: &mut Group, now_ms: i64, out: &mut Vec<Output>) {
    // Syncs waiting for an assignment that will not come: their members must rejoin.
    for m in g.members.values_mut() {
        if let Some(request) = m.pending_sync.take() {
            out.push(Output::Synced {
                request,
                result: Err(GroupError::RebalanceInProgress),
            });
        }
    }
    if g.members.is_empty() {
        g.state = GroupState::Empty;
        g.protocol_type = None;
        return;
    }
    if g.state != GroupState::Rebalancing {
        g.state = GroupState::Rebalancing;
        g.rebalance_deadline_ms = rebalance_deadline(g, now_ms);
    }
}

/// Now plus the longest rebalance timeout of the group's members.
fn rebalance_deadline(g: &Group, now_ms: i64) -> i64 {
    let longest = g
        .members
        .values()
        .map(|m| m.rebalance_timeout_ms)
        .max()
        .unwrap_or(0);
    now_ms + longest as i64
}

fn complete_rebalance(
    name: &str,
    g: &mut Group,
    partitions: &BTreeMap<String, u32>,
    now_ms: i64,
    out: &mut Vec<Output>,
) {
    if g.members.is_empty() {
        g.state = GroupState::Empty;
        g.protocol_type = None;
        return;
    }
    g.generation += 1;
    if let Some(protocol_type) = g.protocol_type.clone() {
        complete_client_rebalance(name, g, protocol_type, now_ms, out);
        return;
    }
    let subscriptions: Vec<MemberSubscription> = g
        .members
        .iter()
        .map(|(id, m)| MemberSubscription {
            member_id: id.clone(),
            topics: m.topics.clone(),
            owned: m.assignment.clone(),
        })
        .collect();
    let mut assignment: HashMap<String, Vec<TopicPartition>> =
        assignor::assign(g.assignor, &subscriptions, partitions)
            .into_iter()
            .collect();
    for (id, m) in g.members.iter_mut() {
        m.assignment = assignment.remove(id).unwrap_or_default();
        m.last_seen_ms = now_ms;
        if let Some(request) = m.pending_join.take() {
            out.push(Output::Joined {
                request,
                result: Ok(JoinResult {
                    member_id: id.clone(),
                    generation: g.generation,
                    assignment: m.assignment.clone(),
                    client: None,
                }),
            });
        }
    }
    g.state = GroupState::Stable;
    out.push(Output::Rebalanced {
        group: name.to_string(),
        generation: g.generation,
        n_members: g.members.len(),
    });
}

/// Picks the protocol and leader, answers every join, and waits for the leader's Sync.
fn complete_client_rebalance(
    name: &str,
    g: &mut Group,
    protocol_type: String,
    now_ms: i64,
    out: &mut Vec<Output>,
) {
    let leader = match g.leader.take() {
        Some(leader) if g.members.contains_key(&leader) => leader,
        _ => g.members.keys().next().expect("members checked").clone(),
    };
    // The leader's most preferred protocol that every member supports (joins were checked to
    // share at least one).
    let supported = |name: &str| {
        g.members
            .values()
            .all(|m| m.protocols.iter().any(|(n, _)| n == name))
    };
    let protocol_name = g.members[&leader]
        .protocols
        .iter()
        .map(|(n, _)| n.clone())
        .find(|n| supported(n))
        .unwrap_or_default();
    let metadata: Vec<(String, Vec<u8>)> = g
        .members
        .iter()
        .map(|(id, m)| {
            let bytes = m
                .protocols
                .iter()
                .find(|(n, _)| *n == protocol_name)
                .map(|(_, b)| b.clone())
                .unwrap_or_default();
            (id.clone(), bytes)
        })
        .collect();
    for (id, m) in g.members.iter_mut() {
        m.assignment.clear();
        m.assignment_bytes.clear();
        m.last_seen_ms = now_ms;
        if let Some(request) = m.pending_join.take() {
            out.push(Output::Joined {
                request,
                result: Ok(JoinResult {
                    member_id: id.clone(),
                    generation: g.generation,
                    assignment: Vec::new(),
                    client: Some(ClientJoin {
                        protocol_type: protocol_type.clone(),
                        protocol_name: protocol_name.clone(),
                        leader: leader.clone(),
                        members: if *id == leader {
                            metadata.clone()
                        } else {
                            Vec::new()
                        },
                    }),
                }),
            });
        }
    }
    g.rebalance_deadline_ms = rebalance_deadline(g, now_ms);
    g.protocol_name = protocol_name;
    g.leader = Some(leader);
    g.state = GroupState::AwaitingSync;
    out.push(Output::Rebalanced {
        group: name.to_string(),
        generation: g.generation,
        n_members: g.members.len(),
    });
}

/// A Sync that passed fencing. The leader's assignment makes the group stable and answers every
/// waiting member; a Sync in a stable group is answered from the stored assignment.
fn sync(
    g: &mut Group,
    request: RequestId,
    member_id: &str,
    assignments: Vec<SyncAssignment>,
    now_ms: i64,
    out: &mut Vec<Output>,
) {
    if let Some(m) = g.members.get_mut(member_id) {
        m.last_seen_ms = now_ms;
    }
    if g.state != GroupState::AwaitingSync {
        let bytes = g.members[member_id].assignment_bytes.clone();
        out.push(Output::Synced {
            request,
            result: Ok(bytes),
        });
        return;
    }
    if let Some(previous) = g
        .members
        .get_mut(member_id)
        .and_then(|m| m.pending_sync.replace(request))
    {
        out.push(Output::Synced {
            request: previous,
            result: Err(GroupError::RebalanceInProgress),
        });
    }
    if g.leader.as_deref() != Some(member_id) {
        return;
    }
    for a in assignments {
        if let Some(m) = g.members.get_mut(&a.member_id) {
            m.assignment_bytes = a.assignment;
            m.assignment = a.partitions;
        }
    }
    g.state = GroupState::Stable;
    for m in g.members.values_mut() {
        if let Some(request) = m.pending_sync.take() {
            out.push(Output::Synced {
                request,
                result: Ok(m.assignment_bytes.clone()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: u64 = 10_000;
    const REBALANCE: u64 = 30_000;

    fn coordinator(partitions: u32) -> Coordinator {
        let mut c = Coordinator::new(CoordinatorConfig::default());
        c.handle(Input::Partitions([("t".to_string(), partitions)].into()), 0);
        c
    }

    fn join(
        c: &mut Coordinator,
        request: RequestId,
        member: Option<&str>,
        assignor: Assignor,
        now: i64,
    ) -> Vec<Output> {
        c.handle(
            Input::Join {
                request,
                group: "g".into(),
                member_id: member.map(String::from),
                client_id: "client".into(),
                topics: ["t".to_string()].into(),
                session_timeout_ms: SESSION,
                rebalance_timeout_ms: REBALANCE,
                assignor,
                client_protocol: None,
            },
            now,
        )
    }

    fn joined(outputs: &[Output], request: RequestId) -> Result<JoinResult, GroupError> {
        outputs
            .iter()
            .find_map(|o| match o {
                Output::Joined { request: r, result } if *r == request => Some(result.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no answer to join {request} in {outputs:?}"))
    }

    fn heartbeat(
        c: &mut Coordinator,
        member: &str,
        generation: u32,
        now: i64,
    ) -> Result<(), GroupError> {
        match c
            .handle(
                Input::Heartbeat {
                    group: "g".into(),
                    member_id: member.into(),
                    generation,
                },
                now,
            )
            .first()
        {
            Some(Output::Heartbeat(r)) => *r,
            other => panic!("{other:?}"),
        }
    }

    fn commit(c: &mut Coordinator, member: &str, generation: u32, offset: u64) -> Output {
        let offsets = vec![(
            ("t".to_string(), 0),
            CommittedOffset {
                offset,
                metadata: String::new(),
            },
        )];
        c.handle(
            Input::Commit {
                group: "g".into(),
                member_id: member.into(),
                generation,
                offsets,
            },
            0,
        )
        .remove(0)
    }

    /// Two members of a six-partition group, stable at generation 2.
    fn two_members(assignor: Assignor) -> (Coordinator, JoinResult, JoinResult) {
        let mut c = coordinator(6);
        let a = joined(&join(&mut c, 1, None, assignor, 0), 1).unwrap();
        assert_eq!((a.generation, a.assignment.len()), (1, 6));
        // A second member starts a rebalance; the first learns of it by heartbeat and rejoins.
        let pending = join(&mut c, 2, None, assignor, 100);
        assert!(
            pending.iter().all(|o| !matches!(o, Output::Joined { .. })),
            "completed without the first member"
        );
        assert_eq!(
            heartbeat(&mut c, &a.member_id, 1, 200),
            Err(GroupError::RebalanceInProgress)
        );
        let out = join(&mut c, 3, Some(&a.member_id), assignor, 300);
        let (a, b) = (joined(&out, 3).unwrap(), joined(&out, 2).unwrap());
        (c, a, b)
    }

    #[test]
    fn members_join_and_share_the_partitions() {
        let (mut c, a, b) = two_members(Assignor::Range);
        assert_eq!((a.generation, b.generation), (2, 2));
        let mut all: Vec<_> = a.assignment.iter().chain(&b.assignment).cloned().collect();
        all.sort();
        assert_eq!(
            all,
            (0..6).map(|p| ("t".to_string(), p)).collect::<Vec<_>>()
        );
        assert_eq!(heartbeat(&mut c, &a.member_id, 2, 400), Ok(()));
        assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
    }

    #[test]
    fn a_silent_member_is_removed_after_its_session_timeout() {
        let (mut c, a, b) = two_members(Assignor::Range);
        // a keeps heartbeating, b goes silent.
        for t in (1000..=10_000).step_by(1000) {
            assert_eq!(heartbeat(&mut c, &a.member_id, 2, t), Ok(()));
        }
        let out = c.handle(Input::Tick, 10_301);
        assert!(
            out.contains(&Output::Expired {
                group: "g".into(),
                member_id: b.member_id.clone()
            }),
            "{out:?}"
        );
        assert_eq!(
            heartbeat(&mut c, &a.member_id, 2, 10_400),
            Err(GroupError::RebalanceInProgress)
        );
        let a2 = joined(
            &join(&mut c, 9, Some(&a.member_id), Assignor::Range, 10_500),
            9,
        )
        .unwrap();
        assert_eq!((a2.generation, a2.assignment.len()), (3, 6));
        // b's late heartbeat finds it gone.
        assert_eq!(
            heartbeat(&mut c, &b.member_id, 2, 10_600),
            Err(GroupError::UnknownMember)
        );
    }

    #[test]
    fn commits_from_stale_generations_or_strangers_are_fenced() {
        let (mut c, a, _b) = two_members(Assignor::Range);
        assert!(matches!(
            commit(&mut c, &a.member_id, 2, 10),
            Output::CommitAccepted { .. }
        ));
        assert_eq!(
            commit(&mut c, &a.member_id, 1, 5),
            Output::CommitRejected(GroupError::IllegalGeneration)
        );
        assert_eq!(
            commit(&mut c, "nobody", 2, 5),
            Output::CommitRejected(GroupError::UnknownMember)
        );
        // An outside commit (an admin reset) is refused while the group has members.
        assert_eq!(
            commit(&mut c, "", 0, 0),
            Output::CommitRejected(GroupError::RebalanceInProgress)
        );
        assert_eq!(c.committed("g", &("t".into(), 0)).unwrap().offset, 10);
    }

    #[test]
    fn leaving_rebalances_and_answers_a_pending_join() {
        let (mut c, a, b) = two_members(Assignor::Range);
        // b rejoins (pending, waiting for a), then leaves before the rebalance completes.
        let out = join(&mut c, 20, Some(&b.member_id), Assignor::Range, 1000);
        assert!(out.iter().all(|o| !matches!(o, Output::Joined { .. })));
        let out = c.handle(
            Input::Leave {
                group: "g".into(),
                member_id: b.member_id.clone(),
            },
            1100,
        );
        assert_eq!(joined(&out, 20), Err(GroupError::MemberRemoved));
        assert!(out.contains(&Output::Left(Ok(()))));
        let a2 = joined(
            &join(&mut c, 21, Some(&a.member_id), Assignor::Range, 1200),
            21,
        )
        .unwrap();
        assert_eq!((a2.generation, a2.assignment.len()), (3, 6));
    }

    #[test]
    fn members_that_do_not_rejoin_by_the_deadline_are_dropped() {
        let (mut c, a, b) = two_members(Assignor::Range);
        let newcomer = join(&mut c, 30, None, Assignor::Range, 1000);
        assert!(newcomer.iter().all(|o| !matches!(o, Output::Joined { .. })));
        // Only a rejoins; b never does.
        let out = join(&mut c, 31, Some(&a.member_id), Assignor::Range, 2000);
        assert!(out.iter().all(|o| !matches!(o, Output::Joined { .. })));
        let out = c.handle(Input::Tick, 1000 + REBALANCE as i64);
        assert!(out.contains(&Output::Expired {
            group: "g".into(),
            member_id: b.member_id.clone()
        }));
        let (a3, c3) = (joined(&out, 31).unwrap(), joined(&out, 30).unwrap());
        assert_eq!(
            (a3.generation, a3.assignment.len() + c3.assignment.len()),
            (3, 6)
        );
    }

    #[test]
    fn cooperative_rebalance_moves_only_what_it_must() {
        let (mut c, a, b) = two_members(Assignor::CooperativeSticky);
        join(&mut c, 40, None, Assignor::CooperativeSticky, 1000);
        let out_a = join(
            &mut c,
            41,
            Some(&a.member_id),
            Assignor::CooperativeSticky,
            1100,
        );
        assert!(out_a.iter().all(|o| !matches!(o, Output::Joined { .. })));
        let out = join(
            &mut c,
            42,
            Some(&b.member_id),
            Assignor::CooperativeSticky,
            1200,
        );
        let (a2, b2, n2) = (
            joined(&out, 41).unwrap(),
            joined(&out, 42).unwrap(),
            joined(&out, 40).unwrap(),
        );
        assert_eq!(
            [
                a2.assignment.len(),
                b2.assignment.len(),
                n2.assignment.len()
            ],
            [2, 2, 2]
        );
        // a and b each kept two of their three and gave one to the newcomer.
        assert!(a2.assignment.iter().all(|tp| a.assignment.contains(tp)));
        assert!(b2.assignment.iter().all(|tp| b.assignment.contains(tp)));
    }

    #[test]
    fn out_of_range_session_timeouts_are_refused() {
        let mut c = coordinator(1);
        let out = c.handle(
            Input::Join {
                request: 1,
                group: "g".into(),
                member_id: None,
                client_id: "c".into(),
                topics: ["t".to_string()].into(),
                session_timeout_ms: 10,
                rebalance_timeout_ms: 10,
                assignor: Assignor::Range,
                client_protocol: None,
            },
            0,
        );
        assert_eq!(joined(&out, 1), Err(GroupError::InvalidSessionTimeout));
        assert!(c.describe("g").is_none());
    }

    #[test]
    fn a_partition_count_change_rebalances_stable_groups() {
        let (mut c, a, _b) = two_members(Assignor::Range);
        c.handle(Input::Partitions([("t".to_string(), 8)].into()), 500);
        assert_eq!(
            heartbeat(&mut c, &a.member_id, 2, 600),
            Err(GroupError::RebalanceInProgress)
        );
    }

    #[test]
    fn a_new_topic_elsewhere_rebalances_no_group() {
        let (mut c, a, _b) = two_members(Assignor::Range);
        let counts = [("t".to_string(), 6), ("other".to_string(), 4)];
        c.handle(Input::Partitions(counts.into()), 500);
        assert_eq!(heartbeat(&mut c, &a.member_id, 2, 600), Ok(()));
        // Its partition count changing later is none of this group's business either.
        let counts = [("t".to_string(), 6), ("other".to_string(), 5)];
        c.handle(Input::Partitions(counts.into()), 700);
        assert_eq!(heartbeat(&mut c, &a.member_id, 2, 800), Ok(()));
    }

    fn client_join(
        c: &mut Coordinator,
        request: RequestId,
        member: Option<&str>,
        protocols: &[&str],
        now: i64,
    ) -> Vec<Output> {
        c.handle(
            Input::Join {
                request,
                group: "k".into(),
                member_id: member.map(String::from),
                client_id: "rdkafka".into(),
                topics: BTreeSet::new(),
                session_timeout_ms: SESSION,
                rebalance_timeout_ms: REBALANCE,
                assignor: Assignor::Range,
                client_protocol: Some(ClientProtocol {
                    protocol_type: "consumer".into(),
                    protocols: protocols
                        .iter()
                        .map(|p| (p.to_string(), format!("meta-{p}-{request}").into_bytes()))
                        .collect(),
                }),
            },
            now,
        )
    }

    fn synced(outputs: &[Output], request: RequestId) -> Option<Result<Vec<u8>, GroupError>> {
        outputs.iter().find_map(|o| match o {
            Output::Synced { request: r, result } if *r == request => Some(result.clone()),
            _ => None,
        })
    }

    fn sync_input(
        request: RequestId,
        member: &str,
        generation: u32,
        assignments: Vec<SyncAssignment>,
    ) -> Input {
        Input::Sync {
            request,
            group: "k".into(),
            member_id: member.into(),
            generation,
            assignments,
        }
    }

    /// Two Kafka members: the leader gets both members' metadata for the protocol they share,
    /// the follower's Sync waits for the leader's, and each gets its own assignment bytes.
    #[test]
    fn client_assignment_goes_through_the_leader() {
        let mut c = coordinator(4);
        let a = joined(
            &client_join(&mut c, 1, None, &["range", "roundrobin"], 0),
            1,
        )
        .unwrap();
        assert_eq!(a.client.as_ref().unwrap().leader, a.member_id);
        let out = c.handle(sync_input(2, &a.member_id, a.generation, vec![]), 10);
        assert_eq!(synced(&out, 2), Some(Ok(Vec::new())));

        // A second member that only speaks roundrobin: the group moves to roundrobin.
        let pending = client_join(&mut c, 3, None, &["roundrobin"], 100);
        assert!(pending.iter().all(|o| !matches!(o, Output::Joined { .. })));
        assert_eq!(
            heartbeat_k(&mut c, &a.member_id, a.generation, 200),
            Err(GroupError::RebalanceInProgress)
        );
        let out = client_join(&mut c, 4, Some(&a.member_id), &["range", "roundrobin"], 300);
        let a2 = joined(&out, 4).unwrap();
        let b = joined(&out, 3).unwrap();
        assert_eq!(a2.generation, 2);
        let lead = a2.client.unwrap();
        assert_eq!(lead.protocol_name, "roundrobin");
        assert_eq!(lead.leader, a.member_id);
        assert_eq!(
            lead.members,
            vec![
                (a.member_id.clone(), b"meta-roundrobin-4".to_vec()),
                (b.member_id.clone(), b"meta-roundrobin-3".to_vec())
            ]
        );
        assert!(
            b.client.unwrap().members.is_empty(),
            "followers get no metadata"
        );
        assert_eq!(c.describe("k").unwrap().state, GroupState::AwaitingSync);
        // Heartbeats are fine while the leader assigns.
        assert_eq!(heartbeat_k(&mut c, &b.member_id, 2, 350), Ok(()));

        let out = c.handle(sync_input(5, &b.member_id, 2, vec![]), 400);
        assert_eq!(synced(&out, 5), None, "the follower waits for the leader");
        let assignments = vec![
            SyncAssignment {
                member_id: a.member_id.clone(),
                assignment: b"A".to_vec(),
                partitions: vec![("t".into(), 0), ("t".into(), 1)],
            },
            SyncAssignment {
                member_id: b.member_id.clone(),
                assignment: b"B".to_vec(),
                partitions: vec![("t".into(), 2), ("t".into(), 3)],
            },
        ];
        let out = c.handle(sync_input(6, &a.member_id, 2, assignments), 500);
        assert_eq!(synced(&out, 5), Some(Ok(b"B".to_vec())));
        assert_eq!(synced(&out, 6), Some(Ok(b"A".to_vec())));
        let d = c.describe("k").unwrap();
        assert_eq!(d.state, GroupState::Stable);
        assert_eq!(d.protocol, Some(("consumer".into(), "roundrobin".into())));
        assert_eq!(
            d.members[1].assignment,
            vec![("t".into(), 2), ("t".into(), 3)]
        );
        // A stale generation is fenced.
        let out = c.handle(sync_input(7, &b.member_id, 1, vec![]), 600);
        assert_eq!(synced(&out, 7), Some(Err(GroupError::IllegalGeneration)));
        // Partition counts are the clients' to watch: the broker starts no rebalance for them.
        c.handle(Input::Partitions([("t".to_string(), 8)].into()), 700);
        assert_eq!(heartbeat_k(&mut c, &a.member_id, 2, 800), Ok(()));
    }

    #[test]
    fn a_leader_that_never_syncs_restarts_the_rebalance() {
        let mut c = coordinator(2);
        let a = joined(&client_join(&mut c, 1, None, &["range"], 0), 1).unwrap();
        client_join(&mut c, 2, None, &["range"], 10);
        let out = client_join(&mut c, 3, Some(&a.member_id), &["range"], 20);
        let follower = joined(&out, 2).unwrap();
        let out = c.handle(sync_input(4, &follower.member_id, 2, vec![]), 30);
        assert_eq!(synced(&out, 4), None);
        // The leader keeps heartbeating but never syncs: past the rebalance timeout, the
        // waiting follower is told to rejoin.
        for now in (1_000..REBALANCE as i64).step_by(1_000) {
            assert_eq!(heartbeat_k(&mut c, &a.member_id, 2, now), Ok(()));
            assert_eq!(heartbeat_k(&mut c, &follower.member_id, 2, now), Ok(()));
        }
        let out = c.handle(Input::Tick, REBALANCE as i64 + 100);
        assert_eq!(synced(&out, 4), Some(Err(GroupError::RebalanceInProgress)));
        assert_eq!(c.describe("k").unwrap().state, GroupState::Rebalancing);
    }

    #[test]
    fn kafka_and_native_members_do_not_mix() {
        let mut c = coordinator(2);
        let a = joined(&client_join(&mut c, 1, None, &["range"], 0), 1).unwrap();
        let out = c.handle(
            Input::Join {
                request: 2,
                group: "k".into(),
                member_id: None,
                client_id: "native".into(),
                topics: ["t".to_string()].into(),
                session_timeout_ms: SESSION,
                rebalance_timeout_ms: REBALANCE,
                assignor: Assignor::Range,
                client_protocol: None,
            },
            10,
        );
        assert_eq!(joined(&out, 2), Err(GroupError::InconsistentGroupProtocol));
        let out = client_join(&mut c, 3, None, &["cooperative-sticky"], 20);
        assert_eq!(joined(&out, 3), Err(GroupError::InconsistentGroupProtocol));
        // Once the Kafka member leaves, the group may change kind.
        c.handle(
            Input::Leave {
                group: "k".into(),
                member_id: a.member_id,
            },
            30,
        );
        let out = client_join(&mut c, 4, None, &["cooperative-sticky"], 40);
        assert!(joined(&out, 4).is_ok());
    }

    fn heartbeat_k(
        c: &mut Coordinator,
        member: &str,
        generation: u32,
        now: i64,
    ) -> Result<(), GroupError> {
        match c
            .handle(
                Input::Heartbeat {
                    group: "k".into(),
                    member_id: member.into(),
                    generation,
                },
                now,
            )
            .first()
        {
            Some(Output::Heartbeat(r)) => *r,
            other => panic!("{other:?}"),
        }
    }

    fn join_group(c: &mut Coordinator, request: RequestId, group: &str, now: i64) -> Vec<Output> {
        c.handle(
            Input::Join {
                request,
                group: group.into(),
                member_id: None,
                client_id: "client".into(),
                topics: ["t".to_string()].into(),
                session_timeout_ms: SESSION,
                rebalance_timeout_ms: REBALANCE,
                assignor: Assignor::Range,
                client_protocol: None,
            },
            now,
        )
    }

    #[test]
    fn only_a_group_without_members_is_deleted_with_its_commits() {
        let mut c = coordinator(2);
        assert_eq!(c.delete_group("g"), Err(DeleteGroupError::Unknown));
        join_group(&mut c, 1, "g", 0);
        assert_eq!(
            c.delete_group("g"),
            Err(DeleteGroupError::NotEmpty { n_members: 1 })
        );
        assert!(
            c.describe("g").is_some(),
            "a refused delete changes nothing"
        );
        assert!(matches!(
            admin_commit(&mut c, "idle", "m"),
            Output::CommitAccepted { .. }
        ));
        assert_eq!(c.delete_group("idle"), Ok(vec![("t".to_string(), 0)]));
        assert!(c.describe("idle").is_none());
        assert!(c.committed("idle", &("t".to_string(), 0)).is_none());
        // Replaying the log: a commit, then its tombstone, leaves no group behind.
        let committed = CommittedOffset {
            offset: 4,
            metadata: String::new(),
        };
        c.restore_commit("old", ("t".to_string(), 1), committed);
        c.restore_deletion("old", &("t".to_string(), 1));
        assert!(c.describe("old").is_none());
    }

    fn admin_commit(c: &mut Coordinator, group: &str, metadata: &str) -> Output {
        let offsets = vec![(
            ("t".to_string(), 0),
            CommittedOffset {
                offset: 1,
                metadata: metadata.into(),
            },
        )];
        c.handle(
            Input::Commit {
                group: group.into(),
                member_id: String::new(),
                generation: 0,
                offsets,
            },
            0,
        )
        .remove(0)
    }

    #[test]
    fn groups_members_and_commit_metadata_are_bounded() {
        let mut c = Coordinator::new(CoordinatorConfig {
            groups_max: 2,
            members_per_group_max: 2,
            commit_metadata_bytes_max: 8,
            ..CoordinatorConfig::default()
        });
        c.handle(Input::Partitions([("t".to_string(), 4)].into()), 0);
        join_group(&mut c, 1, "a", 0);
        join_group(&mut c, 2, "a", 0);
        let third = join_group(&mut c, 3, "a", 0);
        assert_eq!(joined(&third, 3), Err(GroupError::GroupMaxSizeReached));
        // A commit creates a group too; the third group is refused either way.
        assert!(matches!(
            admin_commit(&mut c, "b", "ok"),
            Output::CommitAccepted { .. }
        ));
        assert_eq!(
            joined(&join_group(&mut c, 4, "c", 0), 4),
            Err(GroupError::GroupsMaxReached)
        );
        assert_eq!(
            admin_commit(&mut c, "c", "ok"),
            Output::CommitRejected(GroupError::GroupsMaxReached)
        );
        assert_eq!(c.groups().count(), 2);
        // Metadata at the bound is kept; one byte more refuses the whole commit.
        assert!(matches!(
            admin_commit(&mut c, "b", "12345678"),
            Output::CommitAccepted { .. }
        ));
        assert_eq!(
            admin_commit(&mut c, "b", "123456789"),
            Output::CommitRejected(GroupError::OffsetMetadataTooLarge)
        );
        assert_eq!(
            c.committed("b", &("t".to_string(), 0)).unwrap().metadata,
            "12345678"
        );
    }

    #[test]
    fn a_group_with_no_members_and_no_commits_is_dropped_and_frees_its_place() {
        let mut c = Coordinator::new(CoordinatorConfig {
            groups_max: 1,
            ..CoordinatorConfig::default()
        });
        c.handle(Input::Partitions([("t".to_string(), 1)].into()), 0);
        let member = joined(&join_group(&mut c, 1, "a", 0), 1).unwrap().member_id;
        c.handle(
            Input::Leave {
                group: "a".into(),
                member_id: member,
            },
            1,
        );
        assert_eq!(
            joined(&join_group(&mut c, 2, "b", 1), 2),
            Err(GroupError::GroupsMaxReached)
        );
        c.handle(Input::Tick, 2);
        assert_eq!(c.groups().count(), 0);
        assert!(joined(&join_group(&mut c, 3, "b", 2), 3).is_ok());
    }
}
