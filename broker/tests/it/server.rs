//! The native listener over real sockets on port 0, driven by the real client and by raw bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strand_broker::group::CoordinatorConfig;
use strand_broker::listener::BoundListener;
use strand_broker::log::LogConfig;
use strand_broker::metrics::Metrics;
use strand_broker::server::{self, ServerConfig};
use strand_broker::service::Broker;
use strand_broker::topics::Topics;
use strand_client::connection::{Connection, ConnectionConfig};
use strand_client::native::frame::{self, SERVER_HEADER_BYTES};
use strand_client::native::{ApiKey, ErrorCode, Request, Response, ResponseBody};
use strand_client::{
    Acks, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, StartFrom, TopicSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::support::{batch, values};

/// A broker served in-process from `dir`.
pub struct TestBroker {
    pub addr: String,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    topics: Arc<Topics>,
    pub metrics: Arc<Metrics>,
}

impl TestBroker {
    pub async fn start(dir: &std::path::Path, config: ServerConfig) -> TestBroker {
        TestBroker::start_at(dir, config, "127.0.0.1:0").await
    }

    pub async fn start_at(dir: &std::path::Path, config: ServerConfig, addr: &str) -> TestBroker {
        let defaults = LogConfig {
            retention_ms: None,
            ..LogConfig::default()
        };
        let (topics, _) = Topics::open(dir, defaults).unwrap();
        let topics = Arc::new(topics);
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (shutdown, rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let coordinator = CoordinatorConfig {
            session_timeout_ms_min: 10,
            ..CoordinatorConfig::default()
        };
        let broker = Broker::new(
            topics.clone(),
            metrics.clone(),
            coordinator,
            Duration::from_secs(30),
        )
        .unwrap();
        broker.spawn_group_ticker(rx.clone());
        let task = tokio::spawn(server::serve(
            vec![BoundListener::plaintext(listener).unwrap()],
            broker,
            config,
            rx,
        ));
        TestBroker {
            addr,
            shutdown,
            task,
            topics,
            metrics,
        }
    }

    pub async fn stop(self) {
        self.shutdown.send(true).unwrap();
        self.task.await.unwrap();
        self.topics.close().unwrap();
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr.clone(), ClientConfig::default())
            .await
            .unwrap()
    }
}

fn settings(partitions: u32) -> TopicSettings {
    TopicSettings {
        partitions,
        ..TopicSettings::default()
    }
}

/// With `send_when_idle`, a record sent while nothing is unanswered goes out at once, not after
/// the hour-long linger; records sent while requests are out are batched and go when the last
/// answer comes, also long before the linger; all arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_sends_when_idle_does_not_wait_out_its_linger() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let client = broker.client().await;
    client.admin().create_topic("t", settings(1)).await.unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::from_secs(3600),
            send_when_idle: true,
            ..ProducerConfig::default()
        },
    );
    let lone = producer
        .send(ProducerRecord::new("t", "lone"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(30), lone)
        .await
        .expect("a lone record is not held for the linger")
        .unwrap();
    assert_eq!(d.offset, 0);
    let mut deliveries = Vec::new();
    for n in 0..200u64 {
        deliveries.push(
            producer
                .send(ProducerRecord::new("t", format!("burst{n}")))
                .await
                .unwrap(),
        );
    }
    for (n, delivery) in deliveries.into_iter().enumerate() {
        let d = tokio::time::timeout(Duration::from_secs(30), delivery)
            .await
            .expect("records batched behind an answer go when it comes")
            .unwrap();
        assert_eq!(d.offset, n as u64 + 1);
    }
}

