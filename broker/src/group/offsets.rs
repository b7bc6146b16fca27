//! Committed offsets, kept durably in the internal compacted topic `__consumer_offsets`.
//!
//! One record per (group, topic, partition): the key is `group \0 topic \0 partition` (the
//! partition as 4 big-endian bytes), the value the offset (8 big-endian bytes) followed by the
//! commit's metadata in UTF-8. Compaction keeps the latest commit per key, so the topic stays
//! about as large as the number of committed partitions. A commit is acknowledged only after an
//! fsync covering it.
//!
//! Only the broker writes this topic (clients are refused), but a log from an older broker, a
//! restored backup or a damaged disk may hold anything a valid batch can: reading it at start
//! never fails on what a record holds. Compressed batches are decompressed; a batch or record
//! that cannot be used is skipped with a warning naming its offset.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use strand_client::batch::{BatchBuilder, BatchHeader, Batches, Compression, Records};

use super::{CommittedOffset, TopicPartition};
use crate::log::now_ms;
use crate::service::ServiceError;
use crate::topics::{Partition, TopicConfig, TopicError, Topics};

/// Name of the internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone)]
pub struct OffsetStore {
    partition: Arc<Partition>,
}

/// One stored commit, or (`None`) its deletion: a tombstone written when the group was
/// deleted.
pub type StoredCommit = (String, TopicPartition, Option<CommittedOffset>);

fn encode_key(group: &str, tp: &TopicPartition) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + tp.0.len() + 6);
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key.extend_from_slice(tp.0.as_bytes());
    key.push(0);
    key.extend_from_slice(&tp.1.to_be_bytes());
    key
}

fn decode(key: &[u8], value: &[u8]) -> Option<StoredCommit> {
    let mut parts = key.splitn(3, |&b| b == 0);
    let group = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let topic = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let partition = u32::from_be_bytes(parts.next()?.try_into().ok()?);
    let offset = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let metadata = String::from_utf8_lossy(&value[8..]).into_owned();
    Some((
        group,
        (topic, partition),
        Some(CommittedOffset { offset, metadata }),
    ))
}

/// The group and partition a tombstone's key names.
fn decode_deletion(key: &[u8]) -> Option<StoredCommit> {
    let mut parts = key.splitn(3, |&b| b == 0);
    let group = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let topic = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let partition = u32::from_be_bytes(parts.next()?.try_into().ok()?);
    Some((group, (topic, partition), None))
}

/// Adds the usable commits of one batch to `commits`, warning about what it skips: one line
/// per batch, so a log full of foreign records cannot flood the broker's log.
fn read_batch(header: &BatchHeader, bytes: &[u8], commits: &mut Vec<StoredCommit>) {
    let base_offset = header.base_offset;
    if header.is_control() {
        return;
    }
    // Records that are no commits: how many, and the first one's offset.
    let mut skipped: Option<(usize, i64)> = None;
    let mut use_record = |offset: i64, key: Option<&[u8]>, value: Option<&[u8]>| {
        let commit = match (key, value) {
            // A tombstone (key, no value): the group was deleted, and its commit with it.
            (Some(key), None) => decode_deletion(key),
            (Some(key), Some(value)) => decode(key, value),
            (None, _) => None,
        };
        match commit {
            Some(commit) => commits.push(commit),
            None => {
                let (n, _) = skipped.get_or_insert((0, offset));
                *n += 1;
            }
        }
    };
    match header.compression() {
        Ok(Compression::None) => {
            for record in Records::new(bytes, header) {
                match record {
                    Ok(r) => use_record(base_offset + i64::from(r.offset_delta), r.key, r.value),
                    Err(e) => {
                        tracing::warn!(
                            offset = base_offset,
                            error = %e,
                            "skipping the rest of an unreadable offsets batch"
                        );
                        return;
                    }
                }
            }
        }
        Ok(_) => {
            // The decoder checks the CRC and decompresses (gzip, snappy, lz4, zstd).
            let mut buf = Bytes::copy_from_slice(bytes);
            match RecordBatchDecoder::decode(&mut buf) {
                Ok(set) => {
                    for r in &set.records {
                        use_record(r.offset, r.key.as_deref(), r.value.as_deref());
                    }
                }
                Err(e) => tracing::warn!(
                    offset = base_offset,
                    error = %e,
                    "skipping an unreadable compressed offsets batch"
                ),
            }
        }
        Err(e) => tracing::warn!(
            offset = base_offset,
            error = %e,
            "skipping an offsets batch in an unknown format"
        ),
    }
    if let Some((n_records, offset)) = skipped {
        tracing::warn!(
            offset,
            n_records,
            batch_offset = base_offset,
            "skipping offsets records that are not commits"
        );
    }
}

