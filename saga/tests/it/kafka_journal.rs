//! Three `strand-saga` processes keep their journal on a Kafka-protocol cluster (here a Strand
//! broker reached only through its Kafka listener, with librdkafka) and share its partitions
//! through a consumer group. 1,000 sagas are started through all three; one instance is killed
//! with SIGKILL mid-flight. Every saga ends completed or compensated, the journal holds exactly
//! one end per saga, the participants applied every effect once, and the sagas the dead
//! instance was driving were finished by the survivors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{json, Value};
use strand_broker::config::BrokerConfig;
use strand_broker::run::RunningBroker;
use strand_cluster::{Cluster, ClusterConfig};
use strand_saga::engine::{Entry, Event};
use strand_saga::journal::JOURNAL_TOPIC;

use super::crash::{start_saga_with, SagaProcess};
use super::support::{order_definition, Participants};

const SAGAS: usize = 1_000;

/// A broker reached only through its Kafka listener, the participants, and an HTTP client.
pub struct KafkaJournal {
    pub broker: RunningBroker,
    pub kafka: String,
    pub participants: Participants,
    pub addr: std::net::SocketAddr,
    pub http: reqwest::Client,
}

impl KafkaJournal {
    pub async fn start(dir: &std::path::Path) -> KafkaJournal {
        let config = BrokerConfig {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            kafka_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            ..BrokerConfig::default()
        };
        let broker = RunningBroker::start(config).await.unwrap();
        let kafka = broker.kafka_addr.to_string();
        let participants = Participants::default();
        let addr = participants.serve().await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        KafkaJournal {
            broker,
            kafka,
            participants,
            addr,
            http,
        }
    }
}

/// Every record of the journal's `partitions`, read through librdkafka, in offset order per
/// partition.
pub async fn journal_records(kafka: &str, partitions: u32) -> Vec<strand_cluster::MirroredRecord> {
    let cluster = Cluster::connect(
        "journal",
        &ClusterConfig::Kafka {
            bootstrap: kafka.to_string(),
            properties: Default::default(),
        },
    )
    .await
    .unwrap();
    let from: Vec<(u32, u64)> = (0..partitions).map(|p| (p, 0)).collect();
    let mut records = cluster.read_to_end(JOURNAL_TOPIC, &from).await.unwrap();
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}
const PARTITIONS: u32 = 8;

pub fn start_instance(kafka: &str, n: usize) -> SagaProcess {
    let id = format!("saga-{n}");
    start_saga_with(&[
        "--kafka-brokers",
        kafka,
        "--journal-partitions",
        "8",
        "--session-timeout-ms",
        "6000",
        "--instance-id",
        &id,
    ])
}

