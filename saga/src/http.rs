//! The orchestrator's HTTP API (axum, JSON) and its OpenAPI document (utoipa, generated from
//! these handlers and types). Only this module knows HTTP.
//!
//! Every error is a JSON body `{"error": "...", "details": [...]}`: 400 for a body that is not
//! the expected JSON, 404 for unknown names and ids, 409 for conflicts (an idempotency key
//! reused with another request, an abort or retry in the wrong state), 413 for an oversized
//! body, input or definition (see [`crate::limits`]), 422 for an invalid definition (one detail per problem, with its JSON path, also when
//! the JSON has the wrong shape), 503 when
//! the orchestrator is overloaded or stopped, or when the saga's journal partition is moving
//! between instances.
//!
//! With several instances sharing a journal, a request about a saga of a partition another
//! instance drives is forwarded there (once: a forwarded request is never forwarded again) and
//! its answer returned unchanged. The caller's bearer token goes with it: the owner checks it
//! again.
//!
//! With [`HttpConfig::auth`] set, every route but `/health` and `/openapi.json` needs a bearer
//! JWT with its scope: [`SCOPE_READ`] for reading definitions, sagas and breakers,
//! [`SCOPE_START`] to start a saga, [`SCOPE_DEFINE`] to store a definition, [`SCOPE_OPERATE`]
//! to abort or retry one, `strand:metrics` for `/metrics`. No or an invalid token is a 401 (`WWW-Authenticate: Bearer`), a
//! token without the scope a 403 (see `strand_broker::http::RequireScope`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, Query, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use strand_broker::http::RequireScope;
use strand_broker::security::jwt::Verifier;
use tower::ServiceBuilder;
use utoipa::{IntoParams, OpenApi};

use crate::api::{ApiError, ListQuery, SagaPage, StartRequest};
use crate::breaker::Breaker;
use crate::definition::{Definition, DefinitionSpec, FieldError};
use crate::engine::{Saga, SagaState};
use crate::handle::Handle;
use crate::limits::{OverLimit, SizeLimits};

/// Reading definitions, sagas and circuit breakers.
pub const SCOPE_READ: &str = "saga:read";
/// Starting sagas (`POST /sagas`).
pub const SCOPE_START: &str = "saga:start";
/// Storing definitions (`PUT /definitions/{name}`), which decide what participants are called.
pub const SCOPE_DEFINE: &str = "saga:define";
/// Operator actions on a saga: abort, retry.
pub const SCOPE_OPERATE: &str = "saga:operate";

/// Limits of the HTTP listener, and who may use it.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub body_bytes_max: usize,
    pub requests_in_flight_max: usize,
    pub request_timeout: Duration,
    /// Bearer-token verification; `None` leaves the API open (the default, for loopback).
    pub auth: Option<Arc<Verifier>>,
    /// Sizes of inputs, idempotency keys and definitions (413 or 400 past them).
    pub limits: SizeLimits,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_bytes_max: 1 << 20,
            requests_in_flight_max: 1024,
            request_timeout: Duration::from_secs(30),
            auth: None,
            limits: SizeLimits::default(),
        }
    }
}

pub use crate::api::ErrorBody;

/// An error as an HTTP answer: one status per kind.
#[derive(Debug)]
pub struct AppError(StatusCode, ErrorBody);

impl AppError {
    fn new(status: StatusCode, error: impl Into<String>) -> AppError {
        AppError(
            status,
            ErrorBody {
                error: error.into(),
                details: Vec::new(),
            },
        )
    }
}

