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
//! - `orchestrator`: the task that owns every saga: journal first, then act.
//! - `triggers`: one saga per record of a trigger topic, through a consumer group.
//! - `http`: the HTTP API (scopes per route when bearer JWTs are on) and its OpenAPI document.
//! - `main.rs`: `strand-saga`, with an embedded broker unless `--broker` or `--kafka-brokers`
//!   names a cluster.

pub mod breaker;
pub mod definition;
pub mod engine;
pub mod http;
pub mod journal;
pub mod orchestrator;
pub mod ownership;
pub mod participants;
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
