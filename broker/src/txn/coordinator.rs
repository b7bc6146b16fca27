//! The transaction coordinator: one per broker, for every transactional id.
//!
//! A transaction goes Empty -> Ongoing (AddPartitionsToTxn, AddOffsetsToTxn) -> PrepareCommit or
//! PrepareAbort (EndTxn, a timeout, or a new producer with the same id) -> CompleteCommit or
//! CompleteAbort. Each change is a record in `__transaction_state`, fsynced before the client
//! hears of it. Completing means writing a marker (a control batch) into every partition of the
//! transaction and, for a commit, making its offsets the group's committed offsets; only then is
//! the Complete state recorded. A Prepare state found at start is completed again (markers may
//! be written twice; a second marker of a closed transaction changes nothing), so a `kill -9` at
//! any point leaves a transaction whole: after PrepareCommit is durable, it commits.
//!
//! Fencing is by epoch: InitProducerId with a transactional id bumps the producer's epoch, and
//! every request (and every transactional batch, see [`super::partition`]) with an older one is
//! refused.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::partition::{self, marker_batch, PartitionTxns};
use super::store::TxnStore;
use crate::group::{CommittedOffset, Groups, TopicPartition};
use crate::log::now_ms;
use crate::service::ServiceError;
use crate::topics::{Partition, TopicError, Topics};

/// Limits of the transaction coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnConfig {
    /// The longest transaction timeout a producer may ask for (Kafka's
    /// `transaction.max.timeout.ms`). Default 900,000 (15 minutes).
    pub transaction_timeout_ms_max: u64,
    /// Transactional ids the coordinator keeps at most; a new one past this is refused.
    /// Default 10,000.
    pub transactional_ids_max: usize,
    /// Partitions (and, separately, offsets to commit) one transaction may hold. Default 1,000.
    pub partitions_per_transaction_max: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            transaction_timeout_ms_max: 900_000,
            transactional_ids_max: 10_000,
            partitions_per_transaction_max: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

/// An offset a transaction commits for a group when it commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOffset {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

/// Everything the coordinator knows of one transactional id; stored whole on each change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: u64,
    pub state: TxnState,
    /// When the current transaction began (ms since the epoch), for its timeout.
    pub started_ms: i64,
    pub partitions: BTreeSet<TopicPartition>,
    pub groups: BTreeSet<String>,
    pub offsets: Vec<PendingOffset>,
}

