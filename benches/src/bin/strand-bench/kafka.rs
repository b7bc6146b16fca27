//! librdkafka (the `rdkafka` crate's bundled build) against Strand's Kafka listener: the same
//! produce-then-consume run as the native throughput test, on the same broker in the same
//! process run, so the two paths are compared on equal terms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use bytes::{Buf, BytesMut};
use indicatif::ProgressBar;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use strand_client::batch::Batches;
use strand_client::native::{Request, ResponseBody};
use strand_client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Rates;

/// Bytes asked per partition and fetch, on both protocols (librdkafka's default).
const PARTITION_FETCH_BYTES: i32 = 1 << 20;

/// Reads `n_records` from every partition of `topic` through the Kafka listener with raw Fetch
/// requests (kafka-protocol's codec), counting records from the batch headers: the broker's
/// Kafka consume path without a client's per-record work. Returns records per second.
pub async fn raw_kafka_consume(
    bootstrap: &str,
    topic: &str,
    partitions: u32,
    n_records: u64,
    progress: &ProgressBar,
) -> anyhow::Result<f64> {
    let mut socket = tokio::net::TcpStream::connect(bootstrap).await?;
    socket.set_nodelay(true)?;
    let mut offsets = vec![0i64; partitions as usize];
    let mut consumed = 0u64;
    let started = Instant::now();
    let version = 12;
    let mut correlation_id = 0;
    while consumed < n_records {
        correlation_id += 1;
        let request = FetchRequest::default()
            .with_max_wait_ms(10)
            .with_min_bytes(1)
            .with_max_bytes(50 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(
                    offsets
                        .iter()
                        .enumerate()
                        .map(|(p, &offset)| {
                            FetchPartition::default()
                                .with_partition(p as i32)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(PARTITION_FETCH_BYTES)
                        })
                        .collect(),
                )]);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .encode(&mut buf, ApiKey::Fetch.request_header_version(version))?;
        request.encode(&mut buf, version)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        socket.write_all(&buf).await?;
        let len = socket.read_i32().await? as usize;
        let mut body = BytesMut::zeroed(len);
        socket.read_exact(&mut body).await?;
        let mut body = body.freeze();
        ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(version))?;
        let response = FetchResponse::decode(&mut body, version)?;
        anyhow::ensure!(!body.has_remaining(), "fetch response not fully decoded");
        for t in &response.responses {
            for p in &t.partitions {
                anyhow::ensure!(p.error_code == 0, "fetch error {}", p.error_code);
                let records = p.records.as_deref().unwrap_or_default();
                for (header, _) in Batches::new(records) {
                    consumed += header.record_count as u64;
                    offsets[p.partition_index as usize] = header.last_offset() + 1;
                }
            }
        }
        progress.set_position(consumed);
    }
    Ok(n_records as f64 / started.elapsed().as_secs_f64())
}

/// The same over the native protocol: one Fetch per partition, all in flight together, records
/// counted from the batch headers.
pub async fn raw_native_consume(
    client: &Client,
    topic: &str,
    partitions: u32,
    n_records: u64,
    progress: &ProgressBar,
) -> anyhow::Result<f64> {
    let mut offsets = vec![0u64; partitions as usize];
    let mut consumed = 0u64;
    let started = Instant::now();
    while consumed < n_records {
        let fetches = offsets.iter().enumerate().map(|(p, &offset)| {
            client.request(Request::Fetch {
                topic: topic.to_string(),
                partition: p as u32,
                offset,
                max_bytes: PARTITION_FETCH_BYTES as u32,
                max_wait_ms: 10,
            })
        });
        let answers = futures::future::join_all(fetches).await;
        for (p, answer) in answers.into_iter().enumerate() {
            let ResponseBody::Fetched { records, .. } = answer? else {
                anyhow::bail!("unexpected answer to a fetch");
            };
            for (header, _) in Batches::new(&records) {
                consumed += header.record_count as u64;
                offsets[p] = header.last_offset() as u64 + 1;
            }
        }
        progress.set_position(consumed);
    }
    Ok(n_records as f64 / started.elapsed().as_secs_f64())
}

/// Counts delivery reports, keeping the first error.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("lock");
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Waits until everything `producer` sent is acknowledged (and its delivery reports served),
/// polling 1 ms at a time. The `rdkafka` crate's own `flush` polls 100 ms at a time, and its
/// `BaseProducer::poll` returns only at its deadline, not at the first event: a flush with
/// anything outstanding costs up to 100 ms more than the acknowledgements take. So does
/// `commit_transaction`, which begins with that flush.
pub fn flush_promptly<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "librdkafka: {} messages not acknowledged in {timeout:?}",
            producer.in_flight_count()
        );
        producer.poll(Duration::from_millis(1));
    }
    // Nothing is outstanding: this returns at once.
    producer.flush(timeout).context("librdkafka flush")
}

/// librdkafka's acks for Strand's: leader is 1, durable is all (fsync before the answer).
fn kafka_acks(acks: &str) -> anyhow::Result<&'static str> {
    Ok(match acks {
        "none" => "0",
        "leader" => "1",
        "durable" => "all",
        other => anyhow::bail!("--acks must be none, leader or durable, got {other}"),
    })
}

