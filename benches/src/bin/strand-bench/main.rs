//! `strand-bench`: load generator for a Strand broker over the native protocol.
//!
//! Without `--broker` it starts a broker in-process (own runtime, temporary data folder on the
//! working tree's disk), so client and broker share the machine as they would on one host.
//! Every run is bounded by its record count or duration and stops by itself.
//!
//! Every subcommand shows progress on stderr (on a terminal, unless `--quiet`) and, with
//! `--json`, prints one JSON object with its results on stdout (the text then goes to stderr).
//! `latency`, `throughput` and `saga` draw an SVG chart with `--chart FILE.svg`.
//!
//! ```text
//! strand-bench throughput --records 2000000 --record-bytes 100 --chart throughput.svg
//! strand-bench latency --rate 10000 --seconds 10 --record-bytes 100 --hdr-out latency.hgrm
//! strand-bench --json kafka --records 1000000 --record-bytes 100
//! strand-bench kafka-peer --bootstrap 127.0.0.1:9092 --records 300000 --record-bytes 1024
//! ```

mod bridge;
mod chart;
mod hgrm;
mod kafka;
mod report;
mod saga;
mod tls;
mod txn;

/// mimalloc without transparent huge pages (see `strand_broker::alloc`).
#[global_allocator]
static ALLOCATOR: strand_broker::alloc::MiMalloc = strand_broker::alloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;
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
    /// Print the results as one JSON object on stdout; the text goes to stderr.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars (they are drawn on stderr, and only when it is a terminal).
    #[arg(long, global = true)]
    quiet: bool,
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
        /// Draw produce and consume records/s over time into FILE (SVG).
        #[arg(long, value_name = "FILE.svg")]
        chart: Option<std::path::PathBuf>,
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
        /// A librdkafka property for the consumer, KEY=VALUE (repeatable), say
        /// fetch.queue.backoff.ms=10.
        #[arg(long = "consumer-property", value_parser = key_value)]
        consumer_properties: Vec<(String, String)>,
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
        /// Draw completed sagas/s and latency percentiles over time into FILE (SVG).
        #[arg(long, value_name = "FILE.svg")]
        chart: Option<std::path::PathBuf>,
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
    /// Produce at a fixed rate and measure produce-to-consume latency (push consumer), each record
    /// timed from the instant the schedule says it should leave (no coordinated omission).
    Latency {
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        record_bytes: usize,
        /// Write the latency histogram to FILE as HdrHistogram's percentile distribution
        /// (`.hgrm` text, milliseconds).
        #[arg(long, value_name = "FILE")]
        hdr_out: Option<std::path::PathBuf>,
        /// Draw the latency percentile curve into FILE (SVG).
        #[arg(long, value_name = "FILE.svg")]
        chart: Option<std::path::PathBuf>,
    },
}

/// `KEY=VALUE`, for librdkafka properties.
fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    report::init(cli.json, cli.quiet);
    let result = run(cli)?;
    report::finish(&result)
}

/// Runs the subcommand; its results as JSON.
fn run(cli: Cli) -> anyhow::Result<serde_json::Value> {
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
            chart,
        } => {
            return runtime()?.block_on(saga::run(
                sagas,
                concurrency.max(1),
                kafka,
                chart.as_deref(),
            ))
        }
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
                consumer_properties,
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
                    &consumer_properties,
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
                chart,
            } => {
                let run = throughput(
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
                .await?;
                if let Some(path) = chart {
                    let title = format!(
                        "strand-bench throughput: {records} records of {record_bytes} B, {partitions} partitions, {producers} producers, acks={acks}"
                    );
                    chart::over_time(
                        &path,
                        &title,
                        "records/s",
                        &[
                            chart::Series {
                                name: "produce (acknowledged)".into(),
                                points: run.produced.per_second(),
                            },
                            chart::Series {
                                name: "consume".into(),
                                points: run.consumed.per_second(),
                            },
                        ],
                        &[],
                    )?;
                }
                Ok(run.json)
            }
            Command::Latency {
                rate,
                seconds,
                record_bytes,
                hdr_out,
                chart,
            } => {
                latency(
                    client,
                    rate,
                    seconds,
                    record_bytes,
                    hdr_out.as_deref(),
                    chart.as_deref(),
                )
                .await
            }
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

/// Records per second of a throughput run.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub produce: f64,
    pub consume: f64,
}

