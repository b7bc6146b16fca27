//! Broker configuration: defaults, then a TOML file, then environment variables, then flags.
//!
//! Every setting has a TOML key; the common ones also have a flag and a `STRAND_*` variable.
//! Environment variables and flags are read by clap, which gives a flag precedence over its
//! variable; both win over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::listener::{AdvertisedListener, ListenerKind};
use crate::log::{FsyncPolicy, LogConfig};
use crate::security::acl::AuthorizerConfig;
use crate::security::jwt::JwtConfig;
use crate::security::tls::{ClientAuth, TlsConfig};
use crate::security::Principal;
use crate::security::{ListenerSpec, SecurityProtocol};

/// The broker's settings, with the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Folder for topics and their logs. Default `./strand-data`.
    pub data_dir: PathBuf,
    /// Native protocol listener. Default `127.0.0.1:7171`.
    pub listen: SocketAddr,
    /// Kafka-protocol listener. Default `127.0.0.1:9092`.
    pub kafka_listen: SocketAddr,
    /// `host:port` Kafka clients are told to connect to, by the PLAINTEXT listener or by the
    /// only Kafka listener (`kafka_listen` with `kafka_listen_protocol`); default: the
    /// listener's address (127.0.0.1 when it binds 0.0.0.0). Set it when clients reach Strand
    /// by another name. `kafka_advertised_listeners` says it for every protocol.
    pub kafka_advertised: Option<String>,
    /// Native protocol listeners, `PROTOCOL://host:port` each (`PLAINTEXT`, `SSL`,
    /// `SASL_PLAINTEXT`, `SASL_SSL`). Default empty: one PLAINTEXT listener on `listen`.
    pub native_listeners: Vec<ListenerSpec>,
    /// Kafka-protocol listeners, at most one per protocol (the protocol names the listener, as
    /// Kafka's default listener names do). Default empty: one PLAINTEXT listener on
    /// `kafka_listen`.
    pub kafka_listeners: Vec<ListenerSpec>,
    /// `PROTOCOL://host:port` each: what the Kafka listener with that protocol advertises in
    /// Metadata and FindCoordinator, as Kafka's `advertised.listeners`. Default empty: each
    /// listener advertises its bound address (PLAINTEXT: `kafka_advertised` if set).
    pub kafka_advertised_listeners: Vec<AdvertisedListener>,
    /// HTTP listeners (`PLAINTEXT` or `SSL`). Default empty: one PLAINTEXT listener on
    /// `http_listen`.
    pub http_listeners: Vec<ListenerSpec>,
    /// Certificate, key and client authentication of every `SSL` and `SASL_SSL` listener.
    pub tls: TlsConfig,
    /// Create a topic when a Kafka client asks for one that does not exist (Metadata), as
    /// Kafka's `auto.create.topics.enable`. Default true.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of Kafka CreateTopics asking for the default
    /// (-1), as Kafka's `num.partitions`. Default 1.
    pub default_partitions: u32,
    /// HTTP listener for `/health` and `/metrics`. Default `127.0.0.1:7180`.
    pub http_listen: SocketAddr,
    /// Bearer JWT verification on the HTTP listener (TOML table `[http_jwt]`: `issuer`,
    /// `audience`, `key_files`, `jwks_file`, `leeway_s`, `reload_interval_ms`). Default none:
    /// the HTTP listener needs no token.
    pub http_jwt: Option<JwtConfig>,
    /// Whether `/metrics` needs a bearer token with scope `strand:metrics` (requires
    /// `http_jwt`). `/health` is always open. Default false.
    pub http_metrics_require_auth: bool,
    /// Open client connections at most, per listener (native, Kafka, HTTP); more are closed
    /// as soon as they are accepted, with a warning (at most one every 10 s). Default 1024.
    pub connections_max: usize,
    /// Open connections from one client IP address at most, per listener. Default 256.
    pub connections_per_ip_max: usize,
    /// A connection with no request for this long is closed. Default 10 minutes (Kafka's
    /// `connections.max.idle.ms`).
    pub idle_timeout_ms: u64,
    /// A request whose first byte has arrived must be complete within this, or the
    /// connection is closed (slowloris); on HTTP, any read that waits this long. Default 30 s.
    pub request_timeout_ms: u64,
    /// A connection whose client takes longer than this to take an answer is closed. Default
    /// 60 s.
    pub write_timeout_ms: u64,
    /// Bytes held by requests and answers in flight across all native and Kafka connections
    /// at most; while they are spent the broker stops reading requests. Default 128 MiB.
    pub in_flight_bytes_max: usize,
    /// Record bytes one fetch answer carries at most, whatever the request asks (Kafka's
    /// `fetch.max.bytes`). Default 50 MiB.
    pub fetch_bytes_max: usize,
    /// Requests one connection may have in flight before the broker stops reading from it.
    /// Default 64.
    pub in_flight_per_connection_max: usize,
    /// Largest protocol frame accepted, checked before any allocation. Default 8 MiB.
    pub frame_bytes_max: usize,
    /// Longest a fetch may wait for data at the high watermark. Default 30 s.
    pub fetch_wait_ms_max: u64,
    /// How often retention runs over every partition. Default 5 minutes, as Kafka.
    pub retention_check_interval_ms: u64,
    /// How often the cleaner compacts the sealed segments of compacted topics. Default 15 s.
    pub cleaner_interval_ms: u64,
    /// How often a partition that refuses writes after a failed fsync is tried again: cut back
    /// to its durable offset and reopened in place, once the disk works. Default 10 s.
    pub poisoned_recovery_interval_ms: u64,
    /// How long a shutdown waits for in-flight requests before closing logs. Default 10 s.
    pub shutdown_timeout_ms: u64,
    /// Topics clients may create, counting auto-created ones (the broker's internal topics are
    /// not counted). Default 1000.
    pub topics_max: u32,
    /// Partitions one topic may have. Each partition costs a flusher thread, file descriptors
    /// and two index mappings. Default 1024.
    pub partitions_per_topic_max: u32,
    /// Partitions of all topics together. Default 4096.
    pub partitions_max: u32,
    /// Topics one Kafka Metadata request may auto-create; the others are answered
    /// UNKNOWN_TOPIC_OR_PARTITION, so a client asking again creates the next ones. Default 100.
    pub metadata_auto_create_topics_max: u32,
    /// Consumer groups (with members or committed offsets). Default 10,000.
    pub groups_max: usize,
    /// Members of one consumer group, as Kafka's `group.max.size`. Default 1000.
    pub members_per_group_max: usize,
    /// Longest metadata string one committed offset may carry, as Kafka's
    /// `offset.metadata.max.bytes`. Default 4096.
    pub commit_metadata_bytes_max: usize,
    /// The longest transaction timeout a transactional producer may ask for, as Kafka's
    /// `transaction.max.timeout.ms`. Default 900,000.
    pub transaction_timeout_ms_max: u64,
    /// Transactional ids the transaction coordinator keeps. Default 10,000.
    pub transactional_ids_max: usize,
    /// Partitions (and offsets) one transaction may hold. Default 1000.
    pub partitions_per_transaction_max: usize,
    /// Sealed segments whose files (three descriptors and two mappings each) may be open at
    /// once, across every partition; more are closed, oldest first, and reopened when read.
    /// Active segments are not counted. Default 1000.
    pub open_sealed_segments_max: usize,
    /// How the `listen` address is secured, when `native_listeners` is empty: `PLAINTEXT`,
    /// `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`. Default `PLAINTEXT`.
    pub listen_protocol: SecurityProtocol,
    /// How the Kafka listener is secured, as `listen_protocol`. Default `PLAINTEXT`.
    pub kafka_listen_protocol: SecurityProtocol,
    /// SASL mechanisms clients may use on SASL listeners, from `PLAIN`, `SCRAM-SHA-256` and
    /// `SCRAM-SHA-512`, as Kafka's `sasl.enabled.mechanisms`. Default all three.
    pub sasl_enabled_mechanisms: Vec<String>,
    /// PBKDF2 iterations of SCRAM credentials the broker salts itself (`strand-broker user
    /// add`); clients that salt their own choose theirs. 4096 (Kafka's minimum) to 16384.
    /// Default 4096.
    pub scram_iterations_default: u32,
    /// SCRAM users at most. Default 10,000.
    pub users_max: usize,
    /// Longest user name in bytes. Default 256.
    pub user_name_bytes_max: usize,
    /// How long a failed SASL authentication waits before it is answered, to slow down
    /// password guessing, as Kafka's `connection.failed.authentication.delay.ms`. Default 100.
    pub sasl_failure_delay_ms: u64,
    /// Authorize every request on every listener against the ACLs (Kafka's
    /// `authorizer.class.name`). Default false: everything is allowed, and ACLs are only
    /// stored, to take effect once this is on.
    pub authorizer_enabled: bool,
    /// Principals allowed everything, such as `User:admin` (Kafka's `super.users`). Default
    /// none.
    pub super_users: Vec<String>,
    /// Allow what no ACL applies to (Kafka's `allow.everyone.if.no.acl.found`); never applies
    /// to internal topics. Default false.
    pub allow_everyone_if_no_acl_found: bool,
    /// ACL bindings stored at most; creating more is refused. Default 10,000.
    pub acl_bindings_max: usize,
    /// Defaults for every partition log; topics may override some of them.
    pub log: LogConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./strand-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7171)),
            kafka_listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            kafka_advertised: None,
            native_listeners: Vec::new(),
            kafka_listeners: Vec::new(),
            kafka_advertised_listeners: Vec::new(),
            http_listeners: Vec::new(),
            tls: TlsConfig::default(),
            auto_create_topics: true,
            default_partitions: 1,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7180)),
            http_jwt: None,
            http_metrics_require_auth: false,
            connections_max: 1024,
            connections_per_ip_max: 256,
            idle_timeout_ms: 600_000,
            request_timeout_ms: 30_000,
            write_timeout_ms: 60_000,
            in_flight_bytes_max: 128 << 20,
            fetch_bytes_max: 50 << 20,
            in_flight_per_connection_max: 64,
            frame_bytes_max: 8 << 20,
            fetch_wait_ms_max: 30_000,
            retention_check_interval_ms: 300_000,
            cleaner_interval_ms: 15_000,
            poisoned_recovery_interval_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            topics_max: 1000,
            partitions_per_topic_max: 1024,
            partitions_max: 4096,
            metadata_auto_create_topics_max: 100,
            groups_max: 10_000,
            members_per_group_max: 1000,
            commit_metadata_bytes_max: 4096,
            transaction_timeout_ms_max: 900_000,
            transactional_ids_max: 10_000,
            partitions_per_transaction_max: 1000,
            open_sealed_segments_max: crate::log::OPEN_SEALED_SEGMENTS_MAX_DEFAULT,
            listen_protocol: SecurityProtocol::Plaintext,
            kafka_listen_protocol: SecurityProtocol::Plaintext,
            sasl_enabled_mechanisms: strand_client::Mechanism::ALL
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
            scram_iterations_default: strand_client::scram::ITERATIONS_MIN,
            users_max: 10_000,
            user_name_bytes_max: 256,
            sasl_failure_delay_ms: 100,
            authorizer_enabled: false,
            super_users: Vec::new(),
            allow_everyone_if_no_acl_found: false,
            acl_bindings_max: crate::security::acl::ACL_BINDINGS_MAX_DEFAULT,
            log: LogConfig::default(),
        }
    }
}