impl From<ApiError> for AppError {
    fn from(e: ApiError) -> AppError {
        match e {
            ApiError::NotFound(m) => AppError::new(StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => AppError::new(StatusCode::CONFLICT, m),
            ApiError::BadRequest(m) => AppError::new(StatusCode::BAD_REQUEST, m),
            ApiError::Unavailable(m) => AppError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Gone(m) => AppError::new(StatusCode::GONE, m),
            e @ ApiError::Elsewhere { .. } => {
                AppError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            ApiError::Invalid(details) => AppError(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody {
                    error: "invalid definition".into(),
                    details,
                },
            ),
        }
    }
}

impl From<OverLimit> for AppError {
    fn from(e: OverLimit) -> AppError {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
        AppError::new(status, e.message)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

/// Marks a request one instance forwarded to another.
pub use crate::handle::{forward, FORWARDED_HEADER};

/// The answer: `result`, or for a saga another instance drives, that instance's answer.
async fn answer<T: Serialize>(
    handle: &Handle,
    headers: &HeaderMap,
    (method, path, body): (Method, String, Option<Bytes>),
    result: Result<(StatusCode, T), ApiError>,
) -> Response {
    match result {
        Ok((status, value)) => (status, Json(value)).into_response(),
        Err(ApiError::Elsewhere {
            owner: Some(api), ..
        }) if !headers.contains_key(FORWARDED_HEADER) => {
            let body = body.map(|b| b.to_vec());
            let authorization = headers.get(header::AUTHORIZATION);
            match forward(&handle.http, &api, method, &path, body, authorization).await {
                Ok((status, body)) => {
                    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
                }
                Err(e) => AppError::from(e).into_response(),
            }
        }
        Err(e) => AppError::from(e).into_response(),
    }
}

/// Parses a JSON body into `T`, answering 400 with serde's reason (and where) when it is not.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, AppError> {
    serde_json::from_slice(body).map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            format!("request body is not valid: {e}"),
        )
    })
}

/// Parses a definition: a body that is not JSON is a 400; JSON of the wrong shape (a missing or
/// unknown field, a wrong type) is a 422 naming the field's path, like every other validation
/// error.
fn definition_body(body: &Bytes) -> Result<DefinitionSpec, AppError> {
    let value: serde_json::Value = json_body(body)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        AppError(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorBody {
                error: "invalid definition".into(),
                details: vec![FieldError {
                    path: if path == "." { String::new() } else { path },
                    reason: e.into_inner().to_string(),
                }],
            },
        )
    })
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Strand saga orchestrator",
        description = "Saga definitions, instances and their journal"
    ),
    paths(
        put_definition,
        list_definitions,
        get_definition,
        get_definition_version,
        list_definition_versions,
        start_saga,
        list_sagas,
        get_saga,
        abort_saga,
        retry_saga,
        breakers,
        health
    ),
    modifiers(&BearerScheme),
    components(schemas(
        ErrorBody,
        FieldError,
        Definition,
        DefinitionSpec,
        StartRequest,
        Saga,
        SagaPage,
        Breaker
    ))
)]
pub struct ApiDoc;

/// The `bearer` security scheme the paths name with their scopes; it applies when the
/// orchestrator runs with JWT settings.
#[derive(Debug)]
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "A JWT from the configured issuer for the configured audience, with the \
                 route's scope in `scope` or `scp`; required only when strand-saga runs with \
                 --jwt-issuer",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

pub fn router(handle: Handle, config: &HttpConfig) -> Router {
    let scope = |scope| RequireScope::new(config.auth.clone(), scope);
    let (read, start, define, operate) = (
        scope(SCOPE_READ),
        scope(SCOPE_START),
        scope(SCOPE_DEFINE),
        scope(SCOPE_OPERATE),
    );
    Router::new()
        .route("/definitions", get(list_definitions.layer(read.clone())))
        .route(
            "/definitions/{name}",
            put(put_definition.layer(define)).get(get_definition.layer(read.clone())),
        )
        .route(
            "/definitions/{name}/versions",
            get(list_definition_versions.layer(read.clone())),
        )
        .route(
            "/definitions/{name}/versions/{version}",
            get(get_definition_version.layer(read.clone())),
        )
        .route(
            "/sagas",
            post(start_saga.layer(start)).get(list_sagas.layer(read.clone())),
        )
        .route("/sagas/{id}", get(get_saga.layer(read.clone())))
        .route("/sagas/{id}/abort", post(abort_saga.layer(operate.clone())))
        .route("/sagas/{id}/retry", post(retry_saga.layer(operate)))
        .route("/breakers", get(breakers.layer(read)))
        .route(
            "/metrics",
            get(metrics.layer(scope(strand_broker::http::SCOPE_METRICS))),
        )
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/ui", get(|| ui_asset(None)))
        .route("/ui/", get(|| ui_asset(None)))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>| ui_asset(Some(file))),
        )
        .route_layer(axum::middleware::from_fn(traced))
        .with_state(handle)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|e: tower::BoxError| async move {
                    if e.is::<tower::load_shed::error::Overloaded>() {
                        AppError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "too many requests in flight",
                        )
                    } else if e.is::<tower::timeout::error::Elapsed>() {
                        AppError::new(StatusCode::REQUEST_TIMEOUT, "request timed out")
                    } else {
                        AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                    }
                }))
                .load_shed()
                .concurrency_limit(config.requests_in_flight_max)
                .timeout(config.request_timeout),
        )
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            config.body_bytes_max,
        ))
        .layer(axum::Extension(config.limits))
}

