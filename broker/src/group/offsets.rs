//! Committed offsets, kept durably in the internal compacted topic `__consumer_offsets`.
//!
//! One record per (group, topic, partition): the key is `group \0 topic \0 partition` (the
//! partition as 4 big-endian bytes), the value the offset (8 big-endian bytes) followed by the
//! commit's metadata in UTF-8. Compaction keeps the latest commit per key, so the topic stays
//! about as large as the number of committed partitions. A commit is acknowledged only after an
//! fsync covering it.

use std::sync::Arc;

use strand_client::batch::{BatchBuilder, Batches, Records};

use super::{CommittedOffset, TopicPartition};
use crate::log::{now_ms, LogError};
use crate::service::ServiceError;
use crate::topics::{Partition, TopicConfig, TopicError, Topics};

/// Name of the internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone)]
pub struct OffsetStore {
    partition: Arc<Partition>,
}

/// One stored commit.
pub type StoredCommit = (String, TopicPartition, CommittedOffset);

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
        CommittedOffset { offset, metadata },
    ))
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
            if result.batches.is_empty() {
                break;
            }
            for (header, bytes) in Batches::new(&result.batches) {
                for record in Records::new(bytes, &header) {
                    let record = record.map_err(LogError::from)?;
                    if let (Some(key), Some(value)) = (record.key, record.value) {
                        match decode(key, value) {
                            Some(commit) => commits.push(commit),
                            None => tracing::warn!(
                                offset = header.base_offset,
                                "skipping an unreadable offsets record"
                            ),
                        }
                    }
                }
                offset = header.last_offset() as u64 + 1;
            }
        }
        Ok((OffsetStore { partition }, commits))
    }

    /// Appends the commits and waits until they are durable.
    pub async fn persist(
        &self,
        group: &str,
        offsets: &[(TopicPartition, CommittedOffset)],
    ) -> Result<(), ServiceError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut builder = BatchBuilder::new();
        let now = now_ms();
        for (tp, committed) in offsets {
            let mut value = committed.offset.to_be_bytes().to_vec();
            value.extend_from_slice(committed.metadata.as_bytes());
            builder.push(now, Some(&encode_key(group, tp)), Some(&value), &[]);
        }
        let mut batch = builder.finish();
        let info = self.partition.writer().append(&mut batch)?;
        self.partition
            .reader()
            .wait_durable(info.last_offset + 1)
            .await?;
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
    }
}
