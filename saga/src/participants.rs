//! Calling participants: HTTP (reqwest) and broker commands (a record on the command topic, the
//! answer on the reply topic), each attempt with its stable idempotency key and its attempt id.
//!
//! An answer becomes a [`Reply`] for the orchestrator. No answer means no reply: the engine's
//! timeout decides, and a timed-out action counts as one that may have happened. So only a
//! call that certainly did not reach the participant (connection refused, the circuit breaker
//! open, a template that cannot be rendered) is reported as a failure without an answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use strand_cluster::{Cluster, GroupSpec, MirroredRecord, SideError};
use tokio::sync::{mpsc, watch};

use crate::breaker::{Breaker, BreakerConfig};
use crate::definition::Participant;
use crate::engine::{Call, Failure, Phase};

/// Header names on HTTP calls and broker commands.
pub mod headers {
    pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
    pub const SAGA_ID: &str = "Saga-Id";
    pub const STEP: &str = "Saga-Step";
    pub const PHASE: &str = "Saga-Phase";
    pub const ATTEMPT_ID: &str = "Saga-Attempt-Id";
    pub const REPLY_TOPIC: &str = "Saga-Reply-Topic";
    pub const TRACEPARENT: &str = "traceparent";
}

/// A participant's answer to one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub saga_id: String,
    pub step_name: String,
    pub phase: Phase,
    pub attempt: u32,
    pub result: Result<Value, Failure>,
}

/// W3C trace context for a saga: the trace id from the saga id, a span per attempt.
pub fn traceparent(saga_id: &str, attempt_id: &str) -> String {
    let trace: String = saga_id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .chain(std::iter::repeat('0'))
        .take(32)
        .collect();
    let span = fnv1a(attempt_id.as_bytes());
    format!("00-{}-{span:016x}-01", trace.to_ascii_lowercase())
}

/// A stable 64-bit hash (FNV-1a) for span ids.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    }) | 1
}

/// Parses an attempt id `saga:step:phase:attempt` back into its parts (saga ids and step names
/// have no ':').
pub fn parse_attempt_id(id: &str) -> Option<(String, String, Phase, u32)> {
    let mut parts = id.rsplitn(4, ':');
    let attempt = parts.next()?.parse().ok()?;
    let phase = match parts.next()? {
        "action" => Phase::Action,
        "compensation" => Phase::Compensation,
        _ => return None,
    };
    let step = parts.next()?.to_string();
    let saga = parts.next()?.to_string();
    Some((saga, step, phase, attempt))
}

#[derive(Debug)]
pub struct Participants {
    http: reqwest::Client,
    cluster: Arc<Cluster>,
    breakers: Mutex<BTreeMap<String, Breaker>>,
    breaker_config: BreakerConfig,
    replies: mpsc::UnboundedSender<Reply>,
}

impl Participants {
    pub fn new(
        cluster: Arc<Cluster>,
        breaker_config: BreakerConfig,
        replies: mpsc::UnboundedSender<Reply>,
    ) -> Participants {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("an HTTP client without TLS settings builds");
        Participants {
            http,
            cluster,
            breakers: Mutex::new(BTreeMap::new()),
            breaker_config,
            replies,
        }
    }

    /// Every endpoint's circuit breaker.
    pub fn breakers(&self) -> BTreeMap<String, Breaker> {
        self.breakers.lock().expect("breakers lock").clone()
    }

    fn reply(&self, call: &Call, result: Result<Value, Failure>) {
        let _ = self.replies.send(Reply {
            saga_id: call.saga_id.clone(),
            step_name: call.step_name.clone(),
            phase: call.phase,
            attempt: call.attempt,
            result,
        });
    }

