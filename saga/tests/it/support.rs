//! Test participants (an HTTP service that records every call and applies each idempotency key
//! once) and an in-process orchestrator on an embedded broker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use strand_broker::config::BrokerConfig;
use strand_broker::run::RunningBroker;
use strand_cluster::{Cluster, ClusterConfig};
use strand_saga::http::{self, HttpConfig};
use strand_saga::journal::Journal;
use strand_saga::orchestrator::{self, OrchestratorConfig};
use strand_saga::ownership;
use tokio::sync::watch;

/// One call a participant received.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub step: String,
    pub op: String,
    pub saga: String,
    pub idempotency_key: String,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub calls: Vec<CallRecord>,
    /// Idempotency key to the answer it got the first time (and how often it was applied).
    pub applied: HashMap<String, (u16, Value, u32)>,
    /// (saga, step) whose compensation ran: an action arriving later is refused, as a real
    /// participant does (it would otherwise apply after its own undo).
    pub undone: std::collections::HashSet<(String, String)>,
}

/// A participant service for steps named in the path: `POST /{step}/{do|undo}`.
///
/// What it does is read from the saga input it gets in the body: `fail` names a step whose
/// action answers 422; `fail_undo` a step whose compensation answers 503; `slow` a step whose
/// action answers after `slow_ms`; `flaky` a step whose first action attempt answers 503;
/// `flaky_undo` a step whose first compensation attempt answers 503.
/// Each idempotency key is applied once; repeats get the first answer again.
#[derive(Debug, Clone, Default)]
pub struct Participants {
    pub ledger: Arc<Mutex<Ledger>>,
}

