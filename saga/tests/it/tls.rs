//! The saga API over HTTPS (`--api-tls-cert-file`), beside an embedded broker whose native
//! listener runs TLS next to PLAINTEXT; a bad certificate file is a configuration error.

use std::path::Path;
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::crash::start_saga_with;
use super::support::{order_definition, wait_for_state, Participants};

/// A CA (`ca.pem`) and a certificate for localhost and 127.0.0.1 it signed (`api.pem`,
/// `api.key`), in `dir`.
fn certificates(dir: &Path) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("api.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("api.key"), key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_and_the_embedded_broker_tls_beside_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let data = path("data");
    let (cert, key) = (path("api.pem"), path("api.key"));
    let saga = start_saga_with(&[
        "--data-dir",
        &data,
        "--native-listeners",
        "PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0",
        "--kafka-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--api-tls-cert-file",
        &cert,
        "--api-tls-key-file",
        &key,
    ]);
    let port = saga.api.rsplit_once(':').unwrap().1;
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
    // The order saga runs end to end through the HTTPS API, on the embedded broker.
    let participants = Participants::default();
    let addr = participants.serve().await;
    let api = format!("https://localhost:{port}");
    let stored = https
        .put(format!("{api}/definitions/order"))
        .json(&order_definition(addr, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201, "{}", stored.text().await.unwrap());
    let started: serde_json::Value = https
        .post(format!("{api}/sagas"))
        .json(&serde_json::json!({"definition": "order", "input": {"order": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().expect("a saga id").to_string();
    wait_for_state(&https, &api, &id, &["completed"]).await;
    participants.assert_applied_once(&id, "completed");
    // Plain HTTP on the HTTPS port gets nothing.
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .is_err());
}

#[test]
fn a_bad_api_certificate_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_strand-saga"))
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--api-tls-cert-file", garbage.to_str().unwrap()])
        .args(["--api-tls-key-file", garbage.to_str().unwrap()])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("garbage.pem"), "{stderr}");
    // A key without a certificate is refused before anything is read.
    let output = Command::new(env!("CARGO_BIN_EXE_strand-saga"))
        .args(["--api-tls-key-file", garbage.to_str().unwrap()])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
