//! `Producer`: batches records per partition (up to `batch_bytes_max`, waiting at most
//! `linger`), sends each batch as one produce request with a bounded number in flight per
//! partition, retries retriable failures with backoff, and resolves each record's delivery
//! future with its partition and offset.
//!
//! Partitioning follows Kafka's default: an explicit partition wins; a key goes where murmur2
//! puts it (as any Kafka client would); records without a key stick to one partition until its
//! batch is sent, then move on.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify, Semaphore};
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
    /// Records accepted but not yet on the wire (in open batches or waiting for their
    /// partition's in-flight window), at most; `send` waits beyond. Default 100,000.
    pub queue_records_max: usize,
    /// While the producer has no produce request unanswered, a batch goes out at once instead
    /// of lingering, and the batches that filled while requests were out go when the last
    /// answer comes (Nagle's rule, over the whole producer): a lone record is not delayed by
    /// `linger`, and under load batches fill as before. Default false (every batch lingers,
    /// as in Kafka).
    pub send_when_idle: bool,
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
            send_when_idle: false,
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
///
/// The records of one batch share one outcome: the future holds it and the record's index in
/// the batch, so a record costs no channel of its own.
pub struct DeliveryFuture(DeliveryState);

enum DeliveryState {
    /// Refused before it joined a batch (too large, no such partition, topic unknown).
    Refused(Option<ClientError>),
    Batched {
        outcome: Arc<Outcome>,
        partition: u32,
        index: u32,
        /// Where this future's waker sits in the outcome's list once it has polled.
        slot: Option<usize>,
    },
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            DeliveryState::Refused(e) => f.debug_tuple("DeliveryFuture").field(e).finish(),
            DeliveryState::Batched {
                partition, index, ..
            } => f
                .debug_struct("DeliveryFuture")
                .field("partition", partition)
                .field("index", index)
                .finish(),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            DeliveryState::Refused(error) => {
                Poll::Ready(Err(error.take().unwrap_or(ClientError::Closed)))
            }
            DeliveryState::Batched {
                outcome,
                partition,
                index,
                slot,
            } => {
                let mut state = outcome.state.lock().expect("outcome lock");
                match &state.result {
                    Some(Ok(base)) => Poll::Ready(Ok(Delivery {
                        partition: *partition,
                        offset: base + u64::from(*index),
                    })),
                    Some(Err(e)) => Poll::Ready(Err(e.duplicate())),
                    None => {
                        match *slot {
                            Some(i) => {
                                if !state.wakers[i].will_wake(cx.waker()) {
                                    state.wakers[i] = cx.waker().clone();
                                }
                            }
                            None => {
                                state.wakers.push(cx.waker().clone());
                                *slot = Some(state.wakers.len() - 1);
                            }
                        }
                        Poll::Pending
                    }
                }
            }
        }
    }
}

/// The fate of one batch: its base offset or its error, and who waits for it.
#[derive(Default)]
struct Outcome {
    state: Mutex<OutcomeState>,
}

#[derive(Default)]
struct OutcomeState {
    result: Option<Result<u64, ClientError>>,
    wakers: Vec<Waker>,
}

/// Completes a batch's outcome; if dropped first (the producer went away before the batch was
/// answered), its records fail with `Closed` rather than wait forever.
struct Completion(Arc<Outcome>);

impl Completion {
    fn complete(&self, result: Result<u64, ClientError>) {
        let wakers = {
            let mut state = self.0.state.lock().expect("outcome lock");
            if state.result.is_some() {
                return;
            }
            state.result = Some(result);
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.complete(Err(ClientError::Closed));
    }
}

/// Batching happens in `send`, under a short lock, in the caller's task; a background task
/// puts closed batches on the wire in order, waits for their answers and sends batches whose
/// linger ran out.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    /// For the partition counts of topics `send` has not seen before.
    client: Client,
    config: ProducerConfig,
    state: Mutex<State>,
    /// Wakes the sender: a batch closed, a batch opened (its linger starts), flush or close.
    wake: Notify,
    /// Records accepted and not yet on the wire, at most `queue_records_max`.
    queue: Semaphore,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish()
    }
}

