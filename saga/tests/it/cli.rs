//! `strand saga`, the CLI's saga commands, against a real `strand-saga` process: every verb,
//! its text and `--json` output, and its errors (the API's message, exit status 1).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::crash::start_saga;
use super::support::{order_definition, wait_for_state, Participants};

/// The `strand` binary next to `strand-saga` (a workspace build makes both; a run of only this
/// crate's tests needs `cargo build -p strand-client --bin strand` first).
pub fn strand_cli() -> PathBuf {
    let saga = PathBuf::from(env!("CARGO_BIN_EXE_strand-saga"));
    let cli = saga.with_file_name("strand");
    assert!(
        cli.exists(),
        "{} is missing: run the tests with --workspace, or build it with `cargo build -p strand-client --bin strand`",
        cli.display()
    );
    cli
}

/// What one run printed, and its exit status.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{}\n{}", self.stdout, self.stderr);
        &self.stdout
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// It failed with exit status 1, saying `what` on standard error.
    pub fn failed_with(&self, what: &[&str]) {
        assert_eq!(self.code, Some(1), "{}\n{}", self.stdout, self.stderr);
        for w in what {
            assert!(self.stderr.contains(w), "{w:?} not in {}", self.stderr);
        }
    }
}

/// Runs `strand saga ARGS` against `api` (coreutils' timeout bounds it), with `env` set.
pub async fn strand_saga(api: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = std::process::Command::new("timeout");
    command
        .arg("120")
        .arg(strand_cli())
        .args(["saga", "--saga-url", api])
        .args(args)
        .env_remove("STRAND_TOKEN")
        .envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, value: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_verb_of_the_cli_against_strand_saga() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let participants = Participants::default();
    let addr = participants.serve().await;
    let http = reqwest::Client::new();
    let saga = start_saga(dir.path());
    let api = saga.api.as_str();
    let cli = |args: Vec<&str>| {
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            strand_saga(api, &args, &[]).await
        }
    };

    // definitions put: version 1 from the file's name; version 2 (reserve is the pivot, and a
    // minute before an action times out) under --name.
    let mut v1 = order_definition(addr, 1);
    for step in v1["steps"].as_array_mut().unwrap() {
        step["timeout_ms"] = json!(60_000);
    }
    let file = write(files.path(), "order.json", &v1);
    assert_eq!(
        cli(vec!["definitions", "put", &file]).await.ok(),
        "order version 1\n"
    );
    let mut v2 = v1.clone();
    v2["steps"][2]["kind"] = json!("pivot");
    v2["steps"][2]
        .as_object_mut()
        .unwrap()
        .remove("compensation");
    let file2 = write(files.path(), "v2.json", &v2);
    let put = cli(vec![
        "definitions",
        "put",
        &file2,
        "--name",
        "order",
        "--json",
    ])
    .await;
    assert_eq!(put.json()["version"], 2);
    // An invalid one: the API's reasons, with their paths.
    let bad = write(files.path(), "bad.json", &json!({"steps": []}));
    cli(vec!["definitions", "put", &bad]).await.failed_with(&[
        "422",
        "invalid definition",
        "steps",
    ]);

    // definitions list and get.
    let listed = cli(vec!["definitions", "list"]).await;
    let line = listed.ok().lines().nth(1).unwrap().to_string();
    assert!(
        line.starts_with("order") && line.contains(" 2 ") && line.contains("order,charge,reserve"),
        "{line}"
    );
    let versions = cli(vec!["definitions", "list", "order", "--json"])
        .await
        .json();
    let numbers: Vec<u64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1]);
    let got = cli(vec!["definitions", "get", "order", "--version", "1"])
        .await
        .json();
    assert_eq!(
        (got["name"].as_str(), got["version"].as_u64()),
        (Some("order"), Some(1))
    );
    assert_eq!(got["steps"][2]["kind"], "compensatable");
    cli(vec!["definitions", "get", "nope"])
        .await
        .failed_with(&["404", "no definition \"nope\""]);

    // start: inline JSON and @file, with keys; the same key with another input is refused.
    let started = cli(vec![
        "start",
        "order",
        "--input",
        r#"{"n": 1}"#,
        "--key",
        "k-ok",
    ])
    .await;
    let (ok_id, state) = started.ok().trim().split_once('\t').unwrap();
    let ok_id = ok_id.to_string();
    assert_eq!(state, "running");
    let input = write(
        files.path(),
        "input.json",
        &json!({"n": 2, "fail": "reserve"}),
    );
    let refused = cli(vec![
        "start",
        "order",
        "--input",
        &format!("@{input}"),
        "--key",
        "k-refused",
        "--json",
    ])
    .await
    .json();
    let refused_id = refused["id"].as_str().unwrap().to_string();
    cli(vec![
        "start",
        "order",
        "--input",
        r#"{"n": 3}"#,
        "--key",
        "k-ok",
    ])
    .await
    .failed_with(&["409", "different request"]);
    cli(vec!["start", "order", "--input", "{not json"])
        .await
        .failed_with(&["--input is not JSON"]);
    wait_for_state(&http, api, &ok_id, &["completed"]).await;
    let done = wait_for_state(&http, api, &refused_id, &["compensated"]).await;

    // show: the steps and a timeline, compensations last first, the pivot named.
    let shown = cli(vec!["show", &refused_id]).await;
    let text = shown.ok();
    assert!(text.contains("state       compensated"), "{text}");
    assert!(text.contains("definition  order v2"), "{text}");
    assert!(text.contains("compensated because:"), "{text}");
    let timeline: Vec<&str> = text.split("\ntimeline\n").nth(1).unwrap().lines().collect();
    let order: Vec<String> = timeline
        .iter()
        .map(|l| {
            let l = l.replace(" (pivot)", "(pivot)");
            let cells: Vec<&str> = l.split_whitespace().collect();
            format!(
                "{} {} {}",
                cells[1],
                cells[2],
                cells[5].trim_end_matches(':')
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            "order action succeeded",
            "charge action succeeded",
            "reserve(pivot) action failed",
            "charge compensation succeeded",
            "order compensation succeeded"
        ],
        "{text}"
    );
    let shown = cli(vec!["show", &refused_id, "--json"]).await.json();
    assert_eq!(shown, done);
    cli(vec!["show", "no-such-saga"])
        .await
        .failed_with(&["404", "is not a saga id"]);

    // list: filters by state, key and time; pages with a cursor; --all follows them.
    let listed = cli(vec!["list", "--state", "compensated"]).await;
    let rows: Vec<&str> = listed.ok().lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{}", listed.stdout);
    assert!(rows[0].starts_with(&refused_id) && rows[0].contains("k-refused"));
    assert!(listed.stderr.contains("completed 1"), "{}", listed.stderr);
    let page = cli(vec!["list", "--key", "k-ok", "--json"]).await.json();
    assert_eq!(page["sagas"].as_array().unwrap().len(), 1);
    assert_eq!(page["sagas"][0]["id"], ok_id.as_str());
    let created = done["created_at_ms"].as_i64().unwrap();
    let later = format!("@{}", created + 1);
    let page = cli(vec!["list", "--from", &later, "--json"]).await.json();
    assert_eq!(page["sagas"], json!([]));
    let page = cli(vec![
        "list",
        "--to",
        &later,
        "--definition",
        "order",
        "--json",
    ])
    .await
    .json();
    assert_eq!(page["sagas"].as_array().unwrap().len(), 2);
    let first = cli(vec!["list", "--limit", "1"]).await;
    assert_eq!(first.ok().lines().count(), 2, "{}", first.stdout);
    let cursor = first
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("next page: --cursor "))
        .unwrap_or_else(|| panic!("no cursor in {}", first.stderr))
        .to_string();
    let second = cli(vec!["list", "--limit", "1", "--cursor", &cursor, "--json"])
        .await
        .json();
    assert_eq!(second["sagas"][0]["id"], refused_id.as_str());
    let all = cli(vec!["list", "--limit", "1", "--all"]).await;
    let ids: Vec<&str> = all
        .ok()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, [ok_id.as_str(), refused_id.as_str()]);

    // abort: a saga whose first action is slow compensates; aborting it again is refused.
    let slow = cli(vec![
        "start",
        "order",
        "--input",
        r#"{"slow": "order", "slow_ms": 30000}"#,
        "--json",
    ])
    .await
    .json();
    let slow_id = slow["id"].as_str().unwrap().to_string();
    let aborted = cli(vec!["abort", &slow_id]).await;
    let state = aborted.ok().trim().split_once('\t').unwrap().1.to_string();
    assert!(
        ["compensating", "compensated"].contains(&state.as_str()),
        "{state}"
    );
    wait_for_state(&http, api, &slow_id, &["compensated"]).await;
    cli(vec!["abort", &slow_id]).await.failed_with(&["409"]);

    // retry: a saga held by a compensation that failed once finishes compensating.
    let held = cli(vec![
        "start",
        "order",
        "--input",
        r#"{"fail": "reserve", "flaky_undo": "charge"}"#,
        "--json",
    ])
    .await
    .json();
    let held_id = held["id"].as_str().unwrap().to_string();
    wait_for_state(&http, api, &held_id, &["failed"]).await;
    let shown = cli(vec!["show", &held_id]).await;
    assert!(shown.ok().contains("held because:"), "{}", shown.stdout);
    let retried = cli(vec!["retry", &held_id, "--json"]).await.json();
    assert_eq!(retried["id"], held_id.as_str());
    wait_for_state(&http, api, &held_id, &["compensated"]).await;
    cli(vec!["retry", &ok_id])
        .await
        .failed_with(&["409", "completed"]);

    // Nobody there: said plainly.
    strand_saga("http://127.0.0.1:1", &["list"], &[])
        .await
        .failed_with(&["cannot reach the saga API at http://127.0.0.1:1"]);
}
