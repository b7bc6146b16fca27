//! The `strand` CLI's kcat-style verbs against a real broker process: headers, tombstones and
//! files on produce, binary-safe output, headers in JSON, consuming from a time, deleting a
//! group (durably) and resetting a group's offsets to a time.

use serde_json::Value;
use strand_client::{GroupConfig, GroupConsumer};

use super::broker_process::{client, run_cli, start_broker, stop, strand_cli, BrokerProcess};

/// Runs the CLI and insists it succeeds; answers its standard output.
fn ok(broker: &BrokerProcess, args: &[&str], input: &[u8]) -> Vec<u8> {
    let out = run_cli(&strand_cli(), &broker.addr, args, input);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs the CLI and insists it fails; answers its standard error.
fn fails(broker: &BrokerProcess, args: &[&str]) -> String {
    let out = run_cli(&strand_cli(), &broker.addr, args, b"");
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn produce_takes_headers_tombstones_and_files_and_json_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    ok(&broker, &["topic", "create", "users", "--compact"], b"");
    let file = dir.path().join("changes.txt");
    std::fs::write(&file, "alice:{\"plan\":\"pro\"}\nbob:\n").unwrap();
    let file = file.to_str().unwrap();
    ok(
        &broker,
        &[
            "produce",
            "users",
            "--file",
            file,
            "--key-separator",
            ":",
            "-H",
            "source=cli",
            "--header",
            "trace=",
            "--empty-as-null",
        ],
        b"ignored: standard input is not read with --file\n",
    );
    let records = json_lines(&ok(&broker, &["consume", "users", "--format", "json"], b""));
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["key"], "alice");
    assert_eq!(records[0]["value"], "{\"plan\":\"pro\"}");
    assert_eq!(
        records[0]["headers"],
        serde_json::json!([{"key": "source", "value": "cli"}, {"key": "trace", "value": ""}])
    );
    // The empty value went out as a tombstone: null, not "".
    assert_eq!(records[1]["key"], "bob");
    assert!(records[1]["value"].is_null(), "{}", records[1]);
    assert!(records[1].get("value_base64").is_none());

    let bad = fails(&broker, &["produce", "users", "-H", "no-equals-sign"]);
    assert!(bad.contains("KEY=VALUE"), "{bad}");
}

#[test]
fn binary_values_survive_produce_and_consume() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    ok(&broker, &["topic", "create", "blobs"], b"");
    // Not UTF-8, with a newline and a NUL inside: one record with --whole.
    let blob: Vec<u8> = vec![0xff, 0x00, b'\n', 0x80, b'x', 0xfe];
    let path = dir.path().join("blob.bin");
    std::fs::write(&path, &blob).unwrap();
    ok(
        &broker,
        &[
            "produce",
            "blobs",
            "--whole",
            "--file",
            path.to_str().unwrap(),
        ],
        b"",
    );
    // Lines that are not UTF-8 are produced as they are, one record each.
    ok(&broker, &["produce", "blobs"], b"\xc3\x28\nplain\n");

    let raw = ok(&broker, &["consume", "blobs"], b"");
    let mut expected = blob.clone();
    expected.extend_from_slice(b"\n\xc3\x28\nplain\n");
    assert_eq!(raw, expected, "raw output is the values byte for byte");

    let records = json_lines(&ok(&broker, &["consume", "blobs", "--format", "json"], b""));
    assert_eq!(records.len(), 3);
    assert!(records[0]["value"].is_null());
    assert_eq!(records[0]["value_base64"], "/wAKgHj+");
    assert_eq!(records[1]["value_base64"], "wyg=");
    assert_eq!(records[2]["value"], "plain");
}

