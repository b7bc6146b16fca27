//! Log compaction: keep, in sealed segments, only the latest record for each key, and drop
//! tombstones (null values) once they are older than the tombstone retention.
//!
//! Offsets never change: a thinned batch keeps its base offset and last offset delta, and only
//! loses records (the format allows gaps between offset deltas). A segment is rewritten
//! atomically: the cleaned copy is written and fsynced beside it, the old indexes are removed,
//! the copy is renamed over the old file and the folder fsynced, then fresh indexes are built.
//! A crash at any point leaves either the old segment or the new one, both readable (a missing
//! index is rebuilt on open; a leftover `.cleaned` file is removed).
//!
//! Compressed batches are kept whole: their records are not decompressed to learn their keys.
//! Records without a key are kept. The key map holds every key of the sealed segments.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use strand_client::batch::{self, BatchHeader, Compression, Records, LOG_OVERHEAD};

use super::error::{IoContext, Result};
use super::recovery;
use super::segment::{self, IndexMode, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use super::Shared;

/// Suffix of a segment's cleaned copy while it is being written.
pub(crate) const CLEANED_SUFFIX: &str = "cleaned";

/// What one cleaning pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
}

/// A handle that compacts a log's sealed segments while its writer goes on appending.
#[derive(Debug, Clone)]
pub struct LogCleaner {
    pub(crate) shared: Arc<Shared>,
}

/// Calls `f` with each batch of the segment file at `path` (its first `size` bytes).
fn for_each_batch(
    path: &Path,
    size: u64,
    mut f: impl FnMut(&BatchHeader, &[u8]) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).ctx("open segment for cleaning", path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file.take(size));
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let mut head = [0u8; LOG_OVERHEAD];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e).ctx("read segment", path),
        }
        let (_, length) = batch::peek_frame(&head).expect("12 bytes");
        buf.clear();
        buf.extend_from_slice(&head);
        buf.resize(LOG_OVERHEAD + length.max(0) as usize, 0);
        reader
            .read_exact(&mut buf[LOG_OVERHEAD..])
            .ctx("read segment", path)?;
        let header = BatchHeader::parse(&buf)?;
        f(&header, &buf)?;
    }
}

impl LogCleaner {
    /// One pass over every sealed segment. `now_ms` and `tombstone_retention_ms` decide which
    /// tombstones have been visible long enough to go.
    pub fn clean(&self, now_ms: i64, tombstone_retention_ms: u64) -> Result<CleanReport> {
        let shared = &self.shared;
        let _one_pass = shared.maintenance.lock().expect("maintenance lock");
        {
            // Segments a roll just retired are sealed by the flusher; do it now rather than
            // skip them this pass.
            let _no_sync = shared.sync_lock.lock().expect("sync lock");
            shared.seal_retired();
        }
        let segments = shared.segments();
        let sealed: Vec<Arc<Segment>> = segments[..segments.len() - 1]
            .iter()
            .filter(|s| s.is_sealed())
            .cloned()
            .collect();
        let mut report = CleanReport::default();
        if sealed.is_empty() {
            return Ok(report);
        }
        // The newest offset of every key in the sealed part of the log.
        let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
        for segment in &sealed {
            for_each_batch(&segment.log_path, segment.size(), |header, bytes| {
                // Transaction markers are kept whole (below): their keys are not the data's.
                if header.compression()? != Compression::None || header.is_control() {
                    return Ok(());
                }
                for record in Records::new(bytes, header) {
                    let record = record?;
                    if let Some(key) = record.key {
                        let offset = header.base_offset as u64 + record.offset_delta as u64;
                        latest.insert(key.to_vec(), offset);
                    }
                }
                Ok(())
            })?;
        }
        let horizon = now_ms.saturating_sub(tombstone_retention_ms as i64);
        for segment in &sealed {
            if let Some(rewritten) = self.rewrite(segment, &latest, horizon, &mut report)? {
                self.swap(segment, rewritten)?;
            }
        }
        Ok(report)
    }