/// Command-line flags of `strand-broker`; each also reads its environment variable.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "strand-broker",
    version,
    about = "Strand event-streaming broker"
)]
pub struct BrokerArgs {
    /// TOML file with any of the settings; flags and variables override it.
    #[arg(long, env = "STRAND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder for topics and logs [default: ./strand-data]
    #[arg(long, env = "STRAND_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Native protocol listener; port 0 picks a free port [default: 127.0.0.1:7171]
    #[arg(long, env = "STRAND_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Kafka-protocol listener; port 0 picks a free port [default: 127.0.0.1:9092]
    #[arg(long, env = "STRAND_KAFKA_LISTEN", value_name = "ADDR")]
    pub kafka_listen: Option<SocketAddr>,
    /// host:port advertised to Kafka clients [default: the Kafka listener's address]
    #[arg(long, env = "STRAND_KAFKA_ADVERTISED", value_name = "HOST:PORT")]
    pub kafka_advertised: Option<String>,
    /// Native listeners, comma separated PROTOCOL://host:port [default: PLAINTEXT://<listen>]
    #[arg(
        long,
        env = "STRAND_NATIVE_LISTENERS",
        value_name = "LISTENERS",
        value_delimiter = ','
    )]
    pub native_listeners: Option<Vec<ListenerSpec>>,
    /// Kafka listeners, comma separated PROTOCOL://host:port, one per protocol
    /// [default: PLAINTEXT://<kafka-listen>]
    #[arg(
        long,
        env = "STRAND_KAFKA_LISTENERS",
        value_name = "LISTENERS",
        value_delimiter = ','
    )]
    pub kafka_listeners: Option<Vec<ListenerSpec>>,
    /// What each Kafka listener advertises, comma separated PROTOCOL://host:port
    /// [default: its bound address]
    #[arg(
        long,
        env = "STRAND_KAFKA_ADVERTISED_LISTENERS",
        value_name = "LISTENERS",
        value_delimiter = ','
    )]
    pub kafka_advertised_listeners: Option<Vec<AdvertisedListener>>,
    /// HTTP listeners, comma separated PLAINTEXT:// or SSL://host:port
    /// [default: PLAINTEXT://<http-listen>]
    #[arg(
        long,
        env = "STRAND_HTTP_LISTENERS",
        value_name = "LISTENERS",
        value_delimiter = ','
    )]
    pub http_listeners: Option<Vec<ListenerSpec>>,
    /// PEM certificate (and chain) of the SSL and SASL_SSL listeners
    #[arg(long, env = "STRAND_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file
    #[arg(long, env = "STRAND_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM bundle of the CAs client certificates must chain to
    #[arg(long, env = "STRAND_TLS_CLIENT_CA_FILE", value_name = "FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Client certificates: none, requested or required [default: none]
    #[arg(long, env = "STRAND_TLS_CLIENT_AUTH", value_name = "MODE")]
    pub tls_client_auth: Option<ClientAuth>,
    /// Create topics Kafka clients ask for that do not exist [default: true]
    #[arg(long, env = "STRAND_AUTO_CREATE_TOPICS", value_name = "BOOL")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics [default: 1]
    #[arg(long, env = "STRAND_DEFAULT_PARTITIONS", value_name = "N")]
    pub default_partitions: Option<u32>,
    /// HTTP listener for /health and /metrics [default: 127.0.0.1:7180]
    #[arg(long, env = "STRAND_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// The `iss` bearer tokens on the HTTP listener must carry (turns JWT verification on)
    #[arg(long, env = "STRAND_HTTP_JWT_ISSUER", value_name = "ISSUER")]
    pub http_jwt_issuer: Option<String>,
    /// The audience bearer tokens on the HTTP listener must name
    #[arg(long, env = "STRAND_HTTP_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub http_jwt_audience: Option<String>,
    /// A PEM public key (RSA or EC) or certificate that signs tokens; repeatable
    #[arg(
        long = "http-jwt-key-file",
        env = "STRAND_HTTP_JWT_KEY_FILES",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub http_jwt_key_files: Vec<PathBuf>,
    /// A JWKS file with the keys that sign tokens (chosen by kid)
    #[arg(long, env = "STRAND_HTTP_JWT_JWKS_FILE", value_name = "FILE")]
    pub http_jwt_jwks_file: Option<PathBuf>,
    /// Clock skew allowed on exp and nbf, in seconds [default: 30]
    #[arg(long, env = "STRAND_HTTP_JWT_LEEWAY_S", value_name = "SECONDS")]
    pub http_jwt_leeway_s: Option<u64>,
    /// Whether /metrics needs a token with scope strand:metrics [default: false]
    #[arg(long, env = "STRAND_HTTP_METRICS_REQUIRE_AUTH", value_name = "BOOL")]
    pub http_metrics_require_auth: Option<bool>,
    /// Open client connections at most, per listener [default: 1024]
    #[arg(long, env = "STRAND_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Open connections from one IP address at most, per listener [default: 256]
    #[arg(long, env = "STRAND_CONNECTIONS_PER_IP_MAX")]
    pub connections_per_ip_max: Option<usize>,
    /// Close connections idle this long, in ms [default: 600000]
    #[arg(long, env = "STRAND_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// A started request must arrive within this, in ms [default: 30000]
    #[arg(long, env = "STRAND_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Close connections whose client does not take an answer within this, in ms [default: 60000]
    #[arg(long, env = "STRAND_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Bytes of requests and answers in flight across all connections [default: 134217728]
    #[arg(long, env = "STRAND_IN_FLIGHT_BYTES_MAX")]
    pub in_flight_bytes_max: Option<usize>,
    /// Record bytes one fetch answer carries at most [default: 52428800]
    #[arg(long, env = "STRAND_FETCH_BYTES_MAX")]
    pub fetch_bytes_max: Option<usize>,
    /// Sealed segments open at once across all partitions; more are reopened on demand
    /// [default: 1000]
    #[arg(long, env = "STRAND_OPEN_SEALED_SEGMENTS_MAX", value_name = "N")]
    pub open_sealed_segments_max: Option<usize>,
    /// Background fsync: never, always, or a number of milliseconds [default: 1000]
    #[arg(long, env = "STRAND_FSYNC", value_name = "POLICY", value_parser = parse_fsync)]
    pub fsync: Option<FsyncPolicy>,
    /// Default segment size in bytes [default: 1073741824]
    #[arg(long, env = "STRAND_SEGMENT_BYTES_MAX")]
    pub segment_bytes_max: Option<u64>,
    /// Default retention by age in ms, -1 for none [default: 604800000]
    #[arg(long, env = "STRAND_RETENTION_MS", allow_negative_numbers = true)]
    pub retention_ms: Option<i64>,
    /// Default retention by size in bytes per partition, -1 for none [default: -1]
    #[arg(long, env = "STRAND_RETENTION_BYTES", allow_negative_numbers = true)]
    pub retention_bytes: Option<i64>,
    /// Topics clients may create, internal ones not counted [default: 1000]
    #[arg(long, env = "STRAND_TOPICS_MAX", value_name = "N")]
    pub topics_max: Option<u32>,
    /// Partitions of one topic at most [default: 1024]
    #[arg(long, env = "STRAND_PARTITIONS_PER_TOPIC_MAX", value_name = "N")]
    pub partitions_per_topic_max: Option<u32>,
    /// Partitions of all topics together at most [default: 4096]
    #[arg(long, env = "STRAND_PARTITIONS_MAX", value_name = "N")]
    pub partitions_max: Option<u32>,
    /// Topics one Kafka Metadata request may auto-create [default: 100]
    #[arg(long, env = "STRAND_METADATA_AUTO_CREATE_TOPICS_MAX", value_name = "N")]
    pub metadata_auto_create_topics_max: Option<u32>,
    /// Consumer groups at most [default: 10000]
    #[arg(long, env = "STRAND_GROUPS_MAX", value_name = "N")]
    pub groups_max: Option<usize>,
    /// Members of one consumer group at most [default: 1000]
    #[arg(long, env = "STRAND_MEMBERS_PER_GROUP_MAX", value_name = "N")]
    pub members_per_group_max: Option<usize>,
    /// Longest commit metadata in bytes [default: 4096]
    #[arg(long, env = "STRAND_COMMIT_METADATA_BYTES_MAX", value_name = "BYTES")]
    pub commit_metadata_bytes_max: Option<usize>,
    /// Longest transaction timeout a producer may ask for [default: 900000]
    #[arg(long, env = "STRAND_TRANSACTION_TIMEOUT_MS_MAX", value_name = "MS")]
    pub transaction_timeout_ms_max: Option<u64>,
    /// Transactional ids at most [default: 10000]
    #[arg(long, env = "STRAND_TRANSACTIONAL_IDS_MAX", value_name = "N")]
    pub transactional_ids_max: Option<usize>,
    /// Partitions (and offsets) of one transaction at most [default: 1000]
    #[arg(long, env = "STRAND_PARTITIONS_PER_TRANSACTION_MAX", value_name = "N")]
    pub partitions_per_transaction_max: Option<usize>,
    /// Native listener security: PLAINTEXT or SASL_PLAINTEXT [default: PLAINTEXT]
    #[arg(long, env = "STRAND_LISTEN_PROTOCOL", value_name = "PROTOCOL")]
    pub listen_protocol: Option<SecurityProtocol>,
    /// Kafka listener security: PLAINTEXT or SASL_PLAINTEXT [default: PLAINTEXT]
    #[arg(long, env = "STRAND_KAFKA_LISTEN_PROTOCOL", value_name = "PROTOCOL")]
    pub kafka_listen_protocol: Option<SecurityProtocol>,
    /// SASL mechanisms, comma separated [default: PLAIN,SCRAM-SHA-256,SCRAM-SHA-512]
    #[arg(
        long,
        env = "STRAND_SASL_ENABLED_MECHANISMS",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub sasl_enabled_mechanisms: Option<Vec<String>>,
    /// Authorize requests against the ACLs [default: false]
    #[arg(long, env = "STRAND_AUTHORIZER_ENABLED", value_name = "BOOL")]
    pub authorizer_enabled: Option<bool>,
    /// Comma-separated principals allowed everything, e.g. User:admin [default: none]
    #[arg(
        long,
        env = "STRAND_SUPER_USERS",
        value_name = "PRINCIPALS",
        value_delimiter = ','
    )]
    pub super_users: Option<Vec<String>>,
    /// Allow what no ACL applies to (not internal topics) [default: false]
    #[arg(
        long,
        env = "STRAND_ALLOW_EVERYONE_IF_NO_ACL_FOUND",
        value_name = "BOOL"
    )]
    pub allow_everyone_if_no_acl_found: Option<bool>,
    /// ACL bindings stored at most [default: 10000]
    #[arg(long, env = "STRAND_ACL_BINDINGS_MAX", value_name = "N")]
    pub acl_bindings_max: Option<usize>,
    /// Log lines as `text` or `json` (one object per line, with the trace and span ids of the
    /// request they belong to); `RUST_LOG` filters them [default: text]
    #[arg(
        long,
        env = "STRAND_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: crate::telemetry::LogFormat,
    /// What to do instead of serving (user administration while the broker is stopped).
    #[command(subcommand)]
    pub command: Option<BrokerCommand>,
}

