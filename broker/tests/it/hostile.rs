//! Hostile clients against the real `strand-broker` binary: thousands of idle connections, a
//! Fetch naming one partition 10,000 times, a slowloris, and clients that never read their
//! answers. The broker must keep serving well-behaved clients, close what it should, and keep
//! its peak memory (VmHWM from /proc) under a stated bound.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use strand_client::native::Request;
use strand_client::{Acks, Client, TopicSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::broker_process::{client, start_broker_with, BrokerProcess};
use super::support::{batch, values};

/// Kafka's INVALID_REQUEST error code.
const INVALID_REQUEST: i16 = 42;

/// Lets this process (and the broker it starts, which inherits the limit) open thousands of
/// sockets: raises the soft limit on open files to the hard limit.
fn raise_open_files_limit(needed: u64) {
    let limit = strand_broker::run::raise_open_files_limit();
    assert!(
        limit.is_none_or(|n| n >= needed),
        "this test needs {needed} open files, the limit is {limit:?}"
    );
}

/// A field of /proc/<pid>/status in KiB (VmHWM: peak resident memory; VmRSS: now).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A connection from a chosen loopback address (all of 127/8 reaches the loopback listener),
/// so that hostile connections and well-behaved clients count against different IP caps.
async fn connect_from(source: [u8; 4], addr: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(source)), 0))?;
    socket.connect(addr.parse().unwrap()).await
}

