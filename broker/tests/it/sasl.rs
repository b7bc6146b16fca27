//! SASL on both listeners of the real `strand-broker` binary, with users bootstrapped offline
//! (`strand-broker user add`): librdkafka (the `rdkafka` crate) over SASL_PLAINTEXT with
//! SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN; wrong passwords and unknown users refused with
//! nothing produced; requests before authentication closing the connection; the native client
//! and the `strand` CLI with SCRAM; Kafka's user SCRAM APIs; hostile SASL bytes.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
    ApiVersionsRequest, ApiVersionsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse, MetadataRequest, RequestHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig as KafkaClientConfig, Message as _, TopicPartitionList};
use strand_client::native::ErrorCode;
use strand_client::scram::{ScramClient, ScramMechanism};
use strand_client::{Client, ClientConfig, ClientError, Mechanism, SaslConfig, TopicSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::broker_process::{run_cli, start_broker_with, strand_cli, BrokerProcess};
use super::kafka_clients::kafka_call;

const ALICE_PASSWORD: &str = "alice-s3cret";

/// `strand-broker user add` on a stopped broker's data directory.
fn add_user(data_dir: &Path, name: &str, password: &str, mechanism: &str) {
    let file = data_dir.join(format!("{name}.password"));
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_strand-broker"))
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "user",
            "add",
            name,
        ])
        .args([
            "--password-file",
            file.to_str().unwrap(),
            "--mechanism",
            mechanism,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A broker whose native and Kafka listeners are SASL_PLAINTEXT, with alice (both SCRAM
/// mechanisms) added offline first.
fn sasl_broker(data_dir: &Path) -> BrokerProcess {
    add_user(data_dir, "alice", ALICE_PASSWORD, "SCRAM-SHA-512");
    add_user(data_dir, "alice", ALICE_PASSWORD, "SCRAM-SHA-256");
    start_broker_with(
        data_dir,
        &[
            "--listen-protocol",
            "SASL_PLAINTEXT",
            "--kafka-listen-protocol",
            "SASL_PLAINTEXT",
        ],
    )
}

fn rdkafka_config(
    bootstrap: &str,
    mechanism: &str,
    user: &str,
    password: &str,
) -> KafkaClientConfig {
    let mut config = KafkaClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", mechanism)
        .set("sasl.username", user)
        .set("sasl.password", password)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    config
}

/// Keeps the errors librdkafka reports, to check which one a refused client got.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<(RDKafkaErrorCode, String)>>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            self.0.lock().unwrap().push((code, reason.to_string()));
        }
    }
}

impl rdkafka::producer::ProducerContext for Errors {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

async fn native_client(addr: &str, sasl: Option<SaslConfig>) -> Result<Client, ClientError> {
    let mut config = ClientConfig {
        reconnect_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    config.connection.sasl = sasl;
    Client::connect(addr.to_string(), config).await
}

fn alice(mechanism: Mechanism) -> Option<SaslConfig> {
    Some(SaslConfig {
        mechanism,
        username: "alice".into(),
        password: ALICE_PASSWORD.into(),
    })
}

/// Records of `topic`/0 from the beginning, read with the native client as alice.
async fn native_values(addr: &str, topic: &str) -> Vec<String> {
    let client = native_client(addr, alice(Mechanism::Scram(ScramMechanism::Sha512)))
        .await
        .unwrap();
    let described = client.admin().describe_topic(topic).await;
    let Ok(described) = described else {
        return Vec::new();
    };
    let end = described.partitions[0].high_watermark;
    let config = strand_client::ConsumerConfig {
        start: strand_client::StartFrom::Earliest,
        ..strand_client::ConsumerConfig::default()
    };
    let mut consumer = strand_client::Consumer::new(client, topic, Some(vec![0]), config)
        .await
        .unwrap();
    let mut values = Vec::new();
    while (values.len() as u64) < end {
        let record = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("records arrive")
            .unwrap();
        values.push(
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned(),
        );
    }
    values
}

/// librdkafka produces and consumes as alice with each mechanism; what it wrote is what the
/// native client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_produces_and_consumes_with_scram_and_plain() {
    let dir = tempfile::tempdir().unwrap();
    let broker = sasl_broker(dir.path());
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] {
        let topic = format!("t-{}", mechanism.to_lowercase());
        let producer: FutureProducer =
            rdkafka_config(&broker.kafka_addr, mechanism, "alice", ALICE_PASSWORD)
                .set("message.timeout.ms", "20000")
                .create()
                .unwrap();
        for i in 0..3 {
            let value = format!("{mechanism}-{i}");
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic).payload(&value),
                    Duration::from_secs(20),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("{mechanism}: produce failed: {e}"));
        }
        let consumer: BaseConsumer =
            rdkafka_config(&broker.kafka_addr, mechanism, "alice", ALICE_PASSWORD)
                .set("group.id", format!("g-{topic}"))
                .set("auto.offset.reset", "earliest")
                .create()
                .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < 3 && std::time::Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.unwrap_or_else(|e| panic!("{mechanism}: consume: {e}"));
                seen.push(String::from_utf8_lossy(message.payload().unwrap()).into_owned());
            }
        }
        let expected: Vec<String> = (0..3).map(|i| format!("{mechanism}-{i}")).collect();
        assert_eq!(seen, expected, "{mechanism}");
        assert_eq!(native_values(&broker.addr, &topic).await, expected);
    }
}

