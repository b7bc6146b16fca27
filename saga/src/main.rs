//! `strand-saga`: the saga orchestrator's HTTP API over a durable journal. Without `--broker`
//! or `--kafka-brokers` it embeds a Strand broker (listening on its usual ports, so
//! participants and Kafka clients can connect): one command runs everything. With
//! `--kafka-brokers` the journal, snapshots and participants' topics live on a Kafka cluster,
//! and several instances share the journal's partitions.

/// mimalloc without transparent huge pages (see `strand_broker::alloc`).
#[global_allocator]
static ALLOCATOR: strand_broker::alloc::MiMalloc = strand_broker::alloc::MiMalloc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strand_broker::config::{BrokerArgs, BrokerCommand, BrokerConfig};
use strand_broker::listener::ListenerKind;
use strand_broker::run::RunningBroker;
use strand_broker::security::jwt::{JwtConfig, Verifier};
use strand_broker::security::tls::{ClientAuth, ServerTls, TlsConfig};
use strand_broker::security::SecurityProtocol;
use strand_cluster::StrandSecurity;
use strand_cluster::{properties, Cluster, ClusterConfig};
use strand_saga::breaker::BreakerConfig;
use strand_saga::http::{self, HttpConfig};
use strand_saga::journal::Journal;
use strand_saga::limits::SizeLimits;
use strand_saga::orchestrator::{self, OrchestratorConfig};
use strand_saga::ownership;
use strand_saga::participants::{AllowedHosts, ParticipantTls, ParticipantsConfig};
use tokio::sync::watch;