/// A value from the broker's `/metrics`, over a plain HTTP/1.1 request.
async fn metric(broker: &BrokerProcess, name: &str) -> f64 {
    metric_if_any(broker, name)
        .await
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// A value from `/metrics`, `None` before it was first recorded (labelled series).
pub(crate) async fn metric_if_any(broker: &BrokerProcess, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(&broker.http_addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: strand\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Open connections as the broker counts them, not counting the scrape asking.
async fn open_connections(broker: &BrokerProcess) -> u64 {
    metric(broker, "strand_connections").await as u64 - 1
}

/// Waits (polling, at most `limit`) until `check` holds for `observe()`.
macro_rules! eventually {
    ($limit:expr, $observe:expr, $check:expr, $what:expr) => {{
        let deadline = tokio::time::Instant::now() + $limit;
        loop {
            let seen = $observe;
            if $check(&seen) {
                break seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} (last seen: {:?})",
                $what,
                seen
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

/// One Kafka request frame, length prefix included.
fn kafka_frame<Req: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &Req,
) -> Bytes {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("hostile-test")))
        .encode(&mut buf, api_key.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// Reads one Kafka response frame and decodes it; returns it with its size in bytes.
async fn read_kafka_response<Resp: Decodable>(
    socket: &mut TcpStream,
    api_key: ApiKey,
    version: i16,
) -> (Resp, usize) {
    let len = socket.read_i32().await.unwrap();
    let mut body = vec![0u8; len as usize];
    socket.read_exact(&mut body).await.unwrap();
    let mut body = Bytes::from(body);
    ResponseHeader::decode(&mut body, api_key.response_header_version(version)).unwrap();
    let response = Resp::decode(&mut body, version).unwrap();
    assert!(!body.has_remaining(), "response fully decoded");
    (response, len as usize + 4)
}

/// A well-behaved Kafka client's first request, answered within a second.
async fn kafka_metadata_within_a_second(addr: &str) -> MetadataResponse {
    let request = MetadataRequest::default().with_topics(None);
    tokio::time::timeout(Duration::from_secs(1), async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&kafka_frame(ApiKey::Metadata, 9, 1, &request))
            .await
            .unwrap();
        read_kafka_response::<MetadataResponse>(&mut s, ApiKey::Metadata, 9)
            .await
            .0
    })
    .await
    .expect("a Kafka client was not answered within a second")
}

/// A native client connects and is answered within a second.
async fn native_describe_within_a_second(addr: &str) {
    tokio::time::timeout(Duration::from_secs(1), async {
        client(addr)
            .await
            .admin()
            .describe_topic("t")
            .await
            .unwrap()
    })
    .await
    .expect("a native client was not answered within a second");
}

/// Opens `n` connections from `source`; each is watched, and `closed` counts those the broker
/// has closed (EOF or reset).
async fn open_watched(n: usize, source: [u8; 4], addr: &str, closed: &Arc<AtomicUsize>) {
    for _ in 0..n {
        let mut socket = connect_from(source, addr).await.unwrap();
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            // Never sends anything, so the broker never answers: any return is the close.
            let _ = socket.read(&mut byte).await;
            closed.fetch_add(1, Ordering::SeqCst);
        });
    }
}

/// Creates topic `t` with one partition holding `n_batches` batches of about 1 MB; returns
/// the bytes stored and the client that wrote them.
async fn fill_topic(broker: &BrokerProcess, n_batches: usize) -> (u64, Client) {
    let c = client(&broker.addr).await;
    c.admin()
        .create_topic(
            "t",
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    let connection = c.connection().await.unwrap();
    let big = batch(&values("x", 100, 10_000), 0);
    for _ in 0..n_batches {
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
    ((big.len() * n_batches) as u64, c)
}

fn fetch_request(
    partition_entries: usize,
    partition_max_bytes: i32,
    max_bytes: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(
                (0..partition_entries)
                    .map(|_| {
                        FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(partition_max_bytes)
                    })
                    .collect(),
            )])
}

/// 2,000 connections that send nothing, on the native and on the Kafka listener, from one
/// address: the per-address cap closes half of them at once, the rest are closed after the
/// idle timeout, well-behaved clients are served within a second all along, and the broker's
/// memory stays small. Filling the total cap refuses newcomers but keeps serving clients
/// already connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_lock_out_clients_nor_hold_memory() {
    raise_open_files_limit(10_000);
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker_with(
        dir.path(),
        &[
            "--connections-max",
            "1500",
            "--connections-per-ip-max",
            "1000",
            "--idle-timeout-ms",
            "20000",
        ],
    );
    let pid = broker.child.id();
    // A native client connected before the flood, and kept.
    let existing = fill_topic(&broker, 1).await.1;
    let hwm_before_kib = proc_status_kib(pid, "VmHWM");

    let native_closed = Arc::new(AtomicUsize::new(0));
    let kafka_closed = Arc::new(AtomicUsize::new(0));
    open_watched(2000, [127, 0, 0, 2], &broker.addr, &native_closed).await;
    open_watched(2000, [127, 0, 0, 2], &broker.kafka_addr, &kafka_closed).await;
    // Over the per-address cap (1,000), connections are closed at once.
    eventually!(
        Duration::from_secs(30),
        (
            native_closed.load(Ordering::SeqCst),
            kafka_closed.load(Ordering::SeqCst)
        ),
        |seen: &(usize, usize)| *seen == (1000, 1000),
        "the connections over the per-address cap were not closed"
    );
    // The existing client's connection, and 1,000 per listener.
    eventually!(
        Duration::from_secs(30),
        open_connections(&broker).await,
        |n: &u64| *n == 2001,
        "not 2,001 connections held"
    );
    assert_eq!(
        metric(&broker, "strand_connections_refused_total").await,
        2000.0
    );

    // New clients from another address are served promptly on both listeners.
    native_describe_within_a_second(&broker.addr).await;
    let metadata = kafka_metadata_within_a_second(&broker.kafka_addr).await;
    assert!(metadata
        .topics
        .iter()
        .any(|t| t.name.as_ref().unwrap().0.as_str() == "t"));
    // Those clients are gone again.
    eventually!(
        Duration::from_secs(30),
        open_connections(&broker).await,
        |n: &u64| *n == 2001,
        "the new clients' connections were not closed"
    );

    // Fill the native listener's total cap (1,500) from a third address: newcomers are then
    // closed at once, while the client connected before keeps being served.
    let third_closed = Arc::new(AtomicUsize::new(0));
    open_watched(600, [127, 0, 0, 3], &broker.addr, &third_closed).await;
    eventually!(
        Duration::from_secs(30),
        third_closed.load(Ordering::SeqCst),
        |n: &usize| *n == 101,
        "the connections over the total cap were not closed"
    );
    let mut refused = connect_from([127, 0, 0, 4], &broker.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut byte))
        .await
        .expect("a connection over the total cap was left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    existing.admin().describe_topic("t").await.unwrap();

    let rss_held_kib = proc_status_kib(pid, "VmRSS");
    let hwm_held_kib = proc_status_kib(pid, "VmHWM");
    eprintln!(
        "idle flood: {} connections held, VmHWM {} KiB before, {} KiB with them, VmRSS {} KiB",
        open_connections(&broker).await,
        hwm_before_kib,
        hwm_held_kib,
        rss_held_kib
    );
    // About 2,500 held connections: tasks and small buffers only, no per-connection read
    // buffer while idle.
    assert!(
        hwm_held_kib < 100 * 1024,
        "peak memory {hwm_held_kib} KiB with idle connections"
    );

    // After the idle timeout every idle connection is closed, and clients are served again.
    // The existing client keeps asking meanwhile: it was last active only a moment after the
    // third address's connections opened, so left alone it would time out with them, and the
    // count below would race its own idle timeout (seen once in CI on a loaded machine).
    eventually!(
        Duration::from_secs(60),
        {
            existing.admin().describe_topic("t").await.unwrap();
            (
                native_closed.load(Ordering::SeqCst),
                kafka_closed.load(Ordering::SeqCst),
                third_closed.load(Ordering::SeqCst),
            )
        },
        |seen: &(usize, usize, usize)| *seen == (2000, 2000, 600),
        "idle connections were not closed after the idle timeout"
    );
    eventually!(
        Duration::from_secs(30),
        {
            existing.admin().describe_topic("t").await.unwrap();
            open_connections(&broker).await
        },
        |n: &u64| *n == 1,
        "the broker still counts the idle connections"
    );
    native_describe_within_a_second(&broker.addr).await;
    kafka_metadata_within_a_second(&broker.kafka_addr).await;
}

/// One Fetch naming the same 1 MB partition 10,000 times with every byte limit at i32::MAX,
/// sent on four connections at once: each answer carries the partition's data once, the
/// repeats get INVALID_REQUEST, and the broker's peak memory stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_naming_a_partition_10000_times_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker_with(dir.path(), &[]);
    let pid = broker.child.id();
    let (stored, _client) = fill_topic(&broker, 1).await;
    let frame = kafka_frame(
        ApiKey::Fetch,
        11,
        7,
        &fetch_request(10_000, i32::MAX, i32::MAX),
    );
    let hwm_before_kib = proc_status_kib(pid, "VmHWM");
    let mut answers = Vec::new();
    for _ in 0..4 {
        let frame = frame.clone();
        let addr = broker.kafka_addr.clone();
        answers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(&frame).await.unwrap();
            read_kafka_response::<FetchResponse>(&mut s, ApiKey::Fetch, 11).await
        }));
    }
    for answer in answers {
        let (response, n_bytes) = tokio::time::timeout(Duration::from_secs(60), answer)
            .await
            .expect("no answer")
            .unwrap();
        let partitions = &response.responses[0].partitions;
        assert_eq!(partitions.len(), 10_000);
        let first = &partitions[0];
        assert_eq!(first.error_code, 0);
        assert_eq!(first.records.as_ref().unwrap().len() as u64, stored);
        assert!(partitions[1..]
            .iter()
            .all(|p| p.error_code == INVALID_REQUEST
                && p.records.as_ref().is_none_or(|r| r.is_empty())));
        // The data once, plus a few dozen bytes per entry.
        assert!(
            (n_bytes as u64) < stored + 10_000 * 64,
            "answer of {n_bytes} bytes"
        );
        eprintln!("hostile fetch: answer of {n_bytes} bytes for {stored} bytes stored");
    }
    let hwm_kib = proc_status_kib(pid, "VmHWM");
    eprintln!("hostile fetch: VmHWM {hwm_before_kib} KiB before, {hwm_kib} KiB after");
    assert!(hwm_kib < 200 * 1024, "peak memory {hwm_kib} KiB");
    // KIP-74: a first batch larger than max_bytes (1 MB stored, 100 kB asked) still comes
    // whole, so the consumer makes progress.
    let records_per_partition = |response: &FetchResponse| -> Vec<usize> {
        response.responses[0]
            .partitions
            .iter()
            .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
            .collect()
    };
    let mut s = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    s.write_all(&kafka_frame(
        ApiKey::Fetch,
        11,
        8,
        &fetch_request(1, i32::MAX, 100_000),
    ))
    .await
    .unwrap();
    let (response, _) = read_kafka_response::<FetchResponse>(&mut s, ApiKey::Fetch, 11).await;
    assert_eq!(records_per_partition(&response), [stored as usize]);
    // Across partitions, max_bytes holds after the first data: three partitions of one 1 MB
    // batch each, 2.5 MB asked, two batches answered (the third would go over).
    let c = client(&broker.addr).await;
    c.admin()
        .create_topic(
            "three",
            TopicSettings {
                partitions: 3,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    let connection = c.connection().await.unwrap();
    for partition in 0..3 {
        connection
            .request(Request::Produce {
                topic: "three".into(),
                partition,
                acks: Acks::Leader,
                records: batch(&values("y", 100, 10_000), 0).into(),
            })
            .await
            .unwrap();
    }
    let request = FetchRequest::default()
        .with_max_bytes(2_500_000)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("three")))
            .with_partitions(
                (0..3)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_partition_max_bytes(i32::MAX)
                    })
                    .collect(),
            )]);
    s.write_all(&kafka_frame(ApiKey::Fetch, 11, 9, &request))
        .await
        .unwrap();
    let (response, _) = read_kafka_response::<FetchResponse>(&mut s, ApiKey::Fetch, 11).await;
    let sizes = records_per_partition(&response);
    assert!(sizes[0] > 1_000_000 && sizes[1] == sizes[0], "{sizes:?}");
    assert_eq!(sizes[2], 0, "{sizes:?}");
    // The partition left out is still answered with where it stands (100 records).
    assert_eq!(response.responses[0].partitions[2].high_watermark, 100);
}

