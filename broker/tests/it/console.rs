//! The web console on the broker's HTTP listener: its JSON API (shapes, bad input, bearer
//! tokens and ACLs) and its pages, driven in Debian's chromium by playwright-core
//! (`tests/peers/console_broker.js`), which asserts on what the pages show.

use std::process::Command;
use std::time::SystemTime;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use super::broker_process::{run_cli, start_broker, start_broker_with, strand_cli, BrokerProcess};
use super::http_auth::{ec_pair, get};

fn cli_ok(broker: &BrokerProcess, args: &[&str], input: &[u8]) {
    let out = run_cli(&strand_cli(), &broker.addr, args, input);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The status and the JSON body of `GET path`.
async fn get_json(addr: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let (status, text) = get(addr, path, authorization.as_deref()).await;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reads_topics_messages_and_groups_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    cli_ok(
        &broker,
        &["topic", "create", "orders", "--partitions", "2"],
        b"",
    );
    cli_ok(
        &broker,
        &[
            "produce",
            "orders",
            "--partition",
            "1",
            "--key-separator",
            ":",
            "-H",
            "h=1",
        ],
        b"a:first\nb:\xff\xfe\nc:third\n",
    );
    cli_ok(
        &broker,
        &["consume", "orders", "--group", "g", "--count", "1"],
        b"",
    );
    let http = broker.http_addr.clone();

    let (status, topics) = get_json(&http, "/api/topics", None).await;
    assert_eq!(status, 200);
    let orders = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "orders")
        .unwrap();
    assert_eq!(orders["records"], 3);
    assert_eq!(orders["settings"]["partitions"], 2);
    assert!(orders["size_bytes"].as_u64().unwrap() > 0);

    let (status, page) = get_json(
        &http,
        "/api/topics/orders/messages?partition=1&offset=1&limit=1",
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["offset"], 1);
    assert_eq!(records[0]["key"], "b");
    assert!(records[0]["value"].is_null());
    assert_eq!(records[0]["value_base64"], "//4=");
    assert_eq!(
        records[0]["headers"],
        serde_json::json!([{"key": "h", "value": "1"}])
    );
    assert_eq!(page["next_offset"], 2);
    assert_eq!(page["high_watermark"], 3);
    // From a time before everything: the first record.
    let (_, page) = get_json(
        &http,
        "/api/topics/orders/messages?partition=1&time=0",
        None,
    )
    .await;
    assert_eq!(page["records"][0]["value"], "first");
    assert_eq!(page["records"].as_array().unwrap().len(), 3);

    for (path, want) in [
        ("/api/topics/nope", 404),
        ("/api/topics/orders/messages?partition=7", 404),
        ("/api/topics/orders/messages?partition=1&offset=99", 400),
        ("/api/topics/orders/messages?limit=0", 400),
        ("/api/topics/orders/messages?limit=100000", 400),
        ("/api/topics/orders/messages?offset=1&time=5", 400),
        ("/api/topics/orders/messages?offset=minus-one", 400),
        ("/api/groups/nope", 404),
        ("/ui/nope.js", 404),
    ] {
        let (status, body) = get_json(&http, path, None).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(
            body["error"].is_string(),
            "{path}: an error body, got {body}"
        );
    }

    let (_, groups) = get_json(&http, "/api/groups", None).await;
    assert_eq!(
        groups["groups"],
        serde_json::json!([{"group": "g", "state": "empty", "members": 0, "lag": 2}])
    );
    let (_, group) = get_json(&http, "/api/groups/g", None).await;
    assert_eq!(group["offsets"][0]["committed"], 1);
    assert_eq!(group["offsets"][0]["lag"], 2);

    let (status, page) = get(&http, "/ui", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("content-security-policy: default-src 'self'"));
    assert!(page.contains("/ui/broker.js"));
}

fn token(private: &[u8], subject: &str, scope: &str) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"iss": "https://idp.test", "aud": "strand-broker",
                                    "exp": now + 600, "scope": scope, "sub": subject});
    let key = EncodingKey::from_ec_pem(private).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
}

