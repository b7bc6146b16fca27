use std::path::Path;
use std::process::Command;

/// Runs `strand-bench ARGS` in `dir` (its brokers keep their data there) and parses the one
/// JSON object it prints on stdout.
fn run_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_strand-bench"))
        .current_dir(dir)
        .arg("--json")
        .arg("--quiet")
        .args(args)
        .output()
        .expect("strand-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "strand-bench {args:?} failed: {stderr}"
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 on stdout");
    assert_eq!(stdout.lines().count(), 1, "one line on stdout: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// An SVG document with at least `n_lines` drawn lines and the given texts.
fn assert_svg(path: &Path, n_lines: usize, texts: &[&str]) {
    let svg = std::fs::read_to_string(path).expect("the chart was written");
    assert!(
        svg.trim_start().starts_with("<svg"),
        "not SVG: {}",
        &svg[..80.min(svg.len())]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.matches("<polyline").count() >= n_lines, "{svg}");
    for text in texts {
        assert!(svg.contains(text), "{text:?} missing from the chart");
    }
}

#[test]
fn latency_writes_json_the_histogram_and_a_percentile_chart() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("latency.svg");
    let hgrm = dir.path().join("latency.hgrm");
    let result = run_json(
        dir.path(),
        &[
            "latency",
            "--rate",
            "300",
            "--seconds",
            "1",
            "--chart",
            chart.to_str().unwrap(),
            "--hdr-out",
            hgrm.to_str().unwrap(),
        ],
    );
    assert_eq!(result["command"], "latency");
    assert_eq!(result["records"], 300);
    let latency = &result["latency_ms"];
    let p50 = latency["percentiles"]["p50"].as_f64().unwrap();
    let p99 = latency["percentiles"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= latency["max"].as_f64().unwrap());
    assert_svg(&chart, 1, &["percentile", "latency (ms)", "99%"]);
    // The histogram file counts every record once: its last row holds the total.
    let text = std::fs::read_to_string(&hgrm).unwrap();
    let last_row: Vec<&str> = text
        .lines()
        .rfind(|line| !line.starts_with('#') && !line.trim().is_empty())
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(last_row[1], "1.000000000000");
    assert_eq!(last_row[2], "300");
}

#[test]
fn throughput_writes_json_and_a_chart_over_time() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("throughput.svg");
    let result = run_json(
        dir.path(),
        &[
            "throughput",
            "--records",
            "500",
            "--chart",
            chart.to_str().unwrap(),
        ],
    );
    assert_eq!(result["command"], "throughput");
    assert_eq!(result["records"], 500);
    for way in ["produce", "consume"] {
        assert!(
            result[way]["records_per_s"].as_f64().unwrap() > 0.0,
            "{result}"
        );
        assert!(result[way]["seconds"].as_f64().unwrap() > 0.0, "{result}");
    }
    assert_svg(
        &chart,
        2,
        &["produce (acknowledged)", "consume", "records/s"],
    );
}

#[test]
fn saga_writes_json_and_a_chart_with_latency_over_time() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("saga.svg");
    let result = run_json(
        dir.path(),
        &[
            "saga",
            "--sagas",
            "100",
            "--concurrency",
            "20",
            "--chart",
            chart.to_str().unwrap(),
        ],
    );
    assert_eq!(result["command"], "saga");
    assert_eq!(result["sagas"], 100);
    assert!(result["sagas_per_s"].as_f64().unwrap() > 0.0);
    assert!(result["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert_svg(&chart, 3, &["completed", "p50", "p99", "sagas/s"]);
}
