//! One segment: a `.log` file of whole record batches plus its offset and time indexes.
//!
//! The writer appends with positioned writes and then publishes the new size; readers use
//! positioned reads (`pread`) below the published size, so neither waits for the other.
//!
//! What a segment holds open (the `.log` descriptor and both index mappings) is a
//! [`SegmentIo`]. The active segment's is always open; a sealed segment's is closed by the
//! [`SegmentCache`] when too many are open, and reopened on the next read. A segment taken out
//! of the log is retired: it is never reopened, since its path may by then name another file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};

use bytes::Bytes;
use strand_client::batch::{BatchHeader, BATCH_HEADER_BYTES};

use super::cache::{Eviction, SegmentCache};
use super::config::LogConfig;
use super::error::{IoContext, LogError, Result};
use super::index::{OffsetIndex, TimeIndex};
use super::FirstBatch;

/// Extension of segment data files.
pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const INDEX_SUFFIX: &str = "index";
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";

/// Bytes of a batch header needed to walk batches: base offset, length, epoch, magic, CRC,
/// attributes and last offset delta.
const WALK_HEADER_BYTES: usize = 27;

pub(crate) fn segment_path(dir: &Path, base_offset: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

/// Parses `00000000000000001234.log` into 1234.
pub(crate) fn parse_base_offset(file_name: &str, suffix: &str) -> Option<u64> {
    let stem = file_name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The descriptors and mappings of an open segment. A reader keeps its `Arc` for the length of
/// one read, so a segment the cache closes meanwhile stays readable for that read.
#[derive(Debug)]
pub(crate) struct SegmentIo {
    pub(crate) file: File,
    pub(crate) index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
}

/// Whole batches of one segment file, located but not read, for a listener that sends them
/// from the file (`sendfile`). Holding it keeps the file open, so the bytes stay readable
/// even if retention or compaction takes the segment out of the log meanwhile.
#[derive(Clone)]
pub struct FileRegion {
    io: Arc<SegmentIo>,
    /// Where the batches start in the file.
    pub position: u64,
    pub len: usize,
    /// Offsets the batches span, from the first one's base offset to past the last one (the
    /// number of records unless compaction left gaps).
    pub offsets: u64,
}

impl std::fmt::Debug for FileRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRegion")
            .field("position", &self.position)
            .field("len", &self.len)
            .finish()
    }
}

impl FileRegion {
    /// The segment file holding the batches.
    pub fn file(&self) -> &File {
        &self.io.file
    }

    /// The batches, read into memory (for a listener that cannot send from the file).
    pub fn read(&self) -> std::io::Result<Bytes> {
        let mut buf = vec![0u8; self.len];
        self.io.file.read_exact_at(&mut buf, self.position)?;
        Ok(Bytes::from(buf))
    }
}

/// Whether a segment's files are open, and what reopening them needs.
#[derive(Debug)]
struct IoSlot {
    open: Option<Arc<SegmentIo>>,
    /// Taken out of the log: never reopened.
    retired: bool,
    /// Counted among the cache's open sealed segments.
    counted: bool,
    /// Index entries when the cache closed it (a sealed segment's indexes no longer change).
    n_index: usize,
    n_time: usize,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: u64,
    pub(crate) log_path: PathBuf,
    io: RwLock<IoSlot>,
    /// Set by every `io()`: the cache's second chance.
    referenced: AtomicBool,
    /// The cache this sealed segment was admitted to, and the segment itself, so that a reopen
    /// can queue it again. Unset while the segment is active.
    cache: OnceLock<(Arc<SegmentCache>, Weak<Segment>)>,
    /// Device and inode of the `.log` file, checked again on every reopen.
    file_id: (u64, u64),
    /// Bytes of whole batches readers may see.
    size: AtomicU64,
    /// Bytes known to be on stable storage.
    synced_size: AtomicU64,
    /// Offset after the last batch in this segment (the base offset while empty).
    next_offset: AtomicU64,
    /// Largest batch max-timestamp in this segment (`i64::MIN` while empty).
    max_timestamp: AtomicI64,
    sealed: AtomicBool,
}

