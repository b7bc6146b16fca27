//! `strand-bench saga`: a 3-step saga whose participants are broker commands, the journal
//! durable (acks=durable, fsynced), everything in this process: a broker, the orchestrator,
//! one participant serving the three command topics, and a consumer of the outcome topic.
//! Sagas are started through the orchestrator's API (`Handle::start`, what the HTTP handler
//! calls) with at most `concurrency` unfinished at once; a saga's latency runs from its start
//! request to its outcome record arriving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;
use strand_broker::config::BrokerConfig;
use strand_broker::log::FsyncPolicy;
use strand_broker::run::RunningBroker;
use strand_client::{Client, ClientConfig, Consumer, ConsumerConfig, StartFrom};
use strand_cluster::{Cluster, ClusterConfig};
use strand_saga::api::{ApiError, StartRequest};
use strand_saga::definition::DefinitionSpec;
use strand_saga::journal::Journal;
use strand_saga::orchestrator::{self, OrchestratorConfig};
use strand_saga::ownership;
use strand_saga::participants::serve_commands;
use tokio::sync::{watch, Semaphore};

use crate::chart::{self, LatencyTimeline, Series, Timeline};
use crate::report::{self, say};

fn definition() -> anyhow::Result<DefinitionSpec> {
    let command = |step: &str, op: &str| {
        json!({
            "type": "broker",
            "topic": format!("bench-{step}"),
            "reply_topic": "bench-replies",
            "body": {"op": op, "order": "{{ input.order }}"}
        })
    };
    let steps: Vec<serde_json::Value> = ["order", "charge", "reserve"]
        .iter()
        .map(|s| json!({"name": s, "action": command(s, "do"), "compensation": command(s, "undo")}))
        .collect();
    Ok(serde_json::from_value(
        json!({"steps": steps, "outcome_topic": "bench-outcomes"}),
    )?)
}

/// Sagas run (and awaited) before measuring.
const WARM_UP: u64 = 200;

