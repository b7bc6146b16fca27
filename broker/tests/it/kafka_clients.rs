//! Kafka clients nobody here wrote against the real `strand-broker` binary's Kafka listener:
//! the `rdkafka` crate (the librdkafka it bundles) for the idempotent producer, admin requests
//! and a high-level consumer group; raw `kafka-protocol` requests for the idempotent producer's
//! duplicate and gap handling, which a healthy client never shows on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, TimestampType};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig as KafkaClientConfig, Message as _};
use strand_client::{
    Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, TopicSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::broker_process::{client, start_broker, stop};

fn kafka_config(bootstrap: &str) -> KafkaClientConfig {
    let mut config = KafkaClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "4");
    config
}

fn idempotent_producer(bootstrap: &str) -> FutureProducer {
    kafka_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

fn group_consumer(bootstrap: &str, group: &str, auto_commit: bool) -> StreamConsumer {
    kafka_config(bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set(
            "enable.auto.commit",
            if auto_commit { "true" } else { "false" },
        )
        .set("auto.commit.interval.ms", "100")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

/// Produces `n` keyed records from `from`, all in flight at once, and returns where each went.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    from: usize,
    n: usize,
) -> Vec<(i32, i64, String)> {
    let mut pending = Vec::new();
    for i in from..from + n {
        let key = format!("order-{i}");
        let value = format!("{{\"order\":{i}}}");
        let record = FutureRecord::to(topic).key(&key).payload(&value);
        pending.push((
            key.clone(),
            producer.send_result(record).map_err(|(e, _)| e).unwrap(),
        ));
    }
    let mut delivered = Vec::new();
    for (key, future) in pending {
        let delivery = future.await.expect("delivery future").expect("delivered");
        delivered.push((delivery.partition, delivery.offset, key));
    }
    delivered
}

/// What each consumer received: (partition, offset) to key.
type Received = BTreeMap<(i32, i64), String>;

/// Receives until `done` says so or `timeout` passes; returns what arrived.
async fn consume_until(
    consumer: &StreamConsumer,
    received: &mut Received,
    timeout: Duration,
    mut done: impl FnMut(&Received) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(received) && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            received.insert((m.partition(), m.offset()), key);
        }
    }
}

/// Commits what the consumer has read; "no offset stored" means auto-commit already did.
fn commit_all(consumer: &StreamConsumer) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => panic!("commit failed: {e}"),
    }
}

