//! [`Handle`]: how the HTTP API and triggers talk to the orchestrator task, and how a request
//! for a saga another instance drives is forwarded there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Method, StatusCode};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{ApiError, ErrorBody, ListQuery, SagaPage, StartRequest};
use crate::breaker::Breaker;
use crate::core::Respond;
use crate::definition::{Definition, DefinitionSpec};
use crate::engine::Saga;
use crate::participants::Participants;

/// What the orchestrator task is asked.
pub(crate) enum Command {
    PutDefinition(String, Box<DefinitionSpec>, Respond<Definition>),
    GetDefinition(String, Option<u32>, Respond<Definition>),
    ListDefinitions(Respond<Vec<Definition>>),
    /// With the `traceparent` of the request that asked (its own span's, when traced).
    Start(StartRequest, Option<String>, Respond<(Saga, bool)>),
    Get(String, Respond<Saga>),
    List(ListQuery, Respond<SagaPage>),
    Abort(String, Respond<Saga>),
    Retry(String, Respond<Saga>),
    /// A finished saga's outcome is on its topic.
    OutcomePublished(String),
    /// A definition stored (by this or another instance).
    DefinitionSeen(Box<Definition>),
}

/// Sends requests to the orchestrator task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) participants: Arc<Participants>,
    /// Forwards requests to other instances.
    pub(crate) http: reqwest::Client,
    pub(crate) forward_token_file: Option<std::path::PathBuf>,
    pub(crate) instance_id: String,
    pub(crate) owned: watch::Receiver<Vec<u32>>,
    pub(crate) metrics: Arc<crate::metrics::SagaMetrics>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(Respond<T>) -> Command) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ApiError::Unavailable("the orchestrator is overloaded; retry later".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                ApiError::Unavailable("the orchestrator stopped".into())
            }
        })?;
        rx.await.map_err(|_| {
            ApiError::Unavailable(
                "the orchestrator stopped or let the saga's journal partition go; retry".into(),
            )
        })?
    }

    pub async fn put_definition(
        &self,
        name: String,
        spec: DefinitionSpec,
    ) -> Result<Definition, ApiError> {
        self.participants
            .check_definition(&spec)
            .map_err(ApiError::BadRequest)?;
        self.ask(|r| Command::PutDefinition(name, Box::new(spec), r))
            .await
    }

    pub async fn definition(
        &self,
        name: String,
        version: Option<u32>,
    ) -> Result<Definition, ApiError> {
        self.ask(|r| Command::GetDefinition(name, version, r)).await
    }

    pub async fn definitions(&self) -> Result<Vec<Definition>, ApiError> {
        self.ask(Command::ListDefinitions).await
    }

    /// Starts a saga (or finds the one its idempotency key started); answers once `Started`
    /// is durable. The flag is true when a new saga was started.
    pub async fn start(&self, request: StartRequest) -> Result<(Saga, bool), ApiError> {
        self.start_traced(request, None).await
    }

    /// [`Handle::start`] for a request that carried a W3C `traceparent`: the saga's trace
    /// continues it.
    pub async fn start_traced(
        &self,
        request: StartRequest,
        traceparent: Option<String>,
    ) -> Result<(Saga, bool), ApiError> {
        self.ask(|r| Command::Start(request, traceparent, r)).await
    }

    /// The orchestrator's metrics, as OpenMetrics text; breaker states are read now.
    pub fn render_metrics(&self) -> String {
        for (endpoint, breaker) in self.breakers() {
            self.metrics.set_breaker(&endpoint, breaker.state);
        }
        self.metrics.render()
    }

    /// Starts a saga here or, when its key belongs to a partition another instance drives,
    /// through that instance's API.
    pub async fn start_anywhere(&self, request: StartRequest) -> Result<(), ApiError> {
        match self.start(request.clone()).await {
            Err(ApiError::Elsewhere {
                owner: Some(api), ..
            }) => {
                let body = serde_json::to_vec(&request).expect("requests serialize");
                let authorization = self.forward_authorization().await?;
                let (status, body) = forward(
                    &self.http,
                    &api,
                    Method::POST,
                    "/sagas",
                    Some(body),
                    authorization.as_ref(),
                )
                .await?;
                if status.is_success() {
                    return Ok(());
                }
                let message = serde_json::from_slice::<ErrorBody>(&body)
                    .map_or_else(|_| format!("{api} answered {status}"), |e| e.error);
                Err(match status.as_u16() {
                    404 => ApiError::NotFound(message),
                    409 => ApiError::Conflict(message),
                    400 | 413 | 422 => ApiError::BadRequest(message),
                    _ => ApiError::Unavailable(message),
                })
            }
            other => other.map(|_| ()),
        }
    }

    /// `Bearer <token>` from the forward token file, when one is configured.
    async fn forward_authorization(&self) -> Result<Option<header::HeaderValue>, ApiError> {
        let Some(path) = &self.forward_token_file else {
            return Ok(None);
        };
        let unavailable = |why: String| {
            ApiError::Unavailable(format!("forward token file {}: {why}", path.display()))
        };
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut value = header::HeaderValue::from_str(&format!("Bearer {}", text.trim()))
            .map_err(|_| unavailable("not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    pub async fn get(&self, id: String) -> Result<Saga, ApiError> {
        self.ask(|r| Command::Get(id, r)).await
    }

    pub async fn list(&self, query: ListQuery) -> Result<SagaPage, ApiError> {
        self.ask(|r| Command::List(query, r)).await
    }

    pub async fn abort(&self, id: String) -> Result<Saga, ApiError> {
        self.ask(|r| Command::Abort(id, r)).await
    }

    pub async fn retry(&self, id: String) -> Result<Saga, ApiError> {
        self.ask(|r| Command::Retry(id, r)).await
    }

    pub fn breakers(&self) -> BTreeMap<String, Breaker> {
        self.participants.breakers()
    }

    /// Waits until this instance drives at least `n` journal partitions (it has taken them
    /// over: sagas recovered, owner markers durable), or `within` has passed; whether it does.
    pub async fn wait_for_partitions(&self, n: usize, within: Duration) -> bool {
        let mut owned = self.owned.clone();
        let taken = tokio::time::timeout(within, async move {
            owned.wait_for(|p| p.len() >= n).await.is_ok()
        })
        .await;
        taken == Ok(true)
    }

    /// This instance's name and the journal partitions it drives now.
    pub fn ownership(&self) -> (String, Vec<u32>) {
        (self.instance_id.clone(), self.owned.borrow().clone())
    }
}

/// A request forwarded to another instance carries this header, so it is never forwarded again.
pub const FORWARDED_HEADER: &str = "strand-saga-forwarded";

/// Sends a request to another instance's API; its status and body.
pub async fn forward(
    http: &reqwest::Client,
    api: &str,
    method: Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
    authorization: Option<&header::HeaderValue>,
) -> Result<(StatusCode, Bytes), ApiError> {
    let url = format!("{}{path_and_query}", api.trim_end_matches('/'));
    let mut request = http
        .request(method, &url)
        .header(FORWARDED_HEADER, "1")
        .timeout(Duration::from_secs(30));
    if let Some(authorization) = authorization {
        request = request.header(header::AUTHORIZATION, authorization.clone());
    }
    if let Some(body) = body {
        request = request
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let unavailable = |e: reqwest::Error| {
        ApiError::Unavailable(format!("forwarding to the owning instance {api}: {e}"))
    };
    let response = request.send().await.map_err(unavailable)?;
    let status = response.status();
    let body = response.bytes().await.map_err(unavailable)?;
    Ok((status, body))
}