#[test]
fn consume_from_a_time_and_reset_a_group_to_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    ok(
        &broker,
        &["topic", "create", "events", "--partitions", "2"],
        b"",
    );
    for i in 0..4 {
        // Separate runs, so the records carry increasing timestamps.
        let batch: String = (0..5).map(|j| format!("k{j}:e{i}-{j}\n")).collect();
        ok(
            &broker,
            &["produce", "events", "--key-separator", ":"],
            batch.as_bytes(),
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let all = json_lines(&ok(
        &broker,
        &["consume", "events", "--format", "json"],
        b"",
    ));
    assert_eq!(all.len(), 20);
    let pivot = all.iter().find(|r| r["value"] == "e2-0").unwrap()["timestamp"]
        .as_i64()
        .unwrap();
    let newer: std::collections::BTreeSet<String> = all
        .iter()
        .filter(|r| r["timestamp"].as_i64().unwrap() >= pivot)
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect();
    assert!(newer.len() >= 10 && newer.len() < 20, "{newer:?}");

    let from_pivot = json_lines(&ok(
        &broker,
        &[
            "consume",
            "events",
            "--from",
            &format!("@{pivot}"),
            "--format",
            "json",
        ],
        b"",
    ));
    let got: std::collections::BTreeSet<String> = from_pivot
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, newer, "exactly the records at or after the time");
    // A day ago is before everything; a time in the future is after everything.
    let day = ok(&broker, &["consume", "events", "--from", "@-1d"], b"");
    assert_eq!(String::from_utf8(day).unwrap().lines().count(), 20);
    let future = ok(
        &broker,
        &[
            "consume",
            "events",
            "--from",
            &format!("@{}", pivot + 86_400_000),
        ],
        b"",
    );
    assert!(future.is_empty());
    let bad = fails(&broker, &["consume", "events", "--from", "@yesterday"]);
    assert!(bad.contains("not a time"), "{bad}");

    // A group that read everything, moved back to the time: its lag is what is newer.
    ok(
        &broker,
        &["consume", "events", "--group", "audit", "--count", "20"],
        b"",
    );
    let described = String::from_utf8(ok(&broker, &["group", "describe", "audit"], b"")).unwrap();
    let lag = |text: &str| -> i64 {
        text.lines()
            .filter(|l| l.starts_with("events "))
            .map(|l| l.split_whitespace().last().unwrap().parse::<i64>().unwrap())
            .sum()
    };
    assert_eq!(lag(&described), 0, "{described}");
    ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "audit",
            "--to",
            &format!("@{pivot}"),
        ],
        b"",
    );
    let described = String::from_utf8(ok(&broker, &["group", "describe", "audit"], b"")).unwrap();
    assert_eq!(lag(&described), newer.len() as i64, "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_delete_refuses_a_group_with_members_and_stays_deleted_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let path = dir.path().to_path_buf();
    let broker = tokio::task::spawn_blocking(move || {
        ok(&broker, &["topic", "create", "orders"], b"");
        ok(&broker, &["produce", "orders"], b"a\nb\nc\n");
        ok(
            &broker,
            &["consume", "orders", "--group", "billing", "--count", "3"],
            b"",
        );
        ok(
            &broker,
            &["consume", "orders", "--group", "shipping", "--count", "2"],
            b"",
        );
        broker
    })
    .await
    .unwrap();

    // A live member keeps its group.
    let member = GroupConsumer::join(
        client(&broker.addr).await,
        GroupConfig::new("shipping".to_string(), vec!["orders".to_string()]),
    )
    .await
    .unwrap();
    let broker = tokio::task::spawn_blocking(move || {
        let refused = fails(&broker, &["group", "delete", "shipping"]);
        assert!(refused.contains("member"), "{refused}");
        broker
    })
    .await
    .unwrap();
    member.close().await.unwrap();

    tokio::task::spawn_blocking(move || {
        ok(&broker, &["group", "delete", "billing"], b"");
        let unknown = fails(&broker, &["group", "describe", "billing"]);
        assert!(unknown.contains("billing"), "{unknown}");
        let again = fails(&broker, &["group", "delete", "billing"]);
        assert!(again.contains("unknown group"), "{again}");
        let listed = String::from_utf8(ok(&broker, &["group", "list"], b"")).unwrap();
        assert_eq!(listed.lines().collect::<Vec<_>>(), ["shipping"]);

        // The deletion is in the offsets log: a restarted broker does not bring it back.
        assert!(stop(broker).success());
        let broker = start_broker(&path);
        let listed = String::from_utf8(ok(&broker, &["group", "list"], b"")).unwrap();
        assert_eq!(listed.lines().collect::<Vec<_>>(), ["shipping"]);
        let shipping =
            String::from_utf8(ok(&broker, &["group", "describe", "shipping"], b"")).unwrap();
        assert!(
            shipping.lines().any(|l| l.starts_with("orders ")),
            "{shipping}"
        );
    })
    .await
    .unwrap();
}