    /// Makes the call in the background; the answer (if any) arrives as a [`Reply`].
    pub fn dispatch(self: &Arc<Self>, call: Call) {
        let this = self.clone();
        tokio::spawn(async move {
            match call.participant.clone() {
                Err(e) => this.reply(&call, Err(Failure::retriable(format!("template: {e}")))),
                Ok(Participant::Http {
                    method,
                    url,
                    headers,
                    body,
                }) => this.http_call(&call, &method, &url, headers, body).await,
                Ok(Participant::Broker {
                    topic,
                    reply_topic,
                    body,
                }) => this.broker_call(&call, topic, reply_topic, body).await,
            }
        });
    }

    async fn http_call(
        &self,
        call: &Call,
        method: &str,
        url: &str,
        extra_headers: BTreeMap<String, String>,
        body: Option<Value>,
    ) {
        let endpoint = match reqwest::Url::parse(url) {
            Ok(u) => format!(
                "{}://{}:{}",
                u.scheme(),
                u.host_str().unwrap_or_default(),
                u.port_or_known_default().unwrap_or(0)
            ),
            Err(e) => {
                return self.reply(
                    call,
                    Err(Failure::permanent(format!("bad URL {url:?}: {e}"))),
                )
            }
        };
        let now = crate::now_ms();
        let refused_until = {
            let mut breakers = self.breakers.lock().expect("breakers lock");
            let breaker = breakers.entry(endpoint.clone()).or_default();
            (!breaker.allow(now)).then(|| breaker.retry_at_ms.unwrap_or(now))
        };
        if let Some(until) = refused_until {
            // Not sent: retry no sooner than the breaker lets a trial call through.
            return self.reply(
                call,
                Err(Failure {
                    error: format!("circuit open for {endpoint}"),
                    retriable: true,
                    retry_after_ms: (until - now).max(0) as u64,
                }),
            );
        }
        let method =
            reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let timeout = Duration::from_millis((call.timeout_at_ms - now).max(1) as u64);
        let mut request = self
            .http
            .request(method, url)
            .timeout(timeout)
            .header(headers::IDEMPOTENCY_KEY, &call.idempotency_key)
            .header(headers::SAGA_ID, &call.saga_id)
            .header(headers::STEP, &call.step_name)
            .header(headers::PHASE, call.phase.as_str())
            .header(headers::ATTEMPT_ID, &call.attempt_id)
            .header(
                headers::TRACEPARENT,
                traceparent(&call.saga_id, &call.attempt_id),
            );
        for (k, v) in &extra_headers {
            request = request.header(k, v);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let outcome = request.send().await;
        let failed = match &outcome {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        };
        {
            let mut breakers = self.breakers.lock().expect("breakers lock");
            let breaker = breakers.entry(endpoint.clone()).or_default();
            if failed {
                breaker.record_failure(&self.breaker_config, crate::now_ms());
            } else {
                breaker.record_success();
            }
        }
        match outcome {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let result = if status.is_success() {
                    Ok(if text.trim().is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_str(&text).unwrap_or(Value::String(text))
                    })
                } else {
                    // A refusal (4xx) stays a refusal; timeouts, throttling and 5xx may pass.
                    let error = format!("HTTP {status}: {}", truncate(&text, 500));
                    let retriable = status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    Err(Failure {
                        error,
                        retriable,
                        retry_after_ms: 0,
                    })
                };
                self.reply(call, result);
            }
            Err(e) if e.is_connect() => {
                // Never reached the participant: it certainly did not happen.
                self.reply(
                    call,
                    Err(Failure::retriable(format!("{endpoint} unreachable: {e}"))),
                );
            }
            Err(e) => {
                // Sent, but no answer: it may have happened; the step's timeout decides.
                tracing::debug!(attempt = %call.attempt_id, error = %e, "no answer");
            }
        }
    }

    async fn broker_call(
        &self,
        call: &Call,
        topic: String,
        reply_topic: String,
        body: Option<Value>,
    ) {
        let value = serde_json::to_vec(&body.unwrap_or(Value::Null)).expect("JSON serializes");
        let h = |v: &str| Some(v.as_bytes().to_vec());
        let record = MirroredRecord {
            headers: vec![
                (headers::IDEMPOTENCY_KEY.into(), h(&call.idempotency_key)),
                (headers::SAGA_ID.into(), h(&call.saga_id)),
                (headers::STEP.into(), h(&call.step_name)),
                (headers::PHASE.into(), h(call.phase.as_str())),
                (headers::ATTEMPT_ID.into(), h(&call.attempt_id)),
                (headers::REPLY_TOPIC.into(), h(&reply_topic)),
                (
                    headers::TRACEPARENT.into(),
                    h(&traceparent(&call.saga_id, &call.attempt_id)),
                ),
            ],
            ..MirroredRecord::new(Some(call.saga_id.clone().into_bytes()), value)
        };
        // A lost command is a step that times out and is sent again.
        let sent = match self.cluster.send_unsynced(&topic, None, record).await {
            Ok(delivery) => delivery.await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            // The command may or may not be stored: the timeout decides.
            tracing::warn!(attempt = %call.attempt_id, error = %e, "sending a broker command failed");
        }
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A reply record's value: `{"ok": true, "output": ...}` or
/// `{"ok": false, "error": "...", "retriable": false}` (`retriable` defaults to true).
pub fn parse_reply_value(value: &[u8]) -> Result<Value, Failure> {
    let v: Value = serde_json::from_slice(value)
        .map_err(|e| Failure::retriable(format!("reply is not JSON: {e}")))?;
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v.get("output").cloned().unwrap_or(Value::Null)),
        Some(false) => Err(Failure {
            error: v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("failed")
                .to_string(),
            retriable: v.get("retriable").and_then(Value::as_bool).unwrap_or(true),
            retry_after_ms: 0,
        }),
        None => Err(Failure::retriable("reply without \"ok\"")),
    }
}