#[derive(Default)]
struct State {
    topics: HashMap<String, TopicState>,
    /// Closed batches and flush marks, in the order they go on the wire.
    ready: VecDeque<Job>,
    /// Set when the producer is dropped or closed: the sender sends everything and ends.
    closed: bool,
    /// Buffers of acknowledged batches, for new batches to be written into (at most
    /// [`SPARE_BATCHES_MAX`]).
    spare: Vec<Vec<u8>>,
    /// Batches closed and not yet answered (for `send_when_idle`).
    unanswered: u32,
}

/// Buffers of finished batches a producer keeps for reuse. Reusing them saves a fresh
/// allocation per batch, which with the system allocator means mapping (and zeroing) new pages
/// for every megabyte sent: about a fifth of the client's CPU at 1 KiB records.
const SPARE_BATCHES_MAX: usize = 4;

/// Room the first batch of a topic starts with.
const BATCH_CAPACITY_MIN: usize = 16 * 1024;

struct TopicState {
    n_partitions: u32,
    /// Where key-less records without a partition go until that batch closes.
    sticky: Option<u32>,
    /// The open batch of each partition, by partition.
    open: Vec<Option<Pending>>,
    /// Room a new batch starts with: about the size the last closed one reached, so a batch
    /// is not copied again and again as it grows to its usual size.
    batch_capacity: usize,
}

impl TopicState {
    /// Takes the open batch of `partition` out onto `ready`, to be sent, moving the sticky
    /// partition on if it was this one.
    fn close_batch(
        &mut self,
        name: &str,
        partition: u32,
        ready: &mut VecDeque<Job>,
        unanswered: &mut u32,
    ) {
        let Some(pending) = self.open[partition as usize].take() else {
            return;
        };
        if self.sticky == Some(partition) {
            self.sticky = Some(fastrand_u32(self.n_partitions));
        }
        let len = pending.builder.len();
        self.batch_capacity = (len + len / 8).max(BATCH_CAPACITY_MIN);
        *unanswered += 1;
        ready.push_back(Job::Batch {
            topic: name.to_string(),
            partition,
            pending,
        });
    }
}

struct Pending {
    builder: BatchBuilder,
    n_records: u32,
    completion: Completion,
    opened: Instant,
}

enum Job {
    Batch {
        topic: String,
        partition: u32,
        pending: Pending,
    },
    /// Answered once everything queued before it is acknowledged or failed.
    Flush(oneshot::Sender<()>),
}

impl State {
    /// Closes every open batch opened at or before `opened_by` (all of them with `None`).
    fn close_due(&mut self, opened_by: Option<Instant>) {
        let State {
            topics,
            ready,
            unanswered,
            ..
        } = self;
        for (name, topic) in topics.iter_mut() {
            for partition in 0..topic.n_partitions {
                let due = topic.open[partition as usize]
                    .as_ref()
                    .is_some_and(|p| opened_by.is_none_or(|by| p.opened <= by));
                if due {
                    topic.close_batch(name, partition, ready, unanswered);
                }
            }
        }
    }