/// `strand-broker` subcommands; without one, the broker serves.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BrokerCommand {
    /// SCRAM users in the data directory, edited offline: the first user must exist before
    /// anyone can log in to a SASL listener. Refused while a broker runs on the directory.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum UserCommand {
    /// Adds a user (or replaces its credential for the mechanism).
    Add {
        /// User name.
        name: String,
        /// File whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// SCRAM-SHA-256 or SCRAM-SHA-512; repeat the command for both.
        #[arg(long, default_value = "SCRAM-SHA-512")]
        mechanism: String,
        /// PBKDF2 iterations [default: scram_iterations_default]
        #[arg(long)]
        iterations: Option<u32>,
    },
    /// Deletes a user (all its credentials).
    Delete { name: String },
    /// Lists users and their mechanisms.
    List,
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    FsyncPolicy::from_str(s)
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "never" => Ok(FsyncPolicy::Never),
            "always" => Ok(FsyncPolicy::Always),
            ms => ms
                .strip_suffix("ms")
                .unwrap_or(ms)
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(FsyncPolicy::IntervalMs)
                .ok_or_else(|| {
                    format!(
                        "fsync policy must be never, always or a number of ms above 0, got {s:?}"
                    )
                }),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl BrokerConfig {
    /// The transaction coordinator's limits.
    pub fn txn(&self) -> crate::txn::TxnConfig {
        crate::txn::TxnConfig {
            transaction_timeout_ms_max: self.transaction_timeout_ms_max,
            transactional_ids_max: self.transactional_ids_max,
            partitions_per_transaction_max: self.partitions_per_transaction_max,
        }
    }

    /// The listeners of one kind: the configured list, or the single address (`listen`,
    /// `kafka_listen`, `http_listen`) with its protocol (`listen_protocol`,
    /// `kafka_listen_protocol`; HTTP's is PLAINTEXT).
    pub fn listeners(&self, kind: ListenerKind) -> Vec<ListenerSpec> {
        let (list, addr, protocol) = match kind {
            ListenerKind::Native => (&self.native_listeners, self.listen, self.listen_protocol),
            ListenerKind::Kafka => (
                &self.kafka_listeners,
                self.kafka_listen,
                self.kafka_listen_protocol,
            ),
            ListenerKind::Http => (
                &self.http_listeners,
                self.http_listen,
                SecurityProtocol::Plaintext,
            ),
        };
        if list.is_empty() {
            vec![ListenerSpec { protocol, addr }]
        } else {
            list.clone()
        }
    }

    /// Whether some listener uses TLS (and so needs `[tls]`).
    pub fn uses_tls(&self) -> bool {
        [
            ListenerKind::Native,
            ListenerKind::Kafka,
            ListenerKind::Http,
        ]
        .into_iter()
        .flat_map(|kind| self.listeners(kind))
        .any(|spec| spec.protocol.uses_tls())
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        if let Some(spec) = self
            .listeners(ListenerKind::Http)
            .into_iter()
            .find(|spec| spec.protocol.uses_sasl())
        {
            return Err(ConfigError::Invalid(format!(
                "http_listeners: {spec}: HTTP listeners are PLAINTEXT or SSL (HTTP does not \
                 speak SASL)"
            )));
        }
        let kafka = self.listeners(ListenerKind::Kafka);
        for (idx, spec) in kafka.iter().enumerate() {
            if kafka[..idx].iter().any(|s| s.protocol == spec.protocol) {
                return Err(ConfigError::Invalid(format!(
                    "kafka_listeners: more than one {} listener; a Kafka listener is named by \
                     its protocol, so each protocol may appear once",
                    spec.protocol
                )));
            }
        }
        for (idx, advertised) in self.kafka_advertised_listeners.iter().enumerate() {
            if !kafka.iter().any(|s| s.protocol == advertised.protocol) {
                return Err(ConfigError::Invalid(format!(
                    "kafka_advertised_listeners: {advertised} names no Kafka listener (the \
                     Kafka listeners are {})",
                    kafka
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if self.kafka_advertised_listeners[..idx]
                .iter()
                .any(|a| a.protocol == advertised.protocol)
            {
                return Err(ConfigError::Invalid(format!(
                    "kafka_advertised_listeners: more than one {} entry",
                    advertised.protocol
                )));
            }
        }
        self.tls
            .validate(self.uses_tls())
            .map_err(ConfigError::Invalid)
    }

    /// Layers the file named by `args.config` (if any) and then `args` over the defaults.
    pub fn load(args: &BrokerArgs) -> Result<BrokerConfig, ConfigError> {
        let mut config = match &args.config {
            Some(path) => BrokerConfig::from_file(path)?,
            None => BrokerConfig::default(),
        };
        let limit = |v: i64| u64::try_from(v).ok();
        macro_rules! set {
            ($field:expr, $value:expr) => {
                if let Some(v) = $value {
                    $field = v;
                }
            };
        }
        set!(config.data_dir, args.data_dir.clone());
        set!(config.listen, args.listen);
        set!(config.kafka_listen, args.kafka_listen);
        if let Some(advertised) = &args.kafka_advertised {
            config.kafka_advertised = Some(advertised.clone());
        }
        set!(config.native_listeners, args.native_listeners.clone());
        set!(config.kafka_listeners, args.kafka_listeners.clone());
        set!(
            config.kafka_advertised_listeners,
            args.kafka_advertised_listeners.clone()
        );
        set!(config.http_listeners, args.http_listeners.clone());
        if let Some(file) = &args.tls_cert_file {
            config.tls.cert_file = Some(file.clone());
        }
        if let Some(file) = &args.tls_key_file {
            config.tls.key_file = Some(file.clone());
        }
        if let Some(file) = &args.tls_client_ca_file {
            config.tls.client_ca_file = Some(file.clone());
        }
        set!(config.tls.client_auth, args.tls_client_auth);
        set!(config.auto_create_topics, args.auto_create_topics);
        set!(config.default_partitions, args.default_partitions);
        set!(config.http_listen, args.http_listen);
        let jwt_flags = args.http_jwt_issuer.is_some()
            || args.http_jwt_audience.is_some()
            || !args.http_jwt_key_files.is_empty()
            || args.http_jwt_jwks_file.is_some()
            || args.http_jwt_leeway_s.is_some();
        if jwt_flags {
            let jwt = config.http_jwt.get_or_insert_with(JwtConfig::default);
            set!(jwt.issuer, args.http_jwt_issuer.clone());
            set!(jwt.audience, args.http_jwt_audience.clone());
            if !args.http_jwt_key_files.is_empty() {
                jwt.key_files = args.http_jwt_key_files.clone();
            }
            if let Some(jwks) = &args.http_jwt_jwks_file {
                jwt.jwks_file = Some(jwks.clone());
            }
            set!(jwt.leeway_s, args.http_jwt_leeway_s);
        }
        set!(
            config.http_metrics_require_auth,
            args.http_metrics_require_auth
        );
        set!(config.connections_max, args.connections_max);
        set!(config.connections_per_ip_max, args.connections_per_ip_max);
        set!(config.idle_timeout_ms, args.idle_timeout_ms);
        set!(config.request_timeout_ms, args.request_timeout_ms);
        set!(config.write_timeout_ms, args.write_timeout_ms);
        set!(config.in_flight_bytes_max, args.in_flight_bytes_max);
        set!(config.fetch_bytes_max, args.fetch_bytes_max);
        set!(
            config.open_sealed_segments_max,
            args.open_sealed_segments_max
        );
        set!(config.log.fsync, args.fsync);
        set!(config.log.segment_bytes_max, args.segment_bytes_max);
        set!(config.log.retention_ms, args.retention_ms.map(limit));
        set!(config.log.retention_bytes, args.retention_bytes.map(limit));
        set!(config.topics_max, args.topics_max);
        set!(
            config.partitions_per_topic_max,
            args.partitions_per_topic_max
        );
        set!(config.partitions_max, args.partitions_max);
        set!(
            config.metadata_auto_create_topics_max,
            args.metadata_auto_create_topics_max
        );
        set!(config.groups_max, args.groups_max);
        set!(config.members_per_group_max, args.members_per_group_max);
        set!(
            config.commit_metadata_bytes_max,
            args.commit_metadata_bytes_max
        );
        set!(
            config.transaction_timeout_ms_max,
            args.transaction_timeout_ms_max
        );
        set!(config.transactional_ids_max, args.transactional_ids_max);
        set!(
            config.partitions_per_transaction_max,
            args.partitions_per_transaction_max
        );
        set!(config.listen_protocol, args.listen_protocol);
        set!(config.kafka_listen_protocol, args.kafka_listen_protocol);
        set!(
            config.sasl_enabled_mechanisms,
            args.sasl_enabled_mechanisms.clone()
        );
        set!(config.authorizer_enabled, args.authorizer_enabled);
        set!(config.super_users, args.super_users.clone());
        set!(
            config.allow_everyone_if_no_acl_found,
            args.allow_everyone_if_no_acl_found
        );
        set!(config.acl_bindings_max, args.acl_bindings_max);
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("connections_max", self.connections_max),
            ("connections_per_ip_max", self.connections_per_ip_max),
            ("idle_timeout_ms", self.idle_timeout_ms as usize),
            ("request_timeout_ms", self.request_timeout_ms as usize),
            ("write_timeout_ms", self.write_timeout_ms as usize),
            ("in_flight_bytes_max", self.in_flight_bytes_max),
            ("fetch_bytes_max", self.fetch_bytes_max),
            (
                "in_flight_per_connection_max",
                self.in_flight_per_connection_max,
            ),
            ("frame_bytes_max", self.frame_bytes_max),
            ("default_partitions", self.default_partitions as usize),
            ("topics_max", self.topics_max as usize),
            (
                "partitions_per_topic_max",
                self.partitions_per_topic_max as usize,
            ),
            ("partitions_max", self.partitions_max as usize),
            ("groups_max", self.groups_max),
            (
                "transaction_timeout_ms_max",
                self.transaction_timeout_ms_max as usize,
            ),
            ("transactional_ids_max", self.transactional_ids_max),
            (
                "partitions_per_transaction_max",
                self.partitions_per_transaction_max,
            ),
            ("members_per_group_max", self.members_per_group_max),
            ("open_sealed_segments_max", self.open_sealed_segments_max),
            ("acl_bindings_max", self.acl_bindings_max),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be above 0")));
            }
        }
        if self.default_partitions > self.partitions_per_topic_max {
            return Err(ConfigError::Invalid(format!(
                "default_partitions ({}) is more than partitions_per_topic_max ({})",
                self.default_partitions, self.partitions_per_topic_max
            )));
        }
        if self.frame_bytes_max < self.log.batch_bytes_max {
            return Err(ConfigError::Invalid(format!(
                "frame_bytes_max ({}) must hold the largest batch (log.batch_bytes_max = {})",
                self.frame_bytes_max, self.log.batch_bytes_max
            )));
        }
        if self.fetch_bytes_max < self.log.batch_bytes_max {
            return Err(ConfigError::Invalid(format!(
                "fetch_bytes_max ({}) must hold the largest batch (log.batch_bytes_max = {})",
                self.fetch_bytes_max, self.log.batch_bytes_max
            )));
        }
        // One request frame, or one fetch answer, must fit in the budget by itself.
        let needed = self.frame_bytes_max.max(self.fetch_bytes_max);
        if self.in_flight_bytes_max < needed {
            return Err(ConfigError::Invalid(format!(
                "in_flight_bytes_max ({}) must hold the largest frame and the largest fetch \
                 answer ({needed})",
                self.in_flight_bytes_max
            )));
        }
        self.validate_listeners()?;
        self.sasl_mechanisms()?;
        let iterations =
            strand_client::scram::ITERATIONS_MIN..=strand_client::scram::ITERATIONS_MAX;
        if !iterations.contains(&self.scram_iterations_default) {
            return Err(ConfigError::Invalid(format!(
                "scram_iterations_default ({}) must be within {}..={}",
                self.scram_iterations_default,
                iterations.start(),
                iterations.end()
            )));
        }
        if self.users_max == 0 || self.user_name_bytes_max == 0 {
            return Err(ConfigError::Invalid(
                "users_max and user_name_bytes_max must be above 0".into(),
            ));
        }
        self.authorizer()?;
        if let Some(jwt) = &self.http_jwt {
            jwt.validate()
                .map_err(|e| ConfigError::Invalid(format!("http_jwt: {e}")))?;
        }
        if self.http_metrics_require_auth && self.http_jwt.is_none() {
            return Err(ConfigError::Invalid(
                "http_metrics_require_auth needs http_jwt (an issuer, an audience and keys)".into(),
            ));
        }
        self.log.validate().map_err(ConfigError::Invalid)
    }

    /// `sasl_enabled_mechanisms`, parsed: known names, each once, at least one.
    pub fn sasl_mechanisms(&self) -> Result<Vec<strand_client::Mechanism>, ConfigError> {
        let mut mechanisms = Vec::new();
        for name in &self.sasl_enabled_mechanisms {
            let m: strand_client::Mechanism = name
                .trim()
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("sasl_enabled_mechanisms: {e}")))?;
            if mechanisms.contains(&m) {
                return Err(ConfigError::Invalid(format!(
                    "sasl_enabled_mechanisms names {m} twice"
                )));
            }
            mechanisms.push(m);
        }
        if mechanisms.is_empty() {
            return Err(ConfigError::Invalid(
                "sasl_enabled_mechanisms must name at least one mechanism".into(),
            ));
        }
        Ok(mechanisms)
    }

    /// The user store's settings.
    pub fn users_config(&self) -> crate::security::users::UsersConfig {
        crate::security::users::UsersConfig {
            iterations_default: self.scram_iterations_default,
            users_max: self.users_max,
            name_bytes_max: self.user_name_bytes_max,
        }
    }

    /// The authorizer's settings, with `super_users` parsed.
    pub fn authorizer(&self) -> Result<AuthorizerConfig, ConfigError> {
        let super_users = self
            .super_users
            .iter()
            .map(|p| {
                p.trim()
                    .parse::<Principal>()
                    .map_err(|e| ConfigError::Invalid(format!("super_users: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuthorizerConfig {
            enabled: self.authorizer_enabled,
            super_users,
            allow_everyone_if_no_acl_found: self.allow_everyone_if_no_acl_found,
            acl_bindings_max: self.acl_bindings_max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strand.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/strand\"\nlisten = \"0.0.0.0:7000\"\n[log]\nfsync = \"always\"\nretention_bytes = 1000000\n",
        )
        .unwrap();
        let args = BrokerArgs::parse_from([
            "strand-broker",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--retention-ms",
            "-1",
        ]);
        let config = BrokerConfig::load(&args).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/strand"));
        assert_eq!(config.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.http_listen, BrokerConfig::default().http_listen);
        assert_eq!(config.log.fsync, FsyncPolicy::Always);
        assert_eq!(config.log.retention_bytes, Some(1_000_000));
        assert_eq!(config.log.retention_ms, None);
    }

    #[test]
    fn limits_come_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strand.toml");
        std::fs::write(
            &file,
            "topics_max = 10\ngroups_max = 3\ncommit_metadata_bytes_max = 100\n",
        )
        .unwrap();
        let args = BrokerArgs::parse_from([
            "strand-broker",
            "--config",
            file.to_str().unwrap(),
            "--groups-max",
            "5",
            "--partitions-max",
            "64",
            "--metadata-auto-create-topics-max",
            "2",
        ]);
        let config = BrokerConfig::load(&args).unwrap();
        assert_eq!(config.topics_max, 10);
        assert_eq!(config.groups_max, 5);
        assert_eq!(config.partitions_max, 64);
        assert_eq!(config.metadata_auto_create_topics_max, 2);
        assert_eq!(config.commit_metadata_bytes_max, 100);
        assert_eq!(config.members_per_group_max, 1000);
        let config = BrokerConfig {
            default_partitions: 8,
            partitions_per_topic_max: 4,
            ..BrokerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("partitions_per_topic_max"), "{err}");
    }

    #[test]
    fn sasl_settings_come_from_the_file_and_flags_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strand.toml");
        std::fs::write(
            &file,
            "kafka_listen_protocol = \"SASL_PLAINTEXT\"\nsasl_enabled_mechanisms = [\"SCRAM-SHA-512\"]\nscram_iterations_default = 8192\n",
        )
        .unwrap();
        let args = BrokerArgs::parse_from([
            "strand-broker",
            "--config",
            file.to_str().unwrap(),
            "--listen-protocol",
            "sasl_plaintext",
        ]);
        let config = BrokerConfig::load(&args).unwrap();
        assert_eq!(config.listen_protocol, SecurityProtocol::SaslPlaintext);
        assert_eq!(
            config.kafka_listen_protocol,
            SecurityProtocol::SaslPlaintext
        );
        assert_eq!(
            config.sasl_mechanisms().unwrap(),
            vec!["SCRAM-SHA-512".parse().unwrap()]
        );
        assert_eq!(config.users_config().iterations_default, 8192);
        let args = BrokerArgs::parse_from([
            "strand-broker",
            "--sasl-enabled-mechanisms",
            "PLAIN,SCRAM-SHA-256",
        ]);
        assert_eq!(
            BrokerConfig::load(&args)
                .unwrap()
                .sasl_mechanisms()
                .unwrap()
                .len(),
            2
        );
        for (bad, named) in [
            (
                BrokerConfig {
                    sasl_enabled_mechanisms: vec!["GSSAPI".into()],
                    ..BrokerConfig::default()
                },
                "GSSAPI",
            ),
            (
                BrokerConfig {
                    sasl_enabled_mechanisms: vec![],
                    ..BrokerConfig::default()
                },
                "at least one",
            ),
            (
                BrokerConfig {
                    sasl_enabled_mechanisms: vec!["PLAIN".into(), "plain".into()],
                    ..BrokerConfig::default()
                },
                "twice",
            ),
            (
                BrokerConfig {
                    scram_iterations_default: 1000,
                    ..BrokerConfig::default()
                },
                "scram_iterations_default",
            ),
            (
                BrokerConfig {
                    kafka_listen_protocol: SecurityProtocol::SaslSsl,
                    ..BrokerConfig::default()
                },
                "tls.cert_file",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(named), "{err}");
        }
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strand.toml");
        std::fs::write(&file, "listn = \"x\"\n").unwrap();
        let err = BrokerConfig::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("listn"), "{err}");
        assert!(FsyncPolicy::from_str("sometimes").is_err());
        assert_eq!(
            FsyncPolicy::from_str("250ms"),
            Ok(FsyncPolicy::IntervalMs(250))
        );
        let config = BrokerConfig {
            connections_max: 0,
            ..BrokerConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("connections_max"));
        // The budget must hold the largest frame and the largest fetch answer.
        let config = BrokerConfig {
            in_flight_bytes_max: 1 << 20,
            ..BrokerConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("in_flight_bytes_max"));
    }

    #[test]
    fn listeners_and_tls_come_from_the_file_and_flags() {
        // By default one PLAINTEXT listener per kind, on the single addresses.
        let config = BrokerConfig::default();
        assert_eq!(
            config.listeners(ListenerKind::Kafka),
            vec!["PLAINTEXT://127.0.0.1:9092".parse().unwrap()]
        );
        assert!(!config.uses_tls());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strand.toml");
        std::fs::write(
            &file,
            "kafka_listeners = [\"PLAINTEXT://127.0.0.1:9092\", \"SSL://0.0.0.0:9093\"]\n\
             kafka_advertised_listeners = [\"SSL://broker.example:9093\"]\n\
             [tls]\ncert_file = \"/etc/strand/broker.pem\"\nkey_file = \"/etc/strand/broker.key\"\n",
        )
        .unwrap();
        let args = BrokerArgs::parse_from([
            "strand-broker",
            "--config",
            file.to_str().unwrap(),
            "--native-listeners",
            "PLAINTEXT://127.0.0.1:7171,SASL_SSL://0.0.0.0:7172",
            "--tls-client-ca-file",
            "/etc/strand/ca.pem",
            "--tls-client-auth",
            "requested",
        ]);
        let config = BrokerConfig::load(&args).unwrap();
        assert_eq!(
            config.listeners(ListenerKind::Native)[1].to_string(),
            "SASL_SSL://0.0.0.0:7172"
        );
        assert_eq!(config.listeners(ListenerKind::Kafka).len(), 2);
        assert_eq!(
            config.kafka_advertised_listeners[0].to_string(),
            "SSL://broker.example:9093"
        );
        assert_eq!(config.tls.client_auth, ClientAuth::Requested);
        assert_eq!(
            config.tls.cert_file,
            Some(PathBuf::from("/etc/strand/broker.pem"))
        );
        assert!(config.uses_tls());
        // A listener list that does not parse names the entry.
        let err = BrokerArgs::try_parse_from([
            "strand-broker",
            "--kafka-listeners",
            "PLAINTEXT://127.0.0.1:1,TLS://127.0.0.1:2",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("TLS"), "{err}");
        assert!("SSL://:1".parse::<AdvertisedListener>().is_err());
        assert!("SSL://host".parse::<AdvertisedListener>().is_err());
        assert!("host:1".parse::<AdvertisedListener>().is_err());
    }

    #[test]
    fn authorizer_settings_come_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strand.toml");
        std::fs::write(
            &file,
            "authorizer_enabled = true\nsuper_users = [\"User:admin\"]\n",
        )
        .unwrap();
        let args = BrokerArgs::parse_from([
            "strand-broker",
            "--config",
            file.to_str().unwrap(),
            "--allow-everyone-if-no-acl-found",
            "true",
        ]);
        let authorizer = BrokerConfig::load(&args).unwrap().authorizer().unwrap();
        assert!(authorizer.enabled);
        assert!(authorizer.allow_everyone_if_no_acl_found);
        assert_eq!(authorizer.super_users, vec![Principal::user("admin")]);
        let args = BrokerArgs::parse_from(["strand-broker", "--super-users", "User:a,User:b"]);
        let authorizer = BrokerConfig::load(&args).unwrap().authorizer().unwrap();
        assert!(!authorizer.enabled, "off by default");
        assert_eq!(authorizer.super_users.len(), 2);
        let args = BrokerArgs::parse_from(["strand-broker", "--super-users", "admin"]);
        let err = BrokerConfig::load(&args).unwrap_err().to_string();
        assert!(err.contains("super_users"), "{err}");
    }

    #[test]
    fn http_jwt_comes_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strand.toml");
        std::fs::write(
            &file,
            "http_metrics_require_auth = true\n[http_jwt]\nissuer = \"https://idp\"\naudience = \"strand\"\njwks_file = \"/etc/strand/jwks.json\"\n",
        )
        .unwrap();
        let args = BrokerArgs::parse_from([
            "strand-broker",
            "--config",
            file.to_str().unwrap(),
            "--http-jwt-audience",
            "strand-broker",
            "--http-jwt-key-file",
            "/a.pem",
            "--http-jwt-key-file",
            "/b.pem",
        ]);
        let config = BrokerConfig::load(&args).unwrap();
        let jwt = config.http_jwt.unwrap();
        assert_eq!(jwt.issuer, "https://idp");
        assert_eq!(jwt.audience, "strand-broker");
        assert_eq!(
            jwt.key_files,
            vec![PathBuf::from("/a.pem"), PathBuf::from("/b.pem")]
        );
        assert_eq!(jwt.jwks_file, Some(PathBuf::from("/etc/strand/jwks.json")));
        assert_eq!(jwt.leeway_s, 30);
        assert!(config.http_metrics_require_auth);

        // Half a JWT configuration, or protected metrics without one, is refused.
        let args = BrokerArgs::parse_from(["strand-broker", "--http-jwt-issuer", "x"]);
        let err = BrokerConfig::load(&args).unwrap_err().to_string();
        assert!(
            err.contains("audience") && err.contains("key file"),
            "{err}"
        );
        let args = BrokerArgs::parse_from(["strand-broker", "--http-metrics-require-auth", "true"]);
        let err = BrokerConfig::load(&args).unwrap_err().to_string();
        assert!(err.contains("needs http_jwt"), "{err}");
    }

    #[test]
    fn connection_limits_come_from_flags() {
        let args = BrokerArgs::parse_from([
            "strand-broker",
            "--connections-per-ip-max",
            "7",
            "--idle-timeout-ms",
            "1000",
            "--request-timeout-ms",
            "200",
            "--write-timeout-ms",
            "300",
            "--in-flight-bytes-max",
            "67108864",
            "--fetch-bytes-max",
            "8388608",
        ]);
        let config = BrokerConfig::load(&args).unwrap();
        assert_eq!(config.connections_per_ip_max, 7);
        assert_eq!(config.idle_timeout_ms, 1000);
        assert_eq!(config.request_timeout_ms, 200);
        assert_eq!(config.write_timeout_ms, 300);
        assert_eq!(config.in_flight_bytes_max, 64 << 20);
        assert_eq!(config.fetch_bytes_max, 8 << 20);
    }
}