/// A frame header and then nothing (slowloris) is closed after the request timeout, on the
/// native and Kafka listeners (the idle timeout is far away), and so is an HTTP request whose
/// headers never end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_never_finishes_is_closed_after_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker_with(
        dir.path(),
        &["--request-timeout-ms", "500", "--idle-timeout-ms", "600000"],
    );
    // Connected first and idle throughout.
    let mut idle = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    let native_or_kafka: &[u8] = &[0, 0, 0, 100, 0, 3, 0, 0, 0, 1]; // promises 100 bytes, sends 6
    let http: &[u8] = b"GET /health HTTP/1.1\r\nHost: str"; // headers never end
    for (addr, start) in [
        (&broker.addr, native_or_kafka),
        (&broker.kafka_addr, native_or_kafka),
        (&broker.http_addr, http),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(start).await.unwrap();
        let mut byte = [0u8; 1];
        // Far above the request timeout, and below hyper's own 30 s header timeout.
        let read = tokio::time::timeout(Duration::from_secs(20), s.read(&mut byte))
            .await
            .unwrap_or_else(|_| panic!("a half-sent frame kept its connection open on {addr}"));
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // The idle connection, by contrast, stays (its timeout is ten minutes away), although it
    // has been open longer than the request timeout.
    idle.write_all(&kafka_frame(
        ApiKey::Metadata,
        9,
        1,
        &MetadataRequest::default().with_topics(None),
    ))
    .await
    .unwrap();
    read_kafka_response::<MetadataResponse>(&mut idle, ApiKey::Metadata, 9).await;
}

