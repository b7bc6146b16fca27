//! Consumer groups end to end over the native protocol: three members share a six-partition
//! topic while producers run, one dies without leaving, its partitions move within the session
//! timeout, every record is consumed at least once, committed offsets never go backwards, a
//! restarted broker resumes the group from its commits, and two groups stay independent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strand_broker::server::ServerConfig;
use strand_client::native::{Request, ResponseBody};
use strand_client::{
    Client, ClientConfig, GroupConfig, GroupConsumer, Producer, ProducerConfig, ProducerRecord,
    TopicSettings,
};

use super::server::TestBroker;

const RECORDS: usize = 20_000;

fn config(group: &str) -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_millis(1500),
        rebalance_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(100),
        auto_commit: Some(Duration::from_millis(200)),
        ..GroupConfig::new(group, vec!["orders".into()])
    }
}

async fn committed(client: &Client, group: &str) -> Vec<u64> {
    let partitions = (0..6).map(|p| ("orders".to_string(), p)).collect();
    match client
        .request(Request::OffsetFetch {
            group: group.into(),
            partitions,
        })
        .await
        .unwrap()
    {
        ResponseBody::Committed(entries) => entries
            .iter()
            .map(|e| e.as_ref().map_or(0, |e| e.offset))
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// Runs a member until `stop` or abort; records what it consumed.
fn member(
    addr: String,
    group: &'static str,
    seen: Arc<Mutex<HashSet<String>>>,
    stop: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = Client::connect(addr, ClientConfig::default())
            .await
            .unwrap();
        let mut consumer = GroupConsumer::join(client, config(group)).await.unwrap();
        loop {
            tokio::select! {
                record = consumer.next() => {
                    let record = record.unwrap();
                    seen.lock().unwrap().insert(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
                }
                _ = stop.notified() => break,
            }
        }
        consumer.close().await.unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_shares_partitions_survives_a_dead_member_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let admin_client = broker.client().await;
    admin_client
        .admin()
        .create_topic(
            "orders",
            TopicSettings {
                partitions: 6,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();

    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let audit_seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(member(
            broker.addr.clone(),
            "order-processor",
            seen.clone(),
            stop.clone(),
        ));
    }
    let audit = member(
        broker.addr.clone(),
        "audit",
        audit_seen.clone(),
        stop.clone(),
    );

    let producing = {
        let client = broker.client().await;
        tokio::spawn(async move {
            let producer = Producer::new(client, ProducerConfig::default());
            for n in 0..RECORDS {
                let d = producer
                    .send(ProducerRecord::new("orders", format!("r{n}")).key(format!("k{n}")))
                    .await
                    .unwrap();
                drop(d);
                // Spread over about six seconds, so records keep coming across the failover
                // (which takes the 1.5 s session timeout plus a rejoin).
                if n % 500 == 0 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
            producer.close().await.unwrap();
        })
    };

    // Watch the group's commits: they must never go backwards.
    let watching = {
        let client = broker.client().await;
        tokio::spawn(async move {
            let mut last = vec![0u64; 6];
            for _ in 0..300 {
                let now = committed(&client, "order-processor").await;
                for (p, (&old, &new)) in last.iter().zip(&now).enumerate() {
                    assert!(
                        new >= old,
                        "partition {p} commit went back from {old} to {new}"
                    );
                }
                last = now;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Kill one member without leaving, once it has taken part.
    tokio::time::sleep(Duration::from_millis(800)).await;
    members.pop().unwrap().abort();
    let killed_at = tokio::time::Instant::now();
    // Within the session timeout (plus a rejoin) the survivors hold all six partitions.
    loop {
        let g = match admin_client
            .request(Request::DescribeGroup {
                group: "order-processor".into(),
            })
            .await
            .unwrap()
        {
            ResponseBody::Group(g) => g,
            other => panic!("{other:?}"),
        };
        if g.state == "stable"
            && g.members.len() == 2
            && g.members.iter().map(|m| m.assignment.len()).sum::<usize>() == 6
        {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "partitions did not move: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !producing.is_finished(),
        "the producer finished before the failover; the test proves nothing"
    );
    producing.await.unwrap();

    // Its partitions move to the survivors; every record is consumed at least once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < RECORDS || audit_seen.lock().unwrap().len() < RECORDS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumed {} and {} of {RECORDS}",
            seen.lock().unwrap().len(),
            audit_seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let described = match admin_client
        .request(Request::DescribeGroup {
            group: "order-processor".into(),
        })
        .await
        .unwrap()
    {
        ResponseBody::Group(g) => g,
        other => panic!("{other:?}"),
    };
    assert_eq!(described.members.len(), 2, "{described:?}");
    assert_eq!(
        described
            .members
            .iter()
            .map(|m| m.assignment.len())
            .sum::<usize>(),
        6
    );
    watching.await.unwrap();

    // Members leave cleanly (committing first); everything consumed is committed.
    for _ in 0..3 {
        stop.notify_waiters();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for m in members {
        m.await.unwrap();
    }
    audit.await.unwrap();
    let ends: u64 = admin_client
        .admin()
        .describe_topic("orders")
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .sum();
    assert_eq!(
        committed(&admin_client, "order-processor")
            .await
            .iter()
            .sum::<u64>(),
        ends
    );
    broker.stop().await;

    // After a restart the group resumes from its commits: only new records arrive.
    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let client = broker.client().await;
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for n in 0..10 {
        producer
            .send(ProducerRecord::new("orders", format!("late{n}")))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
    let mut consumer = GroupConsumer::join(client.clone(), config("order-processor"))
        .await
        .unwrap();
    let mut late: HashMap<String, u32> = HashMap::new();
    for _ in 0..10 {
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap()
            .unwrap();
        *late
            .entry(String::from_utf8(record.value.unwrap().to_vec()).unwrap())
            .or_default() += 1;
    }
    assert!(
        late.keys().all(|v| v.starts_with("late")),
        "replayed old records: {late:?}"
    );
    assert_eq!(late.len(), 10);
    consumer.close().await.unwrap();
    broker.stop().await;
}