impl Participants {
    pub async fn serve(&self) -> SocketAddr {
        let app = Router::new()
            .route("/{step}/{op}", post(call))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// The order saga's effects for saga `id` match how it ended (`state`): every action once
    /// and no compensation when completed; when compensated (inventory refused), order and
    /// payment once each way and inventory never.
    pub fn assert_applied_once(&self, id: &str, state: &str) {
        let effects = self.effects();
        let applied = |step: &str, phase: &str| {
            effects
                .get(&(id.to_string(), step.to_string(), phase.to_string()))
                .copied()
                .unwrap_or(0)
        };
        if state == "completed" {
            for step in ["order", "charge", "reserve"] {
                assert_eq!(applied(step, "action"), 1, "{id} {step}");
                assert_eq!(applied(step, "compensation"), 0, "{id} {step}");
            }
        } else {
            for step in ["order", "charge"] {
                assert_eq!(applied(step, "action"), 1, "{id} {step}");
                assert_eq!(applied(step, "compensation"), 1, "{id} {step} undone");
            }
            assert_eq!(applied("reserve", "action"), 0, "{id}: inventory refused");
        }
    }

    /// How often each (saga, step, op) effect was applied.
    pub fn effects(&self) -> HashMap<(String, String, String), u32> {
        let ledger = self.ledger.lock().unwrap();
        let mut out = HashMap::new();
        for (key, (status, _, n)) in &ledger.applied {
            if *status == 200 {
                let mut parts = key.split(':');
                let saga = parts.next().unwrap().to_string();
                let step = parts.next().unwrap().to_string();
                let phase = parts.next().unwrap().to_string();
                out.insert((saga, step, phase), *n);
            }
        }
        out
    }
}

async fn call(
    State(p): State<Participants>,
    Path((step, op)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let key = header("idempotency-key");
    let record = CallRecord {
        step: step.clone(),
        op: op.clone(),
        saga: header("saga-id"),
        idempotency_key: key.clone(),
    };
    let input = body.get("input").cloned().unwrap_or(Value::Null);
    let named = |field: &str| input.get(field).and_then(Value::as_str) == Some(step.as_str());
    if op == "do" && named("slow") {
        let ms = input.get("slow_ms").and_then(Value::as_u64).unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut ledger = p.ledger.lock().unwrap();
    let first_attempt = !ledger.calls.iter().any(|c| c.idempotency_key == key);
    let saga_step = (header("saga-id"), step.clone());
    ledger.calls.push(record);
    if let Some((status, answer, _)) = ledger.applied.get(&key) {
        if *status == 200 {
            return (StatusCode::OK, Json(answer.clone()));
        }
    }
    let (status, answer) = if op == "do" && ledger.undone.contains(&saga_step) {
        (409, json!({"error": "already compensated"}))
    } else if op == "do" && named("fail") {
        (422, json!({"error": format!("{step} refused")}))
    } else if op == "undo" && named("fail_undo") {
        (503, json!({"error": format!("{step} cannot undo now")}))
    } else if op == "do" && named("flaky") && first_attempt {
        (503, json!({"error": "flaky"}))
    } else if op == "undo" && named("flaky_undo") && first_attempt {
        (503, json!({"error": "flaky undo"}))
    } else {
        (
            200,
            json!({"id": format!("{step}-{}", &key[..key.len().min(8)]), "step": step}),
        )
    };
    let entry = ledger
        .applied
        .entry(key)
        .or_insert((status, answer.clone(), 0));
    entry.0 = status;
    entry.1 = answer.clone();
    if status == 200 {
        entry.2 += 1;
        if op == "undo" {
            ledger.undone.insert(saga_step);
        }
    }
    (StatusCode::from_u16(status).unwrap(), Json(answer))
}

/// The order saga with HTTP participants at `addr`: order, charge, reserve.
pub fn order_definition(addr: SocketAddr, attempts: u32) -> Value {
    let participant = |step: &str, op: &str| {
        json!({
            "type": "http",
            "url": format!("http://{addr}/{step}/{op}"),
            "body": {"saga": "{{ saga_id }}", "input": "{{ input }}"}
        })
    };
    let retry = json!({"max_attempts": attempts, "initial_backoff_ms": 20, "max_backoff_ms": 200, "multiplier": 2.0, "jitter": 0.2});
    let steps: Vec<Value> = ["order", "charge", "reserve"]
        .iter()
        .map(|s| {
            json!({
                "name": s,
                "action": participant(s, "do"),
                "compensation": participant(s, "undo"),
                "timeout_ms": 2000,
                "retry": retry,
            })
        })
        .collect();
    json!({"description": "order, payment, inventory", "steps": steps})
}

/// The broker as a cluster: through its native protocol, or its Kafka listener and librdkafka.
async fn connect(broker: &RunningBroker, kafka: bool) -> Arc<Cluster> {
    let (name, config) = if kafka {
        let bootstrap = broker.kafka_addr.to_string();
        let properties = Default::default();
        (
            "kafka",
            ClusterConfig::Kafka {
                bootstrap,
                properties,
            },
        )
    } else {
        let address = broker.native_addr.to_string();
        (
            "strand",
            ClusterConfig::Strand {
                address,
                security: Default::default(),
            },
        )
    };
    Arc::new(Cluster::connect(name, &config).await.unwrap())
}

/// An embedded broker, the orchestrator and its HTTP API, all in this process.
pub struct Stack {
    pub api: String,
    kafka: bool,
    pub broker: Option<RunningBroker>,
    pub http: reqwest::Client,
    shutdown: watch::Sender<bool>,
    orchestrator: tokio::task::JoinHandle<Result<(), strand_saga::journal::JournalError>>,
}

impl Stack {
    pub async fn start(dir: &std::path::Path) -> Stack {
        Stack::start_with(dir, OrchestratorConfig::default()).await
    }

    pub async fn start_with(dir: &std::path::Path, config: OrchestratorConfig) -> Stack {
        Stack::start_on(dir, config, false, HttpConfig::default()).await
    }

    /// With the API settings given (bearer-token verification).
    pub async fn start_with_http(
        dir: &std::path::Path,
        config: OrchestratorConfig,
        http: HttpConfig,
    ) -> Stack {
        Stack::start_on(dir, config, false, http).await
    }

    /// The orchestrator's journal and topics on the embedded broker's Kafka listener, reached
    /// through librdkafka as a Kafka cluster would be.
    pub async fn start_kafka(dir: &std::path::Path) -> Stack {
        Stack::start_on(
            dir,
            OrchestratorConfig::default(),
            true,
            HttpConfig::default(),
        )
        .await
    }

    /// The cluster the orchestrator keeps its journal on, as a participant would reach it.
    pub async fn cluster(&self) -> Arc<Cluster> {
        connect(self.broker.as_ref().unwrap(), self.kafka).await
    }

    async fn start_on(
        dir: &std::path::Path,
        config: OrchestratorConfig,
        kafka: bool,
        http_config: HttpConfig,
    ) -> Stack {
        let orchestrator_config = OrchestratorConfig {
            journal_partitions: 4,
            ..config
        };
        let config = BrokerConfig {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            kafka_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            ..BrokerConfig::default()
        };
        let broker = RunningBroker::start(config).await.unwrap();
        let cluster = connect(&broker, kafka).await;
        let journal = Journal::open(cluster.clone(), 4).await.unwrap();
        let (shutdown, rx) = watch::channel(false);
        let ownership = match cluster.kafka_config() {
            Some(config) => {
                let group = ownership::kafka(
                    config,
                    "strand-saga-journal",
                    "test",
                    Duration::from_secs(6),
                    rx.clone(),
                );
                group.unwrap().0
            }
            None => ownership::all(journal.partitions()),
        };
        let (handle, orchestrator) =
            orchestrator::start(journal, orchestrator_config, ownership, rx.clone())
                .await
                .unwrap();
        // On Kafka the journal's partitions arrive through its consumer group.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while handle.ownership().1.len() < 4 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no journal partitions"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let app = http::router(handle, &http_config);
        let mut stop = rx;
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { strand_saga::stopped(&mut stop).await })
                .await
        });
        Stack {
            api,
            kafka,
            broker: Some(broker),
            http: reqwest::Client::new(),
            shutdown,
            orchestrator,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.orchestrator).await;
        if let Some(b) = self.broker.take() {
            b.stop().await.unwrap();
        }
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .put(format!("{}{path}", self.api))
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the saga reaches one of `states`; returns it.
    pub async fn wait_for(&self, id: &str, states: &[&str]) -> Value {
        wait_for_state(&self.http, &self.api, id, states).await
    }
}

pub async fn wait_for_state(http: &reqwest::Client, api: &str, id: &str, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let saga: Value = http
            .get(format!("{api}/sagas/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if states.contains(&saga["state"].as_str().unwrap_or_default()) {
            return saga;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga {id} stuck in {}",
            saga["state"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stores definition `name` at `api`, retrying while the orchestrator answers 503 (it has not
/// taken the name's journal partition over yet), at most `tries` times 100 ms apart; asserts it
/// was stored.
pub async fn put_definition_when_ready(
    http: &reqwest::Client,
    api: &str,
    name: &str,
    definition: &Value,
    tries: u32,
) {
    let mut tried = 0;
    loop {
        let r = http
            .put(format!("{api}/definitions/{name}"))
            .json(definition)
            .send()
            .await
            .unwrap();
        tried += 1;
        if r.status() != 503 || tried >= tries {
            let status = r.status();
            assert_eq!(status, 201, "{}", r.text().await.unwrap_or_default());
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Debian's chromium (or `$CHROMIUM`), which the console tests drive; fails early when missing.
pub fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: bash .ci/run installs Debian's chromium"
    );
    chromium
}

/// Runs the console script `broker/tests/peers/{script}` in node with `args` (it drives
/// chromium through playwright-core) and asserts it exited 0 having printed `ok_line`.
pub async fn drive_console(script: &str, args: Vec<String>, ok_line: &str) {
    let path = format!(
        "{}/../broker/tests/peers/{script}",
        env!("CARGO_MANIFEST_DIR")
    );
    let chromium = chromium();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args(["300", "node", &path])
            .args(&args)
            .env("CHROMIUM", &chromium)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(ok_line),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
