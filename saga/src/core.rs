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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::json;
use tokio::sync::oneshot;

use crate::api::{ApiError, ListQuery, Outcome, SagaPage, SagaSummary, StartRequest};
use crate::definition::{Definition, Participant};
use crate::engine::{Call, EngineError, Entry, Event, Input, Saga};
use crate::participants::Reply;
use crate::recovery::Recovered;

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
}

/// Entries to append, in order, to one journal partition.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: u64,
    pub partition: u32,
    pub entries: Vec<Entry>,
}

/// What to do once batches are durable.
#[derive(Debug, Default)]
pub struct Effects {
    pub calls: Vec<Call>,
    pub outcomes: Vec<(String, Outcome)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.outcomes.is_empty()
    }
}

/// What confirmed batches release.
#[derive(Debug)]
pub enum Confirmed {
    /// Act on these (the answers were sent already).
    Effects(Effects),
    /// An append of `partition` landed past where this instance expected: read the journal
    /// partition in `from..to` and say with [`Core::checked`] whether another owner's marker
    /// is there.
    Check { partition: u32, from: u64, to: u64 },
}

/// A journal partition this instance drives.
struct Held {
    epoch: u64,
    /// The offset this instance's next confirmed append must have.
    next_offset: u64,
    /// Appended, not yet confirmed, by batch id (the order they were appended in).
    pending: BTreeMap<u64, Pending>,
    /// A check is under way: confirmations wait.
    checking: bool,
    /// Every saga of the partition goes into the next checkpoint (right after a takeover: the
    /// journal entries it replayed are past the old checkpoint).
    snapshot_all: bool,
}

struct Pending {
    len: usize,
    offsets: Option<Vec<u64>>,
    effects: Effects,
    answers: Vec<Answer>,
}

/// A checkpoint to write: these sagas' snapshots, then for each partition a checkpoint at
/// `end`, the journal offset every snapshot covers.
#[derive(Debug)]
pub struct CheckpointPlan {
    pub partitions: Vec<(u32, u64)>,
    pub sagas: Vec<Saga>,
    ids: Vec<String>,
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

    /// A fresh epoch for taking a partition over (never 0, which journals written before
    /// epochs existed use).
    pub fn new_epoch(&mut self) -> u64 {
        self.rng.u64(1..)
    }

    /// The owner marker to append (durably, alone) before taking `partition` over.
    pub fn owner_marker(&self, epoch: u64, now_ms: i64) -> Entry {
        Entry {
            saga_id: String::new(),
            at_ms: now_ms,
            epoch,
            event: Event::Owner {
                instance: self.config.instance_id.clone(),
            },
        }
    }