/// A wrong password and an unknown user are refused alike: librdkafka reports an
/// authentication error, its record is never delivered, and the topic stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_and_unknown_users_are_refused_and_nothing_is_produced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = sasl_broker(dir.path());
    for (user, password, mechanism) in [
        ("alice", "guess", "SCRAM-SHA-512"),
        ("mallory", "guess", "SCRAM-SHA-512"),
        ("alice", "guess", "PLAIN"),
        ("mallory", ALICE_PASSWORD, "SCRAM-SHA-256"),
    ] {
        let errors = Errors::default();
        let producer: FutureProducer<Errors> =
            rdkafka_config(&broker.kafka_addr, mechanism, user, password)
                .set("message.timeout.ms", "3000")
                .create_with_context(errors.clone())
                .unwrap();
        let sent = producer
            .send(
                FutureRecord::<(), _>::to("refused").payload("x"),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            sent.is_err(),
            "{user}/{mechanism}: a refused client's record was delivered"
        );
        let seen = errors.0.lock().unwrap().clone();
        assert!(
            seen.iter()
                .any(|(code, reason)| *code == RDKafkaErrorCode::Authentication
                    && reason.contains("SASL authentication error")),
            "{user}/{mechanism}: {seen:?}"
        );
    }
    assert!(native_values(&broker.addr, "refused").await.is_empty());
}

/// Frames one Kafka request (length prefix included).
fn kafka_frame(api_key: ApiKey, version: i16, body: &impl Encodable) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(9)
        .with_client_id(Some(StrBytes::from_static_str("raw-sasl-test")))
        .encode(&mut buf, api_key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let mut frame = (buf.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&buf);
    frame
}

/// Whether the broker closes the connection within a few seconds (reading nothing more).
async fn closed(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn sasl_handshake(
    socket: &mut TcpStream,
    mechanism: &str,
    version: i16,
) -> SaslHandshakeResponse {
    let request =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism.into()));
    kafka_call(socket, ApiKey::SaslHandshake, version, &request).await
}

async fn sasl_authenticate(socket: &mut TcpStream, token: Vec<u8>) -> SaslAuthenticateResponse {
    let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
    kafka_call(socket, ApiKey::SaslAuthenticate, 2, &request).await
}

/// Before authentication only ApiVersions and the SASL requests are served; anything else
/// closes the connection, on both listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_authentication_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = sasl_broker(dir.path());

    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    let versions: ApiVersionsResponse = kafka_call(
        &mut socket,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    )
    .await;
    assert_eq!(versions.error_code, 0);
    let advertised: Vec<i16> = versions.api_keys.iter().map(|k| k.api_key).collect();
    for key in [
        ApiKey::SaslHandshake,
        ApiKey::SaslAuthenticate,
        ApiKey::DescribeUserScramCredentials,
        ApiKey::AlterUserScramCredentials,
    ] {
        assert!(advertised.contains(&(key as i16)), "{key:?} advertised");
    }
    socket
        .write_all(&kafka_frame(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default(),
        ))
        .await
        .unwrap();
    assert!(
        closed(&mut socket).await,
        "Metadata before authentication closes"
    );

    // The native listener answers IllegalSaslState, then closes.
    let client = native_client(&broker.addr, None).await.unwrap();
    let refused = client.admin().list_topics().await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::IllegalSaslState),
        "{refused}"
    );
    let connection = client.connection().await;
    assert!(
        connection.is_err()
            || connection
                .unwrap()
                .request(strand_client::native::Request::ListTopics)
                .await
                .is_err(),
        "an unauthenticated connection serves nothing"
    );

    // After authenticating on the same connection, everything is served.
    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    assert_eq!(
        sasl_handshake(&mut socket, "SCRAM-SHA-256", 1)
            .await
            .error_code,
        0
    );
    let scram = ScramClient::new(ScramMechanism::Sha256, "alice", ALICE_PASSWORD);
    let first = sasl_authenticate(&mut socket, scram.client_first()).await;
    assert_eq!(first.error_code, 0);
    let (client_final, last) = scram.server_first(&first.auth_bytes).unwrap();
    let done = sasl_authenticate(&mut socket, client_final).await;
    assert_eq!(done.error_code, 0);
    last.server_final(&done.auth_bytes).unwrap();
    let metadata: kafka_protocol::messages::MetadataResponse = kafka_call(
        &mut socket,
        ApiKey::Metadata,
        9,
        &MetadataRequest::default(),
    )
    .await;
    assert_eq!(metadata.brokers.len(), 1);
}

