//! `strand-broker`: opens the data directory (recovering every partition log), serves its
//! listeners, runs retention, and on SIGINT or SIGTERM closes every log cleanly and exits 0.
//! `strand-broker user add|delete|list` edits the SCRAM users of a stopped broker's data
//! directory instead, so that the first user exists before anyone can log in.

/// mimalloc without transparent huge pages (see `strand_broker::alloc`).
#[global_allocator]
static ALLOCATOR: strand_broker::alloc::MiMalloc = strand_broker::alloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;
use strand_broker::config::{BrokerArgs, BrokerCommand, BrokerConfig};
use strand_broker::run::RunningBroker;

fn main() -> ExitCode {
    let args = BrokerArgs::parse();
    let _telemetry = match strand_broker::telemetry::init("strand-broker", args.log_format) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("strand-broker: {e:#}");
            return ExitCode::from(2);
        }
    };
    let config = match BrokerConfig::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("strand-broker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(BrokerCommand::User(command)) = args.command {
        return match strand_broker::run::user_command(&config, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("strand-broker: {e:#}");
                ExitCode::from(1)
            }
        };
    }
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
    let shutdown = strand_broker::run::shutdown_signal();
    let running = RunningBroker::start(config).await?;
    shutdown.await;
    running.stop().await
}