    /// Takes partitions over once their owner markers are durable and `recovered` was read
    /// after them: `taken` gives each partition's epoch and the journal offset the next append
    /// gets. A partition whose last marker is not this instance's epoch was taken by another
    /// instance since and is left alone. Returns the batches that resume the sagas and the
    /// outcomes that may not have gone out before.
    pub fn take_over(
        &mut self,
        taken: &[(u32, u64, u64)],
        recovered: Recovered,
        now_ms: i64,
    ) -> (Vec<Batch>, Effects) {
        let mut partitions = Vec::new();
        for &(p, epoch, next_offset) in taken {
            if self.held.contains_key(&p) {
                continue;
            }
            if recovered.owners.get(&p).map(|(e, _)| *e) != Some(epoch) {
                tracing::warn!(
                    partition = p,
                    "another instance took the journal partition over meanwhile"
                );
                continue;
            }
            self.held.insert(
                p,
                Held {
                    epoch,
                    next_offset,
                    pending: BTreeMap::new(),
                    checking: false,
                    snapshot_all: true,
                },
            );
            partitions.push(p);
        }
        let mut taken_ids = Vec::new();
        for mut saga in recovered.snapshots {
            let p = self.partition_of(&saga.id);
            if !partitions.contains(&p) || self.sagas.contains_key(&saga.id) {
                continue;
            }
            let Some(def) = self.find_definition(&saga.definition, Some(saga.version)) else {
                tracing::error!(saga = %saga.id, definition = %saga.definition, "snapshot of a saga whose definition is gone");
                continue;
            };
            saga.attach(def);
            taken_ids.push(saga.id.clone());
            self.sagas.insert(saga.id.clone(), saga);
        }
        for entry in recovered.entries {
            if !partitions.contains(&self.partition_of(&entry.saga_id)) {
                continue;
            }
            if let Event::Started {
                definition,
                version,
                ..
            } = &entry.event
            {
                if self.sagas.contains_key(&entry.saga_id) {
                    continue; // already in a snapshot
                }
                let Some(def) = self.find_definition(definition, Some(*version)) else {
                    tracing::error!(saga = %entry.saga_id, %definition, "journal names an unknown definition");
                    continue;
                };
                let mut saga = Saga::new(entry.saga_id.clone(), def);
                saga.apply(&entry);
                taken_ids.push(saga.id.clone());
                self.sagas.insert(saga.id.clone(), saga);
            } else if let Some(saga) = self.sagas.get_mut(&entry.saga_id) {
                saga.apply(&entry);
            } else {
                tracing::warn!(saga = %entry.saga_id, "journal entry of an unknown saga");
            }
        }
        let mut finished: Vec<(i64, String)> = Vec::new();
        let mut unfinished = Vec::new();
        let mut pending_outcomes = Vec::new();
        for id in &taken_ids {
            let saga = &self.sagas[id];
            if saga.state.is_finished() {
                finished.push((saga.updated_at_ms, id.clone()));
                if !saga.outcome_published && outcome_topic(saga).is_some() {
                    pending_outcomes.push(id.clone());
                }
            } else {
                unfinished.push(id.clone());
            }
            self.dirty.insert(id.clone());
            self.index(id);
        }
        finished.sort();
        self.finished.extend(finished.into_iter().map(|(_, id)| id));
        // Locks: holders first, then waiters in start order.
        let mut queued: Vec<(bool, i64, String, String)> = unfinished
            .iter()
            .filter_map(|id| {
                let s = &self.sagas[id];
                let lock = s.lock.clone()?;
                Some((!s.holds_lock, s.created_at_ms, id.clone(), lock))
            })
            .collect();
        queued.sort();
        for (_, _, id, lock) in queued {
            self.locks.entry(lock).or_default().push_back(id);
        }
        // Resume every unfinished saga: resend what was in flight (same idempotency keys), and
        // take whatever step is due.
        let mut batches = Vec::new();
        for id in &unfinished {
            batches.extend(self.drive(id, Input::Redispatch, now_ms).ok().flatten());
            batches.extend(self.drive(id, Input::Tick, now_ms).ok().flatten());
        }
        let locks: Vec<String> = self.locks.keys().cloned().collect();
        for lock in locks {
            batches.extend(self.grant(&lock, now_ms));
        }
        batches.extend(self.grants());
        let outcomes = pending_outcomes
            .iter()
            .filter_map(|id| self.sagas.get(id).and_then(outcome))
            .collect();
        tracing::info!(
            ?partitions,
            resumed = unfinished.len(),
            sagas = taken_ids.len(),
            "journal partitions taken over"
        );
        (
            batches,
            Effects {
                calls: Vec::new(),
                outcomes,
            },
        )
    }