/// The producer's bounds and endings: a queue of three records with tiny batches and no
/// linger still delivers everything in order; a refused record fails alone; a producer dropped
/// with a long linger still sends what it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_delivers_in_order_under_tight_bounds_and_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let client = broker.client().await;
    client.admin().create_topic("t", settings(2)).await.unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::ZERO,
            batch_bytes_max: 300,
            in_flight_per_partition_max: 1,
            queue_records_max: 3,
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for n in 0..500u64 {
        let record = ProducerRecord {
            partition: Some(0),
            ..ProducerRecord::new("t", format!("v{n}"))
        };
        deliveries.push(producer.send(record).await.unwrap());
    }
    let refused = producer
        .send(ProducerRecord {
            partition: Some(7),
            ..ProducerRecord::new("t", "nowhere")
        })
        .await
        .unwrap();
    assert!(matches!(refused.await, Err(ClientError::Invalid(_))));
    for (n, delivery) in deliveries.into_iter().enumerate() {
        let d = delivery.await.unwrap();
        assert_eq!((d.partition, d.offset), (0, n as u64));
    }
    producer.close().await.unwrap();

    let lingering = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::from_secs(3600),
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for n in 0..10u64 {
        let record = ProducerRecord {
            partition: Some(1),
            ..ProducerRecord::new("t", format!("late{n}"))
        };
        deliveries.push(lingering.send(record).await.unwrap());
    }
    drop(lingering);
    for (n, delivery) in deliveries.into_iter().enumerate() {
        let d = tokio::time::timeout(Duration::from_secs(30), delivery)
            .await
            .expect("a dropped producer still sends")
            .unwrap();
        assert_eq!((d.partition, d.offset), (1, n as u64));
    }
    let mut consumer = Consumer::new(client, "t", Some(vec![0, 1]), ConsumerConfig::default())
        .await
        .unwrap();
    let mut seen: HashMap<u32, Vec<String>> = HashMap::new();
    for _ in 0..510 {
        let record = consumer.next().await.unwrap();
        seen.entry(record.partition)
            .or_default()
            .push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
    }
    assert_eq!(
        seen[&0],
        (0..500).map(|n| format!("v{n}")).collect::<Vec<_>>()
    );
    assert_eq!(
        seen[&1],
        (0..10).map(|n| format!("late{n}")).collect::<Vec<_>>()
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_round_trip_in_order_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let client = broker.client().await;
    client
        .admin()
        .create_topic("orders", settings(4))
        .await
        .unwrap();
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 5_000;
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let client = broker.client().await;
        tasks.push(tokio::spawn(async move {
            let producer = Producer::new(client, ProducerConfig::default());
            let mut deliveries = Vec::new();
            for n in 0..PER_PRODUCER {
                let record = ProducerRecord::new("orders", format!("producer-{p}-record-{n}"))
                    .key(format!("key-{}", n % 50));
                deliveries.push((n, producer.send(record).await.unwrap()));
            }
            let mut sent = Vec::new();
            for (n, delivery) in deliveries {
                let d = delivery.await.unwrap();
                sent.push((
                    d.partition,
                    d.offset,
                    format!("producer-{p}-record-{n}"),
                    format!("key-{}", n % 50),
                ));
            }
            producer.close().await.unwrap();
            sent
        }));
    }
    let mut expected: HashMap<(u32, u64), (String, String)> = HashMap::new();
    for task in tasks {
        for (partition, offset, value, key) in task.await.unwrap() {
            assert!(
                expected.insert((partition, offset), (value, key)).is_none(),
                "offset given twice"
            );
        }
    }
    let mut consumer = Consumer::new(client, "orders", None, ConsumerConfig::default())
        .await
        .unwrap();
    let mut seen = 0;
    let mut last_per_producer: HashMap<(u32, String), usize> = HashMap::new();
    while seen < PRODUCERS * PER_PRODUCER {
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap()
            .unwrap();
        let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
        let (want_value, want_key) = &expected[&(record.partition, record.offset)];
        assert_eq!(&value, want_value);
        assert_eq!(record.key.as_deref(), Some(want_key.as_bytes()));
        // Keys pin records to partitions, so each producer's records stay in send order there.
        let mut parts = value.split('-');
        let producer = parts.nth(1).unwrap().to_string();
        let n: usize = parts.nth(1).unwrap().parse().unwrap();
        if let Some(previous) = last_per_producer.insert((record.partition, producer), n) {
            assert!(
                n > previous,
                "out of order in partition {}",
                record.partition
            );
        }
        seen += 1;
    }
    // Keys land where Kafka's partitioner puts them.
    for ((partition, _), (_, key)) in &expected {
        assert_eq!(
            *partition,
            strand_client::partitioner::partition_for_key(key.as_bytes(), 4)
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn long_poll_fetch_wakes_when_data_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let client = broker.client().await;
    client.admin().create_topic("t", settings(1)).await.unwrap();
    let fetcher = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request(Request::Fetch {
                    topic: "t".into(),
                    partition: 0,
                    offset: 0,
                    max_bytes: 1 << 20,
                    max_wait_ms: 25_000,
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !fetcher.is_finished(),
        "fetch at the high watermark answered without waiting"
    );
    let connection = client.connection().await.unwrap();
    connection
        .request(Request::Produce {
            topic: "t".into(),
            partition: 0,
            acks: Acks::Leader,
            records: batch(&values("x", 3, 10), 0).into(),
        })
        .await
        .unwrap();
    // Well inside the 25 s the fetch may wait: it must have been woken by the produce.
    let answer = tokio::time::timeout(Duration::from_secs(15), fetcher)
        .await
        .expect("long-poll not woken")
        .unwrap();
    match answer.unwrap() {
        ResponseBody::Fetched {
            high_watermark,
            records,
            ..
        } => {
            assert_eq!(high_watermark, 3);
            assert_eq!(super::support::decode(records).len(), 3);
        }
        other => panic!("{other:?}"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn push_subscription_respects_credit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let client = broker.client().await;
    client.admin().create_topic("t", settings(1)).await.unwrap();
    let connection = client.connection().await.unwrap();
    let one = batch(&values("x", 10, 1000), 0);
    for _ in 0..200 {
        connection
            .request(Request::Produce {
                topic: "t".into(),
                partition: 0,
                acks: Acks::Leader,
                records: one.clone().into(),
            })
            .await
            .unwrap();
    }
    let total = one.len() * 200;
    let credit = 64 * 1024;
    let (id, mut pushes) = connection
        .subscribe("t", 0, 0, credit as u32)
        .await
        .unwrap();
    // Take what the credit allows, then check nothing more comes without more credit.
    let mut received = 0usize;
    while let Ok(Some(push)) = tokio::time::timeout(Duration::from_millis(300), pushes.recv()).await
    {
        received += push.unwrap().records.len();
    }
    assert!(received > 0, "nothing pushed");
    assert!(
        received <= credit + one.len(),
        "pushed {received} bytes on {credit} bytes of credit"
    );
    // Granting credit as we consume delivers the rest, every record once.
    let mut records = received;
    connection
        .send_only(Request::AddCredit {
            subscription: id,
            credit_bytes: received as u32,
        })
        .await
        .unwrap();
    while records < total {
        let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        records += push.records.len();
        connection
            .send_only(Request::AddCredit {
                subscription: id,
                credit_bytes: push.records.len() as u32,
            })
            .await
            .unwrap();
    }
    assert_eq!(records, total);
    // The consumer in push mode sees every record, in order.
    let config = ConsumerConfig {
        delivery: strand_client::consumer::Delivery::Push,
        credit_bytes: 32 * 1024,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, "t", None, config).await.unwrap();
    for offset in 0..2000u64 {
        let record = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.offset, offset);
    }
    broker.stop().await;
}

#[tokio::test]
async fn acknowledged_records_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let client = broker.client().await;
    client.admin().create_topic("t", settings(2)).await.unwrap();
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::Durable,
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for n in 0..1000 {
        deliveries.push(
            producer
                .send(ProducerRecord::new("t", format!("v{n}")).key(format!("{n}")))
                .await
                .unwrap(),
        );
    }
    for d in deliveries {
        d.await.unwrap();
    }
    producer.close().await.unwrap();
    broker.stop().await;

    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let client = broker.client().await;
    let topic = client.admin().describe_topic("t").await.unwrap();
    assert_eq!(
        topic
            .partitions
            .iter()
            .map(|p| p.high_watermark)
            .sum::<u64>(),
        1000
    );
    let mut consumer = Consumer::new(client, "t", None, ConsumerConfig::default())
        .await
        .unwrap();
    let mut values = std::collections::HashSet::new();
    for _ in 0..1000 {
        let r = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap();
        values.insert(r.value.unwrap());
    }
    assert_eq!(values.len(), 1000);
    broker.stop().await;
}

/// Sends raw bytes and reads one server frame, or `None` if the server closed the connection.
async fn raw_exchange(stream: &mut TcpStream, bytes: &[u8]) -> Option<(u32, Bytes)> {
    stream.write_all(bytes).await.ok()?;
    read_frame(stream).await
}

async fn read_frame(stream: &mut TcpStream) -> Option<(u32, Bytes)> {
    let mut buf = BytesMut::new();
    loop {
        if let Some(len) = frame::check(&buf, 64 << 20, SERVER_HEADER_BYTES).unwrap() {
            let (header, body) = frame::split_server(buf.split_to(len).freeze()).unwrap();
            return Some((header.correlation_id, body));
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
    }
}

fn encode(request: &Request, id: u32) -> BytesMut {
    let mut buf = BytesMut::new();
    request.encode(id, &mut buf);
    buf
}

fn error_code(key: ApiKey, body: Bytes) -> ErrorCode {
    match Response::decode(key, body).unwrap() {
        Response::Err { code, .. } => code,
        Response::Ok(body) => panic!("expected an error, got {body:?}"),
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        frame_bytes_max: 1 << 20,
        frame_read_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let broker = TestBroker::start(dir.path(), config).await;
    let client = broker.client().await;
    client.admin().create_topic("t", settings(1)).await.unwrap();
    let mut s = TcpStream::connect(&broker.addr).await.unwrap();

    // Unknown request type: an error answer with the same correlation id; the connection stays.
    let mut unknown = encode(&Request::ListTopics, 77);
    unknown[4..6].copy_from_slice(&999u16.to_be_bytes());
    let (id, body) = raw_exchange(&mut s, &unknown).await.unwrap();
    assert_eq!(
        (id, error_code(ApiKey::ListTopics, body)),
        (77, ErrorCode::UnsupportedRequest)
    );

    let produce = |records: Vec<u8>, topic: &str| Request::Produce {
        topic: topic.into(),
        partition: 0,
        acks: Acks::Leader,
        records: records.into(),
    };
    let good = batch(&values("ok", 2, 10), 0);
    let (_, body) = raw_exchange(&mut s, &encode(&produce(good.clone(), "nope"), 1))
        .await
        .unwrap();
    assert_eq!(
        error_code(ApiKey::Produce, body),
        ErrorCode::UnknownTopicOrPartition
    );
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 1;
    let (_, body) = raw_exchange(&mut s, &encode(&produce(bad_crc, "t"), 2))
        .await
        .unwrap();
    assert_eq!(error_code(ApiKey::Produce, body), ErrorCode::CorruptBatch);
    let mut bad_magic = good.clone();
    bad_magic[16] = 0;
    let (_, body) = raw_exchange(&mut s, &encode(&produce(bad_magic, "t"), 3))
        .await
        .unwrap();
    assert_eq!(error_code(ApiKey::Produce, body), ErrorCode::CorruptBatch);
    let mut negative_len = good.clone();
    negative_len[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    let (_, body) = raw_exchange(&mut s, &encode(&produce(negative_len, "t"), 4))
        .await
        .unwrap();
    assert_eq!(error_code(ApiKey::Produce, body), ErrorCode::CorruptBatch);
    let (_, body) = raw_exchange(
        &mut s,
        &encode(
            &produce(
                batch(&values("big", 1, 2 << 20), 0)[..900_000].to_vec(),
                "t",
            ),
            5,
        ),
    )
    .await
    .unwrap();
    assert_eq!(error_code(ApiKey::Produce, body), ErrorCode::CorruptBatch);
    // A body whose inner length lies: the frame is fine, the request is not.
    let mut lying = encode(&produce(good.clone(), "t"), 6);
    let at = lying.len() - good.len() - 4;
    lying[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    let (_, body) = raw_exchange(&mut s, &lying).await.unwrap();
    assert_eq!(error_code(ApiKey::Produce, body), ErrorCode::InvalidRequest);
    // None of that wrote anything.
    assert_eq!(
        client.admin().describe_topic("t").await.unwrap().partitions[0].high_watermark,
        0
    );
    // And the connection still works.
    let (_, body) = raw_exchange(&mut s, &encode(&produce(good, "t"), 8))
        .await
        .unwrap();
    assert!(matches!(
        Response::decode(ApiKey::Produce, body).unwrap(),
        Response::Ok(ResponseBody::Produced { base_offset: 0, .. })
    ));

    // An oversized frame closes the connection before the server reads it.
    let mut s = TcpStream::connect(&broker.addr).await.unwrap();
    assert!(raw_exchange(&mut s, &(64u32 << 20).to_be_bytes())
        .await
        .is_none());
    // A frame too short for its header closes it too.
    let mut s = TcpStream::connect(&broker.addr).await.unwrap();
    assert!(raw_exchange(&mut s, &[0, 0, 0, 2, 0, 0]).await.is_none());
    // Slowloris: a frame that never completes is cut off after the frame timeout.
    let mut s = TcpStream::connect(&broker.addr).await.unwrap();
    assert!(raw_exchange(&mut s, &[0, 0, 0, 50, 0, 1]).await.is_none());
    // A truncated frame followed by a close is just a closed connection.
    let mut s = TcpStream::connect(&broker.addr).await.unwrap();
    s.write_all(&encode(&Request::ListTopics, 1)[..6])
        .await
        .unwrap();
    drop(s);

    // The broker is still serving.
    let topics = client.admin().list_topics().await.unwrap();
    assert!(topics.iter().any(|t| t.name == "t"), "{topics:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_throttled_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        in_flight_per_connection_max: 4,
        write_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let broker = TestBroker::start(dir.path(), config).await;
    let client = broker.client().await;
    client.admin().create_topic("t", settings(1)).await.unwrap();
    let connection = client.connection().await.unwrap();
    let big = batch(&values("x", 100, 10_000), 0); // ~1 MB
    for _ in 0..4 {
        connection
            .request(Request::Produce {
                topic: "t".into(),
                partition: 0,
                acks: Acks::Leader,
                records: big.clone().into(),
            })
            .await
            .unwrap();
    }
    // Ask for ~4 MB per fetch, over and over, never reading an answer.
    let mut s = TcpStream::connect(&broker.addr).await.unwrap();
    let fetch = encode(
        &Request::Fetch {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 4 << 20,
            max_wait_ms: 0,
        },
        1,
    );
    let mut sent = 0usize;
    let writing = async {
        // Until the writes stall, or the server gives up on this client (write timeout).
        while s.write_all(&fetch).await.is_ok() {
            sent += 1;
        }
    };
    // The kernel's socket buffers take many small requests, but the server must stop taking
    // them off the socket once its answers (~4 MB each) back up: it handles a bounded number.
    let _ = tokio::time::timeout(Duration::from_secs(3), writing).await;
    let answered = fetches_handled(&broker.metrics);
    assert!(
        sent > 1000,
        "the client could not even fill the socket buffers ({sent})"
    );
    assert!(answered > 0, "the server answered no fetch at all");
    assert!(
        answered < 64,
        "server handled {answered} of {sent} fetches for a client that never reads"
    );
    // Other clients are unaffected.
    let other = broker.client().await;
    assert_eq!(
        other.admin().describe_topic("t").await.unwrap().partitions[0].high_watermark,
        400
    );
    // And the stalled connection is closed once a write has waited past the write timeout:
    // only the two well-behaved clients stay connected.
    let mut waited = 0;
    while gauge(&broker.metrics, "strand_connections") != 2 {
        waited += 1;
        assert!(
            waited < 200,
            "stalled connection still open: {}",
            gauge(&broker.metrics, "strand_connections")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(s);
    broker.stop().await;
}

#[tokio::test]
async fn client_reports_broker_errors_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let client = broker.client().await;
    let admin = client.admin();
    admin.create_topic("t", settings(1)).await.unwrap();
    let err = admin.create_topic("t", settings(1)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists));
    let err = admin
        .create_topic("bad name", settings(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopic));
    let err = admin.create_topic("z", settings(0)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidConfig));
    let err = admin.describe_topic("nope").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
    let err = client
        .request(Request::Fetch {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            max_bytes: 100,
            max_wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange));
    let consumer = Consumer::new(
        client.clone(),
        "t",
        None,
        ConsumerConfig {
            start: StartFrom::Offset(9),
            ..ConsumerConfig::default()
        },
    )
    .await;
    let mut consumer = consumer.unwrap();
    assert!(matches!(
        consumer.next().await,
        Err(ClientError::Broker {
            code: ErrorCode::OffsetOutOfRange,
            ..
        })
    ));
    let _ = Connection::connect(broker.addr.as_str(), ConnectionConfig::default())
        .await
        .unwrap();
    broker.stop().await;
}

/// Fetch requests the broker has handled, from its Prometheus metrics.
fn fetches_handled(metrics: &Metrics) -> u64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with("strand_request_duration_seconds_count{request=\"fetch\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_client_reconnects_after_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), ServerConfig::default()).await;
    let addr = broker.addr.clone();
    let client = broker.client().await;
    client.admin().create_topic("t", settings(1)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    producer
        .send(ProducerRecord::new("t", "before"))
        .await
        .unwrap()
        .await
        .unwrap();
    broker.stop().await;
    // The same address comes back a little later; the client's backoff bridges the gap.
    let restart = {
        let dir = dir.path().to_path_buf();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            TestBroker::start_at(&dir, ServerConfig::default(), &addr).await
        })
    };
    let delivery = producer
        .send(ProducerRecord::new("t", "after"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(delivery.offset, 1);
    let broker = restart.await.unwrap();
    producer.close().await.unwrap();
    let mut consumer = Consumer::new(client, "t", None, ConsumerConfig::default())
        .await
        .unwrap();
    assert_eq!(
        consumer.next().await.unwrap().value.unwrap(),
        Bytes::from_static(b"before")
    );
    assert_eq!(
        consumer.next().await.unwrap().value.unwrap(),
        Bytes::from_static(b"after")
    );
    broker.stop().await;
}

fn gauge(metrics: &Metrics, name: &str) -> i64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}
