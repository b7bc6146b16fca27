//! Driving sagas: the orchestrator's state and every decision it makes, without IO.
//!
//! [`Core`] owns the sagas of the journal partitions this instance holds, the definitions, the
//! timers and the semantic locks. Each request, participant reply or timer becomes journal
//! entries grouped in [`Batch`]es, one journal partition each, which the caller appends in the
//! order given. Nothing a batch announces happens before the journal confirms it: participant
//! calls, outcome publications and API answers wait in the batch until [`Core::confirmed`]
//! releases them, and the API never reports a transition that is not durable.
//!
//! Fencing: an instance takes a partition over by appending an owner marker with a fresh epoch
//! (`Event::Owner`) and then reading the journal (see `recovery`); its entries carry that
//! epoch, and a replay counts an entry only under the marker of its own epoch, so the writes of
//! a stale owner (one that stalled past its session and came back) are ignored. The stale owner
//! itself learns it was fenced from the offsets the journal gives its appends: as the only
//! writer of the partition it knows the offset each append must get, and when one lands
//! elsewhere it asks ([`Confirmed::Check`]) whether another owner's marker came in between; if
//! so it drops the partition without acting on anything unconfirmed.
//!
//! The IO around it is `orchestrator` (tokio, the journal on a cluster, HTTP and broker
//! participants); the deterministic simulation (`sim`) runs this same code with simulated
//! time, journal, participants and crashes.
//!
//! By job: this file holds the state, definitions, timers, driving sagas and their locks;
//! `api` answers requests; `confirm` makes batches and releases what the journal confirmed
//! (and notices fencing); `ownership` takes partitions over, lets them go and checkpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::json;
use tokio::sync::oneshot;

use crate::api::{ApiError, ListQuery, Outcome, SagaPage, SagaSummary, StartRequest};
use crate::definition::{Definition, Participant};
use crate::engine::{Call, EngineError, Entry, Event, Input, Saga};
use crate::participants::Reply;
use crate::recovery::Recovered;

mod api;
mod archive;
mod confirm;
mod ownership;

pub use archive::Archived;
use confirm::Held;
pub use confirm::{Batch, Confirmed, Effects};
pub use ownership::CheckpointPlan;

pub type Respond<T> = oneshot::Sender<Result<T, ApiError>>;

/// An answer to send once the journal confirmed what it reports.
type Answer = Box<dyn FnOnce() + Send>;

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub partitions: u32,
    pub instance_id: String,
    /// Finished sagas kept in memory; older ones are dropped once their final state is in a
    /// snapshot.
    pub finished_in_memory_max: usize,
    /// The largest snapshot record the journal's cluster takes; a partition with a saga whose
    /// snapshot is larger keeps its checkpoint where it is (its journal stays the record).
    pub snapshot_bytes_max: usize,
    /// Finished sagas beyond memory whose snapshot offsets are kept, so `GET /sagas/{id}`
    /// still reads them (see `archive`); older ones are answered 404.
    pub finished_indexed_max: usize,
}

