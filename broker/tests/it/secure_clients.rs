//! Clients nobody here wrote against a broker with every listener secured and the authorizer on:
//! kcat (librdkafka 2.0.2), the `rdkafka` crate (librdkafka 2.12), kafka-python, aiokafka and
//! kafkajs, each over SASL_SSL with SCRAM-SHA-512 and over mutual TLS, and the `strand` CLI
//! over TLS with SCRAM. Allowed: produce, consume in a group and an admin request work.
//! Refused, and nothing changes: a wrong password, an unknown user, a certificate from another
//! CA, and a topic the ACLs deny.
//!
//! The broker: native and Kafka listeners each SASL_SSL and SSL (client certificates required
//! there), HTTPS; certificates from `docker/secure/gen-certs.sh`; users admin (a super user)
//! and alice, created offline with `strand-broker user add`; ACLs added by admin with
//! `strand acl add`: alice may do anything to topics `orders*`, read groups `order-*`, and is
//! denied topic `secret`, which admin creates with one record in it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig as KafkaClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::broker_process::{run_cli_with, spawn_until, strand_cli, BrokerProcess};

/// Debian's interpreter, where python3-kafka lives and where `bash .ci/run` installs aiokafka.
const PYTHON: &str = "/usr/bin/python3";

struct SecureBroker {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    _process: BrokerProcess,
    native_sasl_ssl: String,
    native_ssl: String,
    kafka_sasl_ssl: String,
    kafka_ssl: String,
}

