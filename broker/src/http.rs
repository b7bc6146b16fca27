//! The broker's HTTP listener: `/health` for orchestrators and load balancers, `/metrics` for
//! Prometheus. Only this module knows HTTP.
//!
//! [`RequireScope`] is the bearer-token check every Strand HTTP API shares (the saga
//! orchestrator's too): a request without a valid token is answered 401 with
//! `WWW-Authenticate: Bearer`, one whose token lacks the route's scope 403, both with a JSON
//! body `{"error": "..."}` saying what is wrong. Tokens are verified by
//! [`crate::security::jwt::Verifier`]. On this listener `/health` stays open; `/metrics` needs
//! [`SCOPE_METRICS`] when `http_metrics_require_auth` is set.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::handler::Handler;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Json, Router};
use futures::future::BoxFuture;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::budget::Budget;
use crate::console;
use crate::metrics::Metrics;
use crate::security::jwt::{Claims, Verifier};
use crate::topics::Topics;

/// The scope a token needs for the broker's operator endpoints (`/metrics` when protected).
pub const SCOPE_METRICS: &str = "strand:metrics";

#[derive(Debug, Clone)]
pub struct HttpState {
    pub topics: Arc<Topics>,
    pub metrics: Arc<Metrics>,
    /// The listeners' in-flight budget, reported as `strand_in_flight_bytes`.
    pub budget: Budget,
    /// Bearer-token verification, when configured (`http_jwt`).
    pub auth: Option<Arc<Verifier>>,
    /// Whether `/metrics` needs a token with [`SCOPE_METRICS`] (requires `auth`).
    pub metrics_require_auth: bool,
    /// Topics, groups and the authorizer, for the console's API ([`crate::console`]).
    pub broker: crate::service::Broker,
}

/// Request bodies larger than this are refused (the endpoints take none).
const BODY_BYTES_MAX: usize = 64 * 1024;
/// Requests handled at once; more are refused with 503 rather than queued.
const CONCURRENT_REQUESTS_MAX: usize = 64;

/// The routes, with a bound on body size, concurrent requests and the time to answer.
/// Connection caps and socket timeouts are the listener's ([`crate::listener::GuardedListener`]).
pub fn router(state: HttpState, request_timeout: Duration) -> Router {
    let metrics_route = match (&state.auth, state.metrics_require_auth) {
        (Some(verifier), true) => {
            get(metrics.layer(RequireScope::new(Some(verifier.clone()), SCOPE_METRICS)))
        }
        _ => get(metrics),
    };
    let console = |route: axum::routing::MethodRouter<HttpState>| match &state.auth {
        Some(verifier) => route.layer(RequireScope::new(
            Some(verifier.clone()),
            console::SCOPE_CONSOLE,
        )),
        None => route,
    };
    Router::new()
        .route("/health", get(health))
        .route("/metrics", metrics_route)
        .route("/ui", get(|| ui_asset(None)))
        .route("/ui/", get(|| ui_asset(None)))
        .route(
            "/ui/{file}",
            get(|axum::extract::Path(file): axum::extract::Path<String>| ui_asset(Some(file))),
        )
        .route("/api/topics", console(get(console::list_topics)))
        .route("/api/topics/{topic}", console(get(console::describe_topic)))
        .route(
            "/api/topics/{topic}/messages",
            console(get(console::messages)),
        )
        .route("/api/groups", console(get(console::list_groups)))
        .route("/api/groups/{group}", console(get(console::describe_group)))
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

/// One of the console's static files ([`console::ASSETS`]), or a JSON 404.
async fn ui_asset(file: Option<String>) -> Response {
    let wanted = file.as_deref().unwrap_or("");
    match console::ASSETS.iter().find(|(path, _, _)| *path == wanted) {
        Some((_, content_type, body)) => console::asset_response(content_type, body),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no file {wanted:?} in the console") })),
        )
            .into_response(),
    }
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

/// A layer that lets a request through only with a valid bearer token carrying `scope`, and
/// puts the token's [`Claims`] in the request's extensions. Without a verifier (authentication
/// not configured) every request passes, as before authentication existed.
#[derive(Debug, Clone)]
pub struct RequireScope {
    verifier: Option<Arc<Verifier>>,
    scope: &'static str,
}

impl RequireScope {
    pub fn new(verifier: Option<Arc<Verifier>>, scope: &'static str) -> RequireScope {
        RequireScope { verifier, scope }
    }
}

impl<S> Layer<S> for RequireScope {
    type Service = RequireScopeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScopeService {
            inner,
            verifier: self.verifier.clone(),
            scope: self.scope,
        }
    }
}

/// The service [`RequireScope`] wraps a handler in.
#[derive(Debug, Clone)]
pub struct RequireScopeService<S> {
    inner: S,
    verifier: Option<Arc<Verifier>>,
    scope: &'static str,
}

impl<S, B> Service<Request<B>> for RequireScopeService<S>
where
    S: Service<Request<B>, Error = Infallible>,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(verifier) = &self.verifier {
            match authorize(verifier, request.headers(), self.scope) {
                Ok(claims) => {
                    request.extensions_mut().insert(claims);
                }
                Err(refusal) => return Box::pin(std::future::ready(Ok(refusal.into_response()))),
            }
        }
        let answer = self.inner.call(request);
        Box::pin(async move { answer.await.map(IntoResponse::into_response) })
    }
}

/// Why a request was refused: 401 (no token, or one that fails a check) or 403 (a valid token
/// without the route's scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRefusal {
    Unauthenticated { reason: String, token_sent: bool },
    Forbidden { scope: String },
}

impl IntoResponse for AuthRefusal {
    /// RFC 6750's challenges, and the JSON error body every Strand API answers with.
    fn into_response(self) -> Response {
        let (status, challenge, error) = match self {
            AuthRefusal::Unauthenticated { reason, token_sent } => (
                StatusCode::UNAUTHORIZED,
                if token_sent {
                    HeaderValue::from_static("Bearer realm=\"strand\", error=\"invalid_token\"")
                } else {
                    HeaderValue::from_static("Bearer realm=\"strand\"")
                },
                reason,
            ),
            AuthRefusal::Forbidden { scope } => (
                StatusCode::FORBIDDEN,
                HeaderValue::from_str(&format!(
                    "Bearer realm=\"strand\", error=\"insufficient_scope\", scope=\"{scope}\""
                ))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"strand\"")),
                format!("the token does not grant scope {scope}"),
            ),
        };
        (
            status,
            [(header::WWW_AUTHENTICATE, challenge)],
            Json(serde_json::json!({ "error": error })),
        )
            .into_response()
    }
}

/// The token's claims when `headers` carry a valid bearer token with `scope`.
pub fn authorize(
    verifier: &Verifier,
    headers: &HeaderMap,
    scope: &str,
) -> Result<Claims, AuthRefusal> {
    let refuse = |reason: &str, token_sent: bool| AuthRefusal::Unauthenticated {
        reason: reason.to_string(),
        token_sent,
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (value, more) = (values.next(), values.next());
    let Some(value) = value else {
        return Err(refuse(
            "a bearer token is required (Authorization: Bearer <token>)",
            false,
        ));
    };
    if more.is_some() {
        return Err(refuse("more than one Authorization header", true));
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return Err(refuse(
            "the Authorization header is not \"Bearer <token>\"",
            true,
        ));
    };
    let claims = verifier
        .verify(token)
        .map_err(|e| refuse(&e.to_string(), true))?;
    if !claims.has_scope(scope) {
        return Err(AuthRefusal::Forbidden {
            scope: scope.to_string(),
        });
    }
    Ok(claims)
}
