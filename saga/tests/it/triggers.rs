//! A definition with a trigger: 1,000 order events on `order-events` start exactly 1,000 sagas,
//! also when `strand-saga` is killed with SIGKILL in the middle and restarted; every outcome
//! reaches the outcome topic.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{json, Value};
use strand_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
};

use super::crash::start_saga;
use super::support::{order_definition, Participants};

const N_EVENTS: usize = 1_000;

async fn all_sagas(http: &reqwest::Client, api: &str) -> Vec<Value> {
    let page: Value = http
        .get(format!("{api}/sagas?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut sagas = page["sagas"].as_array().unwrap().clone();
    let mut cursor = page["next_cursor"].as_str().map(String::from);
    while let Some(c) = cursor {
        let page: Value = http
            .get(format!("{api}/sagas?limit=1000&cursor={c}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sagas.extend(page["sagas"].as_array().unwrap().iter().cloned());
        cursor = page["next_cursor"].as_str().map(String::from);
    }
    sagas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_start_one_saga_each_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let participants = Participants::default();
    let addr = participants.serve().await;
    let http = reqwest::Client::new();
    let mut saga = start_saga(dir.path());

    let mut definition = order_definition(addr, 3);
    definition["trigger"] =
        json!({"topic": "order-events", "group": "order-saga", "idempotency_field": "order_id"});
    definition["outcome_topic"] = json!("order-outcomes");
    let r = http
        .put(format!("{}/definitions/order", saga.api))
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let client = Client::connect(saga.broker.clone(), ClientConfig::default())
        .await
        .unwrap();
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::Durable,
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for i in 0..N_EVENTS {
        let mut event = json!({"order_id": format!("o-{i}"), "amount": i});
        if i % 10 == 0 {
            event["fail"] = json!("reserve");
        }
        let record = ProducerRecord::new("order-events", event.to_string()).key(format!("o-{i}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    for d in deliveries {
        d.await.unwrap();
    }

    // Kill the orchestrator once it started some of them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while all_sagas(&http, &saga.api).await.len() < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trigger started too few sagas"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    saga.child.kill().unwrap();
    saga.child.wait().unwrap();
    drop(saga);

    let saga = start_saga(dir.path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let sagas = loop {
        let sagas = all_sagas(&http, &saga.api).await;
        let finished = sagas
            .iter()
            .filter(|s| s["state"] == "completed" || s["state"] == "compensated")
            .count();
        if sagas.len() >= N_EVENTS && finished == sagas.len() {
            break sagas;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} sagas, {finished} finished",
            sagas.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sagas.len(), N_EVENTS, "exactly one saga per event");
    let keys: BTreeSet<&str> = sagas
        .iter()
        .map(|s| s["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), N_EVENTS);
    assert!(keys.contains("trigger:order:o-0") && keys.contains("trigger:order:o-999"));
    let compensated = sagas.iter().filter(|s| s["state"] == "compensated").count();
    assert_eq!(compensated, N_EVENTS / 10);

    // Every outcome is on the outcome topic (at least once).
    let client = Client::connect(saga.broker.clone(), ClientConfig::default())
        .await
        .unwrap();
    let mut consumer = Consumer::new(client, "order-outcomes", None, ConsumerConfig::default())
        .await
        .unwrap();
    let mut outcomes: HashMap<String, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while outcomes.len() < N_EVENTS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} outcomes",
            outcomes.len()
        );
        let Ok(record) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await else {
            continue;
        };
        let outcome: Value = serde_json::from_slice(&record.unwrap().value.unwrap()).unwrap();
        outcomes.insert(
            outcome["saga_id"].as_str().unwrap().to_string(),
            outcome["state"].as_str().unwrap().to_string(),
        );
    }
    for s in &sagas {
        assert_eq!(
            outcomes.get(s["id"].as_str().unwrap()).map(String::as_str),
            s["state"].as_str()
        );
    }
}
