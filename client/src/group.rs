//! `GroupConsumer`: consumes topics as a member of a consumer group. The broker assigns the
//! partitions; this member heartbeats, rejoins when the group rebalances, starts each assigned
//! partition at the group's committed offset (or the reset policy), and commits positions, so
//! delivery is at least once: a record is committed only after a later `next()` call, by which
//! time the application has handled it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::Client;
use crate::consumer::{Consumer, ConsumerConfig, Record};
use crate::error::ClientError;
use crate::native::messages::OffsetEntry;
use crate::native::{ErrorCode, OffsetQuery, Request, ResponseBody};

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
    /// Fail instead of guessing.
    Error,
}

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group: String,
    pub topics: Vec<String>,
    pub client_id: String,
    /// The broker removes a member silent for this long. Default 10 s.
    pub session_timeout: Duration,
    /// How long a rebalance may wait for members to rejoin. Default 30 s.
    pub rebalance_timeout: Duration,
    /// Default 1 s (well inside the session timeout).
    pub heartbeat_interval: Duration,
    /// range, round-robin or cooperative-sticky. Default cooperative-sticky.
    pub assignor: String,
    /// Commit positions this often from `next()`; `None` for manual commits only. Default 5 s.
    pub auto_commit: Option<Duration>,
    pub reset: OffsetReset,
    pub fetch: ConsumerConfig,
}

impl GroupConfig {
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> GroupConfig {
        GroupConfig {
            group: group.into(),
            topics,
            client_id: "strand-client".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            assignor: "cooperative-sticky".into(),
            auto_commit: Some(Duration::from_secs(5)),
            reset: OffsetReset::Earliest,
            fetch: ConsumerConfig::default(),
        }
    }
}

/// What a rebalance changed for this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebalance {
    pub generation: u32,
    pub assigned: Vec<(String, u32)>,
    pub revoked: Vec<(String, u32)>,
}

type Listener = Box<dyn FnMut(&Rebalance) + Send>;

pub struct GroupConsumer {
    client: Client,
    config: GroupConfig,
    member_id: String,
    generation: u32,
    assignment: Vec<(String, u32)>,
    consumers: Vec<Consumer>,
    next_heartbeat: Instant,
    next_commit: Option<Instant>,
    listener: Option<Listener>,
    /// Positions last committed, so unchanged ones are not committed again.
    committed: BTreeMap<(String, u32), u64>,
    /// A rejoin under way; consuming goes on meanwhile (cooperative rebalancing).
    pending_join: Option<JoinFuture>,
}

type JoinFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ResponseBody, ClientError>> + Send>>;

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.config.group)
            .field("member_id", &self.member_id)
            .field("generation", &self.generation)
            .field("assignment", &self.assignment)
            .finish()
    }
}

impl GroupConsumer {
    /// Joins the group and starts consuming the partitions it assigns.
    pub async fn join(client: Client, config: GroupConfig) -> Result<GroupConsumer, ClientError> {
        let mut consumer = GroupConsumer {
            client,
            next_commit: config.auto_commit.map(|d| Instant::now() + d),
            config,
            member_id: String::new(),
            generation: 0,
            assignment: Vec::new(),
            consumers: Vec::new(),
            next_heartbeat: Instant::now(),
            listener: None,
            committed: BTreeMap::new(),
            pending_join: None,
        };
        consumer.rejoin().await?;
        Ok(consumer)
    }

