//! The real `strand-saga` binary (with its embedded broker) killed with SIGKILL while 200 sagas
//! run, then restarted on the same data: every saga that was acknowledged ends completed or
//! compensated, and the participants saw every effect applied once per idempotency key, with
//! compensation exactly for the sagas that did not complete.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::support::{order_definition, put_definition_when_ready, wait_for_state, Participants};

pub struct SagaProcess {
    pub child: Child,
    pub api: String,
    pub broker: String,
}

impl Drop for SagaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `strand-saga` with an embedded broker on `dir`, every port picked by the kernel.
pub fn start_saga(dir: &std::path::Path) -> SagaProcess {
    start_saga_on(dir, &[])
}

/// [`start_saga`] with `extra` arguments.
pub fn start_saga_on(dir: &std::path::Path, extra: &[&str]) -> SagaProcess {
    let mut args = vec![
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--kafka-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    start_saga_with(&args)
}

/// Starts `strand-saga` with `args`, its API on a port the kernel picks; returns once it
/// listens.
pub fn start_saga_with(args: &[&str]) -> SagaProcess {
    let mut all = args.to_vec();
    // The participants here fail on purpose; the breaker (tested on its own) stays out of it.
    all.extend([
        "--snapshot-interval-ms",
        "500",
        "--breaker-failures",
        "1000",
    ]);
    start_saga_args(&all)
}

/// Starts `strand-saga` with `args` and nothing else but its API on a port the kernel picks.
pub fn start_saga_args(args: &[&str]) -> SagaProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strand-saga"))
        .args(args)
        .args(["--api-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("strand-saga listening") {
                let field = |name: &str| {
                    let tail = line.split(&format!("{name}=")).nth(1).unwrap();
                    tail.split(' ').next().unwrap().to_string()
                };
                if let Some(tx) = tx.take() {
                    let _ = tx.send((field("api"), field("broker")));
                }
            }
        }
    });
    let (api, broker) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("strand-saga never said where it listens");
    SagaProcess {
        child,
        api: format!("http://{api}"),
        broker,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_flight_loses_no_saga_and_applies_each_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let participants = Participants::default();
    let addr = participants.serve().await;
    let http = reqwest::Client::new();
    let mut saga = start_saga(dir.path());
    let mut definition = order_definition(addr, 5);
    for step in definition["steps"].as_array_mut().unwrap() {
        step["timeout_ms"] = json!(1000);
    }
    let r = http
        .put(format!("{}/definitions/order", saga.api))
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // 200 sagas: every third fails at inventory (compensates), some are slow at payment, some
    // flaky at order. Starts go out concurrently; a start counts once it was acknowledged.
    let mut starts = Vec::new();
    for i in 0..200 {
        let input = match i % 6 {
            0 | 3 => json!({"n": i, "fail": "reserve"}),
            1 => json!({"n": i, "slow": "charge", "slow_ms": 300}),
            2 => json!({"n": i, "flaky": "order"}),
            _ => json!({"n": i}),
        };
        let request =
            json!({"definition": "order", "input": input, "idempotency_key": format!("order-{i}")});
        let (http, api) = (http.clone(), saga.api.clone());
        starts.push(tokio::spawn(async move {
            let r = http
                .post(format!("{api}/sagas"))
                .json(&request)
                .send()
                .await
                .ok()?;
            if r.status() != 201 {
                return None;
            }
            let body: Value = r.json().await.ok()?;
            Some((i, body["id"].as_str()?.to_string()))
        }));
    }
    let mut acked: BTreeMap<usize, String> = BTreeMap::new();
    for s in starts {
        if let Some((i, id)) = s.await.unwrap() {
            acked.insert(i, id);
        }
    }
    assert_eq!(acked.len(), 200, "every start acknowledged before the kill");
    // Let some sagas finish and others be mid-flight, then SIGKILL.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let calls_before_kill = participants.ledger.lock().unwrap().calls.len();
    saga.child.kill().unwrap();
    saga.child.wait().unwrap();
    drop(saga);

    let saga = start_saga(dir.path());
    let mut outcomes: HashMap<String, String> = HashMap::new();
    for (i, id) in &acked {
        let done = wait_for_state(&http, &saga.api, id, &["completed", "compensated"]).await;
        let state = done["state"].as_str().unwrap().to_string();
        let expected = if i % 6 == 0 || i % 6 == 3 {
            "compensated"
        } else {
            "completed"
        };
        assert_eq!(state, expected, "saga {i} ({id})");
        outcomes.insert(id.clone(), state);
    }

    // Per saga, what the participants applied matches how it ended, each effect once.
    for (id, state) in &outcomes {
        participants.assert_applied_once(id, state);
    }
    let ledger = participants.ledger.lock().unwrap();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for c in &ledger.calls {
        *per_key.entry(c.idempotency_key.as_str()).or_default() += 1;
    }
    let redelivered = per_key.values().filter(|n| **n > 1).count();
    println!(
        "calls before the kill: {calls_before_kill}, in all: {}, keys delivered more than once: {redelivered}",
        ledger.calls.len()
    );
    assert!(calls_before_kill > 0 && ledger.calls.len() > calls_before_kill);
}

/// "strand-saga listening" means ready: a start sent the moment it is logged is taken, not
/// refused with 503 while the journal partitions are still being taken over, both on a fresh
/// data folder and after a kill -9 with sagas to recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_after_listening_is_taken_fresh_and_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let participants = Participants::default();
    let addr = participants.serve().await;
    let http = reqwest::Client::new();
    let first_start = |api: String, n: usize| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{api}/sagas"))
                .json(&json!({"definition": "order", "input": {"n": n}}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            (status, r.text().await.unwrap_or_default())
        }
    };
    let saga = start_saga(dir.path());
    let (status, body) = first_start(saga.api.clone(), 0).await;
    // No definition yet: a 404 says the start was looked at (a 503 would be the refusal).
    assert_eq!(status, 404, "fresh start: {body}");
    put_definition_when_ready(&http, &saga.api, "order", &order_definition(addr, 3), 1).await;
    for n in 1..=50 {
        let (status, body) = first_start(saga.api.clone(), n).await;
        assert_eq!(status, 201, "{body}");
    }
    drop(saga); // SIGKILL
    let saga = start_saga(dir.path());
    let (status, body) = first_start(saga.api.clone(), 51).await;
    assert_eq!(status, 201, "after kill -9: {body}");
}