/// librdkafka's idempotent producer with acks=all, topics created by its admin client, two
/// members of one group sharing the partitions, one leaving, the other taking over every
/// partition; the native consumer sees the same records, and the group sees records the native
/// producer wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_idempotent_producer_and_a_group_that_rebalances() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let bootstrap = broker.kafka_addr.clone();

    let admin: AdminClient<DefaultClientContext> =
        kafka_config(&bootstrap).create().expect("admin");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = admin
        .create_topics(
            &[NewTopic::new("orders", 4, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");
    let again = admin
        .create_topics(
            &[
                NewTopic::new("orders", 4, TopicReplication::Fixed(1)),
                NewTopic::new("replicated", 1, TopicReplication::Fixed(3)),
            ],
            &options,
        )
        .await
        .unwrap();
    assert!(
        format!("{again:?}").contains("TopicAlreadyExists"),
        "{again:?}"
    );
    assert!(
        format!("{again:?}").contains("InvalidReplicationFactor"),
        "{again:?}"
    );

    // Both members join first, so the first half is shared between them.
    let a = group_consumer(&bootstrap, "order-processor", true);
    let b = group_consumer(&bootstrap, "order-processor", true);
    a.subscribe(&["orders"]).unwrap();
    b.subscribe(&["orders"]).unwrap();
    let (mut got_a, mut got_b) = (Received::new(), Received::new());
    let assigned = |c: &StreamConsumer| c.assignment().map_or(0, |a| a.count());
    let deadline = Instant::now() + Duration::from_secs(60);
    while (assigned(&a), assigned(&b)) != (2, 2) && Instant::now() < deadline {
        consume_until(&a, &mut got_a, Duration::from_millis(200), |_| false).await;
        consume_until(&b, &mut got_b, Duration::from_millis(200), |_| false).await;
    }
    assert_eq!(
        (assigned(&a), assigned(&b)),
        (2, 2),
        "two members share four partitions"
    );

    let producer = idempotent_producer(&bootstrap);
    let first = produce(&producer, "orders", 0, 2000).await;
    // Per partition, offsets follow send order (the idempotent producer keeps order).
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset, _) in &first {
        let previous = last.insert(*partition, *offset);
        assert!(
            previous.is_none_or(|p| p < *offset),
            "reordered at {partition}/{offset}"
        );
    }
    assert_eq!(last.len(), 4, "keys spread over all partitions");

    let deadline = Instant::now() + Duration::from_secs(60);
    while got_a.len() + got_b.len() < 2000 && Instant::now() < deadline {
        consume_until(&a, &mut got_a, Duration::from_millis(300), |_| false).await;
        consume_until(&b, &mut got_b, Duration::from_millis(300), |_| false).await;
    }
    assert!(!got_a.is_empty() && !got_b.is_empty());
    let union: BTreeSet<(i32, i64)> = got_a.keys().chain(got_b.keys()).copied().collect();
    assert_eq!(
        union.len(),
        2000,
        "every record of the first half delivered"
    );

    // B commits what it has and leaves; A takes over all four partitions.
    commit_all(&b);
    drop(b);
    let second = produce(&producer, "orders", 2000, 2000).await;
    let wanted: BTreeSet<(i32, i64)> = first
        .iter()
        .chain(&second)
        .map(|(p, o, _)| (*p, *o))
        .collect();
    consume_until(&a, &mut got_a, Duration::from_secs(60), |got| {
        wanted
            .iter()
            .all(|k| got.contains_key(k) || got_b.contains_key(k))
    })
    .await;
    assert_eq!(a.assignment().unwrap().count(), 4, "A took every partition");
    let missing: Vec<_> = wanted
        .iter()
        .filter(|k| !got_a.contains_key(k) && !got_b.contains_key(k))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    for ((p, o), key) in got_a.iter().chain(&got_b) {
        let sent = first
            .iter()
            .chain(&second)
            .find(|(sp, so, _)| sp == p && so == o);
        assert_eq!(sent.map(|s| &s.2), Some(key), "record {p}/{o}");
    }
    commit_all(&a);

    // Cross protocol: the native consumer reads what librdkafka wrote...
    let native = client(&broker.addr).await;
    let mut consumer = Consumer::new(native.clone(), "orders", None, ConsumerConfig::default())
        .await
        .unwrap();
    let mut native_got = BTreeMap::new();
    while native_got.len() < 4000 {
        let r = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("native consumer stalled")
            .unwrap();
        let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
        native_got.insert((r.partition as i32, r.offset as i64), key);
    }
    let all_sent: BTreeMap<(i32, i64), String> = first
        .iter()
        .chain(&second)
        .map(|(p, o, k)| ((*p, *o), k.clone()))
        .collect();
    assert_eq!(native_got, all_sent);
    // ...and the Kafka group reads what the native producer writes.
    let native_producer = Producer::new(native.clone(), ProducerConfig::default());
    for i in 0..100 {
        native_producer
            .send(ProducerRecord::new("orders", format!("native-{i}")).key(format!("n{i}")))
            .await
            .unwrap();
    }
    native_producer.flush().await.unwrap();
    let mut native_seen = Received::new();
    consume_until(&a, &mut native_seen, Duration::from_secs(30), |got| {
        got.values().filter(|k| k.starts_with('n')).count() == 100
    })
    .await;
    assert_eq!(
        native_seen.values().filter(|k| k.starts_with('n')).count(),
        100
    );
    drop(a);
    stop(broker);
}

/// Commits made through the Kafka listener survive `kill -9` of the broker: a new member of the
/// group resumes exactly after them. The topic is created by the producer's metadata request
/// (auto topic creation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_commits_survive_a_broker_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_broker(dir.path());
    let producer = idempotent_producer(&broker.kafka_addr);
    let sent = produce(&producer, "auto-created", 0, 100).await;
    assert!(
        sent.iter().all(|(p, _, _)| *p == 0),
        "one partition by default"
    );
    drop(producer);

    let consumer = group_consumer(&broker.kafka_addr, "resumer", false);
    consumer.subscribe(&["auto-created"]).unwrap();
    let mut got = Received::new();
    consume_until(&consumer, &mut got, Duration::from_secs(60), |g| {
        g.len() >= 60
    })
    .await;
    assert!(got.len() >= 60, "got {}", got.len());
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("auto-created", 0, rdkafka::Offset::Offset(60))
        .unwrap();
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
    drop(consumer);

    broker.child.kill().unwrap();
    broker.child.wait().unwrap();
    let broker = start_broker(dir.path());
    let consumer = group_consumer(&broker.kafka_addr, "resumer", false);
    consumer.subscribe(&["auto-created"]).unwrap();
    let mut resumed = Received::new();
    consume_until(&consumer, &mut resumed, Duration::from_secs(60), |g| {
        g.len() >= 40
    })
    .await;
    let offsets: Vec<i64> = resumed.keys().map(|(_, o)| *o).collect();
    assert_eq!(offsets, (60..100).collect::<Vec<_>>());
    drop(consumer);
    stop(broker);
}

