use std::io;
use std::path::{Path, PathBuf};

use strand_client::batch::BatchError;

/// Everything a partition log can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The batch was malformed; nothing was written.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The offset is below the log start or past the high watermark.
    #[error("offset {offset} is out of range [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: u64,
        log_start_offset: u64,
        high_watermark: u64,
    },
    /// An earlier write or fsync failed, so what is on disk is unknown; the log refuses writes
    /// until it is reopened (which runs recovery).
    #[error("log at {path} refuses writes after an earlier failure: {reason}")]
    Poisoned { path: PathBuf, reason: String },
    /// The log was closed.
    #[error("log at {path} is closed")]
    Closed { path: PathBuf },
    /// The segment was taken out of the log (by retention, compaction or recovery) while its
    /// files were closed; what the log holds now is in its current segment list.
    #[error("segment {path} was taken out of the log")]
    SegmentRetired { path: PathBuf },
    #[error("invalid log configuration: {0}")]
    Config(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Attaches the operation and the file's path to an IO error, so that a log line says which file
/// failed and how.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| LogError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}
