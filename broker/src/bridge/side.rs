//! One side of a route: a Strand broker (strand-client) or a Kafka-protocol cluster (rdkafka),
//! behind the same operations: partition counts, topic creation, reading from positions,
//! durable sends, and the checkpoint record.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig as KafkaConfig, Message as _, Offset, TopicPartitionList};
use strand_client::native::ErrorCode;
use strand_client::{
    Acks, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, StartFrom, TopicSettings,
};

use super::config::ClusterConfig;
use super::CHECKPOINT_TOPIC;

/// How long a Kafka metadata or admin request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error("cluster {cluster}: {source}")]
    Strand {
        cluster: String,
        #[source]
        source: ClientError,
    },
    #[error("cluster {cluster}: {source}")]
    Kafka {
        cluster: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("checkpoint record of {0:?} is not valid: {1}")]
    BadCheckpoint(String, String),
}

/// A record on its way from one side to the other.
#[derive(Debug, Clone)]
pub struct MirroredRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl MirroredRecord {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Resolves when the destination acknowledged a record durably: its source (partition, offset).
pub type Ack = Pin<Box<dyn Future<Output = Result<(u32, u64), SideError>> + Send>>;

/// Resolves when a send is durable.
pub type Sent = Pin<Box<dyn Future<Output = Result<(), SideError>> + Send>>;

pub enum Cluster {
    Strand {
        name: String,
        client: Client,
        producer: Producer,
    },
    Kafka {
        name: String,
        config: KafkaConfig,
        producer: FutureProducer,
        admin: AdminClient<DefaultClientContext>,
    },
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster({})", self.name())
    }
}

impl Cluster {
    /// Connects and checks the cluster answers (a bad address fails here, at start).
    pub async fn connect(name: &str, config: &ClusterConfig) -> Result<Cluster, SideError> {
        match config {
            ClusterConfig::Strand { address } => {
                let strand = |source| SideError::Strand {
                    cluster: name.to_string(),
                    source,
                };
                let client = Client::connect(address.clone(), ClientConfig::default())
                    .await
                    .map_err(strand)?;
                client.admin().list_topics().await.map_err(strand)?;
                let producer = Producer::new(
                    client.clone(),
                    ProducerConfig {
                        acks: Acks::Durable,
                        linger: Duration::from_millis(2),
                        ..ProducerConfig::default()
                    },
                );
                Ok(Cluster::Strand {
                    name: name.to_string(),
                    client,
                    producer,
                })
            }
            ClusterConfig::Kafka {
                bootstrap,
                properties,
            } => {
                let kafka = |source| SideError::Kafka {
                    cluster: name.to_string(),
                    source,
                };
                let mut config = KafkaConfig::new();
                config.set("bootstrap.servers", bootstrap);
                for (k, v) in properties {
                    config.set(k, v);
                }
                let mut producer_config = config.clone();
                // No auto-creation through metadata requests: the bridge creates what it needs
                // with the partition count it needs.
                producer_config
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("linger.ms", "5")
                    .set("allow.auto.create.topics", "false");
                let producer: FutureProducer = producer_config.create().map_err(kafka)?;
                let admin: AdminClient<DefaultClientContext> = config.create().map_err(kafka)?;
                let p = producer.clone();
                tokio::task::spawn_blocking(move || {
                    p.client().fetch_metadata(None, KAFKA_TIMEOUT).map(|_| ())
                })
                .await
                .expect("metadata task")
                .map_err(kafka)?;
                Ok(Cluster::Kafka {
                    name: name.to_string(),
                    config,
                    producer,
                    admin,
                })
            }
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Cluster::Strand { name, .. } | Cluster::Kafka { name, .. } => name,
        }
    }

    fn strand_error(&self, source: ClientError) -> SideError {
        SideError::Strand {
            cluster: self.name().to_string(),
            source,
        }
    }

    fn kafka_error(&self, source: KafkaError) -> SideError {
        SideError::Kafka {
            cluster: self.name().to_string(),
            source,
        }
    }

