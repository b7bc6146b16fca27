//! `strand-bridge` serves `/health` over HTTPS with `--http-tls-cert-file`, and refuses a start
//! with a certificate it cannot load.

use std::path::Path;
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::support::{spawn_until_line, start_broker, stop};

/// A CA (`ca.pem`) and a certificate for localhost it signed (`bridge.pem`, `bridge.key`).
fn certificates(dir: &Path) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("bridge.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("bridge.key"), key.serialize_pem()).unwrap();
}

fn write_config(dir: &Path, a: &str, b: &str) -> std::path::PathBuf {
    let path = dir.join("bridge.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[clusters.a]
kind = "strand"
address = "{a}"
[clusters.b]
kind = "strand"
address = "{b}"
[[routes]]
from = {{ cluster = "a", topic = "t" }}
to = {{ cluster = "b", topic = "t" }}
"#
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_over_https() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let a = start_broker(&dir.path().join("a")).await;
    let b = start_broker(&dir.path().join("b")).await;
    let config = write_config(dir.path(), &a.addr, &b.addr);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (bridge, line) = spawn_until_line(
        Command::new(env!("CARGO_BIN_EXE_strand-bridge")).args([
            "--config",
            config.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
            "--http-tls-cert-file",
            &path("bridge.pem"),
            "--http-tls-key-file",
            &path("bridge.key"),
        ]),
        "strand-bridge running",
    );
    let http = line
        .split("http=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let port = http.rsplit_once(':').unwrap().1;
    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(path("ca.pem")).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let health = https
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    // Plain HTTP on the HTTPS port gets nothing.
    assert!(reqwest::get(format!("http://{http}/health")).await.is_err());
    drop(bridge);

    // A key that does not parse stops the start, naming the file.
    let output = Command::new(env!("CARGO_BIN_EXE_strand-bridge"))
        .args(["--config", config.to_str().unwrap()])
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--http-tls-cert-file", &path("bridge.pem")])
        .args(["--http-tls-key-file", &path("ca.pem")])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("ca.pem"), "{stderr}");
    stop(a).await;
    stop(b).await;
}