/// A server span per API request (not for `/health`, `/metrics` and the console's pages),
/// continuing the caller's W3C `traceparent`.
async fn traced(
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = matched.as_ref().map_or_else(
        || request.uri().path().to_string(),
        |m| m.as_str().to_string(),
    );
    if route == "/health" || route == "/metrics" || route.starts_with("/ui") {
        return next.run(request).await;
    }
    let span = tracing::info_span!(
        "http request",
        otel.name = %format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(parent) = request
        .headers()
        .get(strand_broker::telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
    {
        strand_broker::telemetry::set_parent(&span, parent);
    }
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The orchestrator's metrics (OpenMetrics text; see `crate::metrics`). Needs a token with
/// `strand:metrics` when the API requires tokens.
async fn metrics(State(handle): State<Handle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            strand_broker::metrics::OPENMETRICS_CONTENT_TYPE,
        )],
        handle.render_metrics(),
    )
}
/// The console's pages for sagas ([`UI_ASSETS`], and the stylesheet and helpers shared with the
/// broker's console). They hold no data, so they load without a token; the API they call
/// checks it.
async fn ui_asset(file: Option<String>) -> Response {
    let wanted = file.as_deref().unwrap_or("");
    let shared = strand_broker::console::ASSETS
        .iter()
        .filter(|(path, _, _)| matches!(*path, "console.css" | "console.js"));
    match UI_ASSETS
        .iter()
        .chain(shared)
        .find(|(path, _, _)| *path == wanted)
    {
        Some((_, content_type, body)) => strand_broker::console::asset_response(content_type, body),
        None => AppError::new(
            StatusCode::NOT_FOUND,
            format!("no file {wanted:?} in the console"),
        )
        .into_response(),
    }
}

/// The saga pages: (path under `/ui/`, content type, text), compiled into the binary.
const UI_ASSETS: [(&str, &str, &str); 2] = [
    ("", "text/html; charset=utf-8", include_str!("ui/saga.html")),
    (
        "saga.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/saga.js"),
    ),
];

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Serving; with this instance's name and the journal partitions it drives.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "serving")))]
async fn health(State(handle): State<Handle>) -> Json<serde_json::Value> {
    let (instance, partitions) = handle.ownership();
    Json(serde_json::json!({ "status": "ok", "instance": instance, "partitions": partitions }))
}

/// Stores a new version of a definition.
#[utoipa::path(
    put, path = "/definitions/{name}",
    security(("bearer" = ["saga:define"])),
    params(("name" = String, Path, description = "definition name")),
    request_body = DefinitionSpec,
    responses(
        (status = 201, description = "the new version", body = Definition),
        (status = 400, description = "not JSON", body = ErrorBody),
        (status = 413, description = "larger than the definition size limit", body = ErrorBody),
        (status = 422, description = "invalid, with every problem and its path", body = ErrorBody),
    )
)]
async fn put_definition(
    State(handle): State<Handle>,
    axum::Extension(limits): axum::Extension<SizeLimits>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    limits.check_definition(body.len())?;
    let spec = definition_body(&body)?;
    let result = handle.put_definition(name.clone(), spec).await;
    let result = result.map(|def| (StatusCode::CREATED, def));
    let request = (Method::PUT, format!("/definitions/{name}"), Some(body));
    Ok(answer(&handle, &headers, request, result).await)
}