/// A TLS handshake on the API port must finish within this.
const HTTPS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the API waits, at start, for the journal partitions to be taken over before it
/// serves anyway.
const RECOVERY_WAIT_BEFORE_SERVING: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(name = "strand-saga", version, about = "Strand saga orchestrator")]
struct Args {
    /// A Strand broker's native address to keep the journal on; without it a broker runs
    /// embedded, configured by the broker flags below.
    #[arg(
        long,
        env = "STRAND_SAGA_BROKER",
        value_name = "HOST:PORT",
        conflicts_with = "kafka_brokers"
    )]
    broker: Option<String>,
    /// TLS to the Strand broker (--broker, or the embedded one): the CA bundle its
    /// certificate must chain to.
    #[arg(long, env = "STRAND_SAGA_BROKER_TLS_CA", value_name = "FILE")]
    broker_tls_ca: Option<PathBuf>,
    /// Client certificate for the broker's SSL listener (its CN is the orchestrator's
    /// principal); needs --broker-tls-key.
    #[arg(long, env = "STRAND_SAGA_BROKER_TLS_CERT", value_name = "FILE")]
    broker_tls_cert: Option<PathBuf>,
    #[arg(long, env = "STRAND_SAGA_BROKER_TLS_KEY", value_name = "FILE")]
    broker_tls_key: Option<PathBuf>,
    /// Name the broker's certificate must carry [default: the host of its address]
    #[arg(long, env = "STRAND_SAGA_BROKER_TLS_SERVER_NAME", value_name = "NAME")]
    broker_tls_server_name: Option<String>,
    /// SASL user the orchestrator authenticates to the Strand broker as.
    #[arg(long, env = "STRAND_SAGA_BROKER_USER", value_name = "USER")]
    broker_user: Option<String>,
    /// File whose first line is that user's password.
    #[arg(long, env = "STRAND_SAGA_BROKER_PASSWORD_FILE", value_name = "FILE")]
    broker_password_file: Option<PathBuf>,
    /// SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN [default: SCRAM-SHA-512]
    #[arg(
        long,
        env = "STRAND_SAGA_BROKER_SASL_MECHANISM",
        value_name = "MECHANISM"
    )]
    broker_sasl_mechanism: Option<String>,
    /// A Kafka-protocol cluster to keep the journal on (through librdkafka) instead of a Strand
    /// broker; several instances then share the journal's partitions.
    #[arg(long, env = "STRAND_SAGA_KAFKA_BROKERS", value_name = "HOST:PORT[,..]")]
    kafka_brokers: Option<String>,
    /// A librdkafka property for the Kafka cluster (`security.protocol=SASL_SSL`, ...);
    /// repeatable. Properties also come from `--kafka-properties-file` and from variables
    /// `STRAND_SAGA_KAFKA_PROPERTY_<NAME>` (`..._SASL_PASSWORD` sets `sasl.password`); a flag
    /// wins over a variable, which wins over the file. Keep secrets out of flags.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = key_value)]
    kafka_properties: Vec<(String, String)>,
    /// A file of librdkafka properties, one `key=value` a line (Kafka's client.properties).
    #[arg(long, env = "STRAND_SAGA_KAFKA_PROPERTIES_FILE", value_name = "FILE")]
    kafka_properties_file: Option<std::path::PathBuf>,
    /// The consumer group instances on the same Kafka journal share (it must not be used by
    /// anything else) [default: strand-saga-journal]
    #[arg(long, env = "STRAND_SAGA_GROUP", default_value = "strand-saga-journal")]
    group: String,
    /// How long a silent instance keeps its journal partitions, in ms [default: 10000]
    #[arg(long, env = "STRAND_SAGA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    session_timeout_ms: u64,
    /// This instance's name in the group [default: a random one]
    #[arg(long, env = "STRAND_SAGA_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Where the other instances reach this one's API [default: http://<api-listen>, with this
    /// host's name when listening on every interface]
    #[arg(long, env = "STRAND_SAGA_API_ADVERTISE", value_name = "URL")]
    api_advertise: Option<String>,
    /// The orchestrator's HTTP API [default: 127.0.0.1:7190]
    #[arg(
        long,
        env = "STRAND_SAGA_API_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:7190"
    )]
    api_listen: SocketAddr,
    /// Serve the API over HTTPS with this PEM certificate (and chain) [default: plain HTTP]
    #[arg(long, env = "STRAND_SAGA_API_TLS_CERT_FILE", value_name = "FILE")]
    api_tls_cert_file: Option<PathBuf>,
    /// PEM private key of --api-tls-cert-file
    #[arg(long, env = "STRAND_SAGA_API_TLS_KEY_FILE", value_name = "FILE")]
    api_tls_key_file: Option<PathBuf>,
    /// PEM bundle of the CAs API client certificates must chain to
    #[arg(long, env = "STRAND_SAGA_API_TLS_CLIENT_CA_FILE", value_name = "FILE")]
    api_tls_client_ca_file: Option<PathBuf>,
    /// API client certificates: none, requested or required [default: none]
    #[arg(long, env = "STRAND_SAGA_API_TLS_CLIENT_AUTH", value_name = "MODE")]
    api_tls_client_auth: Option<ClientAuth>,
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
    /// Finished sagas beyond memory still readable from their snapshots (about 50 bytes of
    /// index each); older ones are answered 404 [default: 1000000]
    #[arg(
        long,
        env = "STRAND_SAGA_FINISHED_INDEXED",
        default_value_t = 1_000_000
    )]
    finished_sagas_indexed: usize,
    /// Largest request body, in bytes [default: 1048576]
    #[arg(long, env = "STRAND_SAGA_BODY_BYTES_MAX", default_value_t = 1 << 20)]
    body_bytes_max: usize,
    /// Largest saga input (compact JSON), in bytes; a larger one is a 413 [default: 262144]
    #[arg(long, env = "STRAND_SAGA_INPUT_BYTES_MAX", default_value_t = 256 * 1024)]
    saga_input_bytes_max: usize,
    /// Longest idempotency key, in bytes; a longer one is a 400 [default: 512]
    #[arg(
        long,
        env = "STRAND_SAGA_IDEMPOTENCY_KEY_BYTES_MAX",
        default_value_t = 512
    )]
    idempotency_key_bytes_max: usize,
    /// Largest definition (PUT body), in bytes; a larger one is a 413 [default: 262144]
    #[arg(long, env = "STRAND_SAGA_DEFINITION_BYTES_MAX", default_value_t = 256 * 1024)]
    definition_bytes_max: usize,
    /// Largest participant answer (compact JSON), in bytes; a larger one fails its step
    /// permanently [default: 262144]
    #[arg(
        long,
        env = "STRAND_SAGA_PARTICIPANT_OUTPUT_BYTES_MAX",
        default_value_t = 256 * 1024
    )]
    participant_output_bytes_max: usize,
    /// The broker's limit on one journal record (Kafka's max.message.bytes, a Strand broker's
    /// batch limit); the size limits above must fit in it, or strand-saga does not start
    /// [default: 1048576]
    #[arg(long, env = "STRAND_SAGA_JOURNAL_RECORD_BYTES_MAX", default_value_t = 1 << 20)]
    journal_record_bytes_max: usize,
    /// Copies of each internal topic's partitions when they are created on a Kafka cluster
    /// (ignored by a Strand broker) [default: the cluster's default.replication.factor]
    #[arg(long, env = "STRAND_SAGA_JOURNAL_REPLICATION_FACTOR", value_name = "N")]
    journal_replication_factor: Option<u16>,
    /// The `iss` bearer tokens on the API must carry; with --jwt-audience and keys, every route
    /// but /health and /openapi.json needs a token [default: the API is open]
    #[arg(long, env = "STRAND_SAGA_JWT_ISSUER", value_name = "ISSUER")]
    jwt_issuer: Option<String>,
    /// The audience bearer tokens on the API must name
    #[arg(long, env = "STRAND_SAGA_JWT_AUDIENCE", value_name = "AUDIENCE")]
    jwt_audience: Option<String>,
    /// A PEM public key (RSA or EC) or certificate that signs tokens; repeatable
    #[arg(
        long = "jwt-key-file",
        env = "STRAND_SAGA_JWT_KEY_FILES",
        value_name = "FILE",
        value_delimiter = ','
    )]
    jwt_key_files: Vec<std::path::PathBuf>,
    /// A JWKS file with the keys that sign tokens (chosen by kid)
    #[arg(long, env = "STRAND_SAGA_JWT_JWKS_FILE", value_name = "FILE")]
    jwt_jwks_file: Option<std::path::PathBuf>,
    /// Clock skew allowed on exp and nbf, in seconds (at most 300) [default: 30]
    #[arg(long, env = "STRAND_SAGA_JWT_LEEWAY_S", default_value_t = 30)]
    jwt_leeway_s: u64,
    /// A file with a bearer token (scope saga:start) this instance presents when it forwards a
    /// trigger's saga to the instance owning its journal partition; needed with JWTs on a
    /// shared Kafka journal with triggers. Read at each use, so it may be rotated.
    #[arg(long, env = "STRAND_SAGA_FORWARD_TOKEN_FILE", value_name = "FILE")]
    forward_token_file: Option<std::path::PathBuf>,
    /// Hosts HTTP participants may be on: host, host:port, *.domain, [ipv6]:port, comma
    /// separated; a definition naming another is refused [default: any host]
    #[arg(long, env = "STRAND_SAGA_PARTICIPANT_HOSTS", value_name = "HOSTS", value_parser = participant_hosts)]
    participant_hosts: Option<AllowedHosts>,
    /// PEM CA certificates trusted for HTTPS participants, besides the built-in web roots
    #[arg(long, env = "STRAND_SAGA_PARTICIPANT_CA_FILE", value_name = "FILE")]
    participant_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate presented to HTTPS participants (with --participant-key-file)
    #[arg(long, env = "STRAND_SAGA_PARTICIPANT_CERT_FILE", value_name = "FILE")]
    participant_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --participant-cert-file
    #[arg(long, env = "STRAND_SAGA_PARTICIPANT_KEY_FILE", value_name = "FILE")]
    participant_key_file: Option<std::path::PathBuf>,
    /// The folder secret files of participants' `auth` must be in
    #[arg(
        long,
        env = "STRAND_SAGA_PARTICIPANT_SECRETS_DIR",
        value_name = "DIR",
        default_value = strand_saga::participants::SECRETS_DIR_DEFAULT
    )]
    participant_secrets_dir: std::path::PathBuf,
    #[command(flatten)]
    embedded: BrokerArgs,
}

