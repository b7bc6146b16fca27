//! `strand-broker`: opens the data directory (recovering every partition log), serves its
//! listeners, runs retention, and on SIGINT or SIGTERM closes every log cleanly and exits 0.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strand_broker::config::{BrokerArgs, BrokerConfig};
use strand_broker::group::CoordinatorConfig;
use strand_broker::http::{self, HttpState};
use strand_broker::metrics::Metrics;
use strand_broker::server::{self, ServerConfig};
use strand_broker::service::Broker;
use strand_broker::topics::{TopicError, Topics};
use tokio::net::TcpListener;
use tokio::sync::watch;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = BrokerArgs::parse();
    let config = match BrokerConfig::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("strand-broker: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("strand-broker: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strand-broker: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: BrokerConfig) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let log_defaults = config.log.clone();
    let (topics, reports) =
        tokio::task::spawn_blocking(move || Topics::open(&data_dir, log_defaults))
            .await?
            .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
    for r in &reports {
        if !r.report.truncations.is_empty() || !r.report.segments_removed.is_empty() {
            tracing::warn!(topic = %r.topic, partition = r.partition, report = ?r.report, "recovery changed a partition log");
        }
    }
    let metrics = Arc::new(Metrics::default());
    {
        let metrics = metrics.clone();
        topics.set_fsync_observer(Arc::new(move |d| metrics.observe_fsync(d)));
    }
    let topics = Arc::new(topics);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let native_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the native listener on {}", config.listen))?;
    let kafka_listener = TcpListener::bind(config.kafka_listen)
        .await
        .with_context(|| format!("binding the Kafka listener on {}", config.kafka_listen))?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", config.http_listen))?;
    let native_addr = native_listener.local_addr()?;
    let kafka_addr = kafka_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    // One line with every bound address, before serving: tests and scripts wait for it.
    tracing::info!(
        native = %native_addr,
        kafka = %kafka_addr,
        http = %http_addr,
        data_dir = %config.data_dir.display(),
        topics = topics.list().len(),
        "strand-broker listening"
    );

    let broker = {
        let topics = topics.clone();
        let metrics = metrics.clone();
        let wait = Duration::from_millis(config.fetch_wait_ms_max);
        tokio::task::spawn_blocking(move || {
            Broker::new(topics, metrics, CoordinatorConfig::default(), wait)
        })
        .await?
        .context("opening the group coordinator")?
    };
    let ticker_task = broker.spawn_group_ticker(shutdown_rx.clone());
    let kafka_task = tokio::spawn(strand_broker::kafka::serve(
        kafka_listener,
        broker.clone(),
        strand_broker::kafka::KafkaConfig {
            connections_max: config.connections_max,
            frame_bytes_max: config.frame_bytes_max,
            advertised: config.kafka_advertised.clone(),
            auto_create_topics: config.auto_create_topics,
            default_partitions: config.default_partitions,
        },
        shutdown_rx.clone(),
    ));
    let server_task = tokio::spawn(server::serve(
        native_listener,
        broker,
        ServerConfig {
            connections_max: config.connections_max,
            in_flight_per_connection_max: config.in_flight_per_connection_max,
            frame_bytes_max: config.frame_bytes_max,
            ..ServerConfig::default()
        },
        shutdown_rx.clone(),
    ));

    let http_task = {
        let app = http::router(HttpState {
            topics: topics.clone(),
            metrics: metrics.clone(),
        });
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            axum::serve(http_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        })
    };
    let retention_task = spawn_periodic(
        "retention",
        config.retention_check_interval_ms,
        topics.clone(),
        shutdown_rx.clone(),
        |topics, now| topics.enforce_retention(now),
        |n| {
            if n > 0 {
                tracing::info!(segments = n, "retention deleted segments");
            }
        },
    );
    let cleaner_task = spawn_periodic(
        "compaction",
        config.cleaner_interval_ms,
        topics.clone(),
        shutdown_rx.clone(),
        |topics, now| topics.clean_compacted(now),
        |report| {
            if report.segments_rewritten > 0 {
                tracing::info!(?report, "compacted");
            }
        },
    );

    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests, then closing logs");
    let _ = shutdown_tx.send(true);
    let grace = Duration::from_millis(config.shutdown_timeout_ms);
    if tokio::time::timeout(grace, server_task).await.is_err() {
        tracing::warn!("connections did not finish within the shutdown timeout");
    }
    if tokio::time::timeout(grace, kafka_task).await.is_err() {
        tracing::warn!("Kafka connections did not finish within the shutdown timeout");
    }
    if tokio::time::timeout(grace, http_task).await.is_err() {
        tracing::warn!("HTTP listener did not stop within the shutdown timeout");
    }
    let _ = retention_task.await;
    let _ = ticker_task.await;
    let _ = cleaner_task.await;
    tokio::task::spawn_blocking(move || topics.close())
        .await?
        .context("closing partition logs")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Runs `job` over every topic every `interval_ms` on the blocking pool until shutdown.
fn spawn_periodic<T: Send + 'static>(
    what: &'static str,
    interval_ms: u64,
    topics: Arc<Topics>,
    mut shutdown: watch::Receiver<bool>,
    job: fn(&Topics, i64) -> Result<T, TopicError>,
    report: fn(T),
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let topics = topics.clone();
            match tokio::task::spawn_blocking(move || job(&topics, strand_broker::log::now_ms()))
                .await
            {
                Ok(Ok(outcome)) => report(outcome),
                Ok(Err(e)) => tracing::error!(error = %e, "{what} failed"),
                Err(e) => tracing::error!(error = %e, "{what} task panicked"),
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