/// Produces `n_records` values of `record_bytes` to `topic` (partition `(i / 1000) %
/// partitions`, as the native run), then reads them all back by assigned partitions.
/// `properties` go to both clients (TLS settings, say), `consumer_properties` to the consumer
/// only, after the bench's own.
#[allow(clippy::too_many_arguments)]
pub fn throughput(
    bootstrap: &str,
    properties: &[(String, String)],
    consumer_properties: &[(String, String)],
    topic: &str,
    n_records: u64,
    record_bytes: usize,
    partitions: u32,
    acks: &str,
    linger_ms: u64,
) -> anyhow::Result<Rates> {
    let with = |mut config: ClientConfig| {
        for (k, v) in properties {
            config.set(k, v);
        }
        config
    };
    let producer: BaseProducer<Deliveries> = with(ClientConfig::new())
        .set("bootstrap.servers", bootstrap)
        .set("acks", kafka_acks(acks)?)
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(Deliveries::default())
        .context("creating the librdkafka producer")?;
    let value = vec![b'x'; record_bytes];
    let progress = crate::report::bar(n_records, "produce");
    let started = Instant::now();
    for i in 0..n_records {
        let partition = ((i / 1000) % u64::from(partitions)) as i32;
        let mut record: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic)
            .payload(&value[..])
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(1));
                    record = back;
                }
                Err((e, _)) => return Err(e).context("librdkafka send"),
            }
        }
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
            progress.set_position(producer.context().ok.load(Ordering::Relaxed));
        }
    }
    flush_promptly(&producer, Duration::from_secs(120))?;
    let produce_time = started.elapsed();
    progress.set_position(producer.context().ok.load(Ordering::Relaxed));
    progress.finish();
    let context = producer.context();
    let (ok, failed) = (
        context.ok.load(Ordering::Relaxed),
        context.failed.load(Ordering::Relaxed),
    );
    if ok != n_records || failed != 0 {
        anyhow::bail!(
            "librdkafka delivered {ok} of {n_records}, {failed} failed (first: {:?})",
            context.first_error.lock().expect("lock")
        );
    }
    drop(producer);

    let mut consumer_config = with(ClientConfig::new());
    consumer_config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strand-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10");
    for (k, v) in consumer_properties {
        consumer_config.set(k, v);
    }
    let consumer: BaseConsumer = consumer_config
        .create()
        .context("creating the librdkafka consumer")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p as i32, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let progress = crate::report::bar(n_records, "consume");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    // The rate is timed from the first record: partitions assigned before librdkafka has
    // their leader wait out its offset-query retry (500 ms) before the first ListOffsets, a
    // fixed start-up cost of the client against any broker that would otherwise be most of a
    // run of 300,000 records. It is printed apart.
    let mut first: Option<Instant> = None;
    let mut consumed = 0u64;
    while consumed < n_records {
        anyhow::ensure!(
            Instant::now() < deadline,
            "librdkafka consumed {consumed} of {n_records} in 300 s"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.context("librdkafka consume")?;
            first.get_or_insert_with(Instant::now);
            consumed += 1;
            if consumed % 10_000 == 0 {
                progress.set_position(consumed);
            }
        }
    }
    progress.finish();
    let first = first.unwrap_or(started);
    crate::report::say!(
        "librdkafka consumer: first record {:.0} ms after assign, the rest timed from it",
        first.duration_since(started).as_secs_f64() * 1e3
    );
    Ok(Rates {
        produce: n_records as f64 / produce_time.as_secs_f64(),
        consume: n_records.saturating_sub(1).max(1) as f64
            / first.elapsed().as_secs_f64().max(1e-9),
    })
}

/// `kafka-peer`: creates a topic of `partitions` on the Kafka broker at `bootstrap` (any
/// implementation), runs [`throughput`] on it and prints one `RESULT` line per direction, the
/// format benches/peers/run.sh collects from every peer's runner.
pub async fn peer(
    bootstrap: &str,
    label: &str,
    n_records: u64,
    record_bytes: usize,
    partitions: u32,
    acks: &str,
    linger_ms: u64,
) -> anyhow::Result<serde_json::Value> {
    let topic = format!("peers-{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating the librdkafka admin client")?;
    let new_topic = NewTopic::new(&topic, partitions as i32, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&new_topic], &options).await? {
        result.map_err(|(name, code)| anyhow::anyhow!("creating topic {name}: {code}"))?;
    }
    let acks_label = acks.to_string();
    let (bootstrap, acks, producer_topic) = (bootstrap.to_string(), acks.to_string(), topic);
    let rates = tokio::task::spawn_blocking(move || {
        throughput(
            &bootstrap,
            &[],
            &[],
            &producer_topic,
            n_records,
            record_bytes,
            partitions,
            &acks,
            linger_ms,
        )
    })
    .await??;
    for (what, rate) in [("produce", rates.produce), ("consume", rates.consume)] {
        super::report::say!(
            "RESULT {label} {what} {rate:.0} {:.1}",
            rate * record_bytes as f64 / 1e6
        );
    }
    Ok(serde_json::json!({
        "command": "kafka-peer",
        "label": label,
        "records": n_records,
        "record_bytes": record_bytes,
        "partitions": partitions,
        "acks": acks_label,
        "linger_ms": linger_ms,
        "librdkafka": rates.json(record_bytes),
    }))
}
