//! `strand-bench bridge`: two brokers in this process, A (the source, native protocol) and B
//! (the destination, reached only through its Kafka listener and librdkafka, as a Kafka cluster
//! would be). First the destination alone: librdkafka's idempotent producer (acks=all) writes N
//! records to B. Then the bridge moves N records already on A to B. The ratio is the share of
//! the slower side's speed the bridge reaches.
//!
//! Then the latency the bridge adds: records produced to A at a steady rate are read by one
//! consumer on A and one on B (the bridge's copy); each notes how long after its send a record
//! arrived. The difference of the two distributions is what the bridge adds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig as KafkaConfig;
use serde_json::json;
use strand_broker::config::BrokerConfig;
use strand_broker::run::RunningBroker;
use strand_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    TopicSettings,
};
use strand_cluster::bridge::config::{BridgeConfig, ClusterConfig, Direction, Endpoint, RouteSpec};
use tokio::sync::watch;

use crate::report::{self, say};

async fn broker(dir: &std::path::Path) -> anyhow::Result<RunningBroker> {
    RunningBroker::start(BrokerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse()?,
        kafka_listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        ..BrokerConfig::default()
    })
    .await
}

async fn records_on(client: &Client, topic: &str) -> u64 {
    match client.admin().describe_topic(topic).await {
        Ok(d) => d.partitions.iter().map(|p| p.high_watermark).sum(),
        Err(_) => 0,
    }
}