/// Kafka and native clients that send fetches for 8 MB answers and never read them: each is
/// closed after the write timeout, and meanwhile the answers held are bounded by the in-flight
/// budget (16 MiB here, shared by both listeners), not by the number of such clients or of
/// their requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_closed_and_bounded_by_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker_with(
        dir.path(),
        &[
            "--write-timeout-ms",
            "1000",
            "--in-flight-bytes-max",
            "16777216",
            "--fetch-bytes-max",
            "8388608",
        ],
    );
    let pid = broker.child.id();
    let (stored, _client) = fill_topic(&broker, 8).await;
    assert!(stored > 7_000_000);
    let baseline = open_connections(&broker).await;
    let hwm_before_kib = proc_status_kib(pid, "VmHWM");
    let frame = kafka_frame(ApiKey::Fetch, 11, 1, &fetch_request(1, i32::MAX, 8 << 20));
    let mut native_frames = BytesMut::new();
    for id in 0..16 {
        Request::Fetch {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 8 << 20,
            max_wait_ms: 0,
        }
        .encode(id, &mut native_frames);
    }
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&broker.kafka_addr).await.unwrap();
        // Several requests in a row, none of whose answers is ever read.
        for _ in 0..4 {
            s.write_all(&frame).await.unwrap();
        }
        stalled.push(s);
        // Native clients pipeline: 16 fetches each.
        let mut s = TcpStream::connect(&broker.addr).await.unwrap();
        s.write_all(&native_frames).await.unwrap();
        stalled.push(s);
    }
    eventually!(
        Duration::from_secs(30),
        open_connections(&broker).await,
        |n: &u64| *n >= baseline + 40,
        "the stalled clients did not connect"
    );
    // Every stalled client is closed once an answer has waited past the write timeout (the
    // budget lets two 8 MB answers be in flight at a time, so they go a few at a time).
    eventually!(
        Duration::from_secs(120),
        open_connections(&broker).await,
        |n: &u64| *n == baseline,
        "clients that never read were not closed"
    );
    let hwm_kib = proc_status_kib(pid, "VmHWM");
    eprintln!(
        "non-readers: VmHWM {hwm_before_kib} KiB before, {hwm_kib} KiB after 20 Kafka and 20 \
         native clients asked for 8 MB answers (400 in all) and read none"
    );
    // Every charge came back: nothing leaked from the budget with the closed connections.
    assert_eq!(metric(&broker, "strand_in_flight_bytes").await, 0.0);
    // Unbounded, 40 connections' answers of 8 MB (and their encoding) would be well over
    // 600 MB. Bounded, the peak varies from run to run (about 70 to 120 MB seen, for a
    // 16 MiB budget): freed 8 MB buffers may stay with the allocator's per-thread arenas.
    assert!(hwm_kib < 160 * 1024, "peak memory {hwm_kib} KiB");
    drop(stalled);
    // Well-behaved clients are served afterwards.
    kafka_metadata_within_a_second(&broker.kafka_addr).await;
    native_describe_within_a_second(&broker.addr).await;
}

