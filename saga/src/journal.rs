//! The orchestrator's durable state, on a Strand broker or a Kafka-protocol cluster (one
//! interface, [`Cluster`], with a `strand-client` and an `rdkafka` implementation; the engine
//! and the orchestrator do not know which):
//!
//! - `__saga_journal`: every saga transition ([`Entry`], JSON), keyed by saga id and placed in
//!   partition `murmur2(saga id) % partitions` (where a Kafka client would put it), sent
//!   durably (Strand: acks=durable, fsynced; Kafka: acks=all, idempotent) before the side
//!   effect it announces. A journal partition is the unit of ownership: one instance drives
//!   the sagas of a partition.
//! - `__saga_snapshots` (compacted, as many partitions as the journal, a saga's snapshot in its
//!   journal partition): the latest state of a saga with the journal offset it covers, and per
//!   partition a checkpoint record naming where the journal must be read from, so taking over
//!   a partition reads its snapshots and only the journal after the checkpoint.
//! - `__saga_definitions` (compacted): every definition version.
//! - `__saga_instances` (compacted): which instance owns which partitions, and its API address.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use strand_client::partitioner::partition_for_key;
use strand_cluster::{Cluster, MirroredRecord, Sent, SideError, TopicKind};

use crate::api::ApiError;
use crate::definition::Definition;
use crate::engine::{Entry, Saga};
use crate::recovery::{self, parse, Checkpoint, Recovered};

pub const JOURNAL_TOPIC: &str = "__saga_journal";
pub const SNAPSHOT_TOPIC: &str = "__saga_snapshots";
pub const DEFINITION_TOPIC: &str = "__saga_definitions";
pub const INSTANCES_TOPIC: &str = "__saga_instances";

