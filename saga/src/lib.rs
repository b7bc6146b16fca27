//! Strand's saga orchestrator.
//!
//! - `definition`: saga definitions (JSON), versions and their validation.
//! - `template`: minijinja templates in participant URLs, headers and bodies.
//! - `engine`: one saga as a pure event-sourced state machine (decide, apply, replay).
//! - `breaker`: a circuit breaker per participant endpoint.
//! - `journal`: the durable journal, snapshots and definitions, on a Strand broker or a Kafka
//!   cluster (`strand_broker::cluster`).
//! - `ownership`: which instance drives which journal partitions, and where the others are.
//! - `participants`: HTTP and broker-command calls, and the consumer of broker replies; which
//!   hosts may be called, secret headers, TLS towards HTTPS participants.
//! - `api`: the API's request, answer and error types.
//! - `core`: the orchestrator's state and decisions without IO: sagas, timers, locks, journal
//!   batches, what their confirmation releases, fencing by owner epoch.
//! - `recovery`: rebuilding sagas from snapshot and journal records; checkpoints.
//! - `clock`: monotonic milliseconds for timers.
//! - `handle`: how the API and triggers reach the orchestrator task; forwarding.
//! - `orchestrator`: the task around the core: journal first, then act.
//! - `metrics`: the orchestrator's Prometheus metrics (`/metrics`); `observe`: a trace per saga
//!   (steps, attempts, journal appends) and the metrics, fed every journal entry.
//! - `sim`: the deterministic simulation of the core with simulated time, journal,
//!   participants, crashes and stale instances.
//! - `triggers`: one saga per record of a trigger topic, through a consumer group.
//! - `http`: the HTTP API (scopes per route when bearer JWTs are on) and its OpenAPI document.
//! - `main.rs`: `strand-saga`, with an embedded broker unless `--broker` or `--kafka-brokers`
//!   names a cluster.

pub mod api;
pub mod breaker;
pub mod clock;
pub mod core;
pub mod definition;
pub mod engine;
pub mod handle;
pub mod http;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod observe;
pub mod orchestrator;
pub mod ownership;
pub mod participants;
pub mod recovery;
pub mod sim;
pub mod template;
pub mod triggers;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Resolves once `shutdown` says stop (or its sender is gone). A named future, so tasks that
/// wait for it in `select!` stay `Send`.
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
