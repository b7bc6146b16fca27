//! 1,000 concurrent sagas against participants that fail, stall past the step timeout, or fail
//! once at random: every saga ends with all of its actions applied, or with every applied
//! action compensated.

use std::collections::HashMap;

use serde_json::json;
use strand_saga::breaker::BreakerConfig;
use strand_saga::orchestrator::OrchestratorConfig;

use super::support::{order_definition, Participants, Stack};

const N_SAGAS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // One shared endpoint answers 503 for a fifth of the calls: with the default breaker
    // (open after 5 consecutive failures) that would be an outage, which is not what this test
    // is about. The breaker has its own tests.
    let config = OrchestratorConfig {
        breaker: BreakerConfig {
            failures_to_open: 1_000,
            open_ms: 1_000,
        },
        ..OrchestratorConfig::default()
    };
    let stack = Stack::start_with(dir.path(), config).await;
    let participants = Participants::default();
    let addr = participants.serve().await;
    // Timeouts leave room for a loaded CI machine (every test binary at once on two cores):
    // at 500 ms, undo calls answered late were timed out three times in a row there.
    let mut definition = order_definition(addr, 5);
    for step in definition["steps"].as_array_mut().unwrap() {
        step["timeout_ms"] = json!(1500);
    }
    assert_eq!(stack.put("/definitions/order", &definition).await.0, 201);

    let steps = ["order", "charge", "reserve"];
    let mut rng = fastrand::Rng::with_seed(7);
    let mut ids = Vec::new();
    for i in 0..N_SAGAS {
        let mut input = json!({"n": i});
        let pick = |rng: &mut fastrand::Rng| steps[rng.usize(..steps.len())];
        if rng.f64() < 0.2 {
            input["fail"] = json!(pick(&mut rng));
        }
        if rng.f64() < 0.2 {
            input["slow"] = json!(pick(&mut rng));
            // One in five slow calls outlasts the 500 ms step timeout.
            input["slow_ms"] = json!(if rng.f64() < 0.2 {
                700
            } else {
                rng.u64(1..100)
            });
        }
        if rng.f64() < 0.2 {
            input["flaky"] = json!(pick(&mut rng));
        }
        if rng.f64() < 0.2 {
            input["flaky_undo"] = json!(pick(&mut rng));
        }
        let (status, saga) = stack
            .post("/sagas", &json!({"definition": "order", "input": input}))
            .await;
        assert_eq!(status, 201, "{saga}");
        ids.push(saga["id"].as_str().unwrap().to_string());
    }
    let mut states: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    let effects = loop {
        let mut unfinished = Vec::new();
        for id in &ids {
            let (_, saga) = stack.get(&format!("/sagas/{id}")).await;
            if saga["state"] != "completed" && saga["state"] != "compensated" {
                unfinished.push(saga);
            }
        }
        if unfinished.is_empty() {
            break participants.effects();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} sagas unfinished, e.g. {}",
            unfinished.len(),
            unfinished[0]
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for id in &ids {
        let (_, saga) = stack.get(&format!("/sagas/{id}")).await;
        let state = saga["state"].as_str().unwrap().to_string();
        *states.entry(state.clone()).or_default() += 1;
        let applied = |step: &str, phase: &str| {
            effects
                .get(&(id.clone(), step.to_string(), phase.to_string()))
                .copied()
                .unwrap_or(0)
        };
        for step in steps {
            let (did, undid) = (applied(step, "action"), applied(step, "compensation"));
            assert!(
                did <= 1 && undid <= 1,
                "{id} {step}: applied {did}, undone {undid}"
            );
            if state == "completed" {
                assert_eq!((did, undid), (1, 0), "{id} {step} in a completed saga");
            } else {
                assert_eq!(state, "compensated");
                assert!(
                    did == 0 || undid == 1,
                    "{id} {step} applied and never compensated"
                );
            }
        }
    }
    println!("{states:?}");
    assert!(states["completed"] > 0 && states["compensated"] > 0);
    stack.stop().await;
}
