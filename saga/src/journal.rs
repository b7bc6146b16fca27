//! The orchestrator's durable state on a Strand broker, through `strand-client`:
//!
//! - `__saga_journal`: every saga transition ([`Entry`], JSON), keyed and so partitioned by
//!   saga id, appended with acks=durable (fsynced) before the side effect it announces.
//! - `__saga_snapshots` (compacted): the latest state of each saga, keyed by saga id, plus a
//!   checkpoint record naming the journal offsets the snapshots cover, so a restart reads the
//!   snapshots and only the journal after the checkpoint.
//! - `__saga_definitions` (compacted): every definition version.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strand_client::native::ErrorCode;
use strand_client::producer::DeliveryFuture;
use strand_client::{
    Acks, Client, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    StartFrom, TopicSettings,
};

use crate::definition::Definition;
use crate::engine::{Entry, Saga};

pub const JOURNAL_TOPIC: &str = "__saga_journal";
pub const SNAPSHOT_TOPIC: &str = "__saga_snapshots";
pub const DEFINITION_TOPIC: &str = "__saga_definitions";
const CHECKPOINT_KEY: &str = "__checkpoint";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("journal broker: {0}")]
    Broker(#[from] ClientError),
    #[error("journal record at {topic}/{partition}@{offset} is not valid: {reason}")]
    Corrupt {
        topic: String,
        partition: u32,
        offset: u64,
        reason: String,
    },
}

/// Where snapshots end and the journal must be read from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// Per journal partition, the first offset the snapshots do not cover.
    journal_offsets: Vec<u64>,
}

/// What a restart recovers.
#[derive(Debug, Default)]
pub struct Recovered {
    pub definitions: Vec<Definition>,
    /// Sagas as of the last checkpoint.
    pub snapshots: Vec<Saga>,
    /// Journal entries after the checkpoint, in order per saga.
    pub entries: Vec<Entry>,
}

#[derive(Debug)]
pub struct Journal {
    client: Client,
    producer: Producer,
    partitions: u32,
}

impl Journal {
    /// Creates the internal topics when missing (`partitions` journal partitions).
    pub async fn open(client: Client, partitions: u32) -> Result<Journal, JournalError> {
        let admin = client.admin();
        for (topic, n, compact) in [
            (JOURNAL_TOPIC, partitions, false),
            (SNAPSHOT_TOPIC, partitions, true),
            (DEFINITION_TOPIC, 1, true),
        ] {
            let settings = TopicSettings {
                partitions: n,
                compact,
                retention_ms: Some(-1),
                ..TopicSettings::default()
            };
            ensure_topic(&client, topic, settings).await?;
        }
        let partitions = admin.describe_topic(JOURNAL_TOPIC).await?.partitions.len() as u32;
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                acks: Acks::Durable,
                linger: Duration::from_millis(1),
                ..ProducerConfig::default()
            },
        );
        Ok(Journal {
            client,
            producer,
            partitions,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Queues entries in order; each future resolves when its entry is fsynced.
    pub async fn append(&self, entries: &[Entry]) -> Result<Vec<DeliveryFuture>, JournalError> {
        let mut deliveries = Vec::with_capacity(entries.len());
        for e in entries {
            let value = serde_json::to_vec(e).expect("entries serialize");
            let record = ProducerRecord::new(JOURNAL_TOPIC, value).key(e.saga_id.clone());
            deliveries.push(self.producer.send(record).await?);
        }
        Ok(deliveries)
    }

    /// Stores a definition version durably.
    pub async fn put_definition(&self, definition: &Definition) -> Result<(), JournalError> {
        let value = serde_json::to_vec(definition).expect("definitions serialize");
        let key = format!("{}/{}", definition.name, definition.version);
        let record = ProducerRecord::new(DEFINITION_TOPIC, value).key(key);
        self.producer.send(record).await?.await?;
        Ok(())
    }

    /// Writes the given sagas' snapshots and then the checkpoint: everything journaled so far
    /// is covered. The caller must not append while this runs.
    pub async fn checkpoint(&self, sagas: &[&Saga]) -> Result<(), JournalError> {
        // Everything queued is acknowledged, so the journal's ends are exact.
        self.producer.flush().await?;
        let journal = self.client.admin().describe_topic(JOURNAL_TOPIC).await?;
        let mut deliveries = Vec::new();
        for saga in sagas {
            let value = serde_json::to_vec(saga).expect("sagas serialize");
            let record = ProducerRecord::new(SNAPSHOT_TOPIC, value).key(saga.id.clone());
            deliveries.push(self.producer.send(record).await?);
        }
        for d in deliveries {
            d.await?;
        }
        let checkpoint = Checkpoint {
            journal_offsets: journal
                .partitions
                .iter()
                .map(|p| p.high_watermark)
                .collect(),
        };
        // One record under a fixed key: compaction keeps the latest.
        let value = serde_json::to_vec(&checkpoint).expect("checkpoint serializes");
        let record = ProducerRecord::new(SNAPSHOT_TOPIC, value).key(CHECKPOINT_KEY);
        self.producer.send(record).await?.await?;
        Ok(())
    }

    /// Reads definitions, snapshots and the journal after the checkpoint.
    pub async fn recover(&self) -> Result<Recovered, JournalError> {
        let mut recovered = Recovered::default();
        let mut definitions: HashMap<String, Definition> = HashMap::new();
        read_to_end(&self.client, DEFINITION_TOPIC, None, |key, value, at| {
            let d: Definition = parse(value, at)?;
            definitions.insert(key, d);
            Ok(())
        })
        .await?;
        recovered.definitions = definitions.into_values().collect();
        recovered
            .definitions
            .sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));

        let mut snapshots: HashMap<String, Saga> = HashMap::new();
        let mut checkpoint = Checkpoint::default();
        read_to_end(&self.client, SNAPSHOT_TOPIC, None, |key, value, at| {
            if key == CHECKPOINT_KEY {
                checkpoint = parse(value, at)?;
            } else {
                snapshots.insert(key, parse(value, at)?);
            }
            Ok(())
        })
        .await?;
        recovered.snapshots = snapshots.into_values().collect();

        let from: Vec<u64> = (0..self.partitions as usize)
            .map(|p| checkpoint.journal_offsets.get(p).copied().unwrap_or(0))
            .collect();
        let entries = &mut recovered.entries;
        read_to_end(&self.client, JOURNAL_TOPIC, Some(from), |_, value, at| {
            entries.push(parse(value, at)?);
            Ok(())
        })
        .await?;
        Ok(recovered)
    }
}

