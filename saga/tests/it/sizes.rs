//! Size limits: an input, an idempotency key or a definition over its limit is refused at the
//! API with a JSON error naming the limit, and nothing starts or is stored; a participant's
//! answer over its limit fails the step permanently (the saga compensates) instead of becoming
//! a journal record the broker could refuse; limits whose worst journal record would not fit
//! the broker's record limit stop `strand-saga` at start (exit 2).

use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use strand_saga::http::HttpConfig;
use strand_saga::limits::SizeLimits;
use strand_saga::orchestrator::OrchestratorConfig;
use strand_saga::participants::ParticipantsConfig;

use super::support::Stack;

const LIMITS: SizeLimits = SizeLimits {
    input_bytes_max: 1_000,
    idempotency_key_bytes_max: 32,
    definition_bytes_max: 4_000,
    output_bytes_max: 2_000,
};

/// `/small` answers a small object; `/big` one of 10 kB; `/undo` records nothing.
async fn serve_participant() -> std::net::SocketAddr {
    let app = Router::new()
        .route("/small", post(|| async { Json(json!({"id": "ok"})) }))
        .route(
            "/big",
            post(|| async { Json(json!({"blob": "x".repeat(10_000)})) }),
        )
        .route("/undo", post(|| async { Json(json!({"undone": true})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_checked_at_the_api_and_on_participant_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut participants = ParticipantsConfig::default();
    participants.output_bytes_max = LIMITS.output_bytes_max;
    let config = OrchestratorConfig {
        participants,
        ..OrchestratorConfig::default()
    };
    let http = HttpConfig {
        limits: LIMITS,
        ..HttpConfig::default()
    };
    let stack = Stack::start_with_http(dir.path(), config, http).await;
    let addr = serve_participant().await;
    let call = |path: &str| json!({"type": "http", "url": format!("http://{addr}/{path}")});
    let definition = json!({"steps": [
        {"name": "first", "action": call("small"), "compensation": call("undo")},
        {"name": "second", "action": call("big"), "compensation": call("undo")}
    ]});
    let (status, body) = stack.put("/definitions/sizes", &definition).await;
    assert_eq!(status, 201, "{body}");

    // A definition over its limit: 413, not stored.
    let mut big_definition = definition.clone();
    big_definition["description"] = json!("d".repeat(5_000));
    let (status, body) = stack.put("/definitions/huge", &big_definition).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--definition-bytes-max"),
        "{body}"
    );
    assert_eq!(stack.get("/definitions/huge").await.0, 404);

    // An input over its limit: 413; a key over its limit: 400; neither starts a saga.
    let (status, body) = stack
        .post(
            "/sagas",
            &json!({"definition": "sizes", "input": {"note": "n".repeat(2_000)}}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--saga-input-bytes-max"),
        "{body}"
    );
    let (status, body) = stack
        .post(
            "/sagas",
            &json!({"definition": "sizes", "input": {}, "idempotency_key": "k".repeat(33)}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("idempotency key"),
        "{body}"
    );
    let (_, page) = stack.get("/sagas").await;
    assert_eq!(page["sagas"], json!([]), "nothing started");

    // Within the limits: it starts; the second step's answer is over its limit, which fails
    // that step for good, and the first step is compensated.
    let (status, saga) = stack
        .post(
            "/sagas",
            &json!({"definition": "sizes", "input": {"n": 1}, "idempotency_key": "k-1"}),
        )
        .await;
    assert_eq!(status, 201, "{saga}");
    let id = saga["id"].as_str().unwrap();
    let done = stack.wait_for(id, &["compensated", "failed"]).await;
    assert_eq!(done["state"], "compensated", "{done}");
    let second = &done["steps"][1];
    let error = second["error"].as_str().unwrap_or_default();
    assert!(error.contains("--participant-output-bytes-max"), "{second}");
    let attempts = second["attempts"].as_array().unwrap().len();
    assert_eq!(attempts, 1, "a permanent failure is not retried: {second}");
    assert!(!done.to_string().contains(&"x".repeat(10_000)));
    stack.stop().await;
}

#[test]
fn limits_that_do_not_fit_the_brokers_record_limit_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_strand-saga"))
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0"])
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .args(["--participant-output-bytes-max", "2000000"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--journal-record-bytes-max")
            && stderr.contains("--participant-output-bytes-max"),
        "{stderr}"
    );
}
