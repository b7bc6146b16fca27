//! `strand-bridge --config bridge.toml`: mirrors topics between Strand brokers and Kafka-protocol
//! clusters (see `strand_cluster::bridge`). A bad config or a cluster that does not answer at
//! start is a clear error and a non-zero exit; a cluster that goes away later is retried with
//! backoff. `/health` (JSON, per-route counters) and `/metrics` (Prometheus text) on
//! `--http-listen`.

/// mimalloc without transparent huge pages (see `strand_broker::alloc`).
#[global_allocator]
static ALLOCATOR: strand_broker::alloc::MiMalloc = strand_broker::alloc::MiMalloc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use strand_broker::security::tls::{ClientAuth, ServerTls, TlsConfig};
use strand_cluster::bridge::{self, config::BridgeConfig, RouteStats};
use tokio::sync::watch;

/// A TLS handshake on the HTTPS port must finish within this.
const HTTPS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "strand-bridge",
    version,
    about = "Mirror topics between Strand and Kafka clusters"
)]
struct Args {
    /// The bridge's TOML file (clusters and routes).
    #[arg(long, env = "STRAND_BRIDGE_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// /health and /metrics [default: the file's http_listen, else 127.0.0.1:7185]
    #[arg(long, env = "STRAND_BRIDGE_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Serve /health and /metrics over HTTPS with this PEM certificate (and chain) [default:
    /// the file's http_tls.cert_file, else plain HTTP]
    #[arg(long, env = "STRAND_BRIDGE_HTTP_TLS_CERT_FILE", value_name = "FILE")]
    http_tls_cert_file: Option<PathBuf>,
    /// PEM private key of --http-tls-cert-file
    #[arg(long, env = "STRAND_BRIDGE_HTTP_TLS_KEY_FILE", value_name = "FILE")]
    http_tls_key_file: Option<PathBuf>,
    /// PEM bundle of the CAs HTTPS client certificates must chain to
    #[arg(
        long,
        env = "STRAND_BRIDGE_HTTP_TLS_CLIENT_CA_FILE",
        value_name = "FILE"
    )]
    http_tls_client_ca_file: Option<PathBuf>,
    /// HTTPS client certificates: none, requested or required [default: none]
    #[arg(long, env = "STRAND_BRIDGE_HTTP_TLS_CLIENT_AUTH", value_name = "MODE")]
    http_tls_client_auth: Option<ClientAuth>,
    /// How often source positions are checkpointed, in ms [default: the file's, else 1000]
    #[arg(long, env = "STRAND_BRIDGE_CHECKPOINT_INTERVAL_MS")]
    checkpoint_interval_ms: Option<u64>,
    /// Log lines as `text` or `json` (one object per line, with trace ids) [default: text]
    #[arg(
        long,
        env = "STRAND_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: strand_broker::telemetry::LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _telemetry = match strand_broker::telemetry::init("strand-bridge", args.log_format) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("strand-bridge: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut config = match BridgeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strand-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(a) = args.http_listen {
        config.http_listen = a;
    }
    // Flags replace the file's [http_tls] as a whole, so that the two never mix.
    match TlsConfig::from_flags(
        args.http_tls_cert_file.clone(),
        args.http_tls_key_file.clone(),
        args.http_tls_client_ca_file.clone(),
        args.http_tls_client_auth,
    ) {
        Ok(Some(tls)) => config.http_tls = Some(tls),
        Ok(None) => {}
        Err(e) => {
            eprintln!("strand-bridge: HTTPS: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(ms) = args.checkpoint_interval_ms {
        config.checkpoint_interval_ms = ms.max(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strand-bridge: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: BridgeConfig) -> anyhow::Result<()> {
    let shutdown = strand_broker::run::shutdown_signal();
    let stats: BTreeMap<String, Arc<RouteStats>> = config
        .routes()
        .iter()
        .map(|r| (r.id(), Arc::default()))
        .collect();
    let (stop, stopped) = watch::channel(false);
    let tls = match &config.http_tls {
        Some(tls) => Some(
            ServerTls::with_alpn(tls.clone(), vec![b"http/1.1".to_vec()])
                .context("loading the HTTPS certificate")?,
        ),
        None => None,
    };
    if let Some(tls) = &tls {
        strand_broker::run::spawn_tls_reload_on_sighup(tls.clone(), stopped.clone())?;
    }
    let listener = tokio::net::TcpListener::bind(config.http_listen).await?;
    let http_addr = listener.local_addr()?;
    let health_stats = stats.clone();
    let registry = Arc::new(bridge::metrics::registry(stats.clone()));
    let app = Router::new()
        .route(
            "/health",
            get(move || {
                let stats = health_stats.clone();
                async move {
                    let routes: BTreeMap<&String, serde_json::Value> = stats
                        .iter()
                        .map(|(route, s)| (route, serde_json::to_value(&**s).unwrap_or_default()))
                        .collect();
                    Json(serde_json::json!({"status": "ok", "routes": routes}))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            strand_broker::metrics::OPENMETRICS_CONTENT_TYPE,
                        )],
                        bridge::metrics::render(&registry),
                    )
                }
            }),
        );
    let mut http_stop = stopped.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(strand_broker::listener::serve_http(
        listener,
        tls,
        HTTPS_HANDSHAKE_TIMEOUT,
        app,
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    ));
    let routes: Vec<String> = config.routes().iter().map(|r| r.id()).collect();
    let mut bridge = tokio::spawn(bridge::run(config, stats, stopped));
    tracing::info!(http = %http_addr, scheme, ?routes, "strand-bridge running");
    tokio::select! {
        () = shutdown => {}
        result = &mut bridge => {
            // It returns early only when a cluster could not be reached at start.
            result??;
            return Ok(());
        }
    }
    let _ = stop.send(true);
    bridge.await??;
    tracing::info!("strand-bridge stopped; positions checkpointed");
    Ok(())
}
