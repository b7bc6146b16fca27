//! One API over either kind of cluster Strand works with: a Strand broker (through
//! `strand-client`) or a Kafka-protocol cluster (through `rdkafka`). The bridge mirrors between
//! two of them; the saga orchestrator keeps its journal on one. What both need: partition
//! counts and watermarks, topic creation, durable sends, reading from positions, reading to the
//! current end, and consumer-group members.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig as KafkaConfig, Message as _, Offset, TopicPartitionList};
use serde::Deserialize;
use strand_client::native::ErrorCode;
use strand_client::{
    Acks, Client, ClientConfig, ClientError, ClientTlsConfig, Consumer, ConsumerConfig,
    GroupConfig, GroupConsumer, OffsetReset, Producer, ProducerConfig, ProducerRecord, SaslConfig,
    TopicSettings,
};

/// How long a Kafka metadata or admin request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Cluster::read_to_end`] keeps trying to reach the end before it fails.
pub const READ_TO_END_LIMIT: Duration = Duration::from_secs(120);
/// How often a read to the end checks its reader's positions while no record comes.
const READ_POLL: Duration = Duration::from_millis(200);
const READ_BACKOFF_MIN: Duration = Duration::from_millis(100);
const READ_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How to reach a cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClusterConfig {
    /// A Strand broker, through its native protocol; `security` for a listener with TLS or
    /// SASL.
    Strand {
        address: String,
        #[serde(default)]
        security: StrandSecurity,
    },
    /// A Kafka-protocol cluster through librdkafka; `properties` go to librdkafka unchanged
    /// (`security.protocol`, `sasl.*`, `ssl.*`, ...).
    Kafka {
        bootstrap: String,
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
}

/// How to reach a Strand broker's secured native listener: TLS (a CA bundle, optionally a
/// client certificate) for `SSL` and `SASL_SSL`, a user and password for `SASL_*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrandSecurity {
    /// PEM bundle of the CAs the broker's certificate must chain to; turns TLS on.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for a listener that asks for one (its CN is the principal).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Name the broker's certificate must carry; default the host of `address`.
    pub tls_server_name: Option<String>,
    /// SASL user; needs `password_file`.
    pub user: Option<String>,
    /// File whose first line is the SASL password.
    pub password_file: Option<PathBuf>,
    /// `SCRAM-SHA-512` (default), `SCRAM-SHA-256` or `PLAIN`.
    pub sasl_mechanism: Option<String>,
}

impl StrandSecurity {
    /// The client's connection settings: reads the password file; a client certificate
    /// without its key (or the other way), or a user without a password, is an error.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let mut config = ClientConfig::default();
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("a client certificate needs its key, and a key its certificate".into());
        }
        if let Some(ca_file) = &self.tls_ca_file {
            config.connection.tls = Some(ClientTlsConfig {
                ca_file: ca_file.clone(),
                cert_file: self.tls_cert_file.clone(),
                key_file: self.tls_key_file.clone(),
                server_name: self.tls_server_name.clone(),
            });
        } else if self.tls_cert_file.is_some() || self.tls_server_name.is_some() {
            return Err("a client certificate or TLS server name needs a TLS CA file".into());
        }
        match (&self.user, &self.password_file) {
            (Some(user), Some(file)) => {
                config.connection.sasl = Some(SaslConfig {
                    mechanism: self
                        .sasl_mechanism
                        .as_deref()
                        .unwrap_or("SCRAM-SHA-512")
                        .parse()?,
                    username: user.clone(),
                    password: strand_client::sasl::read_password_file(file)?,
                });
            }
            (None, None) if self.sasl_mechanism.is_none() => {}
            _ => return Err("SASL needs both a user and a password file".into()),
        }
        Ok(config)
    }

    /// Whether these settings connect over TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls_ca_file.is_some()
    }

    /// Whether these settings authenticate with SASL.
    pub fn uses_sasl(&self) -> bool {
        self.user.is_some()
    }
}

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
    /// A read to the end did not reach it in time: per partition, the end taken at the start
    /// and the offset reached.
    #[error(
        "topic {topic:?}: reading to the end did not finish within {waited:?}: \
         partition ends {ends:?}, reached {reached:?} (is the cluster reachable?)"
    )]
    ReadIncomplete {
        topic: String,
        waited: Duration,
        ends: BTreeMap<u32, u64>,
        reached: BTreeMap<u32, u64>,
    },
}