/// `kafka`: the orchestrator keeps its journal and topics on the broker's Kafka listener through
/// librdkafka (as on a Kafka cluster) instead of the native protocol.
pub async fn run(
    n_sagas: u64,
    concurrency: usize,
    kafka: bool,
    chart_out: Option<&std::path::Path>,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::Builder::new()
        .prefix(".strand-bench-")
        .tempdir_in(std::env::current_dir()?)
        .context("creating the data folder")?;
    let mut config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse()?,
        kafka_listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        ..BrokerConfig::default()
    };
    config.log.fsync = FsyncPolicy::IntervalMs(1000);
    let broker = RunningBroker::start(config).await?;
    let addr = broker.native_addr.to_string();
    let client = Client::connect(addr.clone(), ClientConfig::default()).await?;
    let cluster = if kafka {
        let config = ClusterConfig::Kafka {
            bootstrap: broker.kafka_addr.to_string(),
            properties: Default::default(),
        };
        Cluster::connect("kafka", &config).await?
    } else {
        Cluster::strand("strand", client)
    };
    let cluster = Arc::new(cluster);
    let journal = Journal::open(cluster.clone(), 8).await?;
    let (stop, stopped) = watch::channel(false);
    let ownership = match cluster.kafka_config() {
        Some(config) => {
            let session = Duration::from_secs(10);
            ownership::kafka(
                config,
                "strand-bench-saga",
                "bench",
                session,
                stopped.clone(),
            )?
            .0
        }
        None => ownership::all(journal.partitions()),
    };
    let (handle, orchestrator) = orchestrator::start(
        journal,
        OrchestratorConfig::default(),
        ownership,
        stopped.clone(),
    )
    .await?;
    // On Kafka the journal's partitions arrive through the group.
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.ownership().1.len() < 8 {
        anyhow::ensure!(Instant::now() < deadline, "no journal partitions assigned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle
        .put_definition("bench".into(), definition()?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let participant = tokio::spawn(serve_commands(
        cluster.clone(),
        "bench-participants".into(),
        vec![
            "bench-order".into(),
            "bench-charge".into(),
            "bench-reserve".into(),
        ],
        |c| Ok(json!({"step": c.step})),
        stopped.clone(),
    ));

    let setting_up = report::spinner("warm-up");
    let started_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // The measured run's start: the clock of the charts' time axis, set after the warm-up.
    let (begin_tx, begin_rx) = tokio::sync::oneshot::channel::<Instant>();
    let progress = report::bar(n_sagas, "sagas");
    let permits = Arc::new(Semaphore::new(concurrency));
    let outcomes = {
        let started_at = started_at.clone();
        let permits = permits.clone();
        let client = Client::connect(addr.clone(), ClientConfig::default()).await?;
        let progress = progress.clone();
        tokio::spawn(async move {
            let config = ConsumerConfig {
                start: StartFrom::Latest,
                fetch_wait: Duration::from_millis(20),
                ..ConsumerConfig::default()
            };
            let mut consumer = Consumer::new(client, "bench-outcomes", None, config).await?;
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut n = 0u64;
            let begin = begin_rx.await?;
            let mut completed = Timeline::new(begin);
            let mut latencies = LatencyTimeline::new(begin);
            while n < n_sagas {
                let record = consumer.next().await?;
                let outcome: serde_json::Value =
                    serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
                let key = outcome["idempotency_key"].as_str().unwrap_or_default();
                if let Some(t) = started_at.lock().expect("lock").remove(key) {
                    let now = Instant::now();
                    let micros = now.duration_since(t).as_micros().max(1) as u64;
                    histogram.record(micros)?;
                    completed.add(now, 1);
                    latencies.record(now, micros)?;
                    n += 1;
                    permits.add_permits(1);
                    if n % 100 == 0 {
                        progress.set_position(n);
                    }
                }
            }
            progress.finish();
            anyhow::Ok((histogram, Instant::now(), completed, latencies))
        })
    };
    // Warm up (consumer groups joined, connections open): sagas that are not measured.
    let warm_up: Vec<_> = (0..WARM_UP)
        .map(|i| {
            let handle = handle.clone();
            tokio::spawn(async move {
                let request = StartRequest {
                    definition: "bench".into(),
                    version: None,
                    input: json!({"order": -(i as i64)}),
                    idempotency_key: None,
                };
                handle.start(request).await
            })
        })
        .collect();
    for w in warm_up {
        let (saga, _) = w.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !handle
            .get(saga.id.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .state
            .is_finished()
        {
            anyhow::ensure!(Instant::now() < deadline, "warm-up saga did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    setting_up.finish_and_clear();
    let counted = counters(&broker.broker.metrics.render());
    let orchestrator_counted = counters(&handle.render_metrics());
    let begin = Instant::now();
    let _ = begin_tx.send(begin);
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..n_sagas {
        permits.acquire().await?.forget();
        let handle = handle.clone();
        let started_at = started_at.clone();
        starts.spawn(async move {
            let key = format!("bench-{i}");
            started_at
                .lock()
                .expect("lock")
                .insert(key.clone(), Instant::now());
            let request = StartRequest {
                definition: "bench".into(),
                version: None,
                input: json!({"order": i}),
                idempotency_key: Some(key),
            };
            // On Kafka a rebalance of the journal group briefly leaves no partition here.
            loop {
                match handle.start(request.clone()).await {
                    Ok(_) => return anyhow::Ok(()),
                    Err(ApiError::Unavailable(_) | ApiError::Elsewhere { .. }) => {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    Err(e) => anyhow::bail!("{e}"),
                }
            }
        });
        while let Some(done) = starts.try_join_next() {
            done??;
        }
    }
    while let Some(done) = starts.join_next().await {
        done??;
    }
    let (histogram, end, completed, latencies) =
        tokio::time::timeout(Duration::from_secs(300), outcomes)
            .await
            .context("outcomes did not all arrive in 300 s")???;
    let secs = (end - begin).as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    say!(
        "saga: {n_sagas} sagas of 3 broker steps, {concurrency} at once, journal durable on {}: {:.0} sagas/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        if kafka { "the Kafka listener (librdkafka)" } else { "the native protocol" },
        n_sagas as f64 / secs,
        ms(0.5),
        ms(0.99),
        histogram.max() as f64 / 1000.0
    );
    // Where the work went, per saga (on stderr: the result line stays as it is).
    let counted_now = counters(&broker.broker.metrics.render());
    let per_saga = |name: &str| {
        let at = |c: &HashMap<String, f64>| c.get(name).copied().unwrap_or(0.0);
        (at(&counted_now) - at(&counted)) / n_sagas as f64
    };
    let (journal_records, produces, fetches, fsyncs) = (
        per_saga("strand_records_in_total{topic=\"__saga_journal\"}"),
        per_saga("strand_request_duration_seconds_count{request=\"produce\"}"),
        per_saga("strand_request_duration_seconds_count{request=\"fetch\"}"),
        per_saga("strand_fsync_duration_seconds_count"),
    );
    eprintln!(
        "saga counts per saga: {journal_records:.2} journal records, {produces:.2} produce requests, {fetches:.2} fetch requests, {fsyncs:.2} fsyncs",
    );
    // Where a saga's time went, as means over the measured run: a journal batch's wait until
    // durable, an attempt from its dispatch (before its entry is durable) to its answer, and
    // the broker's fsyncs and produce requests.
    let orchestrator_now = counters(&handle.render_metrics());
    let mean_ms =
        |after: &HashMap<String, f64>, before: &HashMap<String, f64>, name: &str, label: &str| {
            let total = |suffix: &str| -> f64 {
                after
                    .iter()
                    .filter(|(k, _)| k.starts_with(&format!("{name}{suffix}")) && k.contains(label))
                    .map(|(k, v)| v - before.get(k).copied().unwrap_or(0.0))
                    .sum()
            };
            let n = total("_count");
            if n > 0.0 {
                total("_sum") / n * 1000.0
            } else {
                f64::NAN
            }
        };
    eprintln!(
        "saga time means: saga {:.1} ms, journal batch durable {:.2} ms, step attempt {:.2} ms; broker fsync {:.2} ms, produce request {:.2} ms",
        mean_ms(&orchestrator_now, &orchestrator_counted, "strand_saga_duration_seconds", ""),
        mean_ms(&orchestrator_now, &orchestrator_counted, "strand_saga_journal_append_duration_seconds", ""),
        mean_ms(&orchestrator_now, &orchestrator_counted, "strand_saga_step_duration_seconds", ""),
        mean_ms(&counted_now, &counted, "strand_fsync_duration_seconds", ""),
        mean_ms(&counted_now, &counted, "strand_request_duration_seconds", "request=\"produce\""),
    );
    let _ = stop.send(true);
    let _ = orchestrator.await;
    let _ = participant.await;
    broker.stop().await?;
    if let Some(path) = chart_out {
        let title = format!(
            "strand-bench saga: {n_sagas} sagas of 3 broker steps, {concurrency} at once, journal durable"
        );
        let latency = |name: &str, q: f64| Series {
            name: name.into(),
            points: latencies.quantile_ms(q),
        };
        chart::over_time(
            path,
            &title,
            "sagas/s",
            &[Series {
                name: "completed".into(),
                points: completed.per_second(),
            }],
            &[latency("p50", 0.5), latency("p99", 0.99)],
        )?;
    }
    Ok(json!({
        "command": "saga",
        "sagas": n_sagas,
        "concurrency": concurrency,
        "journal": if kafka { "kafka" } else { "native" },
        "seconds": secs,
        "sagas_per_s": n_sagas as f64 / secs,
        "latency_ms": {
            "p50": ms(0.5),
            "p99": ms(0.99),
            "p99.9": ms(0.999),
            "max": histogram.max() as f64 / 1000.0,
        },
        "per_saga": {
            "journal_records": journal_records,
            "produce_requests": produces,
            "fetch_requests": fetches,
            "fsyncs": fsyncs,
        },
    }))
}

/// The counters and histogram counts of a broker's metrics text, by name with labels.
fn counters(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}
