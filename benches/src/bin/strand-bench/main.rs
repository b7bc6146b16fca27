//! `strand-bench`: load generator for a Strand broker over the native protocol.
//!
//! Without `--broker` it starts a broker in-process (own runtime, temporary data folder on the
//! working tree's disk), so client and broker share the machine as they would on one host.
//! Every run is bounded by its record count or duration and stops by itself.
//!
//! ```text
//! strand-bench throughput --records 2000000 --record-bytes 100
//! strand-bench latency --rate 10000 --seconds 10 --record-bytes 100
//! strand-bench kafka --records 1000000 --record-bytes 100
//! strand-bench kafka-peer --bootstrap 127.0.0.1:9092 --records 300000 --record-bytes 1024
//! ```

mod bridge;
mod kafka;
mod saga;
mod tls;
mod txn;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use strand_broker::listener::BoundListener;
use strand_broker::log::{FsyncPolicy, LogConfig};
use strand_broker::metrics::Metrics;
use strand_broker::server::{self, ServerConfig};
use strand_broker::service::Broker;
use strand_broker::topics::Topics;
use strand_client::consumer::Delivery;
use strand_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    TopicSettings,
};

#[derive(Debug, Parser)]
#[command(name = "strand-bench", about = "Load generator for the Strand broker")]
struct Cli {
    /// Broker to load (native protocol); without it, one is started in-process.
    #[arg(long, global = true)]
    broker: Option<String>,
    /// The same broker's Kafka listener, for `kafka` with `--broker`.
    #[arg(long, global = true)]
    kafka_broker: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce N records as fast as possible, then consume them all back.
    Throughput {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 100)]
        record_bytes: usize,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Concurrent producers, each with its own connection.
        #[arg(long, default_value_t = 2)]
        producers: usize,
        /// none, leader or durable.
        #[arg(long, default_value = "leader")]
        acks: String,
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
    },
    /// The throughput run twice on one broker: native client, then librdkafka through the
    /// Kafka listener; prints both and their ratio.
    Kafka {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 100)]
        record_bytes: usize,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// none, leader or durable (librdkafka acks 0, 1 or all).
        #[arg(long, default_value = "leader")]
        acks: String,
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
    },
    /// librdkafka's produce-then-consume run against any Kafka broker (Strand's Kafka listener,
    /// or a peer such as tansu): creates the topic, produces N records, reads them back.
    /// Starts no broker. Prints `RESULT <label> produce|consume <records/s> <MB/s>` lines.
    KafkaPeer {
        /// The broker's Kafka address.
        #[arg(long)]
        bootstrap: String,
        /// The name on the RESULT lines.
        #[arg(long, default_value = "kafka")]
        label: String,
        #[arg(long, default_value_t = 300_000)]
        records: u64,
        #[arg(long, default_value_t = 1024)]
        record_bytes: usize,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// none, leader or durable (librdkafka acks 0, 1 or all).
        #[arg(long, default_value = "leader")]
        acks: String,
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
    },
    /// strand-bridge's throughput against what its destination alone takes.
    Bridge {
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        #[arg(long, default_value_t = 1024)]
        record_bytes: usize,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
    },
    /// Sagas of three broker-command steps through an in-process orchestrator with a durable
    /// journal: completed sagas/s and start-to-outcome latency.
    Saga {
        #[arg(long, default_value_t = 20_000)]
        sagas: u64,
        /// Unfinished sagas at most.
        #[arg(long, default_value_t = 500)]
        concurrency: usize,
        /// Keep the journal and topics on the broker's Kafka listener, through librdkafka.
        #[arg(long)]
        kafka: bool,
    },
    /// The throughput runs over plaintext and over TLS on one broker, native client and
    /// librdkafka: records/s each way and the TLS/plaintext ratio.
    Tls {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 100)]
        record_bytes: usize,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
    },
    /// Transactional produce next to idempotent produce (librdkafka, acks=all, one producer)
    /// on one broker's Kafka listener: records/s each and their ratio.
    Txn {
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        #[arg(long, default_value_t = 100)]
        record_bytes: usize,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Records per transaction.
        #[arg(long, default_value_t = 1_000)]
        records_per_txn: u64,
    },
    /// Produce at a fixed rate and measure produce-to-consume latency (push consumer).
    Latency {
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        record_bytes: usize,
    },
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs only when asked for (RUST_LOG=warn, say): they would mix with the results. Traces
    // when the OpenTelemetry variables ask for them (the brokers it starts run in-process).
    let _telemetry = if std::env::var_os("RUST_LOG").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    {
        Some(strand_broker::telemetry::init(
            "strand-bench",
            strand_broker::telemetry::LogFormat::Text,
        )?)
    } else {
        None
    };
    // Saga and bridge runs start their own brokers, in the same runtime as their clients.
    match cli.command {
        Command::Saga {
            sagas,
            concurrency,
            kafka,
        } => return runtime()?.block_on(saga::run(sagas, concurrency.max(1), kafka)),
        Command::Bridge {
            records,
            record_bytes,
            partitions,
        } => return runtime()?.block_on(bridge::run(records, record_bytes, partitions.max(1))),
        Command::KafkaPeer {
            bootstrap,
            label,
            records,
            record_bytes,
            partitions,
            acks,
            linger_ms,
        } => {
            return runtime()?.block_on(kafka::peer(
                &bootstrap,
                &label,
                records,
                record_bytes,
                partitions.max(1),
                &acks,
                linger_ms,
            ))
        }
        // Its broker (with TLS listeners) runs on a runtime of its own, as the embedded one.
        Command::Tls {
            records,
            record_bytes,
            partitions,
        } => return tls::run(records, record_bytes, partitions.max(1)),
        _ => {}
    }
    // The embedded broker gets its own runtime so that client and broker do not share workers.
    let embedded = match &cli.broker {
        Some(_) => None,
        None => Some(EmbeddedBroker::start()?),
    };
    let addr = cli
        .broker
        .clone()
        .unwrap_or_else(|| embedded.as_ref().expect("embedded").addr.clone());
    let runtime = runtime()?;
    let kafka_addr = cli
        .kafka_broker
        .clone()
        .or_else(|| embedded.as_ref().map(|e| e.kafka_addr.clone()));
    let result = runtime.block_on(async {
        let client = Client::connect(addr.clone(), ClientConfig::default()).await?;
        match cli.command {
            Command::Kafka {
                records,
                record_bytes,
                partitions,
                acks,
                linger_ms,
            } => {
                let kafka_addr = kafka_addr.context("--kafka-broker is needed with --broker")?;
                compare_kafka(
                    &addr,
                    &kafka_addr,
                    client,
                    records,
                    record_bytes,
                    partitions,
                    &acks,
                    linger_ms,
                )
                .await
            }
            Command::Throughput {
                records,
                record_bytes,
                partitions,
                producers,
                acks,
                linger_ms,
            } => throughput(
                &addr,
                &ClientConfig::default(),
                client,
                records,
                record_bytes,
                partitions,
                producers,
                &acks,
                linger_ms,
            )
            .await
            .map(|_| ()),
            Command::Latency {
                rate,
                seconds,
                record_bytes,
            } => latency(client, rate, seconds, record_bytes).await,
            Command::Txn {
                records,
                record_bytes,
                partitions,
                records_per_txn,
            } => {
                let kafka_addr = kafka_addr.context("--kafka-broker is needed with --broker")?;
                compare_txn(
                    &kafka_addr,
                    client,
                    records,
                    record_bytes,
                    partitions,
                    records_per_txn.max(1),
                )
                .await
            }
            Command::Saga { .. }
            | Command::Bridge { .. }
            | Command::Tls { .. }
            | Command::KafkaPeer { .. } => {
                unreachable!("handled before a broker is started")
            }
        }
    });
    drop(runtime);
    if let Some(embedded) = embedded {
        embedded.stop();
    }
    result
}

