//! Transactional produce next to idempotent produce, both through librdkafka on the Kafka
//! listener of one broker: the same records, acks=all, one producer; the transactional run
//! commits a transaction every `records_per_txn` records.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

const TIMEOUT: Duration = Duration::from_secs(60);

/// librdkafka's log on stderr, each line with the milliseconds since the producer was made:
/// what `STRAND_BENCH_RDKAFKA_DEBUG` (librdkafka's `debug` contexts, `eos,protocol` say) asks.
struct Timestamped(Instant);

impl ClientContext for Timestamped {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        eprintln!(
            "{:10.3} ms {fac} {log_message}",
            self.0.elapsed().as_secs_f64() * 1e3
        );
    }
}

impl ProducerContext for Timestamped {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Produces `n_records` values of `record_bytes` to `topic` (partition `(i / 1000) %
/// partitions`); with `records_per_txn`, in transactions of that many records. Returns
/// records per second, from the first send to the last acknowledgement (or commit).
pub fn produce(
    bootstrap: &str,
    topic: &str,
    n_records: u64,
    record_bytes: usize,
    partitions: u32,
    records_per_txn: Option<u64>,
    progress: &ProgressBar,
) -> anyhow::Result<f64> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    if records_per_txn.is_some() {
        config.set("transactional.id", format!("strand-bench-{topic}"));
    }
    if let Ok(contexts) = std::env::var("STRAND_BENCH_RDKAFKA_DEBUG") {
        config.set("debug", contexts);
        config.set_log_level(RDKafkaLogLevel::Debug);
    }
    let producer: BaseProducer<Timestamped> = config
        .create_with_context(Timestamped(Instant::now()))
        .context("creating the producer")?;
    if records_per_txn.is_some() {
        producer.init_transactions(TIMEOUT)?;
    }
    let value = vec![b'x'; record_bytes];
    let started = Instant::now();
    let mut in_txn = 0u64;
    // Time spent in commit_transaction (librdkafka's flush of the transaction's records, then
    // EndTxn), and how many commits.
    let (mut committing, mut commits) = (Duration::ZERO, 0u32);
    for i in 0..n_records {
        if let (Some(_), 0) = (records_per_txn, in_txn) {
            producer.begin_transaction()?;
        }
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
            progress.set_position(i);
        }
        in_txn += 1;
        if records_per_txn.is_some_and(|n| in_txn >= n) {
            let commit_started = Instant::now();
            super::kafka::flush_promptly(&producer, TIMEOUT)?;
            producer.commit_transaction(TIMEOUT)?;
            committing += commit_started.elapsed();
            commits += 1;
            in_txn = 0;
        }
    }
    if records_per_txn.is_some() && in_txn > 0 {
        let commit_started = Instant::now();
        super::kafka::flush_promptly(&producer, TIMEOUT)?;
        producer.commit_transaction(TIMEOUT)?;
        committing += commit_started.elapsed();
        commits += 1;
    }
    super::kafka::flush_promptly(&producer, TIMEOUT)?;
    progress.set_position(n_records);
    let elapsed = started.elapsed();
    if commits > 0 {
        super::report::say!(
            "{commits} transactions, {:.2} ms each, of which {:.2} ms waiting for acknowledgements and the commit",
            elapsed.as_secs_f64() * 1e3 / f64::from(commits),
            committing.as_secs_f64() * 1e3 / f64::from(commits)
        );
    }
    Ok(n_records as f64 / elapsed.as_secs_f64())
}