/// After SaslHandshake v0 the tokens travel bare, with only a length (kafka-python 2.0 and
/// aiokafka's bootstrap do this): PLAIN then a normal request on the same connection; a wrong
/// password just closes the connection, as Kafka does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_v0_takes_bare_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let broker = sasl_broker(dir.path());
    let bare = |token: &[u8]| {
        let mut frame = (token.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(token);
        frame
    };
    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    assert_eq!(sasl_handshake(&mut socket, "PLAIN", 0).await.error_code, 0);
    socket
        .write_all(&bare(&strand_client::sasl::plain_message(
            "alice",
            ALICE_PASSWORD,
        )))
        .await
        .unwrap();
    assert_eq!(
        socket.read_u32().await.unwrap(),
        0,
        "PLAIN's answer is an empty token"
    );
    let metadata: kafka_protocol::messages::MetadataResponse = kafka_call(
        &mut socket,
        ApiKey::Metadata,
        9,
        &MetadataRequest::default(),
    )
    .await;
    assert_eq!(metadata.brokers.len(), 1);

    // SCRAM over bare tokens.
    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    assert_eq!(
        sasl_handshake(&mut socket, "SCRAM-SHA-512", 0)
            .await
            .error_code,
        0
    );
    let scram = ScramClient::new(ScramMechanism::Sha512, "alice", ALICE_PASSWORD);
    socket
        .write_all(&bare(&scram.client_first()))
        .await
        .unwrap();
    let mut server_first = vec![0u8; socket.read_u32().await.unwrap() as usize];
    socket.read_exact(&mut server_first).await.unwrap();
    let (client_final, last) = scram.server_first(&server_first).unwrap();
    socket.write_all(&bare(&client_final)).await.unwrap();
    let mut server_final = vec![0u8; socket.read_u32().await.unwrap() as usize];
    socket.read_exact(&mut server_final).await.unwrap();
    last.server_final(&server_final).unwrap();

    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    assert_eq!(sasl_handshake(&mut socket, "PLAIN", 0).await.error_code, 0);
    socket
        .write_all(&bare(&strand_client::sasl::plain_message("alice", "guess")))
        .await
        .unwrap();
    assert!(closed(&mut socket).await);
}