    /// Called after every rebalance with what was assigned and revoked.
    pub fn on_rebalance(&mut self, listener: impl FnMut(&Rebalance) + Send + 'static) {
        self.listener = Some(Box::new(listener));
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn assignment(&self) -> &[(String, u32)] {
        &self.assignment
    }

    fn join_request(&self) -> Request {
        Request::JoinGroup {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            client_id: self.config.client_id.clone(),
            topics: self.config.topics.clone(),
            session_timeout_ms: self.config.session_timeout.as_millis() as u32,
            rebalance_timeout_ms: self.config.rebalance_timeout.as_millis() as u32,
            assignor: self.config.assignor.clone(),
        }
    }

    /// Joins and waits for the assignment (used when nothing is being consumed yet).
    async fn rejoin(&mut self) -> Result<(), ClientError> {
        let answer = self.client.request(self.join_request()).await;
        self.apply_join(answer).await
    }

    /// Sends a join in the background; the member keeps consuming what it has meanwhile.
    fn start_join(&mut self) {
        if self.pending_join.is_some() {
            return;
        }
        let client = self.client.clone();
        let request = self.join_request();
        self.pending_join = Some(Box::pin(async move { client.request(request).await }));
    }

    /// Takes a join's answer: keeps consuming kept partitions from where they are, starts newly
    /// assigned ones at the group's committed offsets, and drops revoked ones.
    async fn apply_join(
        &mut self,
        answer: Result<ResponseBody, ClientError>,
    ) -> Result<(), ClientError> {
        let answer = match answer {
            // Our membership expired: join as a new member.
            Err(e) if e.code() == Some(ErrorCode::UnknownMember) && !self.member_id.is_empty() => {
                self.member_id.clear();
                self.client.request(self.join_request()).await?
            }
            other => other?,
        };
        let ResponseBody::Joined {
            member_id,
            generation,
            assignment,
        } = answer
        else {
            return Err(ClientError::Invalid("unexpected answer to a join".into()));
        };
        let revoked: Vec<_> = self
            .assignment
            .iter()
            .filter(|tp| !assignment.contains(tp))
            .cloned()
            .collect();
        let assigned: Vec<_> = assignment
            .iter()
            .filter(|tp| !self.assignment.contains(tp))
            .cloned()
            .collect();
        // Where the kept partitions are now.
        let mut current: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for consumer in &self.consumers {
            for &(partition, position) in consumer.positions() {
                current.insert((consumer.topic().to_string(), partition), position);
            }
        }
        self.member_id = member_id;
        self.generation = generation;
        self.assignment = assignment;
        self.next_heartbeat = Instant::now() + self.config.heartbeat_interval;
        self.committed.retain(|tp, _| self.assignment.contains(tp));
        let starts = starting_offsets(
            &self.client,
            &self.config.group,
            self.config.reset,
            &assigned,
        )
        .await?;
        let mut by_topic: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
        for tp in &self.assignment {
            let offset = current
                .get(tp)
                .or_else(|| starts.get(tp))
                .copied()
                .unwrap_or(0);
            self.committed.entry(tp.clone()).or_insert(offset);
            by_topic
                .entry(tp.0.clone())
                .or_default()
                .push((tp.1, offset));
        }
        self.consumers.clear();
        for (topic, positions) in by_topic {
            let consumer = Consumer::at_positions(
                self.client.clone(),
                &topic,
                positions,
                self.config.fetch.clone(),
            )
            .await?;
            self.consumers.push(consumer);
        }
        let rebalance = Rebalance {
            generation,
            assigned,
            revoked,
        };
        if let Some(listener) = self.listener.as_mut() {
            listener(&rebalance);
        }
        Ok(())
    }

    /// Commits the position (next offset to read) of every assigned partition that moved.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let mut offsets = Vec::new();
        for consumer in &self.consumers {
            for &(partition, position) in consumer.positions() {
                let tp = (consumer.topic().to_string(), partition);
                if self.committed.get(&tp) != Some(&position) {
                    offsets.push(OffsetEntry {
                        topic: tp.0,
                        partition,
                        offset: position,
                        metadata: String::new(),
                    });
                }
            }
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let request = Request::OffsetCommit {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            generation: self.generation,
            offsets: offsets.clone(),
        };
        self.client.request(request).await?;
        for o in offsets {
            self.committed.insert((o.topic, o.partition), o.offset);
        }
        Ok(())
    }

    /// Heartbeats when due; on a rebalance, commits what it consumed and starts rejoining.
    async fn keep_membership(&mut self) -> Result<(), ClientError> {
        if Instant::now() < self.next_heartbeat || self.pending_join.is_some() {
            return Ok(());
        }
        self.next_heartbeat = Instant::now() + self.config.heartbeat_interval;
        let heartbeat = Request::Heartbeat {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            generation: self.generation,
        };
        match self.client.request(heartbeat).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(ErrorCode::RebalanceInProgress) => {
                // Still a member of the current generation: commit before partitions move.
                if self.config.auto_commit.is_some() {
                    self.commit_quietly().await?;
                }
                self.start_join();
                Ok(())
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::UnknownMember | ErrorCode::IllegalGeneration)
                ) =>
            {
                // Fenced: what was consumed since the last commit will be delivered again.
                self.start_join();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Commits, treating a fenced commit (the group moved on) as nothing to do: those records
    /// will be delivered again, which at-least-once allows.
    async fn commit_quietly(&mut self) -> Result<(), ClientError> {
        match self.commit().await {
            Err(e)
                if matches!(
                    e.code(),
                    Some(
                        ErrorCode::IllegalGeneration
                            | ErrorCode::UnknownMember
                            | ErrorCode::RebalanceInProgress
                    )
                ) =>
            {
                tracing::debug!(error = %e, "commit fenced by a rebalance");
                Ok(())
            }
            other => other,
        }
    }

    /// The next record from any assigned partition. Everything returned by earlier calls counts
    /// as handled and may be committed now.
    pub async fn next(&mut self) -> Result<Record, ClientError> {
        loop {
            if let Some(due) = self.next_commit {
                if Instant::now() >= due {
                    self.commit_quietly().await?;
                    self.next_commit = self.config.auto_commit.map(|d| Instant::now() + d);
                }
            }
            self.keep_membership().await?;
            let until = self.next_heartbeat;
            let pending = &mut self.pending_join;
            let consumers = &mut self.consumers;
            let has_consumers = !consumers.is_empty();
            let has_pending = pending.is_some();
            let step = tokio::select! {
                answer = async { pending.as_mut().expect("checked").await }, if has_pending => Step::Joined(answer),
                (record, _, _) = futures::future::select_all(consumers.iter_mut().map(|c| Box::pin(c.next()))), if has_consumers => {
                    Step::Record(record)
                }
                _ = tokio::time::sleep_until(until) => Step::Tick,
            };
            match step {
                Step::Joined(answer) => {
                    self.pending_join = None;
                    self.apply_join(answer).await?;
                }
                Step::Record(record) => return record,
                Step::Tick => {}
            }
        }
    }

    /// Commits, then leaves the group so that its partitions move at once.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.commit().await?;
        self.client
            .request(Request::LeaveGroup {
                group: self.config.group.clone(),
                member_id: self.member_id.clone(),
            })
            .await?;
        Ok(())
    }
}

/// What woke `GroupConsumer::next`.
enum Step {
    Joined(Result<ResponseBody, ClientError>),
    Record(Result<Record, ClientError>),
    Tick,
}

/// The group's committed offset for each partition, or the reset policy's where none.
async fn starting_offsets(
    client: &Client,
    group: &str,
    reset: OffsetReset,
    partitions: &[(String, u32)],
) -> Result<BTreeMap<(String, u32), u64>, ClientError> {
    let mut starts = BTreeMap::new();
    if partitions.is_empty() {
        return Ok(starts);
    }
    let request = Request::OffsetFetch {
        group: group.to_string(),
        partitions: partitions.to_vec(),
    };
    let committed = match client.request(request).await? {
        ResponseBody::Committed(entries) => entries,
        other => {
            return Err(ClientError::Invalid(format!(
                "unexpected answer: {other:?}"
            )))
        }
    };
    let admin = client.admin();
    for ((topic, partition), entry) in partitions.iter().cloned().zip(committed) {
        let start = match entry {
            Some(entry) => entry.offset,
            None => {
                let query = match reset {
                    OffsetReset::Earliest => OffsetQuery::Earliest,
                    OffsetReset::Latest => OffsetQuery::Latest,
                    OffsetReset::Error => {
                        return Err(ClientError::Invalid(format!(
                            "group {} has no committed offset for {topic}/{partition}",
                            group
                        )))
                    }
                };
                admin
                    .list_offset(&topic, partition, query)
                    .await?
                    .unwrap_or(0)
            }
        };
        starts.insert((topic, partition), start);
    }
    Ok(starts)
}