/// Sends one request and decodes its response, as a Kafka client does.
pub(crate) async fn kafka_call<Req: Encodable, Resp: Decodable>(
    socket: &mut TcpStream,
    api_key: ApiKey,
    version: i16,
    request: &Req,
) -> Resp {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("raw-test")))
        .encode(&mut buf, api_key.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    socket
        .write_all(&(buf.len() as i32).to_be_bytes())
        .await
        .unwrap();
    socket.write_all(&buf).await.unwrap();
    let len = socket.read_i32().await.unwrap();
    let mut body = vec![0u8; len as usize];
    socket.read_exact(&mut body).await.unwrap();
    let mut body = Bytes::from(body);
    ResponseHeader::decode(&mut body, api_key.response_header_version(version)).unwrap();
    let response = Resp::decode(&mut body, version).unwrap();
    assert!(!body.has_remaining(), "response fully decoded");
    response
}

pub(crate) fn idempotent_batch(producer_id: i64, epoch: i16, first_seq: i32, n: usize) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: first_seq + i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("seq-{}", first_seq + i as i32))),
            headers: IndexMap::new(),
            delete_horizon: false,
        })
        .collect();
    super::support::encode_batch(&records, Compression::None)
}

/// One acks=all Produce v7 of `batch` to `idem`/0 on a new connection: (error code, base
/// offset).
async fn produce_raw(addr: String, batch: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("idem")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let mut socket = TcpStream::connect(&addr).await.unwrap();
    let response: ProduceResponse = kafka_call(&mut socket, ApiKey::Produce, 7, &request).await;
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Idempotent produce at the protocol level: a retried batch is answered with the offset it
/// got the first time and is not written twice; a batch that skips sequences and one from an
/// older epoch are refused with Kafka's error codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_get_their_first_offset_and_gaps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let native = client(&broker.addr).await;
    native
        .admin()
        .create_topic(
            "idem",
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
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
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert!(pid > 0);

    let addr = broker.kafka_addr.clone();
    let call = |batch: Bytes| produce_raw(addr.clone(), batch);
    assert_eq!(call(idempotent_batch(pid, epoch, 0, 5)).await, (0, 0));
    assert_eq!(call(idempotent_batch(pid, epoch, 5, 5)).await, (0, 5));
    // A retry of the first batch: its original offset, nothing written.
    assert_eq!(call(idempotent_batch(pid, epoch, 0, 5)).await, (0, 0));
    // A gap: OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    assert_eq!(call(idempotent_batch(pid, epoch, 20, 5)).await.0, 45);
    // An older epoch after a newer one: INVALID_PRODUCER_EPOCH (47).
    assert_eq!(call(idempotent_batch(pid, epoch + 1, 0, 1)).await, (0, 10));
    assert_eq!(call(idempotent_batch(pid, epoch, 10, 1)).await.0, 47);

    let mut consumer = Consumer::new(native.clone(), "idem", None, ConsumerConfig::default())
        .await
        .unwrap();
    let mut values = Vec::new();
    while values.len() < 11 {
        let r = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("native consumer stalled")
            .unwrap();
        values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
    }
    let expected: Vec<String> = (0..10)
        .map(|i| format!("seq-{i}"))
        .chain(["seq-0".to_string()])
        .collect();
    assert_eq!(values, expected, "the retry was not written twice");
    stop(broker);
}
