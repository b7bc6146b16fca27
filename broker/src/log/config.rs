//! What a partition log may do: segment sizes, index density, retention and fsync policy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When the log calls `fdatasync` on its own, as opposed to when a caller asks for durability.
///
/// Whatever the policy, an append whose caller awaits durability (`acks=durable`) is acknowledged
/// only after an fsync covering it has succeeded: the policy decides how much unacknowledged
/// data a power loss may take, not whether durable acknowledgements are honest. A process crash
/// (`kill -9`) loses nothing under any policy, because written bytes are in the kernel already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Never fsync in the background; the kernel writes back when it likes. Durable waiters
    /// still trigger a (group) fsync.
    Never,
    /// fsync at most this many milliseconds after data was appended, covering everything
    /// appended so far. Bounds what a power loss can take to about this window.
    IntervalMs(u64),
    /// Request an fsync after every append. Appends that arrive while one fsync runs are covered
    /// together by the next one (group commit), so throughput grows with concurrency.
    Always,
}

/// Per-partition log settings. The defaults match Kafka's where Kafka has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Roll to a new segment before the active one would pass this size. Default 1 GiB; at most
    /// 4 GiB, since index positions are 32-bit.
    pub segment_bytes_max: u64,
    /// Roll the active segment once it has taken appends for this long. Default 7 days.
    pub segment_ms_max: u64,
    /// Bytes of batches between two offset-index entries. Default 4 KiB.
    pub index_interval_bytes: u64,
    /// Size each index file is preallocated to; a full index rolls the segment. Default 10 MiB.
    pub index_bytes_max: u64,
    /// Largest batch an append accepts. Default 1 MiB plus Kafka's 12-byte log overhead.
    pub batch_bytes_max: usize,
    /// Delete sealed segments while the log would still hold at least this many bytes without
    /// them. `None` keeps everything. Default `None`.
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest timestamp is older than this. `None` keeps
    /// everything. Default 7 days.
    pub retention_ms: Option<u64>,
    /// Background fsync policy. Default every 1000 ms.
    pub fsync: FsyncPolicy,
    /// In compacted topics, how long a tombstone (a null value) stays readable before the
    /// cleaner may drop it, so that consumers see deletions. Default 1 day, as Kafka's
    /// `delete.retention.ms`.
    pub tombstone_retention_ms: u64,
    /// Bytes at the end of the log (whole segments, so at least this many) whose batch headers
    /// rebuild the idempotent producers' sequences when the partition opens; see
    /// `crate::producers`. Default 64 MiB.
    pub producer_state_scan_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_ms_max: WEEK_MS,
            index_interval_bytes: 4096,
            index_bytes_max: 10 << 20,
            batch_bytes_max: (1 << 20) + 12,
            retention_bytes: None,
            retention_ms: Some(WEEK_MS),
            fsync: FsyncPolicy::IntervalMs(1000),
            tombstone_retention_ms: 24 * 3600 * 1000,
            producer_state_scan_bytes: 64 << 20,
        }
    }
}

impl LogConfig {
    /// Checks the settings against what the on-disk formats can express.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes_max < 1024 || self.segment_bytes_max > u64::from(u32::MAX) {
            return Err(format!(
                "segment_bytes_max must be between 1024 and {} bytes, got {}",
                u32::MAX,
                self.segment_bytes_max
            ));
        }
        if self.index_bytes_max < 64 {
            return Err(format!(
                "index_bytes_max must be at least 64 bytes, got {}",
                self.index_bytes_max
            ));
        }
        if self.batch_bytes_max < strand_client::batch::BATCH_HEADER_BYTES {
            return Err(format!(
                "batch_bytes_max must hold at least a batch header, got {}",
                self.batch_bytes_max
            ));
        }
        if let FsyncPolicy::IntervalMs(0) = self.fsync {
            return Err("fsync interval must be at least 1 ms; use `always` instead".into());
        }
        Ok(())
    }

    pub(crate) fn fsync_interval(&self) -> Option<Duration> {
        match self.fsync {
            FsyncPolicy::IntervalMs(ms) => Some(Duration::from_millis(ms)),
            FsyncPolicy::Never | FsyncPolicy::Always => None,
        }
    }
}
