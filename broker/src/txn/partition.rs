//! What one partition knows of transactions: the producers with a transaction open on it (and
//! the offset of each one's first batch, which bounds the last stable offset), and the index of
//! aborted transactions that `read_committed` consumers are sent with their records.
//!
//! The index is rebuilt from the log's own batches when the broker starts (a transactional
//! batch opens a producer's transaction, a control batch, the marker, closes it), so it never
//! disagrees with what is stored. Only partitions that ever took part in a transaction carry the
//! [`TRANSACTIONAL_FLAG`] file and are scanned.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use strand_client::batch::{BatchHeader, Batches, Compression, Records};
use tokio::sync::watch;

use crate::log::{LogError, LogReader};

/// A file in a partition's folder saying that transactional batches may be in its log, so the
/// scan at start is needed; created (and the folder fsynced) before the partition joins its
/// first transaction.
pub const TRANSACTIONAL_FLAG: &str = "transactional";

/// Record attributes of a control batch: transactional (0x10) and control (0x20).
const CONTROL_ATTRIBUTES: i16 = 0x30;

/// The two control record types Kafka defines (the key's second field).
const MARKER_ABORT: i16 = 0;
const MARKER_COMMIT: i16 = 1;

/// Why a transactional batch may not be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxnAppendError {
    #[error("producer {producer_id} has no transaction open on this partition (AddPartitionsToTxn first)")]
    NotInTransaction { producer_id: i64 },
    #[error("producer {producer_id}: epoch {epoch} is older than the transaction's {current}")]
    Fenced {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error(
        "a transactional batch must come from an idempotent producer (producer id and sequence)"
    )]
    NotIdempotent,
    #[error("control batches are written by the broker only")]
    ControlBatch,
}

/// One aborted transaction as Fetch reports it: the producer and the offsets from its first
/// batch on this partition to its abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone, Copy)]
struct OpenTxn {
    epoch: i16,
    /// Offset of the transaction's first batch here; `None` until it writes one.
    first_offset: Option<u64>,
}

/// The transactions of one partition.
#[derive(Debug, Default)]
pub struct PartitionTxns {
    open: HashMap<i64, OpenTxn>,
    /// By marker offset, oldest first.
    aborted: VecDeque<AbortedTxn>,
}

impl PartitionTxns {
    /// Lets `producer_id` at `epoch` write transactional batches here (AddPartitionsToTxn).
    pub fn begin(&mut self, producer_id: i64, epoch: i16) {
        let open = self.open.entry(producer_id).or_insert(OpenTxn {
            epoch,
            first_offset: None,
        });
        open.epoch = open.epoch.max(epoch);
    }

    /// Checks a transactional batch of `producer_id` at `epoch`; changes nothing.
    pub fn check_append(&self, producer_id: i64, epoch: i16) -> Result<(), TxnAppendError> {
        match self.open.get(&producer_id) {
            None => Err(TxnAppendError::NotInTransaction { producer_id }),
            Some(open) if open.epoch > epoch => Err(TxnAppendError::Fenced {
                producer_id,
                epoch,
                current: open.epoch,
            }),
            Some(open) if open.epoch < epoch => {
                Err(TxnAppendError::NotInTransaction { producer_id })
            }
            Some(_) => Ok(()),
        }
    }

    /// Notes that the producer's batch goes to `offset`, before it is written (so no reader
    /// sees it below the last stable offset); true when it is the transaction's first here.
    pub fn appending(&mut self, producer_id: i64, offset: u64) -> bool {
        match self.open.get_mut(&producer_id) {
            Some(open) if open.first_offset.is_none() => {
                open.first_offset = Some(offset);
                true
            }
            _ => false,
        }
    }

    /// Undoes [`PartitionTxns::appending`] for a write that failed.
    pub fn append_failed(&mut self, producer_id: i64) {
        if let Some(open) = self.open.get_mut(&producer_id) {
            open.first_offset = None;
        }
    }