impl Rates {
    /// Records/s and MB/s of values, each way.
    pub fn json(&self, record_bytes: usize) -> serde_json::Value {
        let way = |rate: f64| json!({"records_per_s": rate, "mb_per_s": rate * record_bytes as f64 / 1e6});
        json!({"produce": way(self.produce), "consume": way(self.consume)})
    }
}

/// A throughput run's figures, as JSON and as the time series the chart draws.
#[derive(Debug)]
pub struct ThroughputRun {
    pub rates: Rates,
    pub json: serde_json::Value,
    /// Records acknowledged per time bin, from the start of the produce phase.
    pub produced: chart::Timeline,
    /// Records consumed per time bin, on the same clock.
    pub consumed: chart::Timeline,
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
    consumer_properties: &[(String, String)],
) -> anyhow::Result<serde_json::Value> {
    report::say!("native client, one producer:");
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
    .await?
    .rates;
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
    let properties = consumer_properties.to_vec();
    let rdkafka = tokio::task::spawn_blocking(move || {
        kafka::throughput(
            &bootstrap,
            &[],
            &properties,
            &kafka_topic,
            n_records,
            record_bytes,
            partitions,
            &acks_owned,
            linger_ms,
        )
    })
    .await??;
    report::say!(
        "librdkafka {} through the Kafka listener (consumer properties: {consumer_properties:?}):",
        rdkafka::util::get_rdkafka_version().1
    );
    let mb = |rate: f64| rate * record_bytes as f64 / 1e6;
    for (what, n, k) in [
        ("produce", native.produce, rdkafka.produce),
        ("consume", native.consume, rdkafka.consume),
    ] {
        report::say!(
            "{what}: native {n:.0} records/s ({:.1} MB/s), librdkafka {k:.0} records/s ({:.1} MB/s): kafka/native = {:.2}",
            mb(n),
            mb(k),
            k / n
        );
    }
    // The protocols alone: fetch the same records again on each, counting from batch headers.
    let progress = report::bar(n_records, "native");
    let raw_native =
        kafka::raw_native_consume(&client, &native_topic, partitions, n_records, &progress).await?;
    progress.finish_and_clear();
    let progress = report::bar(n_records, "kafka");
    let raw_kafka =
        kafka::raw_kafka_consume(kafka_addr, &topic, partitions, n_records, &progress).await?;
    progress.finish_and_clear();
    report::say!(
        "consume, protocol only (records counted from batch headers): native {raw_native:.0} records/s ({:.1} MB/s), kafka {raw_kafka:.0} records/s ({:.1} MB/s): kafka/native = {:.2}",
        mb(raw_native),
        mb(raw_kafka),
        raw_kafka / raw_native
    );
    let way = |rate: f64| json!({"records_per_s": rate, "mb_per_s": mb(rate)});
    Ok(json!({
        "command": "kafka",
        "records": n_records,
        "record_bytes": record_bytes,
        "partitions": partitions,
        "acks": acks,
        "linger_ms": linger_ms,
        "consumer_properties": consumer_properties,
        "librdkafka_version": rdkafka::util::get_rdkafka_version().1,
        "native": native.json(record_bytes),
        "librdkafka": rdkafka.json(record_bytes),
        "kafka_over_native": {
            "produce": rdkafka.produce / native.produce,
            "consume": rdkafka.consume / native.consume,
        },
        "consume_protocol_only": {
            "native": way(raw_native),
            "kafka": way(raw_kafka),
            "kafka_over_native": raw_kafka / raw_native,
        },
    }))
}