fn participant_hosts(s: &str) -> Result<AllowedHosts, String> {
    s.parse()
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// The API's address for other instances: the listening one, or this host's name in its place
/// when listening on every interface.
fn advertised(api: SocketAddr, scheme: &str) -> String {
    if !api.ip().is_unspecified() {
        return format!("{scheme}://{api}");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into());
    format!("{scheme}://{host}:{}", api.port())
}

/// Settings read before anything starts: an error here is a usage error (exit 2).
#[derive(Debug)]
struct Settings {
    args: Args,
    /// The embedded broker's, when neither `--broker` nor `--kafka-brokers` is given.
    embedded: Option<BrokerConfig>,
    kafka_properties: BTreeMap<String, String>,
    /// HTTPS for the API, when its certificate is given; loaded here, so that a bad file is a
    /// configuration error.
    api_tls: Option<Arc<ServerTls>>,
    /// Bearer-token verification of the API, when configured.
    auth: Option<Arc<Verifier>>,
    participants: ParticipantsConfig,
    limits: SizeLimits,
    /// The journal's record limit (the flag, or the embedded broker's batch limit if smaller).
    record_bytes_max: usize,
}

impl Settings {
    fn load(args: Args) -> anyhow::Result<Settings> {
        let embedded = match (&args.broker, &args.kafka_brokers) {
            (None, None) => Some(BrokerConfig::load(&args.embedded).context("broker settings")?),
            _ => None,
        };
        let mut kafka_properties = match &args.kafka_properties_file {
            Some(path) => properties::read_file(path)?,
            None => BTreeMap::new(),
        };
        kafka_properties.extend(properties::from_vars(
            "STRAND_SAGA_KAFKA_PROPERTY_",
            std::env::vars(),
        ));
        kafka_properties.extend(args.kafka_properties.iter().cloned());
        if args.kafka_brokers.is_none() && !kafka_properties.is_empty() {
            anyhow::bail!("Kafka properties are given but --kafka-brokers is not");
        }
        let api_tls = TlsConfig::from_flags(
            args.api_tls_cert_file.clone(),
            args.api_tls_key_file.clone(),
            args.api_tls_client_ca_file.clone(),
            args.api_tls_client_auth,
        )
        .map_err(|e| anyhow::anyhow!("API TLS settings: {e}"))?;
        let api_tls = match api_tls {
            Some(config) => Some(
                ServerTls::with_alpn(config, vec![b"http/1.1".to_vec()])
                    .context("loading the API's TLS certificate")?,
            ),
            None => None,
        };
        let jwt_given = args.jwt_issuer.is_some()
            || args.jwt_audience.is_some()
            || !args.jwt_key_files.is_empty()
            || args.jwt_jwks_file.is_some();
        let auth = if jwt_given {
            let config = JwtConfig {
                issuer: args.jwt_issuer.clone().unwrap_or_default(),
                audience: args.jwt_audience.clone().unwrap_or_default(),
                key_files: args.jwt_key_files.clone(),
                jwks_file: args.jwt_jwks_file.clone(),
                leeway_s: args.jwt_leeway_s,
                ..JwtConfig::default()
            };
            Some(Arc::new(
                Verifier::load(config).context("the API's JWT settings")?,
            ))
        } else {
            None
        };
        let tls = ParticipantTls {
            ca_file: args.participant_ca_file.clone(),
            cert_file: args.participant_cert_file.clone(),
            key_file: args.participant_key_file.clone(),
        };
        let mut participants = ParticipantsConfig::new(
            args.participant_hosts.clone(),
            &tls,
            args.participant_secrets_dir.clone(),
        )
        .context("participant settings")?;
        participants.output_bytes_max = args.participant_output_bytes_max;
        let limits = SizeLimits {
            input_bytes_max: args.saga_input_bytes_max,
            idempotency_key_bytes_max: args.idempotency_key_bytes_max,
            definition_bytes_max: args.definition_bytes_max,
            output_bytes_max: args.participant_output_bytes_max,
        };
        let mut record_bytes_max = args.journal_record_bytes_max;
        if let Some(broker) = &embedded {
            record_bytes_max = record_bytes_max.min(broker.log.batch_bytes_max);
        }
        limits
            .check_record_limit(record_bytes_max)
            .map_err(|e| anyhow::anyhow!("size limits: {e}"))?;
        if args.journal_replication_factor == Some(0) {
            anyhow::bail!("--journal-replication-factor must be at least 1");
        }
        Ok(Settings {
            args,
            embedded,
            kafka_properties,
            api_tls,
            auth,
            participants,
            limits,
            record_bytes_max,
        })
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let _telemetry = match strand_broker::telemetry::init("strand-saga", args.embedded.log_format) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("strand-saga: {e:#}");
            return ExitCode::from(2);
        }
    };
    // `strand-saga user add|delete|list`: the embedded broker's SCRAM users, edited while it
    // is stopped, as `strand-broker user ...` does.
    if let Some(BrokerCommand::User(command)) = args.embedded.command.take() {
        let result = BrokerConfig::load(&args.embedded)
            .map_err(anyhow::Error::from)
            .and_then(|config| strand_broker::run::user_command(&config, command));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("strand-saga: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let settings = match Settings::load(args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("strand-saga: {e:#}");
            return ExitCode::from(2);
        }
    };
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
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strand-saga: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The embedded broker's native listener the orchestrator connects to: the first whose
/// protocol the `--broker-*` settings speak (TLS when a CA is given, SASL when a user is), so
/// that with every listener secured the orchestrator still gets in, as its own principal.
fn embedded_listener(broker: &RunningBroker, security: &StrandSecurity) -> std::net::SocketAddr {
    let protocol = match (security.uses_tls(), security.uses_sasl()) {
        (false, false) => SecurityProtocol::Plaintext,
        (true, false) => SecurityProtocol::Ssl,
        (false, true) => SecurityProtocol::SaslPlaintext,
        (true, true) => SecurityProtocol::SaslSsl,
    };
    broker
        .listener(ListenerKind::Native, protocol)
        .unwrap_or(broker.native_addr)
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = strand_broker::run::shutdown_signal();
    let Settings {
        args,
        embedded,
        kafka_properties,
        api_tls,
        auth,
        participants,
        limits,
        record_bytes_max,
    } = settings;
    let broker_security = StrandSecurity {
        tls_ca_file: args.broker_tls_ca.clone(),
        tls_cert_file: args.broker_tls_cert.clone(),
        tls_key_file: args.broker_tls_key.clone(),
        tls_server_name: args.broker_tls_server_name.clone(),
        user: args.broker_user.clone(),
        password_file: args.broker_password_file.clone(),
        sasl_mechanism: args.broker_sasl_mechanism.clone(),
    };
    let embedded = match embedded {
        Some(config) => Some(RunningBroker::start(config).await?),
        None => None,
    };
    let (name, config) = match (&args.kafka_brokers, &args.broker, &embedded) {
        (Some(bootstrap), _, _) => (
            "kafka",
            ClusterConfig::Kafka {
                bootstrap: bootstrap.clone(),
                properties: kafka_properties,
            },
        ),
        (None, Some(address), _) => (
            "strand",
            ClusterConfig::Strand {
                address: address.clone(),
                security: broker_security.clone(),
            },
        ),
        (None, None, Some(b)) => (
            "strand",
            ClusterConfig::Strand {
                address: embedded_listener(b, &broker_security).to_string(),
                security: broker_security.clone(),
            },
        ),
        (None, None, None) => unreachable!("a broker is embedded"),
    };
    let cluster_addr = match &config {
        ClusterConfig::Kafka { bootstrap, .. } => bootstrap.clone(),
        ClusterConfig::Strand { address, .. } => address.clone(),
    };
    let cluster = Cluster::connect(name, &config)
        .await
        .with_context(|| format!("connecting to the {name} cluster at {cluster_addr}"))?;
    let cluster = Arc::new(cluster);
    let journal = Journal::open_replicated(
        cluster.clone(),
        args.journal_partitions,
        args.journal_replication_factor,
    )
    .await
    .context("opening the journal")?;
    let listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("binding the API listener on {}", args.api_listen))?;
    let api_addr = listener.local_addr()?;
    let scheme = if api_tls.is_some() { "https" } else { "http" };
    let instance_id = args.instance_id.clone().unwrap_or_else(|| {
        let id = uuid::Uuid::now_v7().simple().to_string();
        id[id.len() - 12..].to_string()
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Alone on its journal, this instance drives every partition; in a Kafka group it drives
    // what the group assigns, which may be none.
    let drives_all = cluster.kafka_config().is_none();
    let journal_partitions = journal.partitions();
    let (ownership, group_thread) = match cluster.kafka_config() {
        Some(kafka) => {
            let (rx, thread) = ownership::kafka(
                kafka,
                &args.group,
                &instance_id,
                Duration::from_millis(args.session_timeout_ms.max(1_000)),
                shutdown_rx.clone(),
            )
            .context("joining the journal group")?;
            (rx, Some(thread))
        }
        None => (ownership::all(journal.partitions()), None),
    };
    let config = OrchestratorConfig {
        journal_partitions: args.journal_partitions,
        snapshot_interval: Duration::from_millis(args.snapshot_interval_ms.max(100)),
        breaker: BreakerConfig {
            failures_to_open: args.breaker_failures.max(1),
            open_ms: args.breaker_open_ms,
        },
        finished_in_memory_max: args.finished_sagas_max,
        finished_indexed_max: args.finished_sagas_indexed,
        snapshot_bytes_max: record_bytes_max,
        // On a shared journal every instance reads every reply (and drops the others').
        reply_group: match cluster.kafka_config() {
            Some(_) => format!("strand-saga-replies-{instance_id}"),
            None => "strand-saga".into(),
        },
        api_url: args
            .api_advertise
            .clone()
            .unwrap_or_else(|| advertised(api_addr, scheme)),
        instance_id: instance_id.clone(),
        participants,
        forward_token_file: args.forward_token_file.clone(),
        ..OrchestratorConfig::default()
    };
    let (handle, mut orchestrator) =
        orchestrator::start(journal, config, ownership, shutdown_rx.clone())
            .await
            .context("recovering the orchestrator")?;
    match &auth {
        Some(verifier) => {
            tracing::info!(
                keys = verifier.keys_loaded(),
                issuer = %verifier.config().issuer,
                audience = %verifier.config().audience,
                "saga API requires bearer tokens"
            );
            verifier.clone().watch(shutdown_rx.clone());
        }
        None if !api_addr.ip().is_loopback() => tracing::warn!(
            api = %api_addr,
            "the saga API is open to anyone who can reach {api_addr}: without --jwt-issuer, \
             --jwt-audience and keys, anyone may define sagas (which call participant URLs{}), \
             start, abort and retry sagas and read their inputs and outputs",
            if args.participant_hosts.is_some() { " on the allowed hosts" } else { " on any host" }
        ),
        None => {}
    }
    let http_config = HttpConfig {
        body_bytes_max: args.body_bytes_max,
        limits,
        auth,
        ..HttpConfig::default()
    };
    // Serve once the partitions are taken over, so the first requests are not refused with
    // "drives no journal partition" while recovery runs (they wait in the listen backlog).
    // Bounded: a long recovery still serves, refusing starts until it is done.
    if drives_all
        && !handle
            .wait_for_partitions(journal_partitions as usize, RECOVERY_WAIT_BEFORE_SERVING)
            .await
    {
        tracing::warn!(
            waited_s = RECOVERY_WAIT_BEFORE_SERVING.as_secs(),
            "serving before the journal partitions are taken over: starts are refused with 503 until they are"
        );
    }
    let app = http::router(handle, &http_config);
    let mut http_shutdown = shutdown_rx.clone();
    if let Some(tls) = &api_tls {
        strand_broker::run::spawn_tls_reload_on_sighup(tls.clone(), shutdown_rx.clone())?;
    }
    let http_task = tokio::spawn(strand_broker::listener::serve_http(
        listener,
        api_tls,
        HTTPS_HANDSHAKE_TIMEOUT,
        app,
        async move { strand_saga::stopped(&mut http_shutdown).await },
    ));
    // One line with every address, before serving: tests and scripts wait for it.
    tracing::info!(
        api = %api_addr,
        scheme,
        broker = %cluster_addr,
        instance = %instance_id,
        kafka = %embedded.as_ref().map(|b| b.kafka_addr.to_string()).unwrap_or_default(),
        "strand-saga listening"
    );
    let failure = tokio::select! {
        () = shutdown => None,
        result = &mut orchestrator => Some(result),
    };
    let _ = shutdown_tx.send(true);
    let orchestrator_result = match failure {
        Some(result) => result,
        None => orchestrator.await,
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), http_task).await;
    if let Some(thread) = group_thread {
        // After the last checkpoint: leave the journal group, so the others take over now.
        let left = tokio::task::spawn_blocking(move || thread.join());
        let _ = tokio::time::timeout(Duration::from_secs(10), left).await;
    }
    if let Some(broker) = embedded {
        broker.stop().await?;
    }
    orchestrator_result
        .context("orchestrator task")?
        .context("the journal failed")?;
    tracing::info!("strand-saga stopped cleanly");
    Ok(())
}