    /// Writes the cleaned copy of `segment`; `None` if nothing in it can go.
    fn rewrite(
        &self,
        segment: &Segment,
        latest: &HashMap<Vec<u8>, u64>,
        horizon: i64,
        report: &mut CleanReport,
    ) -> Result<Option<Segment>> {
        let dir = &self.shared.dir;
        let cleaned_path = segment::segment_path(dir, segment.base_offset, CLEANED_SUFFIX);
        let file = File::create(&cleaned_path).ctx("create cleaned segment", &cleaned_path)?;
        // Removes the partial copy if this pass fails before the rename.
        let leftover = RemoveOnDrop(Some(cleaned_path.clone()));
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let (mut removed, mut tombstones, mut bytes_after) = (0u64, 0u64, 0u64);
        let mut kept: Vec<Vec<u8>> = Vec::new();
        for_each_batch(&segment.log_path, segment.size(), |header, bytes| {
            if header.compression()? != Compression::None || header.is_control() {
                out.write_all(bytes)
                    .ctx("write cleaned segment", &cleaned_path)?;
                bytes_after += bytes.len() as u64;
                return Ok(());
            }
            kept.clear();
            let mut n_records = 0;
            for record in Records::new(bytes, header) {
                let record = record?;
                n_records += 1;
                let offset = header.base_offset as u64 + record.offset_delta as u64;
                let superseded = record
                    .key
                    .is_some_and(|k| latest.get(k).is_some_and(|&o| o != offset));
                let expired_tombstone = record.key.is_some()
                    && record.value.is_none()
                    && header.max_timestamp < horizon;
                if superseded {
                    removed += 1;
                } else if expired_tombstone {
                    tombstones += 1;
                } else {
                    kept.push(record.raw.to_vec());
                }
            }
            if kept.len() == n_records {
                out.write_all(bytes)
                    .ctx("write cleaned segment", &cleaned_path)?;
                bytes_after += bytes.len() as u64;
            } else if !kept.is_empty() {
                let refs: Vec<&[u8]> = kept.iter().map(Vec::as_slice).collect();
                let thinned = batch::retain_records(bytes, header, &refs);
                // Checked before it can replace anything: recovery would cut a batch that
                // fails these checks, so a bad rewrite must never reach the segment.
                batch::validate(&thinned, usize::MAX, batch::OffsetDeltas::Increasing)?;
                out.write_all(&thinned)
                    .ctx("write cleaned segment", &cleaned_path)?;
                bytes_after += thinned.len() as u64;
            }
            Ok(())
        })?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx("write cleaned segment", &cleaned_path)?;
        if removed + tombstones == 0 {
            return Ok(None);
        }
        file.sync_all()
            .ctx("fsync cleaned segment", &cleaned_path)?;
        report.segments_rewritten += 1;
        report.bytes_before += segment.size();
        report.bytes_after += bytes_after;
        report.records_removed += removed;
        report.tombstones_removed += tombstones;
        // From here on the old segment's path stops naming its files: it keeps them open for
        // readers that still hold it, and is never reopened (that would open the copy).
        segment.retire_open()?;
        // Old indexes go first: if a crash follows the rename, the new file must not be paired
        // with the old file's positions. A missing index is rebuilt on open.
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            let path = segment::segment_path(dir, segment.base_offset, suffix);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx("remove old index", &path),
            }
        }
        let log_path = segment::segment_path(dir, segment.base_offset, LOG_SUFFIX);
        std::fs::rename(&cleaned_path, &log_path)
            .ctx("replace segment with cleaned copy", &log_path)?;
        leftover.disarm();
        recovery::sync_dir(dir)?;
        let config = &self.shared.config;
        let rewritten = Segment::open(dir, segment.base_offset, config, IndexMode::Rebuild, false)?;
        let scan = recovery::scan(&rewritten, segment.base_offset, config.index_interval_bytes)?;
        if let Some(reason) = scan.damage {
            // Every batch was checked before it was written and the copy fsynced, so this is a
            // storage fault: stop writing rather than pretend.
            let reason = format!(
                "cleaned segment {} reads back damaged: {reason}",
                log_path.display()
            );
            self.shared.poison(reason.clone());
            return Err(super::LogError::Poisoned {
                path: log_path,
                reason,
            });
        }
        rewritten.set_scanned(
            scan.valid_bytes,
            scan.next_offset.max(segment.next_offset()),
            scan.max_timestamp,
        );
        rewritten.seal()?;
        rewritten.mark_synced();
        tracing::info!(path = %log_path.display(), removed, tombstones, bytes_before = segment.size(), bytes_after, "compacted segment");
        Ok(Some(rewritten))
    }

    /// Puts the rewritten segment in the list in place of the old one. Readers holding the old
    /// one keep reading it through its open descriptor.
    fn swap(&self, old: &Arc<Segment>, new: Segment) -> Result<()> {
        let mut list = self.shared.segments.write().expect("segment list lock");
        let mut next = Vec::clone(&list);
        if let Some(slot) = next.iter_mut().find(|s| Arc::ptr_eq(s, old)) {
            let new = Arc::new(new);
            *slot = new.clone();
            *list = Arc::new(next);
            drop(list);
            self.shared.cache.admit(&new);
        }
        Ok(())
    }
}

/// Deletes a file when dropped, unless disarmed.
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a partial cleaned segment; the next open will");
            }
        }
    }
}
