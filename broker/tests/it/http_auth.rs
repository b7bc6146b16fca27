//! The broker's HTTP listener with bearer JWTs, through the real binary: `/health` stays open,
//! `/metrics` needs a token with `strand:metrics`, and a rotated key file is picked up on
//! SIGHUP without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::broker_process::start_broker_with;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// An EC P-256 key pair: the private key's PEM and the public key's file.
pub(crate) fn ec_pair(dir: &Path, name: &str) -> (Vec<u8>, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let (private_s, public_s) = (private.to_str().unwrap(), public.to_str().unwrap());
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        private_s,
    ]);
    openssl(&["pkey", "-in", private_s, "-pubout", "-out", public_s]);
    (std::fs::read(&private).unwrap(), public)
}

fn token(private: &[u8], scope: &str) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"iss": "https://idp.test", "aud": "strand-broker",
                                    "exp": now + 600, "scope": scope});
    let key = EncodingKey::from_ec_pem(private).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
}

/// The status line and the whole answer of `GET path`, with `authorization` if given.
pub(crate) async fn get(addr: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: strand\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_with_their_scope_and_keys_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (old_private, old_public) = ec_pair(keys.path(), "old");
    let (new_private, new_public) = ec_pair(keys.path(), "new");
    let key_file = keys.path().join("signing.pem");
    std::fs::copy(&old_public, &key_file).unwrap();
    // From the TOML file, with no periodic check: only SIGHUP reloads the keys.
    let config = dir.path().join("strand.toml");
    std::fs::write(
        &config,
        format!(
            "http_metrics_require_auth = true\n[http_jwt]\nissuer = \"https://idp.test\"\n\
             audience = \"strand-broker\"\nkey_files = [{:?}]\nreload_interval_ms = 0\n",
            key_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let broker = start_broker_with(&data, &["--config", config.to_str().unwrap()]);
    let addr = broker.http_addr.clone();

    assert_eq!(get(&addr, "/health", None).await.0, 200);
    let (status, answer) = get(&addr, "/metrics", None).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{answer}"
    );
    assert!(answer.contains("bearer token is required"), "{answer}");
    let (status, answer) = get(&addr, "/metrics", Some("Basic YWRtaW46YWRtaW4=")).await;
    assert_eq!(status, 401, "{answer}");
    let huge = format!("Bearer {}", "a".repeat(20_000));
    assert!(
        matches!(get(&addr, "/metrics", Some(&huge)).await.0, 401 | 431),
        "an oversized token"
    );

    let wrong_scope = format!("Bearer {}", token(&old_private, "saga:read"));
    let (status, answer) = get(&addr, "/metrics", Some(&wrong_scope)).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("strand:metrics"), "{answer}");
    let old = format!("Bearer {}", token(&old_private, "strand:metrics"));
    let (status, answer) = get(&addr, "/metrics", Some(&old)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("strand_connections"), "{answer}");
    let new = format!("Bearer {}", token(&new_private, "strand:metrics"));
    assert_eq!(get(&addr, "/metrics", Some(&new)).await.0, 401);

    // Rotate the key and signal.
    std::fs::copy(&new_public, &key_file).unwrap();
    let pid = broker.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while get(&addr, "/metrics", Some(&new)).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&addr, "/metrics", Some(&old)).await.0,
        401,
        "the old key is gone"
    );
}

#[test]
fn a_broken_jwt_setting_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strand-broker"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--kafka-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--http-jwt-issuer",
            "https://idp.test",
            "--http-jwt-audience",
            "strand",
        ])
        .args(["--http-jwt-key-file", "/nonexistent/key.pem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/key.pem"), "{stderr}");
}