/// The latest version of every definition.
#[utoipa::path(
    get, path = "/definitions",
    security(("bearer" = ["saga:read"])),
    responses((status = 200, body = Vec<Definition>))
)]
async fn list_definitions(State(handle): State<Handle>) -> Result<Json<Vec<Definition>>, AppError> {
    let definitions = handle.definitions().await?;
    Ok(Json(
        definitions.into_iter().map(Definition::redacted).collect(),
    ))
}

/// The latest version of a definition.
#[utoipa::path(
    get, path = "/definitions/{name}",
    security(("bearer" = ["saga:read"])),
    params(("name" = String, Path,)),
    responses((status = 200, body = Definition), (status = 404, body = ErrorBody))
)]
async fn get_definition(
    State(handle): State<Handle>,
    Path(name): Path<String>,
) -> Result<Json<Definition>, AppError> {
    Ok(Json(handle.definition(name, None).await?.redacted()))
}

/// One version of a definition.
#[utoipa::path(
    get, path = "/definitions/{name}/versions/{version}",
    security(("bearer" = ["saga:read"])),
    params(("name" = String, Path,), ("version" = u32, Path,)),
    responses((status = 200, body = Definition), (status = 404, body = ErrorBody))
)]
async fn get_definition_version(
    State(handle): State<Handle>,
    Path((name, version)): Path<(String, u32)>,
) -> Result<Json<Definition>, AppError> {
    Ok(Json(
        handle.definition(name, Some(version)).await?.redacted(),
    ))
}

/// Versions one definition lists at most, newest first.
const DEFINITION_VERSIONS_LISTED_MAX: u32 = 1_000;

/// Every version of a definition, newest first (at most 1000).
#[utoipa::path(
    get, path = "/definitions/{name}/versions",
    security(("bearer" = ["saga:read"])),
    params(("name" = String, Path,)),
    responses((status = 200, body = Vec<Definition>), (status = 404, body = ErrorBody))
)]
async fn list_definition_versions(
    State(handle): State<Handle>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Definition>>, AppError> {
    let latest = handle.definition(name.clone(), None).await?;
    let oldest = latest
        .version
        .saturating_sub(DEFINITION_VERSIONS_LISTED_MAX - 1)
        .max(1);
    let mut versions = vec![latest.clone().redacted()];
    for version in (oldest..latest.version).rev() {
        versions.push(
            handle
                .definition(name.clone(), Some(version))
                .await?
                .redacted(),
        );
    }
    Ok(Json(versions))
}

/// Starts a saga. With an idempotency key already used: the same request returns the saga it
/// started (200), a different one is a conflict (409).
#[utoipa::path(
    post, path = "/sagas",
    security(("bearer" = ["saga:start"])),
    request_body = StartRequest,
    responses(
        (status = 201, description = "started (journaled)", body = Saga),
        (status = 200, description = "started before with this idempotency key", body = Saga),
        (status = 400, description = "not the expected JSON, or an idempotency key over its limit", body = ErrorBody),
        (status = 404, description = "unknown definition", body = ErrorBody),
        (status = 409, description = "idempotency key used by another request", body = ErrorBody),
        (status = 413, description = "the input is over its limit", body = ErrorBody),
    )
)]
async fn start_saga(
    State(handle): State<Handle>,
    axum::Extension(limits): axum::Extension<SizeLimits>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let request: StartRequest = json_body(&body)?;
    limits.check_start(&request)?;
    // The saga's trace continues this request's span (or, untraced, the caller's own).
    let traceparent =
        strand_broker::telemetry::traceparent(&tracing::Span::current()).or_else(|| {
            headers
                .get(strand_broker::telemetry::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    let result = handle
        .start_traced(request, traceparent)
        .await
        .map(|(saga, created)| {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, saga)
        });
    let request = (Method::POST, "/sagas".to_string(), Some(body));
    Ok(answer(&handle, &headers, request, result).await)
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    /// running, compensating, completed, compensated or failed
    state: Option<String>,
    definition: Option<String>,
    /// At most 1000; default 100.
    limit: Option<usize>,
    cursor: Option<String>,
    /// A saga id, an id's prefix, or an idempotency key.
    search: Option<String>,
    /// Only sagas created at or after this (ms since the epoch).
    created_from_ms: Option<i64>,
    /// Only sagas created before this (ms since the epoch).
    created_to_ms: Option<i64>,
}

/// Sagas, oldest first, filtered and paged.
#[utoipa::path(
    get, path = "/sagas", params(ListParams),
    security(("bearer" = ["saga:read"])),
    responses((status = 200, body = SagaPage), (status = 400, body = ErrorBody))
)]
async fn list_sagas(
    State(handle): State<Handle>,
    Query(params): Query<ListParams>,
) -> Result<Json<SagaPage>, AppError> {
    let state = params
        .state
        .map(|s| s.parse::<SagaState>())
        .transpose()
        .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, e))?;
    let query = ListQuery {
        state,
        definition: params.definition,
        limit: params.limit.unwrap_or(100),
        cursor: params.cursor,
        search: params.search.filter(|s| !s.is_empty()),
        created_from_ms: params.created_from_ms,
        created_to_ms: params.created_to_ms,
    };
    Ok(Json(handle.list(query).await?))
}