/// How to treat index files found on disk when opening a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexMode {
    /// Take the entries in the files as sealed (trimmed) and valid; the caller checks them.
    Trust,
    /// Ignore their contents; the caller rebuilds them by scanning the log.
    Rebuild,
}

impl Segment {
    /// Creates the files of a new, empty, active segment. An empty `.log` file already there
    /// (left by a crash during a roll) is taken over; one holding data is never overwritten. If
    /// any file cannot be made (a full disk, no descriptors left), none is left behind, so the
    /// next attempt starts clean.
    pub(crate) fn create(dir: &Path, base_offset: u64, config: &LogConfig) -> Result<Segment> {
        let log_path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)
            .ctx("create segment", &log_path)?;
        let existing = file.metadata().ctx("stat segment", &log_path)?.len();
        if existing > 0 {
            return Err(LogError::Io {
                op: "create segment",
                path: log_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("a segment file holding {existing} bytes is already there"),
                ),
            });
        }
        let created = Self::with_file(
            dir,
            base_offset,
            file,
            log_path,
            config,
            IndexMode::Rebuild,
            true,
        );
        if created.is_err() {
            remove_segment_files(dir, base_offset);
        }
        created
    }

    /// Opens an existing segment. An `active` segment gets room in its indexes for appends.
    pub(crate) fn open(
        dir: &Path,
        base_offset: u64,
        config: &LogConfig,
        mode: IndexMode,
        active: bool,
    ) -> Result<Segment> {
        let log_path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .ctx("open segment", &log_path)?;
        Self::with_file(dir, base_offset, file, log_path, config, mode, active)
    }

    fn with_file(
        dir: &Path,
        base_offset: u64,
        file: File,
        log_path: PathBuf,
        config: &LogConfig,
        mode: IndexMode,
        active: bool,
    ) -> Result<Segment> {
        let meta = file.metadata().ctx("stat segment", &log_path)?;
        let size = meta.len();
        let index_path = segment_path(dir, base_offset, INDEX_SUFFIX);
        let time_path = segment_path(dir, base_offset, TIME_INDEX_SUFFIX);
        let (n_index, n_time) = match mode {
            IndexMode::Trust => (
                OffsetIndex::entries_in_file(&index_path)?.unwrap_or(0),
                TimeIndex::entries_in_file(&time_path)?.unwrap_or(0),
            ),
            IndexMode::Rebuild => (0, 0),
        };
        // An active segment needs room to append; one being rebuilt needs room to re-index and is
        // trimmed when sealed again.
        let (index_capacity, time_capacity) = if active || mode == IndexMode::Rebuild {
            (
                OffsetIndex::capacity_for(config.index_bytes_max).max(n_index),
                TimeIndex::capacity_for(config.index_bytes_max).max(n_time),
            )
        } else {
            (n_index, n_time)
        };
        let index = OffsetIndex::open(&index_path, base_offset, index_capacity, n_index)?;
        let time_index = TimeIndex::open(&time_path, time_capacity, n_time)?;
        Ok(Segment {
            base_offset,
            log_path,
            io: RwLock::new(IoSlot {
                open: Some(Arc::new(SegmentIo {
                    file,
                    index,
                    time_index,
                })),
                retired: false,
                counted: false,
                n_index: 0,
                n_time: 0,
            }),
            referenced: AtomicBool::new(false),
            cache: OnceLock::new(),
            file_id: (meta.dev(), meta.ino()),
            size: AtomicU64::new(size),
            synced_size: AtomicU64::new(0),
            next_offset: AtomicU64::new(base_offset),
            max_timestamp: AtomicI64::new(i64::MIN),
            sealed: AtomicBool::new(!active),
        })
    }

    /// The segment's open files, reopening them if the cache closed them. Fails for a retired
    /// segment whose files are closed ([`LogError::SegmentRetired`]), and if a reopen fails.
    pub(crate) fn io(&self) -> Result<Arc<SegmentIo>> {
        {
            let slot = self.io.read().expect("segment io lock");
            if let Some(io) = &slot.open {
                if !self.referenced.load(Ordering::Relaxed) {
                    self.referenced.store(true, Ordering::Relaxed);
                }
                return Ok(io.clone());
            }
        }
        let mut slot = self.io.write().expect("segment io lock");
        if let Some(io) = &slot.open {
            return Ok(io.clone());
        }
        if slot.retired {
            return Err(LogError::SegmentRetired {
                path: self.log_path.clone(),
            });
        }
        // Only the cache closes a segment, so a closed one knows its cache.
        let (cache, me) = self
            .cache
            .get()
            .expect("a closed segment was admitted to a cache");
        let io = Arc::new(self.reopen(slot.n_index, slot.n_time)?);
        slot.open = Some(io.clone());
        slot.counted = true;
        // A second chance from the start: whoever reopened it is about to use it.
        self.referenced.store(true, Ordering::Relaxed);
        cache.opened();
        drop(slot);
        // Queued after the lock is let go: the cache takes segments' locks under its own.
        cache.enqueue(me.clone());
        Ok(io)
    }

    /// The files of a segment the cache cannot have closed: the active one, or one not yet
    /// admitted (being opened, scanned or rewritten).
    pub(crate) fn open_io(&self) -> Arc<SegmentIo> {
        let slot = self.io.read().expect("segment io lock");
        slot.open
            .clone()
            .expect("an active or unadmitted segment is never closed")
    }

    /// Opens a sealed segment's files again as they were sealed: the `.log` file must be the
    /// same file (a compaction renames a new one over the path), and each index must still
    /// hold the entries it had.
    fn reopen(&self, n_index: usize, n_time: usize) -> Result<SegmentIo> {
        let path = &self.log_path;
        let file = File::open(path).ctx("reopen segment", path)?;
        let meta = file.metadata().ctx("stat segment", path)?;
        if (meta.dev(), meta.ino()) != self.file_id || meta.len() < self.size() {
            return Err(LogError::SegmentRetired { path: path.clone() });
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let index_path = segment_path(dir, self.base_offset, INDEX_SUFFIX);
        let time_path = segment_path(dir, self.base_offset, TIME_INDEX_SUFFIX);
        let index_capacity = OffsetIndex::entries_in_file(&index_path)?.unwrap_or(0);
        let time_capacity = TimeIndex::entries_in_file(&time_path)?.unwrap_or(0);
        if index_capacity < n_index || time_capacity < n_time {
            return Err(LogError::Io {
                op: "reopen segment index",
                path: index_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "the indexes hold {index_capacity} and {time_capacity} entries, fewer than the {n_index} and {n_time} sealed"
                    ),
                ),
            });
        }
        let index = OffsetIndex::open(&index_path, self.base_offset, index_capacity, n_index)?;
        let time_index = TimeIndex::open(&time_path, time_capacity, n_time)?;
        Ok(SegmentIo {
            file,
            index,
            time_index,
        })
    }

    /// Called by the cache only, with its queue locked: closes the files if nothing needs them
    /// open. Never waits for the segment's lock.
    pub(crate) fn try_close(&self) -> Eviction {
        let Ok(mut slot) = self.io.try_write() else {
            return Eviction::Keep;
        };
        if !slot.counted {
            return Eviction::NotOpen;
        }
        let Some(io) = &slot.open else {
            return Eviction::NotOpen;
        };
        if self.referenced.swap(false, Ordering::Relaxed)
            || slot.retired
            || !self.is_sealed()
            || self.synced_size.load(Ordering::Acquire) < self.size()
        {
            // Retired segments stay open while anyone holds them (readers of an old segment
            // list, and a compaction's old copy until its swap); unsynced ones until the flusher
            // has fsynced them through the descriptor that wrote them.
            return Eviction::Keep;
        }
        let (n_index, n_time) = (io.index.len(), io.time_index.len());
        slot.n_index = n_index;
        slot.n_time = n_time;
        slot.open = None;
        slot.counted = false;
        Eviction::Closed
    }

    /// Called by the cache: counts the segment's files as open in it. False if it already does
    /// or they are closed.
    pub(crate) fn mark_counted(&self) -> bool {
        let mut slot = self.io.write().expect("segment io lock");
        if slot.open.is_none() || slot.counted {
            return false;
        }
        slot.counted = true;
        true
    }

    /// Called by the cache on admission.
    pub(crate) fn attach(&self, cache: &Arc<SegmentCache>, me: &Arc<Segment>) -> bool {
        self.cache.set((cache.clone(), Arc::downgrade(me))).is_ok()
    }

    /// Takes the segment out of the log for good: its files are never reopened. Open ones stay
    /// open for whoever still holds the segment.
    pub(crate) fn retire(&self) {
        self.io.write().expect("segment io lock").retired = true;
    }

    /// Retires the segment with its files open, so that whoever holds it can still read it
    /// after its path names another file (a compaction renames the rewritten copy over it).
    pub(crate) fn retire_open(&self) -> Result<()> {
        let mut slot = self.io.write().expect("segment io lock");
        if slot.open.is_none() {
            if slot.retired {
                return Err(LogError::SegmentRetired {
                    path: self.log_path.clone(),
                });
            }
            // Reopened under the lock, so the cache cannot close it again before it is retired.
            // It is not queued: a retired segment stays open until it is dropped.
            let (cache, _) = self
                .cache
                .get()
                .expect("a closed segment was admitted to a cache");
            let io = self.reopen(slot.n_index, slot.n_time)?;
            slot.open = Some(Arc::new(io));
            slot.counted = true;
            cache.opened();
        }
        slot.retired = true;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.io.read().expect("segment io lock").open.is_some()
    }

    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    pub(crate) fn max_timestamp(&self) -> i64 {
        self.max_timestamp.load(Ordering::Acquire)
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Sets what a scan of the file found; only while opening, before readers exist.
    pub(crate) fn set_scanned(&self, size: u64, next_offset: u64, max_timestamp: i64) {
        self.size.store(size, Ordering::Release);
        self.next_offset.store(next_offset, Ordering::Release);
        self.max_timestamp.store(max_timestamp, Ordering::Release);
    }

    /// Marks the whole file as on stable storage (it was fsynced before a clean close or before
    /// the recovery checkpoint passed it).
    pub(crate) fn mark_synced(&self) {
        self.synced_size.store(self.size(), Ordering::Release);
    }

    /// Writer only: writes a whole batch at the end and publishes it. On a failed write the
    /// partial bytes are cut off again; if even that fails the error says so and the caller
    /// poisons the log.
    pub(crate) fn append(&self, batch: &[u8], header: &BatchHeader) -> Result<u64, AppendFailure> {
        let position = self.size.load(Ordering::Relaxed);
        let io = self.open_io();
        if let Err(source) = io.file.write_all_at(batch, position) {
            let cut = io.file.set_len(position);
            return Err(AppendFailure {
                error: LogError::Io {
                    op: "write segment",
                    path: self.log_path.clone(),
                    source,
                },
                file_restored: cut.is_ok(),
            });
        }
        let end = position + batch.len() as u64;
        self.max_timestamp
            .fetch_max(header.max_timestamp, Ordering::AcqRel);
        self.next_offset
            .store(header.last_offset() as u64 + 1, Ordering::Release);
        self.size.store(end, Ordering::Release);
        Ok(position)
    }

    /// fsyncs the data written so far if anything is new. Returns whether it synced.
    pub(crate) fn sync(&self) -> Result<bool> {
        let size = self.size();
        if self.synced_size.load(Ordering::Acquire) >= size {
            return Ok(false);
        }
        self.io()?
            .file
            .sync_data()
            .ctx("fsync segment", &self.log_path)?;
        self.synced_size.fetch_max(size, Ordering::AcqRel);
        Ok(true)
    }

    /// Records the segment's final timestamp entry, trims and fsyncs its indexes. Called by the
    /// only thread that still writes this segment: the flusher once a roll has moved the writer
    /// on, recovery, or the writer at close.
    pub(crate) fn seal(&self) -> Result<()> {
        let io = self.io()?;
        let max_ts = self.max_timestamp();
        let last_entry_ts = io.time_index.last().map(|(ts, _)| ts);
        if self.size() > 0 && last_entry_ts.is_none_or(|ts| max_ts > ts) {
            // The offset is the segment's last batch start, the latest batch that may carry it.
            let last_batch = self.last_batch_offset(&io).unwrap_or(self.base_offset);
            if io.time_index.last().is_none_or(|(_, o)| last_batch > o) {
                io.time_index.push(max_ts, last_batch);
            }
        }
        // Sealed whatever happens to the index files: they are derived from the log, which is
        // intact, and recovery checks them (and rebuilds a bad one) before trusting them.
        let index = io.index.seal();
        let time_index = io.time_index.seal();
        self.sealed.store(true, Ordering::Release);
        index.and(time_index)
    }

    /// Writer only: cuts the file back to `size` bytes (after recovery found damage there).
    pub(crate) fn truncate_to(&self, size: u64, next_offset: u64) -> Result<()> {
        let io = self.open_io();
        io.file
            .set_len(size)
            .ctx("truncate segment", &self.log_path)?;
        io.file.sync_all().ctx("fsync segment", &self.log_path)?;
        io.index.truncate(io.index.entries_below(size));
        io.time_index.truncate_from_offset(next_offset);
        self.size.store(size, Ordering::Release);
        self.synced_size.store(size, Ordering::Release);
        self.next_offset.store(next_offset, Ordering::Release);
        Ok(())
    }

    /// Base offset of the last batch, found by walking headers from the last index entry.
    fn last_batch_offset(&self, io: &SegmentIo) -> Option<u64> {
        let size = self.size();
        let (_, mut position) = io.index.lookup(u64::MAX);
        let mut last = None;
        while u64::from(position) < size {
            let header = self.walk_header(io, u64::from(position)).ok()?;
            last = Some(header.0);
            position += header.1 as u32;
        }
        last
    }

    /// Reads `(base_offset, total_len, last_offset)` of the batch at `position`.
    fn walk_header(&self, io: &SegmentIo, position: u64) -> Result<(u64, usize, u64)> {
        let mut buf = [0u8; WALK_HEADER_BYTES];
        io.file
            .read_exact_at(&mut buf, position)
            .ctx("read segment", &self.log_path)?;
        let base = i64::from_be_bytes(buf[0..8].try_into().expect("8 bytes")) as u64;
        let len = 12 + i32::from_be_bytes(buf[8..12].try_into().expect("4 bytes")).max(0) as usize;
        let delta = i32::from_be_bytes(buf[23..27].try_into().expect("4 bytes"));
        Ok((base, len, base + delta.max(0) as u64))
    }

    /// How much of the file holds batches below `high_watermark`. The writer publishes a
    /// batch's bytes (the size) before the log's high watermark moves past it, so a reader
    /// that loaded the watermark first must stop where the batch at the watermark starts, or it
    /// would return a batch past the watermark it reports.
    fn visible_below(&self, io: &SegmentIo, high_watermark: u64) -> Result<u64> {
        // The size first: the next offset stored before it covers at least what it shows.
        let size = self.size();
        if self.next_offset() <= high_watermark {
            return Ok(size);
        }
        Ok(self.locate_in(io, high_watermark, size)?.unwrap_or(size))
    }

    /// Finds the batch holding `offset` (or the first batch after it), returning its position,
    /// or `None` if no batch in the visible part of this segment ends at or after `offset`.
    pub(crate) fn locate(&self, offset: u64, visible: u64) -> Result<Option<u64>> {
        let io = self.io()?;
        self.locate_in(&io, offset, visible)
    }

    fn locate_in(&self, io: &SegmentIo, offset: u64, visible: u64) -> Result<Option<u64>> {
        let (_, start) = io.index.lookup(offset);
        let mut position = u64::from(start);
        while position + (BATCH_HEADER_BYTES as u64) <= visible {
            let (_, len, last) = self.walk_header(io, position)?;
            if last >= offset {
                return Ok(Some(position));
            }
            position += len as u64;
        }
        Ok(None)
    }

    /// Whole batches starting at the one that holds `offset`, up to `max_bytes` in all but at
    /// least one batch, so that a consumer with a small limit still makes progress.
    /// With [`FirstBatch::WithinLimit`], a first batch over `max_bytes` gives an empty read.
    /// Only batches below `high_watermark` (the one the caller loaded first) are returned.
    pub(crate) fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        first: FirstBatch,
        high_watermark: u64,
    ) -> Result<Option<Bytes>> {
        let io = self.io()?;
        let visible = self.visible_below(&io, high_watermark)?;
        let Some(position) = self.locate_in(&io, offset, visible)? else {
            return Ok(None);
        };
        let (_, first_len, _) = self.walk_header(&io, position)?;
        if first == FirstBatch::WithinLimit && first_len > max_bytes {
            return Ok(Some(Bytes::new()));
        }
        let want = (max_bytes.max(first_len) as u64).min(visible - position) as usize;
        let mut buf = vec![0u8; want];
        io.file
            .read_exact_at(&mut buf, position)
            .ctx("read segment", &self.log_path)?;
        // Cut at the last whole batch.
        let mut end = 0usize;
        while end + 12 <= buf.len() {
            let len = 12
                + i32::from_be_bytes(buf[end + 8..end + 12].try_into().expect("4 bytes")).max(0)
                    as usize;
            if end + len > buf.len() {
                break;
            }
            end += len;
        }
        buf.truncate(end);
        Ok(Some(Bytes::from(buf)))
    }

    /// Where [`Segment::read`] with [`FirstBatch::Whole`] would find its batches, without
    /// reading them: the first batch at or after `offset` and the whole batches after it up to
    /// `max_bytes` in all (at least the first). The batches are found by jumping to the last
    /// index entry within the limit and walking batch headers from there, so a region costs a
    /// few small reads however many batches it holds.
    pub(crate) fn region(
        &self,
        offset: u64,
        max_bytes: usize,
        high_watermark: u64,
    ) -> Result<Option<FileRegion>> {
        let io = self.io()?;
        let visible = self.visible_below(&io, high_watermark)?;
        let Some(position) = self.locate_in(&io, offset, visible)? else {
            return Ok(None);
        };
        let (first_base, first_len, first_last) = self.walk_header(&io, position)?;
        let limit = (position + max_bytes.max(first_len) as u64).min(visible);
        let mut end = position + first_len as u64;
        let mut next_offset = first_last + 1;
        // Every batch between the first one and an indexed batch start within the limit is
        // whole and within it.
        if let Some((base, at)) = io.index.floor_position(limit) {
            if u64::from(at) > end {
                end = u64::from(at);
                next_offset = base;
            }
        }
        while end + (WALK_HEADER_BYTES as u64) <= limit {
            let (_, len, last) = self.walk_header(&io, end)?;
            if end + len as u64 > limit {
                break;
            }
            end += len as u64;
            next_offset = last + 1;
        }
        Ok(Some(FileRegion {
            io,
            position,
            len: (end - position) as usize,
            offsets: next_offset.saturating_sub(first_base),
        }))
    }

    /// Reads `len` bytes at `position` (used by recovery and timestamp lookups).
    pub(crate) fn read_exact(&self, position: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.io()?
            .file
            .read_exact_at(&mut buf, position)
            .ctx("read segment", &self.log_path)?;
        Ok(buf)
    }

    /// First batch whose max timestamp is at least `ts`, as (position, header).
    pub(crate) fn find_timestamp(&self, ts: i64) -> Result<Option<(u64, BatchHeader)>> {
        let visible = self.size();
        let io = self.io()?;
        let start_offset = io.time_index.scan_start(ts).unwrap_or(self.base_offset);
        let Some(mut position) = self.locate_in(&io, start_offset, visible)? else {
            return Ok(None);
        };
        while position + (BATCH_HEADER_BYTES as u64) <= visible {
            let mut header_bytes = [0u8; BATCH_HEADER_BYTES];
            io.file
                .read_exact_at(&mut header_bytes, position)
                .ctx("read segment", &self.log_path)?;
            let header = BatchHeader::parse(&header_bytes)?;
            if header.max_timestamp >= ts {
                return Ok(Some((position, header)));
            }
            position += header.total_len() as u64;
        }
        Ok(None)
    }

    /// Retires this segment and removes its files. Open descriptors stay valid for readers
    /// that still hold the segment.
    pub(crate) fn delete_files(&self, dir: &Path) -> Result<()> {
        self.retire();
        delete_segment_files(dir, self.base_offset)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let counted = self.io.get_mut().map(|slot| slot.counted).unwrap_or(false);
        if let (true, Some((cache, _))) = (counted, self.cache.get()) {
            cache.closed();
        }
    }
}