pub async fn run(
    n_records: u64,
    record_bytes: usize,
    partitions: u32,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::Builder::new()
        .prefix(".strand-bench-")
        .tempdir_in(std::env::current_dir()?)?;
    let a = broker(&dir.path().join("a")).await?;
    let b = broker(&dir.path().join("b")).await?;
    let ca = Client::connect(a.native_addr.to_string(), ClientConfig::default()).await?;
    let cb = Client::connect(b.native_addr.to_string(), ClientConfig::default()).await?;
    let settings = TopicSettings {
        partitions,
        ..TopicSettings::default()
    };
    cb.admin().create_topic("alone", settings.clone()).await?;
    ca.admin()
        .create_topic("mirrored", settings.clone())
        .await?;
    ca.admin().create_topic("latency", settings).await?;
    let value = vec![b'x'; record_bytes];

    // The destination alone: librdkafka, idempotent, acks=all, into B's Kafka listener.
    let producer: FutureProducer = KafkaConfig::new()
        .set("bootstrap.servers", b.kafka_addr.to_string())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let progress = report::bar(n_records, "alone");
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n_records {
        loop {
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to("alone")
                .partition((i % u64::from(partitions)) as i32)
                .payload(&value[..]);
            match producer.send_result(record) {
                Ok(d) => {
                    pending.push(d);
                    break;
                }
                // The local queue is full: wait for deliveries to drain it.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        if pending.len() >= 50_000 {
            for d in pending.drain(..) {
                d.await?.map_err(|(e, _)| e)?;
            }
            progress.set_position(i + 1);
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    let alone = n_records as f64 / started.elapsed().as_secs_f64();
    progress.finish();
    drop(producer);

    // The source filled first, then the bridge moves all of it.
    let native = Producer::new(ca.clone(), ProducerConfig::default());
    let progress = report::bar(n_records, "source");
    let mut deliveries = Vec::new();
    for i in 0..n_records {
        let record = ProducerRecord {
            topic: "mirrored".into(),
            partition: Some((i % u64::from(partitions)) as u32),
            value: Some(value.clone().into()),
            ..ProducerRecord::default()
        };
        deliveries.push(native.send(record).await?);
        if i % 10_000 == 0 {
            progress.set_position(i);
        }
    }
    for d in deliveries {
        d.await?;
    }
    progress.finish();
    let config = BridgeConfig {
        checkpoint_interval_ms: 1_000,
        create_topics: true,
        in_flight_max: 10_000,
        http_listen: "127.0.0.1:0".parse()?,
        http_tls: None,
        clusters: BTreeMap::from([
            (
                "a".to_string(),
                ClusterConfig::Strand {
                    address: a.native_addr.to_string(),
                    security: Default::default(),
                },
            ),
            (
                "b".to_string(),
                ClusterConfig::Kafka {
                    bootstrap: b.kafka_addr.to_string(),
                    properties: BTreeMap::new(),
                },
            ),
        ]),
        route_specs: ["mirrored", "latency"]
            .into_iter()
            .map(|topic| RouteSpec {
                from: Endpoint {
                    cluster: "a".into(),
                    topic: topic.into(),
                },
                to: Endpoint {
                    cluster: "b".into(),
                    topic: topic.into(),
                },
                direction: Direction::OneWay,
            })
            .collect(),
    };
    let stats = config
        .routes()
        .iter()
        .map(|r| (r.id(), Default::default()))
        .collect();
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let bridge = tokio::spawn(strand_cluster::bridge::run(config, stats, stopped));
    let deadline = started + Duration::from_secs(600);
    let progress = report::bar(n_records, "bridged");
    loop {
        let on_b = records_on(&cb, "mirrored").await;
        progress.set_position(on_b);
        if on_b >= n_records {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bridge did not finish in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bridged = n_records as f64 / started.elapsed().as_secs_f64();
    progress.finish();
    let mb = |rate: f64| rate * record_bytes as f64 / 1e6;
    say!(
        "bridge: {n_records} records of {record_bytes} B, {partitions} partitions: destination alone (librdkafka idempotent, acks=all) {alone:.0} records/s ({:.1} MB/s); through the bridge {bridged:.0} records/s ({:.1} MB/s): bridge/alone = {:.2}",
        mb(alone),
        mb(bridged),
        bridged / alone
    );
    let latency = latency(&ca, &cb, record_bytes, partitions).await?;
    let _ = stop.send(true);
    bridge.await?.context("bridge")?;
    a.stop().await?;
    b.stop().await?;
    let way = |rate: f64| json!({"records_per_s": rate, "mb_per_s": mb(rate)});
    Ok(json!({
        "command": "bridge",
        "records": n_records,
        "record_bytes": record_bytes,
        "partitions": partitions,
        "destination_alone": way(alone),
        "through_bridge": way(bridged),
        "bridge_over_alone": bridged / alone,
        "latency": latency,
    }))
}

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Reads `count` records of `topic` and records, per record, how long after its send (the
/// first 8 bytes of its value) it arrived.
async fn arrivals(
    client: Client,
    topic: &str,
    partitions: u32,
    count: u64,
) -> anyhow::Result<Histogram<u64>> {
    let at = (0..partitions).map(|p| (p, 0)).collect();
    let config = ConsumerConfig {
        fetch_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::at_positions(client, topic, at, config).await?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..count {
        let record = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .context("records stopped arriving")??;
        let value = record.value.unwrap_or_default();
        let sent = u64::from_be_bytes(value[..8].try_into()?);
        histogram.record(now_us().saturating_sub(sent).max(1))?;
    }
    Ok(histogram)
}

/// Produces to A at a steady rate while consumers on A and on B (the bridge's copies) time
/// each record's arrival; prints both and the difference.
async fn latency(
    ca: &Client,
    cb: &Client,
    record_bytes: usize,
    partitions: u32,
) -> anyhow::Result<serde_json::Value> {
    const RATE: u64 = 2_000;
    const SECONDS: u64 = 5;
    let count = RATE * SECONDS;
    // The bridge creates the topic on B when its route starts; wait for that.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cb.admin().describe_topic("latency").await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bridge never created the topic on B"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_a = tokio::spawn(arrivals(ca.clone(), "latency", partitions, count));
    let on_b = tokio::spawn(arrivals(cb.clone(), "latency", partitions, count));
    let producer = Producer::new(ca.clone(), ProducerConfig::default());
    let progress = report::bar(count, "latency");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut deliveries = Vec::with_capacity(count as usize);
    for i in 0..count {
        tick.tick().await;
        let mut value = vec![b'x'; record_bytes.max(8)];
        value[..8].copy_from_slice(&now_us().to_be_bytes());
        let record = ProducerRecord {
            topic: "latency".into(),
            partition: Some((i % u64::from(partitions)) as u32),
            value: Some(value.into()),
            ..ProducerRecord::default()
        };
        deliveries.push(producer.send(record).await?);
        if i % 1_000 == 0 {
            progress.set_position(i);
        }
    }
    for d in deliveries {
        d.await?;
    }
    progress.finish();
    let (a, b) = (on_a.await??, on_b.await??);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    say!(
        "bridge latency: {count} records at {RATE}/s: produce to consume on A p50 {:.1} ms p99 {:.1} ms; on B through the bridge p50 {:.1} ms p99 {:.1} ms; added p50 {:.1} ms p99 {:.1} ms",
        ms(&a, 0.5),
        ms(&a, 0.99),
        ms(&b, 0.5),
        ms(&b, 0.99),
        ms(&b, 0.5) - ms(&a, 0.5),
        ms(&b, 0.99) - ms(&a, 0.99),
    );
    Ok(json!({
        "records": count,
        "rate_per_s": RATE,
        "on_source_ms": {"p50": ms(&a, 0.5), "p99": ms(&a, 0.99)},
        "through_bridge_ms": {"p50": ms(&b, 0.5), "p99": ms(&b, 0.99)},
        "added_ms": {"p50": ms(&b, 0.5) - ms(&a, 0.5), "p99": ms(&b, 0.99) - ms(&a, 0.99)},
    }))
}
