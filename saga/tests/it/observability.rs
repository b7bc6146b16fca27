//! What an operator sees of a saga run: `strand-saga` (the real binary) with OTLP export on and
//! JSON logs, a participant traced with the OpenTelemetry SDK, and a real OTLP receiver (the
//! protocol's generated messages, decoded by prost) collecting both. One order saga completes
//! and one compensates; then the traces, the log lines and the `/metrics` of the orchestrator
//! and its embedded broker (parsed by Python's `prometheus_client`) are checked.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{json, Value};

use super::support::wait_for_state;

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    start_ns: u64,
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on 127.0.0.1 port 0: decodes each `POST /v1/traces` body (protobuf
/// `ExportTraceServiceRequest`) and keeps its spans.
async fn otlp_receiver() -> (SocketAddr, Received) {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    use prost::Message as _;
    let spans: Received = Arc::default();
    let kept = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
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
                        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            AnyValue::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
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

/// A participant of the order saga traced with the OpenTelemetry SDK, as a service of the
/// user's would be: each call is a server span continuing the request's `traceparent`.
/// `POST /{step}/{do|undo}`; the `reserve` action refuses (422) the sku `out-of-stock`.
#[derive(Clone)]
struct TracedParticipant {
    provider: SdkTracerProvider,
    /// Each call's saga id and `traceparent` header, in arrival order.
    seen: Calls,
}

/// What a participant was called with: the saga id and the `traceparent` header.
type Calls = Arc<Mutex<Vec<(String, Option<String>)>>>;

async fn participant_call(
    State(p): State<TracedParticipant>,
    Path((step, op)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let carrier: HashMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    p.seen.lock().unwrap().push((
        body["saga"].as_str().unwrap_or_default().to_string(),
        carrier.get("traceparent").cloned(),
    ));
    let parent = TraceContextPropagator::new().extract(&carrier);
    let tracer = p.provider.tracer("order-participant");
    let mut span = tracer
        .span_builder(format!("POST /{step}/{op}"))
        .with_kind(SpanKind::Server)
        .start_with_context(&tracer, &parent);
    let refused = step == "reserve" && op == "do" && body["input"]["sku"] == "out-of-stock";
    span.end();
    if refused {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "out of stock"})),
        )
    } else {
        (StatusCode::OK, Json(json!({"step": step})))
    }
}

fn order_definition(addr: SocketAddr) -> Value {
    let participant = |step: &str, op: &str| {
        json!({
            "type": "http",
            "url": format!("http://{addr}/{step}/{op}"),
            "body": {"saga": "{{ saga_id }}", "input": "{{ input }}"}
        })
    };
    let steps: Vec<Value> = ["order", "charge", "reserve"]
        .iter()
        .map(|s| {
            json!({
                "name": s,
                "action": participant(s, "do"),
                "compensation": participant(s, "undo"),
                "timeout_ms": 5000,
                "retry": {"max_attempts": 3, "initial_backoff_ms": 20, "max_backoff_ms": 200},
            })
        })
        .collect();
    json!({"description": "order, payment, inventory", "steps": steps})
}

/// `GET path` on `base`: the content type and the body.
async fn get_text(http: &reqwest::Client, url: &str) -> (String, String) {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (content_type, response.text().await.unwrap())
}