    /// Lets partitions go (after their last checkpoint, or when fenced): their sagas are
    /// dropped, and answers waiting on their unconfirmed batches are dropped unanswered (the
    /// callers see the orchestrator unavailable, and a retry finds the saga by its key).
    pub fn give_up(&mut self, partitions: &[u32]) {
        for p in partitions {
            self.held.remove(p);
        }
        let gone: Vec<String> = self
            .sagas
            .keys()
            .filter(|id| partitions.contains(&self.partition_of(id)))
            .cloned()
            .collect();
        for id in &gone {
            if let Some(saga) = self.sagas.remove(id) {
                if let Some(key) = &saga.idempotency_key {
                    self.by_key.remove(key);
                }
                if let Some(lock) = &saga.lock {
                    self.locks.remove(lock);
                }
            }
            self.dirty.remove(id);
            self.schedule(id.clone(), None);
        }
        let gone_set: HashSet<&String> = gone.iter().collect();
        self.finished.retain(|id| !gone_set.contains(id));
        tracing::info!(
            ?partitions,
            sagas = gone.len(),
            "journal partitions given up"
        );
    }

    // ---- journal confirmations and fencing ----

    fn batch(&mut self, partition: u32, entries: Vec<Entry>, effects: Effects) -> Option<Batch> {
        if entries.is_empty() {
            return None;
        }
        let held = self.held.get_mut(&partition)?;
        let id = self.next_batch;
        self.next_batch += 1;
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|mut e| {
                e.epoch = held.epoch;
                e
            })
            .collect();
        held.pending.insert(
            id,
            Pending {
                len: entries.len(),
                offsets: None,
                effects,
                answers: Vec::new(),
            },
        );
        Some(Batch {
            id,
            partition,
            entries,
        })
    }

    /// Sends `answer` once everything appended to `partition` so far is confirmed (at once
    /// when nothing is waiting).
    fn answer_after(&mut self, partition: u32, answer: Answer) {
        match self
            .held
            .get_mut(&partition)
            .and_then(|h| h.pending.values_mut().next_back())
        {
            Some(last) => last.answers.push(answer),
            None => answer(),
        }
    }

    /// Journal offsets of a batch's entries, once durable. Releases, in append order, what
    /// every batch confirmed so far announces.
    pub fn confirmed(&mut self, partition: u32, batch: u64, offsets: Vec<u64>) -> Vec<Confirmed> {
        let Some(held) = self.held.get_mut(&partition) else {
            return Vec::new();
        };
        if let Some(p) = held.pending.get_mut(&batch) {
            p.offsets = Some(offsets);
        }
        self.release(partition)
    }

    fn release(&mut self, partition: u32) -> Vec<Confirmed> {
        let mut out = Vec::new();
        let Some(held) = self.held.get_mut(&partition) else {
            return out;
        };
        while !held.checking {
            let Some(mut first) = held.pending.first_entry() else {
                break;
            };
            let Some(offsets) = &first.get().offsets else {
                break;
            };
            let expected = held.next_offset;
            let contiguous = offsets.len() == first.get().len
                && offsets
                    .iter()
                    .enumerate()
                    .all(|(i, o)| *o == expected + i as u64);
            if !contiguous {
                let to = offsets.first().copied().unwrap_or(expected).max(expected);
                if to > expected {
                    held.checking = true;
                    out.push(Confirmed::Check {
                        partition,
                        from: expected,
                        to,
                    });
                    break;
                }
                // Offsets that go backwards or have holes: nothing to trust.
                tracing::error!(
                    partition,
                    ?offsets,
                    expected,
                    "journal offsets out of order"
                );
                held.checking = true;
                out.push(Confirmed::Check {
                    partition,
                    from: expected,
                    to: expected,
                });
                break;
            }
            held.next_offset = expected + first.get().len as u64;
            let pending = first.get_mut();
            for answer in pending.answers.drain(..) {
                answer();
            }
            let effects = std::mem::take(&mut pending.effects);
            first.remove();
            if !effects.is_empty() {
                out.push(Confirmed::Effects(effects));
            }
        }
        out
    }

    /// The answer to a [`Confirmed::Check`]: whether another owner's marker is in the range.
    /// Fenced, the partition is given up; otherwise some other writer's records (a stale
    /// owner's, which replays ignore) were in the way and the confirmations go on.
    pub fn checked(&mut self, partition: u32, to: u64, foreign_owner: bool) -> Vec<Confirmed> {
        if foreign_owner || to == 0 {
            tracing::warn!(
                partition,
                "another instance owns this journal partition now: letting it go"
            );
            self.give_up(&[partition]);
            return Vec::new();
        }
        let Some(held) = self.held.get_mut(&partition) else {
            return Vec::new();
        };
        if to <= held.next_offset {
            // Out-of-order offsets with nobody else in between: give up to be safe.
            self.give_up(&[partition]);
            return Vec::new();
        }
        held.next_offset = to;
        held.checking = false;
        self.release(partition)
    }

    /// The epoch this instance holds `partition` under.
    pub fn epoch(&self, partition: u32) -> Option<u64> {
        self.held.get(&partition).map(|h| h.epoch)
    }

    /// The offset the next confirmed append of `partition` must have.
    pub fn next_offset(&self, partition: u32) -> Option<u64> {
        self.held.get(&partition).map(|h| h.next_offset)
    }

    /// Whether appends of `partition` wait for their confirmation.
    pub fn unconfirmed(&self, partition: u32) -> bool {
        self.held
            .get(&partition)
            .is_some_and(|h| !h.pending.is_empty())
    }

    // ---- checkpoints ----

    /// What a checkpoint of `partitions` (every held one with changes when `None`) writes.
    /// Call it with no unconfirmed batch in them; `ends` are the journal partitions' high
    /// watermarks read after a flush. A partition whose end is not where this instance's
    /// appends stopped is left out (another writer: [`Core::confirmed`]'s check handles it).
    pub fn checkpoint_plan(
        &self,
        partitions: Option<&[u32]>,
        ends: &HashMap<u32, u64>,
    ) -> CheckpointPlan {
        let wanted: BTreeSet<u32> = match partitions {
            Some(p) => p
                .iter()
                .copied()
                .filter(|p| self.held.contains_key(p))
                .collect(),
            None => self
                .dirty
                .iter()
                .map(|id| self.partition_of(id))
                .chain(
                    self.held
                        .iter()
                        .filter(|(_, h)| h.snapshot_all)
                        .map(|(p, _)| *p),
                )
                .collect(),
        };
        let mut plan = CheckpointPlan {
            partitions: Vec::new(),
            sagas: Vec::new(),
            ids: Vec::new(),
        };
        for p in wanted {
            let held = &self.held[&p];
            if !held.pending.is_empty() || ends.get(&p) != Some(&held.next_offset) {
                continue;
            }
            plan.partitions.push((p, held.next_offset));
        }
        let chosen: BTreeSet<u32> = plan.partitions.iter().map(|(p, _)| *p).collect();
        for (id, saga) in &self.sagas {
            let p = self.partition_of(id);
            if chosen.contains(&p) && (self.held[&p].snapshot_all || self.dirty.contains(id)) {
                plan.sagas.push(saga.clone());
                plan.ids.push(id.clone());
            }
        }
        plan
    }

    /// The plan's snapshots and checkpoints are durable.
    pub fn checkpoint_done(&mut self, plan: CheckpointPlan) {
        for id in &plan.ids {
            self.dirty.remove(id);
        }
        for (p, _) in &plan.partitions {
            if let Some(h) = self.held.get_mut(p) {
                h.snapshot_all = false;
            }
        }
        self.evict_finished();
    }

    /// Drops the oldest finished sagas beyond the limit; their final state is in a snapshot.
    fn evict_finished(&mut self) {
        let max = self.config.finished_in_memory_max.max(1);
        while self.finished.len() > max {
            let Some(id) = self.finished.front() else {
                break;
            };
            let done = self.sagas.get(id).is_none_or(|s| {
                !self.dirty.contains(id) && (s.outcome_published || outcome_topic(s).is_none())
            });
            if !done {
                break; // its outcome is not out yet: keep it (and everything after it)
            }
            let id = self.finished.pop_front().expect("checked");
            self.sagas.remove(&id);
            self.schedule(id, None);
        }
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

    // ---- the API ----

    /// An operator's abort or retry; answered once what it journals is durable.
    pub fn operator(
        &mut self,
        id: &str,
        input: Input,
        now_ms: i64,
        respond: Respond<Saga>,
    ) -> Vec<Batch> {
        if !self.sagas.contains_key(id) {
            let missing = ApiError::NotFound(format!("no saga {id:?}"));
            let _ = respond.send(Err(self.owns_saga(id).err().unwrap_or(missing)));
            return Vec::new();
        }
        let mut batches: Vec<Batch> = match self.drive(id, input, now_ms) {
            Ok(b) => b.into_iter().collect(),
            Err(e) => {
                let _ = respond.send(Err(ApiError::Conflict(e.to_string())));
                return Vec::new();
            }
        };
        batches.extend(self.grants());
        let saga = self.sagas[id].clone();
        self.answer_after(
            self.partition_of(id),
            Box::new(move || {
                let _ = respond.send(Ok(saga));
            }),
        );
        batches
    }

    /// A saga as durable: answered once every transition it shows is confirmed.
    pub fn get(&mut self, id: &str, respond: Respond<Saga>) {
        match self.sagas.get(id) {
            Some(saga) => {
                let saga = saga.clone();
                self.answer_after(
                    self.partition_of(id),
                    Box::new(move || {
                        let _ = respond.send(Ok(saga));
                    }),
                );
            }
            None => {
                let found = self.owns_saga(id).and_then(|_| {
                    Err(ApiError::NotFound(format!(
                        "no saga {id:?} in memory (sagas that finished long ago are only in {})",
                        crate::journal::SNAPSHOT_TOPIC
                    )))
                });
                let _ = respond.send(found);
            }
        }
    }

    /// A page of sagas; answered once every transition it shows is confirmed.
    pub fn list(&mut self, query: ListQuery, respond: Respond<SagaPage>) {
        let limit = query.limit.clamp(1, 1_000);
        let from = match &query.cursor {
            Some(c) => std::ops::Bound::Excluded(c.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut sagas = Vec::new();
        let mut next_cursor = None;
        let mut partitions = BTreeSet::new();
        for saga in self
            .sagas
            .range((from, std::ops::Bound::Unbounded))
            .map(|(_, s)| s)
            .filter(|s| query.state.is_none_or(|st| s.state == st))
            .filter(|s| query.definition.as_ref().is_none_or(|d| &s.definition == d))
        {
            if sagas.len() == limit {
                next_cursor = sagas.last().map(|s: &SagaSummary| s.id.clone());
                break;
            }
            partitions.insert(self.partition_of(&saga.id));
            sagas.push(SagaSummary::from(saga));
        }
        let page = SagaPage { sagas, next_cursor };
        // Answered after the last of the partitions it shows is confirmed.
        let waiting: Vec<u32> = partitions
            .into_iter()
            .filter(|p| self.unconfirmed(*p))
            .collect();
        let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(waiting.len()));
        let respond = Arc::new(std::sync::Mutex::new(Some((respond, page))));
        let send = {
            let respond = respond.clone();
            move || {
                if let Some((r, page)) = respond.lock().expect("list answer").take() {
                    let _ = r.send(Ok(page));
                }
            }
        };
        if waiting.is_empty() {
            send();
            return;
        }
        for p in waiting {
            let remaining = remaining.clone();
            let send = send.clone();
            self.answer_after(
                p,
                Box::new(move || {
                    if remaining.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                        send();
                    }
                }),
            );
        }
    }

    /// Starts a saga (or finds the one its idempotency key started); answered once `Started`
    /// is durable. The flag is true when a new saga was started.
    pub fn start(
        &mut self,
        request: StartRequest,
        now_ms: i64,
        respond: Respond<(Saga, bool)>,
    ) -> Vec<Batch> {
        let def = match self.find_definition(&request.definition, request.version) {
            Some(def) => def,
            None => {
                let _ = respond.send(Err(ApiError::NotFound(format!(
                    "no definition {:?}{}",
                    request.definition,
                    request
                        .version
                        .map(|v| format!(" version {v}"))
                        .unwrap_or_default()
                ))));
                return Vec::new();
            }
        };
        let lock = match &def.spec.lock {
            None => None,
            Some(template) => {
                match crate::template::render_str(template, &json!({ "input": request.input })) {
                    Ok(key) => Some(key),
                    Err(e) => {
                        let _ = respond.send(Err(ApiError::BadRequest(format!(
                            "the definition's lock {template:?} does not render from this input: {e}"
                        ))));
                        return Vec::new();
                    }
                }
            }
        };
        // A saga under a lock lives in the lock's partition, so one instance orders every saga
        // of a lock; a keyed one in its key's partition, so every instance finds it by its key;
        // any other in a partition this instance drives.
        let placed_by = lock.as_ref().or(request.idempotency_key.as_ref());
        let partition = match placed_by {
            Some(key) => match self.owns(key) {
                Ok(p) => p,
                Err(e) => {
                    let _ = respond.send(Err(e));
                    return Vec::new();
                }
            },
            None => {
                let held = self.held();
                if held.is_empty() {
                    let _ = respond.send(Err(ApiError::Unavailable(
                        "this instance drives no journal partition right now; retry".into(),
                    )));
                    return Vec::new();
                }
                held[self.rng.usize(..held.len())]
            }
        };
        if let Some(key) = &request.idempotency_key {
            if let Some(id) = self
                .by_key
                .get(key)
                .filter(|id| !self.sagas.contains_key(*id))
            {
                let _ = respond.send(Err(ApiError::Conflict(format!(
                    "idempotency key {key:?} started saga {id}, which finished long ago (its final state is in {})",
                    crate::journal::SNAPSHOT_TOPIC
                ))));
                return Vec::new();
            }
            if let Some(existing) = self.by_key.get(key).and_then(|id| self.sagas.get(id)) {
                let same = existing.definition == request.definition
                    && request.version.is_none_or(|v| v == existing.version)
                    && existing.input == request.input;
                if !same {
                    let _ = respond.send(Err(ApiError::Conflict(format!(
                        "idempotency key {key:?} already started saga {} with a different request",
                        existing.id
                    ))));
                    return Vec::new();
                }
                // Answered once the saga it shows is durable, like the first start.
                let existing = existing.clone();
                self.answer_after(
                    self.partition_of(&existing.id),
                    Box::new(move || {
                        let _ = respond.send(Ok((existing, false)));
                    }),
                );
                return Vec::new();
            }
        }
        let id = self.new_id(partition, now_ms);
        let wait = lock
            .as_ref()
            .is_some_and(|l| self.locks.get(l).is_some_and(|q| !q.is_empty()));
        if let Some(l) = &lock {
            self.locks
                .entry(l.clone())
                .or_default()
                .push_back(id.clone());
        }
        let (saga, entries) = Saga::start(
            id.clone(),
            def,
            request.input,
            request.idempotency_key,
            lock,
            wait,
            now_ms,
        );
        self.sagas.insert(id.clone(), saga);
        self.index(&id);
        let batch = self.journal(&id, entries, now_ms);
        let saga = self.sagas[&id].clone();
        self.answer_after(
            partition,
            Box::new(move || {
                let _ = respond.send(Ok((saga, true)));
            }),
        );
        batch.into_iter().collect()
    }

    /// A new saga id in `partition`: a UUIDv7 (ids sort by creation time) from this core's
    /// random numbers, so a simulation's run repeats exactly.
    fn new_id(&mut self, partition: u32, now_ms: i64) -> String {
        loop {
            let mut random = [0u8; 10];
            for b in &mut random {
                *b = self.rng.u8(..);
            }
            let id = uuid::Builder::from_unix_timestamp_millis(now_ms.max(0) as u64, &random)
                .into_uuid()
                .to_string();
            if self.partition_of(&id) == partition {
                return id;
            }
        }
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