/// A record read from, or on its way to, a cluster.
#[derive(Debug, Clone, Default)]
pub struct MirroredRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl MirroredRecord {
    /// A record to send: key and value, stamped now.
    pub fn new(key: Option<Vec<u8>>, value: Vec<u8>) -> MirroredRecord {
        MirroredRecord {
            timestamp: strand_broker::log::now_ms(),
            key,
            value: Some(value),
            ..MirroredRecord::default()
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Resolves when the destination acknowledged a record durably: its source (partition, offset).
pub type Ack = Pin<Box<dyn Future<Output = Result<(u32, u64), SideError>> + Send>>;

/// Resolves when a send is durable, with the record's offset in its partition.
pub type Sent = Pin<Box<dyn Future<Output = Result<u64, SideError>> + Send>>;

/// What a new topic keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// The cluster's default retention.
    Plain,
    /// The latest record per key, forever.
    Compacted,
    /// Every record, forever (never deleted by age or size).
    Kept,
}

/// A consumer-group member's settings, for either kind of cluster.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub group: String,
    pub topics: Vec<String>,
    pub client_id: String,
    /// Where a partition without a committed offset starts: the beginning, or new records only.
    pub from_earliest: bool,
    /// Commit consumed positions in the background; otherwise only [`GroupReader::commit`].
    pub auto_commit: bool,
}

pub enum Cluster {
    Strand {
        name: String,
        client: Client,
        /// acks=durable: answered after an fsync.
        producer: Producer,
        /// acks=leader: answered once written, for records a timeout retries anyway.
        leader: Producer,
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
            ClusterConfig::Strand { address, security } => {
                let strand = |source| SideError::Strand {
                    cluster: name.to_string(),
                    source,
                };
                let config = security
                    .client_config()
                    .map_err(|e| strand(ClientError::Invalid(e)))?;
                let client = Client::connect(address.clone(), config)
                    .await
                    .map_err(strand)?;
                client.admin().list_topics().await.map_err(strand)?;
                Ok(Cluster::strand(name, client))
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
                // No auto-creation through metadata requests: topics are created with the
                // partition count they need. Keyed records go where Java clients put them.
                producer_config
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("linger.ms", "5")
                    .set("partitioner", "murmur2_random")
                    .set("allow.auto.create.topics", "false");
                let producer: FutureProducer = producer_config.create().map_err(kafka)?;
                let admin: AdminClient<DefaultClientContext> = config.create().map_err(kafka)?;
                let p = producer.clone();
                tokio::task::spawn_blocking(move || {
                    p.client().fetch_metadata(None, KAFKA_TIMEOUT).map(|_| ())
                })
                .await
                .unwrap_or(Err(KafkaError::Canceled))
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

    /// A Strand broker through a client already connected.
    pub fn strand(name: &str, client: Client) -> Cluster {
        let producer = |acks| {
            Producer::new(
                client.clone(),
                ProducerConfig {
                    acks,
                    linger: Duration::from_millis(2),
                    // A saga's step waits for its journal entry, command and reply in turn:
                    // at low load each would otherwise wait out the linger (a lone saga took
                    // 39 ms, 3 ms without it); under load batches still fill while one is out.
                    send_when_idle: true,
                    ..ProducerConfig::default()
                },
            )
        };
        Cluster::Strand {
            name: name.to_string(),
            producer: producer(Acks::Durable),
            leader: producer(Acks::Leader),
            client,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Cluster::Strand { name, .. } | Cluster::Kafka { name, .. } => name,
        }
    }

    /// The librdkafka settings (bootstrap and pass-through properties) of a Kafka cluster.
    pub fn kafka_config(&self) -> Option<&KafkaConfig> {
        match self {
            Cluster::Strand { .. } => None,
            Cluster::Kafka { config, .. } => Some(config),
        }
    }

    pub(crate) fn strand_error(&self, source: ClientError) -> SideError {
        SideError::Strand {
            cluster: self.name().to_string(),
            source,
        }
    }

    pub(crate) fn kafka_error(&self, source: KafkaError) -> SideError {
        SideError::Kafka {
            cluster: self.name().to_string(),
            source,
        }
    }

    pub async fn partitions(&self, topic: &str) -> Result<u32, SideError> {
        Ok(self.watermarks(topic).await?.len() as u32)
    }

    /// Per partition, its first and next offset (log start and high watermark).
    pub async fn watermarks(&self, topic: &str) -> Result<Vec<(u64, u64)>, SideError> {
        match self {
            Cluster::Strand { client, .. } => match client.admin().describe_topic(topic).await {
                Ok(d) => Ok(d
                    .partitions
                    .iter()
                    .map(|p| (p.log_start_offset, p.high_watermark))
                    .collect()),
                Err(ClientError::Broker {
                    code: ErrorCode::UnknownTopicOrPartition,
                    ..
                }) => Err(SideError::UnknownTopic(topic.to_string())),
                Err(e) => Err(self.strand_error(e)),
            },
            Cluster::Kafka { producer, .. } => {
                let p = producer.clone();
                let name = topic.to_string();
                let marks = tokio::task::spawn_blocking(move || {
                    let metadata = p.client().fetch_metadata(Some(&name), KAFKA_TIMEOUT)?;
                    let count = match metadata.topics().first() {
                        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                            t.partitions().len()
                        }
                        _ => return Ok(None),
                    };
                    let mut marks = Vec::with_capacity(count);
                    for partition in 0..count {
                        let (low, high) =
                            p.client()
                                .fetch_watermarks(&name, partition as i32, KAFKA_TIMEOUT)?;
                        marks.push((low.max(0) as u64, high.max(0) as u64));
                    }
                    Ok::<_, KafkaError>(Some(marks))
                })
                .await
                .unwrap_or(Err(KafkaError::Canceled))
                .map_err(|e| self.kafka_error(e))?;
                marks.ok_or_else(|| SideError::UnknownTopic(topic.to_string()))
            }
        }
    }

    /// Creates a topic unless it exists; on a Kafka cluster with the cluster's
    /// `default.replication.factor`.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        partitions: u32,
        kind: TopicKind,
    ) -> Result<(), SideError> {
        self.ensure_topic_replicated(topic, partitions, kind, None)
            .await
    }

