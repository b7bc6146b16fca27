//! Every request version the Kafka listener advertises, over a real socket; Go's sarama 1.22
//! (Debian's, built here from `broker/tests/sarama`) as a client nobody here wrote; and the
//! idempotent producer's sequences across a broker kill.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use strand_broker::kafka::SUPPORTED;
use strand_client::{Consumer, ConsumerConfig, TopicSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::broker_process::{client, start_broker, stop};
use super::kafka_clients::{idempotent_batch, kafka_call};

/// A request of `api_key` with every field at its default, as the crate encodes it, except
/// where a default would not be answered (Produce with acks=0).
fn default_request(api_key: ApiKey) -> RequestKind {
    match api_key {
        ApiKey::Produce => RequestKind::Produce(ProduceRequest::default().with_acks(-1)),
        ApiKey::Fetch => RequestKind::Fetch(FetchRequest::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(ListOffsetsRequest::default()),
        ApiKey::Metadata => RequestKind::Metadata(MetadataRequest::default()),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(OffsetCommitRequest::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(OffsetFetchRequest::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(FindCoordinatorRequest::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(JoinGroupRequest::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(HeartbeatRequest::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(LeaveGroupRequest::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(SyncGroupRequest::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(DescribeGroupsRequest::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(CreateTopicsRequest::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(DeleteTopicsRequest::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(InitProducerIdRequest::default()),
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::SaslHandshake => RequestKind::SaslHandshake(SaslHandshakeRequest::default()),
        ApiKey::SaslAuthenticate => {
            RequestKind::SaslAuthenticate(SaslAuthenticateRequest::default())
        }
        ApiKey::DescribeUserScramCredentials => {
            RequestKind::DescribeUserScramCredentials(DescribeUserScramCredentialsRequest::default())
        }
        ApiKey::AlterUserScramCredentials => {
            RequestKind::AlterUserScramCredentials(AlterUserScramCredentialsRequest::default())
        }
        ApiKey::CreateAcls => RequestKind::CreateAcls(CreateAclsRequest::default()),
        ApiKey::DescribeAcls => RequestKind::DescribeAcls(DescribeAclsRequest::default()),
        ApiKey::DeleteAcls => RequestKind::DeleteAcls(DeleteAclsRequest::default()),
        ApiKey::AddPartitionsToTxn => {
            RequestKind::AddPartitionsToTxn(AddPartitionsToTxnRequest::default())
        }
        ApiKey::AddOffsetsToTxn => RequestKind::AddOffsetsToTxn(AddOffsetsToTxnRequest::default()),
        ApiKey::EndTxn => RequestKind::EndTxn(EndTxnRequest::default()),
        ApiKey::TxnOffsetCommit => RequestKind::TxnOffsetCommit(TxnOffsetCommitRequest::default()),
        other => panic!("no default request for {other:?}: add it here"),
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

/// The body of a request in a version the crate no longer encodes, written field by field from
/// Kafka 3.9's schemas: one topic `t` (or `legacy-created`), one partition 0.
fn legacy_body(api_key: ApiKey, version: i16) -> BytesMut {
    let mut b = BytesMut::new();
    match api_key {
        ApiKey::Produce => {
            b.put_i16(-1); // acks
            b.put_i32(5_000);
            b.put_i32(1);
            put_str(&mut b, "t");
            b.put_i32(1);
            b.put_i32(0);
            b.put_i32(0); // an empty message set
        }
        ApiKey::Fetch => {
            b.put_i32(-1); // replica id
            b.put_i32(0); // max wait
            b.put_i32(0); // min bytes
            if version == 3 {
                b.put_i32(1 << 20); // max bytes
            }
            b.put_i32(1);
            put_str(&mut b, "t");
            b.put_i32(1);
            b.put_i32(0);
            b.put_i64(0); // fetch offset
            b.put_i32(1 << 20);
        }
        ApiKey::ListOffsets => {
            b.put_i32(-1);
            b.put_i32(1);
            put_str(&mut b, "t");
            b.put_i32(1);
            b.put_i32(0);
            b.put_i64(-1); // latest
            b.put_i32(1); // max number of offsets
        }
        ApiKey::OffsetCommit => {
            put_str(&mut b, "legacy-group");
            if version == 1 {
                b.put_i32(-1); // generation
                put_str(&mut b, ""); // member id
            }
            b.put_i32(1);
            put_str(&mut b, "t");
            b.put_i32(1);
            b.put_i32(0);
            b.put_i64(3); // offset
            if version == 1 {
                b.put_i64(-1); // commit timestamp
            }
            put_str(&mut b, "meta");
        }
        ApiKey::OffsetFetch => {
            put_str(&mut b, "legacy-group");
            b.put_i32(1);
            put_str(&mut b, "t");
            b.put_i32(1);
            b.put_i32(0);
        }
        ApiKey::CreateTopics => {
            b.put_i32(1);
            put_str(&mut b, "legacy-created");
            b.put_i32(1); // partitions
            b.put_i16(1); // replication factor
            b.put_i32(0); // assignments
            b.put_i32(0); // configs
            b.put_i32(5_000); // timeout
            if version == 1 {
                b.put_u8(0); // validate only
            }
        }
        ApiKey::DeleteTopics => {
            b.put_i32(1);
            put_str(&mut b, "legacy-created");
            b.put_i32(5_000);
        }
        ApiKey::CreateAcls => {
            b.put_i32(1);
            b.put_i8(2); // topic
            put_str(&mut b, "t");
            put_str(&mut b, "User:alice");
            put_str(&mut b, "*");
            b.put_i8(3); // read
            b.put_i8(3); // allow
        }
        ApiKey::DescribeAcls | ApiKey::DeleteAcls => {
            if api_key == ApiKey::DeleteAcls {
                b.put_i32(1);
            }
            b.put_i8(1); // any resource type
            b.put_i16(-1); // any name
            put_str(&mut b, "User:alice");
            b.put_i16(-1); // any host
            b.put_i8(1); // any operation
            b.put_i8(1); // any permission
        }
        other => panic!("no legacy body for {other:?} v{version}"),
    }
    b
}

/// Sends one frame on a new connection and returns the answer's body after checking its
/// correlation id; `None` when the broker closed the connection without answering.
async fn exchange(addr: &str, api_key: ApiKey, version: i16, body: &[u8]) -> Option<Bytes> {
    let mut frame = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(4242)
        .with_client_id(Some(StrBytes::from_static_str("versions-test")))
        .encode(&mut frame, api_key.request_header_version(version))
        .unwrap();
    frame.put_slice(body);
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(&(frame.len() as i32).to_be_bytes())
        .await
        .unwrap();
    socket.write_all(&frame).await.unwrap();
    let read = async {
        let len = socket.read_i32().await.ok()?;
        let mut answer = vec![0u8; len as usize];
        socket.read_exact(&mut answer).await.ok()?;
        Some(Bytes::from(answer))
    };
    let mut answer = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("no answer within 30 s")?;
    assert_eq!(
        answer.get_i32(),
        4242,
        "{api_key:?} v{version}: correlation id"
    );
    if api_key.response_header_version(version) >= 1 {
        assert_eq!(
            answer.get_u8(),
            0,
            "no tagged fields in the response header"
        );
    }
    Some(answer)
}

/// For every API the listener serves and every version ApiVersions advertises, a request is
/// answered (not a closed connection) with an answer that decodes in that version: through the
/// crate where it encodes the version, else field by field. Then a version past the range is
/// answered with UNSUPPORTED_VERSION where the answer has a top-level error code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_version_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let native = client(&broker.addr).await;
    native
        .admin()
        .create_topic(
            "t",
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    let addr = broker.kafka_addr.clone();

    let mut body = BytesMut::new();
    ApiVersionsRequest::default().encode(&mut body, 0).unwrap();
    let mut answer = exchange(&addr, ApiKey::ApiVersions, 0, &body)
        .await
        .unwrap();
    let advertised = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(advertised.error_code, 0);
    let advertised: Vec<(i16, i16, i16)> = advertised
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    let expected: Vec<(i16, i16, i16)> = SUPPORTED
        .iter()
        .map(|(k, min, max)| (*k as i16, *min, *max))
        .collect();
    assert_eq!(
        advertised, expected,
        "ApiVersions advertises exactly SUPPORTED"
    );

    let mut n_answered = 0;
    for (api_key, min, max) in SUPPORTED {
        for version in min..=max {
            let valid = api_key.valid_versions();
            let legacy = version < valid.min;
            let body = if legacy {
                legacy_body(api_key, version)
            } else {
                let mut b = BytesMut::new();
                default_request(api_key)
                    .encode(&mut b, version)
                    .unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}"));
                b
            };
            let Some(mut answer) = exchange(&addr, api_key, version, &body).await else {
                panic!("{api_key:?} v{version}: the connection was closed without an answer");
            };
            if legacy {
                check_legacy_answer(api_key, version, &mut answer);
            } else {
                ResponseKind::decode(api_key, &mut answer, version)
                    .unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}"));
            }
            assert!(
                !answer.has_remaining(),
                "{api_key:?} v{version}: {} bytes left over",
                answer.remaining()
            );
            n_answered += 1;
        }
    }
    assert!(n_answered > 150, "{n_answered} versions");

    // Past the served range: Kafka's UNSUPPORTED_VERSION (35) where the answer can say it,
    // including ApiVersions, answered in v0.
    let mut body = BytesMut::new();
    FetchRequest::default().encode(&mut body, 13).unwrap();
    let mut answer = exchange(&addr, ApiKey::Fetch, 13, &body).await.unwrap();
    let fetched = FetchResponse::decode(&mut answer, 13).unwrap();
    assert_eq!(fetched.error_code, 35, "Fetch v13 needs topic ids");
    let mut body = BytesMut::new();
    ApiVersionsRequest::default().encode(&mut body, 4).unwrap();
    let mut answer = exchange(&addr, ApiKey::ApiVersions, 4, &body)
        .await
        .unwrap();
    let fallback = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(
        fallback.error_code, 35,
        "ApiVersions v4 is answered in v0 with 35"
    );
    stop(broker);
}

fn get_str(b: &mut Bytes) -> String {
    let len = b.get_i16();
    String::from_utf8(b.split_to(len.max(0) as usize).to_vec()).unwrap()
}

/// Reads the answer to [`legacy_body`]'s request in Kafka 3.9's layout for that version and
/// checks what it says.
fn check_legacy_answer(api_key: ApiKey, version: i16, b: &mut Bytes) {
    let at = format!("{api_key:?} v{version}");
    match api_key {
        ApiKey::Produce => {
            assert_eq!(b.get_i32(), 1, "{at}");
            assert_eq!(get_str(b), "t");
            assert_eq!(b.get_i32(), 1);
            assert_eq!(b.get_i32(), 0);
            assert_eq!(b.get_i16(), 43, "{at}: UNSUPPORTED_FOR_MESSAGE_FORMAT");
            assert_eq!(b.get_i64(), -1, "{at}: base offset");
            if version == 2 {
                assert_eq!(b.get_i64(), -1, "{at}: log append time");
            }
            if version >= 1 {
                assert_eq!(b.get_i32(), 0, "{at}: throttle time");
            }
        }
        ApiKey::Fetch => {
            if version >= 1 {
                assert_eq!(b.get_i32(), 0, "{at}: throttle time");
            }
            assert_eq!(b.get_i32(), 1);
            assert_eq!(get_str(b), "t");
            assert_eq!(b.get_i32(), 1);
            assert_eq!(b.get_i32(), 0);
            assert_eq!(b.get_i16(), 0, "{at}");
            assert_eq!(b.get_i64(), 0, "{at}: high watermark");
            assert_eq!(b.get_i32(), 0, "{at}: no records (an empty message set)");
        }
        ApiKey::ListOffsets => {
            assert_eq!(b.get_i32(), 1);
            assert_eq!(get_str(b), "t");
            assert_eq!(b.get_i32(), 1);
            assert_eq!(b.get_i32(), 0);
            assert_eq!(b.get_i16(), 0, "{at}");
            assert_eq!(b.get_i32(), 1, "{at}: one old-style offset");
            assert_eq!(
                b.get_i64(),
                0,
                "{at}: the latest offset of an empty partition"
            );
        }
        ApiKey::OffsetCommit => {
            assert_eq!(b.get_i32(), 1);
            assert_eq!(get_str(b), "t");
            assert_eq!(b.get_i32(), 1);
            assert_eq!(b.get_i32(), 0);
            assert_eq!(b.get_i16(), 0, "{at}: committed");
        }
        ApiKey::OffsetFetch => {
            assert_eq!(b.get_i32(), 1);
            assert_eq!(get_str(b), "t");
            assert_eq!(b.get_i32(), 1);
            assert_eq!(b.get_i32(), 0);
            assert_eq!(b.get_i64(), 3, "{at}: the offset the v0/v1 commits stored");
            assert_eq!(get_str(b), "meta");
            assert_eq!(b.get_i16(), 0, "{at}");
        }
        ApiKey::CreateTopics => {
            assert_eq!(b.get_i32(), 1);
            assert_eq!(get_str(b), "legacy-created");
            // v0 creates it; v1 finds it there: TOPIC_ALREADY_EXISTS (36), with a message.
            let code = b.get_i16();
            if version == 0 {
                assert_eq!(code, 0, "{at}");
            } else {
                assert_eq!(code, 36, "{at}");
                let message_len = b.get_i16();
                b.advance(message_len.max(0) as usize);
            }
        }
        ApiKey::DeleteTopics => {
            assert_eq!(b.get_i32(), 1);
            assert_eq!(get_str(b), "legacy-created");
            assert_eq!(b.get_i16(), 0, "{at}: deleted");
        }
        ApiKey::CreateAcls => {
            assert_eq!(b.get_i32(), 0, "{at}: throttle time");
            assert_eq!(b.get_i32(), 1);
            assert_eq!(b.get_i16(), 0, "{at}: created");
            assert_eq!(b.get_i16(), -1, "{at}: no error message");
        }
        // The binding CreateAcls v0 made, without a pattern type; DeleteAcls v0 removes it.
        ApiKey::DescribeAcls | ApiKey::DeleteAcls => {
            assert_eq!(b.get_i32(), 0, "{at}: throttle time");
            if api_key == ApiKey::DeleteAcls {
                assert_eq!(b.get_i32(), 1, "{at}: one filter result");
            }
            assert_eq!(b.get_i16(), 0, "{at}");
            get_str(b); // error message: null or empty
            assert_eq!(b.get_i32(), 1, "{at}: one binding");
            if api_key == ApiKey::DeleteAcls {
                assert_eq!(b.get_i16(), 0, "{at}: deleted");
                get_str(b);
            }
            assert_eq!(b.get_i8(), 2, "{at}: topic");
            assert_eq!(get_str(b), "t");
            if api_key == ApiKey::DescribeAcls {
                assert_eq!(b.get_i32(), 1, "{at}: one ACL");
            }
            assert_eq!(get_str(b), "User:alice");
            assert_eq!(get_str(b), "*");
            assert_eq!((b.get_i8(), b.get_i8()), (3, 3), "{at}: read, allow");
        }
        other => panic!("{other:?} v{version} has no legacy layout"),
    }
}

/// One acks=all Produce v9 of `batch` to `topic`/0 on a new connection: (error code, base
/// offset).
async fn produce(addr: &str, topic: &str, batch: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let response: ProduceResponse = kafka_call(&mut socket, ApiKey::Produce, 9, &request).await;
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// An idempotent producer's batches acknowledged before a kill -9 are still recognised after
/// the restart: a retry of either is answered with its first offset and not written again, the
/// next sequence is appended, and a gap is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_straddling_a_broker_kill_are_not_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_broker(dir.path());
    let native = client(&broker.addr).await;
    native
        .admin()
        .create_topic(
            "straddle",
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    drop(native);
    let mut socket = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    let init: InitProducerIdResponse = kafka_call(
        &mut socket,
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id((-1).into())
            .with_producer_epoch(-1),
    )
    .await;
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    let addr = broker.kafka_addr.clone();
    assert_eq!(
        produce(&addr, "straddle", idempotent_batch(pid, epoch, 0, 5)).await,
        (0, 0)
    );
    assert_eq!(
        produce(&addr, "straddle", idempotent_batch(pid, epoch, 5, 5)).await,
        (0, 5)
    );

    broker.child.kill().unwrap();
    broker.child.wait().unwrap();
    let broker = start_broker(dir.path());
    let addr = broker.kafka_addr.clone();
    // Both retries: their first offsets, nothing written.
    assert_eq!(
        produce(&addr, "straddle", idempotent_batch(pid, epoch, 5, 5)).await,
        (0, 5)
    );
    assert_eq!(
        produce(&addr, "straddle", idempotent_batch(pid, epoch, 0, 5)).await,
        (0, 0)
    );
    // A gap is OUT_OF_ORDER_SEQUENCE_NUMBER (45), as before the kill; the next batch goes on.
    assert_eq!(
        produce(&addr, "straddle", idempotent_batch(pid, epoch, 20, 1))
            .await
            .0,
        45
    );
    assert_eq!(
        produce(&addr, "straddle", idempotent_batch(pid, epoch, 10, 1)).await,
        (0, 10)
    );

    let native = client(&broker.addr).await;
    let mut consumer = Consumer::new(native, "straddle", None, ConsumerConfig::default())
        .await
        .unwrap();
    let mut values = Vec::new();
    while values.len() < 11 {
        let r = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("native consumer stalled")
            .unwrap();
        values.push((
            r.offset,
            String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
        ));
    }
    let expected: Vec<(u64, String)> = (0..11).map(|i| (i, format!("seq-{i}"))).collect();
    assert_eq!(values, expected, "no retry was written twice");
    stop(broker);
}

/// Builds `broker/tests/sarama` with Debian's Go and sarama (GOPATH mode, offline) into `dir`.
fn build_sarama_check(dir: &Path) -> PathBuf {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sarama/main.go");
    let binary = dir.join("sarama-check");
    let gopath = "/usr/share/gocode";
    assert!(
        Path::new(gopath)
            .join("src/github.com/Shopify/sarama")
            .is_dir(),
        "sarama is missing: apt-get install golang-go golang-github-shopify-sarama-dev \
         (bash .ci/run installs them)"
    );
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(source)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOFLAGS", "")
        .env("GOCACHE", dir.join("go-cache"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `go` ({e}): apt-get install golang-go \
                 golang-github-shopify-sarama-dev (bash .ci/run installs them)"
            )
        });
    assert!(
        output.status.success(),
        "go build failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}

/// Runs the sarama program (every wait in it is bounded, and `timeout` bounds it again) and
/// returns its output lines; fails the test with its stderr when it fails.
fn sarama(binary: &Path, args: &[&str]) -> Vec<String> {
    let output = Command::new("timeout")
        .arg("180")
        .arg(binary)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sarama-check {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn consumed_values(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("got "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

/// sarama 1.22 (Debian's): admin-created topic, idempotent producer, a consumer group that
/// commits with OffsetCommit v1, and a second run after a broker restart that resumes after
/// the commit; then what a sarama configured for Kafka 0.10 sends (CreateTopics v0, ListOffsets
/// v0, Fetch v2 reading message sets v1, Produce v2 with a message set) is answered, the last
/// with the protocol's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sarama_produces_idempotently_and_its_group_resumes_after_its_commit() {
    let tools = tempfile::tempdir().unwrap();
    let binary = build_sarama_check(tools.path());
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let bootstrap = broker.kafka_addr.clone();

    let sent = sarama(&binary, &["produce", &bootstrap, "sarama", "0", "10"]);
    assert!(sent.contains(&"sent m-9 at 9".to_string()), "{sent:?}");
    let first = sarama(&binary, &["consume", &bootstrap, "sarama", "sg", "10"]);
    let expected: Vec<String> = (0..10).map(|i| format!("m-{i}")).collect();
    assert_eq!(consumed_values(&first), expected);
    sarama(&binary, &["produce", &bootstrap, "sarama", "10", "5"]);

    stop(broker);
    let broker = start_broker(dir.path());
    let bootstrap = broker.kafka_addr.clone();
    // A new run of the group starts after what the first one committed.
    let second = sarama(&binary, &["consume", &bootstrap, "sarama", "sg", "5"]);
    let expected: Vec<String> = (10..15).map(|i| format!("m-{i}")).collect();
    assert_eq!(consumed_values(&second), expected, "{second:?}");

    let legacy = sarama(&binary, &["legacy", &bootstrap, "sarama"]);
    assert!(legacy.contains(&"newest 15".to_string()), "{legacy:?}");
    // Fetch v2: the stored batches as message sets v1, every record in order.
    let old: Vec<&String> = legacy
        .iter()
        .filter(|l| l.starts_with("old got "))
        .collect();
    let expected: Vec<String> = (0..15).map(|i| format!("old got m-{i} at {i}")).collect();
    assert_eq!(old, expected.iter().collect::<Vec<_>>(), "{legacy:?}");
    let refused = legacy
        .iter()
        .find(|l| l.starts_with("produce v2: "))
        .unwrap();
    assert!(
        refused.contains("not supported by the message format version"),
        "{legacy:?}"
    );
    let legacy = sarama(&binary, &["legacy", &bootstrap, "sarama-old"]);
    assert!(
        legacy.contains(&"topic sarama-old".to_string()),
        "{legacy:?}"
    );
    assert!(legacy.contains(&"newest 0".to_string()), "{legacy:?}");
    stop(broker);
}