/// Creates a topic unless it exists.
pub async fn ensure_topic(
    client: &Client,
    topic: &str,
    settings: TopicSettings,
) -> Result<(), ClientError> {
    match client.admin().create_topic(topic, settings).await {
        Ok(()) => Ok(()),
        Err(ClientError::Broker {
            code: ErrorCode::TopicAlreadyExists,
            ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Where a record came from, for error messages.
type At = (String, u32, u64);

fn parse<T: serde::de::DeserializeOwned>(value: &[u8], at: &At) -> Result<T, JournalError> {
    serde_json::from_slice(value).map_err(|e| JournalError::Corrupt {
        topic: at.0.clone(),
        partition: at.1,
        offset: at.2,
        reason: e.to_string(),
    })
}

/// Reads every partition of `topic` from `from` (or the start) to its end as of now, calling
/// `f(key, value, where)` per record in partition order.
async fn read_to_end(
    client: &Client,
    topic: &str,
    from: Option<Vec<u64>>,
    mut f: impl FnMut(String, &[u8], &At) -> Result<(), JournalError>,
) -> Result<(), JournalError> {
    let description = client.admin().describe_topic(topic).await?;
    for p in &description.partitions {
        let start = from
            .as_ref()
            .and_then(|f| f.get(p.partition as usize).copied())
            .unwrap_or(0)
            .max(p.log_start_offset);
        if start >= p.high_watermark {
            continue;
        }
        let config = ConsumerConfig {
            start: StartFrom::Offset(start),
            fetch_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        };
        let mut consumer =
            Consumer::at_positions(client.clone(), topic, vec![(p.partition, start)], config)
                .await?;
        loop {
            // The last offsets may be gone (compaction): a quiet second means the end.
            let Ok(record) = tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
            else {
                tracing::warn!(
                    topic,
                    partition = p.partition,
                    "stopped short of the high watermark"
                );
                break;
            };
            let record = record?;
            let key = record
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let at = (topic.to_string(), p.partition, record.offset);
            // Compaction tombstones carry no value.
            if let Some(value) = &record.value {
                f(key, value, &at)?;
            }
            if record.offset + 1 >= p.high_watermark {
                break;
            }
        }
    }
    Ok(())
}
