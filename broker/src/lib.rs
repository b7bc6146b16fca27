//! The Strand broker.
//!
//! - [`log`]: the partition log, a folder of segments holding Kafka RecordBatch v2 bytes as
//!   clients sent them, with memory-mapped indexes, group-commit fsync, crash recovery and
//!   retention.
//! - [`topics`]: the topic registry, which persists names, partition counts and per-topic log
//!   settings, and owns one log per partition.

pub mod log;
pub mod topics;