/// Hostile SASL input gets Kafka's error codes and a closed connection, never a hang or a
/// crash: an unknown mechanism, a repeated handshake, SaslAuthenticate first, garbage and
/// oversized tokens, a bare token claiming 2 GiB. The broker serves alice afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sasl_bytes_get_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = sasl_broker(dir.path());
    let connect = || TcpStream::connect(&broker.kafka_addr);

    let mut socket = connect().await.unwrap();
    let unknown = sasl_handshake(&mut socket, "GSSAPI", 1).await;
    assert_eq!(unknown.error_code, 33, "UNSUPPORTED_SASL_MECHANISM");
    let listed: Vec<String> = unknown.mechanisms.iter().map(|m| m.to_string()).collect();
    assert_eq!(listed, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
    assert!(closed(&mut socket).await);

    let mut socket = connect().await.unwrap();
    assert_eq!(sasl_handshake(&mut socket, "PLAIN", 1).await.error_code, 0);
    assert_eq!(
        sasl_handshake(&mut socket, "PLAIN", 1).await.error_code,
        34,
        "ILLEGAL_SASL_STATE"
    );
    assert!(closed(&mut socket).await);

    let mut socket = connect().await.unwrap();
    let early = sasl_authenticate(&mut socket, b"\0alice\0x".to_vec()).await;
    assert_eq!(early.error_code, 34);
    assert!(closed(&mut socket).await);

    for (mechanism, token) in [
        ("SCRAM-SHA-512", vec![0xffu8; 300]),
        ("SCRAM-SHA-512", b"n,,n=alice,r=abc,tokenauth=true".to_vec()),
        ("SCRAM-SHA-256", vec![b'a'; 1 << 20]),
        ("PLAIN", b"alice".to_vec()),
    ] {
        let mut socket = connect().await.unwrap();
        assert_eq!(
            sasl_handshake(&mut socket, mechanism, 1).await.error_code,
            0
        );
        let refused = sasl_authenticate(&mut socket, token).await;
        assert_eq!(
            refused.error_code, 58,
            "SASL_AUTHENTICATION_FAILED for {mechanism}"
        );
        assert!(refused.error_message.is_some());
        assert!(closed(&mut socket).await);
    }

    let mut socket = connect().await.unwrap();
    assert_eq!(sasl_handshake(&mut socket, "PLAIN", 0).await.error_code, 0);
    socket.write_all(&i32::MAX.to_be_bytes()).await.unwrap();
    assert!(
        closed(&mut socket).await,
        "a 2 GiB bare token is refused from its length"
    );

    // The native listener: SaslAuthenticate first, and a second handshake.
    let client = native_client(&broker.addr, None).await.unwrap();
    let connection = client.connection().await.unwrap();
    let early = connection
        .request(strand_client::native::Request::SaslAuthenticate {
            token: Bytes::from_static(b"x"),
        })
        .await
        .unwrap_err();
    assert_eq!(early.code(), Some(ErrorCode::IllegalSaslState));
    let client = native_client(&broker.addr, None).await.unwrap();
    let connection = client.connection().await.unwrap();
    let unknown = connection
        .request(strand_client::native::Request::SaslHandshake {
            mechanism: "GSSAPI".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::UnsupportedSaslMechanism));
    assert!(unknown.to_string().contains("SCRAM-SHA-512"), "{unknown}");

    // Still serving.
    native_client(&broker.addr, alice(Mechanism::Plain))
        .await
        .unwrap();
}