/// Why a transactional request is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    #[error("a newer producer with this transactional id fenced this one")]
    ProducerFenced,
    #[error("the producer id is not the one of this transactional id")]
    InvalidProducerIdMapping,
    #[error("the transaction is {0:?}: this request is not valid now")]
    InvalidTxnState(TxnState),
    #[error("the transaction is completing; retry")]
    ConcurrentTransactions,
    #[error("transaction timeout {0} ms is outside 1..={1} ms")]
    InvalidTransactionTimeout(i64, u64),
    #[error("{limit} is {max}: refused")]
    LimitReached { limit: &'static str, max: usize },
    #[error(transparent)]
    Storage(#[from] ServiceError),
}

/// Producer ids are unique across restarts without being stored: each run starts at its
/// start time in milliseconds shifted left by 16 bits, so two runs would overlap only if one
/// handed out more than 65,536 ids per millisecond it ran.
pub fn next_producer_id() -> i64 {
    static NEXT: AtomicI64 = AtomicI64::new(-1);
    let _ = NEXT.compare_exchange(-1, now_ms() << 16, Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug, Default)]
struct State {
    txns: HashMap<String, TxnMeta>,
    /// Ids whose Prepare state some task is completing right now.
    completing: HashSet<String>,
}

#[derive(Debug)]
pub struct Transactions {
    topics: Arc<Topics>,
    groups: Arc<Groups>,
    store: TxnStore,
    config: TxnConfig,
    state: Mutex<State>,
}

/// A fault-injection point for the crash tests: in debug builds, `STRAND_TXN_CRASH=<point>`
/// aborts the process there (release builds ignore it).
fn crash_point(point: &str) {
    if cfg!(debug_assertions) && std::env::var("STRAND_TXN_CRASH").is_ok_and(|p| p == point) {
        tracing::error!(point, "STRAND_TXN_CRASH: aborting the process on purpose");
        std::process::abort();
    }
}

impl Transactions {
    /// Opens `__transaction_state`, rebuilds the transaction index of every partition that
    /// ever took part in a transaction, lets Ongoing transactions continue and aborts what a
    /// partition holds of transactions the coordinator does not know (their state never became
    /// durable). Prepare states are completed by [`Transactions::run`].
    pub fn open(
        topics: Arc<Topics>,
        groups: Arc<Groups>,
        config: TxnConfig,
    ) -> Result<Transactions, TopicError> {
        let (store, txns) = TxnStore::open(&topics)?;
        let mut n_rebuilt = 0;
        for topic in topics.list() {
            for p in &topic.partitions {
                if partition::is_flagged(p.reader().dir()) {
                    p.txns.restore(PartitionTxns::rebuild(p.reader())?);
                    n_rebuilt += 1;
                }
            }
        }
        let coordinator = Transactions {
            topics,
            groups,
            store,
            config,
            state: Mutex::new(State {
                txns,
                completing: HashSet::new(),
            }),
        };
        coordinator.resume_open_transactions()?;
        let state = coordinator.lock();
        tracing::info!(
            transactional_ids = state.txns.len(),
            partitions_rebuilt = n_rebuilt,
            to_complete = state
                .txns
                .values()
                .filter(|m| matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort))
                .count(),
            "restored transaction state"
        );
        drop(state);
        Ok(coordinator)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("transactions lock")
    }

    fn partition(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.topics
            .get(&tp.0)
            .and_then(|t| t.partitions.get(tp.1 as usize).cloned())
    }

    /// At start: the partitions of Ongoing transactions accept their producers' batches again;
    /// open transactions of producers the coordinator has no live transaction for are aborted
    /// with a marker, so they cannot hold the last stable offset back forever.
    fn resume_open_transactions(&self) -> Result<(), TopicError> {
        let state = self.lock();
        let mut live: HashMap<TopicPartition, Vec<i64>> = HashMap::new();
        for meta in state.txns.values() {
            if meta.state == TxnState::Empty
                || matches!(
                    meta.state,
                    TxnState::CompleteCommit | TxnState::CompleteAbort
                )
            {
                continue;
            }
            for tp in &meta.partitions {
                live.entry(tp.clone()).or_default().push(meta.producer_id);
                if meta.state == TxnState::Ongoing {
                    if let Some(p) = self.partition(tp) {
                        p.txns.lock().begin(meta.producer_id, meta.epoch);
                    }
                }
            }
        }
        drop(state);
        for topic in self.topics.list() {
            for p in &topic.partitions {
                let tp = (topic.name.clone(), p.index);
                let orphans: Vec<(i64, i16)> = p
                    .txns
                    .lock()
                    .open_with_data()
                    .into_iter()
                    .filter(|(id, _)| !live.get(&tp).is_some_and(|ids| ids.contains(id)))
                    .collect();
                for (producer_id, epoch) in orphans {
                    tracing::warn!(
                        topic = %tp.0,
                        partition = tp.1,
                        producer_id,
                        "aborting a transaction whose state was never recorded"
                    );
                    write_marker(p, producer_id, epoch, false)?;
                    p.writer().flush()?;
                }
            }
        }
        Ok(())
    }

    /// Appends `meta` as the state of `id` (under the lock) and returns the record's offset.
    fn record(&self, state: &mut State, id: &str, meta: TxnMeta) -> Result<u64, TxnError> {
        let offset = self.store.append(id, &meta)?;
        state.txns.insert(id.to_string(), meta);
        Ok(offset)
    }

    /// InitProducerId with a transactional id: a new producer id, or the id's producer with
    /// its epoch bumped (fencing the previous instance); an open transaction is aborted first.
    pub async fn init_producer(
        &self,
        id: &str,
        timeout_ms: i64,
        producer: Option<(i64, i16)>,
    ) -> Result<(i64, i16), TxnError> {
        let max = self.config.transaction_timeout_ms_max;
        if timeout_ms <= 0 || timeout_ms as u64 > max {
            return Err(TxnError::InvalidTransactionTimeout(timeout_ms, max));
        }
        // At most two rounds: an Ongoing transaction is aborted, then the epoch bumped.
        for _ in 0..2 {
            // The record to wait for, and the answer (`None`: an abort to complete first).
            let (offset, answer) = self.init_step(id, timeout_ms as u64, producer)?;
            if let Err(e) = self.store.wait_durable(offset).await {
                if answer.is_none() {
                    // Not known to be durable: the ticker completes the abort (or start does).
                    self.lock().completing.remove(id);
                }
                return Err(e.into());
            }
            match answer {
                Some(answer) => return Ok(answer),
                None => {
                    tracing::info!(
                        transactional_id = id,
                        "a new producer instance aborts the open transaction"
                    );
                    self.complete(id).await?;
                }
            }
        }
        Err(TxnError::ConcurrentTransactions)
    }

    /// The state change of one InitProducerId round, recorded; see [`Transactions::init_producer`].
    fn init_step(
        &self,
        id: &str,
        timeout_ms: u64,
        producer: Option<(i64, i16)>,
    ) -> Result<(u64, Option<(i64, i16)>), TxnError> {
        let mut state = self.lock();
        let Some(meta) = state.txns.get(id).cloned() else {
            if state.txns.len() >= self.config.transactional_ids_max {
                return Err(TxnError::LimitReached {
                    limit: "transactional_ids_max",
                    max: self.config.transactional_ids_max,
                });
            }
            let meta = TxnMeta {
                producer_id: next_producer_id(),
                epoch: 0,
                timeout_ms,
                state: TxnState::Empty,
                started_ms: now_ms(),
                partitions: BTreeSet::new(),
                groups: BTreeSet::new(),
                offsets: Vec::new(),
            };
            let answer = (meta.producer_id, meta.epoch);
            return Ok((self.record(&mut state, id, meta)?, Some(answer)));
        };
        // KIP-360: a producer that names its id and epoch must be the current one.
        if let Some((producer_id, epoch)) = producer {
            if producer_id >= 0 && (producer_id, epoch) != (meta.producer_id, meta.epoch) {
                return Err(TxnError::ProducerFenced);
            }
        }
        if state.completing.contains(id) {
            return Err(TxnError::ConcurrentTransactions);
        }
        let mut next = meta.clone();
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(TxnError::ConcurrentTransactions)
            }
            TxnState::Ongoing => {
                next.epoch = bump(meta.epoch);
                next.state = TxnState::PrepareAbort;
                let offset = self.record(&mut state, id, next)?;
                state.completing.insert(id.to_string());
                Ok((offset, None))
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                if meta.epoch >= i16::MAX - 1 {
                    next.producer_id = next_producer_id();
                    next.epoch = 0;
                } else {
                    next.epoch = meta.epoch + 1;
                }
                next.state = TxnState::Empty;
                next.timeout_ms = timeout_ms;
                next.partitions.clear();
                next.groups.clear();
                next.offsets.clear();
                let answer = (next.producer_id, next.epoch);
                Ok((self.record(&mut state, id, next)?, Some(answer)))
            }
        }
    }

    /// Checks the producer and the state; returns the transaction as it is once Ongoing (a
    /// new one starts now, empty). Changes nothing: the caller records the result.
    fn ongoing(
        &self,
        state: &State,
        id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> Result<TxnMeta, TxnError> {
        let meta = state
            .txns
            .get(id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        check_producer(meta, producer_id, epoch)?;
        let mut next = meta.clone();
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return Err(TxnError::ConcurrentTransactions)
            }
            _ if state.completing.contains(id) => return Err(TxnError::ConcurrentTransactions),
            TxnState::Ongoing => {}
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                next.state = TxnState::Ongoing;
                next.started_ms = now_ms();
                next.partitions.clear();
                next.groups.clear();
                next.offsets.clear();
            }
        }
        Ok(next)
    }

    /// AddPartitionsToTxn: the partitions (which exist) join the transaction; each may then
    /// take the producer's transactional batches.
    pub async fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<TopicPartition>,
    ) -> Result<(), TxnError> {
        let (offset, added) = {
            let mut state = self.lock();
            let mut next = self.ongoing(&state, id, producer_id, epoch)?;
            let added: Vec<TopicPartition> = partitions
                .into_iter()
                .filter(|tp| !next.partitions.contains(tp))
                .collect();
            if next.partitions.len() + added.len() > self.config.partitions_per_transaction_max {
                return Err(TxnError::LimitReached {
                    limit: "partitions_per_transaction_max",
                    max: self.config.partitions_per_transaction_max,
                });
            }
            next.partitions.extend(added.iter().cloned());
            if state.txns.get(id) == Some(&next) {
                return Ok(());
            }
            (self.record(&mut state, id, next)?, added)
        };
        let targets: Vec<Arc<Partition>> =
            added.iter().filter_map(|tp| self.partition(tp)).collect();
        let dirs: Vec<_> = targets
            .iter()
            .map(|p| p.reader().dir().to_path_buf())
            .collect();
        tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| partition::flag(d)))
            .await
            .map_err(|e| ServiceError::Internal(format!("flagging partitions failed: {e}")))?
            .map_err(|e| ServiceError::Internal(format!("flagging a partition failed: {e}")))?;
        self.store.wait_durable(offset).await?;
        // Opened on the partitions under the coordinator's lock, and only while the transaction
        // is still this producer's and Ongoing: once an abort or commit has begun, its markers
        // may be written already, and a partition opened after them would never be closed.
        let state = self.lock();
        match state.txns.get(id) {
            Some(meta) if meta.producer_id != producer_id || meta.epoch != epoch => {
                return Err(TxnError::ProducerFenced)
            }
            Some(meta) if meta.state == TxnState::Ongoing && !state.completing.contains(id) => {}
            Some(meta) => return Err(TxnError::InvalidTxnState(meta.state)),
            None => return Err(TxnError::InvalidProducerIdMapping),
        }
        for p in targets {
            p.txns.lock().begin(producer_id, epoch);
        }
        drop(state);
        Ok(())
    }

    /// AddOffsetsToTxn: the group's offsets may be committed in the transaction.
    pub async fn add_offsets(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> Result<(), TxnError> {
        let offset = {
            let mut state = self.lock();
            let mut next = self.ongoing(&state, id, producer_id, epoch)?;
            next.groups.insert(group.to_string());
            if state.txns.get(id) == Some(&next) {
                return Ok(());
            }
            self.record(&mut state, id, next)?
        };
        self.store.wait_durable(offset).await?;
        Ok(())
    }

    /// TxnOffsetCommit: offsets the group gets as committed when the transaction commits.
    pub async fn commit_offsets(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    ) -> Result<(), TxnError> {
        let offset = {
            let mut state = self.lock();
            let busy = state.completing.contains(id);
            let meta = state
                .txns
                .get_mut(id)
                .ok_or(TxnError::InvalidProducerIdMapping)?;
            check_producer(meta, producer_id, epoch)?;
            if busy || matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
                return Err(TxnError::ConcurrentTransactions);
            }
            if meta.state != TxnState::Ongoing || !meta.groups.contains(group) {
                return Err(TxnError::InvalidTxnState(meta.state));
            }
            let mut next = meta.clone();
            for ((topic, partition), committed) in offsets {
                next.offsets.retain(|o| {
                    !(o.group == group && o.topic == topic && o.partition == partition)
                });
                next.offsets.push(PendingOffset {
                    group: group.to_string(),
                    topic,
                    partition,
                    offset: committed.offset,
                    metadata: committed.metadata,
                });
            }
            if next.offsets.len() > self.config.partitions_per_transaction_max {
                return Err(TxnError::LimitReached {
                    limit: "partitions_per_transaction_max",
                    max: self.config.partitions_per_transaction_max,
                });
            }
            self.record(&mut state, id, next)?
        };
        self.store.wait_durable(offset).await?;
        Ok(())
    }

    /// EndTxn: commits or aborts the Ongoing transaction; answers once it is complete.
    pub async fn end(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), TxnError> {
        if commit {
            crash_point("before-prepare-commit");
        }
        let offset = {
            let mut state = self.lock();
            let busy = state.completing.contains(id);
            let meta = state
                .txns
                .get(id)
                .ok_or(TxnError::InvalidProducerIdMapping)?;
            check_producer(meta, producer_id, epoch)?;
            let (prepare, complete) = if commit {
                (TxnState::PrepareCommit, TxnState::CompleteCommit)
            } else {
                (TxnState::PrepareAbort, TxnState::CompleteAbort)
            };
            match meta.state {
                TxnState::Ongoing if !busy => {}
                s if s == prepare || busy => return Err(TxnError::ConcurrentTransactions),
                // A retry of an EndTxn that completed.
                s if s == complete => return Ok(()),
                s => return Err(TxnError::InvalidTxnState(s)),
            }
            let mut next = meta.clone();
            next.state = prepare;
            state.completing.insert(id.to_string());
            match self.record(&mut state, id, next) {
                Ok(offset) => offset,
                Err(e) => {
                    state.completing.remove(id);
                    return Err(e);
                }
            }
        };
        if let Err(e) = self.store.wait_durable(offset).await {
            // Not known to be durable: the ticker completes it (or start does).
            self.lock().completing.remove(id);
            return Err(e.into());
        }
        if commit {
            crash_point("after-prepare-commit");
        }
        self.complete(id).await
    }

    /// Writes the markers of `id`'s Prepare state, applies its offsets on commit, and records
    /// the Complete state. The caller has claimed `id` in `completing`; this releases it.
    async fn complete(&self, id: &str) -> Result<(), TxnError> {
        let result = self.complete_claimed(id).await;
        self.lock().completing.remove(id);
        if let Err(e) = &result {
            tracing::warn!(transactional_id = id, error = %e, "completing a transaction failed; retrying later");
        }
        result
    }

    async fn complete_claimed(&self, id: &str) -> Result<(), TxnError> {
        let Some(meta) = self.lock().txns.get(id).cloned() else {
            return Ok(());
        };
        let commit = match meta.state {
            TxnState::PrepareCommit => true,
            TxnState::PrepareAbort => false,
            _ => return Ok(()),
        };
        let mut written = Vec::new();
        for tp in &meta.partitions {
            let Some(p) = self.partition(tp) else {
                // Deleted since: nothing to mark.
                continue;
            };
            let offset = write_marker(&p, meta.producer_id, meta.epoch, commit)
                .map_err(ServiceError::from)?;
            written.push((p, offset));
        }
        for (p, offset) in written {
            p.reader()
                .wait_durable(offset + 1)
                .await
                .map_err(ServiceError::from)?;
        }
        if commit {
            let mut by_group: HashMap<&str, Vec<(TopicPartition, CommittedOffset)>> =
                HashMap::new();
            for o in &meta.offsets {
                by_group.entry(&o.group).or_default().push((
                    (o.topic.clone(), o.partition),
                    CommittedOffset {
                        offset: o.offset,
                        metadata: o.metadata.clone(),
                    },
                ));
            }
            for (group, offsets) in by_group {
                self.groups.commit_transactional(group, offsets).await?;
            }
        }
        let offset = {
            let mut state = self.lock();
            let mut next = meta;
            next.state = if commit {
                TxnState::CompleteCommit
            } else {
                TxnState::CompleteAbort
            };
            next.partitions.clear();
            next.groups.clear();
            next.offsets.clear();
            self.record(&mut state, id, next)?
        };
        self.store.wait_durable(offset).await?;
        tracing::debug!(transactional_id = id, commit, "transaction complete");
        Ok(())
    }

    /// One round of the coordinator's own work: completes Prepare states nobody is completing
    /// (found at start, or left by a failure) and aborts transactions past their timeout,
    /// bumping the epoch so the producer is fenced.
    pub async fn tick(&self) {
        let now = now_ms();
        let mut to_complete = Vec::new();
        let mut to_wait = Vec::new();
        {
            let mut state = self.lock();
            let ids: Vec<String> = state
                .txns
                .iter()
                .filter(|(id, m)| {
                    !state.completing.contains(*id)
                        && (matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort)
                            || (m.state == TxnState::Ongoing
                                && now.saturating_sub(m.started_ms) > m.timeout_ms as i64))
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                let meta = state.txns[&id].clone();
                if meta.state == TxnState::Ongoing {
                    tracing::info!(transactional_id = %id, timeout_ms = meta.timeout_ms, "aborting a transaction past its timeout");
                    let mut next = meta;
                    next.epoch = bump(next.epoch);
                    next.state = TxnState::PrepareAbort;
                    match self.record(&mut state, &id, next) {
                        Ok(offset) => to_wait.push(offset),
                        Err(e) => {
                            tracing::warn!(error = %e, "recording a timed-out transaction's abort failed");
                            continue;
                        }
                    }
                }
                state.completing.insert(id.clone());
                to_complete.push(id);
            }
        }
        if let Some(&offset) = to_wait.iter().max() {
            if let Err(e) = self.store.wait_durable(offset).await {
                tracing::warn!(error = %e, "transaction state not durable; retrying later");
                let mut state = self.lock();
                for id in &to_complete {
                    state.completing.remove(id);
                }
                return;
            }
        }
        for id in to_complete {
            let _ = self.complete(&id).await;
        }
    }

    /// Ticks every `every` until shutdown (the first round at once: it completes what a crash
    /// left prepared).
    pub async fn run(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick().await,
                _ = crate::listener::stopped(&mut shutdown) => return,
            }
        }
    }
}

