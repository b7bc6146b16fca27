//! Triggers: the broker feeds the orchestrator. For each definition that names a trigger, a
//! consumer-group member reads the topic and starts one saga per record, with an idempotency
//! key taken from the record, so a redelivered record finds the saga it already started. The
//! group's offsets are committed only after every start before them is journaled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use serde_json::Value;
use strand_cluster::{Cluster, GroupSpec, MirroredRecord};
use tokio::sync::watch;

use crate::api::{ApiError, StartRequest};
use crate::definition::Definition;
use crate::handle::Handle;

/// Starts that may be waiting for the journal at once, per trigger.
const STARTS_IN_FLIGHT_MAX: usize = 256;

#[derive(Debug)]
pub struct Triggers {
    cluster: Arc<Cluster>,
    handle: Handle,
    shutdown: watch::Receiver<bool>,
    running: HashMap<String, tokio::task::AbortHandle>,
}

impl Triggers {
    pub fn new(cluster: Arc<Cluster>, handle: Handle, shutdown: watch::Receiver<bool>) -> Triggers {
        Triggers {
            cluster,
            handle,
            shutdown,
            running: HashMap::new(),
        }
    }

    /// Runs the trigger of `definition` (its latest version replaces an older one's).
    pub fn install(&mut self, definition: Arc<Definition>) {
        if let Some(old) = self.running.remove(&definition.name) {
            old.abort();
        }
        let task = tokio::spawn(run(
            self.cluster.clone(),
            self.handle.clone(),
            definition.clone(),
            self.shutdown.clone(),
        ));
        self.running
            .insert(definition.name.clone(), task.abort_handle());
    }
}

/// The start request for one trigger record.
pub fn start_request(definition: &Definition, record: &MirroredRecord) -> StartRequest {
    let raw = record.value.as_deref().unwrap_or_default();
    let input: Value = serde_json::from_slice(raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into_owned()));
    let field = definition
        .spec
        .trigger
        .as_ref()
        .and_then(|t| t.idempotency_field.as_deref())
        .and_then(|f| input.get(f))
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    let key = match field {
        Some(value) => format!("trigger:{}:{value}", definition.name),
        None => format!(
            "trigger:{}:{}/{}/{}",
            definition.name, record.topic, record.partition, record.offset
        ),
    };
    StartRequest {
        definition: definition.name.clone(),
        version: None,
        input,
        idempotency_key: Some(key),
    }
}

/// Starts the saga, retrying while the orchestrator is busy; `false` if it never will.
async fn start_until_journaled(handle: Handle, request: StartRequest) -> bool {
    let mut backoff = Duration::from_millis(10);
    loop {
        // Started here or, for a key of another instance's partition, there.
        match handle.start_anywhere(request.clone()).await {
            Ok(()) => return true,
            Err(e @ (ApiError::Unavailable(_) | ApiError::Elsewhere { .. })) => {
                let reason = e.to_string();
                tracing::debug!(%reason, "trigger start postponed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                // A start that can never succeed (a 409 for a reused key, a deleted
                // definition) must not block the topic.
                tracing::warn!(key = ?request.idempotency_key, error = %e, "trigger record skipped");
                return false;
            }
        }
    }
}

async fn run(
    cluster: Arc<Cluster>,
    handle: Handle,
    definition: Arc<Definition>,
    mut shutdown: watch::Receiver<bool>,
) {
    let trigger = definition
        .spec
        .trigger
        .clone()
        .expect("installed with a trigger");
    loop {
        let spec = GroupSpec {
            group: trigger.group.clone(),
            topics: vec![trigger.topic.clone()],
            client_id: format!("strand-saga-trigger-{}", definition.name),
            from_earliest: true,
            auto_commit: false,
        };
        let mut consumer = match cluster.group(&spec).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(definition = %definition.name, error = %e, "joining the trigger group failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(definition = %definition.name, topic = %trigger.topic, group = %trigger.group, "trigger consuming");
        let mut pending = FuturesOrdered::new();
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(Duration::from_millis(20), consumer.next()) => next,
                _ = crate::stopped(&mut shutdown) => {
                    while pending.next().await.is_some() {}
                    let _ = consumer.commit().await;
                    consumer.close().await;
                    return;
                }
            };
            let idle = match next {
                Ok(Ok(record)) => {
                    let request = start_request(&definition, &record);
                    pending.push_back(start_until_journaled(handle.clone(), request));
                    false
                }
                Ok(Err(e)) => {
                    tracing::warn!(definition = %definition.name, error = %e, "trigger consumer failed; rejoining");
                    break;
                }
                Err(_) => true,
            };
            if !pending.is_empty() && (idle || pending.len() >= STARTS_IN_FLIGHT_MAX) {
                // Everything consumed so far is journaled: now the offsets may move.
                while pending.next().await.is_some() {}
                if let Err(e) = consumer.commit().await {
                    tracing::warn!(definition = %definition.name, error = %e, "committing trigger offsets failed");
                }
            }
        }
    }
}
