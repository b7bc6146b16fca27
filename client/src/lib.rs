//! Strand's client crate: the wire types that broker and clients share, and (with the broker
//! server issue) the async client and the `strand` CLI.
//!
//! - [`batch`]: Kafka RecordBatch v2, the unit Strand stores, checks and serves unchanged, and
//!   a builder for producers.
//! - [`partitioner`]: Kafka's murmur2 key partitioner.
//! - [`native`]: the native TCP protocol (frames, requests, responses, pushes).

pub mod batch;
pub mod native;
pub mod partitioner;