    fn first_opened(&self) -> Option<Instant> {
        self.topics
            .values()
            .flat_map(|t| t.open.iter().flatten().map(|p| p.opened))
            .min()
    }
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let shared = Arc::new(Shared {
            client: client.clone(),
            queue: Semaphore::new(config.queue_records_max.clamp(1, Semaphore::MAX_PERMITS)),
            config,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        let task = tokio::spawn(Sender::new(client, shared.clone()).run());
        Producer {
            shared,
            task: Some(task),
        }
    }

    /// Adds a record to its partition's batch; waits only when `queue_records_max` records
    /// are waiting to go on the wire. Await the returned future for the delivery report.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let shared = &self.shared;
        match shared.queue.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => shared
                .queue
                .acquire()
                .await
                .map_err(|_| ClientError::Closed)?
                .forget(),
        }
        let refused = |e: ClientError| {
            shared.queue.add_permits(1);
            Ok(DeliveryFuture(DeliveryState::Refused(Some(e))))
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
        let batch_bytes_max = shared.config.batch_bytes_max;
        let send_when_idle = shared.config.send_when_idle;
        if record_bytes + crate::batch::BATCH_HEADER_BYTES > batch_bytes_max {
            return refused(ClientError::TooLarge {
                len: record_bytes,
                max: batch_bytes_max,
            });
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let mut wake = false;
        let future = loop {
            {
                let mut guard = shared.state.lock().expect("producer lock");
                let State {
                    topics,
                    ready,
                    spare,
                    unanswered,
                    ..
                } = &mut *guard;
                if let Some(topic) = topics.get_mut(&record.topic) {
                    let n = topic.n_partitions;
                    let partition = match (record.partition, &record.key) {
                        (Some(p), _) if p < n => p,
                        _ if n == 0 => {
                            drop(guard);
                            return refused(ClientError::Invalid(format!(
                                "topic {} has no partitions",
                                record.topic
                            )));
                        }
                        (Some(p), _) => {
                            drop(guard);
                            return refused(ClientError::Invalid(format!(
                                "partition {p} does not exist: topic {} has {n}",
                                record.topic
                            )));
                        }
                        (None, Some(key)) => partition_for_key(key, n),
                        (None, None) => *topic.sticky.get_or_insert_with(|| fastrand_u32(n)),
                    };
                    let slot = partition as usize;
                    if topic.open[slot]
                        .as_ref()
                        .is_some_and(|p| p.builder.len() + record_bytes > batch_bytes_max)
                    {
                        topic.close_batch(&record.topic, partition, ready, unanswered);
                        wake = true;
                    }
                    let capacity = topic.batch_capacity.min(batch_bytes_max);
                    let pending = topic.open[slot].get_or_insert_with(|| {
                        // A new batch starts its linger: the sender may have no deadline yet.
                        wake = true;
                        Pending {
                            builder: BatchBuilder::with_buffer(
                                spare.pop().unwrap_or_default(),
                                capacity,
                            ),
                            n_records: 0,
                            completion: Completion(Arc::new(Outcome::default())),
                            opened: Instant::now(),
                        }
                    });
                    pending.builder.push(
                        timestamp,
                        record.key.as_deref(),
                        record.value.as_deref(),
                        &headers,
                    );
                    let index = pending.n_records;
                    pending.n_records += 1;
                    let future = DeliveryFuture(DeliveryState::Batched {
                        outcome: pending.completion.0.clone(),
                        partition,
                        index,
                        slot: None,
                    });
                    if pending.builder.len() >= batch_bytes_max
                        || (send_when_idle && *unanswered == 0)
                    {
                        topic.close_batch(&record.topic, partition, ready, unanswered);
                        wake = true;
                    }
                    break future;
                }
            }
            // A topic not seen before: how many partitions it has, asked once.
            let n = match self.partitions_of(&record.topic).await {
                Ok(n) => n,
                Err(e) => return refused(e),
            };
            let mut state = shared.state.lock().expect("producer lock");
            state
                .topics
                .entry(record.topic.clone())
                .or_insert_with(|| TopicState {
                    n_partitions: n,
                    sticky: None,
                    open: (0..n).map(|_| None).collect(),
                    batch_capacity: BATCH_CAPACITY_MIN,
                });
        };
        if wake {
            shared.wake.notify_one();
        }
        Ok(future)
    }

    async fn partitions_of(&self, topic: &str) -> Result<u32, ClientError> {
        let description = self.shared.client.admin().describe_topic(topic).await?;
        Ok(description.partitions.len() as u32)
    }

    /// Sends everything batched so far and waits until all of it is acknowledged or failed.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.state.lock().expect("producer lock");
            state.close_due(None);
            state.ready.push_back(Job::Flush(tx));
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Flushes and stops the background task.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.flush().await?;
        self.shared.state.lock().expect("producer lock").closed = true;
        self.shared.wake.notify_one();
        let task = self.task.take().expect("task until close");
        task.await.map_err(|_| ClientError::Closed)
    }
}