/// Consumes the reply topics as a member of `group` and turns each reply into a [`Reply`] for
/// the step it answers. Restarts its membership when the set of reply topics changes.
pub async fn consume_replies(
    cluster: Arc<Cluster>,
    group: String,
    mut topics: watch::Receiver<BTreeSet<String>>,
    replies: mpsc::UnboundedSender<Reply>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let current: Vec<String> = topics.borrow_and_update().iter().cloned().collect();
        if current.is_empty() {
            tokio::select! {
                changed = topics.changed() => if changed.is_err() { return },
                _ = crate::stopped(&mut shutdown) => return,
            }
            continue;
        }
        let spec = GroupSpec {
            group: group.clone(),
            topics: current,
            client_id: "strand-saga".into(),
            from_earliest: false,
            auto_commit: true,
        };
        let mut consumer = match cluster.group(&spec).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "joining the reply group failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                record = consumer.next() => match record {
                    Ok(record) => {
                        let attempt_id = header_str(&record, headers::ATTEMPT_ID);
                        let Some((saga_id, step_name, phase, attempt)) =
                            attempt_id.as_deref().and_then(parse_attempt_id)
                        else {
                            tracing::debug!(topic = %record.topic, offset = record.offset, "reply without a valid attempt id");
                            continue;
                        };
                        let result = parse_reply_value(record.value.as_deref().unwrap_or_default());
                        let _ = replies.send(Reply { saga_id, step_name, phase, attempt, result });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading replies failed; rejoining");
                        break;
                    }
                },
                changed = topics.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                _ = crate::stopped(&mut shutdown) => {
                    consumer.close().await;
                    return;
                }
            }
        }
        consumer.close().await;
    }
}

/// A command as a broker participant receives it.
#[derive(Debug, Clone)]
pub struct Command {
    pub topic: String,
    pub saga_id: String,
    pub step: String,
    pub phase: String,
    /// Stable across attempts: apply the effect once per key.
    pub idempotency_key: String,
    pub attempt_id: String,
    pub reply_topic: String,
    pub body: Value,
}

