//! The topic registry: which topics exist, their partition counts and settings, and one open
//! [`Log`] per partition.
//!
//! On disk, under the data directory:
//!
//! ```text
//! topics/<name>/topic.json       settings; written last on create, so its presence means "exists"
//! topics/<name>/<partition>/     one partition log (see `crate::log`)
//! deleting/<name>-<nanos>/       a topic being deleted; removed on the next start if a crash
//!                                interrupted the removal
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};

use crate::log::{
    CleanReport, FsyncObserver, Log, LogCleaner, LogConfig, LogError, LogReader, ObserverSlot,
    RecoveryReport,
};
use crate::producers::ProducerTable;

const TOPICS_DIR: &str = "topics";
const DELETING_DIR: &str = "deleting";
const TOPIC_FILE: &str = "topic.json";
/// Kafka's limit on topic name length.
pub const TOPIC_NAME_MAX: usize = 249;
/// The default bound on partitions per topic ([`TopicLimits::partitions_per_topic_max`]), so a
/// typo cannot create a million folders. Each partition log has its own flusher thread today,
/// which is what keeps this bound modest.
pub const PARTITIONS_MAX: u32 = 1024;

/// Topics the broker itself writes (committed offsets; Kafka's transaction state and KRaft
/// metadata, kept out for clients that expect Kafka's rules): clients may read them but not
/// create, write, delete or reconfigure them, on any protocol. Other names starting with `__`
/// are ordinary topics, as on Kafka (the saga orchestrator's `__saga_*` journals, say, which it
/// writes as a client).
pub fn is_internal_topic(name: &str) -> bool {
    matches!(
        name,
        "__consumer_offsets" | "__transaction_state" | "__cluster_metadata"
    )
}

/// How many topics and partitions clients may create. Each partition costs a flusher thread,
/// file descriptors and two index mappings, so these bound what a client can make the broker
/// hold. The broker's own internal topics are neither counted nor refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Topics at most. Default 1000.
    pub topics_max: u32,
    /// Partitions of one topic at most. Default 1024 ([`PARTITIONS_MAX`]).
    pub partitions_per_topic_max: u32,
    /// Partitions of all topics together at most. Default 4096.
    pub partitions_max: u32,
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits {
            topics_max: 1000,
            partitions_per_topic_max: PARTITIONS_MAX,
            partitions_max: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("topic {0:?} already exists")]
    AlreadyExists(String),
    #[error("topic {0:?} does not exist")]
    NotFound(String),
    #[error("invalid topic configuration: {0}")]
    InvalidConfig(String),
    /// A create would pass one of the [`TopicLimits`]; nothing was created.
    #[error("topic {topic:?} not created: {limit} is {max} and {reason}")]
    LimitReached {
        topic: String,
        limit: &'static str,
        max: u32,
        reason: String,
    },
    #[error("topic metadata {path}: {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TopicError + 'a {
    move |source| TopicError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Per-topic settings. Unset fields take the broker's defaults at the time the topic is opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub partitions: u32,
    /// Keep only the latest record per key (cleaning arrives with the consumer-groups issue).
    #[serde(default)]
    pub compact: bool,
    /// `Some(-1)` keeps data forever, as Kafka's `retention.ms=-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    /// `Some(-1)` keeps data of any size, as Kafka's `retention.bytes=-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes_max: Option<u64>,
}

impl TopicConfig {
    /// The log settings of this topic's partitions on top of the broker defaults.
    pub fn log_config(&self, defaults: &LogConfig) -> LogConfig {
        let limit = |v: i64| u64::try_from(v).ok();
        LogConfig {
            retention_ms: self.retention_ms.map_or(defaults.retention_ms, limit),
            retention_bytes: self.retention_bytes.map_or(defaults.retention_bytes, limit),
            segment_bytes_max: self.segment_bytes_max.unwrap_or(defaults.segment_bytes_max),
            ..defaults.clone()
        }
    }

