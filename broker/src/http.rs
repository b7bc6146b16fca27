//! The broker's HTTP listener: `/health` for orchestrators and load balancers, `/metrics` for
//! Prometheus. Only this module knows HTTP.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{BoxError, Json, Router};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::budget::Budget;
use crate::metrics::Metrics;
use crate::topics::Topics;

#[derive(Debug, Clone)]
pub struct HttpState {
    pub topics: Arc<Topics>,
    pub metrics: Arc<Metrics>,
    /// The listeners' in-flight budget, reported as `strand_in_flight_bytes`.
    pub budget: Budget,
}

/// Request bodies larger than this are refused (the endpoints take none).
const BODY_BYTES_MAX: usize = 64 * 1024;
/// Requests handled at once; more are refused with 503 rather than queued.
const CONCURRENT_REQUESTS_MAX: usize = 64;

/// The routes, with a bound on body size, concurrent requests and the time to answer.
/// Connection caps and socket timeouts are the listener's ([`crate::listener::GuardedListener`]).
pub fn router(state: HttpState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    StatusCode::SERVICE_UNAVAILABLE
                }))
                .load_shed()
                .concurrency_limit(CONCURRENT_REQUESTS_MAX)
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    request_timeout,
                ))
                .layer(RequestBodyLimitLayer::new(BODY_BYTES_MAX)),
        )
}

/// 200 while every partition takes writes; 503 with the partitions that refuse them (after a
/// failed fsync, until they are recovered), so a load balancer or an orchestrator notices.
async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    let topics = state.topics.list();
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    let poisoned = state.topics.poisoned();
    let status = if poisoned.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "status": if poisoned.is_empty() { "ok" } else { "degraded" },
            "topics": topics.len(),
            "partitions": partitions,
            "poisoned_partitions": poisoned,
        })),
    )
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    state
        .metrics
        .poisoned_partitions
        .set(state.topics.poisoned().len() as i64);
    let budget = &state.budget;
    state
        .metrics
        .in_flight_bytes
        .set((budget.bytes_max() - budget.available()) as i64);
    state
        .metrics
        .open_sealed_segments
        .set(crate::log::open_sealed_segments() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
