//! `strand-saga`'s settings: a configuration error exits 2 with one clear line, and Kafka
//! properties given in a file or in variables reach librdkafka.

use std::process::{Command, Output};

fn saga(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strand-saga"))
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn configuration_errors_exit_2_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--config", missing.to_str().unwrap()], "missing.toml"),
        (
            vec!["--kafka-property", "sasl.password=x"],
            "--kafka-brokers is not",
        ),
        (
            vec![
                "--kafka-brokers",
                "127.0.0.1:9",
                "--kafka-properties-file",
                "/nonexistent/client.properties",
            ],
            "/nonexistent/client.properties",
        ),
    ];
    for (args, says) in cases {
        let output = saga(&args, &[]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(says),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let bad = dir.path().join("bad.properties");
    std::fs::write(&bad, "security.protocol=SASL_SSL\nsasl.password\n").unwrap();
    let output = saga(
        &[
            "--kafka-brokers",
            "127.0.0.1:9",
            "--kafka-properties-file",
            bad.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("line 2"), "{}", stderr(&output));
}

#[test]
fn kafka_properties_from_a_file_and_variables_reach_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.properties");
    std::fs::write(&file, "# a secret\nsecurity.protocol=from-the-file\n").unwrap();
    let from_file = saga(
        &[
            "--kafka-brokers",
            "127.0.0.1:9",
            "--kafka-properties-file",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(from_file.status.code(), Some(1), "{}", stderr(&from_file));
    assert!(
        stderr(&from_file).contains("from-the-file"),
        "{}",
        stderr(&from_file)
    );
    // A variable wins over the file.
    let from_var = saga(
        &[
            "--kafka-brokers",
            "127.0.0.1:9",
            "--kafka-properties-file",
            file.to_str().unwrap(),
        ],
        &[(
            "STRAND_SAGA_KAFKA_PROPERTY_SECURITY_PROTOCOL",
            "from-a-variable",
        )],
    );
    assert_eq!(from_var.status.code(), Some(1), "{}", stderr(&from_var));
    assert!(
        stderr(&from_var).contains("from-a-variable"),
        "{}",
        stderr(&from_var)
    );
}

#[test]
fn bad_security_settings_exit_2_naming_the_setting_or_file() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--jwt-issuer", "https://idp"], "audience"),
        (
            vec![
                "--jwt-issuer",
                "https://idp",
                "--jwt-audience",
                "strand-saga",
                "--jwt-key-file",
                "/nonexistent/idp.pem",
            ],
            "/nonexistent/idp.pem",
        ),
        (
            vec![
                "--jwt-issuer",
                "i",
                "--jwt-audience",
                "a",
                "--jwt-jwks-file",
                "/etc/hostname",
            ],
            "not a JWKS document",
        ),
        (vec!["--participant-hosts", "a b"], "participant host"),
        (vec!["--participant-hosts", "[::1"], "closing"),
        (
            vec!["--participant-ca-file", "/nonexistent/ca.pem"],
            "/nonexistent/ca.pem",
        ),
        (vec!["--participant-cert-file", "/etc/hostname"], "both"),
    ];
    for (args, says) in cases {
        let output = saga(&args, &[]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `strand-saga` on a fresh data folder with `args`; its API address and the log lines up to
/// the one saying it listens. The child is killed when the guard drops.
fn spawn_saga(dir: &std::path::Path, args: &[&str]) -> (super::crash::SagaProcess, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_strand-saga"))
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--kafka-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let done = line.contains("strand-saga listening");
            lines.push(line);
            if done {
                let _ = tx.send(lines.clone());
            }
        }
    });
    let lines = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("strand-saga never said where it listens");
    let last = lines.last().unwrap();
    let api = last
        .split("api=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let api = api.replace("0.0.0.0", "127.0.0.1");
    let process = super::crash::SagaProcess {
        child,
        api: format!("http://{api}"),
        broker: String::new(),
    };
    (process, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_api_on_every_interface_is_warned_about_and_jwt_flags_close_it() {
    let dir = tempfile::tempdir().unwrap();
    let (open, lines) = spawn_saga(&dir.path().join("open"), &["--api-listen", "0.0.0.0:0"]);
    let warning = lines
        .iter()
        .find(|l| l.contains("WARN") && l.contains("open to anyone"));
    let warning = warning.unwrap_or_else(|| panic!("no warning in {lines:#?}"));
    assert!(
        warning.contains("define sagas") && warning.contains("any host"),
        "{warning}"
    );
    let http = reqwest::Client::new();
    let status = http
        .get(format!("{}/definitions", open.api))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    drop(open);

    let key = dir.path().join("idp.key");
    let public = dir.path().join("idp.pub");
    let run = |args: &[&str]| {
        assert!(Command::new("openssl")
            .args(args)
            .status()
            .unwrap()
            .success());
    };
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let args = [
        "--api-listen",
        "0.0.0.0:0",
        "--jwt-issuer",
        "https://idp.test",
        "--jwt-audience",
        "strand-saga",
        "--jwt-key-file",
        public.to_str().unwrap(),
    ];
    let (closed, lines) = spawn_saga(&dir.path().join("closed"), &args);
    assert!(
        !lines.iter().any(|l| l.contains("open to anyone")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("saga API requires bearer tokens")),
        "{lines:#?}"
    );
    let response = http
        .get(format!("{}/definitions", closed.api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        http.get(format!("{}/health", closed.api))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"iss": "https://idp.test", "aud": "strand-saga", "exp": now + 60, "scope": "saga:read"});
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(&key).unwrap()).unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &signing,
    )
    .unwrap();
    let response = http
        .get(format!("{}/definitions", closed.api))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
