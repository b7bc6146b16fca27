//! `strand-saga`: the saga orchestrator's HTTP API over a durable journal. Without `--broker`
//! it embeds a Strand broker (listening on its usual ports, so participants and Kafka clients
//! can connect): one command runs everything.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strand_broker::config::{BrokerArgs, BrokerConfig};
use strand_broker::run::RunningBroker;
use strand_client::{Client, ClientConfig};
use strand_saga::breaker::BreakerConfig;
use strand_saga::http::{self, HttpConfig};
use strand_saga::journal::Journal;
use strand_saga::orchestrator::{self, OrchestratorConfig};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(name = "strand-saga", version, about = "Strand saga orchestrator")]
struct Args {
    /// A Strand broker's native address to keep the journal on; without it a broker runs
    /// embedded, configured by the broker flags below.
    #[arg(long, env = "STRAND_SAGA_BROKER", value_name = "HOST:PORT")]
    broker: Option<String>,
    /// The orchestrator's HTTP API [default: 127.0.0.1:7190]
    #[arg(
        long,
        env = "STRAND_SAGA_API_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:7190"
    )]
    api_listen: SocketAddr,
    /// Journal partitions (sagas are spread over them by id) [default: 8]
    #[arg(long, env = "STRAND_SAGA_JOURNAL_PARTITIONS", default_value_t = 8)]
    journal_partitions: u32,
    /// How often changed sagas are snapshotted, in ms [default: 30000]
    #[arg(
        long,
        env = "STRAND_SAGA_SNAPSHOT_INTERVAL_MS",
        default_value_t = 30_000
    )]
    snapshot_interval_ms: u64,
    /// Consecutive failures that open a participant endpoint's circuit breaker [default: 5]
    #[arg(long, env = "STRAND_SAGA_BREAKER_FAILURES", default_value_t = 5)]
    breaker_failures: u32,
    /// How long an open breaker waits before a trial call, in ms [default: 5000]
    #[arg(long, env = "STRAND_SAGA_BREAKER_OPEN_MS", default_value_t = 5_000)]
    breaker_open_ms: u64,
    /// Finished sagas kept in memory for the API; older ones only in snapshots [default: 100000]
    #[arg(long, env = "STRAND_SAGA_FINISHED_MAX", default_value_t = 100_000)]
    finished_sagas_max: usize,
    /// Largest request body, in bytes [default: 1048576]
    #[arg(long, env = "STRAND_SAGA_BODY_BYTES_MAX", default_value_t = 1 << 20)]
    body_bytes_max: usize,
    #[command(flatten)]
    embedded: BrokerArgs,
}

fn main() -> ExitCode {
    strand_broker::run::init_tracing();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("strand-saga: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strand-saga: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let embedded = match &args.broker {
        Some(_) => None,
        None => {
            let config = BrokerConfig::load(&args.embedded).context("broker settings")?;
            Some(RunningBroker::start(config).await?)
        }
    };
    let broker_addr = match (&args.broker, &embedded) {
        (Some(addr), _) => addr.clone(),
        (None, Some(b)) => b.native_addr.to_string(),
        (None, None) => unreachable!("one of them is set"),
    };
    let client = Client::connect(broker_addr.clone(), ClientConfig::default())
        .await
        .with_context(|| format!("connecting to the broker at {broker_addr}"))?;
    let journal = Journal::open(client, args.journal_partitions)
        .await
        .context("opening the journal")?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let config = OrchestratorConfig {
        journal_partitions: args.journal_partitions,
        snapshot_interval: Duration::from_millis(args.snapshot_interval_ms.max(100)),
        breaker: BreakerConfig {
            failures_to_open: args.breaker_failures.max(1),
            open_ms: args.breaker_open_ms,
        },
        finished_in_memory_max: args.finished_sagas_max,
        ..OrchestratorConfig::default()
    };
    let (handle, mut orchestrator) = orchestrator::start(journal, config, shutdown_rx.clone())
        .await
        .context("recovering the orchestrator")?;
    let listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("binding the API listener on {}", args.api_listen))?;
    let api_addr = listener.local_addr()?;
    let http_config = HttpConfig {
        body_bytes_max: args.body_bytes_max,
        ..HttpConfig::default()
    };
    let app = http::router(handle, &http_config);
    let mut http_shutdown = shutdown_rx.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { strand_saga::stopped(&mut http_shutdown).await })
            .await
    });
    // One line with every address, before serving: tests and scripts wait for it.
    tracing::info!(
        api = %api_addr,
        broker = %broker_addr,
        kafka = %embedded.as_ref().map(|b| b.kafka_addr.to_string()).unwrap_or_default(),
        "strand-saga listening"
    );
    let failure = tokio::select! {
        () = strand_broker::run::shutdown_signal() => None,
        result = &mut orchestrator => Some(result),
    };
    let _ = shutdown_tx.send(true);
    let orchestrator_result = match failure {
        Some(result) => result,
        None => orchestrator.await,
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), http_task).await;
    if let Some(broker) = embedded {
        broker.stop().await?;
    }
    orchestrator_result
        .context("orchestrator task")?
        .context("the journal failed")?;
    tracing::info!("strand-saga stopped cleanly");
    Ok(())
}
