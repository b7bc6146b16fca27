//! The operator's console on the broker's HTTP listener: the web pages at `/ui` (static files
//! compiled into the binary, see [`ASSETS`]) and the JSON API they read under `/api`:
//!
//! - `GET /api/topics`: every topic with its settings, record count and size on disk.
//! - `GET /api/topics/{topic}`: one topic, per partition.
//! - `GET /api/topics/{topic}/messages?partition=P&offset=O|time=MS&limit=N`: records of one
//!   partition from an offset or from a time, keys, values and headers as text when UTF-8 and
//!   as base64 otherwise.
//! - `GET /api/groups`, `GET /api/groups/{group}`: consumer groups, members, assignments,
//!   commits and lag.
//!
//! With `http_jwt` configured the API needs a bearer token with [`SCOPE_CONSOLE`]; with the
//! authorizer enabled every answer is checked against the ACLs as the token's subject
//! (`User:<sub>`, `User:ANONYMOUS` without a token) from the client's address, exactly as the
//! native and Kafka listeners check a connection's principal: Describe to see a topic or a
//! group, Read to see a topic's records. The pages themselves hold no data and are served
//! without a token.

use std::net::SocketAddr;
use std::path::Path;

use axum::extract::{ConnectInfo, FromRequestParts, Path as UrlPath, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use serde::Deserialize;
use serde_json::{json, Value};
use strand_client::batch::{Batches, Compression, Records};

use crate::http::HttpState;
use crate::listener::GuardedListener;
use crate::log::FirstBatch;
use crate::security::acl::{Operation, ResourceType};
use crate::security::jwt::Claims;
use crate::security::{Principal, SecurityProtocol, Session};
use crate::service::{OffsetSpec, ServiceError};

/// The scope a token needs for the console's API (`/api/...`).
pub const SCOPE_CONSOLE: &str = "strand:console";

/// Records one messages request answers at most; `limit` asks for fewer.
pub const MESSAGES_LIMIT_MAX: usize = 500;
/// Records one messages request answers when it names no `limit`.
pub const MESSAGES_LIMIT_DEFAULT: usize = 50;
/// Log bytes one messages request reads at most (whole batches: the first one may be larger).
pub const MESSAGES_READ_BYTES_MAX: usize = 4 << 20;

/// The console's static files: (path under `/ui/`, content type, bytes). The shared
/// `console.css` and `console.js` are also served by `strand-saga`.
pub const ASSETS: [(&str, &str, &str); 4] = [
    (
        "",
        "text/html; charset=utf-8",
        include_str!("ui/broker.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("ui/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/console.js"),
    ),
    (
        "broker.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/broker.js"),
    ),
];

/// A static file with headers that keep it same-origin: no inline script runs, nothing is
/// framed, nothing is fetched from elsewhere.
pub fn asset_response(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// What went wrong, as the JSON body every Strand API answers with.
#[derive(Debug)]
pub enum ConsoleError {
    NotFound(String),
    BadRequest(String),
    Forbidden(String),
    Internal(String),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ConsoleError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ConsoleError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ConsoleError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ConsoleError::Internal(m) => {
                tracing::error!(error = %m, "console request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the broker failed to answer; its log says why".to_string(),
                )
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

impl From<ServiceError> for ConsoleError {
    fn from(e: ServiceError) -> ConsoleError {
        match e {
            ServiceError::UnknownTopicOrPartition { .. }
            | ServiceError::Topic(crate::topics::TopicError::NotFound(_))
            | ServiceError::UnknownGroup(_) => ConsoleError::NotFound(e.to_string()),
            ServiceError::Log(crate::log::LogError::OffsetOutOfRange { .. }) => {
                ConsoleError::BadRequest(e.to_string())
            }
            ServiceError::Denied(_) => ConsoleError::Forbidden(e.to_string()),
            other => ConsoleError::Internal(other.to_string()),
        }
    }
}

/// The client's address, which `axum::serve` puts in each request's [`ConnectInfo`] when the
/// router is served with `into_make_service_with_connect_info::<PeerAddr>()`.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> PeerAddr {
        PeerAddr(*stream.remote_addr())
    }
}

/// Who is asking: the token's subject (when a token was checked) from the client's address.
#[derive(Debug)]
pub struct Caller(Session);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<PeerAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0 .0);
        let mut session = Session::new(SecurityProtocol::Plaintext, peer);
        if let Some(subject) = parts
            .extensions
            .get::<Claims>()
            .and_then(|c| c.subject.clone())
        {
            session.principal = Principal::user(subject);
        }
        Ok(Caller(session))
    }
}