/// How long reading one snapshot record (an evicted saga's) may take.
const SNAPSHOT_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("journal: {0}")]
    Cluster(#[from] SideError),
    #[error("journal record at {topic}/{partition}@{offset} is not valid: {reason}")]
    Corrupt {
        topic: String,
        partition: u32,
        offset: u64,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct Journal {
    cluster: Arc<Cluster>,
    partitions: u32,
}

impl Journal {
    /// Creates the internal topics when missing (`partitions` journal partitions; an existing
    /// journal keeps its count).
    pub async fn open(cluster: Arc<Cluster>, partitions: u32) -> Result<Journal, JournalError> {
        Journal::open_replicated(cluster, partitions, None).await
    }

    /// As [`Journal::open`], creating the internal topics on a Kafka cluster with
    /// `replication` copies of each partition (`None`: the cluster's default replication
    /// factor; a Strand broker keeps one copy whatever is asked).
    pub async fn open_replicated(
        cluster: Arc<Cluster>,
        partitions: u32,
        replication: Option<u16>,
    ) -> Result<Journal, JournalError> {
        for (topic, n, kind) in [
            (JOURNAL_TOPIC, partitions, TopicKind::Kept),
            (SNAPSHOT_TOPIC, partitions, TopicKind::Compacted),
            (DEFINITION_TOPIC, 1, TopicKind::Compacted),
            (INSTANCES_TOPIC, 1, TopicKind::Compacted),
        ] {
            cluster
                .ensure_topic_replicated(topic, n, kind, replication)
                .await?;
        }
        let partitions = cluster.partitions(JOURNAL_TOPIC).await?;
        let snapshots = cluster.partitions(SNAPSHOT_TOPIC).await?;
        if snapshots != partitions {
            return Err(JournalError::Corrupt {
                topic: SNAPSHOT_TOPIC.into(),
                partition: 0,
                offset: 0,
                reason: format!(
                    "{snapshots} partitions where the journal has {partitions}: they must match"
                ),
            });
        }
        Ok(Journal {
            cluster,
            partitions,
        })
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Journal partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition a saga id (or an idempotency key) belongs to.
    pub fn partition_of(&self, key: &str) -> u32 {
        partition_for_key(key.as_bytes(), self.partitions)
    }

    /// Queues entries in order on `partition`; each future resolves, with the entry's offset,
    /// when it is durable.
    pub async fn append(
        &self,
        partition: u32,
        entries: &[Entry],
    ) -> Result<Vec<Sent>, JournalError> {
        let mut deliveries = Vec::with_capacity(entries.len());
        for e in entries {
            deliveries.push(
                self.cluster
                    .send(JOURNAL_TOPIC, Some(partition), recovery::entry_record(e))
                    .await?,
            );
        }
        Ok(deliveries)
    }

    /// The high watermark of every journal partition.
    pub async fn ends(&self) -> Result<HashMap<u32, u64>, JournalError> {
        Ok(self
            .cluster
            .watermarks(JOURNAL_TOPIC)
            .await?
            .into_iter()
            .enumerate()
            .map(|(p, (_, high))| (p as u32, high))
            .collect())
    }

    /// Whether an owner marker of another epoch than `epoch` is in `partition` at `from..to`.
    pub async fn foreign_owner(
        &self,
        partition: u32,
        from: u64,
        to: u64,
        epoch: u64,
    ) -> Result<bool, JournalError> {
        if to <= from {
            return Ok(true); // nothing to read, yet offsets did not line up: trust nothing
        }
        for r in self
            .cluster
            .read_to_end(JOURNAL_TOPIC, &[(partition, from)])
            .await?
        {
            if r.offset >= to {
                break;
            }
            let Some(value) = &r.value else { continue };
            let entry: Entry = parse(value, &r)?;
            if matches!(entry.event, crate::engine::Event::Owner { .. }) && entry.epoch != epoch {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Waits until everything appended so far is durable.
    pub async fn flush(&self) -> Result<(), JournalError> {
        Ok(self.cluster.flush().await?)
    }

    /// Stores a definition version durably.
    pub async fn put_definition(&self, definition: &Definition) -> Result<(), JournalError> {
        let value = serde_json::to_vec(definition).expect("definitions serialize");
        let key = format!("{}/{}", definition.name, definition.version);
        let record = MirroredRecord::new(Some(key.into_bytes()), value);
        self.cluster
            .send(DEFINITION_TOPIC, Some(0), record)
            .await?
            .await?;
        Ok(())
    }

    /// Every definition version stored, and the offset after the last one read.
    pub async fn definitions(&self) -> Result<(Vec<Definition>, u64), JournalError> {
        let mut next = 0;
        let mut definitions: HashMap<Vec<u8>, Definition> = HashMap::new();
        for r in self
            .cluster
            .read_to_end(DEFINITION_TOPIC, &[(0, 0)])
            .await?
        {
            next = r.offset + 1;
            if let Some(value) = &r.value {
                definitions.insert(r.key.clone().unwrap_or_default(), parse(value, &r)?);
            }
        }
        let mut all: Vec<Definition> = definitions.into_values().collect();
        all.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        Ok((all, next))
    }

    /// Parses a definition record read by a follower of the definitions topic.
    pub fn definition_record(record: &MirroredRecord) -> Result<Option<Definition>, JournalError> {
        record
            .value
            .as_deref()
            .map(|v| parse(v, record))
            .transpose()
    }

    /// Writes snapshots, then a checkpoint for each partition (`(partition, journal offset,
    /// epoch)`): every snapshot covers its partition's offset, so the caller must not append
    /// to those partitions while this runs. Answers each snapshot's offset, in order.
    pub async fn checkpoint(
        &self,
        partitions: &[(u32, u64, u64)],
        sagas: &[Saga],
    ) -> Result<Vec<u64>, JournalError> {
        let end = |p: u32| {
            partitions
                .iter()
                .find(|(q, _, _)| *q == p)
                .map_or(0, |(_, end, _)| *end)
        };
        let mut deliveries = Vec::new();
        for saga in sagas {
            let partition = self.partition_of(&saga.id);
            let record = recovery::snapshot_record(end(partition), saga);
            deliveries.push(
                self.cluster
                    .send(SNAPSHOT_TOPIC, Some(partition), record)
                    .await?,
            );
        }
        let mut offsets = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            offsets.push(d.await?);
        }
        let mut deliveries = Vec::new();
        for &(p, journal_offset, epoch) in partitions {
            // One record under a fixed key per partition: compaction keeps the latest.
            let record = recovery::checkpoint_record(Checkpoint {
                journal_offset,
                epoch,
            });
            deliveries.push(self.cluster.send(SNAPSHOT_TOPIC, Some(p), record).await?);
        }
        for d in deliveries {
            d.await?;
        }
        Ok(offsets)
    }

    /// Reads the snapshot record of saga `id` at `partition`@`offset` of the snapshots topic
    /// (where the orchestrator noted it, see `core::archive`): [`ApiError::Gone`] when it is no
    /// longer there (compaction replaced it, or retention dropped it), `Unavailable` when the
    /// cluster does not answer.
    pub async fn read_snapshot(
        &self,
        id: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Saga, ApiError> {
        let at = format!("{SNAPSHOT_TOPIC}/{partition}@{offset}");
        let unavailable = |e: &dyn std::fmt::Display| {
            ApiError::Unavailable(format!("reading saga {id} from {at}: {e}; retry"))
        };
        let gone = |why: &str| {
            ApiError::Gone(format!(
                "saga {id} finished and left memory, and its snapshot at {at} is no longer kept ({why})"
            ))
        };
        let marks = self
            .cluster
            .watermarks(SNAPSHOT_TOPIC)
            .await
            .map_err(|e| unavailable(&e))?;
        let Some(&(low, high)) = marks.get(partition as usize) else {
            return Err(gone("the partition is gone"));
        };
        if offset < low || offset >= high {
            return Err(gone(&format!(
                "retention dropped it: the partition holds {low}..{high}"
            )));
        }
        let mut reader = self
            .cluster
            .reader_at(SNAPSHOT_TOPIC, vec![(partition, offset)])
            .await
            .map_err(|e| unavailable(&e))?;
        let record = match tokio::time::timeout(SNAPSHOT_READ_TIMEOUT, reader.next()).await {
            Ok(r) => r.map_err(|e| unavailable(&e))?,
            Err(_) => return Err(unavailable(&"no answer within 10s")),
        };
        if record.offset != offset || record.key.as_deref() != Some(id.as_bytes()) {
            return Err(gone("compaction replaced it"));
        }
        let Some(value) = &record.value else {
            return Err(gone("a tombstone replaced it"));
        };
        let snapshot: recovery::Snapshot = parse(value, &record).map_err(|e| unavailable(&e))?;
        Ok(snapshot.saga)
    }

    /// Reads the snapshots of `partitions` and the journal after their checkpoints.
    pub async fn recover(&self, partitions: &[u32]) -> Result<Recovered, JournalError> {
        let from_start: Vec<(u32, u64)> = partitions.iter().map(|&p| (p, 0)).collect();
        let records = self
            .cluster
            .read_to_end(SNAPSHOT_TOPIC, &from_start)
            .await?;
        let snapshots = recovery::snapshots(&records)?;
        let from = recovery::journal_starts(&snapshots, partitions);
        let mut journal = self.cluster.read_to_end(JOURNAL_TOPIC, &from).await?;
        journal.sort_by_key(|r| (r.partition, r.offset));
        recovery::replay(snapshots, partitions, &journal)
    }
}

/// Follows a one-partition topic from `from` until shutdown, handing `f` every record in order;
/// a read that fails is reopened where it stopped. `f` answers whether to go on.
pub async fn follow<F, Fut>(
    cluster: &Cluster,
    topic: &str,
    from: u64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut f: F,
) where
    F: FnMut(MirroredRecord) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut next = from;
    loop {
        let mut reader = match cluster.reader_at(topic, vec![(0, next)]).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(topic, error = %e, "following failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let record = tokio::select! {
                r = reader.next() => r,
                _ = crate::stopped(&mut shutdown) => return,
            };
            match record {
                Ok(r) => {
                    next = r.offset + 1;
                    if !f(r).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(topic, error = %e, "following failed; retrying");
                    break;
                }
            }
        }
    }
}
