//! Taking journal partitions over (owner markers, recovery) and letting them go; checkpoints.

use super::*;

/// A checkpoint to write: these sagas' snapshots, then for each partition a checkpoint at
/// `end`, the journal offset every snapshot covers.
#[derive(Debug)]
pub struct CheckpointPlan {
    pub partitions: Vec<(u32, u64)>,
    pub sagas: Vec<Saga>,
    /// Each saga snapshotted, with how many transitions its snapshot holds.
    pub(super) ids: Vec<(String, usize)>,
}

impl Core {
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
        self.archive_give_up(partitions);
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
            let too_large = self.sagas.iter().find(|(id, saga)| {
                self.partition_of(id) == p
                    && (held.snapshot_all || self.dirty.contains(*id))
                    && crate::recovery::snapshot_record(held.next_offset, saga)
                        .value
                        .as_ref()
                        .is_some_and(|v| v.len() > self.config.snapshot_bytes_max)
            });
            if let Some((id, _)) = too_large {
                tracing::warn!(
                    partition = p,
                    saga = %id,
                    limit = self.config.snapshot_bytes_max,
                    "a snapshot is larger than the journal takes: the partition's checkpoint stays where it is"
                );
                continue;
            }
            plan.partitions.push((p, held.next_offset));
        }
        let chosen: BTreeSet<u32> = plan.partitions.iter().map(|(p, _)| *p).collect();
        for (id, saga) in &self.sagas {
            let p = self.partition_of(id);
            if chosen.contains(&p) && (self.held[&p].snapshot_all || self.dirty.contains(id)) {
                plan.sagas.push(saga.clone());
                plan.ids.push((id.clone(), saga.history.len()));
            }
        }
        plan
    }

    /// The plan's snapshots and checkpoints are durable.
    pub fn checkpoint_done(&mut self, plan: CheckpointPlan) {
        for (id, transitions) in &plan.ids {
            // A saga that changed after the plan was made stays dirty.
            if self
                .sagas
                .get(id)
                .is_none_or(|s| s.history.len() == *transitions)
            {
                self.dirty.remove(id);
            }
        }
        for (p, _) in &plan.partitions {
            if let Some(h) = self.held.get_mut(p) {
                h.snapshot_all = false;
            }
        }
        self.evict_finished();
    }

    /// Drops the oldest finished sagas beyond the limit; their final state is in a snapshot.
    pub(super) fn evict_finished(&mut self) {
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
}
