//! What an operator watches: `/metrics` parsed by the Prometheus project's own parser (Python
//! `prometheus_client`), served with the content type of its format, showing the Kafka
//! listener's connections and requests by API key and a consumer group's lag per partition; and
//! a producer's `traceparent` record header reaching the consumer unchanged.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig as KafkaClientConfig, Message as _, Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::broker_process::start_broker;

/// Debian's interpreter, where `bash .ci/run` installs python3-prometheus-client.
const PYTHON: &str = "/usr/bin/python3";

/// One sample: name, labels, value.
pub(crate) type Sample = (String, serde_json::Map<String, serde_json::Value>, f64);

/// GETs `path` on `addr` over HTTP/1.1; returns the Content-Type and the body.
pub(crate) async fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: strand\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .expect("a content type");
    (content_type, body.to_string())
}

/// Parses a `/metrics` answer with `prometheus_client`'s parser for its content type (see
/// `tests/peers/parse_metrics.py`); panics with the parser's message when it refuses it.
pub(crate) fn parse_metrics(content_type: &str, body: &str) -> Vec<Sample> {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/parse_metrics.py");
    let mut child = std::process::Command::new(PYTHON)
        .arg(script)
        .arg(content_type)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (bash .ci/run installs python3-prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, serde_json::Map<String, serde_json::Value>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    samples
}

/// The value of the sample named `name` whose labels include `labels`, if any.
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(|x| x.as_str()) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

fn kafka_config(bootstrap: &str) -> KafkaClientConfig {
    let mut config = KafkaClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "4");
    config
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_kafka_requests_connections_and_group_lag_and_traceparent_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let admin: AdminClient<DefaultClientContext> =
        kafka_config(&broker.kafka_addr).create().unwrap();
    admin
        .create_topics(
            &[NewTopic::new("orders", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let producer: FutureProducer = kafka_config(&broker.kafka_addr)
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..10 {
        let value = format!("order {i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(TRACEPARENT),
        });
        producer
            .send(
                FutureRecord::to("orders")
                    .key("k")
                    .payload(&value)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    // A group member reads all ten and commits offset 4: six records behind.
    let consumer: StreamConsumer = kafka_config(&broker.kafka_addr)
        .set("group.id", "billing")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let mut n_read = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while n_read < 10 && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            let headers = m.headers().expect("the record's headers");
            let header = headers.get(0);
            assert_eq!(header.key, "traceparent");
            assert_eq!(header.value, Some(TRACEPARENT.as_bytes()));
            n_read += 1;
        }
    }
    assert_eq!(n_read, 10, "records read back");
    let mut positions = TopicPartitionList::new();
    positions
        .add_partition_offset("orders", 0, Offset::Offset(4))
        .unwrap();
    consumer.commit(&positions, CommitMode::Sync).unwrap();

    // A request is counted once its answer is written, which the client may see first: scrape
    // until the last one shows (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (content_type, body) = loop {
        let (content_type, body) = http_get(&broker.http_addr, "/metrics").await;
        if body.contains("strand_kafka_requests_total{api_key=\"OffsetCommit\"}")
            || Instant::now() > deadline
        {
            break (content_type, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let samples = parse_metrics(&content_type, &body);
    let get = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(
        get(
            "strand_consumer_group_lag_records",
            &[
                ("group", "billing"),
                ("topic", "orders"),
                ("partition", "0")
            ]
        ),
        Some(6.0),
        "{body}"
    );
    for api_key in ["Produce", "Fetch", "OffsetCommit", "JoinGroup", "Metadata"] {
        let n = get("strand_kafka_requests_total", &[("api_key", api_key)]).unwrap_or(0.0);
        assert!(n >= 1.0, "{api_key} requests: {n}\n{body}");
        let timed = get(
            "strand_kafka_request_duration_seconds_count",
            &[("api_key", api_key)],
        )
        .unwrap_or(0.0);
        assert!(timed >= 1.0, "{api_key} timed: {timed}");
    }
    // The producer, the consumer (two connections: group coordinator and partition leader are
    // one broker, but librdkafka keeps its bootstrap connection too) and the admin client.
    let kafka_connections =
        get("strand_listener_connections", &[("listener", "kafka")]).unwrap_or(0.0);
    assert!(
        kafka_connections >= 2.0,
        "kafka connections: {kafka_connections}"
    );
    assert_eq!(
        get("strand_listener_connections", &[("listener", "http")]),
        Some(1.0),
        "the scrape itself"
    );
    assert_eq!(
        get("strand_records_in_total", &[("topic", "orders")]),
        Some(10.0)
    );
    assert_eq!(get("strand_poisoned_partitions", &[]), Some(0.0));
}

/// One span as an OTLP receiver got it.
#[derive(Debug, Clone)]
#[allow(dead_code)] // Every field shows in a failing assertion's message.
pub(crate) struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub start_ns: u64,
    pub attributes: Vec<(String, String)>,
}

/// An OTLP/HTTP receiver on 127.0.0.1 port 0: decodes each `POST /v1/traces` body
/// (protobuf `ExportTraceServiceRequest`) and keeps its spans.
pub(crate) async fn otlp_receiver() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;
    let spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>> = Default::default();
    let kept = spans.clone();
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    };
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let request =
                    ExportTraceServiceRequest::decode(body).expect("an OTLP trace request");
                let mut kept = kept.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .map(|kv| text(&kv.value))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            kept.push(ReceivedSpan {
                                service: service.clone(),
                                name: span.name,
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent_span_id: hex(&span.parent_span_id),
                                start_ns: span.start_time_unix_nano,
                                attributes: span
                                    .attributes
                                    .iter()
                                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                                    .collect(),
                            });
                        }
                    }
                }
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, `strand-broker` exports a span for every produce and
/// fetch, on both protocols, named by its service; they reach a real OTLP receiver by the time
/// the broker has shut down (SIGTERM flushes what is batched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_fetch_are_exported_as_spans_over_otlp() {
    use strand_client::{Producer, ProducerConfig, ProducerRecord, TopicSettings};
    let (receiver, spans) = otlp_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strand-broker"));
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}"))
        .env("OTEL_SERVICE_NAME", "broker-under-test")
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"]);
    let (child, line) = super::broker_process::spawn_until(&mut command, "strand-broker listening");
    let field = |name: &str| {
        let tail = line.split(&format!("{name}=")).nth(1).unwrap();
        tail.split(' ').next().unwrap().to_string()
    };
    let broker = super::broker_process::BrokerProcess {
        addr: field("native"),
        kafka_addr: field("kafka"),
        http_addr: field("http"),
        child,
    };
    let client = super::broker_process::client(&broker.addr).await;
    client
        .admin()
        .create_topic(
            "traced",
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    let producer = Producer::new(client, ProducerConfig::default());
    producer
        .send(ProducerRecord::new("traced", "native"))
        .await
        .unwrap()
        .await
        .unwrap();
    let kafka: FutureProducer = kafka_config(&broker.kafka_addr).create().unwrap();
    kafka
        .send(
            FutureRecord::to("traced").key("k").payload("kafka"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let consumer: StreamConsumer = kafka_config(&broker.kafka_addr)
        .set("group.id", "tracer")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["traced"]).unwrap();
    let mut n_read = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while n_read < 2 && Instant::now() < deadline {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            n_read += 1;
        }
    }
    assert_eq!(n_read, 2);
    drop(consumer);
    drop(kafka);
    let status = super::broker_process::stop(broker);
    assert!(status.success(), "{status:?}");
    let spans = spans.lock().unwrap().clone();
    for name in ["native.produce", "kafka.produce", "kafka.fetch"] {
        let span = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span among {spans:?}"));
        assert_eq!(span.service, "broker-under-test");
        assert_eq!(span.trace_id.len(), 32);
    }
    let native = spans.iter().find(|s| s.name == "native.produce").unwrap();
    assert!(
        native
            .attributes
            .contains(&("topic".to_string(), "traced".to_string())),
        "{native:?}"
    );
}
