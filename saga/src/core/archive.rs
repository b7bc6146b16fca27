//! Finished sagas after they leave memory: where each one's last snapshot is.
//!
//! A finished saga is evicted from memory (beyond `finished_in_memory_max`) only once its final
//! state is in a durable snapshot in `__saga_snapshots`. The [`Archive`] remembers, for up to
//! `finished_indexed_max` finished sagas, the offset of that snapshot record (its partition is
//! the saga's journal partition), so `GET /sagas/{id}` reads one record instead of answering
//! 404. It holds about 50 bytes per saga (the id as 128 bits and an offset in a hash map, and the id again in the order kept for forgetting) and forgets the
//! earliest noted first. It is rebuilt at a takeover: a partition taken over is snapshotted
//! whole at its first checkpoint, which notes every finished saga again.

use super::*;

/// Where the snapshots of finished sagas are, bounded.
#[derive(Debug, Default)]
pub(super) struct Archive {
    max: usize,
    at: HashMap<u128, u64>,
    /// In the order noted, for forgetting.
    order: VecDeque<u128>,
    /// Sagas forgotten because the index was full.
    forgotten: u64,
}

/// Where to read an evicted saga from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archived {
    pub partition: u32,
    /// The offset of its latest snapshot record in `__saga_snapshots`.
    pub offset: u64,
}

impl Archive {
    pub(super) fn new(max: usize) -> Archive {
        Archive {
            max,
            ..Archive::default()
        }
    }

    fn note(&mut self, id: &str, offset: u64) {
        let Ok(key) = uuid::Uuid::parse_str(id).map(|u| u.as_u128()) else {
            return;
        };
        if self.max == 0 {
            return;
        }
        if self.at.insert(key, offset).is_none() {
            self.order.push_back(key);
        }
        while self.at.len() > self.max {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.at.remove(&old).is_some() {
                self.forgotten += 1;
            }
        }
    }

    fn get(&self, id: &str) -> Option<u64> {
        let key = uuid::Uuid::parse_str(id).ok()?.as_u128();
        self.at.get(&key).copied()
    }

    /// Forgets every saga `gone` says of.
    fn forget(&mut self, gone: impl Fn(&str) -> bool) {
        self.at
            .retain(|k, _| !gone(&uuid::Uuid::from_u128(*k).to_string()));
        let at = &self.at;
        self.order.retain(|k| at.contains_key(k));
    }
}

impl Core {
    /// The plan's snapshots were written at `offsets` (one per saga of the plan, in order) in
    /// their partitions of `__saga_snapshots`: the finished ones are noted, so they stay
    /// readable once evicted. Call it before [`Core::checkpoint_done`].
    pub fn snapshots_written(&mut self, plan: &CheckpointPlan, offsets: &[u64]) {
        for (saga, &offset) in plan.sagas.iter().zip(offsets) {
            if saga.state.is_finished() {
                self.archive.note(&saga.id, offset);
            }
        }
    }

    /// Where a finished saga that left memory can be read from, if this instance drives its
    /// partition and still indexes it.
    pub fn archived(&self, id: &str) -> Option<Archived> {
        if self.sagas.contains_key(id) {
            return None;
        }
        let partition = self.owns_saga(id).ok()?;
        let offset = self.archive.get(id)?;
        Some(Archived { partition, offset })
    }

    /// How many finished sagas the index forgot because it was full.
    pub fn archive_forgotten(&self) -> u64 {
        self.archive.forgotten
    }

    /// Drops the index entries of partitions given up (their next owner indexes them).
    pub(super) fn archive_give_up(&mut self, partitions: &[u32]) {
        let n = self.config.partitions;
        self.archive.forget(|id| {
            partitions.contains(&strand_client::partitioner::partition_for_key(
                id.as_bytes(),
                n,
            ))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Archive;

    fn id(n: u128) -> String {
        uuid::Uuid::from_u128(n).to_string()
    }

    #[test]
    fn the_index_is_bounded_and_forgets_the_earliest_noted() {
        let mut a = Archive::new(2);
        a.note(&id(1), 10);
        a.note(&id(2), 20);
        a.note(&id(1), 11); // noted again: a newer snapshot, same place in line
        a.note(&id(3), 30);
        assert_eq!(
            (a.get(&id(1)), a.get(&id(2)), a.get(&id(3))),
            (None, Some(20), Some(30))
        );
        assert_eq!(a.forgotten, 1);
        assert_eq!(a.at.len(), 2);
        assert_eq!(a.order.len(), 2);
        a.forget(|s| s == id(2));
        assert_eq!((a.get(&id(2)), a.get(&id(3))), (None, Some(30)));
        assert_eq!(a.order.len(), 1);
        a.note("not-a-saga-id", 1);
        assert_eq!(a.at.len(), 1);
        let mut none = Archive::new(0);
        none.note(&id(1), 1);
        assert_eq!(none.get(&id(1)), None);
    }
}
