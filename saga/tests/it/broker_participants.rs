//! Steps that are broker commands: the command goes to a topic with the saga's headers, a
//! participant (here `serve_commands`) answers on the reply topic, and the orchestrator reads the
//! replies as a consumer-group member. Once on a Strand broker, once with everything on a Kafka
//! cluster (the broker's Kafka listener through librdkafka).

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use strand_saga::engine::Failure;
use strand_saga::participants::{serve_commands, Command};
use tokio::sync::watch;

use super::support::Stack;

pub fn broker_definition(attempts: u32) -> Value {
    let command = |step: &str, op: &str| {
        json!({
            "type": "broker",
            "topic": format!("{step}-commands"),
            "reply_topic": "saga-replies",
            "body": {"op": op, "input": "{{ input }}"}
        })
    };
    let steps: Vec<Value> = ["order", "charge", "reserve"]
        .iter()
        .map(|s| {
            json!({
                "name": s,
                "action": command(s, "do"),
                "compensation": command(s, "undo"),
                "timeout_ms": 5000,
                "retry": {"max_attempts": attempts, "initial_backoff_ms": 20, "max_backoff_ms": 200},
            })
        })
        .collect();
    json!({"steps": steps})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_commands_run_and_compensate() {
    let dir = tempfile::tempdir().unwrap();
    commands_run_and_compensate(Stack::start(dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_commands_run_and_compensate_on_kafka() {
    let dir = tempfile::tempdir().unwrap();
    commands_run_and_compensate(Stack::start_kafka(dir.path()).await).await;
}

async fn commands_run_and_compensate(stack: Stack) {
    let (status, body) = stack.put("/definitions/order", &broker_definition(2)).await;
    assert_eq!(status, 201, "{body}");

    let seen: Arc<Mutex<Vec<Command>>> = Arc::default();
    let (stop, stopped) = watch::channel(false);
    let record = seen.clone();
    let participant = tokio::spawn(serve_commands(
        stack.cluster().await,
        "participants".into(),
        vec![
            "order-commands".into(),
            "charge-commands".into(),
            "reserve-commands".into(),
        ],
        move |c: &Command| {
            record.lock().unwrap().push(c.clone());
            if c.step == "reserve" && c.body["op"] == "do" && c.body["input"]["fail"] == "reserve" {
                Err(Failure::permanent("out of stock"))
            } else {
                Ok(json!({"step": c.step, "op": c.body["op"]}))
            }
        },
        stopped,
    ));

    let mut ids = Vec::new();
    for i in 0..20 {
        let input = if i % 2 == 0 {
            json!({"n": i})
        } else {
            json!({"n": i, "fail": "reserve"})
        };
        let (status, saga) = stack
            .post("/sagas", &json!({"definition": "order", "input": input}))
            .await;
        assert_eq!(status, 201, "{saga}");
        ids.push(saga["id"].as_str().unwrap().to_string());
    }
    for (i, id) in ids.iter().enumerate() {
        let want = if i % 2 == 0 {
            "completed"
        } else {
            "compensated"
        };
        let saga = stack.wait_for(id, &["completed", "compensated"]).await;
        assert_eq!(saga["state"], want, "{saga}");
        if want == "completed" {
            assert_eq!(
                saga["steps"][2]["output"],
                json!({"step": "reserve", "op": "do"})
            );
        }
    }
    let seen = seen.lock().unwrap().clone();
    let undo: Vec<&str> = seen
        .iter()
        .filter(|c| c.saga_id == ids[1] && c.body["op"] == "undo")
        .map(|c| c.step.as_str())
        .collect();
    assert_eq!(undo, ["charge", "order"]);
    let first = seen.iter().find(|c| c.saga_id == ids[0]).unwrap();
    assert_eq!(first.idempotency_key, format!("{}:order:action", ids[0]));
    assert_eq!(first.phase, "action");
    let _ = stop.send(true);
    participant.await.unwrap().unwrap();
    stack.stop().await;
}
