//! 1,000 order sagas through the real `strand-saga` binary (embedded broker) while things go
//! wrong together: the payment service applies some charges and answers after the step's
//! timeout (once, or on every attempt), it has an outage that opens its circuit breaker, the
//! inventory refuses some orders, and the orchestrator is killed with SIGKILL three times.
//! Every acknowledged saga must end completed or compensated, and what the participants
//! applied must match: a completed order was charged once and never refunded; a cancelled one
//! has every applied action undone, so no payment is left charged.
//!
//! Three services (orders, payments, inventory) on their own ports, so each has its own
//! breaker. Each applies an idempotency key once and answers a repeat with the first answer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};

use super::crash::{start_saga_args, SagaProcess};
use super::support::put_definition_when_ready;

const SAGAS: usize = 1_000;
/// Each step's timeout; a late answer comes after `LATE_MS`.
const STEP_TIMEOUT_MS: u64 = 1_000;
const LATE_MS: u64 = 1_500;
/// How long the payment service answers 503 to every charge.
const OUTAGE: Duration = Duration::from_millis(1_500);

/// One applied effect.
#[derive(Debug, Clone)]
struct Applied {
    saga: String,
    phase: String,
    body: Value,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Idempotency key to what was applied under it and the answer it got.
    applied: HashMap<String, (Applied, Value)>,
    /// Sagas whose action here was undone: a later action is refused (undo before do).
    undone: HashSet<String>,
    /// Answers held past the caller's timeout.
    late_answers: usize,
    /// Charges answered 503 during the outage.
    outage_refusals: usize,
}

#[derive(Clone)]
struct Service {
    step: &'static str,
    ledger: Arc<Mutex<Ledger>>,
    outage: Arc<AtomicBool>,
}

impl Service {
    fn new(step: &'static str) -> Service {
        Service {
            step,
            ledger: Arc::default(),
            outage: Arc::default(),
        }
    }