/// Samples of a `/metrics` answer as Python's `prometheus_client` parsed it.
fn parse_metrics(
    content_type: &str,
    body: &str,
) -> Vec<(String, serde_json::Map<String, Value>, f64)> {
    use std::io::Write;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../broker/tests/peers/parse_metrics.py"
    );
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(content_type)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sample(
    samples: &[(String, serde_json::Map<String, Value>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

const CALLER_TRACE_OK: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_TRACE_UNDONE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "b7ad6b7169203331";
/// A caller whose trace is not sampled (`traceparent` flags `00`).
const CALLER_TRACE_UNSAMPLED: &str = "5c0d4e8a9f1b2c3d4e5f60718293a4b5";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_is_one_trace_with_its_steps_and_attempts_logs_carry_it_and_metrics_move() {
    let (receiver, spans) = otlp_receiver().await;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("http://{receiver}/v1/traces"))
                .build()
                .unwrap(),
        )
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name("order-participant")
                .build(),
        )
        .build();
    let seen: Calls = Arc::default();
    let participant = {
        let app = Router::new()
            .route("/{step}/{op}", post(participant_call))
            .with_state(TracedParticipant {
                provider: provider.clone(),
                seen: seen.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    };

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strand-saga"))
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0"])
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}"))
        .env("OTEL_SERVICE_NAME", "strand-saga")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let (started, wait_started) = std::sync::mpsc::channel();
    {
        let stderr = child.stderr.take().unwrap();
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("strand-saga listening") {
                    let _ = started.send(line.clone());
                }
                lines.lock().unwrap().push(line);
            }
        });
    }
    let listening: Value = serde_json::from_str(
        &wait_started
            .recv_timeout(Duration::from_secs(60))
            .expect("strand-saga never said where it listens"),
    )
    .expect("the start line is JSON");
    let api = format!("http://{}", listening["fields"]["api"].as_str().unwrap());
    // The embedded broker said where its HTTP listener is before the orchestrator started.
    let broker_http = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("strand-broker listening"))
        .map(|l| {
            let parsed: Value = serde_json::from_str(l).expect("the broker's start line is JSON");
            parsed["fields"]["http"].as_str().unwrap().to_string()
        })
        .expect("the embedded broker's start line");

    // Every request bounded, so a stuck orchestrator fails the test instead of hanging it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let put = http
        .put(format!("{api}/definitions/order"))
        .json(&order_definition(participant))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let mut ids = Vec::new();
    for (trace, sku) in [
        (CALLER_TRACE_OK, "book"),
        (CALLER_TRACE_UNDONE, "out-of-stock"),
    ] {
        let started = http
            .post(format!("{api}/sagas"))
            .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-01"))
            .json(&json!({"definition": "order", "input": {"order_id": trace, "sku": sku}}))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 201);
        let saga: Value = started.json().await.unwrap();
        ids.push(saga["id"].as_str().unwrap().to_string());
    }
    wait_for_state(&http, &api, &ids[0], &["completed"]).await;
    wait_for_state(&http, &api, &ids[1], &["compensated"]).await;

    // The orchestrator's metrics, as Prometheus would read them.
    let (content_type, body) = get_text(&http, &format!("{api}/metrics")).await;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let samples = parse_metrics(&content_type, &body);
    let order = [("definition", "order")];
    assert_eq!(
        sample(&samples, "strand_saga_sagas_started_total", &order),
        2.0,
        "{body}"
    );
    assert_eq!(
        sample(&samples, "strand_saga_sagas_completed_total", &order),
        1.0
    );
    assert_eq!(
        sample(&samples, "strand_saga_sagas_compensated_total", &order),
        1.0
    );
    assert_eq!(
        sample(&samples, "strand_saga_sagas_failed_total", &order),
        0.0
    );
    assert_eq!(
        sample(&samples, "strand_saga_duration_seconds_count", &order),
        2.0
    );
    // Actions: 3 ok + 2 ok and 1 refused; compensations: 2 ok.
    let attempts = |kind, outcome| {
        sample(
            &samples,
            "strand_saga_attempts_total",
            &[("kind", kind), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("action", "ok"), 5.0, "{body}");
    assert_eq!(attempts("action", "failed"), 1.0, "{body}");
    assert_eq!(attempts("compensation", "ok"), 2.0, "{body}");
    assert_eq!(sample(&samples, "strand_saga_in_flight_sagas", &[]), 0.0);
    assert!(
        sample(
            &samples,
            "strand_saga_journal_append_duration_seconds_count",
            &[]
        ) >= 10.0
    );
    assert_eq!(
        sample(&samples, "strand_saga_breaker_state", &[]),
        0.0,
        "every breaker closed"
    );

    // The embedded broker's metrics: the journal's appends went through it.
    let (content_type, body) = get_text(&http, &format!("http://{broker_http}/metrics")).await;
    let samples = parse_metrics(&content_type, &body);
    assert!(
        sample(&samples, "strand_request_duration_seconds_count", &[]) >= 10.0,
        "{body}"
    );
    assert_eq!(sample(&samples, "strand_storage_errors_total", &[]), 0.0);

    // A saga whose caller's trace is not sampled (started after the metrics above were read).
    let started = http
        .post(format!("{api}/sagas"))
        .header(
            "traceparent",
            format!("00-{CALLER_TRACE_UNSAMPLED}-{CALLER_SPAN}-00"),
        )
        .json(&json!({"definition": "order", "input": {"order_id": 3, "sku": "book"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    let saga: Value = started.json().await.unwrap();
    ids.push(saga["id"].as_str().unwrap().to_string());
    wait_for_state(&http, &api, &ids[2], &["completed"]).await;

    // Stop: SIGTERM flushes the spans still batched.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("strand-saga did not stop within a minute of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    tokio::task::spawn_blocking(move || {
        provider.shutdown().unwrap();
        drop(provider);
    })
    .await
    .unwrap();

    let spans = spans.lock().unwrap().clone();
    for (id, trace, steps) in [
        (
            &ids[0],
            CALLER_TRACE_OK,
            &["action order", "action charge", "action reserve"][..],
        ),
        (
            &ids[1],
            CALLER_TRACE_UNDONE,
            &[
                "action order",
                "action charge",
                "action reserve",
                "compensation charge",
                "compensation order",
            ][..],
        ),
    ] {
        let mut in_trace: Vec<&ReceivedSpan> =
            spans.iter().filter(|s| s.trace_id == trace).collect();
        in_trace.sort_by_key(|s| s.start_ns);
        let by_id: HashMap<&str, &ReceivedSpan> =
            in_trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
        // The API request continues the caller's span; the saga is its child.
        let request = in_trace
            .iter()
            .find(|s| s.parent_span_id == CALLER_SPAN)
            .unwrap_or_else(|| panic!("{id}: no span continues the caller's: {in_trace:#?}"));
        assert_eq!(request.service, "strand-saga");
        let saga = in_trace
            .iter()
            .find(|s| s.name == "saga order")
            .unwrap_or_else(|| panic!("{id}: no saga span: {in_trace:#?}"));
        assert_eq!(saga.parent_span_id, request.span_id, "{id}");
        // Its steps, in order, each the saga's child.
        let step_spans: Vec<&&ReceivedSpan> = in_trace
            .iter()
            .filter(|s| s.parent_span_id == saga.span_id && s.name != "journal append")
            .collect();
        let names: Vec<&str> = step_spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, steps, "{id}: steps in order");
        // One attempt per step (none failed in a way worth retrying), each the step's child,
        // and the participant's server span the attempt's child.
        for step in &step_spans {
            let attempts: Vec<&&ReceivedSpan> = in_trace
                .iter()
                .filter(|s| s.parent_span_id == step.span_id)
                .collect();
            assert_eq!(attempts.len(), 1, "{id} {}: {attempts:#?}", step.name);
            // Attempts are numbered per step: a compensation's first follows the action's.
            assert!(attempts[0].name.starts_with("attempt "), "{attempts:#?}");
            let served: Vec<&&ReceivedSpan> = in_trace
                .iter()
                .filter(|s| {
                    s.parent_span_id == attempts[0].span_id && s.service == "order-participant"
                })
                .collect();
            assert_eq!(
                served.len(),
                1,
                "{id} {}: the participant's span",
                step.name
            );
            let journal = in_trace
                .iter()
                .filter(|s| s.parent_span_id == attempts[0].span_id && s.name == "journal append")
                .count();
            assert!(
                journal >= 1,
                "{id} {}: the attempt's journal append",
                step.name
            );
        }
        // Nothing of this saga lands in another trace.
        assert!(in_trace.iter().all(|s| s.parent_span_id.is_empty()
            || by_id.contains_key(s.parent_span_id.as_str())
            || s.parent_span_id == CALLER_SPAN));
    }

    // The unsampled saga exported nothing, yet each of its calls carried a valid `traceparent`
    // in its trace, from the orchestrator's own span (not the caller's), sampled flag off; the
    // sampled sagas' calls had the flag on.
    assert!(
        spans.iter().all(|s| s.trace_id != CALLER_TRACE_UNSAMPLED),
        "spans of an unsampled trace were exported"
    );
    let seen = seen.lock().unwrap().clone();
    let unsampled_calls: Vec<&String> = seen
        .iter()
        .filter(|(saga, _)| *saga == ids[2])
        .map(|(_, traceparent)| traceparent.as_ref().expect("a traceparent"))
        .collect();
    assert_eq!(unsampled_calls.len(), 3, "{seen:#?}");
    for traceparent in unsampled_calls {
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[0], "00", "{traceparent}");
        assert_eq!(parts[1], CALLER_TRACE_UNSAMPLED, "{traceparent}");
        assert!(
            parts[2].len() == 16
                && parts[2].bytes().all(|b| b.is_ascii_hexdigit())
                && parts[2] != "0000000000000000"
                && parts[2] != CALLER_SPAN,
            "{traceparent}"
        );
        assert_eq!(parts[3], "00", "{traceparent}");
    }
    for (saga, traceparent) in &seen {
        if *saga == ids[0] || *saga == ids[1] {
            let traceparent = traceparent.as_ref().expect("a traceparent");
            assert!(traceparent.ends_with("-01"), "{traceparent}");
        }
    }

    // Every log line is JSON; those about a saga carry its trace id.
    let lines = lines.lock().unwrap().clone();
    assert!(!lines.is_empty());
    let mut n_about = [0, 0, 0];
    for line in &lines {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for (i, (id, trace)) in [
            (&ids[0], CALLER_TRACE_OK),
            (&ids[1], CALLER_TRACE_UNDONE),
            (&ids[2], CALLER_TRACE_UNSAMPLED),
        ]
        .into_iter()
        .enumerate()
        {
            if parsed["fields"]["saga"] == id.as_str() {
                n_about[i] += 1;
                assert_eq!(parsed["trace_id"], trace, "{line}");
            }
        }
    }
    assert!(
        n_about.iter().all(|n| *n >= 2),
        "log lines per saga: {n_about:?}"
    );
}
