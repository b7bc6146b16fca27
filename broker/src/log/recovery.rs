//! Crash recovery: validating segments batch by batch, cutting a torn or corrupt tail, and the
//! two small files that let a clean restart skip that work.
//!
//! - `recovery-checkpoint`: an offset below which every segment was fsynced and sealed, so only
//!   segments that may hold offsets at or past it are scanned after a crash.
//! - `clean-shutdown`: written last by a clean close; its presence skips the scan entirely.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use strand_client::batch::{self, OffsetDeltas, LOG_OVERHEAD};

use super::error::{IoContext, Result};
use super::segment::{Indexer, Segment};

pub(crate) const CHECKPOINT_FILE: &str = "recovery-checkpoint";
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

/// What opening a log found and did. Every cut is also logged at `warn`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The previous run closed the log cleanly, so no segment was scanned.
    pub clean_shutdown: bool,
    pub segments_scanned: usize,
    /// Index files that were missing or damaged and were rebuilt from the log.
    pub indexes_rebuilt: Vec<PathBuf>,
    pub truncations: Vec<Truncation>,
    /// Segments removed because they followed a cut (offsets must stay contiguous).
    pub segments_removed: Vec<PathBuf>,
}

/// One cut made by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub segment: PathBuf,
    /// Byte position of the first damaged byte; everything before it was kept.
    pub position: u64,
    pub bytes_cut: u64,
    /// Offset of the first record that is no longer in the log.
    pub next_offset: u64,
    pub reason: String,
}

/// What a scan of one segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) valid_bytes: u64,
    pub(crate) file_bytes: u64,
    pub(crate) next_offset: u64,
    pub(crate) max_timestamp: i64,
    /// Why the scan stopped before the end of the file, if it did.
    pub(crate) damage: Option<String>,
}

/// Validates every batch of `segment` from its start, rebuilding both indexes on the way. Stops
/// at the first batch that is torn (runs past the end), fails its checks, or whose offsets go
/// backwards; `first_offset` is the smallest base offset the first batch may have.
pub(crate) fn scan(segment: &Segment, first_offset: u64, interval_bytes: u64) -> Result<Scan> {
    let io = segment.io()?;
    io.index.clear();
    io.time_index.clear();
    let file = File::open(&segment.log_path).ctx("open segment for recovery", &segment.log_path)?;
    let file_bytes = file
        .metadata()
        .ctx("stat segment", &segment.log_path)?
        .len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut indexer = Indexer::new(interval_bytes);
    let mut position = 0u64;
    let mut next_offset = first_offset;
    let mut max_timestamp = i64::MIN;
    let mut buf = Vec::new();
    let damage = loop {
        let remaining = file_bytes - position;
        if remaining == 0 {
            break None;
        }
        if remaining < LOG_OVERHEAD as u64 {
            break Some(format!("torn batch header: only {remaining} bytes left"));
        }
        buf.resize(LOG_OVERHEAD, 0);
        reader
            .read_exact(&mut buf)
            .ctx("read segment", &segment.log_path)?;
        let (_, length) = batch::peek_frame(&buf).expect("12 bytes");
        if length < (batch::BATCH_HEADER_BYTES - LOG_OVERHEAD) as i32 {
            break Some(format!("invalid batch length {length}"));
        }
        let total = LOG_OVERHEAD as u64 + length as u64;
        if total > remaining {
            break Some(format!(
                "torn batch: {total} bytes declared, {remaining} left in the file"
            ));
        }
        buf.resize(total as usize, 0);
        reader
            .read_exact(&mut buf[LOG_OVERHEAD..])
            .ctx("read segment", &segment.log_path)?;
        let header = match batch::validate(&buf, usize::MAX, OffsetDeltas::Increasing) {
            Ok(header) => header,
            Err(e) => break Some(e.to_string()),
        };
        if header.base_offset < 0 || (header.base_offset as u64) < next_offset {
            break Some(format!(
                "batch base offset {} goes back before {next_offset}",
                header.base_offset
            ));
        }
        let base = header.base_offset as u64;
        if base - segment.base_offset + header.last_offset_delta as u64 > u64::from(u32::MAX) {
            break Some(format!(
                "batch offset {base} is too far from the segment base"
            ));
        }
        indexer.on_batch(segment, base, position, total, header.max_timestamp);
        max_timestamp = max_timestamp.max(header.max_timestamp);
        next_offset = header.last_offset() as u64 + 1;
        position += total;
    };
    Ok(Scan {
        valid_bytes: position,
        file_bytes,
        next_offset,
        max_timestamp,
        damage,
    })
}

/// Reads the recovery checkpoint; a missing or damaged one means "scan everything" (0).
pub(crate) fn read_checkpoint(dir: &Path) -> u64 {
    let path = dir.join(CHECKPOINT_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return 0;
    };
    match <[u8; 12]>::try_from(bytes.as_slice()) {
        Ok(raw) if crc32fast::hash(&raw[..8]).to_le_bytes() == raw[8..12] => {
            u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"))
        }
        _ => {
            tracing::warn!(path = %path.display(), "damaged recovery checkpoint ignored; scanning every segment");
            0
        }
    }
}

/// Atomically replaces the recovery checkpoint: write a temporary file, fsync, rename, fsync the
/// folder.
pub(crate) fn write_checkpoint(dir: &Path, offset: u64) -> Result<()> {
    let mut raw = [0u8; 12];
    raw[..8].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32fast::hash(&raw[..8]);
    raw[8..].copy_from_slice(&crc.to_le_bytes());
    write_atomically(dir, CHECKPOINT_FILE, &raw)
}

/// Writes `name` in `dir` so that a crash leaves either the old or the new content.
pub(crate) fn write_atomically(dir: &Path, name: &str, content: &[u8]) -> Result<()> {
    replace_file(dir, name, content, false)
}

/// Replaces `dir/name` with `content` so that a crash leaves the old file or the new one,
/// never a mix: write a temporary file, fsync it, rename it over, fsync the folder. Every
/// fsync's result is checked; on failure the temporary file is removed and the old file stays.
/// `owner_only` makes the file readable by its owner alone (mode 0600), for secrets.
pub(crate) fn replace_file(dir: &Path, name: &str, content: &[u8], owner_only: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    // A leftover from a crash goes first, so that the mode of the new file applies.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).ctx("remove leftover", &tmp)
        }
        _ => {}
    }
    let written = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if owner_only { 0o600 } else { 0o666 })
        .open(&tmp)
        .ctx("create", &tmp)
        .and_then(|file| {
            std::io::Write::write_all(&mut &file, content).ctx("write", &tmp)?;
            file.sync_all().ctx("fsync", &tmp)
        });
    if let Err(e) = written {
        // No debris: a half-written temporary file would only hold disk space.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).ctx("rename", &path)?;
    sync_dir(dir)
}

/// fsyncs a folder so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync folder", dir)
}
