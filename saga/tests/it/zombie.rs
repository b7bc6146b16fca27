//! A zombie instance: two `strand-saga` processes share a journal on a Kafka-protocol cluster;
//! one is stopped (SIGSTOP) with calls in flight for longer than its session, the other takes
//! its partitions over, and the stopped one is let go on (SIGCONT) still believing it owns
//! them. Its late journal writes must count for nothing: the owner-epoch replay ignores them,
//! every saga ends once, and every effect is applied once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use strand_saga::engine::{Entry, Event};
use strand_saga::recovery;

use super::kafka_journal::{health, journal_records, start_instance, states, KafkaJournal};
use super::support::{order_definition, put_definition_when_ready};

const SAGAS: usize = 60;
const PARTITIONS: usize = 8;

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_instance_that_comes_back_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let KafkaJournal {
        broker,
        kafka,
        participants,
        addr,
        http,
    } = KafkaJournal::start(dir.path()).await;
    let a = start_instance(&kafka, 0);
    let b = start_instance(&kafka, 1);
    let (api_a, api_b) = (a.api.clone(), b.api.clone());
    // Until the group has given A the definition's partition, A answers 503: retry.
    put_definition_when_ready(&http, &api_a, "order", &order_definition(addr, 5), 300).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (pa, pb) = (
            health(&http, &api_a).await.unwrap_or_default(),
            health(&http, &api_b).await.unwrap_or_default(),
        );
        let known = http
            .get(format!("{api_b}/definitions/order"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if known && !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == PARTITIONS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no spread: {pa:?} {pb:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Sagas whose charge answers slowly, so that B has calls in flight when it stops.
    let mut acked: BTreeMap<usize, String> = BTreeMap::new();
    for i in 0..SAGAS {
        let request = json!({"definition": "order",
            "input": {"n": i, "slow": "charge", "slow_ms": 1500},
            "idempotency_key": format!("z-{i}")});
        let r = http
            .post(format!("{api_a}/sagas"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let body: Value = r.json().await.unwrap();
        acked.insert(i, body["id"].as_str().unwrap().to_string());
    }
    let on_b: Vec<String> = states(&http, &api_b)
        .await
        .into_iter()
        .filter(|(_, s)| s == "running")
        .map(|(id, _)| id)
        .collect();
    assert!(!on_b.is_empty(), "B must be driving sagas when it stops");

    // B stalls past its session (6 s): A takes every partition over.
    signal(b.child.id(), "-STOP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while health(&http, &api_a).await.unwrap_or_default().len() < PARTITIONS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never took B's partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // B's answers arrived while it was stopped; it comes back and acts on them.
    signal(b.child.id(), "-CONT");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut all = states(&http, &api_a).await;
        all.extend(states(&http, &api_b).await);
        let done = acked
            .values()
            .filter(|id| all.get(*id).is_some_and(|s| s == "completed"))
            .count();
        if done == SAGAS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} of {SAGAS} completed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The two never drive one partition at once.
    let (pa, pb) = (
        health(&http, &api_a).await.unwrap_or_default(),
        health(&http, &api_b).await.unwrap_or_default(),
    );
    let (sa, sb): (BTreeSet<u32>, BTreeSet<u32>) =
        (pa.into_iter().collect(), pb.into_iter().collect());
    assert!(sa.is_disjoint(&sb), "{sa:?} {sb:?}");

    // The journal as a recovery reads it: stale writes ignored, one end per saga.
    let records = journal_records(&kafka, PARTITIONS as u32).await;
    let partitions: Vec<u32> = (0..PARTITIONS as u32).collect();
    let replayed = recovery::replay(recovery::Snapshots::default(), &partitions, &records).unwrap();
    let written = records
        .iter()
        .filter(|r| {
            let e: Entry = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            !matches!(e.event, Event::Owner { .. })
        })
        .count();
    let stale = written - replayed.entries.len();
    println!(
        "{} journal entries, {stale} of them a fenced owner's, ignored; {} owner markers",
        written,
        records.len() - written
    );
    let mut ends: HashMap<&str, usize> = HashMap::new();
    for e in &replayed.entries {
        if e.event.is_terminal() {
            *ends.entry(e.saga_id.as_str()).or_default() += 1;
        }
    }
    for id in acked.values() {
        assert_eq!(
            ends.get(id.as_str()),
            Some(&1),
            "saga {id} ended exactly once"
        );
        participants.assert_applied_once(id, "completed");
    }
    drop((a, b));
    broker.stop().await.unwrap();
}