    /// Closes the producer's transaction with its marker at `marker_offset`.
    pub fn complete(&mut self, producer_id: i64, marker_offset: u64, commit: bool) {
        if let Some(open) = self.open.remove(&producer_id) {
            if let (false, Some(first_offset)) = (commit, open.first_offset) {
                self.aborted.push_back(AbortedTxn {
                    producer_id,
                    first_offset,
                    last_offset: marker_offset,
                });
            }
        }
    }

    /// The first offset of any open transaction: nothing at or past it is stable.
    pub fn first_unstable(&self) -> Option<u64> {
        self.open.values().filter_map(|o| o.first_offset).min()
    }

    /// The producers with a transaction open here whose data is in the log, and their epochs.
    pub fn open_with_data(&self) -> Vec<(i64, i16)> {
        self.open
            .iter()
            .filter(|(_, o)| o.first_offset.is_some())
            .map(|(id, o)| (*id, o.epoch))
            .collect()
    }

    /// The aborted transactions that overlap offsets `from..to`.
    pub fn aborted_between(&self, from: u64, to: u64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below the log start (retention removed them).
    pub fn forget_before(&mut self, log_start_offset: u64) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start_offset)
        {
            self.aborted.pop_front();
        }
    }

    /// Applies one stored batch, in log order (the rebuild at start).
    fn replay(&mut self, header: &BatchHeader, bytes: &[u8]) {
        let offset = header.base_offset.max(0) as u64;
        if header.is_control() {
            match marker_type(header, bytes) {
                Some(kind) => self.complete(header.producer_id, offset, kind == MARKER_COMMIT),
                None => tracing::warn!(offset, "skipping an unreadable control batch"),
            }
        } else if header.is_transactional() && header.producer_id >= 0 {
            let open = self.open.entry(header.producer_id).or_insert(OpenTxn {
                epoch: header.producer_epoch,
                first_offset: Some(offset),
            });
            open.epoch = open.epoch.max(header.producer_epoch);
            open.first_offset.get_or_insert(offset);
        }
    }

    /// Rebuilds the index from the log (from its start to its high watermark).
    pub fn rebuild(reader: &LogReader) -> Result<PartitionTxns, LogError> {
        let mut txns = PartitionTxns::default();
        let mut offset = reader.log_start_offset();
        let end = reader.high_watermark();
        while offset < end {
            let result = reader.read(offset, 1 << 20)?;
            let mut next = offset;
            for (header, bytes) in Batches::new(&result.batches) {
                txns.replay(&header, bytes);
                next = next.max(u64::try_from(header.last_offset()).unwrap_or(0) + 1);
            }
            if next <= offset {
                break;
            }
            offset = next;
        }
        Ok(txns)
    }
}

/// The control record type (abort or commit) of a control batch.
fn marker_type(header: &BatchHeader, bytes: &[u8]) -> Option<i16> {
    if header.compression().ok()? != Compression::None {
        return None;
    }
    let record = Records::new(bytes, header).next()?.ok()?;
    let key = record.key?;
    (key.len() >= 4).then(|| i16::from_be_bytes([key[2], key[3]]))
}

/// A partition's transaction index and the signal that its last stable offset moved.
#[derive(Debug)]
pub struct PartitionTxnState {
    txns: Mutex<PartitionTxns>,
    stable_moved: watch::Sender<()>,
}

impl Default for PartitionTxnState {
    fn default() -> Self {
        PartitionTxnState {
            txns: Mutex::new(PartitionTxns::default()),
            stable_moved: watch::channel(()).0,
        }
    }
}

impl PartitionTxnState {
    /// Locks the index. Lock order: the partition's writer, its producers, then this.
    pub fn lock(&self) -> MutexGuard<'_, PartitionTxns> {
        self.txns.lock().expect("partition txns lock")
    }

    /// Replaces the index (the rebuild at start).
    pub fn restore(&self, txns: PartitionTxns) {
        *self.lock() = txns;
    }

    /// Tells waiting `read_committed` fetches that the last stable offset may have moved.
    pub fn notify(&self) {
        self.stable_moved.send_replace(());
    }

    /// A receiver that sees the next [`PartitionTxnState::notify`].
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.stable_moved.subscribe()
    }
}

