//! Semantic locks through the real orchestrator: sagas with the same lock key run one at a
//! time in start order, others run alongside, and a held lock survives a restart.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{order_definition, Participants, Stack};

fn locked(addr: std::net::SocketAddr) -> Value {
    let mut def = order_definition(addr, 2);
    def["lock"] = json!("{{ input.customer }}");
    def
}

/// When the saga's first call reached a participant, and its last.
fn span(p: &Participants, id: &str) -> (usize, usize) {
    let ledger = p.ledger.lock().unwrap();
    let calls: Vec<usize> = ledger
        .calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.saga == id)
        .map(|(i, _)| i)
        .collect();
    (calls[0], *calls.last().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_under_one_lock_run_one_at_a_time_in_start_order() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path()).await;
    let participants = Participants::default();
    let addr = participants.serve().await;
    assert_eq!(stack.put("/definitions/order", &locked(addr)).await.0, 201);

    // Three sagas of customer a (the first slow), one of customer b.
    let start = |customer: &str, n: u32| json!({"definition": "order", "input": {"customer": customer, "n": n, "slow": "charge", "slow_ms": 300}});
    let mut ids = Vec::new();
    for (customer, n) in [("a", 1), ("a", 2), ("b", 3), ("a", 4)] {
        let (status, saga) = stack.post("/sagas", &start(customer, n)).await;
        assert_eq!(status, 201, "{saga}");
        ids.push(saga["id"].as_str().unwrap().to_string());
    }
    // A waiting saga has not started a step.
    let (_, second) = stack.get(&format!("/sagas/{}", ids[1])).await;
    assert_eq!(second["lock"], "a");
    assert_eq!(second["holds_lock"], false, "{second}");
    assert!(second["steps"][0]["attempts"]
        .as_array()
        .unwrap()
        .is_empty());

    for id in &ids {
        stack.wait_for(id, &["completed"]).await;
    }
    let (a1, a2, b, a4) = (
        span(&participants, &ids[0]),
        span(&participants, &ids[1]),
        span(&participants, &ids[2]),
        span(&participants, &ids[3]),
    );
    // Customer a's sagas one after the other, in start order.
    assert!(a1.1 < a2.0 && a2.1 < a4.0, "{a1:?} {a2:?} {a4:?}");
    // Customer b's did not wait for a's.
    assert!(b.0 < a1.1, "b {b:?} waited for a {a1:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let participants = Participants::default();
    let addr = participants.serve().await;
    let stack = Stack::start(dir.path()).await;
    assert_eq!(stack.put("/definitions/order", &locked(addr)).await.0, 201);
    let slow = json!({"definition": "order", "input": {"customer": "a", "slow": "charge", "slow_ms": 1500}});
    let (_, saga) = stack.post("/sagas", &slow).await;
    let holder = saga["id"].as_str().unwrap().to_string();
    // The holder's charge is in flight when the orchestrator stops.
    for _ in 0..100 {
        let (_, h) = stack.get(&format!("/sagas/{holder}")).await;
        if !h["steps"][1]["attempts"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, saga) = stack
        .post(
            "/sagas",
            &json!({"definition": "order", "input": {"customer": "a"}}),
        )
        .await;
    let waiter = saga["id"].as_str().unwrap().to_string();
    stack.stop().await;

    let stack = Stack::start(dir.path()).await;
    let (_, w) = stack.get(&format!("/sagas/{waiter}")).await;
    assert_eq!(w["holds_lock"], false, "the waiter must still wait: {w}");
    let (_, h) = stack.get(&format!("/sagas/{holder}")).await;
    assert_eq!(h["holds_lock"], true, "{h}");
    stack.wait_for(&holder, &["completed"]).await;
    stack.wait_for(&waiter, &["completed"]).await;
    let (h, w) = (span(&participants, &holder), span(&participants, &waiter));
    assert!(
        h.1 < w.0,
        "the waiter ran {w:?} before the holder ended {h:?}"
    );
    stack.stop().await;
}