impl SecureBroker {
    fn start() -> SecureBroker {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/secure/gen-certs.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(&certs)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let c = |name: &str| certs.join(name).display().to_string();
        let config = dir.path().join("strand.toml");
        std::fs::write(
            &config,
            format!(
                r#"data_dir = "{data}"
native_listeners = ["SASL_SSL://127.0.0.1:0", "SSL://127.0.0.1:0"]
kafka_listeners = ["SASL_SSL://127.0.0.1:0", "SSL://127.0.0.1:0"]
http_listeners = ["SSL://127.0.0.1:0"]
authorizer_enabled = true
super_users = ["User:admin"]

[tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"
client_auth = "required"
"#,
                data = dir.path().join("data").display(),
                cert = c("broker.pem"),
                key = c("broker.key"),
                ca = c("ca.pem"),
            ),
        )
        .unwrap();
        let binary = env!("CARGO_BIN_EXE_strand-broker");
        for (user, mechanism) in [
            ("admin", "SCRAM-SHA-512"),
            ("alice", "SCRAM-SHA-512"),
            ("alice", "SCRAM-SHA-256"),
        ] {
            let out = Command::new(binary)
                .arg("--config")
                .arg(&config)
                .args(["user", "add", user, "--mechanism", mechanism])
                .arg("--password-file")
                .arg(certs.join(format!("{user}.password")))
                .output()
                .unwrap();
            assert!(out.status.success(), "user add: {}", stderr(&out));
        }
        let (child, line) = spawn_until(
            Command::new(binary).arg("--config").arg(&config),
            "strand-broker listening",
        );
        let listener = |kind: &str, protocol: &str| {
            let list = line.split("listeners=").nth(1).unwrap();
            let list = list.split(' ').next().unwrap();
            let prefix = format!("{kind}={protocol}://");
            list.split(',')
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {kind} {protocol} listener in {line}"))
                .to_string()
        };
        let broker = SecureBroker {
            native_sasl_ssl: listener("native", "SASL_SSL"),
            native_ssl: listener("native", "SSL"),
            kafka_sasl_ssl: listener("kafka", "SASL_SSL"),
            kafka_ssl: listener("kafka", "SSL"),
            _process: BrokerProcess {
                child,
                addr: String::new(),
                kafka_addr: String::new(),
                http_addr: String::new(),
            },
            certs,
            _dir: dir,
        };
        for acl in [
            "--allow-principal User:alice --operation All --topic orders --resource-pattern-type prefixed",
            "--allow-principal User:alice --operation Read --group order- --resource-pattern-type prefixed",
            "--deny-principal User:alice --operation All --topic secret",
        ] {
            let args: Vec<&str> = ["acl", "add"]
                .into_iter()
                .chain(acl.split(' '))
                .collect();
            let out = broker.cli_as("admin", &args, b"");
            assert!(out.status.success(), "acl add: {}", stderr(&out));
        }
        let out = broker.cli_as("admin", &["topic", "create", "secret"], b"");
        assert!(out.status.success(), "{}", stderr(&out));
        let out = broker.cli_as("admin", &["produce", "secret"], b"the only record\n");
        assert!(out.status.success(), "{}", stderr(&out));
        broker
    }

    fn cert(&self, name: &str) -> String {
        self.certs.join(name).display().to_string()
    }

    fn password(&self, user: &str) -> String {
        std::fs::read_to_string(self.certs.join(format!("{user}.password")))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The `strand` CLI over the native SASL_SSL listener as `user` (SCRAM-SHA-512).
    fn cli_as(&self, user: &str, args: &[&str], input: &[u8]) -> Output {
        self.cli(
            &[
                "--broker",
                &self.native_sasl_ssl,
                "--tls-ca",
                &self.cert("ca.pem"),
                "--user",
                user,
                "--password-file",
                &self.cert(&format!("{user}.password")),
            ],
            args,
            input,
        )
    }

    fn cli(&self, connection: &[&str], args: &[&str], input: &[u8]) -> Output {
        run_cli_with(&strand_cli(), connection, args, input)
    }

    /// What topic `secret` holds, read by admin: the one record admin wrote, whatever alice
    /// and the strangers tried.
    fn assert_secret_unchanged(&self) {
        let out = self.cli_as("admin", &["consume", "secret"], b"");
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "the only record\n");
    }

    /// librdkafka settings for `user` over SASL_SSL with SCRAM-SHA-512.
    fn librdkafka_sasl_ssl(&self, user: &str, password: &str) -> Vec<(String, String)> {
        [
            ("bootstrap.servers", self.kafka_sasl_ssl.as_str()),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", user),
            ("sasl.password", password),
            ("ssl.ca.location", &self.cert("ca.pem")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// librdkafka settings for the certificate `name` over SSL.
    fn librdkafka_ssl(&self, name: &str) -> Vec<(String, String)> {
        [
            ("bootstrap.servers", self.kafka_ssl.clone()),
            ("security.protocol", "SSL".into()),
            ("ssl.ca.location", self.cert("ca.pem")),
            (
                "ssl.certificate.location",
                self.cert(&format!("{name}.pem")),
            ),
            ("ssl.key.location", self.cert(&format!("{name}.key"))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `PEER_*` variables of `tests/peers/peer_security.py` (and the kafkajs script).
enum Peer<'a> {
    Sasl { user: &'a str, password: String },
    Cert(&'a str),
}

/// Runs a peer script against the SASL_SSL or SSL Kafka listener; returns its stdout.
fn run_peer(
    broker: &SecureBroker,
    program: &str,
    script: &str,
    peer: Peer<'_>,
    topic: &str,
    mode: &str,
) -> String {
    let script = format!("{}/tests/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new("timeout");
    command
        .args(["180", program, &script])
        .env("PEER_SSL_CA", broker.cert("ca.pem"));
    let bootstrap = match &peer {
        Peer::Sasl { user, password } => {
            command
                .env("PEER_SECURITY_PROTOCOL", "SASL_SSL")
                .env("PEER_SASL_MECHANISM", "SCRAM-SHA-512")
                .env("PEER_SASL_USERNAME", user)
                .env("PEER_SASL_PASSWORD", password);
            &broker.kafka_sasl_ssl
        }
        Peer::Cert(name) => {
            command
                .env("PEER_SECURITY_PROTOCOL", "SSL")
                .env("PEER_SSL_CERT", broker.cert(&format!("{name}.pem")))
                .env("PEER_SSL_KEY", broker.cert(&format!("{name}.key")));
            &broker.kafka_ssl
        }
    };
    let out = command
        .args([bootstrap.as_str(), topic, "100", mode])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {mode}: {stdout}\n{}",
        stderr(&out)
    );
    stdout
}

/// Every case for one peer client: both ways in, then every refusal. `refusals` are the
/// substrings expected in the refused lines: wrong password, unknown user, untrusted
/// certificate, denied topic over SASL_SSL, denied topic over mTLS.
fn peer_client_both_ways(program: &str, check: &[&str], script: &str, refusals: [&str; 5]) {
    let has_client = Command::new(program)
        .args(check)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_client,
        "{script}: its client is missing: bash .ci/run installs it"
    );
    let broker = SecureBroker::start();
    let alice = || Peer::Sasl {
        user: "alice",
        password: broker.password("alice"),
    };
    let name = script.split('_').next().unwrap();
    for (peer, how) in [(alice(), "sasl"), (Peer::Cert("alice"), "mtls")] {
        let topic = format!("orders-{name}-{how}");
        let out = run_peer(&broker, program, script, peer, &topic, "roundtrip");
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["100 True", "admin True"],
            "{script} over {how}: {out}"
        );
    }
    let wrong_password = Peer::Sasl {
        user: "alice",
        password: "not-the-password".into(),
    };
    let unknown_user = Peer::Sasl {
        user: "mallory",
        password: broker.password("alice"),
    };
    let cases = [
        (wrong_password, "orders-refused", "wrong password"),
        (unknown_user, "orders-refused", "unknown user"),
        (
            Peer::Cert("mallory"),
            "orders-refused",
            "untrusted certificate",
        ),
        (alice(), "secret", "denied topic over SASL_SSL"),
        (Peer::Cert("alice"), "secret", "denied topic over mTLS"),
    ];
    for ((peer, topic, what), expected) in cases.into_iter().zip(refusals) {
        let mode = if topic == "secret" {
            "denied"
        } else {
            "refused"
        };
        let out = run_peer(&broker, program, script, peer, topic, mode);
        assert!(
            out.starts_with("refused") && out.contains(expected),
            "{script}, {what}: expected a refusal with {expected:?}, got {out}"
        );
    }
    broker.assert_secret_unchanged();
    // Nothing was created by the refused clients either.
    let out = broker.cli_as("admin", &["topic", "list"], b"");
    let topics = String::from_utf8_lossy(&out.stdout);
    assert!(!topics.contains("orders-refused"), "{topics}");
}

#[test]
fn kafka_python_over_sasl_ssl_and_mtls() {
    // kafka-python 2.0.2 reports a failed SASL handshake as no broker being available, and
    // asks Metadata for every topic, which (as on Kafka) leaves out the ones it may not
    // describe: it times out waiting for `secret` and writes nothing.
    peer_client_both_ways(
        PYTHON,
        &["-c", "import kafka"],
        "kafka_python_roundtrip.py",
        [
            "NoBrokersAvailable",
            "NoBrokersAvailable",
            // With TLS 1.3 the client learns of the refusal after its handshake: either the
            // alert (SSLError, unknown ca) or the closed connection (SSLEOFError).
            "SSL",
            "Failed to update metadata",
            "Failed to update metadata",
        ],
    );
}

#[test]
fn aiokafka_over_sasl_ssl_and_mtls() {
    peer_client_both_ways(
        PYTHON,
        &["-c", "import aiokafka"],
        "aiokafka_order_events.py",
        [
            "KafkaConnectionError",
            "KafkaConnectionError",
            "KafkaConnectionError",
            "TopicAuthorizationFailedError",
            "TopicAuthorizationFailedError",
        ],
    );
}

#[test]
fn kafkajs_over_sasl_ssl_and_mtls() {
    let peers = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
    peer_client_both_ways(
        "node",
        &["-e", &format!("require('{peers}/node_modules/kafkajs')")],
        "kafkajs_order_events.js",
        [
            "KafkaJSSASLAuthenticationError",
            "KafkaJSSASLAuthenticationError",
            "unknown ca",
            "TOPIC_AUTHORIZATION_FAILED",
            "TOPIC_AUTHORIZATION_FAILED",
        ],
    );
}

/// kcat with `-X` settings; returns its output whatever its exit status.
fn kcat(settings: &[(String, String)], args: &[&str], input: &[u8]) -> Output {
    let mut command = Command::new("timeout");
    command.args(["60", "kcat"]);
    for (k, v) in settings {
        if k == "bootstrap.servers" {
            command.args(["-b", v]);
        } else {
            command.arg("-X").arg(format!("{k}={v}"));
        }
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn kcat_over_sasl_ssl_and_mtls() {
    let kcat_present = Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(kcat_present, "kcat is missing: bash .ci/run installs it");
    let broker = SecureBroker::start();
    let password = broker.password("alice");
    for (how, settings) in [
        ("sasl", broker.librdkafka_sasl_ssl("alice", &password)),
        ("mtls", broker.librdkafka_ssl("alice")),
    ] {
        let topic = format!("orders-kcat-{how}");
        let created = broker.cli_as("admin", &["topic", "create", &topic], b"");
        assert!(created.status.success(), "{}", stderr(&created));
        let lines: String = (0..100).map(|i| format!("k{i}:v{i}\n")).collect();
        let out = kcat(
            &settings,
            &["-P", "-t", &topic, "-K", ":"],
            lines.as_bytes(),
        );
        assert!(out.status.success(), "kcat -P over {how}: {}", stderr(&out));
        // A balanced consumer in group order-kcat (JoinGroup, SyncGroup, OffsetCommit).
        let out = kcat(
            &settings,
            &[
                "-G",
                &format!("order-kcat-{how}"),
                &topic,
                "-o",
                "beginning",
                "-e",
                "-q",
            ],
            b"",
        );
        assert!(out.status.success(), "kcat -G over {how}: {}", stderr(&out));
        let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        got.sort();
        let mut want: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
        want.sort();
        assert_eq!(got, want, "kcat -G over {how}");
        // Admin: metadata lists what alice may describe, and not `secret`.
        let out = kcat(&settings, &["-L"], b"");
        let metadata = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "kcat -L: {}", stderr(&out));
        assert!(metadata.contains(&topic), "{metadata}");
        assert!(!metadata.contains("\"secret\""), "{metadata}");
    }

    let refused = [
        (
            "wrong password",
            broker.librdkafka_sasl_ssl("alice", "not-the-password"),
            "orders-kcat-sasl",
            "Authentication failed",
        ),
        (
            "unknown user",
            broker.librdkafka_sasl_ssl("mallory", &password),
            "orders-kcat-sasl",
            "Authentication failed",
        ),
        (
            "untrusted certificate",
            broker.librdkafka_ssl("mallory"),
            "orders-kcat-sasl",
            "SSL",
        ),
        (
            "denied topic",
            broker.librdkafka_sasl_ssl("alice", &password),
            "secret",
            "authorization failed",
        ),
    ];
    for (what, settings, topic, expected) in refused {
        let mut settings = settings;
        settings.push(("message.timeout.ms".into(), "8000".into()));
        let out = kcat(&settings, &["-P", "-t", topic], b"intruder\n");
        let err = stderr(&out);
        assert!(!out.status.success(), "kcat {what}: accepted: {err}");
        assert!(
            err.to_lowercase().contains(&expected.to_lowercase()),
            "kcat {what}: expected {expected:?} in {err}"
        );
    }
    broker.assert_secret_unchanged();
}

fn librdkafka(settings: &[(String, String)]) -> KafkaClientConfig {
    let mut config = KafkaClientConfig::new();
    for (k, v) in settings {
        config.set(k, v);
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_over_sasl_ssl_and_mtls() {
    let broker = SecureBroker::start();
    let password = broker.password("alice");
    for (how, settings) in [
        ("sasl", broker.librdkafka_sasl_ssl("alice", &password)),
        ("mtls", broker.librdkafka_ssl("alice")),
    ] {
        // Admin: alice creates a topic she may create.
        let topic = format!("orders-rdkafka-{how}");
        let admin: AdminClient<DefaultClientContext> = librdkafka(&settings).create().unwrap();
        let created = admin
            .create_topics(
                &[NewTopic::new(&topic, 2, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        assert!(created[0].is_ok(), "{how}: {created:?}");
        let producer: FutureProducer = librdkafka(&settings)
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap();
        for i in 0..50 {
            let key = format!("k{i}");
            let value = format!("v{i}");
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("{how}: produce failed: {e}"));
        }
        let consumer: StreamConsumer = librdkafka(&settings)
            .set("group.id", format!("order-rdkafka-{how}"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let mut seen = 0;
        while seen < 50 {
            let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("{how}: only {seen} of 50 consumed"))
                .unwrap();
            assert!(message.payload().is_some());
            seen += 1;
        }
        consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
            .unwrap();

        // Refused: a topic outside alice's ACLs, created or written.
        let refused = admin
            .create_topics(
                &[NewTopic::new("payments", 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        assert!(
            matches!(
                refused[0],
                Err((_, RDKafkaErrorCode::TopicAuthorizationFailed))
            ),
            "{how}: {refused:?}"
        );
        let denied = producer
            .send(
                FutureRecord::to("secret").key("k").payload("intruder"),
                Duration::from_secs(10),
            )
            .await;
        assert!(
            matches!(
                denied,
                Err((
                    KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed),
                    _
                ))
            ),
            "{how}: {denied:?}"
        );
    }
    // A wrong password: the producer's message fails, and nothing is written.
    let producer: FutureProducer = librdkafka(&broker.librdkafka_sasl_ssl("alice", "wrong"))
        .set("message.timeout.ms", "5000")
        .create()
        .unwrap();
    let refused = producer
        .send(
            FutureRecord::to("secret").key("k").payload("intruder"),
            Duration::from_secs(10),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    broker.assert_secret_unchanged();
    let out = broker.cli_as("admin", &["topic", "list"], b"");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("payments"));
}

#[test]
fn strand_cli_over_tls_with_scram_and_refused_without() {
    let broker = SecureBroker::start();
    let out = broker.cli_as("alice", &["topic", "create", "orders-cli"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = broker.cli_as("alice", &["produce", "orders-cli"], b"a\nb\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = broker.cli_as("alice", &["consume", "orders-cli"], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");
    // With a client certificate instead of a password, on the SSL listener.
    let ca = broker.cert("ca.pem");
    let (cert, key) = (broker.cert("alice.pem"), broker.cert("alice.key"));
    let mtls = [
        "--broker",
        &broker.native_ssl,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let out = broker.cli(&mtls, &["consume", "orders-cli"], b"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a\nb\n",
        "{}",
        stderr(&out)
    );
    let out = broker.cli(&mtls, &["consume", "secret"], b"");
    assert!(stderr(&out).contains("not authorized"), "{}", stderr(&out));

    // Refused: no credentials, no TLS, a wrong password, another CA's certificate.
    let none = broker.cli(
        &["--broker", &broker.native_sasl_ssl, "--tls-ca", &ca],
        &["topic", "list"],
        b"",
    );
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("needs SASL authentication"),
        "{}",
        stderr(&none)
    );
    let plain = broker.cli(
        &["--broker", &broker.native_sasl_ssl],
        &["topic", "list"],
        b"",
    );
    assert!(!plain.status.success(), "a plaintext client got through");
    let wrong = Path::new(&broker._dir.path()).join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let wrong = broker.cli(
        &[
            "--broker",
            &broker.native_sasl_ssl,
            "--tls-ca",
            &ca,
            "--user",
            "alice",
            "--password-file",
            wrong.to_str().unwrap(),
        ],
        &["topic", "list"],
        b"",
    );
    assert!(
        stderr(&wrong).contains("SaslAuthenticationFailed"),
        "{}",
        stderr(&wrong)
    );
    let (cert, key) = (broker.cert("mallory.pem"), broker.cert("mallory.key"));
    let stranger = broker.cli(
        &[
            "--broker",
            &broker.native_ssl,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &["topic", "list"],
        b"",
    );
    assert!(
        !stranger.status.success(),
        "another CA's certificate got through"
    );
    broker.assert_secret_unchanged();
}
