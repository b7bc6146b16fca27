//! Finished sagas stay readable after they leave memory: `strand-saga` with room for one
//! finished saga in memory answers `GET /sagas/{id}` for the others from their snapshots, also
//! after a kill -9 and restart; past its index's bound it says the saga is no longer kept.

use std::time::Duration;

use serde_json::{json, Value};

use super::crash::{start_saga_on, SagaProcess};
use super::support::{order_definition, wait_for_state, Participants};

fn start(dir: &std::path::Path, indexed: &str) -> SagaProcess {
    start_saga_on(
        dir,
        &[
            "--finished-sagas-max",
            "1",
            "--finished-sagas-indexed",
            indexed,
        ],
    )
}

async fn get(http: &reqwest::Client, api: &str, id: &str) -> (u16, Value) {
    let r = http.get(format!("{api}/sagas/{id}")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Waits until the instance holds at most one of `ids` in memory (its list shows only what
/// is in memory): the others were evicted after a checkpoint.
async fn wait_evicted(http: &reqwest::Client, api: &str, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = http
            .get(format!("{api}/sagas?limit=1000"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let listed = page["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| ids.iter().any(|id| s["id"] == id.as_str()))
            .count();
        if listed <= 1 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{listed} finished sagas still in memory: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every saga reads back finished as it ended: three steps, and a compensated one with its
/// compensations.
async fn assert_readable(http: &reqwest::Client, api: &str, sagas: &[(String, &str)]) {
    for (id, state) in sagas {
        let (status, saga) = get(http, api, id).await;
        assert_eq!(status, 200, "{id}: {saga}");
        assert_eq!(saga["id"], id.as_str());
        assert_eq!(saga["state"], *state, "{saga}");
        assert_eq!(saga["steps"].as_array().unwrap().len(), 3, "{saga}");
        let compensations = saga["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "compensated")
            .count();
        assert_eq!(compensations, if *state == "completed" { 0 } else { 2 });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_finished_sagas_are_read_from_snapshots_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let participants = Participants::default();
    let addr = participants.serve().await;
    let http = reqwest::Client::new();
    let saga = start(dir.path(), "1000");
    let r = http
        .put(format!("{}/definitions/order", saga.api))
        .json(&order_definition(addr, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut sagas = Vec::new();
    for i in 0..4 {
        let input = if i % 2 == 0 {
            json!({"n": i})
        } else {
            json!({"n": i, "fail": "reserve"})
        };
        let r = http
            .post(format!("{}/sagas", saga.api))
            .json(&json!({"definition": "order", "input": input}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_string();
        let state = if i % 2 == 0 {
            "completed"
        } else {
            "compensated"
        };
        wait_for_state(&http, &saga.api, &id, &[state]).await;
        sagas.push((id, state));
    }
    let ids: Vec<String> = sagas.iter().map(|(id, _)| id.clone()).collect();
    wait_evicted(&http, &saga.api, &ids).await;
    assert_readable(&http, &saga.api, &sagas).await;
    // A saga id nobody started is still a 404.
    let never = "00000000-0000-7000-8000-000000000000";
    let (status, body) = get(&http, &saga.api, never).await;
    assert_eq!(status, 404, "{body}");

    // kill -9, restart on the same data: the takeover reloads them, evicts them again after
    // its first checkpoint, and they are still read from their snapshots.
    drop(saga);
    let saga = start(dir.path(), "1000");
    wait_evicted(&http, &saga.api, &ids).await;
    assert_readable(&http, &saga.api, &sagas).await;

    // With room in the index for one, the rest is no longer kept: a 404 that says so.
    drop(saga);
    let saga = start(dir.path(), "1");
    wait_evicted(&http, &saga.api, &ids).await;
    let mut readable = 0;
    for (id, _) in &sagas {
        let (status, body) = get(&http, &saga.api, id).await;
        match status {
            200 => readable += 1,
            404 => {
                let error = body["error"].as_str().unwrap();
                assert!(
                    error.contains("no longer kept") && error.contains("indexes"),
                    "{error}"
                );
            }
            _ => panic!("{id}: {status} {body}"),
        }
    }
    // One indexed, and at most one more still in memory.
    assert!((1..=2).contains(&readable), "{readable} readable");
}
