//! What the broker does for a request, whatever protocol carried it: the native listener and
//! (later) the Kafka listener both call these, so topics, data and offsets are the same ones.
//!
//! Blocking storage work (appends, reads, topic files) runs on tokio's blocking pool; nothing
//! here holds a partition's writer lock across an `.await`.

use std::sync::Arc;
use std::time::Duration;

use strand_client::batch::Batches;

use crate::budget::{Budget, Charge};
use crate::group::{CoordinatorConfig, GroupError, Groups};
use crate::log::{AppendInfo, FirstBatch, LogError, LogReader, ReadResult, RegionRead};
use crate::metrics::Metrics;
use crate::producers::{BatchSequence, SequenceCheck, SequenceError};
use crate::security::acl::{AclError, Authorizer, Denied};
use crate::topics::{is_internal_topic, Partition, Topic, TopicConfig, TopicError, Topics};
use crate::txn::{Transactions, TxnAppendError, TxnConfig};

/// How long a produce waits before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No answer at all: fire and forget.
    None,
    /// After the batches are written to the log (in the kernel; survives a process crash).
    Leader,
    /// After an fsync covering the batches succeeded (survives power loss).
    Durable,
}

/// Where to start, for a list-offsets request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// First offset whose record timestamp is at least this (ms since the epoch).
    Timestamp(i64),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("unknown topic or partition: {topic}/{partition}")]
    UnknownTopicOrPartition { topic: String, partition: u32 },
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("group: {0:?}")]
    Group(GroupError),
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// Only a group without members can be deleted.
    #[error("group {group:?} has {n_members} member(s): stop its consumers first")]
    GroupNotEmpty { group: String, n_members: usize },
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("a produce carrying an idempotent batch must carry exactly one batch")]
    IdempotentBatchCount,
    /// A transactional (or control) batch the partition's transactions do not allow.
    #[error(transparent)]
    Txn(#[from] crate::txn::TxnAppendError),
    /// A client asked to write, create or delete a topic only the broker writes.
    #[error("topic {topic:?} is the broker's own: clients may read it but not {operation} it")]
    InternalTopic {
        topic: String,
        operation: &'static str,
    },
    /// The authorizer refused the request (the error names the operation and the resource).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// An ACL change was invalid, over the limit, or could not be stored.
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A partition's state as admin requests report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start_offset: u64,
    pub high_watermark: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionInfo>,
}

/// The broker's operations over its topics.
#[derive(Debug, Clone)]
pub struct Broker {
    pub topics: Arc<Topics>,
    pub metrics: Arc<Metrics>,
    pub groups: Arc<Groups>,
    /// Upper bound on a fetch's long-poll wait.
    pub fetch_wait_max: Duration,
    /// Decides what each connection's principal may do, for both listeners alike. Disabled
    /// (everything allowed) unless the broker is started with `authorizer_enabled`.
    pub authorizer: Arc<Authorizer>,
    /// The transaction coordinator (transactional ids, markers, timeouts).
    pub txns: Arc<Transactions>,
}

impl Broker {
    /// Opens the group coordinator over `topics` (restoring committed offsets) and the
    /// transaction coordinator with its default limits.
    pub fn new(
        topics: Arc<Topics>,
        metrics: Arc<Metrics>,
        coordinator: CoordinatorConfig,
        fetch_wait_max: Duration,
    ) -> Result<Broker, TopicError> {
        Broker::open(
            topics,
            metrics,
            coordinator,
            TxnConfig::default(),
            fetch_wait_max,
        )
    }

    /// [`Broker::new`] with the transaction coordinator's limits.
    pub fn open(
        topics: Arc<Topics>,
        metrics: Arc<Metrics>,
        coordinator: CoordinatorConfig,
        txn: TxnConfig,
        fetch_wait_max: Duration,
    ) -> Result<Broker, TopicError> {
        let groups = Arc::new(Groups::open(topics.clone(), coordinator)?);
        let txns = Arc::new(Transactions::open(topics.clone(), groups.clone(), txn)?);
        Ok(Broker {
            topics,
            metrics,
            groups,
            fetch_wait_max,
            authorizer: Arc::new(Authorizer::disabled()),
            txns,
        })
    }

