//! The saga pages of the web console in Debian's chromium, driven by playwright-core
//! (`broker/tests/peers/console_saga.js`), and the API they read: list filters by time and
//! key, counts by state, a definition's versions.

use serde_json::{json, Value};

use super::support::{chromium, drive_console, order_definition, Participants, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_by_time_and_key_counts_by_state_and_versions_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path()).await;
    let participants = Participants::default();
    let addr = participants.serve().await;
    assert_eq!(
        stack
            .put("/definitions/order", &order_definition(addr, 2))
            .await
            .0,
        201
    );
    assert_eq!(
        stack
            .put("/definitions/order", &order_definition(addr, 3))
            .await
            .0,
        201
    );
    let (status, versions) = stack.get("/definitions/order/versions").await;
    assert_eq!(status, 200);
    let numbers: Vec<u64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1], "newest first");
    assert_eq!(stack.get("/definitions/nope/versions").await.0, 404);

    let mut ids = Vec::new();
    for (key, input) in [("k-ok", json!({})), ("k-fail", json!({"fail": "reserve"}))] {
        let (status, saga) = stack
            .post(
                "/sagas",
                &json!({"definition": "order", "input": input, "idempotency_key": key}),
            )
            .await;
        assert_eq!(status, 201, "{saga}");
        ids.push(saga["id"].as_str().unwrap().to_string());
    }
    stack.wait_for(&ids[0], &["completed"]).await;
    let failed = stack.wait_for(&ids[1], &["compensated"]).await;

    let (_, page) = stack.get("/sagas").await;
    assert_eq!(page["counts"], json!({"completed": 1, "compensated": 1}));
    let (_, page) = stack.get("/sagas?search=k-fail").await;
    assert_eq!(page["sagas"].as_array().unwrap().len(), 1);
    assert_eq!(page["sagas"][0]["id"], ids[1].as_str());
    let (_, page) = stack.get(&format!("/sagas?search={}", ids[0])).await;
    assert_eq!(page["sagas"][0]["id"], ids[0].as_str());
    let created = failed["created_at_ms"].as_i64().unwrap();
    let (_, page) = stack
        .get(&format!("/sagas?created_from_ms={}", created + 1))
        .await;
    assert_eq!(page["sagas"], json!([]));
    assert_eq!(page["counts"], json!({}));
    let (_, page) = stack
        .get(&format!(
            "/sagas?created_from_ms={created}&created_to_ms={}",
            created + 1
        ))
        .await;
    let listed: Vec<&Value> = page["sagas"].as_array().unwrap().iter().collect();
    assert!(listed.iter().any(|s| s["id"] == ids[1].as_str()));
    assert!(listed
        .iter()
        .all(|s| s["created_at_ms"].as_i64() == Some(created)));
    stack.stop().await;
}

/// See `broker/tests/peers/console_saga.js` for what the browser checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_pages_show_timelines_retry_filters_and_versions_in_chromium() {
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path()).await;
    let participants = Participants::default();
    let addr = participants.serve().await;
    // v1 retries twice; v2 (the one sagas start on) gives up after one attempt, so a
    // compensation that fails once holds its saga for an operator.
    assert_eq!(
        stack
            .put("/definitions/order", &order_definition(addr, 2))
            .await
            .0,
        201
    );
    assert_eq!(
        stack
            .put("/definitions/order", &order_definition(addr, 1))
            .await
            .0,
        201
    );
    let mut ids = Vec::new();
    for (key, input) in [
        ("order-ok", json!({"order_id": "a-1"})),
        (
            "order-refused",
            json!({"order_id": "b-2", "fail": "reserve"}),
        ),
        (
            "order-stuck",
            json!({"order_id": "c-3", "fail": "reserve", "flaky_undo": "charge"}),
        ),
    ] {
        let (status, saga) = stack
            .post(
                "/sagas",
                &json!({"definition": "order", "input": input, "idempotency_key": key}),
            )
            .await;
        assert_eq!(status, 201, "{saga}");
        ids.push(saga["id"].as_str().unwrap().to_string());
    }
    stack.wait_for(&ids[0], &["completed"]).await;
    stack.wait_for(&ids[1], &["compensated"]).await;
    stack.wait_for(&ids[2], &["failed"]).await;

    let shots = if std::env::var_os("STRAND_UPDATE_SCREENSHOTS").is_some() {
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs"))
    } else {
        dir.path().to_path_buf()
    };
    let api = stack.api.trim_start_matches("http://").to_string();
    let mut args = vec![api];
    args.extend(ids);
    args.push(shots.to_str().unwrap().to_string());
    drive_console("console_saga.js", args, "saga console ok").await;
    stack.stop().await;
}
