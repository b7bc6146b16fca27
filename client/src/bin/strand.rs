//! `strand`: the command-line client, in the spirit of kcat and kafka-topics.
//!
//! ```text
//! seq 1 100000 | strand produce t
//! strand consume t --from earliest --count 100000
//! strand produce t -H source=cli --key-separator : --empty-as-null < changes.txt
//! strand consume t --from @-10m --format json
//! strand group reset-offsets billing --to @1764700000000
//! strand --user admin --password-file admin.pw user create alice --password-file alice.pw
//! strand acl add --allow-principal User:alice --operation Read --topic orders
//! strand saga list --state failed --from @-1h
//! strand saga show 0193c0de-...
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use base64::Engine as _;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use strand_client::consumer::Delivery;
use strand_client::native::messages::{AclBinding, AclBindingFilter, OffsetEntry, OffsetQuery};
use strand_client::native::{Request, ResponseBody, TopicDescription};
use strand_client::{
    Acks, Client, ClientConfig, ClientTlsConfig, Consumer, ConsumerConfig, GroupConfig,
    GroupConsumer, OffsetReset, Producer, ProducerConfig, ProducerRecord, SaslConfig, StartFrom,
    TopicSettings,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

#[path = "strand/saga.rs"]
mod saga;

#[derive(Debug, Parser)]
#[command(
    name = "strand",
    version,
    about = "Command-line client for the Strand broker"
)]
struct Cli {
    /// Broker address (native protocol).
    #[arg(
        long,
        env = "STRAND_BROKER",
        default_value = "127.0.0.1:7171",
        global = true
    )]
    broker: String,
    /// Connect over TLS, verifying the broker's certificate against this PEM CA bundle.
    #[arg(long, env = "STRAND_TLS_CA", value_name = "FILE", global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate to present (needs --tls-ca and --tls-key).
    #[arg(
        long,
        env = "STRAND_TLS_CERT",
        value_name = "FILE",
        global = true,
        requires_all = ["tls_ca", "tls_key"]
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "STRAND_TLS_KEY",
        value_name = "FILE",
        global = true,
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Name the broker's certificate must carry [default: the host of --broker].
    #[arg(
        long,
        env = "STRAND_TLS_SERVER_NAME",
        value_name = "NAME",
        global = true,
        requires = "tls_ca"
    )]
    tls_server_name: Option<String>,
    /// SASL user to authenticate as (for a broker whose native listener uses SASL). Given
    /// before the command.
    #[arg(long, env = "STRAND_USER")]
    user: Option<String>,
    /// File whose first line is the SASL password (needs --user).
    #[arg(
        long,
        env = "STRAND_PASSWORD_FILE",
        value_name = "FILE",
        requires = "user"
    )]
    password_file: Option<std::path::PathBuf>,
    /// SASL mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN.
    #[arg(long, env = "STRAND_SASL_MECHANISM", default_value = "SCRAM-SHA-512")]
    sasl_mechanism: String,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The client settings the flags ask for: TLS when --tls-ca is given.
    fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::default();
        if let Some(username) = self.user.clone() {
            let Some(file) = &self.password_file else {
                bail!("--user needs --password-file (or STRAND_PASSWORD_FILE)");
            };
            config.connection.sasl = Some(SaslConfig {
                mechanism: self.sasl_mechanism.parse().map_err(anyhow::Error::msg)?,
                username,
                password: strand_client::sasl::read_password_file(file)
                    .map_err(anyhow::Error::msg)?,
            });
        }
        config.connection.tls = self.tls_ca.as_ref().map(|ca_file| ClientTlsConfig {
            ca_file: ca_file.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        });
        Ok(config)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Produce one record per line of standard input (or of --file). Lines are bytes, not
    /// necessarily UTF-8.
    Produce {
        topic: String,
        /// Split each line at the first SEP into key and value.
        #[arg(long, value_name = "SEP")]
        key_separator: Option<String>,
        /// A header for every record, KEY=VALUE (repeatable; VALUE may be empty).
        #[arg(short = 'H', long = "header", value_name = "KEY=VALUE")]
        headers: Vec<String>,
        /// Send an empty value as a null one: a tombstone, which compaction uses to delete
        /// the key (as kcat -Z).
        #[arg(short = 'Z', long)]
        empty_as_null: bool,
        /// Read records from FILE instead of standard input.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// The whole input is one record's value, byte for byte (binary-safe; no key).
        #[arg(long, conflicts_with = "key_separator")]
        whole: bool,
        #[arg(long, value_enum, default_value_t = AcksArg::Leader)]
        acks: AcksArg,
        /// Send every record to this partition instead of partitioning by key.
        #[arg(long)]
        partition: Option<u32>,
        /// Batch linger in milliseconds.
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
    },
    /// Print records of a topic, one per line. Raw output writes values byte for byte; JSON
    /// output carries keys, values and headers as text when they are UTF-8 and as base64
    /// (`value_base64`, ...) when they are not.
    Consume {
        topic: String,
        /// earliest, latest, an offset, or @TIME: the first record at or after TIME, in ms
        /// since the epoch or relative to now (@-30s, @-10m, @-2h, @-1d).
        #[arg(long, default_value = "earliest")]
        from: String,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Keep waiting for new records instead of stopping at the end.
        #[arg(long)]
        follow: bool,
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
        /// Receive records by push subscription instead of polling.
        #[arg(long)]
        push: bool,
        /// Consume as a member of this consumer group (partitions assigned by the broker,
        /// offsets committed); --from then applies only where the group has no commit.
        #[arg(long)]
        group: Option<String>,
    },
    /// List, describe and reset consumer groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Create, delete and list SCRAM users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Add, list and remove ACLs, with kafka-acls' flags.
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
    /// Sagas and definitions, through the orchestrator's HTTP API (`strand-saga`).
    Saga(saga::SagaArgs),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Adds a user, or replaces its credential for the mechanism. The password is salted
    /// here; the broker never sees it.
    Create {
        name: String,
        /// File whose first line is the new user's password.
        #[arg(long, value_name = "FILE")]
        password_file: std::path::PathBuf,
        /// SCRAM-SHA-512 or SCRAM-SHA-256 (run twice for both).
        #[arg(long, default_value = "SCRAM-SHA-512")]
        mechanism: String,
        /// PBKDF2 iterations, 4096 to 16384.
        #[arg(long, default_value_t = strand_client::scram::ITERATIONS_MIN)]
        iterations: u32,
    },
    /// Deletes a user (every mechanism, or only --mechanism).
    Delete {
        name: String,
        #[arg(long)]
        mechanism: Option<String>,
    },
    List,
}

