//! The whole broker as a library: open the data directory, bind and serve every listener, run
//! retention and compaction, and on [`RunningBroker::stop`] drain connections and close every
//! log cleanly. `strand-broker` runs it until a signal; `strand-saga` embeds it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use std::future::IntoFuture;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::budget::Budget;
use crate::config::{BrokerConfig, UserCommand};
use crate::group::CoordinatorConfig;
use crate::http::{self, HttpState};
use crate::listener::{Admission, BoundListener, GuardedListener, ListenerKind};
use crate::metrics::Metrics;
use crate::security::acl::{AclFilter, Authorizer};
use crate::security::jwt::Verifier;
use crate::security::sasl::Authenticator;
use crate::security::tls::ServerTls;
use crate::security::users::Users;
use crate::security::{ListenerSpec, SecurityProtocol};
use crate::server::{self, ServerConfig};
use crate::service::Broker;
use crate::topics::{TopicError, TopicLimits, Topics};

/// Raises this process's soft limit on open files to its hard limit, as a broker holding
/// descriptors for segment files and connections needs (Go's runtime does the same for every
/// program); returns the limit now in force, `None` when unlimited.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return limit.current;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => raised.current,
        Err(_) => limit.current,
    }
}

/// Installs the SIGINT and SIGTERM handlers at once and returns what resolves on either. Call it
/// before anything is bound: a signal that arrives while the process is starting then stops it
/// cleanly once started, instead of killing it half-way (the signals' default action, which
/// is what a handler installed only after the start left in place).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// A started broker: its bound addresses, and what `stop` waits for.
#[derive(Debug)]
pub struct RunningBroker {
    /// The first native listener's address (the first of `native_listeners`, or `listen`).
    pub native_addr: SocketAddr,
    /// The first Kafka listener's address.
    pub kafka_addr: SocketAddr,
    /// The first HTTP listener's address.
    pub http_addr: SocketAddr,
    /// Every bound listener, with the port it got when asked for port 0, in configuration
    /// order: native, then Kafka, then HTTP.
    pub listeners: Vec<(ListenerKind, ListenerSpec)>,
    pub broker: Broker,
    /// The SCRAM users and SASL mechanisms both listeners authenticate against.
    pub authenticator: Arc<Authenticator>,
    config: BrokerConfig,
    topics: Arc<Topics>,
    shutdown: watch::Sender<bool>,
    server_task: JoinHandle<()>,
    kafka_task: JoinHandle<()>,
    http_task: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningBroker {
    /// Opens the data directory (recovering every log), binds the listeners and serves. Logs
    /// one line with every bound address ("strand-broker listening"), which tests wait for.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<RunningBroker> {
        let open_files_max = raise_open_files_limit();
        tracing::info!(
            open_files_max = open_files_max.map_or("unlimited".into(), |n| n.to_string()),
            "open files limit"
        );
        // Before any log is opened, so that opening them stays under the bound.
        crate::log::set_open_sealed_segments_max(config.open_sealed_segments_max);
        let data_dir = config.data_dir.clone();
        let log_defaults = config.log.clone();
        let limits = TopicLimits {
            topics_max: config.topics_max,
            partitions_per_topic_max: config.partitions_per_topic_max,
            partitions_max: config.partitions_max,
        };
        let (topics, reports) = tokio::task::spawn_blocking(move || {
            Topics::open_with_limits(&data_dir, log_defaults, limits)
        })
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
        let users = {
            let data_dir = config.data_dir.clone();
            let users_config = config.users_config();
            tokio::task::spawn_blocking(move || Users::open(&data_dir, users_config))
                .await?
                .context("opening the SCRAM user store")?
        };
        let authenticator = Arc::new(Authenticator {
            users: Arc::new(users),
            mechanisms: config.sasl_mechanisms()?,
            failure_delay: Duration::from_millis(config.sasl_failure_delay_ms),
            metrics: metrics.clone(),
        });

        // Keys before any listener: a key file that cannot be read stops the start.
        let http_auth = match &config.http_jwt {
            Some(jwt) => {
                let verifier = Verifier::load(jwt.clone()).context("loading the HTTP JWT keys")?;
                tracing::info!(keys = verifier.keys_loaded(), issuer = %jwt.issuer, "HTTP bearer tokens required");
                Some(Arc::new(verifier))
            }
            None => None,
        };
        // One TLS material for every TLS listener, checked before anything binds.
        let tls = if config.uses_tls() {
            Some(ServerTls::new(config.tls.clone()).context("loading the TLS certificate")?)
        } else {
            None
        };
        let mut listeners = Vec::new();
        let bound = |kind| {
            let specs = config.listeners(kind);
            let tls = tls.clone();
            async move {
                let mut bound = Vec::new();
                for spec in specs {
                    bound.push(
                        BoundListener::bind(kind, spec, tls.as_ref())
                            .await
                            .with_context(|| format!("binding the {kind} listener {spec}"))?,
                    );
                }
                anyhow::Ok(bound)
            }
        };
        let native_listeners = bound(ListenerKind::Native).await?;
        let kafka_listeners = bound(ListenerKind::Kafka).await?;
        let http_listeners = bound(ListenerKind::Http).await?;
        for (kind, list) in [
            (ListenerKind::Native, &native_listeners),
            (ListenerKind::Kafka, &kafka_listeners),
            (ListenerKind::Http, &http_listeners),
        ] {
            listeners.extend(list.iter().map(|l| (kind, l.spec)));
        }
        let native_addr = native_listeners[0].spec.addr;
        let kafka_addr = kafka_listeners[0].spec.addr;
        let http_addr = http_listeners[0].spec.addr;
        // One line with every bound address, before serving: tests and scripts wait for it.
        tracing::info!(
            native = %native_addr,
            kafka = %kafka_addr,
            http = %http_addr,
            listeners = %listeners
                .iter()
                .map(|(kind, spec)| format!("{kind}={spec}"))
                .collect::<Vec<_>>()
                .join(","),
            data_dir = %config.data_dir.display(),
            topics = topics.list().len(),
            "strand-broker listening"
        );
        for warning in open_listener_warnings(&config, &listeners) {
            tracing::warn!("{warning}");
        }

        let broker = {
            let topics = topics.clone();
            let metrics = metrics.clone();
            let wait = Duration::from_millis(config.fetch_wait_ms_max);
            let coordinator = CoordinatorConfig {
                groups_max: config.groups_max,
                members_per_group_max: config.members_per_group_max,
                commit_metadata_bytes_max: config.commit_metadata_bytes_max,
                ..CoordinatorConfig::default()
            };
            let txn = config.txn();
            let mut broker = tokio::task::spawn_blocking(move || {
                Broker::open(topics, metrics, coordinator, txn, wait)
            })
            .await?
            .context("opening the group coordinator")?;
            let authorizer_config = config.authorizer()?;
            let data_dir = config.data_dir.clone();
            let authorizer =
                tokio::task::spawn_blocking(move || Authorizer::open(&data_dir, authorizer_config))
                    .await?
                    .context("opening the ACLs")?;
            if authorizer.enabled() {
                tracing::info!(
                    n_acls = authorizer.describe(&AclFilter::any()).len(),
                    super_users = ?config.super_users,
                    "authorizer enabled: requests are checked against the ACLs"
                );
            }
            broker.authorizer = Arc::new(authorizer);
            broker
        };
        let ticker_task = broker.spawn_group_ticker(shutdown_rx.clone());
        // One memory budget for both listeners.
        let budget = Budget::new(config.in_flight_bytes_max);
        let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        let write_timeout = Duration::from_millis(config.write_timeout_ms);
        let kafka_task = tokio::spawn(crate::kafka::serve(
            kafka_listeners,
            broker.clone(),
            crate::kafka::KafkaConfig {
                connections_max: config.connections_max,
                connections_per_ip_max: config.connections_per_ip_max,
                frame_bytes_max: config.frame_bytes_max,
                idle_timeout,
                request_timeout,
                write_timeout,
                fetch_bytes_max: config.fetch_bytes_max,
                budget: budget.clone(),
                advertised: config.kafka_advertised.clone(),
                advertised_listeners: config.kafka_advertised_listeners.clone(),
                auto_create_topics: config.auto_create_topics,
                default_partitions: config.default_partitions,
                metadata_auto_create_topics_max: config.metadata_auto_create_topics_max,
                authenticator: Some(authenticator.clone()),
            },
            shutdown_rx.clone(),
        ));
        let broker_handle = broker.clone();
        let server_task = tokio::spawn(server::serve(
            native_listeners,
            broker,
            ServerConfig {
                connections_max: config.connections_max,
                connections_per_ip_max: config.connections_per_ip_max,
                in_flight_per_connection_max: config.in_flight_per_connection_max,
                frame_bytes_max: config.frame_bytes_max,
                idle_timeout,
                frame_read_timeout: request_timeout,
                write_timeout,
                fetch_bytes_max: config.fetch_bytes_max,
                budget: budget.clone(),
                authenticator: Some(authenticator.clone()),
                ..ServerConfig::default()
            },
            shutdown_rx.clone(),
        ));

        let http_task = {
            let app = http::router(
                HttpState {
                    topics: topics.clone(),
                    metrics: metrics.clone(),
                    budget,
                    auth: http_auth.clone(),
                    metrics_require_auth: config.http_metrics_require_auth,
                    broker: broker_handle.clone(),
                },
                request_timeout,
            );
            let admission = Admission::new(
                "http",
                config.connections_max,
                config.connections_per_ip_max,
                metrics.clone(),
            );
            let mut served = Vec::new();
            for bound in http_listeners {
                let spec = bound.spec;
                let listener =
                    GuardedListener::new(bound, admission.clone(), request_timeout, write_timeout)
                        .with_context(|| format!("serving HTTP on {spec}"))?;
                let mut rx = shutdown_rx.clone();
                served.push(
                    // The client's address, for the console API's host-based ACLs.
                    axum::serve(
                        listener,
                        app.clone()
                            .into_make_service_with_connect_info::<crate::console::PeerAddr>(),
                    )
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    })
                    .into_future(),
                );
            }
            tokio::spawn(async move {
                futures::future::join_all(served)
                    .await
                    .into_iter()
                    .collect::<std::io::Result<()>>()
            })
        };
        let mut background = Vec::new();
        if let Some(tls) = tls {
            background.push(spawn_tls_reload_on_sighup(tls, shutdown_rx.clone())?);
        }
        if let Some(verifier) = http_auth {
            background.push(verifier.watch(shutdown_rx.clone()));
        }
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

        let recovery_task = spawn_periodic(
            "recovering poisoned partitions",
            config.poisoned_recovery_interval_ms,
            topics.clone(),
            shutdown_rx.clone(),
            |topics, _| Ok(topics.recover_poisoned()),
            |_| {},
        );

        Ok(RunningBroker {
            native_addr,
            kafka_addr,
            http_addr,
            broker: broker_handle,
            authenticator,
            config,
            topics,
            shutdown: shutdown_tx,
            server_task,
            kafka_task,
            http_task,
            listeners,
            background: {
                background.extend([retention_task, ticker_task, cleaner_task, recovery_task]);
                background
            },
        })
    }

    /// Stops accepting, lets in-flight requests finish (up to the shutdown timeout), then
    /// closes every log cleanly (the next start skips recovery).
    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!("shutting down: finishing in-flight requests, then closing logs");
        let _ = self.shutdown.send(true);
        let grace = Duration::from_millis(self.config.shutdown_timeout_ms);
        if tokio::time::timeout(grace, self.server_task).await.is_err() {
            tracing::warn!("connections did not finish within the shutdown timeout");
        }
        if tokio::time::timeout(grace, self.kafka_task).await.is_err() {
            tracing::warn!("Kafka connections did not finish within the shutdown timeout");
        }
        if tokio::time::timeout(grace, self.http_task).await.is_err() {
            tracing::warn!("HTTP listener did not stop within the shutdown timeout");
        }
        for task in self.background {
            let _ = task.await;
        }
        let topics = self.topics;
        tokio::task::spawn_blocking(move || topics.close())
            .await?
            .context("closing partition logs")?;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

