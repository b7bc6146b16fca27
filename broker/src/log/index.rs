//! Sparse offset and time indexes, memory-mapped.
//!
//! Each index file is sized to `index_bytes_max` while its segment is active (a sparse file) and
//! trimmed to its entries when the segment is sealed. Disk blocks are reserved with `fallocate`,
//! 64 KiB at a time, before entries are written into them, so a full disk means a skipped entry,
//! never a SIGBUS. Entries are little-endian 64-bit words, read and
//! written through `AtomicU64` views of the mapping: the single writer stores an entry's words,
//! then publishes the new entry count with `Release`; readers load the count with `Acquire` and
//! only ever look below it. Published entries are never changed, so readers never block the
//! writer and never see a half-written entry.
//!
//! - offset index entry (one word): `relative_offset << 32 | position`
//! - time index entry (two words): `max_timestamp_so_far`, `offset` (absolute)

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use memmap2::MmapMut;

use super::error::{IoContext, Result};

/// A memory-mapped array of fixed-width entries of `W` words each.
#[derive(Debug)]
struct Entries<const W: usize> {
    path: PathBuf,
    file: File,
    /// `None` when the file is empty (a zero-length file cannot be mapped).
    mmap: Option<MmapMut>,
    capacity: usize,
    len: AtomicUsize,
    /// Bytes from the start of the file whose disk blocks are allocated. The file is sparse past
    /// them: a store through the mapping into a hole on a full disk would kill the process with
    /// SIGBUS, so an entry is written only below this mark, and the mark moves by `fallocate`.
    reserved_bytes: AtomicU64,
    /// Whether a failed reservation has been logged (once per file, not once per entry).
    reservation_warned: AtomicBool,
}

/// How much index space one reservation takes: 4,096 offset-index entries, about 16 MiB of log
/// at the default index interval.
const RESERVE_CHUNK_BYTES: u64 = 64 * 1024;

impl<const W: usize> Entries<W> {
    const ENTRY_BYTES: usize = 8 * W;