#[derive(Debug, Subcommand)]
enum AclCommand {
    /// Add a binding for every principal x resource x operation given.
    Add(AclArgs),
    /// List the bindings that match the flags (all of them with none).
    List(AclArgs),
    /// Remove the bindings that match the flags, and print them.
    Remove(AclArgs),
}

/// The flags kafka-acls takes, for all three subcommands.
#[derive(Debug, clap::Args)]
struct AclArgs {
    /// Principal to allow, such as User:alice or User:* (repeatable).
    #[arg(long, value_name = "PRINCIPAL")]
    allow_principal: Vec<String>,
    /// Principal to deny (repeatable).
    #[arg(long, value_name = "PRINCIPAL")]
    deny_principal: Vec<String>,
    /// Host the allow applies to: an IP address or * (repeatable) [default: *]
    #[arg(long, value_name = "HOST")]
    allow_host: Vec<String>,
    /// Host the deny applies to (repeatable) [default: *]
    #[arg(long, value_name = "HOST")]
    deny_host: Vec<String>,
    /// Read, Write, Create, Delete, Alter, Describe, ClusterAction, DescribeConfigs,
    /// AlterConfigs, IdempotentWrite or All (repeatable) [add: required; list, remove: any]
    #[arg(long, value_name = "OPERATION")]
    operation: Vec<String>,
    /// Topic resource (repeatable); * names every topic.
    #[arg(long)]
    topic: Vec<String>,
    /// Consumer group resource (repeatable).
    #[arg(long)]
    group: Vec<String>,
    /// Transactional id resource (repeatable).
    #[arg(long)]
    transactional_id: Vec<String>,
    /// The cluster resource.
    #[arg(long)]
    cluster: bool,
    /// literal or prefixed; list and remove also take any and match.
    #[arg(long, value_enum, default_value_t = PatternArg::Literal)]
    resource_pattern_type: PatternArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PatternArg {
    Literal,
    Prefixed,
    Any,
    Match,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    List,
    /// Members, assignments, committed offsets and lag.
    Describe {
        group: String,
    },
    /// Delete a group without members, with its committed offsets.
    Delete {
        group: String,
    },
    /// Move the group's committed offsets (only while the group has no members).
    ResetOffsets {
        group: String,
        /// earliest, latest, an offset, or @TIME (as consume --from): each partition's first
        /// record at or after TIME.
        #[arg(long)]
        to: String,
        /// The topic to reset (all of it); default: every topic the group has commits for.
        #[arg(long)]
        topic: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Retention by age in ms (-1: keep forever).
        #[arg(long, allow_negative_numbers = true)]
        retention_ms: Option<i64>,
        /// Retention by size per partition in bytes (-1: no limit).
        #[arg(long, allow_negative_numbers = true)]
        retention_bytes: Option<i64>,
        /// Keep only the latest record per key.
        #[arg(long)]
        compact: bool,
    },
    List,
    Describe {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AcksArg {
    None,
    Leader,
    Durable,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Raw,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("strand: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strand: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The saga commands talk to the orchestrator's HTTP API, not to the broker.
    if let Command::Saga(args) = cli.command {
        return saga::run(args).await;
    }
    let client = Client::connect(cli.broker.clone(), cli.client_config()?)
        .await
        .with_context(|| format!("connecting to {}", cli.broker))?;
    match cli.command {
        Command::Saga(_) => unreachable!("answered before connecting"),
        Command::Topic { command } => topic(client, command).await,
        Command::Produce {
            topic,
            key_separator,
            headers,
            empty_as_null,
            file,
            whole,
            acks,
            partition,
            linger_ms,
        } => {
            let headers = headers
                .iter()
                .map(|h| match h.split_once('=') {
                    Some((k, v)) if !k.is_empty() => {
                        Ok((k.to_string(), Some(Bytes::from(v.to_string()))))
                    }
                    _ => bail!("--header must be KEY=VALUE, got {h:?}"),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let input: Box<dyn AsyncRead + Unpin + Send> = match &file {
                Some(path) => Box::new(
                    tokio::fs::File::open(path)
                        .await
                        .with_context(|| format!("opening {}", path.display()))?,
                ),
                None => Box::new(tokio::io::stdin()),
            };
            let options = ProduceOptions {
                key_separator,
                headers,
                empty_as_null,
                whole,
                acks,
                partition,
                linger_ms,
            };
            produce(client, topic, options, input).await
        }
        Command::Consume {
            topic,
            from,
            count,
            follow,
            format,
            partition,
            push,
            group: Some(group),
        } => {
            if partition.is_some() || push {
                bail!("--group cannot be combined with --partition or --push");
            }
            consume_group(client, topic, group, from, count, follow, format).await
        }
        Command::Consume {
            topic,
            from,
            count,
            follow,
            format,
            partition,
            push,
            group: None,
        } => consume(client, topic, from, count, follow, format, partition, push).await,
        Command::Group { command } => group(client, command).await,
        Command::User { command } => user(client, command).await,
        Command::Acl { command } => acl(client, command).await,
    }
}

async fn user(client: Client, command: UserCommand) -> anyhow::Result<()> {
    use strand_client::scram::ScramMechanism;
    let admin = client.admin();
    let mechanism = |m: &str| m.parse::<ScramMechanism>().map_err(anyhow::Error::msg);
    match command {
        UserCommand::Create {
            name,
            password_file,
            mechanism: m,
            iterations,
        } => {
            let m = mechanism(&m)?;
            let password = strand_client::sasl::read_password_file(&password_file)
                .map_err(anyhow::Error::msg)?;
            admin.upsert_user(&name, m, &password, iterations).await?;
            println!("user {name}: {m} credential stored");
        }
        UserCommand::Delete { name, mechanism: m } => {
            let m = m.as_deref().map(mechanism).transpose()?;
            admin.delete_user(&name, m).await?;
            println!("deleted user {name}");
        }
        UserCommand::List => {
            for user in admin.list_users().await? {
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

/// Kafka's codes, as the native protocol carries them.
const ANY: u8 = 1;
const DENY: u8 = 2;
const ALLOW: u8 = 3;
const OPERATIONS: [(&str, u8); 11] = [
    ("All", 2),
    ("Read", 3),
    ("Write", 4),
    ("Create", 5),
    ("Delete", 6),
    ("Alter", 7),
    ("Describe", 8),
    ("ClusterAction", 9),
    ("DescribeConfigs", 10),
    ("AlterConfigs", 11),
    ("IdempotentWrite", 12),
];
const RESOURCE_TYPES: [(&str, u8); 4] = [
    ("Topic", 2),
    ("Group", 3),
    ("Cluster", 4),
    ("TransactionalId", 5),
];

fn operation_code(name: &str) -> anyhow::Result<u8> {
    let wanted: String = name
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    OPERATIONS
        .iter()
        .find(|(n, _)| n.to_ascii_lowercase() == wanted)
        .map(|(_, code)| *code)
        .with_context(|| {
            let names: Vec<_> = OPERATIONS.iter().map(|(n, _)| *n).collect();
            format!("operation {name:?} is not one of {}", names.join(", "))
        })
}

fn code_name(table: &[(&'static str, u8)], code: u8) -> String {
    table
        .iter()
        .find(|(_, c)| *c == code)
        .map_or_else(|| format!("#{code}"), |(n, _)| n.to_string())
}

impl AclArgs {
    /// Every resource the flags name, as (type code, name).
    fn resources(&self) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        out.extend(self.topic.iter().map(|t| (2, t.clone())));
        out.extend(self.group.iter().map(|g| (3, g.clone())));
        if self.cluster {
            out.push((4, "kafka-cluster".to_string()));
        }
        out.extend(self.transactional_id.iter().map(|t| (5, t.clone())));
        out
    }

    fn operations(&self) -> anyhow::Result<Vec<u8>> {
        self.operation.iter().map(|o| operation_code(o)).collect()
    }

    /// (permission, principal, hosts) for every principal given.
    fn principals(&self) -> Vec<(u8, &str, Vec<String>)> {
        let hosts = |given: &[String]| {
            if given.is_empty() {
                vec!["*".to_string()]
            } else {
                given.to_vec()
            }
        };
        let mut out = Vec::new();
        for p in &self.allow_principal {
            out.push((ALLOW, p.as_str(), hosts(&self.allow_host)));
        }
        for p in &self.deny_principal {
            out.push((DENY, p.as_str(), hosts(&self.deny_host)));
        }
        out
    }

    fn bindings(&self) -> anyhow::Result<Vec<AclBinding>> {
        let pattern_type = match self.resource_pattern_type {
            PatternArg::Literal => 3,
            PatternArg::Prefixed => 4,
            other => {
                bail!("acl add takes --resource-pattern-type literal or prefixed, not {other:?}")
            }
        };
        let resources = self.resources();
        let operations = self.operations()?;
        let principals = self.principals();
        if resources.is_empty() {
            bail!("name a resource: --topic, --group, --transactional-id or --cluster");
        }
        if principals.is_empty() {
            bail!("name a principal: --allow-principal or --deny-principal");
        }
        if operations.is_empty() {
            bail!("name an operation: --operation (All for every operation)");
        }
        let mut out = Vec::new();
        for (resource_type, resource_name) in &resources {
            for (permission, principal, hosts) in &principals {
                for host in hosts {
                    for operation in &operations {
                        out.push(AclBinding {
                            resource_type: *resource_type,
                            resource_name: resource_name.clone(),
                            pattern_type,
                            principal: principal.to_string(),
                            host: host.clone(),
                            operation: *operation,
                            permission: *permission,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Filters for list and remove: the cross product of what is given, "any" for what is not.
    fn filters(&self) -> anyhow::Result<Vec<AclBindingFilter>> {
        let pattern_type = match self.resource_pattern_type {
            PatternArg::Any => 1,
            PatternArg::Match => 2,
            PatternArg::Literal => 3,
            PatternArg::Prefixed => 4,
        };
        let resources: Vec<(u8, Option<String>, u8)> = match self.resources() {
            // No resource named: every binding, whatever its pattern type.
            r if r.is_empty() => vec![(ANY, None, ANY)],
            r => r
                .into_iter()
                .map(|(t, name)| (t, Some(name), pattern_type))
                .collect(),
        };
        let operations = match self.operations()? {
            ops if ops.is_empty() => vec![ANY],
            ops => ops,
        };
        let principals: Vec<(u8, Option<String>, Vec<Option<String>>)> =
            if self.allow_principal.is_empty() && self.deny_principal.is_empty() {
                vec![(ANY, None, vec![None])]
            } else {
                let hosts = |given: &[String]| {
                    if given.is_empty() {
                        vec![None]
                    } else {
                        given.iter().cloned().map(Some).collect()
                    }
                };
                self.allow_principal
                    .iter()
                    .map(|p| (ALLOW, Some(p.clone()), hosts(&self.allow_host)))
                    .chain(
                        self.deny_principal
                            .iter()
                            .map(|p| (DENY, Some(p.clone()), hosts(&self.deny_host))),
                    )
                    .collect()
            };
        let mut out = Vec::new();
        for (resource_type, resource_name, pattern_type) in &resources {
            for (permission, principal, hosts) in &principals {
                for host in hosts {
                    for operation in &operations {
                        out.push(AclBindingFilter {
                            resource_type: *resource_type,
                            resource_name: resource_name.clone(),
                            pattern_type: *pattern_type,
                            principal: principal.clone(),
                            host: host.clone(),
                            operation: *operation,
                            permission: *permission,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

fn print_acl(b: &AclBinding) {
    let pattern = match b.pattern_type {
        3 => "literal",
        4 => "prefixed",
        _ => "?",
    };
    let permission = if b.permission == ALLOW {
        "Allow"
    } else {
        "Deny"
    };
    println!(
        "{}\t{}:{}\t{}\t{}\t{}\thost={}",
        code_name(&RESOURCE_TYPES, b.resource_type),
        pattern,
        b.resource_name,
        permission,
        b.principal,
        code_name(&OPERATIONS, b.operation),
        b.host
    );
}

async fn acl(client: Client, command: AclCommand) -> anyhow::Result<()> {
    let admin = client.admin();
    match command {
        AclCommand::Add(args) => {
            let bindings = args.bindings()?;
            let n = bindings.len();
            admin.create_acls(bindings.clone()).await?;
            for b in &bindings {
                print_acl(b);
            }
            eprintln!("added {n} ACL binding(s)");
        }
        AclCommand::List(args) => {
            let mut seen = std::collections::BTreeSet::new();
            for filter in args.filters()? {
                seen.extend(admin.describe_acls(filter).await?);
            }
            for b in &seen {
                print_acl(b);
            }
        }
        AclCommand::Remove(args) => {
            let removed = admin.delete_acls(args.filters()?).await?;
            for b in &removed {
                print_acl(b);
            }
            eprintln!("removed {} ACL binding(s)", removed.len());
        }
    }
    Ok(())
}

async fn topic(client: Client, command: TopicCommand) -> anyhow::Result<()> {
    let admin = client.admin();
    match command {
        TopicCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            compact,
        } => {
            let settings = TopicSettings {
                partitions,
                compact,
                retention_ms,
                retention_bytes,
                segment_bytes: None,
            };
            admin.create_topic(&name, settings).await?;
            println!("created topic {name} with {partitions} partitions");
        }
        TopicCommand::List => {
            for topic in admin.list_topics().await? {
                println!("{}", topic.name);
            }
        }
        TopicCommand::Describe { name } => print_description(&admin.describe_topic(&name).await?),
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

fn print_description(topic: &TopicDescription) {
    let limit = |v: i64| {
        if v < 0 {
            "none".to_string()
        } else {
            v.to_string()
        }
    };
    println!(
        "topic {}  partitions {}  compact {}  retention_ms {}  retention_bytes {}",
        topic.name,
        topic.partitions.len(),
        topic.compact,
        limit(topic.retention_ms),
        limit(topic.retention_bytes)
    );
    println!(
        "{:>9} {:>16} {:>16} {:>12}",
        "partition", "log_start", "high_watermark", "records"
    );
    for p in &topic.partitions {
        println!(
            "{:>9} {:>16} {:>16} {:>12}",
            p.partition,
            p.log_start_offset,
            p.high_watermark,
            p.high_watermark - p.log_start_offset
        );
    }
}

/// What `strand produce` was asked to do.
struct ProduceOptions {
    key_separator: Option<String>,
    headers: Vec<(String, Option<Bytes>)>,
    empty_as_null: bool,
    whole: bool,
    acks: AcksArg,
    partition: Option<u32>,
    linger_ms: u64,
}

/// The most a `--whole` input may be: one record, which the broker's batch limit bounds
/// anyway; reading more would only fill memory.
const WHOLE_INPUT_BYTES_MAX: u64 = 64 << 20;

async fn produce(
    client: Client,
    topic: String,
    options: ProduceOptions,
    input: Box<dyn AsyncRead + Unpin + Send>,
) -> anyhow::Result<()> {
    let acks = match options.acks {
        AcksArg::None => Acks::None,
        AcksArg::Leader => Acks::Leader,
        AcksArg::Durable => Acks::Durable,
    };
    // Fail early and clearly on an unknown topic.
    client
        .admin()
        .describe_topic(&topic)
        .await
        .with_context(|| format!("topic {topic}"))?;
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks,
            linger: std::time::Duration::from_millis(options.linger_ms),
            ..ProducerConfig::default()
        },
    );
    let record = |key: Option<&[u8]>, value: &[u8]| ProducerRecord {
        topic: topic.clone(),
        partition: options.partition,
        key: key.map(Bytes::copy_from_slice),
        value: if value.is_empty() && options.empty_as_null {
            None
        } else {
            Some(Bytes::copy_from_slice(value))
        },
        headers: options.headers.clone(),
        ..Default::default()
    };
    let mut deliveries = Vec::new();
    let mut n = 0u64;
    if options.whole {
        let mut value = Vec::new();
        input
            .take(WHOLE_INPUT_BYTES_MAX + 1)
            .read_to_end(&mut value)
            .await
            .context("reading the input")?;
        if value.len() as u64 > WHOLE_INPUT_BYTES_MAX {
            bail!("--whole input is larger than {WHOLE_INPUT_BYTES_MAX} bytes");
        }
        deliveries.push(producer.send(record(None, &value)).await?);
        n += 1;
    } else {
        let mut reader = BufReader::with_capacity(1 << 20, input);
        let mut line = Vec::new();
        let separator = options.key_separator.as_deref().map(str::as_bytes);
        loop {
            line.clear();
            if reader
                .read_until(b'\n', &mut line)
                .await
                .context("reading the input")?
                == 0
            {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            let (key, value) = match separator.and_then(|sep| split_once(&line, sep)) {
                Some((k, v)) => (Some(k), v),
                None => (None, &line[..]),
            };
            deliveries.push(producer.send(record(key, value)).await?);
            n += 1;
            // Check delivery reports as we go, so memory stays bounded on long inputs.
            if deliveries.len() >= 100_000 {
                for delivery in deliveries.drain(..) {
                    delivery.await?;
                }
            }
        }
    }
    producer.flush().await?;
    for delivery in deliveries {
        delivery.await?;
    }
    producer.close().await?;
    eprintln!("produced {n} records to {topic}");
    Ok(())
}

/// `line` split at the first `sep`.
fn split_once<'a>(line: &'a [u8], sep: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if sep.is_empty() {
        return None;
    }
    let at = line.windows(sep.len()).position(|w| w == sep)?;
    Some((&line[..at], &line[at + sep.len()..]))
}

/// A time given as `@MS` (ms since the epoch) or `@-N{s,m,h,d}` (that long before now), in
/// ms since the epoch; `None` when `spec` does not start with `@`.
fn parse_time(spec: &str) -> anyhow::Result<Option<i64>> {
    let Some(time) = spec.strip_prefix('@') else {
        return Ok(None);
    };
    let bad = || {
        anyhow::anyhow!(
            "{spec:?} is not a time: @MS (ms since the epoch) or @-N followed by s, m, h or d"
        )
    };
    if let Some(ago) = time.strip_prefix('-') {
        let (n, unit) = ago.split_at(ago.len().saturating_sub(1));
        let n: i64 = n.parse().map_err(|_| bad())?;
        let unit_ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_millis() as i64;
        return Ok(Some(now - n.checked_mul(unit_ms).ok_or_else(bad)?));
    }
    time.parse().map(Some).map_err(|_| bad())
}

fn print_record(
    out: &mut impl Write,
    format: Format,
    record: &strand_client::Record,
) -> std::io::Result<()> {
    match format {
        Format::Raw => {
            out.write_all(record.value.as_deref().unwrap_or_default())?;
            out.write_all(b"\n")
        }
        Format::Json => {
            let mut line = serde_json::json!({
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp,
            });
            put_bytes(&mut line, "key", record.key.as_deref());
            put_bytes(&mut line, "value", record.value.as_deref());
            let headers: Vec<serde_json::Value> = record
                .headers
                .iter()
                .map(|(k, v)| {
                    let mut header = serde_json::json!({});
                    put_bytes(&mut header, "key", Some(k));
                    put_bytes(&mut header, "value", v.as_deref());
                    header
                })
                .collect();
            line["headers"] = headers.into();
            writeln!(out, "{line}")
        }
    }
}

/// Sets `name` to the bytes as text when they are UTF-8 (null when absent), and otherwise to
/// null with `name_base64` holding them: nothing is lost or replaced.
fn put_bytes(object: &mut serde_json::Value, name: &str, bytes: Option<&[u8]>) {
    match bytes.map(std::str::from_utf8) {
        None => object[name] = serde_json::Value::Null,
        Some(Ok(text)) => object[name] = text.into(),
        Some(Err(_)) => {
            object[name] = serde_json::Value::Null;
            object[format!("{name}_base64")] = base64::engine::general_purpose::STANDARD
                .encode(bytes.unwrap_or_default())
                .into();
        }
    }
}

async fn consume_group(
    client: Client,
    topic: String,
    group: String,
    from: String,
    count: Option<u64>,
    follow: bool,
    format: Format,
) -> anyhow::Result<()> {
    let reset = match from.as_str() {
        "earliest" => OffsetReset::Earliest,
        "latest" => OffsetReset::Latest,
        other => bail!("with --group, --from must be earliest or latest, got {other:?}"),
    };
    client
        .admin()
        .describe_topic(&topic)
        .await
        .with_context(|| format!("topic {topic}"))?;
    let config = GroupConfig {
        reset,
        ..GroupConfig::new(group, vec![topic])
    };
    let mut consumer = GroupConsumer::join(client, config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut n = 0u64;
    // Without --count or --follow, stop once no record has come for a while: a member's end of
    // the log is a moving target (partitions move between members).
    let idle = std::time::Duration::from_secs(2);
    while count.is_none_or(|c| n < c) {
        let record = if follow || count.is_some() {
            consumer.next().await?
        } else {
            match tokio::time::timeout(idle, consumer.next()).await {
                Ok(record) => record?,
                Err(_) => break,
            }
        };
        print_record(&mut out, format, &record)?;
        n += 1;
        if follow {
            out.flush()?;
        }
    }
    out.flush()?;
    // What was printed is committed on the way out.
    consumer.close().await?;
    Ok(())
}

async fn group(client: Client, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List => {
            let ResponseBody::Groups(groups) = client.request(Request::ListGroups).await? else {
                bail!("unexpected answer from the broker");
            };
            for group in groups {
                println!("{group}");
            }
        }
        GroupCommand::Describe { group } => {
            let ResponseBody::Group(g) = client.request(Request::DescribeGroup { group }).await?
            else {
                bail!("unexpected answer from the broker");
            };
            println!(
                "group {}  state {}  generation {}  assignor {}",
                g.group, g.state, g.generation, g.assignor
            );
            for m in &g.members {
                let parts: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|(t, p)| format!("{t}/{p}"))
                    .collect();
                println!(
                    "member {}  client {}  partitions {}",
                    m.member_id,
                    m.client_id,
                    parts.join(",")
                );
            }
            println!(
                "{:<24} {:>9} {:>16} {:>12}",
                "topic", "partition", "committed", "lag"
            );
            for o in &g.offsets {
                println!(
                    "{:<24} {:>9} {:>16} {:>12}",
                    o.topic, o.partition, o.offset, o.lag
                );
            }
        }
        GroupCommand::Delete { group } => {
            client
                .admin()
                .delete_group(&group)
                .await
                .with_context(|| format!("deleting group {group}"))?;
            println!("deleted group {group}");
        }
        GroupCommand::ResetOffsets { group, to, topic } => {
            let admin = client.admin();
            let time = parse_time(&to)?;
            let topics: Vec<String> = match topic {
                Some(topic) => vec![topic],
                None => {
                    let ResponseBody::Group(g) = client
                        .request(Request::DescribeGroup {
                            group: group.clone(),
                        })
                        .await?
                    else {
                        bail!("unexpected answer from the broker");
                    };
                    let mut topics: Vec<String> =
                        g.offsets.iter().map(|o| o.topic.clone()).collect();
                    topics.dedup();
                    topics
                }
            };
            let mut offsets = Vec::new();
            for topic in topics {
                for p in admin.describe_topic(&topic).await?.partitions {
                    let offset = match (time, to.as_str()) {
                        // No record that new: the end, as Kafka's --to-datetime does.
                        (Some(ms), _) => admin
                            .list_offset(&topic, p.partition, OffsetQuery::Timestamp(ms))
                            .await?
                            .unwrap_or(p.high_watermark),
                        (None, "earliest") => p.log_start_offset,
                        (None, "latest") => p.high_watermark,
                        (None, n) => n.parse().map_err(|_| {
                            anyhow::anyhow!(
                                "--to must be earliest, latest, an offset or @TIME, got {n:?}"
                            )
                        })?,
                    };
                    offsets.push(OffsetEntry {
                        topic: topic.clone(),
                        partition: p.partition,
                        offset,
                        metadata: String::new(),
                    });
                }
            }
            let n = offsets.len();
            client
                .request(Request::OffsetCommit {
                    group: group.clone(),
                    member_id: String::new(),
                    generation: 0,
                    offsets,
                })
                .await
                .with_context(|| format!("resetting group {group} (it must have no members)"))?;
            println!("reset {n} partitions of group {group} to {to}");
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    client: Client,
    topic: String,
    from: String,
    count: Option<u64>,
    follow: bool,
    format: Format,
    partition: Option<u32>,
    push: bool,
) -> anyhow::Result<()> {
    let start = match (parse_time(&from)?, from.as_str()) {
        (Some(ms), _) => StartFrom::Timestamp(ms),
        (None, "earliest") => StartFrom::Earliest,
        (None, "latest") => StartFrom::Latest,
        (None, offset) => match offset.parse() {
            Ok(offset) => StartFrom::Offset(offset),
            Err(_) => bail!("--from must be earliest, latest, an offset or @TIME, got {offset:?}"),
        },
    };
    let description = client
        .admin()
        .describe_topic(&topic)
        .await
        .with_context(|| format!("topic {topic}"))?;
    // Without --follow, stop at the end of each partition as it was when we started.
    let ends: Vec<(u32, u64)> = description
        .partitions
        .iter()
        .filter(|p| partition.is_none_or(|only| only == p.partition))
        .map(|p| (p.partition, p.high_watermark))
        .collect();
    let partitions = partition.map(|p| vec![p]);
    let config = ConsumerConfig {
        start,
        delivery: if push {
            Delivery::Push
        } else {
            Delivery::Fetch
        },
        fetch_wait: std::time::Duration::from_millis(if follow { 1000 } else { 100 }),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, &topic, partitions, config).await?;
    let at_end = |consumer: &Consumer| {
        consumer
            .positions()
            .iter()
            .all(|(p, pos)| ends.iter().any(|(q, end)| q == p && pos >= end))
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        if !follow && count.is_none() && at_end(&consumer) {
            break;
        }
        let record = consumer.next().await?;
        print_record(&mut out, format, &record)?;
        n += 1;
        if follow {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(())
}