/// A saga with every step, its attempts, outputs and errors, and its full history.
#[utoipa::path(
    get, path = "/sagas/{id}", params(("id" = String, Path,)),
    security(("bearer" = ["saga:read"])),
    responses(
        (status = 200, body = Saga),
        (status = 404, body = ErrorBody),
        (status = 410, description = "finished, and its snapshot is no longer kept", body = ErrorBody),
    )
)]
async fn get_saga(
    State(handle): State<Handle>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = handle.get(id.clone()).await.map(|s| (StatusCode::OK, s));
    let request = (Method::GET, format!("/sagas/{id}"), None);
    answer(&handle, &headers, request, result).await
}

/// Compensates a running saga now.
#[utoipa::path(
    post, path = "/sagas/{id}/abort", params(("id" = String, Path,)),
    security(("bearer" = ["saga:operate"])),
    responses(
        (status = 202, description = "compensating (journaled)", body = Saga),
        (status = 404, body = ErrorBody),
        (status = 409, description = "not running, or past its pivot", body = ErrorBody),
    )
)]
async fn abort_saga(
    State(handle): State<Handle>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = handle.abort(id.clone()).await;
    let result = result.map(|s| (StatusCode::ACCEPTED, s));
    let request = (Method::POST, format!("/sagas/{id}/abort"), None);
    answer(&handle, &headers, request, result).await
}

/// Resumes a failed (stuck) saga with a fresh attempt budget for the step that held it.
#[utoipa::path(
    post, path = "/sagas/{id}/retry", params(("id" = String, Path,)),
    security(("bearer" = ["saga:operate"])),
    responses(
        (status = 202, description = "resumed (journaled)", body = Saga),
        (status = 404, body = ErrorBody),
        (status = 409, description = "not failed", body = ErrorBody),
    )
)]
async fn retry_saga(
    State(handle): State<Handle>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = handle.retry(id.clone()).await;
    let result = result.map(|s| (StatusCode::ACCEPTED, s));
    let request = (Method::POST, format!("/sagas/{id}/retry"), None);
    answer(&handle, &headers, request, result).await
}

/// Every participant endpoint's circuit breaker.
#[utoipa::path(
    get, path = "/breakers",
    security(("bearer" = ["saga:read"])),
    responses((status = 200, body = BTreeMap<String, Breaker>))
)]
async fn breakers(State(handle): State<Handle>) -> Json<BTreeMap<String, Breaker>> {
    Json(handle.breakers())
}
