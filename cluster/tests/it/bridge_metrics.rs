//! The bridge's `/metrics` as Prometheus reads it: parsed by the Prometheus project's own
//! OpenMetrics parser (Python `prometheus_client`), with the route's counters moving as records
//! are mirrored.

use std::process::Command;
use std::time::{Duration, Instant};

use strand_client::{Producer, ProducerConfig, ProducerRecord, TopicSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::{client, spawn_until_line, start_broker};

/// The `/metrics` answer's content type and body.
async fn scrape(addr: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .expect("a content type")
        .to_string();
    (content_type, body.to_string())
}

/// `value` of the sample `name{route=...}` as prometheus_client parsed `body`.
fn parsed_value(content_type: &str, body: &str, name: &str) -> Option<f64> {
    use std::io::Write;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../broker/tests/peers/parse_metrics.py"
    );
    let mut child = Command::new("/usr/bin/python3")
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
    let samples: Vec<(String, serde_json::Value, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .find(|(n, labels, _)| n == name && labels["route"].as_str().is_some())
        .map(|(_, _, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_metrics_parse_and_count_mirrored_records() {
    const N: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let a = start_broker(&dir.path().join("a")).await;
    let b = start_broker(&dir.path().join("b")).await;
    let ca = client(&a.addr).await;
    ca.admin()
        .create_topic(
            "events",
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"
checkpoint_interval_ms = 200
[clusters.a]
kind = "strand"
address = "{}"
[clusters.b]
kind = "strand"
address = "{}"
[[routes]]
from = {{ cluster = "a", topic = "events" }}
to = {{ cluster = "b", topic = "events" }}
direction = "one-way"
"#,
            a.addr, b.addr
        ),
    )
    .unwrap();
    let (_bridge, line) = spawn_until_line(
        Command::new(env!("CARGO_BIN_EXE_strand-bridge")).args([
            "--config",
            config.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
        ]),
        "strand-bridge running",
    );
    let http = line
        .split("http=")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .unwrap()
        .to_string();
    let (content_type, body) = scrape(&http).await;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert_eq!(
        parsed_value(&content_type, &body, "strand_bridge_records_total"),
        Some(0.0),
        "{body}"
    );

    let producer = Producer::new(ca, ProducerConfig::default());
    for i in 0..N {
        producer
            .send(ProducerRecord::new("events", format!("e{i}")))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (content_type, body) = scrape(&http).await;
        let mirrored = parsed_value(&content_type, &body, "strand_bridge_records_total");
        if mirrored == Some(N as f64) {
            assert_eq!(
                parsed_value(&content_type, &body, "strand_bridge_errors_total"),
                Some(0.0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mirrored {mirrored:?} of {N}\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