struct EmbeddedBroker {
    addr: String,
    kafka_addr: String,
    runtime: tokio::runtime::Runtime,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    topics: Arc<Topics>,
    _dir: tempfile::TempDir,
}

impl EmbeddedBroker {
    fn start() -> anyhow::Result<EmbeddedBroker> {
        let dir = tempfile::Builder::new()
            .prefix(".strand-bench-")
            .tempdir_in(std::env::current_dir()?)
            .context("creating the data folder")?;
        let runtime = runtime()?;
        let defaults = LogConfig {
            fsync: FsyncPolicy::IntervalMs(1000),
            retention_ms: None,
            ..LogConfig::default()
        };
        let (topics, _) = Topics::open(dir.path(), defaults)?;
        let topics = Arc::new(topics);
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?.to_string();
        let kafka_listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let kafka_addr = kafka_listener.local_addr()?.to_string();
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let broker = Broker::new(
            topics.clone(),
            Arc::new(Metrics::default()),
            strand_broker::group::CoordinatorConfig::default(),
            Duration::from_secs(30),
        )?;
        {
            let _context = runtime.enter();
            broker.spawn_group_ticker(rx.clone());
        }
        let kafka_task = runtime.spawn(strand_broker::kafka::serve(
            vec![BoundListener::plaintext(kafka_listener)?],
            broker.clone(),
            strand_broker::kafka::KafkaConfig::default(),
            rx.clone(),
        ));
        let native_task = runtime.spawn(server::serve(
            vec![BoundListener::plaintext(listener)?],
            broker,
            ServerConfig::default(),
            rx,
        ));
        let task = runtime.spawn(async move {
            let _ = native_task.await;
            let _ = kafka_task.await;
        });
        Ok(EmbeddedBroker {
            addr,
            kafka_addr,
            runtime,
            shutdown,
            task,
            topics,
            _dir: dir,
        })
    }

    fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.runtime.block_on(self.task);
        let _ = self.topics.close();
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::default_bar()
            .template(&format!(
                "{what:>8} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
            ))
            .expect("valid template"),
    );
    bar
}

/// Records per second of a throughput run.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub produce: f64,
    pub consume: f64,
}

#[allow(clippy::too_many_arguments)]
async fn compare_kafka(
    addr: &str,
    kafka_addr: &str,
    client: Client,
    n_records: u64,
    record_bytes: usize,
    partitions: u32,
    acks: &str,
    linger_ms: u64,
) -> anyhow::Result<()> {
    println!("native client, one producer:");
    let native = throughput(
        addr,
        &ClientConfig::default(),
        client.clone(),
        n_records,
        record_bytes,
        partitions,
        1,
        acks,
        linger_ms,
    )
    .await?;
    let native_topic = format!("bench-{}", std::process::id());
    let topic = format!("kafka-bench-{}", std::process::id());
    client
        .admin()
        .create_topic(
            &topic,
            TopicSettings {
                partitions,
                ..TopicSettings::default()
            },
        )
        .await?;
    let (bootstrap, acks_owned, kafka_topic) =
        (kafka_addr.to_string(), acks.to_string(), topic.clone());
    let rdkafka = tokio::task::spawn_blocking(move || {
        kafka::throughput(
            &bootstrap,
            &[],
            &kafka_topic,
            n_records,
            record_bytes,
            partitions,
            &acks_owned,
            linger_ms,
        )
    })
    .await??;
    println!(
        "librdkafka {} through the Kafka listener:",
        rdkafka::util::get_rdkafka_version().1
    );
    let mb = |rate: f64| rate * record_bytes as f64 / 1e6;
    for (what, n, k) in [
        ("produce", native.produce, rdkafka.produce),
        ("consume", native.consume, rdkafka.consume),
    ] {
        println!(
            "{what}: native {n:.0} records/s ({:.1} MB/s), librdkafka {k:.0} records/s ({:.1} MB/s): kafka/native = {:.2}",
            mb(n),
            mb(k),
            k / n
        );
    }
    // The protocols alone: fetch the same records again on each, counting from batch headers.
    let raw_native =
        kafka::raw_native_consume(&client, &native_topic, partitions, n_records).await?;
    let raw_kafka = kafka::raw_kafka_consume(kafka_addr, &topic, partitions, n_records).await?;
    println!(
        "consume, protocol only (records counted from batch headers): native {raw_native:.0} records/s ({:.1} MB/s), kafka {raw_kafka:.0} records/s ({:.1} MB/s): kafka/native = {:.2}",
        mb(raw_native),
        mb(raw_kafka),
        raw_kafka / raw_native
    );
    Ok(())
}