pub async fn health(http: &reqwest::Client, api: &str) -> Option<Vec<u32>> {
    let body: Value = http
        .get(format!("{api}/health"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    serde_json::from_value(body["partitions"].clone()).ok()
}

/// Every saga an instance drives, with its state.
pub async fn states(http: &reqwest::Client, api: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{api}/sagas?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let Ok(r) = http.get(&url).send().await else {
            return out;
        };
        let Ok(page) = r.json::<Value>().await else {
            return out;
        };
        for s in page["sagas"].as_array().into_iter().flatten() {
            out.insert(
                s["id"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

fn expected_state(i: usize) -> &'static str {
    if i % 6 == 0 || i % 6 == 3 {
        "compensated"
    } else {
        "completed"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_a_kafka_journal_and_survive_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let KafkaJournal {
        broker,
        kafka,
        participants,
        addr,
        http,
    } = KafkaJournal::start(dir.path()).await;

    let mut instances: Vec<Option<SagaProcess>> =
        (0..3).map(|n| Some(start_instance(&kafka, n))).collect();
    let apis: Vec<String> = instances
        .iter()
        .map(|i| i.as_ref().unwrap().api.clone())
        .collect();

    let r = http
        .put(format!("{}/definitions/order", apis[0]))
        .json(&order_definition(addr, 5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Every instance knows the definition and the partitions are spread over all three.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let owned_before = loop {
        let mut owned = Vec::new();
        for api in &apis {
            let known = http
                .get(format!("{api}/definitions/order"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            owned.push(
                health(&http, api)
                    .await
                    .filter(|_| known)
                    .unwrap_or_default(),
            );
        }
        let all: BTreeSet<u32> = owned.iter().flatten().copied().collect();
        let total: usize = owned.iter().map(Vec::len).sum();
        if owned.iter().all(|o| !o.is_empty())
            && all.len() == PARTITIONS as usize
            && total == all.len()
        {
            break owned;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions never spread over the instances: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("partitions before the kill: {owned_before:?}");

    // 1,000 sagas through all three instances (a key of another instance's partition is
    // forwarded there): every third compensates at inventory, some are slow or flaky. A start
    // refused (503: its partition is moving) or unanswered (a dead instance) is retried at the
    // next instance.
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let acked_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut starts = Vec::new();
    for i in 0..SAGAS {
        let input = match i % 6 {
            0 | 3 => json!({"n": i, "fail": "reserve"}),
            1 => json!({"n": i, "slow": "charge", "slow_ms": 400}),
            2 => json!({"n": i, "flaky": "order"}),
            _ => json!({"n": i}),
        };
        let request =
            json!({"definition": "order", "input": input, "idempotency_key": format!("order-{i}")});
        let (http, apis, counter) = (http.clone(), apis.clone(), acked_so_far.clone());
        let semaphore = semaphore.clone();
        starts.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await.unwrap();
            let mut at = i % 3;
            for _ in 0..600 {
                let r = http
                    .post(format!("{}/sagas", apis[at]))
                    .json(&request)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 || r.status() == 200 => {
                        let body: Value = r.json().await.unwrap();
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return (i, body["id"].as_str().unwrap().to_string());
                    }
                    Ok(r) if r.status() == 503 => {}
                    Ok(r) => panic!("start {i}: {} {}", r.status(), r.text().await.unwrap()),
                    Err(_) => {}
                }
                at = (at + 1) % 3;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("start {i} never accepted");
        }));
    }

    // Instance 2 dies halfway through, with sagas in flight.
    while acked_so_far.load(std::sync::atomic::Ordering::Relaxed) < SAGAS / 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim_states = states(&http, &apis[2]).await;
    let in_flight: Vec<String> = victim_states
        .iter()
        .filter(|(_, s)| *s == "running" || *s == "compensating")
        .map(|(id, _)| id.clone())
        .collect();
    println!(
        "instance 2 drove {} sagas, {} unfinished, when killed",
        victim_states.len(),
        in_flight.len()
    );
    assert!(
        !in_flight.is_empty(),
        "the kill must catch sagas mid-flight"
    );
    let mut victim = instances[2].take().unwrap();
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    drop(victim);
    let killed_at = tokio::time::Instant::now();
    let mut acked: BTreeMap<usize, String> = BTreeMap::new();
    for s in starts {
        let (i, id) = s.await.unwrap();
        acked.insert(i, id);
    }
    assert_eq!(acked.len(), SAGAS);
    println!(
        "every start acknowledged {:?} after the kill",
        killed_at.elapsed()
    );

    // The survivors take the dead instance's partitions over and finish everything.
    let survivors = &apis[..2];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let finished = loop {
        let mut all = HashMap::new();
        for api in survivors {
            all.extend(states(&http, api).await);
        }
        let done = acked
            .values()
            .filter(|id| {
                all.get(*id)
                    .is_some_and(|s| s == "completed" || s == "compensated")
            })
            .count();
        if done == SAGAS {
            println!(
                "every saga finished {:?} after the kill",
                killed_at.elapsed()
            );
            break all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} of {SAGAS} sagas finished; survivors' partitions: {:?} {:?}",
            health(&http, &survivors[0]).await,
            health(&http, &survivors[1]).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut owned_after = BTreeSet::new();
    for api in survivors {
        owned_after.extend(health(&http, api).await.unwrap());
    }
    assert_eq!(
        owned_after.len(),
        PARTITIONS as usize,
        "every partition has a survivor"
    );
    // A saga whose start was not yet durable when the instance died never was (its client got
    // no answer and started it again, under a new id): only acknowledged ones count.
    let acked_ids: BTreeSet<&String> = acked.values().collect();
    let in_flight: Vec<&String> = in_flight
        .iter()
        .filter(|id| acked_ids.contains(id))
        .collect();
    println!(
        "{} acknowledged sagas were mid-flight on the dead instance",
        in_flight.len()
    );
    assert!(
        !in_flight.is_empty(),
        "acknowledged sagas were mid-flight on the dead instance"
    );
    for id in in_flight {
        assert!(
            finished
                .get(id)
                .is_some_and(|s| s == "completed" || s == "compensated"),
            "saga {id}, mid-flight on the dead instance, was finished by a survivor"
        );
    }
    for (i, id) in &acked {
        assert_eq!(finished[id], expected_state(*i), "saga {i} ({id})");
    }

    // The journal: one start and exactly one end per saga, whoever drove it.
    let mut starts_seen: HashMap<String, usize> = HashMap::new();
    let mut ends: HashMap<String, usize> = HashMap::new();
    for record in journal_records(&kafka, PARTITIONS).await {
        let entry: Entry = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        if matches!(entry.event, Event::Started { .. }) {
            *starts_seen.entry(entry.saga_id.clone()).or_default() += 1;
        }
        if entry.event.is_terminal() {
            *ends.entry(entry.saga_id).or_default() += 1;
        }
    }
    for id in acked.values() {
        assert_eq!(starts_seen.get(id), Some(&1), "saga {id} started once");
        assert_eq!(ends.get(id), Some(&1), "saga {id} ended exactly once");
    }

    // The participants: each effect applied once, compensation exactly where it ended so.
    for (i, id) in &acked {
        participants.assert_applied_once(id, expected_state(*i));
    }
    drop(instances);
    broker.stop().await.unwrap();
}