    /// Opens (creating if needed) the file at `path`, sizes it to `capacity` entries and maps it.
    /// `len` entries at the front are taken as valid.
    fn open(path: &Path, capacity: usize, len: usize) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("open index", path)?;
        let bytes = (capacity * Self::ENTRY_BYTES) as u64;
        if file.metadata().ctx("stat index", path)?.len() != bytes {
            file.set_len(bytes).ctx("resize index", path)?;
        }
        let mmap = if capacity == 0 {
            None
        } else {
            // SAFETY: the file is owned by this broker's data directory and only this process
            // changes it while the mapping lives. It is never shrunk below the mapped entries
            // that readers may look at (`trim` keeps every published entry), so no access
            // touches a page past the end of the file.
            #[allow(unsafe_code)]
            let map = unsafe { MmapMut::map_mut(&file) }.ctx("mmap index", path)?;
            Some(map)
        };
        Ok(Entries {
            path: path.to_path_buf(),
            file,
            mmap,
            capacity,
            len: AtomicUsize::new(len.min(capacity)),
            // The entries already there were written, so their blocks exist.
            reserved_bytes: AtomicU64::new((len.min(capacity) * Self::ENTRY_BYTES) as u64),
            reservation_warned: AtomicBool::new(false),
        })
    }

    /// Writer only: makes sure the blocks up to `end` bytes are allocated. A full disk or a
    /// failing device makes this false, and the caller skips the entry (a sparse index stays
    /// correct without it). A filesystem without `fallocate` keeps the old sparse behaviour.
    fn reserve(&self, end: u64) -> bool {
        let from = self.reserved_bytes.load(Ordering::Relaxed);
        if end <= from {
            return true;
        }
        let file_bytes = (self.capacity * Self::ENTRY_BYTES) as u64;
        let to = end
            .div_ceil(RESERVE_CHUNK_BYTES)
            .saturating_mul(RESERVE_CHUNK_BYTES);
        let to = to.min(file_bytes).max(end);
        let mode = rustix::fs::FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, mode, from, to - from) {
            Ok(()) => {
                self.reserved_bytes.store(to, Ordering::Relaxed);
                true
            }
            Err(rustix::io::Errno::OPNOTSUPP) => {
                tracing::warn!(path = %self.path.display(), "the filesystem cannot reserve index space (no fallocate); a full disk may stop the broker while it writes an index");
                self.reserved_bytes.store(file_bytes, Ordering::Relaxed);
                true
            }
            Err(e) => {
                if !self.reservation_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot reserve index space; skipping index entries until it can (reads stay correct, only slower)");
                }
                false
            }
        }
    }

    /// Entry count of an index file as sealed (trimmed) on disk.
    fn entries_in_file(path: &Path) -> Result<Option<usize>> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() % Self::ENTRY_BYTES as u64 == 0 => {
                Ok(Some((meta.len() / Self::ENTRY_BYTES as u64) as usize))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("stat index", path),
        }
    }

    fn words(&self) -> &[AtomicU64] {
        match &self.mmap {
            None => &[],
            Some(map) => {
                let ptr = map.as_ptr() as *const AtomicU64;
                // SAFETY: the mapping is page-aligned (so 8-byte aligned), `capacity * W` words
                // long, and lives as long as `self`. All access to it goes through these atomics,
                // so concurrent readers and the writer never race on plain memory.
                #[allow(unsafe_code)]
                unsafe {
                    std::slice::from_raw_parts(ptr, self.capacity * W)
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    fn get(&self, idx: usize) -> [u64; W] {
        let words = &self.words()[idx * W..(idx + 1) * W];
        std::array::from_fn(|i| u64::from_le(words[i].load(Ordering::Relaxed)))
    }

    /// Writer only. Returns false when the index is full or its space cannot be reserved.
    fn push(&self, entry: [u64; W]) -> bool {
        let len = self.len.load(Ordering::Relaxed);
        if len >= self.capacity || !self.reserve(((len + 1) * Self::ENTRY_BYTES) as u64) {
            return false;
        }
        let words = &self.words()[len * W..(len + 1) * W];
        for (word, value) in words.iter().zip(entry) {
            word.store(value.to_le(), Ordering::Relaxed);
        }
        self.len.store(len + 1, Ordering::Release);
        true
    }

    /// Writer only: forget every entry, for a rebuild.
    fn clear(&self) {
        self.len.store(0, Ordering::Release);
    }

    /// Writer only: forget the entries from `keep` on, after the log was truncated.
    fn truncate(&self, keep: usize) {
        if keep < self.len() {
            self.len.store(keep, Ordering::Release);
        }
    }

    /// Largest entry index whose key (word 0 mapped by `key`) is `<= target`.
    fn floor(&self, target: u64, key: impl Fn([u64; W]) -> u64) -> Option<usize> {
        let n = self.len();
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if key(self.get(mid)) <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// Writes the mapping back and shrinks the file to its entries, for a sealed segment.
    fn seal(&self) -> Result<()> {
        if let Some(map) = &self.mmap {
            map.flush().ctx("msync index", &self.path)?;
        }
        self.file
            .set_len((self.len() * Self::ENTRY_BYTES) as u64)
            .ctx("trim index", &self.path)?;
        self.file.sync_all().ctx("fsync index", &self.path)
    }
}

/// Maps offsets to file positions in one segment.
#[derive(Debug)]
pub(crate) struct OffsetIndex {
    base_offset: u64,
    entries: Entries<1>,
}

impl OffsetIndex {
    pub(crate) fn open(path: &Path, base_offset: u64, capacity: usize, len: usize) -> Result<Self> {
        Ok(OffsetIndex {
            base_offset,
            entries: Entries::open(path, capacity, len)?,
        })
    }

    pub(crate) fn capacity_for(bytes_max: u64) -> usize {
        (bytes_max / 8) as usize
    }

    pub(crate) fn entries_in_file(path: &Path) -> Result<Option<usize>> {
        Entries::<1>::entries_in_file(path)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries.is_full()
    }

    pub(crate) fn get(&self, idx: usize) -> (u64, u32) {
        let [word] = self.entries.get(idx);
        (self.base_offset + (word >> 32), word as u32)
    }

    /// Writer only. `offset` must be at least the segment's base and within 2^32 of it.
    pub(crate) fn push(&self, offset: u64, position: u32) -> bool {
        let relative = offset - self.base_offset;
        debug_assert!(relative <= u64::from(u32::MAX));
        self.entries.push([(relative << 32) | u64::from(position)])
    }

    /// Position of the last indexed batch starting at or before `offset` (0 if none).
    pub(crate) fn lookup(&self, offset: u64) -> (u64, u32) {
        let target = offset.saturating_sub(self.base_offset);
        match self.entries.floor(target, |[w]| w >> 32) {
            Some(idx) => self.get(idx),
            None => (self.base_offset, 0),
        }
    }

    /// The last indexed batch starting at or before `position`, as (base offset, position).
    pub(crate) fn floor_position(&self, position: u64) -> Option<(u64, u32)> {
        self.entries
            .floor(position, |[w]| w & u64::from(u32::MAX))
            .map(|idx| self.get(idx))
    }

    /// Number of entries that point below `position`, for cutting the index after a truncation.
    pub(crate) fn entries_below(&self, position: u64) -> usize {
        (0..self.len())
            .take_while(|&i| u64::from(self.get(i).1) < position)
            .count()
    }

    pub(crate) fn truncate(&self, keep: usize) {
        self.entries.truncate(keep)
    }

    pub(crate) fn clear(&self) {
        self.entries.clear()
    }

    /// Checks a sealed index read from disk: offsets and positions strictly increase, start at
    /// the segment's first batch and stay inside the log file.
    pub(crate) fn check(&self, log_bytes: u64) -> Result<(), String> {
        let mut previous: Option<(u64, u32)> = None;
        for i in 0..self.len() {
            let (offset, position) = self.get(i);
            if u64::from(position) >= log_bytes {
                return Err(format!(
                    "entry {i} points at {position}, past the log's {log_bytes} bytes"
                ));
            }
            match previous {
                None if position != 0 => {
                    return Err("first entry does not point at position 0".into())
                }
                Some((o, p)) if offset <= o || position <= p => {
                    return Err(format!("entry {i} does not increase"))
                }
                _ => {}
            }
            previous = Some((offset, position));
        }
        if log_bytes > 0 && previous.is_none() {
            return Err("no entries for a non-empty log".into());
        }
        Ok(())
    }

    pub(crate) fn seal(&self) -> Result<()> {
        self.entries.seal()
    }
}

/// Maps timestamps to offsets in one segment: each entry says the largest timestamp among the
/// batches up to and including the one at `offset`.
#[derive(Debug)]
pub(crate) struct TimeIndex {
    entries: Entries<2>,
}

impl TimeIndex {
    pub(crate) fn open(path: &Path, capacity: usize, len: usize) -> Result<Self> {
        Ok(TimeIndex {
            entries: Entries::open(path, capacity, len)?,
        })
    }

    pub(crate) fn capacity_for(bytes_max: u64) -> usize {
        (bytes_max / 16) as usize
    }

    pub(crate) fn entries_in_file(path: &Path) -> Result<Option<usize>> {
        Entries::<2>::entries_in_file(path)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries.is_full()
    }

    pub(crate) fn get(&self, idx: usize) -> (i64, u64) {
        let [ts, offset] = self.entries.get(idx);
        (ts as i64, offset)
    }

    pub(crate) fn last(&self) -> Option<(i64, u64)> {
        self.len().checked_sub(1).map(|i| self.get(i))
    }

    pub(crate) fn push(&self, max_timestamp: i64, offset: u64) -> bool {
        self.entries.push([max_timestamp as u64, offset])
    }

    /// Offset from which to scan for the first batch with a timestamp `>= ts`: the offset of
    /// the last entry whose running maximum is still below `ts`.
    pub(crate) fn scan_start(&self, ts: i64) -> Option<u64> {
        // Entries' timestamps strictly increase, so a binary search on them is sound. Keys are
        // compared as biased unsigned values to keep the order of signed timestamps.
        let bias = |t: i64| (t as u64) ^ (1 << 63);
        let target = bias(ts).checked_sub(1)?;
        self.entries
            .floor(target, |[t, _]| t ^ (1 << 63))
            .map(|idx| self.get(idx).1)
    }

    pub(crate) fn truncate_from_offset(&self, offset: u64) {
        let keep = (0..self.len())
            .take_while(|&i| self.get(i).1 < offset)
            .count();
        self.entries.truncate(keep)
    }

    pub(crate) fn clear(&self) {
        self.entries.clear()
    }

    /// Checks a sealed time index read from disk: timestamps and offsets strictly increase.
    pub(crate) fn check(&self) -> Result<(), String> {
        for i in 1..self.len() {
            let (t0, o0) = self.get(i - 1);
            let (t1, o1) = self.get(i);
            if t1 <= t0 || o1 <= o0 {
                return Err(format!("time index entry {i} does not increase"));
            }
        }
        Ok(())
    }

    pub(crate) fn seal(&self) -> Result<()> {
        self.entries.seal()
    }
}