/// One native client pipelining fetches of 8 MB answers and reading none holds only its
/// connection's share of the budget (an eighth, at least one frame), not all of it: a Kafka
/// client fetching at the same time is served although the stalled answers stay (the write
/// timeout is ten minutes away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_that_never_reads_cannot_take_the_whole_budget() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker_with(
        dir.path(),
        &[
            "--write-timeout-ms",
            "600000",
            "--in-flight-bytes-max",
            "33554432",
            "--fetch-bytes-max",
            "8388608",
        ],
    );
    let (stored, _client) = fill_topic(&broker, 8).await;
    let mut native_frames = BytesMut::new();
    for id in 0..16 {
        Request::Fetch {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 8 << 20,
            max_wait_ms: 0,
        }
        .encode(id, &mut native_frames);
    }
    let mut stalled = TcpStream::connect(&broker.addr).await.unwrap();
    stalled.write_all(&native_frames).await.unwrap();
    let fetches = "strand_request_duration_seconds_count{request=\"fetch\"}";
    eventually!(
        Duration::from_secs(30),
        metric_if_any(&broker, fetches).await,
        |n: &Option<f64>| n.is_some_and(|n| n >= 1.0),
        "the stalled client's first fetch was not handled"
    );
    let mut s = TcpStream::connect(&broker.kafka_addr).await.unwrap();
    s.write_all(&kafka_frame(
        ApiKey::Fetch,
        11,
        1,
        &fetch_request(1, i32::MAX, 8 << 20),
    ))
    .await
    .unwrap();
    let (response, _) = tokio::time::timeout(
        Duration::from_secs(30),
        read_kafka_response::<FetchResponse>(&mut s, ApiKey::Fetch, 11),
    )
    .await
    .expect("a Kafka fetch waited behind a client that never reads");
    let records = response.responses[0].partitions[0]
        .records
        .as_ref()
        .unwrap();
    assert_eq!(records.len() as u64, stored);
    // The stalled connection got one 8 MB answer in its share (8 MiB here); the rest of its
    // fetches wait, and the budget holds no more than that share.
    eventually!(
        Duration::from_secs(30),
        metric(&broker, "strand_in_flight_bytes").await,
        |n: &f64| *n > 0.0 && *n <= (8 << 20) as f64,
        "the budget does not hold just the stalled connection's share"
    );
    let handled = metric(&broker, fetches).await;
    assert!(
        handled <= 2.0,
        "{handled} fetches handled for a client that never reads"
    );
    drop(stalled);
}