impl RunningBroker {
    /// The address of the first listener of `kind` with `protocol`, if there is one.
    pub fn listener(&self, kind: ListenerKind, protocol: SecurityProtocol) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(k, spec)| *k == kind && spec.protocol == protocol)
            .map(|(_, spec)| spec.addr)
    }
}

/// Reloads the TLS certificate, key and CA bundle on every SIGHUP until shutdown (a failed
/// reload keeps the previous material; [`ServerTls::reload`] logs why).
pub fn spawn_tls_reload_on_sighup(
    tls: Arc<ServerTls>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tls.reload("SIGHUP");
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }))
}

/// What a listener on a non-loopback address leaves open, one sentence each: without the
/// authorizer anyone who reaches a native or Kafka listener may do anything; a PLAINTEXT or
/// SASL_PLAINTEXT listener carries data (and PLAIN passwords) unencrypted; an HTTP port without
/// bearer tokens shows its metrics to anyone.
pub fn open_listener_warnings(
    config: &BrokerConfig,
    listeners: &[(ListenerKind, ListenerSpec)],
) -> Vec<String> {
    let mut warnings = Vec::new();
    for (kind, spec) in listeners {
        if spec.addr.ip().is_loopback() {
            continue;
        }
        match kind {
            ListenerKind::Native | ListenerKind::Kafka if !config.authorizer_enabled => warnings
                .push(format!(
                    "the {kind} listener {spec} is reachable beyond this host and the authorizer \
                     is off: anyone who reaches it can produce, consume, create and delete \
                     topics and join any group (set authorizer_enabled, with SASL or client \
                     certificates)"
                )),
            ListenerKind::Http if config.http_jwt.is_none() => warnings.push(format!(
                "the HTTP listener {spec} is reachable beyond this host without bearer tokens: \
                 /health, /metrics and the console's /api (topics, messages, groups; within the \
                 ACLs of User:ANONYMOUS when the authorizer is on) are open to anyone (set \
                 http_jwt)"
            )),
            _ => {}
        }
        if !spec.protocol.uses_tls() {
            warnings.push(format!(
                "the {kind} listener {spec} is reachable beyond this host without TLS: what it \
                 carries, credentials included, can be read on the network"
            ));
        }
    }
    warnings
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
            match tokio::task::spawn_blocking(move || job(&topics, crate::log::now_ms())).await {
                Ok(Ok(outcome)) => report(outcome),
                Ok(Err(e)) => tracing::error!(error = %e, "{what} failed"),
                Err(e) => tracing::error!(error = %e, "{what} task panicked"),
            }
        }
    })
}