pub struct Core {
    config: CoreConfig,
    rng: fastrand::Rng,
    owner_of: Box<dyn Fn(u32) -> Option<String> + Send>,
    definitions: BTreeMap<String, Vec<Arc<Definition>>>,
    sagas: BTreeMap<String, Saga>,
    /// Idempotency key to saga id.
    by_key: HashMap<String, String>,
    timers: BTreeSet<(i64, String)>,
    wakeups: HashMap<String, i64>,
    /// Sagas changed since the last checkpoint.
    dirty: HashSet<String>,
    /// Finished sagas in the order they finished, for eviction.
    finished: VecDeque<String>,
    held: BTreeMap<u32, Held>,
    next_batch: u64,
    /// Lock key to the sagas under it, holder first, then waiters in start order.
    locks: HashMap<String, VecDeque<String>>,
    /// Locks released by sagas that just ended, to grant once their batch is out.
    pending_grants: Vec<(String, i64)>,
    /// Where evicted finished sagas' snapshots are.
    archive: archive::Archive,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("held", &self.held.keys().collect::<Vec<_>>())
            .field("sagas", &self.sagas.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// `owner_of` says which API address drives a partition this instance does not.
    pub fn new(
        config: CoreConfig,
        seed: u64,
        owner_of: Box<dyn Fn(u32) -> Option<String> + Send>,
    ) -> Core {
        let archive = archive::Archive::new(config.finished_indexed_max);
        Core {
            config,
            rng: fastrand::Rng::with_seed(seed),
            owner_of,
            definitions: BTreeMap::new(),
            sagas: BTreeMap::new(),
            by_key: HashMap::new(),
            timers: BTreeSet::new(),
            wakeups: HashMap::new(),
            dirty: HashSet::new(),
            finished: VecDeque::new(),
            held: BTreeMap::new(),
            next_batch: 0,
            locks: HashMap::new(),
            pending_grants: Vec::new(),
            archive,
        }
    }

    pub fn partition_of(&self, key: &str) -> u32 {
        strand_client::partitioner::partition_for_key(key.as_bytes(), self.config.partitions)
    }

    /// The journal partitions this instance drives.
    pub fn held(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    pub fn saga(&self, id: &str) -> Option<&Saga> {
        self.sagas.get(id)
    }

    pub fn sagas(&self) -> impl Iterator<Item = &Saga> {
        self.sagas.values()
    }

    // ---- definitions ----

    pub fn find_definition(&self, name: &str, version: Option<u32>) -> Option<Arc<Definition>> {
        let versions = self.definitions.get(name)?;
        match version {
            None => versions.last().cloned(),
            Some(v) => versions.iter().find(|d| d.version == v).cloned(),
        }
    }

    /// The newest version of every definition.
    pub fn latest_definitions(&self) -> Vec<Definition> {
        self.definitions
            .values()
            .filter_map(|v| v.last().map(|d| (**d).clone()))
            .collect()
    }

    /// The version a new definition of `name` gets.
    pub fn next_version(&self, name: &str) -> u32 {
        self.definitions
            .get(name)
            .and_then(|v| v.last())
            .map_or(1, |d| d.version + 1)
    }

    /// Adds a definition version; answers whether it is the newest of its name.
    pub fn install_definition(&mut self, def: Arc<Definition>) -> bool {
        let versions = self.definitions.entry(def.name.clone()).or_default();
        if versions.iter().any(|d| d.version == def.version) {
            return false;
        }
        let newest = versions.last().is_none_or(|d| d.version < def.version);
        versions.push(def);
        versions.sort_by_key(|d| d.version);
        newest
    }

    /// Every reply topic of a broker participant of any definition.
    pub fn reply_topics(&self) -> BTreeSet<String> {
        let mut topics = BTreeSet::new();
        for def in self.definitions.values().flatten() {
            for step in &def.spec.steps {
                for p in std::iter::once(&step.action).chain(step.compensation.as_ref()) {
                    if let Participant::Broker { reply_topic, .. } = p {
                        topics.insert(reply_topic.clone());
                    }
                }
            }
        }
        topics
    }

    // ---- ownership ----

    /// `Elsewhere` unless this instance drives the partition of `key`.
    pub fn owns(&self, key: &str) -> Result<u32, ApiError> {
        let partition = self.partition_of(key);
        if self.held.contains_key(&partition) {
            return Ok(partition);
        }
        Err(ApiError::Elsewhere {
            partition,
            owner: (self.owner_of)(partition),
        })
    }

    /// As [`Core::owns`] for a saga id; something that is no saga id is nowhere (and is never
    /// forwarded).
    fn owns_saga(&self, id: &str) -> Result<u32, ApiError> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(ApiError::NotFound(format!("{id:?} is not a saga id")));
        }
        self.owns(id)
    }

    // ---- timers ----

    pub fn next_timer(&self) -> Option<i64> {
        self.timers.first().map(|(at, _)| *at)
    }

    fn schedule(&mut self, id: String, at: Option<i64>) {
        if let Some(old) = self.wakeups.remove(&id) {
            self.timers.remove(&(old, id.clone()));
        }
        if let Some(at) = at {
            self.timers.insert((at, id.clone()));
            self.wakeups.insert(id, at);
        }
    }

    /// Indexes a saga in memory: its idempotency key and its next wakeup.
    fn index(&mut self, id: &str) {
        let Some(saga) = self.sagas.get(id) else {
            return;
        };
        let (key, wakeup) = (saga.idempotency_key.clone(), saga.next_wakeup_ms());
        if let Some(key) = key {
            self.by_key.insert(key, id.to_string());
        }
        self.schedule(id.to_string(), wakeup);
    }

    /// Drives every saga whose timer is due.
    pub fn fire_timers(&mut self, now_ms: i64) -> Vec<Batch> {
        let mut batches = Vec::new();
        while let Some((at, id)) = self.timers.first().cloned() {
            if at > now_ms {
                break;
            }
            self.timers.remove(&(at, id.clone()));
            self.wakeups.remove(&id);
            match self.drive(&id, Input::Tick, now_ms) {
                Ok(b) => batches.extend(b),
                Err(e) => tracing::warn!(saga = %id, error = %e, "tick refused"),
            }
        }
        batches
    }

    // ---- driving ----

    /// Runs one input through a saga; the batch of what follows, if anything does.
    fn drive(&mut self, id: &str, input: Input, now_ms: i64) -> Result<Option<Batch>, EngineError> {
        let random = self.rng.f64();
        let Some(saga) = self.sagas.get_mut(id) else {
            return Ok(None);
        };
        let entries = saga.handle(input, now_ms, random)?;
        Ok(self.journal(id, entries, now_ms))
    }