    /// Advances the group coordinator's clock (session timeouts, rebalance deadlines) and the
    /// transaction coordinator's (timeouts, completing what a crash left prepared) until
    /// shutdown.
    pub fn spawn_group_ticker(
        &self,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let groups = self
            .groups
            .clone()
            .run_ticker(Duration::from_millis(100), shutdown.clone());
        let txns = self.txns.clone().run(Duration::from_millis(100), shutdown);
        tokio::spawn(async move {
            tokio::join!(groups, txns);
        })
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, ServiceError> {
        self.topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize).cloned())
            .ok_or_else(|| ServiceError::UnknownTopicOrPartition {
                topic: topic.to_string(),
                partition,
            })
    }

    /// Creates a topic for a client; internal topics are refused (the broker creates its own).
    pub async fn create_topic(
        &self,
        name: String,
        config: TopicConfig,
    ) -> Result<TopicInfo, ServiceError> {
        refuse_internal(&name, "create")?;
        let topics = self.topics.clone();
        let topic = blocking(move || topics.create(&name, config)).await??;
        Ok(describe(&topic))
    }

    /// Deletes a topic for a client; internal topics are refused.
    pub async fn delete_topic(&self, name: String) -> Result<(), ServiceError> {
        refuse_internal(&name, "delete")?;
        let topics = self.topics.clone();
        blocking(move || topics.delete(&name)).await??;
        Ok(())
    }

    pub fn list_topics(&self) -> Vec<TopicInfo> {
        self.topics.list().iter().map(|t| describe(t)).collect()
    }

    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo, ServiceError> {
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| TopicError::NotFound(name.to_string()))?;
        Ok(describe(&topic))
    }

    /// Appends a run of batches (all validated before any is written) and returns where they
    /// landed. Synchronous and short (a positioned write into the page cache), so a connection
    /// can append its produce requests in the order they came.
    ///
    /// A batch from an idempotent producer (producer id set) passes the partition's sequence
    /// check first: a retry of a batch already written is answered with its first offsets and
    /// not written again; one that skips sequences is refused.
    ///
    /// Internal topics are refused: only the broker writes them (not through here).
    pub fn append(
        &self,
        topic: &str,
        partition: u32,
        batches: &mut [u8],
    ) -> Result<AppendInfo, ServiceError> {
        refuse_internal(topic, "write")?;
        let target = self.partition(topic, partition)?;
        let mut n_records = 0u64;
        let mut n_batches = 0usize;
        let mut sequence = None;
        let mut transactional = false;
        for (h, _) in Batches::new(batches) {
            n_records += h.record_count.max(0) as u64;
            n_batches += 1;
            if h.is_control() {
                return Err(TxnAppendError::ControlBatch.into());
            }
            transactional |= h.is_transactional();
            if h.producer_id >= 0 && h.base_sequence >= 0 {
                sequence = Some(BatchSequence {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    first_seq: h.base_sequence,
                    record_count: h.record_count.max(1),
                });
            }
        }
        let info = match sequence {
            None if transactional => return Err(TxnAppendError::NotIdempotent.into()),
            None => target
                .writer()
                .append_all(batches)
                .inspect_err(|e| self.metrics.count_storage_error("append", e))?,
            Some(_) if n_batches != 1 => return Err(ServiceError::IdempotentBatchCount),
            Some(sequence) => {
                let mut log = target.writer();
                let mut producers = target.producers();
                // A transactional batch only from the producer of a transaction open here
                // (checked, and its first offset noted, under the writer lock, so a reader
                // never sees it below the last stable offset).
                let mut txns = transactional.then(|| target.txns.lock());
                if let Some(txns) = &txns {
                    txns.check_append(sequence.producer_id, sequence.epoch)?;
                }
                match producers.check(&sequence)? {
                    SequenceCheck::Duplicate {
                        base_offset,
                        last_offset,
                    } => {
                        return Ok(AppendInfo {
                            base_offset,
                            last_offset,
                            max_timestamp: -1,
                        })
                    }
                    SequenceCheck::Append => {
                        let first = txns.as_mut().is_some_and(|t| {
                            t.appending(sequence.producer_id, log.high_watermark())
                        });
                        let info = match log.append_all(batches) {
                            Ok(info) => info,
                            Err(e) => {
                                self.metrics.count_storage_error("append", &e);
                                if let (true, Some(t)) = (first, txns.as_mut()) {
                                    t.append_failed(sequence.producer_id);
                                }
                                return Err(e.into());
                            }
                        };
                        producers.record(&sequence, info.base_offset, info.last_offset);
                        info
                    }
                }
            }
        };
        self.metrics
            .count_in(topic, batches.len() as u64, n_records);
        Ok(info)
    }

    /// Waits until every offset up to `last_offset` is on stable storage.
    pub async fn wait_durable(
        &self,
        topic: &str,
        partition: u32,
        last_offset: u64,
    ) -> Result<(), ServiceError> {
        let target = self.partition(topic, partition)?;
        target
            .reader()
            .wait_durable(last_offset + 1)
            .await
            .inspect_err(|e| self.metrics.count_storage_error("fsync", e))?;
        Ok(())
    }

    /// [`Broker::append`], then waits as `acks` says. Returns the base offset of the first
    /// batch and the last offset.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        mut batches: Vec<u8>,
    ) -> Result<(u64, u64), ServiceError> {
        let info = self.append(topic, partition, &mut batches)?;
        if acks == Acks::Durable {
            self.wait_durable(topic, partition, info.last_offset)
                .await?;
        }
        Ok((info.base_offset, info.last_offset))
    }

    /// Reads without waiting, at most `max_bytes` (or one batch, with [`FirstBatch::Whole`]),
    /// after charging what it may read to `budget`: the returned charge holds the bytes read
    /// and is given back when the caller drops it, once the answer is written. Waiting for the
    /// budget happens before anything is read, so a busy broker reads less, not more.
    pub async fn read_charged(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        first_batch: FirstBatch,
        budget: &Budget,
    ) -> Result<(ReadResult, Charge), ServiceError> {
        let mut charge = budget
            .charge(self.read_bytes_max(max_bytes, first_batch))
            .await;
        let result = self
            .read_limited(topic, partition, offset, max_bytes, first_batch)
            .await?;
        charge.shrink_to(result.batches.len());
        Ok((result, charge))
    }

    /// Counts what a read returns, for `/metrics`.
    fn count_out(&self, topic: &str, result: &ReadResult) {
        let n_records: u64 = Batches::new(&result.batches)
            .map(|(h, _)| h.record_count.max(0) as u64)
            .sum();
        self.metrics
            .count_out(topic, result.batches.len() as u64, n_records);
    }

    /// The most bytes a read with these limits returns: a first batch larger than the limit
    /// comes whole, and none is larger than a batch the log accepts.
    pub fn read_bytes_max(&self, max_bytes: usize, first_batch: FirstBatch) -> usize {
        match first_batch {
            FirstBatch::Whole => max_bytes.max(self.topics.defaults().batch_bytes_max),
            FirstBatch::WithinLimit => max_bytes,
        }
    }

    /// Reads without waiting and without charging a budget: for callers that charged
    /// [`Broker::read_bytes_max`] beforehand.
    pub async fn read_limited(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        first_batch: FirstBatch,
    ) -> Result<ReadResult, ServiceError> {
        let target = self.partition(topic, partition)?;
        let reader = target.reader().clone();
        let max_bytes = max_bytes.max(1);
        let result = read_at(reader, offset, move |r| {
            r.read_limited(offset, max_bytes, first_batch)
        })
        .await?
        .inspect_err(|e| self.metrics.count_storage_error("read", e))?;
        self.count_out(topic, &result);
        Ok(result)
    }

    /// [`Broker::read_charged`] with a long-poll: when there is nothing at `offset` yet, waits
    /// up to `max_wait` (and the broker's limit) for data, holding no budget while it waits.
    pub async fn fetch_charged(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        max_wait: Duration,
        budget: &Budget,
    ) -> Result<(ReadResult, Charge), ServiceError> {
        self.long_poll(
            topic,
            partition,
            offset,
            max_wait,
            || {
                self.read_charged(
                    topic,
                    partition,
                    offset,
                    max_bytes,
                    FirstBatch::Whole,
                    budget,
                )
            },
            |result| !result.batches.is_empty(),
        )
        .await
    }

    /// [`Broker::fetch_charged`] with the batches located in their segment file rather than
    /// read ([`crate::log::LogReader::read_region`]): for a listener that sends them from the
    /// file. The charge covers the region's bytes until the answer is written, as for a read.
    pub async fn fetch_region_charged(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        max_wait: Duration,
        budget: &Budget,
    ) -> Result<(RegionRead, Charge), ServiceError> {
        let read = || async {
            let mut charge = budget
                .charge(self.read_bytes_max(max_bytes, FirstBatch::Whole))
                .await;
            let reader = self.partition(topic, partition)?.reader().clone();
            let max_bytes = max_bytes.max(1);
            let result = read_at(reader, offset, move |r| r.read_region(offset, max_bytes))
                .await?
                .inspect_err(|e| self.metrics.count_storage_error("read", e))?;
            let region = result.region.as_ref();
            charge.shrink_to(region.map_or(0, |r| r.len));
            if let Some(region) = region {
                self.metrics
                    .count_out(topic, region.len as u64, region.offsets);
            }
            Ok((result, charge))
        };
        self.long_poll(topic, partition, offset, max_wait, read, |result| {
            result.region.is_some()
        })
        .await
    }

    /// Runs `read` until `has_data` says it found something or `max_wait` (within the
    /// broker's limit) runs out, waiting for the partition's high watermark to pass `offset`
    /// in between without holding the read's charge.
    async fn long_poll<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
        mut read: F,
        has_data: impl Fn(&T) -> bool,
    ) -> Result<(T, Charge), ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(T, Charge), ServiceError>>,
    {
        let deadline = tokio::time::Instant::now() + max_wait.min(self.fetch_wait_max);
        loop {
            let (result, charge) = read().await?;
            if has_data(&result) || tokio::time::Instant::now() >= deadline {
                return Ok((result, charge));
            }
            drop(charge);
            if tokio::time::timeout_at(deadline, self.wait_for_data(topic, partition, offset))
                .await
                .is_err()
            {
                // One last look: the data may have come as the wait ended.
                continue;
            }
        }
    }

    /// Waits until `partition` has data at `offset` (its high watermark passes it).
    pub async fn wait_for_data(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<u64, ServiceError> {
        let target = self.partition(topic, partition)?;
        target
            .reader()
            .wait_for_data(offset)
            .await
            .ok_or_else(|| ServiceError::Internal("log closed".into()))
    }

    /// Resolves an offset spec to an offset (`None` when no record is that new).
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<u64>, ServiceError> {
        let target = self.partition(topic, partition)?;
        let reader = target.reader().clone();
        Ok(match spec {
            OffsetSpec::Earliest => Some(reader.log_start_offset()),
            OffsetSpec::Latest => Some(reader.high_watermark()),
            OffsetSpec::Timestamp(ts) => {
                blocking(move || reader.offset_for_timestamp(ts)).await??
            }
        })
    }

    /// The partition's current bounds.
    pub fn partition_info(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionInfo, ServiceError> {
        let target = self.partition(topic, partition)?;
        Ok(partition_info(&target))
    }
}

fn refuse_internal(topic: &str, operation: &'static str) -> Result<(), ServiceError> {
    if is_internal_topic(topic) {
        tracing::debug!(
            topic,
            operation,
            "refused a client's change to an internal topic"
        );
        return Err(ServiceError::InternalTopic {
            topic: topic.to_string(),
            operation,
        });
    }
    Ok(())
}

fn partition_info(p: &Partition) -> PartitionInfo {
    PartitionInfo {
        partition: p.index,
        log_start_offset: p.reader().log_start_offset(),
        high_watermark: p.reader().high_watermark(),
    }
}

fn describe(topic: &Topic) -> TopicInfo {
    TopicInfo {
        name: topic.name.clone(),
        config: topic.config.clone(),
        partitions: topic.partitions.iter().map(|p| partition_info(p)).collect(),
    }
}

/// Runs a read of `reader` from `offset`: in the calling task when the offset lies in the
/// active segment, whose bytes were written lately and come from the page cache (a hand-off to
/// the blocking pool and back, two thread wake-ups, would cost more than the copy; this is the
/// read of every consumer that keeps up), on the blocking pool otherwise, where an older
/// segment may have to come from disk without holding up the connections of this worker.
async fn read_at<T: Send + 'static>(
    reader: LogReader,
    offset: u64,
    read: impl FnOnce(&LogReader) -> T + Send + 'static,
) -> Result<T, ServiceError> {
    if reader.in_active_segment(offset) {
        Ok(read(&reader))
    } else {
        blocking(move || read(&reader)).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(format!("storage task failed: {e}")))
}