    async fn serve(&self) -> SocketAddr {
        let app = Router::new()
            .route("/{op}", post(call))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// Per saga, how often its action and its compensation were applied here.
    fn effects(&self) -> HashMap<String, (u32, u32)> {
        let ledger = self.ledger.lock().unwrap();
        let mut out: HashMap<String, (u32, u32)> = HashMap::new();
        for (applied, _) in ledger.applied.values() {
            let e = out.entry(applied.saga.clone()).or_default();
            match applied.phase.as_str() {
                "action" => e.0 += 1,
                _ => e.1 += 1,
            }
        }
        out
    }
}

/// `POST /do` and `POST /undo`. The saga input says what goes wrong: `refuse` names a step
/// whose action answers 422; `late` a step that applies its action and answers after
/// `LATE_MS` (a repeat answers at once), `late_always` one that answers late every time.
async fn call(
    State(service): State<Service>,
    Path(op): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let key = header("idempotency-key");
    let saga = header("saga-id");
    let phase = header("saga-phase");
    let step = service.step;
    let input = body.get("input").cloned().unwrap_or(Value::Null);
    let named = |field: &str| input.get(field).and_then(Value::as_str) == Some(step);
    let (status, answer, late) = {
        let mut ledger = service.ledger.lock().unwrap();
        if let Some((_, answer)) = ledger.applied.get(&key) {
            (200, answer.clone(), op == "do" && named("late_always"))
        } else if op == "do" && service.outage.load(Ordering::SeqCst) {
            ledger.outage_refusals += 1;
            (503, json!({"error": "payments are down"}), false)
        } else if op == "do" && ledger.undone.contains(&saga) {
            (409, json!({"error": "already cancelled"}), false)
        } else if op == "do" && named("refuse") {
            (422, json!({"error": format!("{step} refused")}), false)
        } else {
            let answer = match (step, op.as_str()) {
                ("charge", "do") => json!({"payment_id": format!("pay-{saga}")}),
                ("charge", _) => json!({"refund_id": format!("refund-{saga}")}),
                _ => json!({"id": format!("{step}-{saga}")}),
            };
            if op == "undo" {
                ledger.undone.insert(saga.clone());
            }
            let applied = Applied {
                saga,
                phase,
                body: body.clone(),
            };
            ledger.applied.insert(key, (applied, answer.clone()));
            let late = op == "do" && (named("late") || named("late_always"));
            (200, answer, late)
        }
    };
    if late {
        // Counted before: the caller gives up and the connection closes mid-wait.
        service.ledger.lock().unwrap().late_answers += 1;
        tokio::time::sleep(Duration::from_millis(LATE_MS)).await;
    }
    (StatusCode::from_u16(status).unwrap(), Json(answer))
}

fn definition(orders: SocketAddr, payments: SocketAddr, inventory: SocketAddr) -> Value {
    let http = |addr: SocketAddr, op: &str, body: Value| json!({"type": "http", "url": format!("http://{addr}/{op}"), "body": body});
    let input = json!({"input": "{{ input }}"});
    let retry = json!({"max_attempts": 8, "initial_backoff_ms": 50, "max_backoff_ms": 500, "multiplier": 2.0, "jitter": 0.2});
    let step = |name: &str, addr: SocketAddr, undo: Value| {
        json!({
            "name": name,
            "action": http(addr, "do", input.clone()),
            "compensation": http(addr, "undo", undo),
            "timeout_ms": STEP_TIMEOUT_MS,
            "retry": retry,
        })
    };
    json!({
        "description": "order, payment, inventory",
        "steps": [
            step("order", orders, input.clone()),
            // The refund names the charge it undoes by the charge's idempotency key: a charge
            // that timed out returned no payment id.
            step("charge", payments, json!({
                "input": "{{ input }}",
                "charge": "{{ action_key }}"
            })),
            step("reserve", inventory, input.clone()),
        ]
    })
}

/// What saga `i` meets.
fn input(i: usize) -> Value {
    match i % 10 {
        4 => json!({"n": i, "refuse": "reserve"}),
        5 => json!({"n": i, "late": "charge"}),
        6 => json!({"n": i, "late": "charge", "refuse": "reserve"}),
        8 => json!({"n": i, "late_always": "charge"}),
        _ => json!({"n": i}),
    }
}

fn start(dir: &std::path::Path) -> SagaProcess {
    start_saga_args(&[
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--kafka-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--snapshot-interval-ms",
        "500",
        "--breaker-failures",
        "5",
        "--breaker-open-ms",
        "300",
    ])
}

/// Starts saga `i` on whichever instance is up, until it is acknowledged (bounded).
async fn start_one(http: reqwest::Client, api: Arc<Mutex<String>>, i: usize) -> (usize, String) {
    let request = json!({
        "definition": "order",
        "input": input(i),
        "idempotency_key": format!("order-{i}"),
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = format!("{}/sagas", api.lock().unwrap());
        if let Ok(r) = http.post(url).json(&request).send().await {
            if r.status() == 201 || r.status() == 200 {
                if let Ok(body) = r.json::<Value>().await {
                    if let Some(id) = body["id"].as_str() {
                        return (i, id.to_string());
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "saga {i} never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An error's first line, shortened (a template error quotes its whole context).
fn first_line(error: &Value) -> String {
    let text = error.as_str().unwrap_or("-");
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(160)
        .collect()
}

async fn any_breaker_open(http: &reqwest::Client, api: &str) -> bool {
    let Ok(r) = http.get(format!("{api}/breakers")).send().await else {
        return false;
    };
    let breakers: Value = r.json().await.unwrap_or(Value::Null);
    breakers
        .as_object()
        .into_iter()
        .flatten()
        .any(|(_, b)| b["state"] == "open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sagas_through_late_answers_an_open_breaker_and_three_kills() {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (orders, payments, inventory) = (
        Service::new("order"),
        Service::new("charge"),
        Service::new("reserve"),
    );
    let addrs = (
        orders.serve().await,
        payments.serve().await,
        inventory.serve().await,
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut saga = start(dir.path());
    // Until the orchestrator has taken its journal partitions over it answers 503: retry.
    let order = definition(addrs.0, addrs.1, addrs.2);
    put_definition_when_ready(&http, &saga.api, "order", &order, 100).await;
    let api = Arc::new(Mutex::new(saga.api.clone()));

    // Starts go out 32 at a time, each retried across the kills until acknowledged.
    let acked = Arc::new(AtomicUsize::new(0));
    let starter = {
        let (http, api, acked) = (http.clone(), api.clone(), acked.clone());
        tokio::spawn(async move {
            futures::stream::iter(0..SAGAS)
                .map(|i| {
                    let (http, api, acked) = (http.clone(), api.clone(), acked.clone());
                    async move {
                        let started = start_one(http, api, i).await;
                        acked.fetch_add(1, Ordering::SeqCst);
                        started
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
        })
    };

    // Three kills spread over the starts; the outage between the first and the second.
    let mut breaker_opened = false;
    for (kill, at) in [SAGAS / 4, SAGAS / 2, SAGAS * 3 / 4]
        .into_iter()
        .enumerate()
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) < at {
            assert!(
                Instant::now() < deadline,
                "starts stalled at {}",
                acked.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if kill == 1 {
            payments.outage.store(true, Ordering::SeqCst);
            let outage_end = Instant::now() + OUTAGE;
            while Instant::now() < outage_end {
                breaker_opened |= any_breaker_open(&http, &saga.api).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            payments.outage.store(false, Ordering::SeqCst);
        }
        saga.child.kill().unwrap();
        saga.child.wait().unwrap();
        drop(saga);
        saga = start(dir.path());
        *api.lock().unwrap() = saga.api.clone();
        println!(
            "kill {} after {} acknowledged starts, at {:?}",
            kill + 1,
            at,
            began.elapsed()
        );
    }
    let started: BTreeMap<usize, String> = starter.await.unwrap().into_iter().collect();
    assert_eq!(started.len(), SAGAS);

    // Every saga ends (bounded), then its effects are checked.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut states: BTreeMap<usize, Value> = BTreeMap::new();
    while states.len() < SAGAS && Instant::now() < deadline {
        for (i, id) in &started {
            if states.contains_key(i) {
                continue;
            }
            let Ok(r) = http.get(format!("{}/sagas/{id}", saga.api)).send().await else {
                continue;
            };
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if ["completed", "compensated"].contains(&body["state"].as_str().unwrap_or("")) {
                states.insert(*i, body);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut problems = Vec::new();
    for (i, id) in &started {
        if !states.contains_key(i) {
            let body: Value = match http.get(format!("{}/sagas/{id}", saga.api)).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(e) => json!(e.to_string()),
            };
            let steps: Vec<String> = body["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    format!(
                        "{} {} ({} attempts, may have happened: {})",
                        s["name"].as_str().unwrap_or("?"),
                        s["state"],
                        s["attempts"].as_array().map_or(0, Vec::len),
                        s["may_have_happened"]
                    )
                })
                .collect();
            problems.push(format!(
                "saga {i} ({id}, input {}) did not end completed or compensated: state {}, error {}; steps: {}",
                input(*i),
                body["state"],
                first_line(&body["error"]),
                steps.join(", ")
            ));
        }
    }

    let (order_fx, charge_fx, reserve_fx) =
        (orders.effects(), payments.effects(), inventory.effects());
    let fx = |m: &HashMap<String, (u32, u32)>, id: &str| m.get(id).copied().unwrap_or((0, 0));
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut undo_without_do = 0;
    for (i, body) in &states {
        let id = &started[i];
        let state = body["state"].as_str().unwrap();
        *counts
            .entry(if state == "completed" {
                "completed"
            } else {
                "compensated"
            })
            .or_default() += 1;
        let (order, charge, reserve) = (fx(&order_fx, id), fx(&charge_fx, id), fx(&reserve_fx, id));
        if (i % 10 == 4 || i % 10 == 6) && state != "compensated" {
            problems.push(format!(
                "saga {i} ({id}): the inventory refused it, yet it is {state}"
            ));
        }
        if state == "completed" {
            if (order, charge, reserve) != ((1, 0), (1, 0), (1, 0)) {
                problems.push(format!(
                    "saga {i} ({id}) completed with effects order {order:?} charge {charge:?} reserve {reserve:?} (action, compensation): each action once, nothing undone"
                ));
            }
        } else {
            for (name, (done, undone)) in
                [("order", order), ("charge", charge), ("reserve", reserve)]
            {
                // An undo of an action the participant never applied (refused, or in flight
                // when the orchestrator died, so its outcome was unknown) is allowed: a
                // participant answers it as done ("undo before do", see README).
                if undone > done {
                    undo_without_do += 1;
                }
                if undone < done {
                    problems.push(format!(
                        "saga {i} ({id}, input {}) compensated, but its {name} was applied {done} time(s) and undone {undone} time(s){}",
                        input(*i),
                        if name == "charge" { ": the payment is left charged" } else { "" }
                    ));
                }
            }
        }
    }
    // Every refund names the charge of its own saga.
    {
        let ledger = payments.ledger.lock().unwrap();
        let charges: HashMap<&str, &str> = ledger
            .applied
            .iter()
            .filter(|(_, (a, _))| a.phase == "action")
            .map(|(key, (a, _))| (a.saga.as_str(), key.as_str()))
            .collect();
        for (applied, _) in ledger.applied.values() {
            if applied.phase != "compensation" {
                continue;
            }
            if let Some(charge) = charges.get(applied.saga.as_str()) {
                if applied.body["charge"] != json!(charge) {
                    problems.push(format!(
                        "refund of saga {} named charge {} instead of {charge}",
                        applied.saga, applied.body["charge"]
                    ));
                }
            }
        }
    }
    let (late, refusals) = {
        let l = payments.ledger.lock().unwrap();
        (l.late_answers, l.outage_refusals)
    };
    println!(
        "{counts:?}; late answers {late}, charges refused in the outage {refusals}, breaker seen open: {breaker_opened}, undos of actions never applied: {undo_without_do}; {:?} in all",
        began.elapsed()
    );
    assert!(late > 0 && refusals > 0, "the faults happened");
    assert!(
        breaker_opened,
        "the payment breaker opened during the outage"
    );
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(20).collect();
        panic!(
            "{} problems, the first {}:\n{}",
            problems.len(),
            shown.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(late > 0 && refusals > 0, "the faults happened");
    assert!(
        breaker_opened,
        "the payment breaker opened during the outage"
    );
}
