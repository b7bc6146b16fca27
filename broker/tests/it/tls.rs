//! TLS on every listener of a running broker: PLAINTEXT and SSL side by side on the native,
//! Kafka and HTTP ports; `strand-client` over TLS with a CA bundle and with a client
//! certificate; librdkafka (the `rdkafka` crate) over `security.protocol=SSL`; HTTPS `/health`
//! with reqwest; untrusted or missing client certificates refused when they are required;
//! plaintext clients on a TLS port refused without harm; a certificate replaced on disk served to
//! the next connection. Certificates are made in the test with rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig as KafkaClientConfig, Message as _};
use strand_broker::config::BrokerConfig;
use strand_broker::listener::{self, ListenerKind};
use strand_broker::run::RunningBroker;
use strand_broker::security::tls::{ClientAuth, ServerTls, TlsConfig};
use strand_broker::security::{Principal, SecurityProtocol};
use strand_client::{
    Client, ClientConfig, ClientTlsConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, StartFrom, TopicSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A certificate authority that signs server and client certificates into PEM files.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), issuer.pem()).unwrap();
        Ca {
            issuer,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// Signs a certificate for `cn` (valid for localhost and 127.0.0.1) and writes
    /// `<file>.pem` and `<file>.key`.
    fn issue(&self, file: &str, cn: &str) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = self.dir.join(format!("{file}.pem"));
        let key_file = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

/// Every listener twice, PLAINTEXT and SSL, on ports the kernel picks.
fn config(data_dir: &Path, tls: TlsConfig) -> BrokerConfig {
    let both = || {
        vec![
            "PLAINTEXT://127.0.0.1:0".parse().unwrap(),
            "SSL://127.0.0.1:0".parse().unwrap(),
        ]
    };
    BrokerConfig {
        data_dir: data_dir.to_path_buf(),
        native_listeners: both(),
        kafka_listeners: both(),
        http_listeners: both(),
        request_timeout_ms: 2000,
        tls,
        ..BrokerConfig::default()
    }
}

fn server_tls(ca: &Ca, client_auth: ClientAuth) -> TlsConfig {
    let (cert_file, key_file) = ca.issue("broker", "localhost");
    TlsConfig {
        cert_file: Some(cert_file),
        key_file: Some(key_file),
        client_ca_file: (client_auth != ClientAuth::None).then(|| ca.ca_file()),
        client_auth,
        reload_check_interval_ms: 0,
    }
}

fn one_partition() -> TopicSettings {
    TopicSettings {
        partitions: 1,
        ..TopicSettings::default()
    }
}

fn ssl(broker: &RunningBroker, kind: ListenerKind) -> String {
    broker
        .listener(kind, SecurityProtocol::Ssl)
        .expect("an SSL listener")
        .to_string()
}

fn plaintext(broker: &RunningBroker, kind: ListenerKind) -> String {
    broker
        .listener(kind, SecurityProtocol::Plaintext)
        .expect("a PLAINTEXT listener")
        .to_string()
}

fn tls_client(ca_file: &Path, identity: Option<&(PathBuf, PathBuf)>) -> ClientConfig {
    let mut config = ClientConfig {
        reconnect_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    config.connection.connect_timeout = Duration::from_secs(5);
    config.connection.tls = Some(ClientTlsConfig {
        ca_file: ca_file.to_path_buf(),
        cert_file: identity.map(|(cert, _)| cert.clone()),
        key_file: identity.map(|(_, key)| key.clone()),
        server_name: None,
    });
    config
}

async fn produce_and_read(client: Client, topic: &str, values: &[&str]) -> Vec<String> {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for value in values {
        producer
            .send(ProducerRecord::new(topic, value.to_string()))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    read(client, topic, values.len()).await
}

async fn read(client: Client, topic: &str, n: usize) -> Vec<String> {
    let config = ConsumerConfig {
        start: StartFrom::Earliest,
        fetch_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, topic, None, config).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < n {
        let record = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a record within 10 s")
            .unwrap();
        seen.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_client_over_tls_beside_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test");
    let broker = RunningBroker::start(config(
        &dir.path().join("data"),
        server_tls(&ca, ClientAuth::None),
    ))
    .await
    .unwrap();
    assert_eq!(broker.listeners.len(), 6, "{:?}", broker.listeners);
    assert_eq!(
        broker.native_addr.to_string(),
        plaintext(&broker, ListenerKind::Native)
    );

    let secure = Client::connect(
        ssl(&broker, ListenerKind::Native),
        tls_client(&ca.ca_file(), None),
    )
    .await
    .unwrap();
    secure
        .admin()
        .create_topic("t", one_partition())
        .await
        .unwrap();
    let seen = produce_and_read(secure, "t", &["over", "tls"]).await;
    assert_eq!(seen, ["over", "tls"]);
    // The same records, read on the PLAINTEXT listener.
    let plain = Client::connect(
        plaintext(&broker, ListenerKind::Native),
        ClientConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(read(plain, "t", 2).await, ["over", "tls"]);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_client_does_not_trust_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test");
    let other = Ca::new(dir.path(), "other");
    let broker = RunningBroker::start(config(
        &dir.path().join("data"),
        server_tls(&ca, ClientAuth::None),
    ))
    .await
    .unwrap();
    let err = Client::connect(
        ssl(&broker, ListenerKind::Native),
        tls_client(&other.ca_file(), None),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("certificate"), "{err}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_are_verified_and_name_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test");
    let other = Ca::new(dir.path(), "other");
    let alice = ca.issue("alice", "alice");
    let mallory = other.issue("mallory", "alice");
    let broker = RunningBroker::start(config(
        &dir.path().join("data"),
        server_tls(&ca, ClientAuth::Required),
    ))
    .await
    .unwrap();
    let addr = ssl(&broker, ListenerKind::Native);

    // A certificate the CA signed works.
    let client = Client::connect(addr.clone(), tls_client(&ca.ca_file(), Some(&alice)))
        .await
        .unwrap();
    client
        .admin()
        .create_topic("m", one_partition())
        .await
        .unwrap();
    // No certificate, or one another CA signed (with the same common name), is refused.
    for identity in [None, Some(&mallory)] {
        let refused = Client::connect(addr.clone(), tls_client(&ca.ca_file(), identity)).await;
        let refused = match refused {
            // TLS 1.3 clients learn of the refusal at their first read.
            Ok(client) => client
                .admin()
                .create_topic("never", one_partition())
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(refused.is_err(), "{identity:?} was let in");
    }
    assert!(!broker
        .broker
        .list_topics()
        .iter()
        .any(|t| t.name == "never"));
    // The listener still serves the trusted client.
    assert_eq!(produce_and_read(client, "m", &["still"]).await, ["still"]);
    broker.stop().await.unwrap();
}

/// The session of a connection accepted with a verified client certificate names the
/// certificate's common name; without one (client_auth = requested) it stays anonymous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_principal_is_the_client_certificates_common_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test");
    let alice = ca.issue("alice", "alice");
    let tls = ServerTls::new(server_tls(&ca, ClientAuth::Requested)).unwrap();
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    for (identity, expected) in [
        (Some(&alice), Principal::user("alice")),
        (None, Principal::anonymous()),
    ] {
        let connecting = {
            let config = tls_client(&ca.ca_file(), identity).connection.tls.unwrap();
            let addr = addr.clone();
            tokio::spawn(async move {
                let socket = TcpStream::connect(&addr).await.unwrap();
                let mut stream = config.connect(&addr, socket).await.unwrap();
                // Finish the handshake on the server's side too.
                let mut byte = [0u8; 1];
                let _ = stream.read(&mut byte).await;
            })
        };
        let (accepted, peer) = socket.accept().await.unwrap();
        let (_stream, session) = listener::establish(
            accepted,
            peer,
            SecurityProtocol::Ssl,
            Some(&tls),
            true,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(session.principal, expected);
        assert_eq!(session.protocol, SecurityProtocol::Ssl);
        drop(_stream);
        connecting.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_silent_clients_on_a_tls_port_are_closed_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test");
    let broker = RunningBroker::start(config(
        &dir.path().join("data"),
        server_tls(&ca, ClientAuth::None),
    ))
    .await
    .unwrap();
    for kind in [
        ListenerKind::Native,
        ListenerKind::Kafka,
        ListenerKind::Http,
    ] {
        let addr = ssl(&broker, kind);
        // A native protocol frame (or any plaintext) where a ClientHello belongs: the broker
        // answers with an alert at most and closes.
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        socket
            .write_all(b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer))
            .await
            .expect("closed at once")
            .ok();
        assert!(
            answer.is_empty() || answer[0] == 0x15,
            "{kind}: not a TLS alert: {answer:?}"
        );
        // A client that opens a connection and says nothing is closed after the handshake
        // timeout (the request timeout, 2 s here).
        let mut silent = TcpStream::connect(&addr).await.unwrap();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), silent.read(&mut [0u8; 16])).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "{kind}: {closed:?}"
        );
    }
    // The strand client without TLS gets an error, not a hang.
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        Client::connect(ssl(&broker, ListenerKind::Native), ClientConfig::default()),
    )
    .await
    .expect("refused at once");
    assert!(err.is_err());
    // And the listeners still serve TLS clients.
    let client = Client::connect(
        ssl(&broker, ListenerKind::Native),
        tls_client(&ca.ca_file(), None),
    )
    .await
    .unwrap();
    client.admin().list_topics().await.unwrap();
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_served_to_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new(dir.path(), "first");
    let second = Ca::new(dir.path(), "second");
    let tls = server_tls(&first, ClientAuth::None);
    let broker = RunningBroker::start(config(&dir.path().join("data"), tls.clone()))
        .await
        .unwrap();
    let addr = ssl(&broker, ListenerKind::Native);
    let before = Client::connect(addr.clone(), tls_client(&first.ca_file(), None))
        .await
        .unwrap();

    // Replace the certificate and key (each by a rename, as certificate managers do).
    let (cert, key) = second.issue("renewed", "localhost");
    std::fs::rename(&key, tls.key_file.as_ref().unwrap()).unwrap();
    // Half-way (the new key with the old certificate) the broker keeps the old pair.
    Client::connect(addr.clone(), tls_client(&first.ca_file(), None))
        .await
        .unwrap();
    std::fs::rename(&cert, tls.cert_file.as_ref().unwrap()).unwrap();

    let renewed = Client::connect(addr.clone(), tls_client(&second.ca_file(), None))
        .await
        .unwrap();
    renewed.admin().list_topics().await.unwrap();
    assert!(
        Client::connect(addr.clone(), tls_client(&first.ca_file(), None))
            .await
            .is_err(),
        "the old certificate is still served"
    );
    // A connection made before the change goes on working.
    before.admin().list_topics().await.unwrap();

    // A broken file is not taken: the renewed certificate stays.
    std::fs::write(tls.cert_file.as_ref().unwrap(), "garbage").unwrap();
    Client::connect(addr.clone(), tls_client(&second.ca_file(), None))
        .await
        .unwrap();
    broker.stop().await.unwrap();
}

fn kafka_ssl(bootstrap: &str, ca: &Ca, identity: Option<&(PathBuf, PathBuf)>) -> KafkaClientConfig {
    let mut config = KafkaClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", ca.ca_file().to_str().unwrap())
        .set("socket.timeout.ms", "10000")
        .set("log_level", "4");
    if let Some((cert, key)) = identity {
        config
            .set("ssl.certificate.location", cert.to_str().unwrap())
            .set("ssl.key.location", key.to_str().unwrap());
    }
    config
}

async fn rdkafka_round_trip(config: KafkaClientConfig, topic: &str, group: &str) {
    let producer: FutureProducer = config
        .clone()
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    for i in 0..3 {
        let value = format!("{topic}-{i}");
        producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(&value),
                Duration::from_secs(20),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record within 30 s")
            .unwrap();
        seen.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
    }
    assert_eq!(seen, [0, 1, 2].map(|i| format!("{topic}-{i}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_produces_and_consumes_over_ssl_with_and_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test");
    let alice = ca.issue("alice", "alice");
    let broker = RunningBroker::start(config(
        &dir.path().join("data"),
        server_tls(&ca, ClientAuth::Requested),
    ))
    .await
    .unwrap();
    let bootstrap = ssl(&broker, ListenerKind::Kafka);

    // Each listener advertises itself: bootstrapped on SSL, the client is sent to SSL.
    let metadata = {
        let consumer: BaseConsumer = kafka_ssl(&bootstrap, &ca, None).create().unwrap();
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(None, Duration::from_secs(10))
                .unwrap()
                .brokers()
                .iter()
                .map(|b| format!("{}:{}", b.host(), b.port()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    };
    assert_eq!(metadata, std::slice::from_ref(&bootstrap));

    rdkafka_round_trip(kafka_ssl(&bootstrap, &ca, None), "k-ssl", "g-ssl").await;
    rdkafka_round_trip(kafka_ssl(&bootstrap, &ca, Some(&alice)), "k-mtls", "g-mtls").await;
    // What librdkafka wrote over TLS, read on the PLAINTEXT native listener.
    let plain = Client::connect(
        plaintext(&broker, ListenerKind::Native),
        ClientConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(read(plain, "k-mtls", 3).await.len(), 3);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test");
    let broker = RunningBroker::start(config(
        &dir.path().join("data"),
        server_tls(&ca, ClientAuth::None),
    ))
    .await
    .unwrap();
    let ca_pem = std::fs::read(ca.ca_file()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
        .build()
        .unwrap();
    let addr = ssl(&broker, ListenerKind::Http);
    let port = addr.rsplit_once(':').unwrap().1;
    let response = https
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Plain HTTP to the HTTPS port is refused; the PLAINTEXT port still answers plain HTTP.
    assert!(reqwest::get(format!("http://{addr}/health")).await.is_err());
    let plain = plaintext(&broker, ListenerKind::Http);
    assert_eq!(
        reqwest::get(format!("http://{plain}/health"))
            .await
            .unwrap()
            .status(),
        200
    );
    // A client that trusts another CA is refused.
    let other = Ca::new(dir.path(), "other");
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(other.ca_file()).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .is_err());
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_settings_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // TLS listeners without a certificate.
    let config = config(dir.path(), TlsConfig::default());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("cert_file"), "{err}");
    // SASL on HTTP.
    let config = BrokerConfig {
        http_listeners: vec!["SASL_SSL://127.0.0.1:0".parse().unwrap()],
        ..BrokerConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("HTTP listeners are PLAINTEXT or SSL"), "{err}");
    // Two Kafka listeners with one protocol, and an advertised listener for none.
    let config = BrokerConfig {
        kafka_listeners: vec![
            "PLAINTEXT://127.0.0.1:0".parse().unwrap(),
            "PLAINTEXT://127.0.0.1:0".parse().unwrap(),
        ],
        ..BrokerConfig::default()
    };
    assert!(config.validate().is_err());
    let config = BrokerConfig {
        kafka_advertised_listeners: vec!["SSL://broker.example:9093".parse().unwrap()],
        ..BrokerConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("names no Kafka listener"), "{err}");
    // A bad certificate file stops the start with the file's name, and binds nothing.
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, "nothing").unwrap();
    std::fs::write(&key, "nothing").unwrap();
    let mut config = self::config(
        &dir.path().join("data"),
        TlsConfig {
            cert_file: Some(cert),
            key_file: Some(key),
            ..TlsConfig::default()
        },
    );
    config.native_listeners = vec!["SSL://127.0.0.1:0".parse().unwrap()];
    let err = format!("{:#}", RunningBroker::start(config).await.unwrap_err());
    assert!(err.contains("c.pem"), "{err}");
}

/// The real binary reloads its certificate on SIGHUP (the file check is set to once an hour, so
/// only the signal can have done it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new(dir.path(), "first");
    let second = Ca::new(dir.path(), "second");
    let (cert, key) = first.issue("broker", "localhost");
    let config_file = dir.path().join("strand.toml");
    std::fs::write(
        &config_file,
        format!(
            "native_listeners = [\"PLAINTEXT://127.0.0.1:0\", \"SSL://127.0.0.1:0\"]\n\
             [tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nreload_check_interval_ms = 3600000\n"
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strand-broker"));
    command.args(["--config", config_file.to_str().unwrap()]);
    command.args(["--data-dir", dir.path().join("data").to_str().unwrap()]);
    command.args([
        "--kafka-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let (child, line) = super::broker_process::spawn_until(&mut command, "strand-broker listening");
    let child = KillOnDrop(child);
    let addr = line
        .split("native=SSL://")
        .nth(1)
        .expect("the start line lists the SSL listener")
        .split([',', ' '])
        .next()
        .unwrap()
        .to_string();
    Client::connect(addr.clone(), tls_client(&first.ca_file(), None))
        .await
        .unwrap();

    let (new_cert, new_key) = second.issue("renewed", "localhost");
    std::fs::rename(new_key, &key).unwrap();
    std::fs::rename(new_cert, &cert).unwrap();
    // Not looked at yet: the old certificate is still served.
    Client::connect(addr.clone(), tls_client(&first.ca_file(), None))
        .await
        .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(addr.clone(), tls_client(&second.ca_file(), None)).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the renewed certificate is not served after SIGHUP: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(Client::connect(addr, tls_client(&first.ca_file(), None))
        .await
        .is_err());
}

/// Kills the child when the test ends, whatever happened.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The idle and request timeouts hold on TLS connections too: a client that finishes the
/// handshake and then says nothing, or starts a frame and never finishes it, is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_unfinished_requests_over_tls_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test");
    let broker = RunningBroker::start(BrokerConfig {
        idle_timeout_ms: 500,
        request_timeout_ms: 500,
        ..config(&dir.path().join("data"), server_tls(&ca, ClientAuth::None))
    })
    .await
    .unwrap();
    let tls = tls_client(&ca.ca_file(), None).connection.tls.unwrap();
    for kind in [ListenerKind::Native, ListenerKind::Kafka] {
        let addr = ssl(&broker, kind);
        for sent in [&b""[..], &b"\x00\x00\x01\x00\x00"[..]] {
            let socket = TcpStream::connect(&addr).await.unwrap();
            let mut stream = tls.connect(&addr, socket).await.unwrap();
            stream.write_all(sent).await.unwrap();
            stream.flush().await.unwrap();
            let started = std::time::Instant::now();
            let read =
                tokio::time::timeout(Duration::from_secs(10), stream.read(&mut [0u8; 64])).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "{kind} after {sent:?}: {read:?}"
            );
            assert!(
                started.elapsed() >= Duration::from_millis(400),
                "{kind} after {sent:?}: closed before the timeout"
            );
        }
    }
    broker.stop().await.unwrap();
}

/// The `strand` CLI over TLS: `--tls-ca` for the broker's certificate, `--tls-cert` and
/// `--tls-key` for a client certificate the listener requires; without them it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_with_a_client_certificate() {
    use super::broker_process::{run_cli, strand_cli};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test");
    let (cert, key) = ca.issue("cli", "cli");
    let broker = RunningBroker::start(config(
        &dir.path().join("data"),
        server_tls(&ca, ClientAuth::Required),
    ))
    .await
    .unwrap();
    let addr = ssl(&broker, ListenerKind::Native);
    let cli = strand_cli();
    let (ca_file, cert, key) = (
        ca.ca_file().to_str().unwrap().to_string(),
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    );
    let tls_args = ["--tls-ca", &ca_file, "--tls-cert", &cert, "--tls-key", &key];
    let run = |args: &[&str], input: &[u8]| {
        let (addr, cli) = (addr.clone(), cli.clone());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let input = input.to_vec();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(&cli, &addr, &args, &input)
        })
    };
    let mut create = tls_args.to_vec();
    create.extend(["topic", "create", "cli", "--partitions", "1"]);
    let created = run(&create, b"").await.unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let mut produce = tls_args.to_vec();
    produce.extend(["produce", "cli"]);
    assert!(run(&produce, b"one\ntwo\n").await.unwrap().status.success());
    let mut consume = tls_args.to_vec();
    consume.extend(["consume", "cli", "--count", "2"]);
    let consumed = run(&consume, b"").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&consumed.stdout), "one\ntwo\n");

    // Without a client certificate, or without TLS at all, the CLI is refused and says so.
    for args in [
        vec!["--tls-ca", ca_file.as_str(), "topic", "list"],
        vec!["topic", "list"],
    ] {
        let refused = run(&args, b"").await.unwrap();
        assert_eq!(refused.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).starts_with("strand: "),
            "{args:?}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
    broker.stop().await.unwrap();
}
