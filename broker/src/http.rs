//! The broker's HTTP listener: `/health` for orchestrators and load balancers, `/metrics` for
//! Prometheus. Only this module knows HTTP.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::Metrics;
use crate::topics::Topics;

#[derive(Debug, Clone)]
pub struct HttpState {
    pub topics: Arc<Topics>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
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
