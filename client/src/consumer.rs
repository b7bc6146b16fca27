//! `Consumer`: reads a topic's partitions from a starting point, either by long-polling fetches
//! or through push subscriptions with credit-based flow control, and yields records in offset
//! order per partition. Also available as a `Stream`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::batch::{self, Batches, Compression, OffsetDeltas, Records};
use crate::client::Client;
use crate::error::ClientError;
use crate::native::{OffsetQuery, Push, Request, ResponseBody};

/// Where a consumer starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(u64),
    /// The first record whose timestamp is at least this many ms since the epoch (the end of
    /// a partition that has none that new).
    Timestamp(i64),
}

/// How records reach the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Long-polling fetch requests.
    Fetch,
    /// A push subscription per partition: lowest latency, no polling.
    Push,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub start: StartFrom,
    pub delivery: Delivery,
    /// Most bytes one fetch returns. Default 1 MiB.
    pub fetch_bytes_max: u32,
    /// Longest a fetch waits at the end of the log. Default 500 ms.
    pub fetch_wait: Duration,
    /// Bytes a subscription may push ahead of what was consumed. Default 4 MiB. What is
    /// consumed is granted back once it reaches half of this.
    pub credit_bytes: u32,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            start: StartFrom::Earliest,
            delivery: Delivery::Fetch,
            fetch_bytes_max: 1 << 20,
            fetch_wait: Duration::from_millis(500),
            credit_bytes: 4 << 20,
        }
    }
}

/// One consumed record. Keys, values and header values share the fetched buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// A partition's fetch: its index, the fetch's number (see [`Consumer::start_fetch`]) and the
/// answer.
type FetchFuture = Pin<
    Box<dyn std::future::Future<Output = (usize, u64, Result<ResponseBody, ClientError>)> + Send>,
>;

struct Subscription {
    id: u32,
    pushes: mpsc::UnboundedReceiver<Result<Push, ClientError>>,
    /// Bytes taken from pushes and not yet granted back to the broker as credit.
    owed: u32,
}

/// Reads one topic.
pub struct Consumer {
    client: Client,
    topic: String,
    config: ConsumerConfig,
    /// (partition, next offset to yield)
    positions: Vec<(u32, u64)>,
    /// Next offset to fetch per partition (ahead of `positions` by what is buffered).
    fetch_offsets: Vec<u64>,
    buffer: VecDeque<Record>,
    fetches: FuturesUnordered<FetchFuture>,
    /// Per partition, the number of its latest fetch (an answer to an older one is stale) and
    /// the task sending it.
    fetch_tasks: Vec<(u64, Option<AbortHandle>)>,
    subscriptions: Vec<Subscription>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for (_, task) in &self.fetch_tasks {
            if let Some(task) = task {
                task.abort();
            }
        }
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .field("positions", &self.positions)
            .finish()
    }
}