impl OffsetStore {
    /// Opens (creating if needed) the offsets topic and reads every commit in it, oldest first,
    /// so that replaying them in order leaves the latest per key.
    pub fn open(topics: &Topics) -> Result<(OffsetStore, Vec<StoredCommit>), TopicError> {
        let topic = match topics.get(OFFSETS_TOPIC) {
            Some(topic) => topic,
            None => topics.create(
                OFFSETS_TOPIC,
                TopicConfig {
                    partitions: 1,
                    compact: true,
                    retention_ms: Some(-1),
                    ..TopicConfig::default()
                },
            )?,
        };
        let partition = topic.partitions[0].clone();
        let reader = partition.reader();
        let mut commits = Vec::new();
        let mut offset = reader.log_start_offset();
        while offset < reader.high_watermark() {
            let result = reader.read(offset, 1 << 20)?;
            let mut next = offset;
            for (header, bytes) in Batches::new(&result.batches) {
                read_batch(&header, bytes, &mut commits);
                next = next.max(u64::try_from(header.last_offset()).unwrap_or(0) + 1);
            }
            if next <= offset {
                // Nothing readable moved the position (an empty read, or batches that claim to
                // end before it): what is left cannot be read in order.
                tracing::warn!(
                    offset,
                    "stopped reading the offsets log: no batch advances past this offset"
                );
                break;
            }
            offset = next;
        }
        Ok((OffsetStore { partition }, commits))
    }

    /// Appends the commits (`None`: a deletion, written as a tombstone) and answers the offset
    /// that [`OffsetStore::wait_durable`] must see fsynced. Appending is synchronous so that a
    /// caller holding the coordinator's lock writes in the order it decided.
    pub fn append(
        &self,
        group: &str,
        offsets: &[(TopicPartition, Option<CommittedOffset>)],
    ) -> Result<Option<u64>, ServiceError> {
        if offsets.is_empty() {
            return Ok(None);
        }
        let mut builder = BatchBuilder::new();
        let now = now_ms();
        for (tp, committed) in offsets {
            let value = committed.as_ref().map(|committed| {
                let mut value = committed.offset.to_be_bytes().to_vec();
                value.extend_from_slice(committed.metadata.as_bytes());
                value
            });
            builder.push(now, Some(&encode_key(group, tp)), value.as_deref(), &[]);
        }
        let mut batch = builder.finish();
        let info = self.partition.writer().append(&mut batch)?;
        Ok(Some(info.last_offset + 1))
    }

    /// Waits until the log is durable up to `end` (from [`OffsetStore::append`]).
    pub async fn wait_durable(&self, end: Option<u64>) -> Result<(), ServiceError> {
        if let Some(end) = end {
            self.partition.reader().wait_durable(end).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        let tp = ("orders.v1".to_string(), 7);
        let key = encode_key("group-a", &tp);
        let mut value = 42u64.to_be_bytes().to_vec();
        value.extend_from_slice(b"meta");
        let (group, got_tp, committed) = decode(&key, &value).unwrap();
        let committed = committed.unwrap();
        assert_eq!(
            (
                group.as_str(),
                got_tp,
                committed.offset,
                committed.metadata.as_str()
            ),
            ("group-a", tp, 42, "meta")
        );
        assert!(decode(b"garbage", b"x").is_none());
        assert_eq!(
            decode_deletion(&key),
            Some(("group-a".to_string(), ("orders.v1".to_string(), 7), None))
        );
    }
}