impl Drop for Producer {
    /// What was sent is still delivered: the sender sends every batch, then ends.
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.closed = true;
        }
        self.shared.wake.notify_one();
    }
}

/// The background task: puts closed batches on the wire in order, each partition within its
/// in-flight window, and closes batches whose linger has run out.
struct Sender {
    client: Client,
    shared: Arc<Shared>,
    windows: HashMap<(String, u32), Arc<Semaphore>>,
    in_flight: JoinSet<()>,
}

impl Sender {
    fn new(client: Client, shared: Arc<Shared>) -> Sender {
        Sender {
            client,
            shared,
            windows: HashMap::new(),
            in_flight: JoinSet::new(),
        }
    }

    async fn run(mut self) {
        let linger = self.shared.config.linger;
        loop {
            let (jobs, next_deadline, closed) = {
                let mut state = self.shared.state.lock().expect("producer lock");
                let closed = state.closed;
                // On close every batch goes now; otherwise those whose linger ran out.
                let by = (!closed)
                    .then(|| Instant::now().checked_sub(linger))
                    .flatten();
                if closed || linger.is_zero() || by.is_some() {
                    state.close_due(by);
                }
                let jobs: Vec<Job> = state.ready.drain(..).collect();
                let next_deadline = state.first_opened().map(|opened| opened + linger);
                (jobs, next_deadline, closed)
            };
            let worked = !jobs.is_empty();
            for job in jobs {
                match job {
                    Job::Batch {
                        topic,
                        partition,
                        pending,
                    } => self.dispatch(topic, partition, pending).await,
                    Job::Flush(done) => {
                        while self.in_flight.join_next().await.is_some() {}
                        let _ = done.send(());
                    }
                }
            }
            while self.in_flight.try_join_next().is_some() {}
            if worked {
                // More may have come while these went out.
                continue;
            }
            if closed {
                while self.in_flight.join_next().await.is_some() {}
                return;
            }
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = sleep_until_opt(next_deadline) => {}
            }
        }
    }

    /// Sends one batch once its partition has room in its in-flight window.
    async fn dispatch(&mut self, topic: String, partition: u32, pending: Pending) {
        let config = self.shared.config.clone();
        let window = self
            .windows
            .entry((topic.clone(), partition))
            .or_insert_with(|| Arc::new(Semaphore::new(config.in_flight_per_partition_max.max(1))))
            .clone();
        let permit = window.acquire_owned().await.expect("never closed");
        let Pending {
            mut builder,
            n_records,
            completion,
            ..
        } = pending;
        let batch = Bytes::from(builder.finish());
        let client = self.client.clone();
        let shared = self.shared.clone();
        let request = Request::Produce {
            topic: topic.clone(),
            partition,
            acks: config.acks,
            records: batch.clone(),
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
        // These records left the queue (on the wire, or failed to get there).
        self.shared.queue.add_permits(n_records as usize);
        self.in_flight.spawn(async move {
            let result =
                send_with_retries(&client, &config, &topic, partition, request, first).await;
            completion.complete(result.map_err(|e| e.duplicate()));
            drop(permit);
            // Nothing else holds the batch once it is answered (the connection wrote it before
            // the answer came): its buffer goes back for a later batch.
            let buffer = batch.try_into_mut().ok();
            let wake = {
                let mut state = shared.state.lock().expect("producer lock");
                if let Some(buffer) = buffer {
                    if state.spare.len() < SPARE_BATCHES_MAX {
                        state.spare.push(buffer.into());
                    }
                }
                state.unanswered = state.unanswered.saturating_sub(1);
                // The batches that filled while requests were out go now, not at their linger
                // (closing them counts them as unanswered).
                config.send_when_idle && state.unanswered == 0 && {
                    state.close_due(None);
                    state.unanswered > 0
                }
            };
            if wake {
                shared.wake.notify_one();
            }
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
