//! `Groups`: the coordinator driven for real: joins wait for their rebalance to complete, time
//! comes from a ticker, partition counts from the topic registry, and accepted commits are
//! written to the offsets topic before they are acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::coordinator::{
    ClientProtocol, Coordinator, CoordinatorConfig, DeleteGroupError, GroupDescription, GroupError,
    Input, JoinResult, Output, RequestId, SyncAssignment,
};
use super::offsets::OffsetStore;
use super::{Assignor, CommittedOffset, TopicPartition};
use crate::log::now_ms;
use crate::service::ServiceError;
use crate::topics::{TopicError, Topics};

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("commit refused: {0:?}")]
    Fenced(GroupError),
    #[error(transparent)]
    Storage(#[from] ServiceError),
}

/// A join as a member asks for it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group: String,
    pub member_id: Option<String>,
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub assignor: Assignor,
    /// `Some` for a Kafka member that assigns on the client.
    pub client_protocol: Option<ClientProtocol>,
}

#[derive(Debug)]
struct State {
    coordinator: Coordinator,
    next_request: RequestId,
    joins: HashMap<RequestId, oneshot::Sender<Result<JoinResult, GroupError>>>,
    syncs: HashMap<RequestId, oneshot::Sender<Result<Vec<u8>, GroupError>>>,
}

#[derive(Debug)]
pub struct Groups {
    state: Mutex<State>,
    store: OffsetStore,
    topics: Arc<Topics>,
    commit_metadata_bytes_max: usize,
}

impl Groups {
    /// Opens the offsets topic and restores every committed offset.
    pub fn open(topics: Arc<Topics>, config: CoordinatorConfig) -> Result<Groups, TopicError> {
        let (store, commits) = OffsetStore::open(&topics)?;
        let commit_metadata_bytes_max = config.commit_metadata_bytes_max;
        let mut coordinator = Coordinator::new(config);
        let n_commits = commits.len();
        for (group, tp, committed) in commits {
            match committed {
                Some(committed) => coordinator.restore_commit(&group, tp, committed),
                None => coordinator.restore_deletion(&group, &tp),
            }
        }
        tracing::info!(commits = n_commits, "restored committed offsets");
        Ok(Groups {
            state: Mutex::new(State {
                coordinator,
                next_request: 0,
                joins: HashMap::new(),
                syncs: HashMap::new(),
            }),
            store,
            topics,
            commit_metadata_bytes_max,
        })
    }

    /// The longest metadata a commit may carry, so a protocol can refuse one partition's
    /// commit before it reaches the coordinator.
    pub fn commit_metadata_bytes_max(&self) -> usize {
        self.commit_metadata_bytes_max
    }

    fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.topics
            .list()
            .iter()
            .map(|t| (t.name.clone(), t.partitions.len() as u32))
            .collect()
    }

    /// Runs one input through the coordinator and delivers join answers to their waiters.
    fn drive(&self, state: &mut State, input: Input) -> Vec<Output> {
        let now = now_ms();
        let mut outputs = state
            .coordinator
            .handle(Input::Partitions(self.partition_counts()), now);
        outputs.extend(state.coordinator.handle(input, now));
        outputs.retain(|output| match output {
            Output::Joined { request, result } => {
                if let Some(waiter) = state.joins.remove(request) {
                    let _ = waiter.send(result.clone());
                }
                false
            }
            Output::Synced { request, result } => {
                if let Some(waiter) = state.syncs.remove(request) {
                    let _ = waiter.send(result.clone());
                }
                false
            }
            Output::Rebalanced {
                group,
                generation,
                n_members,
            } => {
                tracing::info!(%group, generation, members = n_members, "group rebalanced");
                false
            }
            Output::Expired { group, member_id } => {
                tracing::info!(%group, %member_id, "member removed: session or rebalance timeout");
                false
            }
            _ => true,
        });
        outputs
    }

    /// Joins (or rejoins) and waits until the rebalance completes with this member's share.
    pub async fn join(&self, join: JoinRequest) -> Result<JoinResult, GroupError> {
        let rx = {
            let mut state = self.state.lock().expect("groups lock");
            state.next_request += 1;
            let request = state.next_request;
            let (tx, rx) = oneshot::channel();
            state.joins.insert(request, tx);
            let input = Input::Join {
                request,
                group: join.group,
                member_id: join.member_id,
                client_id: join.client_id,
                topics: join.topics,
                session_timeout_ms: join.session_timeout_ms,
                rebalance_timeout_ms: join.rebalance_timeout_ms,
                assignor: join.assignor,
                client_protocol: join.client_protocol,
            };
            self.drive(&mut state, input);
            rx
        };
        rx.await.unwrap_or(Err(GroupError::MemberRemoved))
    }

    /// A client-assigned member's Sync: waits until the leader's assignment arrives (the
    /// leader's own Sync brings it) and returns this member's assignment bytes.
    pub async fn sync(
        &self,
        group: &str,
        member_id: &str,
        generation: u32,
        assignments: Vec<SyncAssignment>,
    ) -> Result<Vec<u8>, GroupError> {
        let rx = {
            let mut state = self.state.lock().expect("groups lock");
            state.next_request += 1;
            let request = state.next_request;
            let (tx, rx) = oneshot::channel();
            state.syncs.insert(request, tx);
            let input = Input::Sync {
                request,
                group: group.into(),
                member_id: member_id.into(),
                generation,
                assignments,
            };
            self.drive(&mut state, input);
            rx
        };
        rx.await.unwrap_or(Err(GroupError::MemberRemoved))
    }

    pub fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: u32,
    ) -> Result<(), GroupError> {
        let mut state = self.state.lock().expect("groups lock");
        let input = Input::Heartbeat {
            group: group.into(),
            member_id: member_id.into(),
            generation,
        };
        match self.drive(&mut state, input).first() {
            Some(Output::Heartbeat(result)) => *result,
            _ => Err(GroupError::UnknownMember),
        }
    }

    pub fn leave(&self, group: &str, member_id: &str) -> Result<(), GroupError> {
        let mut state = self.state.lock().expect("groups lock");
        let input = Input::Leave {
            group: group.into(),
            member_id: member_id.into(),
        };
        match self.drive(&mut state, input).first() {
            Some(Output::Left(result)) => *result,
            _ => Err(GroupError::UnknownMember),
        }
    }

    /// Fences the commit by member and generation, then makes it durable.
    pub async fn commit(
        &self,
        group: &str,
        member_id: &str,
        generation: u32,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    ) -> Result<(), CommitError> {
        let end = {
            let mut state = self.state.lock().expect("groups lock");
            let input = Input::Commit {
                group: group.into(),
                member_id: member_id.into(),
                generation,
                offsets,
            };
            let accepted = match self.drive(&mut state, input).into_iter().next() {
                Some(Output::CommitAccepted { offsets, .. }) => offsets,
                Some(Output::CommitRejected(e)) => return Err(CommitError::Fenced(e)),
                _ => return Err(CommitError::Fenced(GroupError::UnknownMember)),
            };
            // Appended under the lock, so the log orders commits and deletions as the
            // coordinator did.
            let accepted: Vec<_> = accepted
                .into_iter()
                .map(|(tp, committed)| (tp, Some(committed)))
                .collect();
            self.store.append(group, &accepted)?
        };
        self.store.wait_durable(end).await?;
        Ok(())
    }

    /// Deletes a group without members and its commits, durably (tombstones in the offsets
    /// topic, fsynced before the answer).
    pub async fn delete(&self, group: &str) -> Result<(), ServiceError> {
        let end = {
            let mut state = self.state.lock().expect("groups lock");
            let partitions = state.coordinator.delete_group(group).map_err(|e| match e {
                DeleteGroupError::Unknown => ServiceError::UnknownGroup(group.to_string()),
                DeleteGroupError::NotEmpty { n_members } => ServiceError::GroupNotEmpty {
                    group: group.to_string(),
                    n_members,
                },
            })?;
            let deletions: Vec<_> = partitions.into_iter().map(|tp| (tp, None)).collect();
            self.store.append(group, &deletions)?
        };
        self.store.wait_durable(end).await?;
        tracing::info!(%group, "group deleted");
        Ok(())
    }

    /// Makes a committed transaction's offsets the group's, durably first (no member or
    /// generation check: the transaction coordinator fenced the producer that sent them).
    pub async fn commit_transactional(
        &self,
        group: &str,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    ) -> Result<(), ServiceError> {
        // Appended under the lock, as the coordinator's own commits, so the log keeps the
        // order in which commits were applied.
        let end = {
            let mut state = self.state.lock().expect("groups lock");
            let stored: Vec<_> = offsets
                .iter()
                .map(|(tp, committed)| (tp.clone(), Some(committed.clone())))
                .collect();
            let end = self.store.append(group, &stored)?;
            for (tp, committed) in offsets {
                state.coordinator.restore_commit(group, tp, committed);
            }
            end
        };
        self.store.wait_durable(end).await?;
        Ok(())
    }

    pub fn committed(&self, group: &str, tp: &TopicPartition) -> Option<CommittedOffset> {
        self.state
            .lock()
            .expect("groups lock")
            .coordinator
            .committed(group, tp)
            .cloned()
    }

    /// Every committed offset: (group, partition, offset).
    pub fn committed_offsets(&self) -> Vec<(String, TopicPartition, u64)> {
        self.state
            .lock()
            .expect("groups lock")
            .coordinator
            .all_committed()
            .map(|(group, tp, committed)| (group.to_string(), tp.clone(), committed.offset))
            .collect()
    }

    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        self.state
            .lock()
            .expect("groups lock")
            .coordinator
            .describe(group)
    }

    pub fn list(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("groups lock")
            .coordinator
            .groups()
            .map(String::from)
            .collect()
    }

    /// Advances time: session timeouts and rebalance deadlines.
    pub fn tick(&self) {
        let mut state = self.state.lock().expect("groups lock");
        self.drive(&mut state, Input::Tick);
    }

    /// Ticks every `every` until shutdown.
    pub async fn run_ticker(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(),
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}
