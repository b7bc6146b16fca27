//! The API behind bearer JWTs (keys made by openssl here, tokens signed by `jsonwebtoken`),
//! participant secrets, the participant host allow-list, and an HTTPS participant that only
//! talks to clients with a certificate from its CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use strand_broker::security::jwt::{JwtConfig, Verifier};
use strand_saga::http::HttpConfig;
use strand_saga::journal::DEFINITION_TOPIC;
use strand_saga::orchestrator::OrchestratorConfig;
use strand_saga::participants::{ParticipantTls, ParticipantsConfig, SECRETS_DIR_DEFAULT};

use super::support::{chromium, drive_console, order_definition, Participants, Stack};

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    out.stdout
}

/// A key pair made by openssl: the private key's PEM and the public key's file.
struct Pair {
    private: Vec<u8>,
    public: PathBuf,
    alg: Algorithm,
}

fn pair(dir: &Path, name: &str, alg: Algorithm) -> Pair {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let options: &[&str] = match alg {
        Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        _ => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    };
    let mut args = vec!["genpkey", "-out", private.to_str().unwrap()];
    args.extend_from_slice(options);
    openssl(&args);
    let (private_path, public_path) = (private.to_str().unwrap(), public.to_str().unwrap());
    openssl(&["pkey", "-in", private_path, "-pubout", "-out", public_path]);
    Pair {
        private: std::fs::read(&private).unwrap(),
        public,
        alg,
    }
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | *b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The public key as a JWK with `kid`.
fn jwk(pair: &Pair, kid: &str) -> Value {
    let path = pair.public.to_str().unwrap();
    if pair.alg == Algorithm::ES256 {
        // A P-256 SubjectPublicKeyInfo ends with the point 04 || x || y.
        let der = openssl(&["pkey", "-pubin", "-in", path, "-outform", "DER"]);
        let point = &der[der.len() - 64..];
        json!({"kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
               "x": b64url(&point[..32]), "y": b64url(&point[32..])})
    } else {
        let modulus = openssl(&["rsa", "-pubin", "-in", path, "-noout", "-modulus"]);
        let hex = String::from_utf8(modulus).unwrap();
        let hex = hex.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64url(&n), "e": "AQAB"})
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "strand-saga";

/// A token signed by `pair` for `scope`; `changes` overrides claims (null removes one).
fn token(pair: &Pair, kid: Option<&str>, scope: &str, changes: Value) -> String {
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-test",
                            "exp": now() + 600, "iat": now(), "scope": scope});
    for (k, v) in changes.as_object().unwrap() {
        match v {
            Value::Null => drop(claims.as_object_mut().unwrap().remove(k)),
            v => claims[k] = v.clone(),
        }
    }
    let key = match pair.alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pair.private).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pair.private).unwrap(),
    };
    let header = Header {
        kid: kid.map(str::to_string),
        ..Header::new(pair.alg)
    };
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// A request with an optional bearer token: status, `WWW-Authenticate` and JSON body.
async fn call(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String, Value) {
    let mut request = stack.http.request(method, format!("{}{path}", stack.api));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let status = response.status().as_u16();
    (
        status,
        challenge,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn wait_for(stack: &Stack, token: &str, id: &str, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, saga) = call(
            stack,
            reqwest::Method::GET,
            &format!("/sagas/{id}"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(status, 200, "{saga}");
        if states.contains(&saga["state"].as_str().unwrap_or_default()) {
            return saga;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga {id} stuck: {saga}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_and_scopes_guard_the_api() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    // One RSA key as a PEM file; an RSA and an EC key in a JWKS, chosen by kid.
    let pem = pair(keys.path(), "pem", Algorithm::RS256);
    let rsa = pair(keys.path(), "rsa", Algorithm::RS256);
    let ec = pair(keys.path(), "ec", Algorithm::ES256);
    let stranger = pair(keys.path(), "stranger", Algorithm::RS256);
    let jwks = keys.path().join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [jwk(&rsa, "rsa-1"), jwk(&ec, "ec-1")]}).to_string(),
    )
    .unwrap();
    let verifier = Verifier::load(JwtConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        key_files: vec![pem.public.clone()],
        jwks_file: Some(jwks),
        leeway_s: 5,
        ..JwtConfig::default()
    })
    .unwrap();
    let http = HttpConfig {
        auth: Some(Arc::new(verifier)),
        ..HttpConfig::default()
    };
    let stack = Stack::start_with_http(dir.path(), OrchestratorConfig::default(), http).await;
    let participants = Participants::default();
    let addr = participants.serve().await;

    // Open without a token.
    assert_eq!(
        call(&stack, Method::GET, "/health", None, None).await.0,
        200
    );
    let (status, _, openapi) = call(&stack, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    // The document names the scheme and each route's scope.
    assert_eq!(
        openapi["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        openapi["paths"]["/sagas"]["post"]["security"],
        json!([{"bearer": ["saga:start"]}])
    );
    assert_eq!(
        openapi["paths"]["/sagas/{id}/abort"]["post"]["security"],
        json!([{"bearer": ["saga:operate"]}])
    );
    assert!(openapi["paths"]["/health"]["get"]["security"].is_null());

    // No token, or not a bearer one: 401 with the challenge and a reason.
    let (status, challenge, body) = call(&stack, Method::GET, "/definitions", None, None).await;
    assert_eq!(
        (status, challenge.as_str()),
        (401, "Bearer realm=\"strand\""),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("bearer token is required"),
        "{body}"
    );
    let basic = stack
        .http
        .get(format!("{}/definitions", stack.api))
        .basic_auth("admin", Some("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);

    let read = token(&pem, None, "saga:read", json!({}));
    let refused = [
        (
            "expired",
            token(&pem, None, "saga:read", json!({"exp": now() - 60})),
            "expired",
        ),
        (
            "wrong audience",
            token(&pem, None, "saga:read", json!({"aud": "billing"})),
            "audience",
        ),
        (
            "wrong issuer",
            token(&pem, None, "saga:read", json!({"iss": "https://evil.test"})),
            "issuer",
        ),
        (
            "not yet valid",
            token(&pem, None, "saga:read", json!({"nbf": now() + 600})),
            "not valid yet",
        ),
        (
            "no expiry",
            token(&pem, None, "saga:read", json!({"exp": null})),
            "exp",
        ),
        (
            "unknown signer",
            token(&stranger, None, "saga:read", json!({})),
            "signature",
        ),
        (
            "unknown kid",
            token(&rsa, Some("rsa-2"), "saga:read", json!({})),
            "kid",
        ),
        ("garbage", "not-a-jwt".to_string(), "not a JWT"),
    ];
    for (what, bad, reason) in &refused {
        let (status, challenge, body) =
            call(&stack, Method::GET, "/definitions", Some(bad), None).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(
            challenge.starts_with("Bearer") && challenge.contains("invalid_token"),
            "{what}: {challenge}"
        );
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{what}: {body}"
        );
    }
    // A signature tampered with after signing.
    let mut tampered: Vec<char> = read.chars().collect();
    let at = tampered.len() - 20;
    tampered[at] = if tampered[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    assert_eq!(
        call(&stack, Method::GET, "/definitions", Some(&tampered), None)
            .await
            .0,
        401
    );

    // Hostile headers: `alg: none`, two Authorization headers, an empty token, a huge one.
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(
            json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "scope": "saga:read"})
                .to_string()
                .as_bytes()
        )
    );
    assert_eq!(
        call(&stack, Method::GET, "/definitions", Some(&unsigned), None)
            .await
            .0,
        401
    );
    let url = format!("{}/definitions", stack.api);
    let twice = stack
        .http
        .get(&url)
        .bearer_auth(&read)
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status().as_u16(), 401);
    assert!(twice.text().await.unwrap().contains("more than one"));
    let empty = stack
        .http
        .get(&url)
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status().as_u16(), 401);
    let huge = stack
        .http
        .get(&url)
        .bearer_auth("a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert!(matches!(huge.status().as_u16(), 401 | 431), "{huge:?}");
    // The scheme is case-insensitive (RFC 7235).
    let lower = stack
        .http
        .get(&url)
        .header("authorization", format!("bearer {read}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status().as_u16(), 200);

    // A read-only token reads, and can neither define nor start.
    assert_eq!(
        call(&stack, Method::GET, "/definitions", Some(&read), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&stack, Method::GET, "/breakers", Some(&read), None)
            .await
            .0,
        200
    );
    let definition = order_definition(addr, 3);
    let (status, challenge, body) = call(
        &stack,
        Method::PUT,
        "/definitions/order",
        Some(&read),
        Some(&definition),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        challenge.contains("insufficient_scope") && challenge.contains("saga:define"),
        "{challenge}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("saga:define"),
        "{body}"
    );
    assert_eq!(
        call(&stack, Method::GET, "/definitions/order", Some(&read), None)
            .await
            .0,
        404,
        "nothing was stored"
    );
    let start = json!({"definition": "order", "input": {"amount": 5}});
    assert_eq!(
        call(&stack, Method::POST, "/sagas", Some(&read), Some(&start))
            .await
            .0,
        403
    );

    // A define token (ES256, from the JWKS by kid) defines; a start token (RS256, JWKS) starts.
    let define = token(&ec, Some("ec-1"), "saga:define", json!({}));
    let (status, _, body) = call(
        &stack,
        Method::PUT,
        "/definitions/order",
        Some(&define),
        Some(&definition),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // `scp` as a list works as well as `scope`.
    let starter = token(
        &rsa,
        Some("rsa-1"),
        "",
        json!({"scp": ["saga:start"], "scope": null}),
    );
    assert_eq!(
        call(&stack, Method::POST, "/sagas", Some(&define), Some(&start))
            .await
            .0,
        403
    );
    let (status, _, saga) =
        call(&stack, Method::POST, "/sagas", Some(&starter), Some(&start)).await;
    assert_eq!(status, 201, "{saga}");
    let id = saga["id"].as_str().unwrap().to_string();
    wait_for(&stack, &read, &id, &["completed"]).await;
    participants.assert_applied_once(&id, "completed");

    // Abort and retry need the operate scope.
    let slow = json!({"definition": "order", "input": {"slow": "charge", "slow_ms": 1500}});
    let (status, _, saga) = call(&stack, Method::POST, "/sagas", Some(&starter), Some(&slow)).await;
    assert_eq!(status, 201, "{saga}");
    let slow_id = saga["id"].as_str().unwrap().to_string();
    let abort = format!("/sagas/{slow_id}/abort");
    let all_but_operate = token(&pem, None, "saga:read saga:start saga:define", json!({}));
    assert_eq!(
        call(&stack, Method::POST, &abort, Some(&all_but_operate), None)
            .await
            .0,
        403
    );
    assert_eq!(
        call(
            &stack,
            Method::POST,
            &format!("/sagas/{slow_id}/retry"),
            Some(&starter),
            None
        )
        .await
        .0,
        403
    );
    let operate = token(&pem, None, "saga:operate", json!({}));
    let (status, _, body) = call(&stack, Method::POST, &abort, Some(&operate), None).await;
    assert_eq!(status, 202, "{body}");
    wait_for(&stack, &read, &slow_id, &["compensated"]).await;
    stack.stop().await;
}

/// A participant that records the `Authorization` header of every call.
fn recording_app() -> (Router, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().route(
        "/charge",
        post(move |headers: HeaderMap| {
            let record = record.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                record.lock().unwrap().push(auth);
                Json(json!({"charged": true}))
            }
        }),
    );
    (app, seen)
}

async fn recording_participant() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let (app, seen) = recording_app();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// One pivot step calling `url` with `auth` (no compensation to run).
fn one_step(url: &str, auth: Option<Value>) -> Value {
    let mut action = json!({"type": "http", "url": url, "body": {"saga": "{{ saga_id }}"}});
    if let Some(auth) = auth {
        action["auth"] = auth;
    }
    json!({"steps": [{"name": "charge", "kind": "pivot", "action": action, "timeout_ms": 5000,
                      "retry": {"max_attempts": 1}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_secrets_reach_the_participant_and_nothing_stores_them() {
    const SECRET: &str = "tok-5ecret-from-env";
    std::env::set_var("IT_PAYMENTS_TOKEN_OF_STRAND", SECRET);
    let (participant, seen) = recording_participant().await;
    let (other, _) = recording_participant().await;
    let dir = tempfile::tempdir().unwrap();
    let config = OrchestratorConfig {
        participants: ParticipantsConfig::new(
            Some(format!("localhost, {participant}").parse().unwrap()),
            &ParticipantTls::default(),
            SECRETS_DIR_DEFAULT.into(),
        )
        .unwrap(),
        ..OrchestratorConfig::default()
    };
    let stack = Stack::start_with(dir.path(), config).await;
    let url = format!("http://{participant}/charge");

    let auth = json!({"env": "IT_PAYMENTS_TOKEN_OF_STRAND", "prefix": "Bearer "});
    let (status, stored) = stack
        .put("/definitions/pay", &one_step(&url, Some(auth)))
        .await;
    assert_eq!(status, 201, "{stored}");
    let (_, saga) = stack.post("/sagas", &json!({"definition": "pay"})).await;
    let saga = stack
        .wait_for(saga["id"].as_str().unwrap(), &["completed"])
        .await;
    assert_eq!(saga["steps"][0]["output"], json!({"charged": true}));
    assert_eq!(*seen.lock().unwrap(), vec![format!("Bearer {SECRET}")]);

    // The API and the definitions topic have where the secret comes from, never the secret.
    let (_, fetched) = stack.get("/definitions/pay").await;
    assert_eq!(
        fetched["steps"][0]["action"]["auth"]["env"],
        "IT_PAYMENTS_TOKEN_OF_STRAND"
    );
    for text in [
        fetched.to_string(),
        stack.get("/definitions").await.1.to_string(),
        saga.to_string(),
    ] {
        assert!(!text.contains(SECRET), "{text}");
    }
    let cluster = stack.cluster().await;
    let partitions = cluster.partitions(DEFINITION_TOPIC).await.unwrap();
    let from: Vec<(u32, u64)> = (0..partitions).map(|p| (p, 0)).collect();
    let records = cluster.read_to_end(DEFINITION_TOPIC, &from).await.unwrap();
    assert!(!records.is_empty());
    for record in records {
        let value =
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
        assert!(value.contains("IT_PAYMENTS_TOKEN_OF_STRAND"), "{value}");
        assert!(!value.contains(SECRET), "{value}");
    }

    // A literal credential header is refused (400), saying what to use instead.
    let mut literal = one_step(&url, None);
    literal["steps"][0]["action"]["headers"] = json!({"Authorization": format!("Bearer {SECRET}")});
    let (status, body) = stack.put("/definitions/pay", &literal).await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("steps[0].action.headers.Authorization") && error.contains("\"auth\""),
        "{error}"
    );
    assert!(!error.contains(SECRET), "{error}");
    assert_eq!(
        stack.get("/definitions/pay").await.1["version"],
        1,
        "nothing stored"
    );

    // A variable that is not set fails the attempt, naming it; nothing is sent.
    let unset = json!({"header": "X-Payments-Key", "env": "IT_NOT_SET_ANYWHERE_OF_STRAND"});
    assert_eq!(
        stack
            .put("/definitions/unset", &one_step(&url, Some(unset)))
            .await
            .0,
        201
    );
    let (_, saga) = stack.post("/sagas", &json!({"definition": "unset"})).await;
    let saga = stack
        .wait_for(saga["id"].as_str().unwrap(), &["compensated", "failed"])
        .await;
    let error = saga["steps"][0]["attempts"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("IT_NOT_SET_ANYWHERE_OF_STRAND"), "{saga}");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the participant was not called"
    );

    // Hosts outside the allow-list, or a host that is a template, are refused (400).
    for url in [
        format!("http://{other}/charge"),
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("http://{participant}@evil.test/charge"),
        "http://{{ input.host }}/charge".to_string(),
    ] {
        let (status, body) = stack
            .put("/definitions/elsewhere", &one_step(&url, None))
            .await;
        assert_eq!(status, 400, "{url}: {body}");
    }
    assert_eq!(stack.get("/definitions/elsewhere").await.0, 404);
    // A name on the list with any port passes.
    let (status, body) = stack
        .put(
            "/definitions/local",
            &one_step("http://localhost:1/x", None),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    stack.stop().await;
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, by
/// openssl: the paths of (ca, server cert, server key, client cert, client key).
fn certificates(dir: &Path) -> [PathBuf; 5] {
    let p = |name: &str| dir.join(name);
    let s = |path: &PathBuf| path.to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let (ca, ca_key) = (p("ca.pem"), p("ca.key"));
    let mut args = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=strand test CA",
        "-keyout",
    ];
    let (ca_key_s, ca_s) = (s(&ca_key), s(&ca));
    args.extend([ca_key_s.as_str(), "-out", ca_s.as_str()]);
    args.extend(ec);
    openssl(&args);
    let issue = |name: &str, cn: &str, ext: &str| {
        let (key, csr, cert, extfile) = (
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.pem")),
            p(&format!("{name}.ext")),
        );
        std::fs::write(&extfile, ext).unwrap();
        let subject = format!("/CN={cn}");
        let (key_s, csr_s, cert_s, ext_s) = (s(&key), s(&csr), s(&cert), s(&extfile));
        let mut args = vec![
            "req",
            "-subj",
            subject.as_str(),
            "-keyout",
            key_s.as_str(),
            "-out",
            csr_s.as_str(),
        ];
        args.extend(ec);
        openssl(&args);
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr_s,
            "-CA",
            &ca_s,
            "-CAkey",
            &ca_key_s,
            "-CAcreateserial",
            "-out",
            &cert_s,
            "-extfile",
            &ext_s,
        ]);
        (cert, key)
    };
    let (server, server_key) = issue(
        "server",
        "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    let (client, client_key) = issue("client", "strand-saga", "extendedKeyUsage=clientAuth\n");
    [ca, server, server_key, client, client_key]
}

/// Serves `app` over TLS, requiring a client certificate signed by `ca`.
async fn serve_https(app: Router, ca: &Path, cert: &Path, key: &Path) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(
            vec![CertificateDer::from_pem_file(cert).unwrap()],
            PrivateKeyDer::from_pem_file(key).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_participant_with_a_private_ca_and_client_certificates() {
    let certs_dir = tempfile::tempdir().unwrap();
    let [ca, server, server_key, client, client_key] = certificates(certs_dir.path());
    let (app, seen) = recording_app();
    let addr = serve_https(app, &ca, &server, &server_key).await;

    // Without a client certificate the participant refuses the connection.
    let ca_cert = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(ca_cert)
        .build()
        .unwrap();
    let refused = anonymous
        .post(format!("https://localhost:{}/charge", addr.port()))
        .json(&json!({}))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");

    let dir = tempfile::tempdir().unwrap();
    let tls = ParticipantTls {
        ca_file: Some(ca),
        cert_file: Some(client),
        key_file: Some(client_key),
    };
    let config = OrchestratorConfig {
        participants: ParticipantsConfig::new(None, &tls, SECRETS_DIR_DEFAULT.into()).unwrap(),
        ..OrchestratorConfig::default()
    };
    let stack = Stack::start_with(dir.path(), config).await;
    let url = format!("https://localhost:{}/charge", addr.port());
    assert_eq!(
        stack.put("/definitions/tls", &one_step(&url, None)).await.0,
        201
    );
    let (_, saga) = stack.post("/sagas", &json!({"definition": "tls"})).await;
    let saga = stack
        .wait_for(
            saga["id"].as_str().unwrap(),
            &["completed", "compensated", "failed"],
        )
        .await;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["steps"][0]["output"], json!({"charged": true}));
    assert_eq!(seen.lock().unwrap().len(), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_is_checked_again_when_sending_and_on_redirects() {
    let (participant, seen) = recording_participant().await;
    // An allowed participant that redirects to one that is not.
    let target = format!("http://{participant}/charge");
    let redirector = Router::new().route(
        "/charge",
        post(move || {
            let target = target.clone();
            async move { axum::response::Redirect::temporary(&target) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirecting = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, redirector).await });

    // Stored while any host is allowed.
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path()).await;
    let direct = one_step(&format!("http://{participant}/charge"), None);
    assert_eq!(stack.put("/definitions/direct", &direct).await.0, 201);
    let redirected = one_step(&format!("http://{redirecting}/charge"), None);
    assert_eq!(
        stack.put("/definitions/redirected", &redirected).await.0,
        201
    );
    let (_, saga) = stack
        .post("/sagas", &json!({"definition": "redirected"}))
        .await;
    let saga = stack
        .wait_for(saga["id"].as_str().unwrap(), &["completed"])
        .await;
    assert_eq!(
        saga["steps"][0]["output"],
        json!({"charged": true}),
        "followed the redirect"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    stack.stop().await;

    // Restarted with only the redirecting participant allowed: the stored definition naming
    // the other one fails when sent, and the redirect to it is not followed.
    let config = OrchestratorConfig {
        participants: ParticipantsConfig::new(
            Some(redirecting.to_string().parse().unwrap()),
            &ParticipantTls::default(),
            SECRETS_DIR_DEFAULT.into(),
        )
        .unwrap(),
        ..OrchestratorConfig::default()
    };
    let stack = Stack::start_with(dir.path(), config).await;
    for (definition, says) in [
        ("direct", "not an allowed participant host"),
        ("redirected", "redirected to"),
    ] {
        let (status, saga) = stack
            .post("/sagas", &json!({"definition": definition}))
            .await;
        assert_eq!(status, 201, "{saga}");
        let saga = stack
            .wait_for(saga["id"].as_str().unwrap(), &["compensated", "failed"])
            .await;
        let error = saga["steps"][0]["attempts"][0]["error"]
            .as_str()
            .unwrap_or_default();
        assert!(error.contains(says), "{definition}: {saga}");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the disallowed participant was not called again"
    );
    stack.stop().await;
}

/// The saga console with authentication on, in chromium (see
/// `broker/tests/peers/console_saga_auth.js`): honest without a token, read-only with a
/// read token, Abort and Retry with one that may operate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_asks_for_a_token_and_operates_with_one_in_chromium() {
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = pair(keys.path(), "console", Algorithm::RS256);
    let verifier = Verifier::load(JwtConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        key_files: vec![key.public.clone()],
        ..JwtConfig::default()
    })
    .unwrap();
    let http = HttpConfig {
        auth: Some(Arc::new(verifier)),
        ..HttpConfig::default()
    };
    let stack = Stack::start_with_http(dir.path(), OrchestratorConfig::default(), http).await;
    let participants = Participants::default();
    let addr = participants.serve().await;
    let admin = token(
        &key,
        None,
        "saga:define saga:start saga:read saga:operate",
        json!({}),
    );
    // One attempt per call, and a minute before an action times out: a slow action keeps its
    // saga running until the console aborts it.
    let mut definition = order_definition(addr, 1);
    for step in definition["steps"].as_array_mut().unwrap() {
        step["timeout_ms"] = json!(60_000);
    }
    let put = call(
        &stack,
        reqwest::Method::PUT,
        "/definitions/order",
        Some(&admin),
        Some(&definition),
    )
    .await;
    assert_eq!(put.0, 201, "{:?}", put.2);
    let mut ids = Vec::new();
    for input in [
        json!({"slow": "order", "slow_ms": 30_000}),
        json!({"fail": "reserve", "flaky_undo": "charge"}),
    ] {
        let body = json!({"definition": "order", "input": input});
        let (status, _, saga) = call(
            &stack,
            reqwest::Method::POST,
            "/sagas",
            Some(&admin),
            Some(&body),
        )
        .await;
        assert_eq!(status, 201, "{saga}");
        ids.push(saga["id"].as_str().unwrap().to_string());
    }
    wait_for(&stack, &admin, &ids[1], &["failed"]).await;
    let running = wait_for(&stack, &admin, &ids[0], &["running"]).await;
    assert_eq!(running["state"], "running");

    let read = token(&key, None, "saga:read", json!({}));
    let operate = token(&key, None, "saga:read saga:operate", json!({}));

    // The CLI the same way: no token, a 401 that says so; a read token lists and cannot abort.
    use super::cli::strand_saga;
    strand_saga(&stack.api, &["list"], &[])
        .await
        .failed_with(&["401", "bearer token is required"]);
    let listed = strand_saga(&stack.api, &["list", "--json"], &[("STRAND_TOKEN", &read)]).await;
    assert_eq!(listed.json()["sagas"].as_array().unwrap().len(), 2);
    strand_saga(&stack.api, &["abort", &ids[0], "--token", &read], &[])
        .await
        .failed_with(&["403"]);

    let api = stack.api.trim_start_matches("http://").to_string();
    let args = vec![api, read, operate, ids[0].clone(), ids[1].clone()];
    drive_console("console_saga_auth.js", args, "saga console auth ok").await;
    // What the browser did is what the API holds.
    let aborted = wait_for(&stack, &admin, &ids[0], &["compensated"]).await;
    assert!(aborted["compensation_reason"].is_string(), "{aborted}");
    wait_for(&stack, &admin, &ids[1], &["compensated"]).await;
    stack.stop().await;
}
