//! Transaction state, kept durably in the internal compacted topic `__transaction_state`.
//!
//! One record per change of a transaction: the key is the transactional id (UTF-8), the value
//! the whole [`TxnMeta`] as JSON. Compaction keeps the latest per id. The coordinator answers a
//! request only after the record of the change it made is fsynced, so what a client was told
//! survives `kill -9`.
//!
//! Only the broker writes this topic, but the log may hold anything a valid batch can (a
//! damaged disk, a restored backup): a record that cannot be read is skipped with a warning.

use std::collections::HashMap;
use std::sync::Arc;

use strand_client::batch::{BatchBuilder, Batches, Compression, Records};

use super::coordinator::TxnMeta;
use crate::log::now_ms;
use crate::service::ServiceError;
use crate::topics::{Partition, TopicConfig, TopicError, Topics};

/// Name of the internal topic holding transaction state.
pub const TXN_STATE_TOPIC: &str = "__transaction_state";

#[derive(Debug, Clone)]
pub struct TxnStore {
    partition: Arc<Partition>,
}

impl TxnStore {
    /// Opens (creating if needed) the state topic and returns the latest state of every
    /// transactional id in it.
    pub fn open(topics: &Topics) -> Result<(TxnStore, HashMap<String, TxnMeta>), TopicError> {
        let topic = match topics.get(TXN_STATE_TOPIC) {
            Some(topic) => topic,
            None => topics.create(
                TXN_STATE_TOPIC,
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
        let mut states = HashMap::new();
        let mut offset = reader.log_start_offset();
        while offset < reader.high_watermark() {
            let result = reader.read(offset, 1 << 20)?;
            let mut next = offset;
            for (header, bytes) in Batches::new(&result.batches) {
                next = next.max(u64::try_from(header.last_offset()).unwrap_or(0) + 1);
                if header.is_control() {
                    continue;
                }
                if header.compression() != Ok(Compression::None) {
                    tracing::warn!(
                        offset = header.base_offset,
                        "skipping a transaction state batch that is not plain"
                    );
                    continue;
                }
                for record in Records::new(bytes, &header) {
                    let Ok(record) = record else {
                        tracing::warn!(
                            offset = header.base_offset,
                            "skipping the rest of an unreadable transaction state batch"
                        );
                        break;
                    };
                    let id = record.key.and_then(|k| std::str::from_utf8(k).ok());
                    match (id, record.value) {
                        (Some(id), None) => {
                            states.remove(id);
                        }
                        (Some(id), Some(value)) => match serde_json::from_slice(value) {
                            Ok(meta) => {
                                states.insert(id.to_string(), meta);
                            }
                            Err(e) => tracing::warn!(
                                offset = header.base_offset,
                                error = %e,
                                "skipping an unreadable transaction state record"
                            ),
                        },
                        (None, _) => tracing::warn!(
                            offset = header.base_offset,
                            "skipping a transaction state record without a transactional id"
                        ),
                    }
                }
            }
            if next <= offset {
                tracing::warn!(
                    offset,
                    "stopped reading the transaction state log: no batch advances past this offset"
                );
                break;
            }
            offset = next;
        }
        Ok((TxnStore { partition }, states))
    }

    /// Appends the state of `transactional_id` (short, no waiting) and returns its offset;
    /// call it under the coordinator's lock so records go in the order of the changes.
    pub fn append(&self, transactional_id: &str, meta: &TxnMeta) -> Result<u64, ServiceError> {
        let value = serde_json::to_vec(meta)
            .map_err(|e| ServiceError::Internal(format!("encoding transaction state: {e}")))?;
        let mut builder = BatchBuilder::with_capacity(value.len() + transactional_id.len() + 96);
        builder.push(
            now_ms(),
            Some(transactional_id.as_bytes()),
            Some(&value),
            &[],
        );
        let mut batch = builder.finish();
        Ok(self.partition.writer().append(&mut batch)?.last_offset)
    }

    /// Waits until the record at `offset` is fsynced.
    pub async fn wait_durable(&self, offset: u64) -> Result<(), ServiceError> {
        self.partition.reader().wait_durable(offset + 1).await?;
        Ok(())
    }
}
