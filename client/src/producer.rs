//! `Producer`: batches records per partition (up to `batch_bytes_max`, waiting at most
//! `linger`), sends each batch as one produce request with a bounded number in flight per
//! partition, retries retriable failures with backoff, and resolves each record's delivery
//! future with its partition and offset.
//!
//! Partitioning follows Kafka's default: an explicit partition wins; a key goes where murmur2
//! puts it (as any Kafka client would); records without a key stick to one partition until its
//! batch is sent, then move on.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::batch::BatchBuilder;
use crate::client::Client;
use crate::error::ClientError;
use crate::native::{Acks, Request, ResponseBody};
use crate::partitioner::partition_for_key;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch may wait for more records. Default 5 ms.
    pub linger: Duration,
    /// A batch is sent once it reaches this size. Default 1 MiB.
    pub batch_bytes_max: usize,
    /// Produce requests in flight per partition. Default 5.
    pub in_flight_per_partition_max: usize,
    pub acks: Acks,
    /// Attempts after the first for retriable failures. Default 5.
    pub retries: u32,
    /// First retry wait, doubling up to `retry_backoff_max`. Default 100 ms.
    pub retry_backoff: Duration,
    /// Default 2 s.
    pub retry_backoff_max: Duration,
    /// Records accepted but not yet batched, at most; `send` waits beyond. Default 100,000.
    pub queue_records_max: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_bytes_max: 1 << 20,
            in_flight_per_partition_max: 5,
            acks: Acks::Leader,
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(2),
            queue_records_max: 100_000,
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    pub topic: String,
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch; now when `None`.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    pub offset: u64,
}

/// Resolves when the record is acknowledged (as `acks` says) or has failed for good.
#[derive(Debug)]
pub struct DeliveryFuture(oneshot::Receiver<Result<Delivery, ClientError>>);

impl Future for DeliveryFuture {
    type Output = Result<Delivery, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

enum Command {
    Send(
        ProducerRecord,
        oneshot::Sender<Result<Delivery, ClientError>>,
    ),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug)]
pub struct Producer {
    tx: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let (tx, rx) = mpsc::channel(config.queue_records_max.max(1));
        let task = tokio::spawn(Accumulator::new(client, config).run(rx));
        Producer { tx, task }
    }

    /// Queues a record; waits only when the queue is full. Await the returned future for the
    /// delivery report.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Send(record, tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(DeliveryFuture(rx))
    }

    /// Sends everything queued and waits until all of it is acknowledged or failed.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Flushes and stops the background task.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await?;
        drop(self.tx);
        self.task.await.map_err(|_| ClientError::Closed)
    }
}

struct Pending {
    builder: BatchBuilder,
    waiters: Vec<oneshot::Sender<Result<Delivery, ClientError>>>,
    opened: Instant,
}

struct Accumulator {
    client: Client,
    config: ProducerConfig,
    pending: HashMap<(String, u32), Pending>,
    n_partitions: HashMap<String, u32>,
    sticky: HashMap<String, u32>,
    windows: HashMap<(String, u32), Arc<Semaphore>>,
    in_flight: JoinSet<()>,
}