    fn validate(&self, defaults: &LogConfig) -> Result<(), TopicError> {
        if self.partitions == 0 {
            return Err(TopicError::InvalidConfig(
                "partitions must be at least 1".to_string(),
            ));
        }
        for (name, value) in [
            ("retention_ms", self.retention_ms),
            ("retention_bytes", self.retention_bytes),
        ] {
            if value.is_some_and(|v| v < -1) {
                return Err(TopicError::InvalidConfig(format!(
                    "{name} must be -1 or more"
                )));
            }
        }
        self.log_config(defaults)
            .validate()
            .map_err(TopicError::InvalidConfig)
    }
}

/// Checks a topic name by Kafka's rules, so that any Kafka client's topic fits.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let bad = |reason| {
        Err(TopicError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > TOPIC_NAME_MAX {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// One partition: its writer, behind a lock held only for the length of an append, and a reader
/// handle that never takes it.
#[derive(Debug)]
pub struct Partition {
    pub topic: String,
    pub index: u32,
    writer: Mutex<Log>,
    reader: LogReader,
    cleaner: LogCleaner,
    tombstone_retention_ms: u64,
    producers: Mutex<ProducerTable>,
    /// Open and aborted transactions on this partition (see `crate::txn::partition`).
    pub txns: crate::txn::PartitionTxnState,
}

impl Partition {
    /// Locks the writer. Appends are short (a positioned write and a few atomic stores); fsync
    /// happens on the flusher thread, outside this lock.
    pub fn writer(&self) -> MutexGuard<'_, Log> {
        self.writer.lock().expect("partition writer lock")
    }

    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// The idempotent producers' sequences. Lock it while holding the writer, so a check and
    /// the append it allows are one step.
    pub fn producers(&self) -> MutexGuard<'_, ProducerTable> {
        self.producers.lock().expect("partition producers lock")
    }
}

#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub config: TopicConfig,
    pub partitions: Vec<Arc<Partition>>,
}

/// All topics of one broker.
#[derive(Debug)]
pub struct Topics {
    data_dir: PathBuf,
    defaults: LogConfig,
    limits: TopicLimits,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    fsync_observer: ObserverSlot,
}

/// A partition that refuses writes, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoisonedPartition {
    pub topic: String,
    pub partition: u32,
    pub reason: String,
}

/// What opening one partition's log found.
#[derive(Debug)]
pub struct PartitionRecovery {
    pub topic: String,
    pub partition: u32,
    pub report: RecoveryReport,
}

impl Topics {
    /// Opens every topic under `data_dir`, recovering each partition log, with the default
    /// [`TopicLimits`].
    pub fn open(
        data_dir: impl AsRef<Path>,
        defaults: LogConfig,
    ) -> Result<(Topics, Vec<PartitionRecovery>), TopicError> {
        Topics::open_with_limits(data_dir, defaults, TopicLimits::default())
    }

