//! The Strand broker.
//!
//! - [`log`]: the partition log, a folder of segments holding Kafka RecordBatch v2 bytes as
//!   clients sent them, with memory-mapped indexes, group-commit fsync, crash recovery and
//!   retention. Storage never touches a socket.
//! - [`topics`]: the topic registry, which persists names, partition counts and per-topic log
//!   settings, and owns one log per partition.
//! - [`config`]: settings from defaults, a TOML file, `STRAND_*` variables and flags.
//! - [`kafka`]: the Kafka-protocol listener (metadata, produce, fetch, list offsets so far).
//! - [`producers`]: idempotent producers' sequence numbers per partition.
//! - [`service`]: what the broker does for a request, whatever protocol carried it.
//! - [`run`]: the whole broker as a library (start, stop), for `strand-broker` and embedding.
//! - [`metrics`]: Prometheus metrics; [`http`]: `/health` and `/metrics`, and the bearer-token
//!   layer every Strand HTTP API uses; [`console`]: the web console at `/ui` and its JSON API
//!   under `/api` (topics, messages, groups), assets in `src/ui/`.
//! - [`security`]: who is on a connection (principal, session); bearer JWT verification.
//! - [`listener`]: connection caps and timeouts every listener shares; [`budget`]: the one
//!   memory budget for bytes in flight across the native and Kafka listeners.
//! - [`telemetry`]: logs (text or JSON with trace ids) and OpenTelemetry traces over OTLP,
//!   set up the same way by every Strand binary.

pub mod alloc;
pub mod budget;
pub mod config;
pub mod console;
pub mod group;
pub mod http;
pub mod kafka;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod producers;
pub mod run;
pub mod security;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod topics;
pub mod txn;