/// The next epoch after `epoch` (a fenced producer's epoch never comes back).
fn bump(epoch: i16) -> i16 {
    epoch.saturating_add(1)
}

fn check_producer(meta: &TxnMeta, producer_id: i64, epoch: i16) -> Result<(), TxnError> {
    if producer_id != meta.producer_id {
        return Err(TxnError::InvalidProducerIdMapping);
    }
    if epoch != meta.epoch {
        return Err(TxnError::ProducerFenced);
    }
    Ok(())
}

/// Appends a COMMIT or ABORT marker of the producer to `p` and closes its transaction in the
/// partition's index in the same step (under the writer lock), then wakes `read_committed`
/// fetches. Returns the marker's offset.
fn write_marker(
    p: &Partition,
    producer_id: i64,
    epoch: i16,
    commit: bool,
) -> Result<u64, crate::log::LogError> {
    let mut batch = marker_batch(producer_id, epoch, commit, now_ms());
    let offset = {
        let mut log = p.writer();
        let info = log.append(&mut batch)?;
        let mut txns = p.txns.lock();
        txns.complete(producer_id, info.base_offset, commit);
        txns.forget_before(log.log_start_offset());
        info.base_offset
    };
    p.txns.notify();
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::CoordinatorConfig;
    use crate::log::LogConfig;
    use crate::topics::TopicConfig;

    fn open(dir: &std::path::Path) -> (Arc<Topics>, Transactions) {
        let (topics, _) = Topics::open(dir, LogConfig::default()).unwrap();
        let topics = Arc::new(topics);
        let groups = Arc::new(Groups::open(topics.clone(), CoordinatorConfig::default()).unwrap());
        let txns = Transactions::open(topics.clone(), groups, TxnConfig::default()).unwrap();
        (topics, txns)
    }

    #[tokio::test]
    async fn epochs_fence_states_refuse_and_state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (topics, txns) = open(dir.path());
        topics
            .create(
                "out",
                TopicConfig {
                    partitions: 2,
                    ..TopicConfig::default()
                },
            )
            .unwrap();
        assert!(matches!(
            txns.init_producer("t", 0, None).await,
            Err(TxnError::InvalidTransactionTimeout(0, _))
        ));
        let (id, epoch) = txns.init_producer("t", 60_000, None).await.unwrap();
        assert!(matches!(
            txns.end("t", id, epoch, true).await,
            Err(TxnError::InvalidTxnState(TxnState::Empty))
        ));
        txns.add_partitions("t", id, epoch, vec![("out".into(), 1)])
            .await
            .unwrap();
        assert!(matches!(
            txns.add_partitions("t", id + 1, epoch, vec![]).await,
            Err(TxnError::InvalidProducerIdMapping)
        ));
        // A new instance aborts the open transaction and fences the old epoch.
        let (id2, epoch2) = txns.init_producer("t", 60_000, None).await.unwrap();
        assert_eq!(id2, id);
        assert!(epoch2 > epoch);
        assert!(matches!(
            txns.end("t", id, epoch, true).await,
            Err(TxnError::ProducerFenced)
        ));
        let p = topics.get("out").unwrap().partitions[1].clone();
        assert!(p.txns.lock().check_append(id, epoch).is_err());
        txns.add_partitions("t", id, epoch2, vec![("out".into(), 0)])
            .await
            .unwrap();
        txns.add_offsets("t", id, epoch2, "g").await.unwrap();
        txns.commit_offsets(
            "t",
            id,
            epoch2,
            "g",
            vec![(
                ("out".into(), 0),
                CommittedOffset {
                    offset: 7,
                    metadata: String::new(),
                },
            )],
        )
        .await
        .unwrap();
        txns.end("t", id, epoch2, true).await.unwrap();
        // A retry of the same EndTxn is answered as done; the other outcome is refused.
        txns.end("t", id, epoch2, true).await.unwrap();
        assert!(matches!(
            txns.end("t", id, epoch2, false).await,
            Err(TxnError::InvalidTxnState(TxnState::CompleteCommit))
        ));
        assert_eq!(
            txns.groups
                .committed("g", &("out".into(), 0))
                .map(|c| c.offset),
            Some(7),
            "the transaction's offsets are the group's once it committed"
        );
        drop(txns);
        topics.close().unwrap();
        drop(topics);
        let (_topics, txns) = open(dir.path());
        let meta = txns.lock().txns.get("t").cloned().unwrap();
        assert_eq!(
            (meta.producer_id, meta.epoch, meta.state),
            (id, epoch2, TxnState::CompleteCommit)
        );
        assert_eq!(
            txns.groups
                .committed("g", &("out".into(), 0))
                .map(|c| c.offset),
            Some(7)
        );
    }

    #[tokio::test]
    async fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let (topics, txns) = open(dir.path());
        topics
            .create(
                "out",
                TopicConfig {
                    partitions: 1,
                    ..TopicConfig::default()
                },
            )
            .unwrap();
        let (id, epoch) = txns.init_producer("slow", 1, None).await.unwrap();
        txns.add_partitions("slow", id, epoch, vec![("out".into(), 0)])
            .await
            .unwrap();
        let p = topics.get("out").unwrap().partitions[0].clone();
        assert!(p.txns.lock().appending(id, 0));
        assert_eq!(p.txns.lock().first_unstable(), Some(0));
        std::thread::sleep(Duration::from_millis(5));
        txns.tick().await;
        let meta = txns.lock().txns.get("slow").cloned().unwrap();
        assert_eq!(meta.state, TxnState::CompleteAbort);
        assert!(meta.epoch > epoch);
        assert_eq!(
            p.txns.lock().first_unstable(),
            None,
            "the abort marker closed it"
        );
        assert!(matches!(
            txns.end("slow", id, epoch, true).await,
            Err(TxnError::ProducerFenced)
        ));
    }
}