    pub async fn partitions(&self, topic: &str) -> Result<u32, SideError> {
        match self {
            Cluster::Strand { client, .. } => match client.admin().describe_topic(topic).await {
                Ok(d) => Ok(d.partitions.len() as u32),
                Err(ClientError::Broker {
                    code: ErrorCode::UnknownTopicOrPartition,
                    ..
                }) => Err(SideError::UnknownTopic(topic.to_string())),
                Err(e) => Err(self.strand_error(e)),
            },
            Cluster::Kafka { producer, .. } => {
                let p = producer.clone();
                let name = topic.to_string();
                let count = tokio::task::spawn_blocking(move || {
                    let metadata = p.client().fetch_metadata(Some(&name), KAFKA_TIMEOUT)?;
                    Ok::<_, KafkaError>(match metadata.topics().first() {
                        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                            Some(t.partitions().len() as u32)
                        }
                        _ => None,
                    })
                })
                .await
                .expect("metadata task")
                .map_err(|e| self.kafka_error(e))?;
                count.ok_or_else(|| SideError::UnknownTopic(topic.to_string()))
            }
        }
    }

    async fn create(&self, topic: &str, partitions: u32, compact: bool) -> Result<(), SideError> {
        match self {
            Cluster::Strand { client, .. } => {
                let settings = TopicSettings {
                    partitions,
                    compact,
                    ..TopicSettings::default()
                };
                match client.admin().create_topic(topic, settings).await {
                    Ok(())
                    | Err(ClientError::Broker {
                        code: ErrorCode::TopicAlreadyExists,
                        ..
                    }) => Ok(()),
                    Err(e) => Err(self.strand_error(e)),
                }
            }
            Cluster::Kafka { admin, .. } => {
                let mut new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
                if compact {
                    new = new.set("cleanup.policy", "compact");
                }
                let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
                let results = admin
                    .create_topics(&[new], &options)
                    .await
                    .map_err(|e| self.kafka_error(e))?;
                for r in results {
                    match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => return Err(self.kafka_error(KafkaError::AdminOp(code))),
                    }
                }
                Ok(())
            }
        }
    }

    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), SideError> {
        tracing::info!(
            cluster = self.name(),
            topic,
            partitions,
            "creating destination topic"
        );
        self.create(topic, partitions, false).await
    }

    pub async fn ensure_checkpoint_topic(&self) -> Result<(), SideError> {
        self.create(CHECKPOINT_TOPIC, 1, true).await
    }

    /// The source positions saved for a route (empty when none).
    pub async fn read_checkpoint(&self, route: &str) -> Result<Vec<u64>, SideError> {
        let mut latest: Option<Vec<u8>> = None;
        let mut take = |key: Option<&[u8]>, value: Option<&[u8]>| {
            if key == Some(route.as_bytes()) {
                latest = value.map(<[u8]>::to_vec);
            }
        };
        match self {
            Cluster::Strand { client, .. } => {
                let d = client
                    .admin()
                    .describe_topic(CHECKPOINT_TOPIC)
                    .await
                    .map_err(|e| self.strand_error(e))?;
                let (start, end) = (
                    d.partitions[0].log_start_offset,
                    d.partitions[0].high_watermark,
                );
                if start < end {
                    let config = ConsumerConfig {
                        start: StartFrom::Offset(start),
                        fetch_wait: Duration::from_millis(100),
                        ..ConsumerConfig::default()
                    };
                    let mut consumer = Consumer::at_positions(
                        client.clone(),
                        CHECKPOINT_TOPIC,
                        vec![(0, start)],
                        config,
                    )
                    .await
                    .map_err(|e| self.strand_error(e))?;
                    loop {
                        let Ok(r) =
                            tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
                        else {
                            break; // the tail was compacted away
                        };
                        let r = r.map_err(|e| self.strand_error(e))?;
                        take(r.key.as_deref(), r.value.as_deref());
                        if r.offset + 1 >= end {
                            break;
                        }
                    }
                }
            }
            Cluster::Kafka { config, .. } => {
                let mut c = config.clone();
                c.set("group.id", "strand-bridge-checkpoints")
                    .set("enable.auto.commit", "false");
                let consumer: BaseConsumer = c.create().map_err(|e| self.kafka_error(e))?;
                let name = self.name().to_string();
                let records = tokio::task::spawn_blocking(move || {
                    let (low, high) =
                        consumer.fetch_watermarks(CHECKPOINT_TOPIC, 0, KAFKA_TIMEOUT)?;
                    let mut out = Vec::new();
                    if low >= high {
                        return Ok(out);
                    }
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(CHECKPOINT_TOPIC, 0, Offset::Offset(low))?;
                    consumer.assign(&tpl)?;
                    let deadline = std::time::Instant::now() + KAFKA_TIMEOUT;
                    while std::time::Instant::now() < deadline {
                        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                            continue;
                        };
                        let m = m?;
                        out.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
                        if m.offset() + 1 >= high {
                            break;
                        }
                    }
                    Ok(out)
                })
                .await
                .expect("checkpoint task")
                .map_err(|source| SideError::Kafka {
                    cluster: name,
                    source,
                })?;
                for (k, v) in records {
                    take(k.as_deref(), v.as_deref());
                }
            }
        }
        match latest {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| SideError::BadCheckpoint(route.to_string(), e.to_string())),
        }
    }

    /// Saves a route's source positions and waits until they are durable.
    pub async fn write_checkpoint(&self, route: &str, positions: &[u64]) -> Result<(), SideError> {
        self.queue_checkpoint(route, positions).await?.await
    }

    /// Queues a route's source positions; the future resolves once they are durable.
    pub async fn queue_checkpoint(
        &self,
        route: &str,
        positions: &[u64],
    ) -> Result<Sent, SideError> {
        let record = MirroredRecord {
            partition: 0,
            offset: 0,
            timestamp: crate::log::now_ms(),
            key: Some(route.as_bytes().to_vec()),
            value: Some(serde_json::to_vec(positions).expect("positions serialize")),
            headers: Vec::new(),
        };
        self.send(CHECKPOINT_TOPIC, 0, record).await
    }

    /// Queues a record; the returned future resolves once it is durable on this cluster.
    pub async fn send(
        &self,
        topic: &str,
        partition: u32,
        record: MirroredRecord,
    ) -> Result<Sent, SideError> {
        match self {
            Cluster::Strand { producer, name, .. } => {
                let r = ProducerRecord {
                    topic: topic.to_string(),
                    partition: Some(partition),
                    key: record.key.map(Bytes::from),
                    value: record.value.map(Bytes::from),
                    headers: record
                        .headers
                        .into_iter()
                        .map(|(k, v)| (k, v.map(Bytes::from)))
                        .collect(),
                    timestamp: Some(record.timestamp),
                };
                let delivery = producer.send(r).await.map_err(|e| self.strand_error(e))?;
                let cluster = name.clone();
                Ok(Box::pin(async move {
                    delivery
                        .await
                        .map(|_| ())
                        .map_err(|source| SideError::Strand { cluster, source })
                }))
            }
            Cluster::Kafka { producer, name, .. } => {
                let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                for (k, v) in &record.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: v.as_deref(),
                    });
                }
                loop {
                    let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                        .partition(partition as i32)
                        .timestamp(record.timestamp)
                        .headers(headers.clone());
                    if let Some(k) = &record.key {
                        fr = fr.key(k);
                    }
                    if let Some(v) = &record.value {
                        fr = fr.payload(v);
                    }
                    match producer.send_result(fr) {
                        Ok(delivery) => {
                            let cluster = name.clone();
                            return Ok(Box::pin(async move {
                                match delivery.await {
                                    Ok(Ok(_)) => Ok(()),
                                    Ok(Err((source, _))) => {
                                        Err(SideError::Kafka { cluster, source })
                                    }
                                    Err(_) => Err(SideError::Kafka {
                                        cluster,
                                        source: KafkaError::Canceled,
                                    }),
                                }
                            }));
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            // librdkafka's own queue is the backpressure here.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => return Err(self.kafka_error(e)),
                    }
                }
            }
        }
    }

    /// Reads `topic` from `positions` (one per partition) on.
    pub async fn reader(&self, topic: &str, positions: &[u64]) -> Result<Reader, SideError> {
        match self {
            Cluster::Strand { client, .. } => {
                let config = ConsumerConfig {
                    fetch_wait: Duration::from_millis(200),
                    ..ConsumerConfig::default()
                };
                let at = positions
                    .iter()
                    .enumerate()
                    .map(|(p, o)| (p as u32, *o))
                    .collect();
                let consumer = Consumer::at_positions(client.clone(), topic, at, config)
                    .await
                    .map_err(|e| self.strand_error(e))?;
                Ok(Reader::Strand(Box::new(consumer), self.name().to_string()))
            }
            Cluster::Kafka { config, .. } => {
                let mut c = config.clone();
                c.set("group.id", format!("strand-bridge-{topic}"))
                    .set("enable.auto.commit", "false")
                    .set("fetch.wait.max.ms", "100");
                let consumer: StreamConsumer = c.create().map_err(|e| self.kafka_error(e))?;
                let mut tpl = TopicPartitionList::new();
                for (p, o) in positions.iter().enumerate() {
                    tpl.add_partition_offset(topic, p as i32, Offset::Offset(*o as i64))
                        .map_err(|e| self.kafka_error(e))?;
                }
                consumer.assign(&tpl).map_err(|e| self.kafka_error(e))?;
                Ok(Reader::Kafka(Box::new(consumer), self.name().to_string()))
            }
        }
    }
}