/// `strand-broker user ...` (and `strand-saga user ...`, for its embedded broker): edits
/// `<data_dir>/security/users.json` while no broker runs on it (the store's lock refuses
/// otherwise).
pub fn user_command(
    config: &BrokerConfig,
    command: crate::config::UserCommand,
) -> anyhow::Result<()> {
    use crate::security::users::Users;
    use anyhow::Context;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_listeners_beyond_loopback_are_named() {
        let spec = |s: &str| s.parse::<ListenerSpec>().unwrap();
        let listeners = [
            (ListenerKind::Native, spec("PLAINTEXT://127.0.0.1:7171")),
            (ListenerKind::Kafka, spec("SASL_SSL://0.0.0.0:9093")),
            (ListenerKind::Http, spec("PLAINTEXT://0.0.0.0:7180")),
        ];
        let open = open_listener_warnings(&BrokerConfig::default(), &listeners);
        assert_eq!(open.len(), 3, "{open:#?}");
        assert!(open[0].contains("kafka listener SASL_SSL://0.0.0.0:9093"));
        assert!(open[0].contains("authorizer is off"));
        assert!(open[1].contains("/metrics and the console's /api"));
        assert!(open[2].contains("without TLS"));
        let secured = BrokerConfig {
            authorizer_enabled: true,
            ..BrokerConfig::default()
        };
        let open = open_listener_warnings(&secured, &listeners[..2]);
        assert!(open.is_empty(), "{open:#?}");
        assert!(open_listener_warnings(&BrokerConfig::default(), &listeners[..1]).is_empty());
    }
}
