//! `strand-broker`: opens the data directory (recovering every partition log), serves its
//! listeners, runs retention, and on SIGINT or SIGTERM closes every log cleanly and exits 0.

use std::process::ExitCode;

use clap::Parser;
use strand_broker::config::{BrokerArgs, BrokerConfig};
use strand_broker::run::RunningBroker;

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
    let running = RunningBroker::start(config).await?;
    shutdown_signal().await;
    running.stop().await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
