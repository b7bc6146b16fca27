//! The orchestrator's API types, shared by the HTTP layer, triggers and the orchestrator.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::definition::FieldError;
use crate::engine::{Saga, SagaState};

/// The shape of every error answer of the HTTP API.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// Why a request could not be served; `http` maps each to a status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid definition")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    /// It was there and is no longer kept.
    #[error("{0}")]
    Gone(String),
    /// The saga belongs to a journal partition another instance drives (`owner`, its API
    /// address, when known).
    #[error("journal partition {partition} is driven by {}", owner.as_deref().unwrap_or("no instance right now (instances are rebalancing); retry"))]
    Elsewhere {
        partition: u32,
        owner: Option<String>,
    },
}

/// `POST /sagas`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub definition: String,
    /// The latest version when absent.
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Value,
    /// A repeated start with the same key returns the saga it started.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A saga in a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SagaSummary {
    pub id: String,
    pub definition: String,
    pub version: u32,
    pub state: SagaState,
    pub idempotency_key: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl From<&Saga> for SagaSummary {
    fn from(s: &Saga) -> SagaSummary {
        SagaSummary {
            id: s.id.clone(),
            definition: s.definition.clone(),
            version: s.version,
            state: s.state,
            idempotency_key: s.idempotency_key.clone(),
            created_at_ms: s.created_at_ms,
            updated_at_ms: s.updated_at_ms,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub state: Option<SagaState>,
    pub definition: Option<String>,
    pub limit: usize,
    /// Sagas after this id (ids grow with creation time).
    pub cursor: Option<String>,
    /// A saga id, an id's prefix, or an idempotency key.
    pub search: Option<String>,
    /// Created at or after this (ms since the epoch).
    pub created_from_ms: Option<i64>,
    /// Created before this (ms since the epoch).
    pub created_to_ms: Option<i64>,
}

impl ListQuery {
    /// Whether `saga` passes every filter but the state one.
    pub fn matches_all_but_state(&self, saga: &SagaSummary) -> bool {
        self.definition
            .as_ref()
            .is_none_or(|d| &saga.definition == d)
            && self.created_from_ms.is_none_or(|t| saga.created_at_ms >= t)
            && self.created_to_ms.is_none_or(|t| saga.created_at_ms < t)
            && self.search.as_ref().is_none_or(|q| {
                saga.id.starts_with(q.as_str()) || saga.idempotency_key.as_ref() == Some(q)
            })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SagaPage {
    pub sagas: Vec<SagaSummary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
    /// How many sagas this instance holds that pass every filter but `state`, by state (the
    /// console's live counts).
    #[serde(default)]
    pub counts: std::collections::BTreeMap<String, usize>,
}

/// What a finished saga publishes on its definition's outcome topic.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Outcome {
    pub saga_id: String,
    pub definition: String,
    pub version: u32,
    pub state: SagaState,
    pub idempotency_key: Option<String>,
}