impl Caller {
    fn may(&self, state: &HttpState, op: Operation, kind: ResourceType, name: &str) -> bool {
        state.broker.authorizer.authorize(&self.0, op, kind, name)
    }

    fn check(
        &self,
        state: &HttpState,
        op: Operation,
        kind: ResourceType,
        name: &str,
    ) -> Result<(), ConsoleError> {
        state
            .broker
            .authorizer
            .check(&self.0, op, kind, name)
            .map_err(|denied| ConsoleError::Forbidden(denied.to_string()))
    }
}

/// Bytes the disk holds for a partition's folder (segments and indexes): allocated blocks,
/// not lengths, since index files are preallocated sparse.
fn folder_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// One topic as the console shows it, with `size_bytes` per partition.
async fn topic_json(state: &HttpState, name: &str) -> Result<Value, ConsoleError> {
    let topic = state
        .broker
        .topics
        .get(name)
        .ok_or_else(|| ConsoleError::NotFound(format!("unknown topic {name:?}")))?;
    let log = topic.config.log_config(state.broker.topics.defaults());
    let dirs: Vec<_> = topic
        .partitions
        .iter()
        .map(|p| p.reader().dir().to_path_buf())
        .collect();
    let sizes = tokio::task::spawn_blocking(move || {
        dirs.iter().map(|d| folder_bytes(d)).collect::<Vec<u64>>()
    })
    .await
    .map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .zip(&sizes)
        .map(|(p, size)| {
            let reader = p.reader();
            json!({
                "partition": p.index,
                "log_start_offset": reader.log_start_offset(),
                "high_watermark": reader.high_watermark(),
                "records": reader.high_watermark() - reader.log_start_offset(),
                "size_bytes": size,
            })
        })
        .collect();
    let limit = |v: Option<u64>| v.map_or(-1, |v| v as i64);
    Ok(json!({
        "name": topic.name,
        "internal": crate::topics::is_internal_topic(&topic.name),
        "settings": {
            "partitions": topic.partitions.len(),
            "compact": topic.config.compact,
            "retention_ms": limit(log.retention_ms),
            "retention_bytes": limit(log.retention_bytes),
            "segment_bytes_max": log.segment_bytes_max,
            "segment_ms_max": log.segment_ms_max,
            "fsync": format!("{:?}", log.fsync),
        },
        "records": partitions.iter().map(|p| p["records"].as_u64().unwrap_or(0)).sum::<u64>(),
        "size_bytes": sizes.iter().sum::<u64>(),
        "partitions": partitions,
    }))
}

pub async fn list_topics(
    State(state): State<HttpState>,
    caller: Caller,
) -> Result<Json<Value>, ConsoleError> {
    let mut topics = Vec::new();
    for topic in state.broker.topics.list() {
        if caller.may(
            &state,
            Operation::Describe,
            ResourceType::Topic,
            &topic.name,
        ) {
            topics.push(topic_json(&state, &topic.name).await?);
        }
    }
    Ok(Json(json!({ "topics": topics })))
}