fn header_str(record: &MirroredRecord, name: &str) -> Option<String> {
    record
        .header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl Command {
    /// Reads a command record; `None` when it lacks the saga headers.
    pub fn from_record(record: &MirroredRecord) -> Option<Command> {
        Some(Command {
            topic: record.topic.clone(),
            saga_id: header_str(record, headers::SAGA_ID)?,
            step: header_str(record, headers::STEP)?,
            phase: header_str(record, headers::PHASE)?,
            idempotency_key: header_str(record, headers::IDEMPOTENCY_KEY)?,
            attempt_id: header_str(record, headers::ATTEMPT_ID)?,
            reply_topic: header_str(record, headers::REPLY_TOPIC)?,
            body: serde_json::from_slice(record.value.as_deref().unwrap_or(b"null"))
                .unwrap_or(Value::Null),
        })
    }
}

/// Serves broker commands: a member of `group` on `topics` that calls `handler` for each
/// command and sends its answer to the command's reply topic (the attempt id in a header), for
/// participants written in Rust. Commits after answering; runs until shutdown.
pub async fn serve_commands<F>(
    cluster: Arc<Cluster>,
    group: String,
    topics: Vec<String>,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SideError>
where
    F: Fn(&Command) -> Result<Value, Failure> + Send + 'static,
{
    let spec = GroupSpec {
        group,
        topics,
        client_id: "strand-saga-participant".into(),
        from_earliest: true,
        auto_commit: true,
    };
    let mut consumer = cluster.group(&spec).await?;
    loop {
        let record = tokio::select! {
            record = consumer.next() => record?,
            _ = crate::stopped(&mut shutdown) => {
                cluster.flush().await?;
                consumer.close().await;
                return Ok(());
            }
        };
        let Some(command) = Command::from_record(&record) else {
            tracing::debug!(topic = %record.topic, offset = record.offset, "not a saga command");
            continue;
        };
        let answer = match handler(&command) {
            Ok(output) => serde_json::json!({"ok": true, "output": output}),
            Err(f) => serde_json::json!({"ok": false, "error": f.error, "retriable": f.retriable}),
        };
        let reply = MirroredRecord {
            headers: vec![(
                headers::ATTEMPT_ID.into(),
                Some(command.attempt_id.clone().into_bytes()),
            )],
            ..MirroredRecord::new(
                Some(command.saga_id.clone().into_bytes()),
                answer.to_string().into_bytes(),
            )
        };
        // Delivery is not awaited: the next command does not wait for it.
        // A lost reply is a step that times out and is sent again (and answered again).
        drop(
            cluster
                .send_unsynced(&command.reply_topic, None, reply)
                .await?,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_ids_parse_back() {
        let id = crate::engine::attempt_id("0190-abc", "charge", Phase::Compensation, 3);
        assert_eq!(
            parse_attempt_id(&id),
            Some(("0190-abc".into(), "charge".into(), Phase::Compensation, 3))
        );
        assert_eq!(parse_attempt_id("nope"), None);
        assert_eq!(parse_attempt_id("s:x:other:1"), None);
    }

    #[test]
    fn replies_and_trace_context() {
        assert_eq!(
            parse_reply_value(br#"{"ok": true, "output": {"id": 1}}"#),
            Ok(serde_json::json!({"id": 1}))
        );
        assert_eq!(
            parse_reply_value(br#"{"ok": false, "error": "declined", "retriable": false}"#),
            Err(Failure::permanent("declined"))
        );
        assert!(parse_reply_value(b"garbage").is_err());
        let tp = traceparent("0190f1c2-7d3e-7a1b-9c2d-123456789abc", "a:b:action:1");
        assert_eq!(tp.len(), 55);
        assert!(tp.starts_with("00-0190f1c27d3e7a1b9c2d123456789abc-"));
    }
}