impl Consumer {
    /// Starts consuming `partitions` of `topic` (all of them when `None`).
    pub async fn new(
        client: Client,
        topic: &str,
        partitions: Option<Vec<u32>>,
        config: ConsumerConfig,
    ) -> Result<Consumer, ClientError> {
        let admin = client.admin();
        let partitions = match partitions {
            Some(p) => p,
            None => admin
                .describe_topic(topic)
                .await?
                .partitions
                .iter()
                .map(|p| p.partition)
                .collect(),
        };
        let mut positions = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let offset = match config.start {
                StartFrom::Offset(offset) => offset,
                StartFrom::Earliest => admin
                    .list_offset(topic, partition, OffsetQuery::Earliest)
                    .await?
                    .unwrap_or(0),
                StartFrom::Latest => admin
                    .list_offset(topic, partition, OffsetQuery::Latest)
                    .await?
                    .unwrap_or(0),
                StartFrom::Timestamp(ms) => {
                    match admin
                        .list_offset(topic, partition, OffsetQuery::Timestamp(ms))
                        .await?
                    {
                        Some(offset) => offset,
                        None => admin
                            .list_offset(topic, partition, OffsetQuery::Latest)
                            .await?
                            .unwrap_or(0),
                    }
                }
            };
            positions.push((partition, offset));
        }
        Consumer::at_positions(client, topic, positions, config).await
    }

    /// Starts consuming each listed partition of `topic` at its own offset.
    pub async fn at_positions(
        client: Client,
        topic: &str,
        positions: Vec<(u32, u64)>,
        config: ConsumerConfig,
    ) -> Result<Consumer, ClientError> {
        let fetch_offsets = positions.iter().map(|(_, offset)| *offset).collect();
        let n_partitions = positions.len();
        let mut consumer = Consumer {
            client,
            topic: topic.to_string(),
            config,
            positions,
            fetch_offsets,
            buffer: VecDeque::new(),
            fetches: FuturesUnordered::new(),
            fetch_tasks: vec![(0, None); n_partitions],
            subscriptions: Vec::new(),
        };
        match consumer.config.delivery {
            Delivery::Fetch => {
                for idx in 0..consumer.positions.len() {
                    consumer.start_fetch(idx);
                }
            }
            Delivery::Push => {
                let connection = consumer.client.connection().await?;
                for &(partition, offset) in &consumer.positions {
                    let (id, pushes) = connection
                        .subscribe(
                            &consumer.topic,
                            partition,
                            offset,
                            consumer.config.credit_bytes,
                        )
                        .await?;
                    consumer.subscriptions.push(Subscription {
                        id,
                        pushes,
                        owed: 0,
                    });
                }
            }
        }
        Ok(consumer)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Next offset to be yielded for each partition.
    pub fn positions(&self) -> &[(u32, u64)] {
        &self.positions
    }

    /// Per partition, the offset this consumer has read up to: the next record it yields, or,
    /// with nothing buffered, the next offset it fetches. Unlike [`Consumer::positions`] it moves
    /// past offsets that hold no record (compacted away, transaction markers), so a reader can
    /// tell it reached a high watermark whose last offsets are gone.
    pub fn read_positions(&self) -> Vec<(u32, u64)> {
        self.positions
            .iter()
            .zip(&self.fetch_offsets)
            .map(|(&(partition, _), &fetch)| {
                let buffered = self
                    .buffer
                    .iter()
                    .find(|r| r.partition == partition)
                    .map(|r| r.offset);
                (partition, buffered.unwrap_or(fetch))
            })
            .collect()
    }

    /// Sends the partition's next fetch now, on a task of its own, rather than when the
    /// consumer next runs out of records: the broker reads and sends the next range while the
    /// records of this one are checked, unpacked and consumed. A fetch the partition had in
    /// flight is abandoned (its answer, if any, is stale).
    fn start_fetch(&mut self, idx: usize) {
        let (partition, _) = self.positions[idx];
        let offset = self.fetch_offsets[idx];
        let client = self.client.clone();
        let request = Request::Fetch {
            topic: self.topic.clone(),
            partition,
            offset,
            max_bytes: self.config.fetch_bytes_max,
            max_wait_ms: self.config.fetch_wait.as_millis() as u32,
        };
        let task = tokio::spawn(async move { client.request(request).await });
        let (number, previous) = &mut self.fetch_tasks[idx];
        *number += 1;
        if let Some(previous) = previous.replace(task.abort_handle()) {
            previous.abort();
        }
        let number = *number;
        self.fetches.push(Box::pin(async move {
            let answer = task.await.unwrap_or(Err(ClientError::Closed));
            (idx, number, answer)
        }));
    }

    /// The next record, waiting for one to be produced if need be.
    pub async fn next(&mut self) -> Result<Record, ClientError> {
        loop {
            if let Some(record) = self.buffer.pop_front() {
                if let Some(position) = self
                    .positions
                    .iter_mut()
                    .find(|(p, _)| *p == record.partition)
                {
                    position.1 = record.offset + 1;
                }
                return Ok(record);
            }
            match self.config.delivery {
                Delivery::Fetch => {
                    let Some((idx, number, result)) = self.fetches.next().await else {
                        return Err(ClientError::Invalid("no partitions to consume".into()));
                    };
                    if number != self.fetch_tasks[idx].0 {
                        continue; // an abandoned fetch
                    }
                    let outcome = match result {
                        Ok(ResponseBody::Fetched {
                            records,
                            high_watermark,
                            ..
                        }) => {
                            if records.is_empty() {
                                // The broker answers the whole first batch at or after the
                                // offset: nothing below its high watermark means that range
                                // holds no records any more (a compacted or expired tail).
                                let at = &mut self.fetch_offsets[idx];
                                *at = (*at).max(high_watermark);
                                self.start_fetch(idx);
                                Ok(())
                            } else {
                                // The next range is asked for before these records are
                                // unpacked, from where their batch headers end.
                                let from = self.fetch_offsets[idx];
                                self.fetch_offsets[idx] = Batches::new(&records)
                                    .fold(from, |at, (header, _)| {
                                        at.max(header.last_offset() as u64 + 1)
                                    });
                                self.start_fetch(idx);
                                let (reached, unpacked) = self.take_batches(idx, from, records);
                                if unpacked.is_err() {
                                    // Fetch again from the first record not delivered.
                                    self.fetch_offsets[idx] = reached;
                                    self.start_fetch(idx);
                                }
                                unpacked
                            }
                        }
                        // Keep the partition's fetch going whatever happened; report the
                        // failure.
                        Ok(other) => {
                            self.start_fetch(idx);
                            Err(ClientError::Invalid(format!(
                                "unexpected answer: {other:?}"
                            )))
                        }
                        Err(e) => {
                            self.start_fetch(idx);
                            Err(e)
                        }
                    };
                    outcome?;
                }
                Delivery::Push => {
                    if self.subscriptions.is_empty() {
                        return Err(ClientError::Invalid("no partitions to consume".into()));
                    }
                    let receivers = self
                        .subscriptions
                        .iter_mut()
                        .enumerate()
                        .map(|(idx, s)| Box::pin(async move { (idx, s.pushes.recv().await) }));
                    let ((idx, push), _, _) = futures::future::select_all(receivers).await;
                    let push = push.ok_or(ClientError::Closed)??;
                    let consumed = push.records.len() as u32;
                    let (reached, unpacked) =
                        self.take_batches(idx, self.fetch_offsets[idx], push.records);
                    self.fetch_offsets[idx] = reached;
                    unpacked?;
                    // Credit goes back in grants of half the window rather than after every
                    // push: each grant is a frame for both ends to wake up for, one per record
                    // at low rates. The broker still holds at least half the window, so it
                    // never waits for a grant while the consumer keeps up.
                    let subscription = &mut self.subscriptions[idx];
                    subscription.owed = subscription.owed.saturating_add(consumed);
                    if subscription.owed >= (self.config.credit_bytes / 2).max(1) {
                        let grant = std::mem::take(&mut subscription.owed);
                        let id = subscription.id;
                        let connection = self.client.connection().await?;
                        connection
                            .send_only(Request::AddCredit {
                                subscription: id,
                                credit_bytes: grant,
                            })
                            .await?;
                    }
                }
            }
        }
    }

    /// Checks and unpacks fetched batches of the partition at `idx` into the buffer, skipping
    /// records before its position (a fetch starts with the whole batch holding the offset).
    /// Returns the offset after the last record delivered (or batch passed), and whether every
    /// batch could be unpacked.
    fn take_batches(
        &mut self,
        idx: usize,
        from: u64,
        records: Bytes,
    ) -> (u64, Result<(), ClientError>) {
        let partition = self.positions[idx].0;
        let mut position = from;
        for (header, bytes) in Batches::new(&records) {
            if let Err(e) = batch::validate(bytes, usize::MAX, OffsetDeltas::Increasing) {
                return (position, Err(e.into()));
            }
            match header.compression() {
                Ok(Compression::None) => {}
                Ok(_) => {
                    return (
                        position,
                        Err(ClientError::Invalid(format!(
                            "{}/{partition} offset {}: compressed batches are not decompressed by the native consumer yet",
                            self.topic, header.base_offset
                        ))),
                    )
                }
                Err(e) => return (position, Err(e.into())),
            }
            for record in Records::new(bytes, &header) {
                let record = match record {
                    Ok(record) => record,
                    Err(e) => return (position, Err(e.into())),
                };
                let offset = header.base_offset as u64 + record.offset_delta as u64;
                if offset < position {
                    continue;
                }
                let share = |b: &[u8]| records.slice_ref(b);
                self.buffer.push_back(Record {
                    topic: self.topic.clone(),
                    partition,
                    offset,
                    timestamp: header.base_timestamp + record.timestamp_delta,
                    key: record.key.map(share),
                    value: record.value.map(share),
                    headers: record
                        .headers()
                        .map(|(k, v)| (share(k), v.map(share)))
                        .collect(),
                });
                position = offset + 1;
            }
            position = position.max(header.last_offset() as u64 + 1);
        }
        (position, Ok(()))
    }

    /// The consumer as a `Stream` of records.
    pub fn into_stream(self) -> impl Stream<Item = Result<Record, ClientError>> {
        futures::stream::unfold(self, |mut consumer| async move {
            let item = consumer.next().await;
            Some((item, consumer))
        })
    }
}
