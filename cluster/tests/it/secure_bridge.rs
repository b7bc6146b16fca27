//! `strand-bridge` between two brokers that both require SASL_SSL on every native and Kafka
//! listener, with the authorizer on: it reads broker A through the native protocol (TLS and
//! SCRAM-SHA-512, a bridge cluster's `security` table) and writes broker B through its Kafka
//! listener with librdkafka (`security.protocol=SASL_SSL`), as user `bridge`, and every record
//! arrives; with a wrong password it mirrors nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use strand_broker::config::BrokerConfig;
use strand_broker::run::RunningBroker;
use strand_broker::security::tls::TlsConfig;
use strand_broker::security::users::{Users, UsersConfig};
use strand_client::scram::ScramMechanism;
use strand_client::{
    Client, ClientConfig, ClientTlsConfig, Mechanism, Producer, ProducerConfig, ProducerRecord,
    SaslConfig, TopicSettings,
};

use super::support::{spawn_until, ChildProcess};

fn certificates(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/secure/gen-certs.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    certs
}

/// A broker whose native and Kafka listeners are SASL_SSL only, users `bridge` (a super user)
/// and `admin` (another), with `password`.
async fn secure_broker(dir: &Path, certs: &Path, password: &str) -> RunningBroker {
    let users = Users::open(dir, UsersConfig::default()).unwrap();
    for user in ["bridge", "admin"] {
        users
            .upsert_password(user, ScramMechanism::Sha512, password, None)
            .unwrap();
    }
    drop(users);
    let config = BrokerConfig {
        data_dir: dir.to_path_buf(),
        native_listeners: vec!["SASL_SSL://127.0.0.1:0".parse().unwrap()],
        kafka_listeners: vec!["SASL_SSL://127.0.0.1:0".parse().unwrap()],
        http_listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsConfig {
            cert_file: Some(certs.join("broker.pem")),
            key_file: Some(certs.join("broker.key")),
            ..TlsConfig::default()
        },
        authorizer_enabled: true,
        super_users: vec!["User:bridge".into(), "User:admin".into()],
        ..BrokerConfig::default()
    };
    RunningBroker::start(config).await.unwrap()
}

async fn admin_client(broker: &RunningBroker, certs: &Path, password: &str) -> Client {
    let mut config = ClientConfig::default();
    config.connection.tls = Some(ClientTlsConfig {
        ca_file: certs.join("ca.pem"),
        cert_file: None,
        key_file: None,
        server_name: None,
    });
    config.connection.sasl = Some(SaslConfig {
        mechanism: Mechanism::Scram(ScramMechanism::Sha512),
        username: "admin".into(),
        password: password.into(),
    });
    Client::connect(broker.native_addr.to_string(), config)
        .await
        .unwrap()
}

async fn count(client: &Client, topic: &str) -> u64 {
    match client.admin().describe_topic(topic).await {
        Ok(d) => d.partitions.iter().map(|p| p.high_watermark).sum(),
        Err(_) => 0,
    }
}

fn bridge_config(
    dir: &Path,
    certs: &Path,
    a: &RunningBroker,
    b: &RunningBroker,
    password_file: &Path,
    password: &str,
) -> PathBuf {
    let ca = certs.join("ca.pem");
    let path = dir.join("bridge.toml");
    std::fs::write(
        &path,
        format!(
            r#"
checkpoint_interval_ms = 200
[clusters.a]
kind = "strand"
address = "{a}"
security = {{ tls_ca_file = "{ca}", user = "bridge", password_file = "{password_file}" }}
[clusters.b]
kind = "kafka"
bootstrap = "{b}"
[clusters.b.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "bridge"
"sasl.password" = "{password}"
"ssl.ca.location" = "{ca}"
[[routes]]
from = {{ cluster = "a", topic = "orders" }}
to = {{ cluster = "b", topic = "orders" }}
"#,
            a = a.native_addr,
            b = b.kafka_addr,
            ca = ca.display(),
            password_file = password_file.display(),
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_mirrors_between_two_brokers_that_require_sasl_ssl() {
    const N: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path());
    let password = std::fs::read_to_string(certs.join("saga.password")).unwrap();
    let password = password.trim();
    let a = secure_broker(&dir.path().join("a"), &certs, password).await;
    let b = secure_broker(&dir.path().join("b"), &certs, password).await;
    let (ca, cb) = (
        admin_client(&a, &certs, password).await,
        admin_client(&b, &certs, password).await,
    );
    for c in [&ca, &cb] {
        c.admin()
            .create_topic(
                "orders",
                TopicSettings {
                    partitions: 2,
                    ..TopicSettings::default()
                },
            )
            .await
            .unwrap();
    }
    let producer = Producer::new(ca.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..N {
        deliveries.push(
            producer
                .send(ProducerRecord::new("orders", format!("order-{i}")))
                .await
                .unwrap(),
        );
    }
    for d in deliveries {
        d.await.unwrap();
    }

    // A wrong password on either side: the bridge gets nowhere, and B stays empty.
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let config = bridge_config(dir.path(), &certs, &a, &b, &wrong, password);
    let out = Command::new("timeout")
        .args(["60", env!("CARGO_BIN_EXE_strand-bridge"), "--config"])
        .arg(&config)
        .args(["--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the bridge ran with a wrong password"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SaslAuthenticationFailed"), "{err}");
    assert_eq!(count(&cb, "orders").await, 0);

    let password_file = certs.join("saga.password");
    let config = bridge_config(dir.path(), &certs, &a, &b, &password_file, password);
    let _bridge: ChildProcess = spawn_until(
        Command::new(env!("CARGO_BIN_EXE_strand-bridge")).args([
            "--config",
            config.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
        ]),
        "strand-bridge running",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&cb, "orders").await < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} mirrored",
            count(&cb, "orders").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&cb, "orders").await, N);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