    /// The batch for entries a saga just took: calls and outcomes wait for it, and a saga that
    /// ended lets the next one under its lock go.
    fn journal(&mut self, id: &str, entries: Vec<Entry>, now_ms: i64) -> Option<Batch> {
        if entries.is_empty() {
            return None;
        }
        let mut effects = Effects::default();
        let mut ended = false;
        let saga = &self.sagas[id];
        for e in &entries {
            if let Some(call) = saga.call(&e.event) {
                effects.calls.push(call);
            }
            if e.event.is_terminal() {
                ended = true;
                if let Some(outcome) = outcome(saga) {
                    effects.outcomes.push(outcome);
                }
            }
        }
        let wakeup = saga.next_wakeup_ms();
        let lock = saga.lock.clone();
        if ended {
            self.finished.push_back(id.to_string());
        }
        self.dirty.insert(id.to_string());
        self.schedule(id.to_string(), wakeup);
        let partition = self.partition_of(id);
        let batch = self.batch(partition, entries, effects);
        if ended {
            if let Some(lock) = lock {
                self.release_lock(&lock, id, now_ms);
            }
        }
        batch
    }

    /// A saga under `lock` ended: the next one in line gets it.
    fn release_lock(&mut self, lock: &str, id: &str, now_ms: i64) {
        if let Some(queue) = self.locks.get_mut(lock) {
            queue.retain(|s| s != id);
        }
        // The grant's batch is appended after the releasing one (same partition, in order).
        self.pending_grants.push((lock.to_string(), now_ms));
    }

    /// Gives `lock` to the first saga in line if nobody holds it.
    fn grant(&mut self, lock: &str, now_ms: i64) -> Vec<Batch> {
        let Some(queue) = self.locks.get(lock) else {
            return Vec::new();
        };
        let Some(first) = queue.front().cloned() else {
            self.locks.remove(lock);
            return Vec::new();
        };
        if self.sagas.get(&first).is_none_or(|s| s.holds_lock) {
            return Vec::new();
        }
        match self.drive(&first, Input::Acquire, now_ms) {
            Ok(batch) => batch.into_iter().collect(),
            Err(e) => {
                tracing::warn!(saga = %first, error = %e, "lock grant refused");
                Vec::new()
            }
        }
    }

    /// Lock grants that sagas ending in the last drive made possible.
    fn grants(&mut self) -> Vec<Batch> {
        let mut batches = Vec::new();
        while let Some((lock, now_ms)) = self.pending_grants.pop() {
            batches.extend(self.grant(&lock, now_ms));
        }
        batches
    }

    /// A participant's answer.
    pub fn reply(&mut self, reply: Reply, now_ms: i64) -> Vec<Batch> {
        let Some(step) = self
            .sagas
            .get(&reply.saga_id)
            .and_then(|s| s.steps.iter().position(|st| st.name == reply.step_name))
        else {
            return Vec::new();
        };
        let input = Input::Reply {
            step,
            phase: reply.phase,
            attempt: reply.attempt,
            result: reply.result,
        };
        let mut batches = match self.drive(&reply.saga_id, input, now_ms) {
            Ok(b) => b.into_iter().collect(),
            Err(e) => {
                tracing::warn!(saga = %reply.saga_id, error = %e, "reply refused");
                Vec::new()
            }
        };
        batches.extend(self.grants());
        batches
    }

    /// Timers that are due, and the lock grants they lead to.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Batch> {
        let mut batches = self.fire_timers(now_ms);
        batches.extend(self.grants());
        batches
    }

    /// A finished saga's outcome is on its topic.
    pub fn outcome_published(&mut self, id: &str, now_ms: i64) -> Vec<Batch> {
        let Some(saga) = self.sagas.get_mut(id).filter(|s| !s.outcome_published) else {
            return Vec::new();
        };
        let entry = Entry {
            saga_id: id.to_string(),
            at_ms: now_ms,
            epoch: 0,
            event: Event::OutcomePublished,
        };
        saga.apply(&entry);
        self.dirty.insert(id.to_string());
        let partition = self.partition_of(id);
        self.batch(partition, vec![entry], Effects::default())
            .into_iter()
            .collect()
    }
}

fn outcome_topic(saga: &Saga) -> Option<&str> {
    saga.definition().spec.outcome_topic.as_deref()
}

fn outcome(saga: &Saga) -> Option<(String, Outcome)> {
    let topic = outcome_topic(saga)?.to_string();
    Some((
        topic,
        Outcome {
            saga_id: saga.id.clone(),
            definition: saga.definition.clone(),
            version: saga.version,
            state: saga.state,
            idempotency_key: saga.idempotency_key.clone(),
        },
    ))
}