/// The native client with each mechanism; wrong password and unknown user get the same
/// refusal; `strand user` creates, lists and deletes users, and the new user can log in
/// until deleted; the store keeps no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_client_and_strand_user_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let broker = sasl_broker(dir.path());
    for mechanism in Mechanism::ALL {
        let client = native_client(&broker.addr, alice(mechanism)).await.unwrap();
        let topic = format!("n-{}", mechanism.name().to_lowercase());
        client
            .admin()
            .create_topic(
                &topic,
                TopicSettings {
                    partitions: 1,
                    ..TopicSettings::default()
                },
            )
            .await
            .unwrap();
    }
    let refusal = |user: &str, password: &str| {
        let addr = broker.addr.clone();
        let (user, password) = (user.to_string(), password.to_string());
        async move {
            let sasl = SaslConfig {
                mechanism: Mechanism::Scram(ScramMechanism::Sha512),
                username: user,
                password,
            };
            match native_client(&addr, Some(sasl)).await {
                Err(ClientError::Broker { code, message }) => (code, message),
                other => panic!("not refused: {other:?}"),
            }
        }
    };
    let wrong = refusal("alice", "guess").await;
    let unknown = refusal("mallory", "guess").await;
    assert_eq!(wrong.0, ErrorCode::SaslAuthenticationFailed);
    assert_eq!(
        wrong, unknown,
        "a wrong password and an unknown user look the same"
    );

    let cli = strand_cli();
    let password_file = dir.path().join("alice.password");
    let bob_file = dir.path().join("bob.password");
    std::fs::write(&bob_file, "bob-pw\n").unwrap();
    let as_alice = |args: &[&str]| {
        let mut all = vec![
            "--user",
            "alice",
            "--password-file",
            password_file.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        run_cli(&cli, &broker.addr, &all, b"")
    };
    let created = as_alice(&[
        "user",
        "create",
        "bob",
        "--password-file",
        bob_file.to_str().unwrap(),
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let listed = as_alice(&["user", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("alice\tSCRAM-SHA-256 (4096 iterations), SCRAM-SHA-512 (4096 iterations)"),
        "{listed}"
    );
    assert!(
        listed.contains("bob\tSCRAM-SHA-512 (4096 iterations)"),
        "{listed}"
    );
    let as_bob = |args: &[&str]| {
        let mut all = vec![
            "--user",
            "bob",
            "--password-file",
            bob_file.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        run_cli(&cli, &broker.addr, &all, b"")
    };
    let topics = as_bob(&["topic", "list"]);
    assert!(
        topics.status.success(),
        "{}",
        String::from_utf8_lossy(&topics.stderr)
    );
    assert!(String::from_utf8_lossy(&topics.stdout).contains("n-plain"));
    let anonymous = run_cli(&cli, &broker.addr, &["topic", "list"], b"");
    assert!(!anonymous.status.success());
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("IllegalSaslState"));
    assert!(as_alice(&["user", "delete", "bob"]).status.success());
    let gone = as_bob(&["topic", "list"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("SaslAuthenticationFailed"));
    let missing = as_alice(&["user", "delete", "bob"]);
    assert!(
        !missing.status.success(),
        "deleting a user twice is an error"
    );
    let stored = std::fs::read_to_string(dir.path().join("security/users.json")).unwrap();
    assert!(!stored.contains(ALICE_PASSWORD) && !stored.contains("bob"));

    // The offline tool refuses to edit the store under a running broker.
    let output = Command::new(env!("CARGO_BIN_EXE_strand-broker"))
        .args(["--data-dir", dir.path().to_str().unwrap(), "user", "list"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("held by another process"));
}

/// Kafka's AlterUserScramCredentials and DescribeUserScramCredentials: a user created through
/// them logs in with librdkafka; bad upsertions and unknown deletions are refused per user with
/// Kafka's codes and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_user_scram_apis_create_users_librdkafka_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let broker = sasl_broker(dir.path());
    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    assert_eq!(sasl_handshake(&mut socket, "PLAIN", 1).await.error_code, 0);
    let ok = sasl_authenticate(
        &mut socket,
        strand_client::sasl::plain_message("alice", ALICE_PASSWORD),
    )
    .await;
    assert_eq!(ok.error_code, 0);

    let m = ScramMechanism::Sha512;
    let salt = b"0123456789abcdef".to_vec();
    let upsertion = |name: &str, iterations: i32, salted: Vec<u8>| {
        ScramCredentialUpsertion::default()
            .with_name(StrBytes::from_string(name.into()))
            .with_mechanism(m.kafka_type())
            .with_iterations(iterations)
            .with_salt(Bytes::from(salt.clone()))
            .with_salted_password(Bytes::from(salted))
    };
    let request = AlterUserScramCredentialsRequest::default()
        .with_upsertions(vec![
            upsertion("carol", 4096, m.salted_password(b"carol-pw", &salt, 4096)),
            upsertion("dave", 10, m.salted_password(b"dave-pw", &salt, 10)),
        ])
        .with_deletions(vec![
            kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                .with_name(StrBytes::from_static_str("nobody"))
                .with_mechanism(m.kafka_type()),
        ]);
    let altered: AlterUserScramCredentialsResponse =
        kafka_call(&mut socket, ApiKey::AlterUserScramCredentials, 0, &request).await;
    let codes: Vec<(String, i16)> = altered
        .results
        .iter()
        .map(|r| (r.user.to_string(), r.error_code))
        .collect();
    assert_eq!(
        codes,
        [
            ("nobody".to_string(), 91),
            ("carol".to_string(), 0),
            ("dave".to_string(), 93)
        ],
        "RESOURCE_NOT_FOUND, ok, UNACCEPTABLE_CREDENTIAL"
    );
    let described: DescribeUserScramCredentialsResponse = kafka_call(
        &mut socket,
        ApiKey::DescribeUserScramCredentials,
        0,
        &DescribeUserScramCredentialsRequest::default(),
    )
    .await;
    let users: Vec<(String, Vec<(i8, i32)>)> = described
        .results
        .iter()
        .map(|r| {
            (
                r.user.to_string(),
                r.credential_infos
                    .iter()
                    .map(|c| (c.mechanism, c.iterations))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        users,
        [
            ("alice".to_string(), vec![(1, 4096), (2, 4096)]),
            ("carol".to_string(), vec![(2, 4096)])
        ]
    );

    let producer: FutureProducer =
        rdkafka_config(&broker.kafka_addr, "SCRAM-SHA-512", "carol", "carol-pw")
            .set("message.timeout.ms", "20000")
            .create()
            .unwrap();
    producer
        .send(
            FutureRecord::<(), _>::to("carols").payload("hi"),
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("carol cannot produce: {e}"));
    assert_eq!(native_values(&broker.addr, "carols").await, ["hi"]);
}