pub async fn describe_topic(
    State(state): State<HttpState>,
    caller: Caller,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ConsoleError> {
    caller.check(&state, Operation::Describe, ResourceType::Topic, &name)?;
    Ok(Json(topic_json(&state, &name).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesQuery {
    #[serde(default)]
    partition: u32,
    offset: Option<u64>,
    /// Ms since the epoch: start at the first record at least this new.
    time: Option<i64>,
    limit: Option<usize>,
}

/// Sets `name` to the bytes as UTF-8 text, or to null with `name_base64` set, as the CLI's
/// JSON output does.
fn put_bytes(object: &mut Value, name: &str, bytes: Option<&[u8]>) {
    match bytes.map(std::str::from_utf8) {
        None => object[name] = Value::Null,
        Some(Ok(text)) => object[name] = text.into(),
        Some(Err(_)) => {
            object[name] = Value::Null;
            object[format!("{name}_base64")] = base64::engine::general_purpose::STANDARD
                .encode(bytes.unwrap_or_default())
                .into();
        }
    }
}

fn record_json(
    offset: i64,
    timestamp: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Vec<(&[u8], Option<&[u8]>)>,
) -> Value {
    let mut record = json!({ "offset": offset, "timestamp": timestamp });
    put_bytes(&mut record, "key", key);
    put_bytes(&mut record, "value", value);
    record["headers"] = headers
        .into_iter()
        .map(|(k, v)| {
            let mut header = json!({});
            put_bytes(&mut header, "key", Some(k));
            put_bytes(&mut header, "value", v);
            header
        })
        .collect::<Vec<_>>()
        .into();
    record
}

/// The records of one stored batch, at or after `from`, appended to `out` up to `limit`.
fn batch_records(
    header: &strand_client::batch::BatchHeader,
    bytes: &[u8],
    from: u64,
    limit: usize,
    out: &mut Vec<Value>,
) -> Result<(), ConsoleError> {
    if header.is_control() {
        return Ok(());
    }
    let wanted = |offset: i64| offset >= from as i64;
    match header
        .compression()
        .map_err(|e| ConsoleError::Internal(e.to_string()))?
    {
        Compression::None => {
            for record in Records::new(bytes, header) {
                let r = record.map_err(|e| ConsoleError::Internal(e.to_string()))?;
                let offset = header.base_offset + i64::from(r.offset_delta);
                if out.len() >= limit {
                    break;
                }
                if !wanted(offset) {
                    continue;
                }
                let timestamp = if header.log_append_time() {
                    header.max_timestamp
                } else {
                    header.base_timestamp + r.timestamp_delta
                };
                let headers = r.headers().collect();
                out.push(record_json(offset, timestamp, r.key, r.value, headers));
            }
        }
        _ => {
            // The decoder checks the CRC and decompresses (gzip, snappy, lz4, zstd).
            let mut buf = Bytes::copy_from_slice(bytes);
            let set = RecordBatchDecoder::decode(&mut buf)
                .map_err(|e| ConsoleError::Internal(format!("a compressed batch: {e}")))?;
            for r in &set.records {
                if out.len() >= limit {
                    break;
                }
                if !wanted(r.offset) {
                    continue;
                }
                let headers = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_bytes(), v.as_deref()))
                    .collect();
                out.push(record_json(
                    r.offset,
                    r.timestamp,
                    r.key.as_deref(),
                    r.value.as_deref(),
                    headers,
                ));
            }
        }
    }
    Ok(())
}

pub async fn messages(
    State(state): State<HttpState>,
    caller: Caller,
    UrlPath(topic): UrlPath<String>,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ConsoleError> {
    let Query(query) = query.map_err(|e| ConsoleError::BadRequest(e.body_text()))?;
    caller.check(&state, Operation::Read, ResourceType::Topic, &topic)?;
    let limit = query.limit.unwrap_or(MESSAGES_LIMIT_DEFAULT);
    if limit == 0 || limit > MESSAGES_LIMIT_MAX {
        return Err(ConsoleError::BadRequest(format!(
            "limit must be 1 to {MESSAGES_LIMIT_MAX}"
        )));
    }
    let broker = &state.broker;
    let partition = query.partition;
    let bounds = broker.partition_info(&topic, partition)?;
    let start = match (query.offset, query.time) {
        (Some(_), Some(_)) => {
            return Err(ConsoleError::BadRequest(
                "give offset or time, not both".into(),
            ))
        }
        (Some(offset), None) => offset,
        (None, Some(ms)) => broker
            .list_offset(&topic, partition, OffsetSpec::Timestamp(ms))
            .await?
            .unwrap_or(bounds.high_watermark),
        (None, None) => bounds.log_start_offset,
    };
    if start < bounds.log_start_offset || start > bounds.high_watermark {
        return Err(ConsoleError::BadRequest(format!(
            "offset {start} is outside the log: {} to {}",
            bounds.log_start_offset, bounds.high_watermark
        )));
    }
    let mut records = Vec::new();
    let mut position = start;
    let mut read_bytes = 0usize;
    while records.len() < limit
        && position < bounds.high_watermark
        && read_bytes < MESSAGES_READ_BYTES_MAX
    {
        let result = broker
            .read_limited(
                &topic,
                partition,
                position,
                MESSAGES_READ_BYTES_MAX - read_bytes,
                FirstBatch::Whole,
            )
            .await?;
        if result.batches.is_empty() {
            break;
        }
        read_bytes += result.batches.len();
        let mut next = position;
        for (header, bytes) in Batches::new(&result.batches) {
            batch_records(&header, bytes, position, limit, &mut records)?;
            next = next.max(u64::try_from(header.last_offset() + 1).unwrap_or(next));
        }
        if next <= position {
            break;
        }
        position = next;
    }
    // Where the next page starts: after the last record shown (a page may end inside a batch).
    let next_offset = records
        .last()
        .and_then(|r| r["offset"].as_u64())
        .map_or(position, |o| o + 1);
    Ok(Json(json!({
        "topic": topic,
        "partition": partition,
        "start_offset": start,
        "next_offset": next_offset,
        "log_start_offset": bounds.log_start_offset,
        "high_watermark": bounds.high_watermark,
        "records": records,
    })))
}

pub async fn list_groups(
    State(state): State<HttpState>,
    caller: Caller,
) -> Result<Json<Value>, ConsoleError> {
    let groups: Vec<Value> = state
        .broker
        .groups
        .list()
        .into_iter()
        .filter(|g| caller.may(&state, Operation::Describe, ResourceType::Group, g))
        .filter_map(|g| state.broker.groups.describe(&g))
        .map(|g| {
            let lag: i64 = g
                .committed
                .iter()
                .filter_map(|((topic, partition), c)| {
                    let p = state.broker.partition_info(topic, *partition).ok()?;
                    Some(p.high_watermark as i64 - c.offset as i64)
                })
                .sum();
            json!({
                "group": g.group,
                "state": format!("{:?}", g.state).to_lowercase(),
                "members": g.members.len(),
                "lag": lag,
            })
        })
        .collect();
    Ok(Json(json!({ "groups": groups })))
}

pub async fn describe_group(
    State(state): State<HttpState>,
    caller: Caller,
    UrlPath(group): UrlPath<String>,
) -> Result<Json<Value>, ConsoleError> {
    caller.check(&state, Operation::Describe, ResourceType::Group, &group)?;
    let g = state
        .broker
        .groups
        .describe(&group)
        .ok_or_else(|| ConsoleError::NotFound(format!("unknown group {group:?}")))?;
    let members: Vec<Value> = g
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "assignment": m.assignment.iter()
                    .map(|(topic, partition)| json!({"topic": topic, "partition": partition}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    // Commits only of topics the caller may see, as DescribeGroup answers them.
    let offsets: Vec<Value> = g
        .committed
        .iter()
        .filter(|((topic, _), _)| {
            caller.may(&state, Operation::Describe, ResourceType::Topic, topic)
        })
        .map(|((topic, partition), c)| {
            let end = state.broker.partition_info(topic, *partition).ok();
            json!({
                "topic": topic,
                "partition": partition,
                "committed": c.offset,
                "high_watermark": end.as_ref().map(|p| p.high_watermark),
                "lag": end.map(|p| p.high_watermark as i64 - c.offset as i64),
            })
        })
        .collect();
    Ok(Json(json!({
        "group": g.group,
        "state": format!("{:?}", g.state).to_lowercase(),
        "generation": g.generation,
        "assignor": format!("{:?}", g.assignor),
        "protocol": g.protocol.map(|(t, n)| json!({"type": t, "name": n})),
        "members": members,
        "offsets": offsets,
    })))
}
