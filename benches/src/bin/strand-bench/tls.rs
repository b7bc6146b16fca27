//! `strand-bench tls`: what TLS costs. One broker (its own runtime, data on the working tree's
//! disk, fsync every second) with a PLAINTEXT and an SSL listener for each protocol; the
//! native throughput run (two producers, then a consumer) and librdkafka's (one producer,
//! then a consumer) over each, alternating, in one process, so the ratios compare like with
//! like on a noisy machine. The certificate is an ECDSA P-256 one made here with rcgen, as a
//! private CA would issue.

use std::path::Path;

use anyhow::Context;
use strand_broker::config::BrokerConfig;
use strand_broker::listener::ListenerKind;
use strand_broker::log::{FsyncPolicy, LogConfig};
use strand_broker::run::RunningBroker;
use strand_broker::security::tls::TlsConfig;
use strand_broker::security::SecurityProtocol;
use strand_client::{Client, ClientConfig, ClientTlsConfig};

use serde_json::json;

use crate::report::say;
use crate::{kafka, runtime, throughput, Rates};

/// Writes a CA and a server certificate for 127.0.0.1 and localhost into `dir`.
fn certificates(dir: &Path) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // OpenSSL (librdkafka) wants a CA with a subject and the right to sign certificates.
    ca.distinguished_name
        .push(DnType::CommonName, "strand-bench CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut server =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "strand-bench broker");
    let server = server.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.pem"), issuer.pem())?;
    std::fs::write(dir.join("broker.pem"), server.pem())?;
    std::fs::write(dir.join("broker.key"), key.serialize_pem())?;
    Ok(())
}

pub fn run(
    records: u64,
    record_bytes: usize,
    partitions: u32,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::Builder::new()
        .prefix(".strand-bench-")
        .tempdir_in(std::env::current_dir()?)
        .context("creating the data folder")?;
    certificates(dir.path())?;
    let config = BrokerConfig {
        data_dir: dir.path().join("data"),
        native_listeners: vec![
            "PLAINTEXT://127.0.0.1:0"
                .parse()
                .map_err(anyhow::Error::msg)?,
            "SSL://127.0.0.1:0".parse().map_err(anyhow::Error::msg)?,
        ],
        kafka_listeners: vec![
            "PLAINTEXT://127.0.0.1:0"
                .parse()
                .map_err(anyhow::Error::msg)?,
            "SSL://127.0.0.1:0".parse().map_err(anyhow::Error::msg)?,
        ],
        http_listen: "127.0.0.1:0".parse()?,
        tls: TlsConfig {
            cert_file: Some(dir.path().join("broker.pem")),
            key_file: Some(dir.path().join("broker.key")),
            ..TlsConfig::default()
        },
        log: LogConfig {
            fsync: FsyncPolicy::IntervalMs(1000),
            retention_ms: None,
            ..LogConfig::default()
        },
        ..BrokerConfig::default()
    };
    let broker_runtime = runtime()?;
    let broker = broker_runtime.block_on(RunningBroker::start(config))?;
    let address = |kind, protocol| {
        broker
            .listener(kind, protocol)
            .map(|a| a.to_string())
            .context("a listener is missing")
    };
    let native_plain = address(ListenerKind::Native, SecurityProtocol::Plaintext)?;
    let native_tls = address(ListenerKind::Native, SecurityProtocol::Ssl)?;
    let kafka_plain = address(ListenerKind::Kafka, SecurityProtocol::Plaintext)?;
    let kafka_tls = address(ListenerKind::Kafka, SecurityProtocol::Ssl)?;
    let ca = dir.path().join("ca.pem");
    let tls_config = {
        let mut config = ClientConfig::default();
        config.connection.tls = Some(ClientTlsConfig {
            ca_file: ca.clone(),
            cert_file: None,
            key_file: None,
            server_name: None,
        });
        config
    };
    let kafka_tls_properties = vec![
        ("security.protocol".to_string(), "SSL".to_string()),
        ("ssl.ca.location".to_string(), ca.display().to_string()),
    ];

    let client_runtime = runtime()?;
    let mut results: Vec<(&str, &str, Rates)> = Vec::new();
    for (protocol, addr, config) in [
        ("plaintext", &native_plain, ClientConfig::default()),
        ("TLS", &native_tls, tls_config.clone()),
    ] {
        say!("native client over {protocol}:");
        let rates = client_runtime
            .block_on(async {
                let client = Client::connect(addr.clone(), config.clone()).await?;
                throughput(
                    addr,
                    &config,
                    client,
                    records,
                    record_bytes,
                    partitions,
                    2,
                    "leader",
                    5,
                )
                .await
            })?
            .rates;
        results.push(("native", protocol, rates));
        // Each run makes its topic `bench-<pid>`: the next one needs the name free.
        client_runtime.block_on(async {
            let client = Client::connect(native_plain.clone(), ClientConfig::default()).await?;
            client
                .admin()
                .delete_topic(&format!("bench-{}", std::process::id()))
                .await?;
            anyhow::Ok(())
        })?;
    }
    for (protocol, bootstrap, properties) in [
        ("plaintext", &kafka_plain, Vec::new()),
        ("TLS", &kafka_tls, kafka_tls_properties),
    ] {
        let topic = format!("tls-bench-{protocol}-{}", std::process::id());
        client_runtime.block_on(async {
            let client = Client::connect(native_plain.clone(), ClientConfig::default()).await?;
            client
                .admin()
                .create_topic(
                    &topic,
                    strand_client::TopicSettings {
                        partitions,
                        ..Default::default()
                    },
                )
                .await?;
            anyhow::Ok(())
        })?;
        say!("librdkafka over {protocol}:");
        let rates = kafka::throughput(
            bootstrap,
            &properties,
            &[],
            &topic,
            records,
            record_bytes,
            partitions,
            "leader",
            5,
        )?;
        results.push(("librdkafka", protocol, rates));
    }
    drop(client_runtime);
    broker_runtime.block_on(broker.stop())?;

    let mb = |rate: f64| rate * record_bytes as f64 / 1e6;
    let mut json = json!({
        "command": "tls",
        "records": records,
        "record_bytes": record_bytes,
        "partitions": partitions,
    });
    say!("{records} records of {record_bytes} bytes, {partitions} partitions:");
    for client in ["native", "librdkafka"] {
        let rates = |protocol| {
            results
                .iter()
                .find(|(c, p, _)| *c == client && *p == protocol)
                .map(|(_, _, r)| *r)
                .expect("measured")
        };
        let (plain, tls) = (rates("plaintext"), rates("TLS"));
        json[client] = json!({
            "plaintext": plain.json(record_bytes),
            "tls": tls.json(record_bytes),
            "tls_over_plaintext": {
                "produce": tls.produce / plain.produce,
                "consume": tls.consume / plain.consume,
            },
        });
        for (what, p, t) in [
            ("produce", plain.produce, tls.produce),
            ("consume", plain.consume, tls.consume),
        ] {
            say!(
                "{client} {what}: plaintext {p:.0} records/s ({:.1} MB/s), TLS {t:.0} records/s ({:.1} MB/s): TLS/plaintext = {:.2}",
                mb(p),
                mb(t),
                t / p
            );
        }
    }
    Ok(json)
}