/// Best effort, after a failed creation: the error that caused it is the one to report.
pub(crate) fn remove_segment_files(dir: &Path, base_offset: u64) {
    if let Err(e) = delete_segment_files(dir, base_offset) {
        tracing::warn!(error = %e, "could not remove the files of a segment that failed to start");
    }
}

fn delete_segment_files(dir: &Path, base_offset: u64) -> Result<()> {
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let path = segment_path(dir, base_offset, suffix);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("delete segment file", &path),
        }
    }
    Ok(())
}

/// Keeps both indexes of the segment being written or rebuilt at the configured density: an
/// offset entry every `index_interval_bytes`, and a time entry alongside whenever the running
/// maximum timestamp has grown since the last one.
#[derive(Debug)]
pub(crate) struct Indexer {
    interval_bytes: u64,
    bytes_since_entry: u64,
    running_max_ts: i64,
}

impl Indexer {
    pub(crate) fn new(interval_bytes: u64) -> Indexer {
        Indexer {
            interval_bytes,
            bytes_since_entry: 0,
            running_max_ts: i64::MIN,
        }
    }

    /// Continues after the entries a segment already has (a reopened active segment).
    pub(crate) fn resume(segment: &Segment, interval_bytes: u64) -> Indexer {
        let io = segment.open_io();
        let last_position = io.index.len().checked_sub(1).map(|i| io.index.get(i).1);
        Indexer {
            interval_bytes,
            bytes_since_entry: last_position
                .map_or(0, |p| segment.size().saturating_sub(u64::from(p))),
            running_max_ts: segment.max_timestamp(),
        }
    }

    /// Records a batch of `len` bytes at `position`. Returns false if an index is full (the
    /// entry is skipped; lookups stay correct, only slower).
    pub(crate) fn on_batch(
        &mut self,
        segment: &Segment,
        base_offset: u64,
        position: u64,
        len: u64,
        max_timestamp: i64,
    ) -> bool {
        let mut fits = true;
        self.running_max_ts = self.running_max_ts.max(max_timestamp);
        let io = segment.open_io();
        if io.index.len() == 0 || self.bytes_since_entry >= self.interval_bytes {
            fits &= io.index.push(base_offset, position as u32);
            self.bytes_since_entry = 0;
            let grew = io
                .time_index
                .last()
                .is_none_or(|(ts, o)| self.running_max_ts > ts && base_offset > o);
            if grew {
                fits &= io.time_index.push(self.running_max_ts, base_offset);
            }
        }
        self.bytes_since_entry += len;
        fits
    }
}

/// A failed append: the IO error, and whether the file was cut back to its previous size.
#[derive(Debug)]
pub(crate) struct AppendFailure {
    pub(crate) error: LogError,
    pub(crate) file_restored: bool,
}