/// The same records produced idempotently, then in transactions, each to a topic of its own.
async fn compare_txn(
    kafka_addr: &str,
    client: Client,
    n_records: u64,
    record_bytes: usize,
    partitions: u32,
    records_per_txn: u64,
) -> anyhow::Result<serde_json::Value> {
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
        let progress = report::bar(n_records, &what[..8.min(what.len())]);
        let bar = progress.clone();
        let rate = tokio::task::spawn_blocking(move || {
            txn::produce(
                &bootstrap,
                &topic,
                n_records,
                record_bytes,
                partitions,
                per_txn,
                &bar,
            )
        })
        .await??;
        progress.finish_and_clear();
        report::say!(
            "{what} produce, librdkafka acks=all: {rate:.0} records/s ({:.1} MB/s)",
            rate * record_bytes as f64 / 1e6
        );
        rates.push(rate);
    }
    report::say!(
        "transactional/idempotent = {:.2} ({records_per_txn} records per transaction)",
        rates[1] / rates[0]
    );
    let way =
        |rate: f64| json!({"records_per_s": rate, "mb_per_s": rate * record_bytes as f64 / 1e6});
    Ok(json!({
        "command": "txn",
        "records": n_records,
        "record_bytes": record_bytes,
        "partitions": partitions,
        "records_per_txn": records_per_txn,
        "idempotent": way(rates[0]),
        "transactional": way(rates[1]),
        "transactional_over_idempotent": rates[1] / rates[0],
    }))
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
    acks_name: &str,
    linger_ms: u64,
) -> anyhow::Result<ThroughputRun> {
    let acks = match acks_name {
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
    let progress = report::bar(n_records, "produce");
    let started = Instant::now();
    let mut produced = chart::Timeline::new(started);
    let mut tasks = Vec::new();
    let per_producer = n_records.div_ceil(n_producers as u64);
    for p in 0..n_producers {
        let client = Client::connect(addr.to_string(), client_config.clone()).await?;
        let topic = topic.clone();
        let value = value.clone();
        let progress = progress.clone();
        let count = per_producer.min(n_records - per_producer * p as u64);
        tasks.push(tokio::spawn(async move {
            let mut produced = chart::Timeline::new(started);
            let config = ProducerConfig {
                acks,
                linger: Duration::from_millis(linger_ms),
                ..ProducerConfig::default()
            };
            let producer = Producer::new(client, config);
            // Up to 10,000 records in flight; the oldest thousand are awaited when it is full.
            let mut pending = std::collections::VecDeque::with_capacity(10_000);
            for i in 0..count {
                let record = ProducerRecord {
                    topic: topic.clone(),
                    partition: Some(((i / 1000) % u64::from(partitions)) as u32),
                    value: Some(value.clone()),
                    ..ProducerRecord::default()
                };
                pending.push_back(producer.send(record).await?);
                if pending.len() == 10_000 {
                    for delivery in pending.drain(..1_000) {
                        delivery.await?;
                    }
                    progress.inc(1_000);
                    produced.add(Instant::now(), 1_000);
                }
            }
            let left = pending.len() as u64;
            for delivery in pending {
                delivery.await?;
            }
            progress.inc(left);
            produced.add(Instant::now(), left);
            producer.close().await?;
            anyhow::Ok(produced)
        }));
    }
    for task in tasks {
        produced.merge(&task.await??);
    }
    let produce_time = started.elapsed();
    progress.finish();

    let progress = report::bar(n_records, "consume");
    let mut consumed_over_time = chart::Timeline::new(started);
    let consume_started = Instant::now();
    let mut consumer = Consumer::new(client, &topic, None, ConsumerConfig::default()).await?;
    let mut consumed = 0u64;
    while consumed < n_records {
        consumer.next().await?;
        consumed += 1;
        if consumed % 1_000 == 0 || consumed == n_records {
            let step = if consumed % 1_000 == 0 {
                1_000
            } else {
                consumed % 1_000
            };
            consumed_over_time.add(Instant::now(), step);
        }
        if consumed % 10_000 == 0 {
            progress.set_position(consumed);
        }
    }
    let consume_time = consume_started.elapsed();
    progress.finish();

    let wire_bytes = n_records as f64 * record_bytes as f64;
    for (what, time) in [("produce", produce_time), ("consume", consume_time)] {
        let secs = time.as_secs_f64();
        report::say!(
            "{what}: {n_records} records of {record_bytes} B in {secs:.2} s = {:.0} records/s, {:.1} MB/s of values",
            n_records as f64 / secs,
            wire_bytes / secs / 1e6
        );
    }
    let rates = Rates {
        produce: n_records as f64 / produce_time.as_secs_f64(),
        consume: n_records as f64 / consume_time.as_secs_f64(),
    };
    let mut json = json!({
        "command": "throughput",
        "records": n_records,
        "record_bytes": record_bytes,
        "partitions": partitions,
        "producers": n_producers,
        "acks": acks_name,
        "linger_ms": linger_ms,
    });
    if let (Some(run), serde_json::Value::Object(figures)) =
        (json.as_object_mut(), rates.json(record_bytes))
    {
        run.extend(figures);
    }
    json["produce"]["seconds"] = json!(produce_time.as_secs_f64());
    json["consume"]["seconds"] = json!(consume_time.as_secs_f64());
    Ok(ThroughputRun {
        rates,
        json,
        produced,
        consumed: consumed_over_time,
    })
}

/// Produces on a fixed schedule and times each record from the instant the schedule says it
/// should leave, not from when it did: a sender that falls behind (the producer's queue full, the
/// thread descheduled) makes the records it delays count as late, so the histogram has no
/// coordinated omission.
async fn latency(
    client: Client,
    rate: u64,
    seconds: u64,
    record_bytes: usize,
    hdr_out: Option<&std::path::Path>,
    chart_out: Option<&std::path::Path>,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(rate > 0, "--rate must be at least 1");
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
    let config = ConsumerConfig {
        delivery: Delivery::Push,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), &topic, None, config).await?;
    let producer = Producer::new(
        client,
        ProducerConfig {
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        },
    );
    let progress = report::bar(n_records, "latency");
    // Record i is due at origin + i / rate; it carries that intended instant, in microseconds
    // since the origin, and the consumer subtracts it from the instant it receives the record.
    let origin = Instant::now();
    let intended = move |i: u64| {
        Duration::from_nanos((u128::from(i) * 1_000_000_000 / u128::from(rate)) as u64)
    };
    let receiving = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for _ in 0..n_records {
            let record = consumer.next().await?;
            let value = record.value.context("record without value")?;
            let intended_us = u64::from_be_bytes(value[..8].try_into()?);
            let now_us = origin.elapsed().as_micros() as u64;
            histogram.record(now_us.saturating_sub(intended_us).max(1))?;
        }
        anyhow::Ok(histogram)
    });
    // The schedule is kept by a thread of its own: tokio's timer wakes at most once a
    // millisecond, std's sleep within tens of microseconds. Each wake-up sends every record due
    // by then (a burst when the thread woke late), each stamped with its own intended instant.
    let handle = tokio::runtime::Handle::current();
    let sender_progress = progress.clone();
    let sending = tokio::task::spawn_blocking(move || {
        let mut deliveries = Vec::with_capacity(n_records as usize);
        let mut behind_max = Duration::ZERO;
        let mut send_max = Duration::ZERO;
        let mut i = 0u64;
        while i < n_records {
            let now = origin.elapsed();
            let due = intended(i);
            if due > now {
                std::thread::sleep(due - now);
                continue;
            }
            behind_max = behind_max.max(now - due);
            while i < n_records && intended(i) <= now {
                let mut value = vec![0u8; record_bytes.max(8)];
                value[..8].copy_from_slice(&(intended(i).as_micros() as u64).to_be_bytes());
                let sending = Instant::now();
                deliveries.push(
                    handle.block_on(producer.send(ProducerRecord::new(topic.clone(), value)))?,
                );
                send_max = send_max.max(sending.elapsed());
                i += 1;
                if i % 1000 == 0 {
                    sender_progress.set_position(i);
                }
            }
        }
        anyhow::Ok((producer, deliveries, behind_max, send_max))
    });
    let (producer, deliveries, behind_max, send_max) = sending.await??;
    for delivery in deliveries {
        delivery.await?;
    }
    progress.finish();
    let histogram = tokio::time::timeout(Duration::from_secs(30), receiving).await???;
    producer.close().await?;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    report::say!(
        "end-to-end latency at {rate} records/s of {record_bytes} B, {n_records} records: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1000.0
    );
    report::say!(
        "timed from each record's intended send time; the sender was at most {:.3} ms behind its schedule, and one send took at most {:.3} ms",
        behind_max.as_secs_f64() * 1000.0,
        send_max.as_secs_f64() * 1000.0
    );
    if let Some(path) = hdr_out {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        hgrm::write_percentile_distribution(&histogram, &mut file)
            .and_then(|()| std::io::Write::flush(&mut file))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = chart_out {
        let title = format!(
            "strand-bench latency: {rate} records/s of {record_bytes} B, produce to push-consume, from intended send time"
        );
        chart::percentile_curve(path, &title, &[("end to end", &histogram)])?;
    }
    let percentiles: serde_json::Map<String, serde_json::Value> = [
        ("p50", 0.5),
        ("p90", 0.9),
        ("p99", 0.99),
        ("p99.9", 0.999),
        ("p99.99", 0.9999),
    ]
    .into_iter()
    .map(|(name, q)| (name.to_string(), json!(ms(q))))
    .collect();
    Ok(json!({
        "command": "latency",
        "rate_per_s": rate,
        "seconds": seconds,
        "record_bytes": record_bytes,
        "records": n_records,
        "latency_ms": {
            "percentiles": percentiles,
            "mean": histogram.mean() / 1000.0,
            "max": histogram.max() as f64 / 1000.0,
        },
        "sender_behind_schedule_max_ms": behind_max.as_secs_f64() * 1000.0,
        "sender_send_max_ms": send_max.as_secs_f64() * 1000.0,
        "method": "from each record's intended send time (no coordinated omission)",
    }))
}