/// The same records produced idempotently, then in transactions, each to a topic of its own.
async fn compare_txn(
    kafka_addr: &str,
    client: Client,
    n_records: u64,
    record_bytes: usize,
    partitions: u32,
    records_per_txn: u64,
) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for (what, per_txn) in [
        ("idempotent", None),
        ("transactional", Some(records_per_txn)),
    ] {
        let topic = format!("{what}-bench-{}", std::process::id());
        client
            .admin()
            .create_topic(
                &topic,
                TopicSettings {
                    partitions,
                    ..TopicSettings::default()
                },
            )
            .await?;
        let bootstrap = kafka_addr.to_string();
        let rate = tokio::task::spawn_blocking(move || {
            txn::produce(
                &bootstrap,
                &topic,
                n_records,
                record_bytes,
                partitions,
                per_txn,
            )
        })
        .await??;
        println!(
            "{what} produce, librdkafka acks=all: {rate:.0} records/s ({:.1} MB/s)",
            rate * record_bytes as f64 / 1e6
        );
        rates.push(rate);
    }
    println!(
        "transactional/idempotent = {:.2} ({records_per_txn} records per transaction)",
        rates[1] / rates[0]
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn throughput(
    addr: &str,
    client_config: &ClientConfig,
    client: Client,
    n_records: u64,
    record_bytes: usize,
    partitions: u32,
    n_producers: usize,
    acks: &str,
    linger_ms: u64,
) -> anyhow::Result<Rates> {
    let acks = match acks {
        "none" => Acks::None,
        "leader" => Acks::Leader,
        "durable" => Acks::Durable,
        other => anyhow::bail!("--acks must be none, leader or durable, got {other}"),
    };
    let topic = format!("bench-{}", std::process::id());
    client
        .admin()
        .create_topic(
            &topic,
            TopicSettings {
                partitions,
                ..TopicSettings::default()
            },
        )
        .await?;
    let value = Bytes::from(vec![b'x'; record_bytes]);
    let progress = bar(n_records, "produce");
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_producer = n_records.div_ceil(n_producers as u64);
    for p in 0..n_producers {
        let client = Client::connect(addr.to_string(), client_config.clone()).await?;
        let topic = topic.clone();
        let value = value.clone();
        let progress = progress.clone();
        let count = per_producer.min(n_records - per_producer * p as u64);
        tasks.push(tokio::spawn(async move {
            let config = ProducerConfig {
                acks,
                linger: Duration::from_millis(linger_ms),
                ..ProducerConfig::default()
            };
            let producer = Producer::new(client, config);
            let mut pending = Vec::with_capacity(10_000);
            for i in 0..count {
                let record = ProducerRecord {
                    topic: topic.clone(),
                    partition: Some(((i / 1000) % u64::from(partitions)) as u32),
                    value: Some(value.clone()),
                    ..ProducerRecord::default()
                };
                pending.push(producer.send(record).await?);
                if pending.len() == 10_000 {
                    for delivery in pending.drain(..) {
                        delivery.await?;
                    }
                    progress.inc(10_000);
                }
            }
            let left = pending.len() as u64;
            for delivery in pending {
                delivery.await?;
            }
            progress.inc(left);
            producer.close().await?;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let produce_time = started.elapsed();
    progress.finish();

    let progress = bar(n_records, "consume");
    let started = Instant::now();
    let mut consumer = Consumer::new(client, &topic, None, ConsumerConfig::default()).await?;
    let mut consumed = 0u64;
    while consumed < n_records {
        consumer.next().await?;
        consumed += 1;
        if consumed % 10_000 == 0 {
            progress.set_position(consumed);
        }
    }
    let consume_time = started.elapsed();
    progress.finish();

    let wire_bytes = n_records as f64 * record_bytes as f64;
    for (what, time) in [("produce", produce_time), ("consume", consume_time)] {
        let secs = time.as_secs_f64();
        println!(
            "{what}: {n_records} records of {record_bytes} B in {secs:.2} s = {:.0} records/s, {:.1} MB/s of values",
            n_records as f64 / secs,
            wire_bytes / secs / 1e6
        );
    }
    Ok(Rates {
        produce: n_records as f64 / produce_time.as_secs_f64(),
        consume: n_records as f64 / consume_time.as_secs_f64(),
    })
}

async fn latency(
    client: Client,
    rate: u64,
    seconds: u64,
    record_bytes: usize,
) -> anyhow::Result<()> {
    let topic = format!("latency-{}", std::process::id());
    client
        .admin()
        .create_topic(
            &topic,
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .await?;
    let n_records = rate * seconds;
    let origin = Instant::now();
    let config = ConsumerConfig {
        delivery: Delivery::Push,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), &topic, None, config).await?;
    let receiving = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for _ in 0..n_records {
            let record = consumer.next().await?;
            let value = record.value.context("record without value")?;
            let sent_us = u64::from_be_bytes(value[..8].try_into()?);
            let now_us = origin.elapsed().as_micros() as u64;
            histogram.record(now_us.saturating_sub(sent_us).max(1))?;
        }
        anyhow::Ok(histogram)
    });
    let producer = Producer::new(
        client,
        ProducerConfig {
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        },
    );
    let progress = bar(n_records, "latency");
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut deliveries = Vec::new();
    for i in 0..n_records {
        // Records are sent on a fixed schedule (tokio's timer wakes at most once a millisecond,
        // so they leave in small bursts) and carry the time they were handed to the producer.
        let due = origin + interval.mul_f64(i as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let mut value = vec![0u8; record_bytes.max(8)];
        value[..8].copy_from_slice(&(origin.elapsed().as_micros() as u64).to_be_bytes());
        deliveries.push(
            producer
                .send(ProducerRecord::new(topic.clone(), value))
                .await?,
        );
        if i % 1000 == 0 {
            progress.set_position(i);
        }
    }
    for delivery in deliveries {
        delivery.await?;
    }
    progress.finish();
    let histogram = tokio::time::timeout(Duration::from_secs(30), receiving).await???;
    producer.close().await?;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "end-to-end latency at {rate} records/s of {record_bytes} B, {n_records} records: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1000.0
    );
    Ok(())
}