/// Reads a topic from given positions on either kind of cluster.
pub enum Reader {
    Strand(Box<Consumer>, String),
    Kafka(Box<StreamConsumer>, String),
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reader::Strand(_, c) | Reader::Kafka(_, c) => write!(f, "Reader({c})"),
        }
    }
}

impl Reader {
    pub async fn next(&mut self) -> Result<MirroredRecord, SideError> {
        match self {
            Reader::Strand(consumer, cluster) => {
                let r = consumer.next().await.map_err(|source| SideError::Strand {
                    cluster: cluster.clone(),
                    source,
                })?;
                Ok(MirroredRecord {
                    partition: r.partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key.map(|k| k.to_vec()),
                    value: r.value.map(|v| v.to_vec()),
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(k, v)| {
                            (
                                String::from_utf8_lossy(&k).into_owned(),
                                v.map(|v| v.to_vec()),
                            )
                        })
                        .collect(),
                })
            }
            Reader::Kafka(consumer, cluster) => {
                let m = consumer.recv().await.map_err(|source| SideError::Kafka {
                    cluster: cluster.clone(),
                    source,
                })?;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(MirroredRecord {
                    partition: m.partition() as u32,
                    offset: m.offset() as u64,
                    timestamp: m.timestamp().to_millis().unwrap_or(0),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                })
            }
        }
    }
}