impl Accumulator {
    fn new(client: Client, config: ProducerConfig) -> Accumulator {
        Accumulator {
            client,
            config,
            pending: HashMap::new(),
            n_partitions: HashMap::new(),
            sticky: HashMap::new(),
            windows: HashMap::new(),
            in_flight: JoinSet::new(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let next_deadline = self
                .pending
                .values()
                .map(|p| p.opened + self.config.linger)
                .min();
            let command = tokio::select! {
                command = rx.recv() => command,
                _ = sleep_until_opt(next_deadline) => {
                    let now = Instant::now();
                    let due: Vec<_> = self
                        .pending
                        .iter()
                        .filter(|(_, p)| p.opened + self.config.linger <= now)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in due {
                        self.dispatch(key).await;
                    }
                    continue;
                }
            };
            while self.in_flight.try_join_next().is_some() {}
            let Some(command) = command else {
                self.flush_all().await;
                return;
            };
            self.handle(command).await;
            // Take whatever else is already queued before deciding what to send, so that a
            // burst becomes one batch even without linger.
            while let Ok(command) = rx.try_recv() {
                self.handle(command).await;
            }
            if self.config.linger.is_zero() {
                let keys: Vec<_> = self.pending.keys().cloned().collect();
                for key in keys {
                    self.dispatch(key).await;
                }
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Flush(done) => {
                self.flush_all().await;
                let _ = done.send(());
            }
            Command::Send(record, waiter) => self.add(record, waiter).await,
        }
    }

    async fn flush_all(&mut self) {
        let keys: Vec<_> = self.pending.keys().cloned().collect();
        for key in keys {
            self.dispatch(key).await;
        }
        while self.in_flight.join_next().await.is_some() {}
    }

    async fn partitions_of(&mut self, topic: &str) -> Result<u32, ClientError> {
        if let Some(&n) = self.n_partitions.get(topic) {
            return Ok(n);
        }
        let description = self.client.admin().describe_topic(topic).await?;
        let n = description.partitions.len() as u32;
        self.n_partitions.insert(topic.to_string(), n);
        Ok(n)
    }

    async fn add(
        &mut self,
        record: ProducerRecord,
        waiter: oneshot::Sender<Result<Delivery, ClientError>>,
    ) {
        let n = match self.partitions_of(&record.topic).await {
            Ok(n) => n,
            Err(e) => {
                let _ = waiter.send(Err(e));
                return;
            }
        };
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p < n => p,
            (Some(p), _) => {
                let _ = waiter.send(Err(ClientError::Invalid(format!(
                    "partition {p} does not exist: topic {} has {n}",
                    record.topic
                ))));
                return;
            }
            (None, Some(key)) => partition_for_key(key, n),
            (None, None) => *self
                .sticky
                .entry(record.topic.clone())
                .or_insert_with(|| fastrand_u32(n)),
        };
        let headers: Vec<(&[u8], Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_deref()))
            .collect();
        let record_bytes = BatchBuilder::record_bytes_max(
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
        if record_bytes + crate::batch::BATCH_HEADER_BYTES > self.config.batch_bytes_max {
            let _ = waiter.send(Err(ClientError::TooLarge {
                len: record_bytes,
                max: self.config.batch_bytes_max,
            }));
            return;
        }
        let key = (record.topic.clone(), partition);
        if self
            .pending
            .get(&key)
            .is_some_and(|p| p.builder.len() + record_bytes > self.config.batch_bytes_max)
        {
            self.dispatch(key.clone()).await;
        }
        let pending = self.pending.entry(key.clone()).or_insert_with(|| Pending {
            builder: BatchBuilder::with_capacity(16 * 1024),
            waiters: Vec::new(),
            opened: Instant::now(),
        });
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        pending.builder.push(
            timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
        pending.waiters.push(waiter);
        if pending.builder.len() >= self.config.batch_bytes_max {
            self.dispatch(key).await;
        }
    }

    /// Sends the pending batch of `key` once its partition has room in its in-flight window.
    async fn dispatch(&mut self, key: (String, u32)) {
        let Some(mut pending) = self.pending.remove(&key) else {
            return;
        };
        if pending.builder.is_empty() {
            return;
        }
        if self.sticky.get(&key.0) == Some(&key.1) {
            // The sticky partition's batch is gone: the next key-less records go elsewhere.
            let n = self.n_partitions.get(&key.0).copied().unwrap_or(1);
            self.sticky.insert(key.0.clone(), fastrand_u32(n));
        }
        let window = self
            .windows
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.config.in_flight_per_partition_max.max(1),
                ))
            })
            .clone();
        let permit = window.acquire_owned().await.expect("never closed");
        let batch = Bytes::from(pending.builder.finish());
        let client = self.client.clone();
        let config = self.config.clone();
        let (topic, partition) = key;
        let request = Request::Produce {
            topic: topic.clone(),
            partition,
            acks: config.acks,
            records: batch,
        };
        // The first attempt goes on the wire here, in dispatch order, so that a partition's
        // batches reach the broker in the order they were filled even with several in flight.
        // Only the wait for the answer (and any retry) happens in the spawned task.
        let first = if config.acks == Acks::None {
            match client.connection().await {
                Ok(connection) => connection.send_only(request.clone()).await.map(|()| None),
                Err(e) => Err(e),
            }
        } else {
            client.send(request.clone()).await.map(Some)
        };
        self.in_flight.spawn(async move {
            let result =
                send_with_retries(&client, &config, &topic, partition, request, first).await;
            for (i, waiter) in pending.waiters.drain(..).enumerate() {
                let report = match &result {
                    Ok(base) => Ok(Delivery {
                        partition,
                        offset: base + i as u64,
                    }),
                    Err(e) => Err(e.duplicate()),
                };
                let _ = waiter.send(report);
            }
            drop(permit);
        });
    }
}

/// Finishes a produce whose first attempt is `first`, retrying retriable failures with backoff.
/// A retry can land after a later batch of the same partition (as with a Kafka producer that is
/// not idempotent); without failures, order is kept.
async fn send_with_retries(
    client: &Client,
    config: &ProducerConfig,
    topic: &str,
    partition: u32,
    request: Request,
    first: Result<Option<crate::connection::PendingResponse>, ClientError>,
) -> Result<u64, ClientError> {
    let mut backoff = config.retry_backoff;
    let mut attempt = 0;
    let mut sent = first;
    loop {
        let result = match sent {
            Ok(Some(pending)) => pending.wait().await.map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match result {
            // With acks=none there is no offset to report; the batch's position is unknown.
            Ok(None) => return Ok(0),
            Ok(Some(ResponseBody::Produced { base_offset, .. })) => return Ok(base_offset),
            Ok(Some(other)) => {
                return Err(ClientError::Invalid(format!(
                    "unexpected answer: {other:?}"
                )))
            }
            Err(e) if e.is_retriable() && attempt < config.retries => {
                attempt += 1;
                tracing::debug!(%topic, partition, attempt, error = %e, "retrying produce");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry_backoff_max);
                sent = if config.acks == Acks::None {
                    match client.connection().await {
                        Ok(connection) => {
                            connection.send_only(request.clone()).await.map(|()| None)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    client.send(request.clone()).await.map(Some)
                };
            }
            Err(e) => return Err(e),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A pseudo-random partition, for sticky partitioning (no cryptographic needs).
fn fastrand_u32(n: u32) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() % u64::from(n.max(1))) as u32
}
