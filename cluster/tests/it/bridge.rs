//! `strand-bridge` between two real brokers (run in this process), the second standing in for a
//! Kafka cluster (reached only through its Kafka listener and rdkafka): 100,000 records mirrored one way across a
//! `kill -9` of the bridge with none missing and every duplicate marked, and a two-way route
//! that does not loop.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use strand_client::{
    Client, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, TopicSettings,
};

use super::support::{client, spawn_until, start_broker, stop, ChildProcess};

fn start_bridge(config: &std::path::Path) -> ChildProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strand-bridge"));
    command.args([
        "--config",
        config.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
    ]);
    spawn_until(&mut command, "strand-bridge running")
}

fn write_config(
    dir: &std::path::Path,
    a: &str,
    b_kafka: &str,
    topic: &str,
    direction: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("bridge-{topic}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
checkpoint_interval_ms = 200
[clusters.a]
kind = "strand"
address = "{a}"
[clusters.b]
kind = "kafka"
bootstrap = "{b_kafka}"
properties = {{ "client.id" = "strand-bridge-test" }}
[[routes]]
from = {{ cluster = "a", topic = "{topic}" }}
to = {{ cluster = "b", topic = "{topic}" }}
direction = "{direction}"
"#
        ),
    )
    .unwrap();
    path
}

/// Every record of `topic` on the broker behind `client` (by partition), read to its end.
async fn read_all(client: &Client, topic: &str) -> Vec<strand_client::Record> {
    let d = client.admin().describe_topic(topic).await.unwrap();
    let ends: BTreeMap<u32, u64> = d
        .partitions
        .iter()
        .map(|p| (p.partition, p.high_watermark))
        .collect();
    let total: u64 = ends.values().sum();
    let mut consumer = Consumer::new(client.clone(), topic, None, ConsumerConfig::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < total {
        out.push(
            tokio::time::timeout(Duration::from_secs(30), consumer.next())
                .await
                .expect("reading stalled")
                .unwrap(),
        );
    }
    out
}

async fn count(client: &Client, topic: &str) -> u64 {
    match client.admin().describe_topic(topic).await {
        Ok(d) => d.partitions.iter().map(|p| p.high_watermark).sum(),
        Err(_) => 0,
    }
}

fn header<'a>(r: &'a strand_client::Record, name: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|(k, _)| k.as_ref() == name.as_bytes())
        .and_then(|(_, v)| v.as_deref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_mirror_survives_kill_9_with_no_gap() {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let a = start_broker(&dir.path().join("a")).await;
    let b = start_broker(&dir.path().join("b")).await;
    let (ca, cb) = (client(&a.addr).await, client(&b.addr).await);
    ca.admin()
        .create_topic(
            "orders",
            TopicSettings {
                partitions: 3,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    let config = write_config(dir.path(), &a.addr, &b.kafka_addr, "orders", "one-way");
    let mut bridge = start_bridge(&config);

    let producer = Producer::new(ca.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..N {
        let record =
            ProducerRecord::new("orders", format!("value-{i}")).key(format!("k{}", i % 997));
        deliveries.push(producer.send(record).await.unwrap());
    }
    for d in deliveries {
        d.await.unwrap();
    }
    // Kill the bridge mid-stream, then restart it.
    let deadline = Instant::now() + Duration::from_secs(60);
    // Kill once a quarter is mirrored and a checkpoint covering some of it is stored on the
    // destination, so the restart must resume from a checkpoint rather than from the start.
    while count(&cb, "orders").await < N / 4 || count(&cb, "strand-bridge-checkpoints").await < 2 {
        assert!(
            Instant::now() < deadline,
            "the bridge mirrored or checkpointed too little"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill = count(&cb, "orders").await;
    bridge.0.kill().unwrap();
    bridge.0.wait().unwrap();
    let _bridge = start_bridge(&config);
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&cb, "orders").await < N {
        assert!(Instant::now() < deadline, "the bridge never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let source = read_all(&ca, "orders").await;
    let mirrored = read_all(&cb, "orders").await;
    let mut seen: HashMap<(u32, u64), u32> = HashMap::new();
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for r in &mirrored {
        let p: u32 = std::str::from_utf8(header(r, "strand-bridge-source-partition").unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let o: u64 = std::str::from_utf8(header(r, "strand-bridge-source-offset").unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(header(r, "strand-bridge-source-cluster"), Some(&b"a"[..]));
        assert_eq!(p, r.partition, "same partition count keeps the partition");
        let n = seen.entry((p, o)).or_default();
        *n += 1;
        if *n == 1 {
            // First copies arrive in source order per partition.
            assert!(
                last.insert(p, o).is_none_or(|prev| prev < o),
                "out of order at {p}/{o}"
            );
        }
    }
    for r in &source {
        let copies = seen.get(&(r.partition, r.offset)).copied().unwrap_or(0);
        assert!(
            copies >= 1,
            "record {}/{} never mirrored",
            r.partition,
            r.offset
        );
    }
    let duplicates = mirrored.len() - source.len();
    println!(
        "mirrored {} records for {} (before the kill: {before_kill}), duplicates {duplicates}",
        mirrored.len(),
        source.len()
    );
    assert!(
        (duplicates as u64) < before_kill,
        "{duplicates} duplicates: the restart did not resume from a checkpoint"
    );
    drop(_bridge);
    stop(a).await;
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_route_mirrors_both_ways_without_loops() {
    // 100,000 records over the route: half produced on each side.
    const N: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let a = start_broker(&dir.path().join("a")).await;
    let b = start_broker(&dir.path().join("b")).await;
    let (ca, cb) = (client(&a.addr).await, client(&b.addr).await);
    for c in [&ca, &cb] {
        c.admin()
            .create_topic(
                "events",
                TopicSettings {
                    partitions: 2,
                    ..TopicSettings::default()
                },
            )
            .await
            .unwrap();
    }
    let config = write_config(dir.path(), &a.addr, &b.kafka_addr, "events", "both");
    let _bridge = start_bridge(&config);
    for (c, side) in [(&ca, "a"), (&cb, "b")] {
        let producer = Producer::new(c.clone(), ProducerConfig::default());
        let mut deliveries = Vec::new();
        for i in 0..N {
            deliveries.push(
                producer
                    .send(ProducerRecord::new("events", format!("{side}-{i}")))
                    .await
                    .unwrap(),
            );
        }
        for d in deliveries {
            d.await.unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while count(&ca, "events").await < 2 * N as u64 || count(&cb, "events").await < 2 * N as u64 {
        assert!(Instant::now() < deadline, "not mirrored both ways");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Copies are not copied back: the counts stay put.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for c in [&ca, &cb] {
        let records = read_all(c, "events").await;
        assert_eq!(records.len(), 2 * N, "a loop would keep growing the topic");
        let mut values: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
            .collect();
        values.sort();
        values.dedup();
        assert_eq!(values.len(), 2 * N, "each record once");
        // The copies keep their source order per partition.
        let mut last: std::collections::HashMap<Vec<u8>, u64> = Default::default();
        for r in &records {
            let (Some(p), Some(o)) = (
                header(r, strand_cluster::bridge::PROVENANCE_PARTITION),
                header(r, strand_cluster::bridge::PROVENANCE_OFFSET),
            ) else {
                continue;
            };
            let o: u64 = std::str::from_utf8(o).unwrap().parse().unwrap();
            let key = [p, &[r.partition as u8]].concat();
            if let Some(prev) = last.insert(key, o) {
                assert!(o > prev, "copies out of source order");
            }
        }
    }
    stop(a).await;
    stop(b).await;
}
