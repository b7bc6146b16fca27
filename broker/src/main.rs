//! `strand-broker`: opens the data directory (recovering every partition log), serves its
//! listeners, runs retention, and on SIGINT or SIGTERM closes every log cleanly and exits 0.
//! `strand-broker user add|delete|list` edits the SCRAM users of a stopped broker's data
//! directory instead, so that the first user exists before anyone can log in.

use std::process::ExitCode;

use clap::Parser;
use strand_broker::config::{BrokerArgs, BrokerCommand, BrokerConfig, UserCommand};
use strand_broker::run::RunningBroker;

fn main() -> ExitCode {
    strand_broker::run::init_tracing();
    let args = BrokerArgs::parse();
    let config = match BrokerConfig::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("strand-broker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(BrokerCommand::User(command)) = args.command {
        return match user_command(&config, command) {
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
    let running = RunningBroker::start(config).await?;
    strand_broker::run::shutdown_signal().await;
    running.stop().await
}

/// `strand-broker user ...`: edits `<data_dir>/security/users.json` while no broker runs on it
/// (the store's lock refuses otherwise).
fn user_command(config: &BrokerConfig, command: UserCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    use strand_broker::security::users::Users;
    use strand_client::scram::ScramMechanism;
    let users = Users::open(&config.data_dir, config.users_config())
        .with_context(|| format!("opening the users of {}", config.data_dir.display()))?;
    match command {
        UserCommand::Add {
            name,
            password_file,
            mechanism,
            iterations,
        } => {
            let mechanism: ScramMechanism = mechanism.parse().map_err(anyhow::Error::msg)?;
            let password = strand_client::sasl::read_password_file(&password_file)
                .map_err(anyhow::Error::msg)?;
            users.upsert_password(&name, mechanism, &password, iterations)?;
            eprintln!("user {name}: {mechanism} credential stored");
        }
        UserCommand::Delete { name } => {
            users.delete(&name, None)?;
            eprintln!("user {name} deleted");
        }
        UserCommand::List => {
            for user in users.list() {
                let mechanisms: Vec<String> = user
                    .mechanisms
                    .iter()
                    .map(|(m, iterations)| format!("{m} ({iterations} iterations)"))
                    .collect();
                println!("{}\t{}", user.name, mechanisms.join(", "));
            }
        }
    }
    Ok(())
}
