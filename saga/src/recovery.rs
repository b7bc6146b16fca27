//! Recovery and checkpoints, as pure functions over the records of `__saga_snapshots` and
//! `__saga_journal`: the journal reads them from the cluster, the simulation from its own model,
//! and both rebuild sagas with this same code.
//!
//! - A snapshot holds a saga's state as of a journal offset (`covers`); of several snapshots of
//!   a saga the one covering the most wins, whatever order compaction left them in (a stale
//!   owner may write an older one after the new owner's).
//! - A checkpoint per partition names where the journal must be read from and the owner epoch
//!   in effect there; the one furthest on wins.
//! - Journal entries count under owner epochs: an `Owner` marker starts an epoch, and an entry
//!   of any other epoch after it is a stale owner's write and is ignored. Entries a snapshot
//!   already covers are not applied twice.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use strand_cluster::MirroredRecord;

use crate::engine::{Entry, Event, Saga};
use crate::journal::JournalError;

pub const CHECKPOINT_KEY: &str = "__checkpoint";

/// Where the journal of one partition must be read from: every saga with an entry before
/// `journal_offset` has a snapshot covering at least that far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub journal_offset: u64,
    /// The owner epoch in effect at `journal_offset`.
    #[serde(default)]
    pub epoch: u64,
}

/// A saga's state as of a journal offset: entries before `covers` are in it.
#[derive(Debug, Deserialize)]
pub struct Snapshot {
    pub covers: u64,
    pub saga: Saga,
}

/// A [`Snapshot`] as written, borrowing the saga.
#[derive(Debug, Serialize)]
pub struct SnapshotOf<'a> {
    pub covers: u64,
    pub saga: &'a Saga,
}

/// What the snapshots topic says about some partitions.
#[derive(Debug, Default)]
pub struct Snapshots {
    pub checkpoints: HashMap<u32, Checkpoint>,
    pub sagas: HashMap<String, Snapshot>,
}

/// What taking partitions over recovers.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Sagas as of their snapshots.
    pub snapshots: Vec<Saga>,
    /// Journal entries newer than those snapshots, in order per saga, stale owners' left out.
    pub entries: Vec<Entry>,
    /// Per partition, the epoch and offset of the last owner marker read.
    pub owners: HashMap<u32, (u64, u64)>,
    /// Per partition, the journal offset after the last record read.
    pub ends: HashMap<u32, u64>,
}

/// Reads snapshot records (in their topic's order).
pub fn snapshots<'a>(
    records: impl IntoIterator<Item = &'a MirroredRecord>,
) -> Result<Snapshots, JournalError> {
    let mut out = Snapshots::default();
    for r in records {
        let Some(value) = &r.value else {
            continue; // a compaction tombstone
        };
        if r.key.as_deref() == Some(CHECKPOINT_KEY.as_bytes()) {
            let c: Checkpoint = parse(value, r)?;
            let best = out.checkpoints.entry(r.partition).or_default();
            if c.journal_offset >= best.journal_offset {
                *best = c;
            }
        } else {
            let s: Snapshot = parse(value, r)?;
            match out.sagas.get(&s.saga.id) {
                Some(old) if old.covers > s.covers => {}
                _ => {
                    out.sagas.insert(s.saga.id.clone(), s);
                }
            }
        }
    }
    Ok(out)
}

/// Where to read each partition's journal from.
pub fn journal_starts(snapshots: &Snapshots, partitions: &[u32]) -> Vec<(u32, u64)> {
    partitions
        .iter()
        .map(|&p| {
            (
                p,
                snapshots
                    .checkpoints
                    .get(&p)
                    .map_or(0, |c| c.journal_offset),
            )
        })
        .collect()
}

/// Replays journal records (each partition's in offset order, from [`journal_starts`]) over
/// the snapshots.
pub fn replay<'a>(
    snapshots: Snapshots,
    partitions: &[u32],
    records: impl IntoIterator<Item = &'a MirroredRecord>,
) -> Result<Recovered, JournalError> {
    let mut epochs: HashMap<u32, u64> = partitions
        .iter()
        .map(|&p| (p, snapshots.checkpoints.get(&p).map_or(0, |c| c.epoch)))
        .collect();
    let mut out = Recovered::default();
    for r in records {
        out.ends.insert(r.partition, r.offset + 1);
        let Some(value) = &r.value else { continue };
        let entry: Entry = parse(value, r)?;
        if let Event::Owner { .. } = entry.event {
            epochs.insert(r.partition, entry.epoch);
            out.owners.insert(r.partition, (entry.epoch, r.offset));
            continue;
        }
        if epochs.get(&r.partition).copied().unwrap_or(0) != entry.epoch {
            tracing::debug!(saga = %entry.saga_id, partition = r.partition, offset = r.offset, "a stale owner's journal entry: ignored");
            continue;
        }
        // Entries a snapshot already holds are not applied twice.
        if snapshots
            .sagas
            .get(&entry.saga_id)
            .is_none_or(|s| r.offset >= s.covers)
        {
            out.entries.push(entry);
        }
    }
    out.snapshots = snapshots.sagas.into_values().map(|s| s.saga).collect();
    out.snapshots.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

pub fn parse<T: serde::de::DeserializeOwned>(
    value: &[u8],
    at: &MirroredRecord,
) -> Result<T, JournalError> {
    serde_json::from_slice(value).map_err(|e| JournalError::Corrupt {
        topic: at.topic.clone(),
        partition: at.partition,
        offset: at.offset,
        reason: e.to_string(),
    })
}

/// The snapshot record of a saga.
pub fn snapshot_record(covers: u64, saga: &Saga) -> MirroredRecord {
    let value = serde_json::to_vec(&SnapshotOf { covers, saga }).expect("sagas serialize");
    MirroredRecord::new(Some(saga.id.clone().into_bytes()), value)
}

/// The checkpoint record of a partition.
pub fn checkpoint_record(checkpoint: Checkpoint) -> MirroredRecord {
    let value = serde_json::to_vec(&checkpoint).expect("checkpoints serialize");
    MirroredRecord::new(Some(CHECKPOINT_KEY.as_bytes().to_vec()), value)
}

/// The journal record of an entry.
pub fn entry_record(entry: &Entry) -> MirroredRecord {
    let value = serde_json::to_vec(entry).expect("entries serialize");
    MirroredRecord::new(Some(entry.saga_id.clone().into_bytes()), value)
}