    /// Opens every topic under `data_dir`, recovering each partition log. Topics already on
    /// disk are all opened even when they are more than `limits` allow now (the limits were
    /// lowered, say): the limits only refuse new topics.
    pub fn open_with_limits(
        data_dir: impl AsRef<Path>,
        defaults: LogConfig,
        limits: TopicLimits,
    ) -> Result<(Topics, Vec<PartitionRecovery>), TopicError> {
        defaults.validate().map_err(TopicError::InvalidConfig)?;
        let data_dir = data_dir.as_ref().to_path_buf();
        let topics_dir = data_dir.join(TOPICS_DIR);
        let deleting_dir = data_dir.join(DELETING_DIR);
        std::fs::create_dir_all(&topics_dir).map_err(io_err("create", &topics_dir))?;
        if deleting_dir.exists() {
            std::fs::remove_dir_all(&deleting_dir)
                .map_err(io_err("finish deleting", &deleting_dir))?;
        }
        let mut topics = BTreeMap::new();
        let mut reports = Vec::new();
        let entries = std::fs::read_dir(&topics_dir).map_err(io_err("list", &topics_dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &topics_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            let meta_path = dir.join(TOPIC_FILE);
            if !meta_path.exists() {
                // A create that crashed before its metadata was written never happened.
                tracing::warn!(path = %dir.display(), "removing half-created topic");
                std::fs::remove_dir_all(&dir).map_err(io_err("remove half-created topic", &dir))?;
                continue;
            }
            let raw = std::fs::read(&meta_path).map_err(io_err("read", &meta_path))?;
            let config: TopicConfig =
                serde_json::from_slice(&raw).map_err(|e| TopicError::BadMetadata {
                    path: meta_path.clone(),
                    reason: e.to_string(),
                })?;
            let mut partitions = Vec::with_capacity(config.partitions as usize);
            for index in 0..config.partitions {
                let (partition, report) = open_partition(&dir, &name, index, &config, &defaults)?;
                partitions.push(partition);
                reports.push(PartitionRecovery {
                    topic: name.clone(),
                    partition: index,
                    report,
                });
            }
            topics.insert(
                name.clone(),
                Arc::new(Topic {
                    name,
                    config,
                    partitions,
                }),
            );
        }
        Ok((
            Topics {
                data_dir,
                defaults,
                limits,
                topics: RwLock::new(topics),
                fsync_observer: ObserverSlot::default(),
            },
            reports,
        ))
    }

    /// Reports every partition's fsync durations to `observer`, now and for topics created
    /// later.
    pub fn set_fsync_observer(&self, observer: FsyncObserver) {
        let _ = self.fsync_observer.0.set(observer.clone());
        for topic in self.list() {
            for partition in &topic.partitions {
                partition.writer().set_fsync_observer(observer.clone());
            }
        }
    }

    pub fn defaults(&self) -> &LogConfig {
        &self.defaults
    }

    pub fn limits(&self) -> TopicLimits {
        self.limits
    }

    /// Whether a topic of `partitions` more would fit the limits next to the topics there are;
    /// internal topics always fit and are not counted.
    pub fn check_limits(&self, name: &str, partitions: u32) -> Result<(), TopicError> {
        let topics = self.topics.read().expect("topics lock");
        self.check_limits_locked(&topics, name, partitions)
    }

    fn check_limits_locked(
        &self,
        topics: &BTreeMap<String, Arc<Topic>>,
        name: &str,
        partitions: u32,
    ) -> Result<(), TopicError> {
        if is_internal_topic(name) {
            return Ok(());
        }
        let refuse = |limit, max, reason| {
            Err(TopicError::LimitReached {
                topic: name.to_string(),
                limit,
                max,
                reason,
            })
        };
        let limits = &self.limits;
        if partitions > limits.partitions_per_topic_max {
            return refuse(
                "partitions_per_topic_max",
                limits.partitions_per_topic_max,
                format!("it asks for {partitions} partitions"),
            );
        }
        let counted = || topics.values().filter(|t| !is_internal_topic(&t.name));
        let n_topics = counted().count();
        if n_topics >= limits.topics_max as usize {
            return refuse(
                "topics_max",
                limits.topics_max,
                format!("there are {n_topics} topics"),
            );
        }
        let n_partitions: u64 = counted().map(|t| t.partitions.len() as u64).sum();
        if n_partitions + u64::from(partitions) > u64::from(limits.partitions_max) {
            return refuse(
                "partitions_max",
                limits.partitions_max,
                format!("there are {n_partitions} partitions and it asks for {partitions} more"),
            );
        }
        Ok(())
    }

    /// Creates a topic and its partition logs; durable when this returns. Refused past the
    /// [`TopicLimits`], with nothing created.
    pub fn create(&self, name: &str, config: TopicConfig) -> Result<Arc<Topic>, TopicError> {
        validate_topic_name(name)?;
        config.validate(&self.defaults)?;
        let mut topics = self.topics.write().expect("topics lock");
        if topics.contains_key(name) {
            return Err(TopicError::AlreadyExists(name.to_string()));
        }
        self.check_limits_locked(&topics, name, config.partitions)?;
        let topics_dir = self.data_dir.join(TOPICS_DIR);
        let dir = topics_dir.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err("remove stale topic folder", &dir))?;
        }
        std::fs::create_dir(&dir).map_err(io_err("create topic folder", &dir))?;
        let partitions = match self.create_partitions(&dir, &topics_dir, name, &config) {
            Ok(partitions) => partitions,
            Err(e) => {
                // No descriptors or no space left: the half-made topic goes at once.
                if let Err(cleanup) = self.discard(&dir, name) {
                    tracing::warn!(path = %dir.display(), error = %cleanup, "could not remove a topic that failed to create");
                }
                self.sweep_deleting();
                return Err(e);
            }
        };
        let topic = Arc::new(Topic {
            name: name.to_string(),
            config,
            partitions,
        });
        topics.insert(name.to_string(), topic.clone());
        tracing::info!(
            topic = name,
            partitions = topic.partitions.len(),
            "created topic"
        );
        Ok(topic)
    }

    /// Deletes a topic: it disappears at once (an atomic rename), its files right after.
    pub fn delete(&self, name: &str) -> Result<(), TopicError> {
        let mut topics = self.topics.write().expect("topics lock");
        let topic = topics
            .remove(name)
            .ok_or_else(|| TopicError::NotFound(name.to_string()))?;
        let dir = self.data_dir.join(TOPICS_DIR).join(name);
        self.discard(&dir, name)?;
        crate::log::sync_dir(&self.data_dir.join(TOPICS_DIR))?;
        drop(topic);
        self.sweep_deleting();
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Moves a topic folder out of the topics folder, into `deleting/`: a rename, which needs
    /// no descriptor, so it works when they have run out. [`Topics::sweep_deleting`] removes it.
    fn discard(&self, dir: &Path, name: &str) -> Result<(), TopicError> {
        let deleting = self.data_dir.join(DELETING_DIR);
        std::fs::create_dir_all(&deleting).map_err(io_err("create", &deleting))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let target = deleting.join(format!("{name}-{nanos}"));
        std::fs::rename(dir, &target).map_err(io_err("move topic to deleting", dir))
    }

    /// Removes what `deleting/` holds. What cannot go now (no descriptors left) stays for the
    /// next delete or the next start; it is out of the topics folder either way.
    fn sweep_deleting(&self) {
        let deleting = self.data_dir.join(DELETING_DIR);
        let Ok(entries) = std::fs::read_dir(&deleting) else {
            return;
        };
        for entry in entries.flatten() {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a deleted topic's files yet; retrying at the next delete or start");
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect()
    }

    /// Runs retention on every partition, returning how many segments were deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, TopicError> {
        let mut deleted = 0;
        for topic in self.list() {
            for partition in &topic.partitions {
                // The writer lock only while the segment list changes, not for the unlinks.
                let retired = partition.writer().retire_for_retention(now_ms);
                match retired.delete() {
                    Ok(report) => deleted += report.segments_deleted,
                    // One partition's failure (a failing disk) must not stop the others'.
                    Err(e) => {
                        tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "retention could not delete segment files");
                    }
                }
            }
        }
        Ok(deleted)
    }

    /// Opens the partitions of a topic being created, then writes its metadata (last: a topic
    /// without it is half-made and never opened).
    fn create_partitions(
        &self,
        dir: &Path,
        topics_dir: &Path,
        name: &str,
        config: &TopicConfig,
    ) -> Result<Vec<Arc<Partition>>, TopicError> {
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for index in 0..config.partitions {
            let partition = open_partition(dir, name, index, config, &self.defaults)?.0;
            if let Some(observer) = self.fsync_observer.0.get() {
                partition.writer().set_fsync_observer(observer.clone());
            }
            partitions.push(partition);
        }
        let json = serde_json::to_vec_pretty(config).expect("topic config serializes");
        crate::log::write_file_atomically(dir, TOPIC_FILE, &json)?;
        crate::log::sync_dir(topics_dir)?;
        Ok(partitions)
    }

    /// Partitions that refuse writes after a failed fsync or write, read without taking any
    /// writer lock (for `/health` and metrics).
    pub fn poisoned(&self) -> Vec<PoisonedPartition> {
        self.list()
            .iter()
            .flat_map(|t| t.partitions.iter())
            .filter_map(|p| {
                p.reader.poisoned().map(|reason| PoisonedPartition {
                    topic: p.topic.clone(),
                    partition: p.index,
                    reason,
                })
            })
            .collect()
    }

    /// Tries to bring every poisoned partition back in place (see [`Log::recover`]); returns
    /// how many came back. One whose disk still fails stays poisoned until the next try. The
    /// idempotent producers' sequences are rebuilt from what the recovered log holds, since
    /// the records some of them describe may be gone, as after a restart.
    pub fn recover_poisoned(&self) -> usize {
        let mut recovered = 0;
        for topic in self.list() {
            for partition in &topic.partitions {
                if partition.reader.poisoned().is_none() {
                    continue;
                }
                let mut writer = partition.writer();
                match writer.recover() {
                    Ok(_) => {
                        let scan_bytes = writer.config().producer_state_scan_bytes;
                        *partition.producers() =
                            ProducerTable::rebuild(&partition.reader, scan_bytes)
                        .unwrap_or_else(|e| {
                            tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "rebuilding idempotent producer state failed; starting empty");
                            ProducerTable::default()
                        });
                        recovered += 1;
                    }
                    Err(e) => {
                        tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "poisoned partition still cannot be recovered; retrying later");
                    }
                }
            }
        }
        recovered
    }

    /// Compacts the sealed segments of every partition of every compacted topic. Runs beside
    /// appends: it never takes a partition's writer lock.
    pub fn clean_compacted(&self, now_ms: i64) -> Result<CleanReport, TopicError> {
        let mut total = CleanReport::default();
        for topic in self.list().iter().filter(|t| t.config.compact) {
            for partition in &topic.partitions {
                let report = partition
                    .cleaner
                    .clean(now_ms, partition.tombstone_retention_ms)?;
                total.segments_rewritten += report.segments_rewritten;
                total.bytes_before += report.bytes_before;
                total.bytes_after += report.bytes_after;
                total.records_removed += report.records_removed;
                total.tombstones_removed += report.tombstones_removed;
            }
        }
        Ok(total)
    }

    /// Closes every log cleanly so that the next start skips recovery. Partitions still held
    /// elsewhere are closed too; their later appends are refused.
    pub fn close(&self) -> Result<(), TopicError> {
        let topics = std::mem::take(&mut *self.topics.write().expect("topics lock"));
        let mut first_error = None;
        for partition in topics.values().flat_map(|t| t.partitions.iter()) {
            if let Err(e) = partition.writer().close() {
                tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "closing partition log failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }
}

fn open_partition(
    topic_dir: &Path,
    topic: &str,
    index: u32,
    config: &TopicConfig,
    defaults: &LogConfig,
) -> Result<(Arc<Partition>, RecoveryReport), TopicError> {
    let (log, report) = Log::open(
        topic_dir.join(index.to_string()),
        config.log_config(defaults),
    )?;
    let reader = log.reader();
    // Clients keep at most five batches in flight and retry within their delivery timeout,
    // so the batches a retry can repeat are at the end of the log: only that tail is read.
    let producers = ProducerTable::rebuild(&reader, log.config().producer_state_scan_bytes)?;
    let cleaner = log.cleaner();
    let tombstone_retention_ms = log.config().tombstone_retention_ms;
    Ok((
        Arc::new(Partition {
            topic: topic.to_string(),
            index,
            writer: Mutex::new(log),
            reader,
            cleaner,
            tombstone_retention_ms,
            producers: Mutex::new(producers),
            txns: Default::default(),
        }),
        report,
    ))
}