    /// As [`Cluster::ensure_topic`], with `replication` copies of each partition on a Kafka
    /// cluster (`None`: the cluster's default, sent as -1). A Strand broker is one node: it
    /// keeps one copy whatever is asked. An existing topic is left as it is.
    pub async fn ensure_topic_replicated(
        &self,
        topic: &str,
        partitions: u32,
        kind: TopicKind,
        replication: Option<u16>,
    ) -> Result<(), SideError> {
        let compact = kind == TopicKind::Compacted;
        let keep = kind != TopicKind::Plain;
        match self {
            Cluster::Strand { client, .. } => {
                let settings = TopicSettings {
                    partitions,
                    compact,
                    retention_ms: keep.then_some(-1),
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
                let factor = replication.map_or(-1, i32::from);
                let mut new =
                    NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(factor));
                if compact {
                    new = new.set("cleanup.policy", "compact");
                } else if keep {
                    new = new.set("retention.ms", "-1");
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
        self.ensure_topic(topic, partitions, TopicKind::Plain).await
    }

    /// Queues a record for `partition` (by its key when `None`, with Kafka's murmur2); the
    /// returned future resolves once it is durable on this cluster (Strand: fsynced; Kafka:
    /// acks=all). Sends to one partition stay in order.
    pub async fn send(
        &self,
        topic: &str,
        partition: Option<u32>,
        record: MirroredRecord,
    ) -> Result<Sent, SideError> {
        self.send_with(topic, partition, record, true).await
    }

    /// As [`Cluster::send`], but on a Strand broker answered once the record is written, before
    /// the fsync: for messages whose loss a timeout covers (commands, replies). Kafka is always
    /// acks=all.
    pub async fn send_unsynced(
        &self,
        topic: &str,
        partition: Option<u32>,
        record: MirroredRecord,
    ) -> Result<Sent, SideError> {
        self.send_with(topic, partition, record, false).await
    }

    async fn send_with(
        &self,
        topic: &str,
        partition: Option<u32>,
        record: MirroredRecord,
        durable: bool,
    ) -> Result<Sent, SideError> {
        match self {
            Cluster::Strand {
                producer,
                leader,
                name,
                ..
            } => {
                let producer = if durable { producer } else { leader };
                let r = ProducerRecord {
                    topic: topic.to_string(),
                    partition,
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
                        .map(|d| d.offset)
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
                        .timestamp(record.timestamp)
                        .headers(headers.clone());
                    if let Some(p) = partition {
                        fr = fr.partition(p as i32);
                    }
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
                                    Ok(Ok(delivered)) => Ok(delivered.offset as u64),
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

    /// Waits until everything sent so far is acknowledged.
    pub async fn flush(&self) -> Result<(), SideError> {
        match self {
            Cluster::Strand {
                producer, leader, ..
            } => {
                leader.flush().await.map_err(|e| self.strand_error(e))?;
                producer.flush().await.map_err(|e| self.strand_error(e))
            }
            Cluster::Kafka { producer, .. } => {
                // The rdkafka crate's flush polls the producer 100 ms at a time, and a poll
                // returns only at its deadline when the producer's own thread took the events:
                // a flush with anything outstanding would cost up to 100 ms more than the
                // acknowledgements take. Wait for the queue to drain in 1 ms steps instead (the
                // producer's thread serves the delivery reports); the flush after it returns at
                // once, or reports what librdkafka still holds.
                let deadline = tokio::time::Instant::now() + KAFKA_TIMEOUT;
                while producer.in_flight_count() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let p = producer.clone();
                tokio::task::spawn_blocking(move || p.flush(KAFKA_TIMEOUT))
                    .await
                    .unwrap_or(Err(KafkaError::Canceled))
                    .map_err(|e| self.kafka_error(e))
            }
        }
    }

    /// Reads `topic` from `positions` (one per partition, from partition 0) on.
    pub async fn reader(&self, topic: &str, positions: &[u64]) -> Result<Reader, SideError> {
        let at = positions
            .iter()
            .enumerate()
            .map(|(p, o)| (p as u32, *o))
            .collect();
        self.reader_at(topic, at).await
    }

    /// Reads the given partitions of `topic` from the given offsets on.
    pub async fn reader_at(&self, topic: &str, at: Vec<(u32, u64)>) -> Result<Reader, SideError> {
        self.open_reader(topic, at, false).await
    }

    /// A reader; `eof`: a Kafka reader reports reaching a partition's end as
    /// `KafkaError::PartitionEOF`.
    async fn open_reader(
        &self,
        topic: &str,
        at: Vec<(u32, u64)>,
        eof: bool,
    ) -> Result<Reader, SideError> {
        match self {
            Cluster::Strand { client, .. } => {
                let config = ConsumerConfig {
                    fetch_wait: Duration::from_millis(100),
                    ..ConsumerConfig::default()
                };
                let consumer = Consumer::at_positions(client.clone(), topic, at, config)
                    .await
                    .map_err(|e| self.strand_error(e))?;
                Ok(Reader::Strand(Box::new(consumer), self.name().to_string()))
            }
            Cluster::Kafka { config, .. } => {
                // Partitions are assigned, not subscribed: the group id is never joined and no
                // offsets are committed under it.
                let mut c = config.clone();
                c.set("group.id", "strand-reader")
                    .set("enable.auto.commit", "false")
                    .set("fetch.wait.max.ms", "100")
                    .set("enable.partition.eof", eof.to_string());
                let consumer: StreamConsumer = c.create().map_err(|e| self.kafka_error(e))?;
                let mut tpl = TopicPartitionList::new();
                for (p, o) in at {
                    tpl.add_partition_offset(topic, p as i32, Offset::Offset(o as i64))
                        .map_err(|e| self.kafka_error(e))?;
                }
                consumer.assign(&tpl).map_err(|e| self.kafka_error(e))?;
                Ok(Reader::Kafka(Box::new(consumer), self.name().to_string()))
            }
        }
    }

    /// Reads the given partitions of `topic`, each from its offset (or its log start, if later)
    /// to its high watermark as of now, in order per partition, within
    /// [`READ_TO_END_LIMIT`]. See [`Cluster::read_to_end_within`].
    pub async fn read_to_end(
        &self,
        topic: &str,
        from: &[(u32, u64)],
    ) -> Result<Vec<MirroredRecord>, SideError> {
        self.read_to_end_within(topic, from, READ_TO_END_LIMIT)
            .await
    }

    /// As [`Cluster::read_to_end`], giving up after `limit`. The end of a partition is its
    /// high watermark taken when the read begins, and a partition is done when the reader's
    /// position (the next offset it yields or fetches, which moves past offsets compaction or
    /// transaction markers left empty) reaches it: never on a quiet spell, so a broker
    /// restart or leader election during the read delays it instead of cutting it short.
    /// Errors while reading are retried with a backoff (doubling from 100 ms to 2 s); if the
    /// read is not done after `limit`, it fails with [`SideError::ReadIncomplete`] rather than
    /// return less than was there.
    pub async fn read_to_end_within(
        &self,
        topic: &str,
        from: &[(u32, u64)],
        limit: Duration,
    ) -> Result<Vec<MirroredRecord>, SideError> {
        let started = tokio::time::Instant::now();
        let deadline = started + limit;
        let mut backoff = READ_BACKOFF_MIN;
        let marks = loop {
            match self.watermarks(topic).await {
                Ok(marks) => break marks,
                Err(e @ SideError::UnknownTopic(_)) => return Err(e),
                Err(e) => self.read_retry(topic, e, deadline, &mut backoff).await?,
            }
        };
        let mut ends = BTreeMap::new();
        let mut at = Vec::new();
        for &(p, offset) in from {
            let Some(&(low, high)) = marks.get(p as usize) else {
                continue;
            };
            let start = offset.max(low);
            if start < high {
                ends.insert(p, high);
                at.push((p, start));
            }
        }
        let mut out = Vec::new();
        if at.is_empty() {
            return Ok(out);
        }
        let mut reader = loop {
            match self.open_reader(topic, at.clone(), true).await {
                Ok(reader) => break reader,
                Err(e) => self.read_retry(topic, e, deadline, &mut backoff).await?,
            }
        };
        let mut reached = BTreeMap::new();
        while !ends.is_empty() {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(SideError::ReadIncomplete {
                    topic: topic.to_string(),
                    waited: now - started,
                    ends: ends.clone(),
                    reached,
                });
            }
            let poll = READ_POLL.min(deadline - now);
            match tokio::time::timeout(poll, reader.next()).await {
                Err(_) => {} // quiet: the positions below tell whether the end is reached
                Ok(Ok(record)) => {
                    backoff = READ_BACKOFF_MIN;
                    if let Some(&end) = ends.get(&record.partition) {
                        if record.offset < end {
                            reached.insert(record.partition, record.offset + 1);
                            out.push(record);
                        }
                    }
                }
                Ok(Err(SideError::Kafka {
                    source: KafkaError::PartitionEOF(p),
                    ..
                })) => {
                    // librdkafka's fetcher reached the broker's high watermark, which is at
                    // least the one taken at the start; every record before it was delivered.
                    if let Some(end) = ends.remove(&(p as u32)) {
                        reached.insert(p as u32, end);
                    }
                }
                Ok(Err(e)) => self.read_retry(topic, e, deadline, &mut backoff).await?,
            }
            for (p, position) in reader.read_positions() {
                if let Some(&end) = ends.get(&p) {
                    if position >= end {
                        ends.remove(&p);
                    }
                    let r = reached.entry(p).or_insert(0);
                    *r = (*r).max(position.min(end));
                }
            }
        }
        Ok(out)
    }

    /// Logs a failed step of [`Cluster::read_to_end_within`] and waits out the backoff, or
    /// returns the error when the deadline leaves no time for another try.
    async fn read_retry(
        &self,
        topic: &str,
        error: SideError,
        deadline: tokio::time::Instant,
        backoff: &mut Duration,
    ) -> Result<(), SideError> {
        if tokio::time::Instant::now() + *backoff >= deadline {
            return Err(error);
        }
        tracing::warn!(
            cluster = self.name(),
            topic,
            %error,
            retry_in = ?*backoff,
            "reading to the end: retrying"
        );
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(READ_BACKOFF_MAX);
        Ok(())
    }

    /// Joins a consumer group.
    pub async fn group(&self, spec: &GroupSpec) -> Result<GroupReader, SideError> {
        match self {
            Cluster::Strand { client, .. } => {
                let mut config = GroupConfig::new(spec.group.clone(), spec.topics.clone());
                config.client_id = spec.client_id.clone();
                config.reset = if spec.from_earliest {
                    OffsetReset::Earliest
                } else {
                    OffsetReset::Latest
                };
                config.auto_commit = spec.auto_commit.then_some(Duration::from_millis(500));
                config.fetch.fetch_wait = Duration::from_millis(100);
                let consumer = GroupConsumer::join(client.clone(), config)
                    .await
                    .map_err(|e| self.strand_error(e))?;
                Ok(GroupReader::Strand(
                    Box::new(consumer),
                    self.name().to_string(),
                ))
            }
            Cluster::Kafka { config, .. } => {
                let mut c = config.clone();
                c.set("group.id", &spec.group)
                    .set("client.id", &spec.client_id)
                    .set("enable.auto.commit", spec.auto_commit.to_string())
                    .set(
                        "auto.offset.reset",
                        if spec.from_earliest {
                            "earliest"
                        } else {
                            "latest"
                        },
                    )
                    .set("fetch.wait.max.ms", "100");
                let consumer: StreamConsumer = c.create().map_err(|e| self.kafka_error(e))?;
                let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
                consumer
                    .subscribe(&topics)
                    .map_err(|e| self.kafka_error(e))?;
                Ok(GroupReader::Kafka(
                    Box::new(consumer),
                    self.name().to_string(),
                ))
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
            Reader::Strand(consumer, cluster) => from_strand(consumer.next().await, cluster),
            Reader::Kafka(consumer, cluster) => next_kafka(consumer, cluster).await,
        }
    }

    /// Per partition, the offset read up to (see [`Consumer::read_positions`]; for Kafka,
    /// librdkafka's position, the offset after the last record returned).
    pub fn read_positions(&self) -> Vec<(u32, u64)> {
        match self {
            Reader::Strand(consumer, _) => consumer.read_positions(),
            Reader::Kafka(consumer, _) => consumer
                .position()
                .map(|list| {
                    list.elements()
                        .iter()
                        .filter_map(|e| match e.offset() {
                            Offset::Offset(o) if o >= 0 => Some((e.partition() as u32, o as u64)),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A consumer-group member on either kind of cluster.
pub enum GroupReader {
    Strand(Box<GroupConsumer>, String),
    Kafka(Box<StreamConsumer>, String),
}

impl std::fmt::Debug for GroupReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupReader::Strand(_, c) | GroupReader::Kafka(_, c) => write!(f, "GroupReader({c})"),
        }
    }
}

impl GroupReader {
    pub async fn next(&mut self) -> Result<MirroredRecord, SideError> {
        match self {
            GroupReader::Strand(consumer, cluster) => from_strand(consumer.next().await, cluster),
            GroupReader::Kafka(consumer, cluster) => next_kafka(consumer, cluster).await,
        }
    }

    /// Commits the positions after every record returned so far.
    pub async fn commit(&mut self) -> Result<(), SideError> {
        match self {
            GroupReader::Strand(consumer, cluster) => {
                consumer.commit().await.map_err(|source| SideError::Strand {
                    cluster: cluster.clone(),
                    source,
                })
            }
            GroupReader::Kafka(consumer, cluster) => {
                match consumer.commit_consumer_state(CommitMode::Async) {
                    // Nothing consumed since the last commit.
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
                    Err(source) => Err(SideError::Kafka {
                        cluster: cluster.clone(),
                        source,
                    }),
                }
            }
        }
    }

    /// Leaves the group.
    pub async fn close(self) {
        match self {
            GroupReader::Strand(consumer, _) => {
                let _ = consumer.close().await;
            }
            GroupReader::Kafka(consumer, _) => {
                // librdkafka leaves the group when the consumer is dropped; its close blocks.
                let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
            }
        }
    }
}

/// A record read through strand-client, or the error, naming the cluster.
fn from_strand(
    read: Result<strand_client::Record, ClientError>,
    cluster: &str,
) -> Result<MirroredRecord, SideError> {
    let r = read.map_err(|source| SideError::Strand {
        cluster: cluster.to_string(),
        source,
    })?;
    Ok(MirroredRecord {
        topic: r.topic,
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

/// The next record of a Kafka consumer, or the error, naming the cluster.
async fn next_kafka(consumer: &StreamConsumer, cluster: &str) -> Result<MirroredRecord, SideError> {
    match consumer.recv().await {
        Ok(m) => Ok(from_kafka(&m)),
        Err(source) => Err(SideError::Kafka {
            cluster: cluster.to_string(),
            source,
        }),
    }
}

fn from_kafka(m: &rdkafka::message::BorrowedMessage<'_>) -> MirroredRecord {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    MirroredRecord {
        topic: m.topic().to_string(),
        partition: m.partition() as u32,
        offset: m.offset() as u64,
        timestamp: m.timestamp().to_millis().unwrap_or(0),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}