/// With a token issuer and the authorizer on, the API answers as the token's subject: the
/// scope gates the API, the ACLs gate each topic and group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_its_scope_and_answers_within_the_subjects_acls() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = ec_pair(keys.path(), "idp");
    let config = dir.path().join("strand.toml");
    // The native listener's anonymous connections administer (super user); HTTP callers are
    // the tokens' subjects.
    std::fs::write(
        &config,
        format!(
            "authorizer_enabled = true\nsuper_users = [\"User:ANONYMOUS\"]\n[http_jwt]\n\
             issuer = \"https://idp.test\"\naudience = \"strand-broker\"\nkey_files = [{:?}]\n",
            public.to_str().unwrap()
        ),
    )
    .unwrap();
    let broker = start_broker_with(dir.path(), &["--config", config.to_str().unwrap()]);
    cli_ok(&broker, &["topic", "create", "orders"], b"");
    cli_ok(&broker, &["topic", "create", "secrets"], b"");
    cli_ok(&broker, &["produce", "orders"], b"one\n");
    cli_ok(&broker, &["produce", "secrets"], b"hidden\n");
    cli_ok(
        &broker,
        &[
            "acl",
            "add",
            "--allow-principal",
            "User:alice",
            "--operation",
            "Describe",
            "--operation",
            "Read",
            "--topic",
            "orders",
        ],
        b"",
    );
    let http = broker.http_addr.clone();
    let alice = token(&private, "alice", "strand:console");
    let bob = token(&private, "bob", "strand:console");
    let unscoped = token(&private, "alice", "strand:metrics");

    let (status, body) = get_json(&http, "/api/topics", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = get_json(&http, "/api/topics", Some(&unscoped)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("strand:console"));

    let (status, body) = get_json(&http, "/api/topics", Some(&alice)).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders"], "alice sees only what she may Describe");
    let (status, body) = get_json(&http, "/api/topics/orders/messages", Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(body["records"][0]["value"], "one");
    let (status, body) = get_json(&http, "/api/topics/secrets/messages", Some(&alice)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("User:alice"));

    let (_, body) = get_json(&http, "/api/topics", Some(&bob)).await;
    assert_eq!(body["topics"], serde_json::json!([]));
    let (status, _) = get_json(&http, "/api/topics/orders/messages", Some(&bob)).await;
    assert_eq!(status, 403);

    // The page itself holds no data and loads without a token.
    let (status, _) = get(&http, "/ui", None).await;
    assert_eq!(status, 200);
}

/// The pages in a real browser: see `tests/peers/console_broker.js` for what it checks.
#[test]
fn the_broker_pages_show_topics_messages_and_moving_lag_in_chromium() {
    let peers = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: bash .ci/run installs Debian's chromium"
    );
    let has_playwright = Command::new("node")
        .args([
            "-e",
            &format!("require('{peers}/node_modules/playwright-core')"),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_playwright,
        "playwright-core is missing: bash .ci/run installs it (npm ci in broker/tests/peers)"
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    cli_ok(
        &broker,
        &["topic", "create", "orders", "--partitions", "2"],
        b"",
    );
    cli_ok(
        &broker,
        &[
            "produce",
            "orders",
            "--partition",
            "0",
            "--key-separator",
            ":",
            "-H",
            "source=checkout",
        ],
        b"order-1:{\"id\":1,\"total\":12.5}\norder-2:{\"id\":2,\"total\":3}\n",
    );
    cli_ok(
        &broker,
        &["consume", "orders", "--group", "billing", "--count", "1"],
        b"",
    );
    // Screenshots go to docs/ when asked (STRAND_UPDATE_SCREENSHOTS=1), else to a scratch folder.
    let shots = if std::env::var_os("STRAND_UPDATE_SCREENSHOTS").is_some() {
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs"))
    } else {
        dir.path().to_path_buf()
    };
    let out = Command::new("timeout")
        .args(["300", "node", &format!("{peers}/console_broker.js")])
        .args([&broker.http_addr, &broker.addr])
        .arg(strand_cli())
        .arg(&shots)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("console ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shots.join("console-topic.png").exists());
}
