//! The order saga through the real `strand-saga` binary with every listener secured and
//! authentication on: the embedded broker's native and Kafka listeners SASL_SSL, its HTTP port
//! and the saga API HTTPS, ACLs on with the orchestrator's own user (`User:saga`) the only
//! super user, and the API behind bearer JWTs. Certificates and keys come from
//! `docker/secure/gen-certs.sh`, the first user from `strand-saga user add`.

use std::path::Path;
use std::process::Command;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::crash::start_saga_with;
use super::support::{order_definition, wait_for_state, Participants};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "strand-saga";

fn token(key: &Path, scope: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-orders",
                        "iat": now, "exp": now + 600, "scope": scope});
    let key = EncodingKey::from_rsa_pem(&std::fs::read(key).unwrap()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_saga_runs_with_every_listener_on_tls_and_authentication_on() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/secure/gen-certs.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let c = |name: &str| certs.join(name).to_str().unwrap().to_string();
    let data = dir.path().join("data").to_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_strand-saga"))
        .args(["--data-dir", &data, "user", "add", "saga"])
        .args(["--password-file", &c("saga.password")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let saga = start_saga_with(&[
        "--data-dir",
        &data,
        "--native-listeners",
        "SASL_SSL://127.0.0.1:0",
        "--kafka-listeners",
        "SASL_SSL://127.0.0.1:0",
        "--http-listeners",
        "SSL://127.0.0.1:0",
        "--tls-cert-file",
        &c("broker.pem"),
        "--tls-key-file",
        &c("broker.key"),
        "--authorizer-enabled",
        "true",
        "--super-users",
        "User:saga",
        "--broker-tls-ca",
        &c("ca.pem"),
        "--broker-user",
        "saga",
        "--broker-password-file",
        &c("saga.password"),
        "--api-tls-cert-file",
        &c("broker.pem"),
        "--api-tls-key-file",
        &c("broker.key"),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        "--jwt-key-file",
        &c("jwt-rs256.pem"),
    ]);
    let port = saga.api.rsplit_once(':').unwrap().1;
    let api = format!("https://localhost:{port}");
    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(c("ca.pem")).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let key = certs.join("jwt-rs256.key");

    let participants = Participants::default();
    let addr = participants.serve().await;
    let definition = order_definition(addr, 3);
    // Defining needs saga:define; a reader may not.
    let refused = https
        .put(format!("{api}/definitions/order"))
        .bearer_auth(token(&key, "saga:read"))
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let stored = https
        .put(format!("{api}/definitions/order"))
        .bearer_auth(token(&key, "saga:define"))
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201, "{}", stored.text().await.unwrap());

    let start = json!({"definition": "order", "input": {"order": 7}});
    let anonymous = https
        .post(format!("{api}/sagas"))
        .json(&start)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let started: Value = https
        .post(format!("{api}/sagas"))
        .bearer_auth(token(&key, "saga:start"))
        .json(&start)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().expect("a saga id").to_string();

    // wait_for_state sends no token: read through a client whose requests carry one.
    let reader = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(c("ca.pem")).unwrap()).unwrap(),
        )
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", token(&key, "saga:read"))
                    .parse()
                    .unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    wait_for_state(&reader, &api, &id, &["completed"]).await;
    participants.assert_applied_once(&id, "completed");

    // The embedded broker lets nobody in without credentials, and nobody but its super user
    // at the journal.
    let cli = std::path::PathBuf::from(env!("CARGO_BIN_EXE_strand-saga")).with_file_name("strand");
    assert!(
        cli.exists(),
        "{} is missing: run the tests with --workspace",
        cli.display()
    );
    let out = Command::new(&cli)
        .args(["--broker", &saga.broker, "--tls-ca", &c("ca.pem")])
        .args(["topic", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an anonymous client listed topics");
    assert!(err.contains("needs SASL authentication"), "{err}");
}