/// Whether `dir` (a partition's folder) may hold transactional batches.
pub fn is_flagged(dir: &Path) -> bool {
    dir.join(TRANSACTIONAL_FLAG).exists()
}

/// Marks `dir` as holding transactional batches, durably (file and folder fsynced).
pub fn flag(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(TRANSACTIONAL_FLAG);
    if path.exists() {
        return Ok(());
    }
    std::fs::File::create(&path)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// A control batch holding one COMMIT or ABORT marker of `producer_id` at `epoch`.
pub fn marker_batch(producer_id: i64, epoch: i16, commit: bool, now_ms: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes()); // version
    key.extend_from_slice(&(if commit { MARKER_COMMIT } else { MARKER_ABORT }).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes()); // version
    value.extend_from_slice(&0i32.to_be_bytes()); // coordinator epoch: one coordinator
    let mut builder = strand_client::batch::BatchBuilder::with_capacity(128);
    builder.push(now_ms, Some(&key), Some(&value), &[]);
    let mut batch = builder.finish();
    // The builder writes a plain batch; a marker is a control batch of the producer.
    batch[21..23].copy_from_slice(&CONTROL_ATTRIBUTES.to_be_bytes());
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use strand_client::batch::{validate, OffsetDeltas};

    #[test]
    fn markers_are_valid_control_batches_that_replay() {
        let mut commit = marker_batch(7, 3, true, 1_700_000_000_000);
        let header = validate(&commit, usize::MAX, OffsetDeltas::Contiguous).unwrap();
        assert!(header.is_control() && header.is_transactional());
        assert_eq!((header.producer_id, header.producer_epoch), (7, 3));
        assert_eq!(marker_type(&header, &commit), Some(MARKER_COMMIT));
        let abort = marker_batch(7, 3, false, 1_700_000_000_000);
        let header = BatchHeader::parse(&abort).unwrap();
        assert_eq!(marker_type(&header, &abort), Some(MARKER_ABORT));
        strand_client::batch::set_base_offset(&mut commit, 5);
        let mut txns = PartitionTxns::default();
        txns.begin(7, 3);
        assert!(txns.appending(7, 2));
        assert_eq!(txns.first_unstable(), Some(2));
        let header = BatchHeader::parse(&commit).unwrap();
        txns.replay(&header, &commit);
        assert_eq!(txns.first_unstable(), None);
        assert!(txns.aborted_between(0, 10).is_empty());
    }

    #[test]
    fn aborts_are_indexed_and_fencing_holds() {
        let mut txns = PartitionTxns::default();
        assert_eq!(
            txns.check_append(1, 0),
            Err(TxnAppendError::NotInTransaction { producer_id: 1 })
        );
        txns.begin(1, 2);
        txns.begin(9, 0);
        assert!(matches!(
            txns.check_append(1, 1),
            Err(TxnAppendError::Fenced { current: 2, .. })
        ));
        assert_eq!(txns.check_append(1, 2), Ok(()));
        assert!(txns.appending(1, 10));
        assert!(!txns.appending(1, 12), "only the first batch counts");
        assert!(txns.appending(9, 11));
        assert_eq!(txns.first_unstable(), Some(10));
        txns.complete(1, 20, false);
        assert_eq!(txns.first_unstable(), Some(11));
        txns.complete(9, 21, true);
        assert_eq!(txns.first_unstable(), None);
        let aborted = AbortedTxn {
            producer_id: 1,
            first_offset: 10,
            last_offset: 20,
        };
        assert_eq!(txns.aborted_between(15, 30), vec![aborted]);
        assert_eq!(txns.aborted_between(0, 10), vec![]);
        assert_eq!(txns.aborted_between(21, 30), vec![]);
        txns.forget_before(21);
        assert!(txns.aborted_between(0, 100).is_empty());
    }
}
