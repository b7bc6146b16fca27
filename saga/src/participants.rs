//! Calling participants: HTTP (reqwest) and broker commands (a record on the command topic, the
//! answer on the reply topic), each attempt with its stable idempotency key and its attempt id.
//!
//! An answer becomes a [`Reply`] for the orchestrator. No answer means no reply: the engine's
//! timeout decides, and a timed-out action counts as one that may have happened. So only a
//! call that certainly did not reach the participant (connection refused, the circuit breaker
//! open, a template that cannot be rendered) is reported as a failure without an answer.
//!
//! [`ParticipantsConfig`] says which hosts HTTP participants may be on ([`AllowedHosts`],
//! checked when a definition is stored, again on every call and on every redirect) and how
//! HTTPS participants are reached (a custom CA bundle, a client certificate). A step's
//! [`SecretHeader`] is resolved when the call is sent, from the orchestrator's environment or a
//! file; its value is never logged nor stored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use strand_cluster::{Cluster, GroupSpec, MirroredRecord, SideError};
use tokio::sync::{mpsc, watch};

use crate::breaker::{Breaker, BreakerConfig};
use crate::definition::{DefinitionSpec, Participant, SecretHeader};
use crate::engine::{Call, Failure, Phase};
use crate::limits::SizeLimits;

/// Header names on HTTP calls and broker commands.
pub mod headers {
    pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
    pub const SAGA_ID: &str = "Saga-Id";
    pub const STEP: &str = "Saga-Step";
    pub const PHASE: &str = "Saga-Phase";
    pub const ATTEMPT_ID: &str = "Saga-Attempt-Id";
    pub const REPLY_TOPIC: &str = "Saga-Reply-Topic";
    pub const TRACEPARENT: &str = "traceparent";
}

/// A participant's answer to one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub saga_id: String,
    pub step_name: String,
    pub phase: Phase,
    pub attempt: u32,
    pub result: Result<Value, Failure>,
}

/// Parses an attempt id `saga:step:phase:attempt` back into its parts (saga ids and step names
/// have no ':').
pub fn parse_attempt_id(id: &str) -> Option<(String, String, Phase, u32)> {
    let mut parts = id.rsplitn(4, ':');
    let attempt = parts.next()?.parse().ok()?;
    let phase = match parts.next()? {
        "action" => Phase::Action,
        "compensation" => Phase::Compensation,
        _ => return None,
    };
    let step = parts.next()?.to_string();
    let saga = parts.next()?.to_string();
    Some((saga, step, phase, attempt))
}

/// Largest secret file read for a [`SecretHeader`].
pub const SECRET_FILE_BYTES_MAX: u64 = 16 * 1024;
/// Redirects one participant call follows at most (reqwest's default).
pub const REDIRECTS_MAX: usize = 10;
/// Largest CA bundle, certificate or key file read.
pub const TLS_FILE_BYTES_MAX: u64 = 1 << 20;

/// Why the participants' HTTP client could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParticipantError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("building the participants' HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Files for calling HTTPS participants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParticipantTls {
    /// PEM CA certificates trusted for participants, besides the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to participants that ask for one; needs
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// How participants are reached: which hosts, and the HTTP client (TLS settings, redirect
/// checks) that calls them.
#[derive(Debug, Clone)]
pub struct ParticipantsConfig {
    /// Hosts HTTP participants may be on; `None` allows any.
    pub allowed_hosts: Option<AllowedHosts>,
    /// The folder secret files must be in; a definition naming a file elsewhere is refused,
    /// so a definition cannot send any file the orchestrator can read to a participant.
    pub secrets_dir: PathBuf,
    /// Largest answer a participant may give (the step's output, as compact JSON); a larger
    /// one fails the step permanently. Default [`SizeLimits::default`]'s.
    pub output_bytes_max: usize,
    http: reqwest::Client,
}

/// Where secret files are by default: where Docker and Kubernetes mount secrets.
pub const SECRETS_DIR_DEFAULT: &str = "/run/secrets";

impl Default for ParticipantsConfig {
    fn default() -> Self {
        ParticipantsConfig::new(None, &ParticipantTls::default(), SECRETS_DIR_DEFAULT.into())
            .expect("an HTTP client without TLS files builds")
    }
}

impl ParticipantsConfig {
    /// Reads the TLS files and builds the client; every file problem names the file.
    pub fn new(
        allowed_hosts: Option<AllowedHosts>,
        tls: &ParticipantTls,
        secrets_dir: PathBuf,
    ) -> Result<ParticipantsConfig, ParticipantError> {
        if !secrets_dir.is_absolute() {
            return Err(ParticipantError::Config(format!(
                "the participant secrets folder {} is not an absolute path",
                secrets_dir.display()
            )));
        }
        let hosts = allowed_hosts.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= REDIRECTS_MAX {
                return attempt.error(format!("more than {REDIRECTS_MAX} redirects"));
            }
            match &hosts {
                Some(hosts) if !hosts.allows(attempt.url()) => {
                    let refusal = format!(
                        "redirected to {}, which is not an allowed participant host",
                        attempt.url().host_str().unwrap_or_default()
                    );
                    attempt.error(refusal)
                }
                _ => attempt.follow(),
            }
        });
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .redirect(redirects);
        if let Some(path) = &tls.ca_file {
            let pem = read_limited(path, TLS_FILE_BYTES_MAX)?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ParticipantError::Pem {
                    path: path.clone(),
                    reason: format!("not PEM certificates: {e}"),
                })?;
            if certs.is_empty() {
                return Err(ParticipantError::Pem {
                    path: path.clone(),
                    reason: "no certificate in it".into(),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read_limited(cert, TLS_FILE_BYTES_MAX)?;
                pem.push(b'\n');
                pem.extend(read_limited(key, TLS_FILE_BYTES_MAX)?);
                let identity =
                    reqwest::Identity::from_pem(&pem).map_err(|e| ParticipantError::Pem {
                        path: cert.clone(),
                        reason: format!(
                            "with key {}: not a PEM certificate and private key: {e}",
                            key.display()
                        ),
                    })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(ParticipantError::Config(
                    "a participant client certificate needs both a certificate and a key file"
                        .into(),
                ))
            }
        }
        Ok(ParticipantsConfig {
            allowed_hosts,
            secrets_dir,
            output_bytes_max: SizeLimits::default().output_bytes_max,
            http: builder.build().map_err(ParticipantError::Client)?,
        })
    }

    /// Why `spec` may not be stored under this policy (a 400): a participant URL on a host
    /// not allowed, or a credential header written out.
    pub fn check_definition(&self, spec: &DefinitionSpec) -> Result<(), String> {
        let literal = crate::definition::literal_secret_headers(spec);
        if !literal.is_empty() {
            return Err(format!(
                "{} writes out a credential header; definitions are stored and returned as \
                 they are, so name where the value comes from instead: \
                 \"auth\": {{\"header\": \"Authorization\", \"env\": \"VARIABLE\"}} or \
                 {{\"file\": \"/run/secrets/name\"}}",
                literal.join(", ")
            ));
        }
        for (i, step) in spec.steps.iter().enumerate() {
            let participants = [
                ("action", Some(&step.action)),
                ("compensation", step.compensation.as_ref()),
            ];
            for (field, participant) in participants {
                if let Some(Participant::Http {
                    auth:
                        Some(SecretHeader {
                            file: Some(file), ..
                        }),
                    ..
                }) = participant
                {
                    let path = Path::new(file);
                    let inside = path.starts_with(&self.secrets_dir)
                        && !path
                            .components()
                            .any(|c| matches!(c, std::path::Component::ParentDir));
                    if !inside {
                        return Err(format!(
                            "steps[{i}].{field}.auth.file: {file} is not in the participant \
                             secrets folder {} (--participant-secrets-dir)",
                            self.secrets_dir.display()
                        ));
                    }
                }
            }
        }
        let Some(hosts) = &self.allowed_hosts else {
            return Ok(());
        };
        for (i, step) in spec.steps.iter().enumerate() {
            let participants = [
                ("action", Some(&step.action)),
                ("compensation", step.compensation.as_ref()),
            ];
            for (field, participant) in participants {
                if let Some(Participant::Http { url, .. }) = participant {
                    hosts
                        .check_template(url)
                        .map_err(|e| format!("steps[{i}].{field}.url: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, ParticipantError> {
    let read_error = |source| ParticipantError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > max {
        return Err(ParticipantError::Pem {
            path: path.to_path_buf(),
            reason: format!("larger than {max} bytes"),
        });
    }
    Ok(bytes)
}

/// The hosts HTTP participants may be on, from `--participant-hosts`: a comma-separated list
/// of `host` (any port), `host:port`, `*.domain` (any name under it, not the domain itself),
/// IP addresses, and `[ipv6]` or `[ipv6]:port`. Names compare without case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts(Vec<HostPattern>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    /// Lower case; `[..]` around IPv6 addresses, as URLs write them.
    host: String,
    /// `*.domain`: any name ending in `.domain`.
    wildcard: bool,
    port: Option<u16>,
}

impl fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let star = if p.wildcard { "*." } else { "" };
            write!(f, "{sep}{star}{}", p.host)?;
            if let Some(port) = p.port {
                write!(f, ":{port}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for AllowedHosts {
    type Err = String;

    fn from_str(s: &str) -> Result<AllowedHosts, String> {
        let patterns = s
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(host_pattern)
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            return Err("the participant host list is empty".into());
        }
        Ok(AllowedHosts(patterns))
    }
}

fn host_pattern(entry: &str) -> Result<HostPattern, String> {
    let bad = |why: &str| format!("participant host {entry:?}: {why}");
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("the port must be 1 to 65535")),
        Ok(port) => Ok(port),
    };
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address needs its closing ']'"))?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| bad("not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(port(
                p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?,
            )?),
        };
        (format!("[{addr}]"), port)
    } else {
        match entry.split_once(':') {
            Some((host, p)) if !p.contains(':') => (host.to_string(), Some(port(p)?)),
            Some(_) => return Err(bad("write IPv6 addresses in brackets: [::1]:8080")),
            None => (entry.to_string(), None),
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let (host, wildcard) = match host.strip_prefix("*.") {
        Some(domain) => (domain.to_string(), true),
        None => (host, false),
    };
    let valid = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
    if !valid {
        return Err(bad(
            "a host is letters, digits, '-', '_' and '.', optionally after \"*.\"",
        ));
    }
    Ok(HostPattern {
        host,
        wildcard,
        port,
    })
}

impl AllowedHosts {
    /// Whether `url`'s host and port are allowed.
    pub fn allows(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let port = url.port_or_known_default();
        self.0.iter().any(|p| {
            let host_ok = if p.wildcard {
                host.len() > p.host.len() + 1
                    && host.ends_with(&p.host)
                    && host.as_bytes()[host.len() - p.host.len() - 1] == b'.'
            } else {
                host == p.host
            };
            host_ok && p.port.is_none_or(|allowed| Some(allowed) == port)
        })
    }

    /// Checks a participant URL as a definition writes it, before templates are rendered:
    /// its host must be written out (not a template) and allowed.
    pub fn check_template(&self, url: &str) -> Result<(), String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains("{{") || authority.contains("{%") {
            return Err(format!(
                "the host of {url:?} is a template; with an allow-list of participant hosts \
                 it must be written out"
            ));
        }
        let parsed = reqwest::Url::parse(&format!("{scheme}://{authority}/"))
            .map_err(|e| format!("{url:?}: {e}"))?;
        if self.allows(&parsed) {
            Ok(())
        } else {
            Err(format!(
                "{} is not an allowed participant host (allowed: {self})",
                parsed.host_str().unwrap_or_default()
            ))
        }
    }
}

/// The header a [`SecretHeader`] names, with its value read now. Errors say what is missing,
/// never the value.
fn resolve_secret(
    secret: &SecretHeader,
    secrets_dir: &Path,
) -> Result<(reqwest::header::HeaderName, reqwest::header::HeaderValue), Failure> {
    let name = reqwest::header::HeaderName::from_bytes(secret.header.as_bytes()).map_err(|_| {
        Failure::permanent(format!(
            "secret header name {:?} is not valid",
            secret.header
        ))
    })?;
    let (raw, from) = match (&secret.env, &secret.file) {
        (Some(var), _) if var.starts_with(crate::definition::RESERVED_ENV_PREFIX) => {
            return Err(Failure::permanent(format!(
                "secret for header {}: {var} is one of the orchestrator's own settings",
                secret.header
            )))
        }
        (Some(var), _) => match std::env::var(var) {
            Ok(value) => (value, format!("environment variable {var}")),
            // The variable cannot appear in this process later: trying again will not help.
            Err(e) => {
                return Err(Failure::permanent(format!(
                    "secret for header {}: environment variable {var}: {e}",
                    secret.header
                )))
            }
        },
        (None, Some(file)) => {
            // Symbolic links and `..` must not lead out of the secrets folder.
            let inside = match (
                std::fs::canonicalize(file),
                std::fs::canonicalize(secrets_dir),
            ) {
                (Ok(file), Ok(dir)) => file.starts_with(dir),
                _ => true, // Missing: reading it below says so.
            };
            if !inside {
                return Err(Failure::permanent(format!(
                    "secret for header {}: {file} is not in the secrets folder {}",
                    secret.header,
                    secrets_dir.display()
                )));
            }
            // A secret file may be mounted or rotated later: worth another attempt.
            let bytes = read_limited(Path::new(file), SECRET_FILE_BYTES_MAX).map_err(|e| {
                Failure::retriable(format!("secret for header {}: {e}", secret.header))
            })?;
            let text = String::from_utf8(bytes).map_err(|_| {
                Failure::retriable(format!(
                    "secret for header {}: file {file} is not UTF-8",
                    secret.header
                ))
            })?;
            (text, format!("file {file}"))
        }
        (None, None) => {
            return Err(Failure::permanent(format!(
                "secret for header {} names no source",
                secret.header
            )))
        }
    };
    let value = raw.trim_end_matches(['\r', '\n']);
    if value.trim().is_empty() {
        return Err(Failure::retriable(format!(
            "secret for header {}: {from} is empty",
            secret.header
        )));
    }
    let full = format!("{}{value}", secret.prefix.as_deref().unwrap_or_default());
    let mut header = reqwest::header::HeaderValue::from_str(&full).map_err(|_| {
        Failure::permanent(format!(
            "secret for header {}: {from} is not a valid header value (a line break or control character)",
            secret.header
        ))
    })?;
    header.set_sensitive(true);
    Ok((name, header))
}

#[derive(Debug)]
pub struct Participants {
    http: reqwest::Client,
    allowed_hosts: Option<AllowedHosts>,
    secrets_dir: PathBuf,
    cluster: Arc<Cluster>,
    breakers: Mutex<BTreeMap<String, Breaker>>,
    breaker_config: BreakerConfig,
    output_bytes_max: usize,
    replies: mpsc::UnboundedSender<Reply>,
}

impl Participants {
    pub fn new(
        cluster: Arc<Cluster>,
        breaker_config: BreakerConfig,
        config: ParticipantsConfig,
        replies: mpsc::UnboundedSender<Reply>,
    ) -> Participants {
        Participants {
            http: config.http,
            allowed_hosts: config.allowed_hosts,
            secrets_dir: config.secrets_dir,
            cluster,
            breakers: Mutex::new(BTreeMap::new()),
            breaker_config,
            output_bytes_max: config.output_bytes_max,
            replies,
        }
    }

    /// Largest answer a participant may give (see [`ParticipantsConfig::output_bytes_max`]).
    pub fn output_bytes_max(&self) -> usize {
        self.output_bytes_max
    }

    /// The policy's view of a definition about to be stored (see
    /// [`ParticipantsConfig::check_definition`]).
    pub fn check_definition(&self, spec: &DefinitionSpec) -> Result<(), String> {
        ParticipantsConfig {
            allowed_hosts: self.allowed_hosts.clone(),
            secrets_dir: self.secrets_dir.clone(),
            output_bytes_max: self.output_bytes_max,
            http: self.http.clone(),
        }
        .check_definition(spec)
    }

    /// Every endpoint's circuit breaker.
    pub fn breakers(&self) -> BTreeMap<String, Breaker> {
        self.breakers.lock().expect("breakers lock").clone()
    }

    fn reply(&self, call: &Call, result: Result<Value, Failure>) {
        let result = checked_output(result, self.output_bytes_max);
        let _ = self.replies.send(Reply {
            saga_id: call.saga_id.clone(),
            step_name: call.step_name.clone(),
            phase: call.phase,
            attempt: call.attempt,
            result,
        });
    }

    /// Makes the call in the background; the answer (if any) arrives as a [`Reply`].
    /// Calls in the background, in the current span (the attempt's), so what it logs carries
    /// the saga's trace.
    pub fn dispatch(self: &Arc<Self>, call: Call) {
        let this = self.clone();
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                match call.participant.clone() {
                    Err(e) => this.reply(&call, Err(Failure::permanent(format!("template: {e}")))),
                    Ok(Participant::Http {
                        method,
                        url,
                        headers,
                        body,
                        auth,
                    }) => {
                        this.http_call(&call, &method, &url, headers, auth.as_ref(), body)
                            .await
                    }
                    Ok(Participant::Broker {
                        topic,
                        reply_topic,
                        body,
                    }) => this.broker_call(&call, topic, reply_topic, body).await,
                }
            },
            span,
        ));
    }

    async fn http_call(
        &self,
        call: &Call,
        method: &str,
        url: &str,
        extra_headers: BTreeMap<String, String>,
        secret: Option<&SecretHeader>,
        body: Option<Value>,
    ) {
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) => u,
            Err(e) => {
                return self.reply(
                    call,
                    Err(Failure::permanent(format!("bad URL {url:?}: {e}"))),
                )
            }
        };
        let endpoint = format!(
            "{}://{}:{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default(),
            parsed.port_or_known_default().unwrap_or(0)
        );
        // Checked again on the rendered URL: the allow-list may have changed since the
        // definition was stored.
        if let Some(hosts) = &self.allowed_hosts {
            if !hosts.allows(&parsed) {
                return self.reply(
                    call,
                    Err(Failure::permanent(format!(
                        "{endpoint} is not an allowed participant host (allowed: {hosts})"
                    ))),
                );
            }
        }
        let secret = match secret
            .map(|s| resolve_secret(s, &self.secrets_dir))
            .transpose()
        {
            Ok(secret) => secret,
            Err(failure) => return self.reply(call, Err(failure)),
        };
        let now = crate::clock::now_ms();
        let refused_until = {
            let mut breakers = self.breakers.lock().expect("breakers lock");
            let breaker = breakers.entry(endpoint.clone()).or_default();
            (!breaker.allow(now)).then(|| breaker.retry_at_ms.unwrap_or(now))
        };
        if let Some(until) = refused_until {
            // Not sent: retry no sooner than the breaker lets a trial call through.
            return self.reply(
                call,
                Err(Failure::refused(
                    format!("circuit open for {endpoint}"),
                    (until - now).max(0) as u64,
                )),
            );
        }
        let method =
            reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let timeout = Duration::from_millis((call.timeout_at_ms - now).max(1) as u64);
        let mut request = self
            .http
            .request(method, url)
            .timeout(timeout)
            .header(headers::IDEMPOTENCY_KEY, &call.idempotency_key)
            .header(headers::SAGA_ID, &call.saga_id)
            .header(headers::STEP, &call.step_name)
            .header(headers::PHASE, call.phase.as_str())
            .header(headers::ATTEMPT_ID, &call.attempt_id);
        if let Some(traceparent) = &call.traceparent {
            request = request.header(headers::TRACEPARENT, traceparent);
        }
        for (k, v) in &extra_headers {
            request = request.header(k, v);
        }
        if let Some((name, value)) = secret {
            request = request.header(name, value);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let outcome = request.send().await;
        let failed = match &outcome {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        };
        {
            let mut breakers = self.breakers.lock().expect("breakers lock");
            let breaker = breakers.entry(endpoint.clone()).or_default();
            if failed {
                breaker.record_failure(&self.breaker_config, crate::clock::now_ms());
            } else {
                breaker.record_success();
            }
        }
        match outcome {
            Ok(response) => {
                let status = response.status();
                // Read no further than an answer that may be kept (a little more, so that one
                // just over the limit is told apart).
                let text = match read_capped(response, self.output_bytes_max + 1024).await {
                    Ok(text) => text,
                    Err(error) => return self.reply(call, Err(Failure::permanent(error))),
                };
                let result = if status.is_success() {
                    Ok(if text.trim().is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_str(&text).unwrap_or(Value::String(text))
                    })
                } else {
                    // A refusal (4xx) stays a refusal; timeouts, throttling and 5xx may pass.
                    let error = format!("HTTP {status}: {}", truncate(&text, 500));
                    let retriable = status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    Err(Failure {
                        error,
                        retriable,
                        retry_after_ms: 0,
                        refused: false,
                    })
                };
                self.reply(call, result);
            }
            Err(e) if e.is_redirect() => {
                // Answered with a redirect this policy does not follow: a refusal.
                let error = format!("{endpoint}: {}", chain(&e));
                self.reply(call, Err(Failure::permanent(error)));
            }
            Err(e) if e.is_connect() => {
                // Never reached the participant: it certainly did not happen.
                self.reply(
                    call,
                    Err(Failure::retriable(format!(
                        "{endpoint} unreachable: {}",
                        chain(&e)
                    ))),
                );
            }
            Err(e) => {
                // Sent, but no answer: it may have happened; the step's timeout decides.
                tracing::debug!(attempt = %call.attempt_id, error = %e, "no answer");
            }
        }
    }

    async fn broker_call(
        &self,
        call: &Call,
        topic: String,
        reply_topic: String,
        body: Option<Value>,
    ) {
        let value = serde_json::to_vec(&body.unwrap_or(Value::Null)).expect("JSON serializes");
        let h = |v: &str| Some(v.as_bytes().to_vec());
        let mut record_headers = vec![
            (headers::IDEMPOTENCY_KEY.into(), h(&call.idempotency_key)),
            (headers::SAGA_ID.into(), h(&call.saga_id)),
            (headers::STEP.into(), h(&call.step_name)),
            (headers::PHASE.into(), h(call.phase.as_str())),
            (headers::ATTEMPT_ID.into(), h(&call.attempt_id)),
            (headers::REPLY_TOPIC.into(), h(&reply_topic)),
        ];
        if let Some(traceparent) = &call.traceparent {
            record_headers.push((headers::TRACEPARENT.into(), h(traceparent)));
        }
        let record = MirroredRecord {
            headers: record_headers,
            ..MirroredRecord::new(Some(call.saga_id.clone().into_bytes()), value)
        };
        // A lost command is a step that times out and is sent again.
        let sent = match self.cluster.send_unsynced(&topic, None, record).await {
            Ok(delivery) => delivery.await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            // The command may or may not be stored: the timeout decides.
            tracing::warn!(attempt = %call.attempt_id, error = %e, "sending a broker command failed");
        }
    }
}

/// An error with its causes, which reqwest keeps out of its message (a refused redirect, a
/// certificate the participant's CA did not sign).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `result`, or a permanent failure when its output is larger than `output_bytes_max`: the
/// same call would answer the same, and a journal record that large could be refused.
fn checked_output(
    result: Result<Value, Failure>,
    output_bytes_max: usize,
) -> Result<Value, Failure> {
    let output = result?;
    let limits = SizeLimits {
        output_bytes_max,
        ..SizeLimits::default()
    };
    limits.check_output(&output).map_err(Failure::permanent)?;
    Ok(output)
}

/// An HTTP answer's body as text, failing once it passes `cap` bytes.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<String, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > cap {
                    return Err(format!(
                        "the participant's answer is over {cap} bytes, more than the limit \
                         (--participant-output-bytes-max)"
                    ));
                }
            }
            Ok(None) => return Ok(String::from_utf8_lossy(&body).into_owned()),
            // Cut off mid-answer: no answer, as an unreadable body always was.
            Err(_) => return Ok(String::new()),
        }
    }
}

/// A reply record's value: `{"ok": true, "output": ...}` or
/// `{"ok": false, "error": "...", "retriable": false}` (`retriable` defaults to true).
pub fn parse_reply_value(value: &[u8]) -> Result<Value, Failure> {
    let v: Value = serde_json::from_slice(value)
        .map_err(|e| Failure::retriable(format!("reply is not JSON: {e}")))?;
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v.get("output").cloned().unwrap_or(Value::Null)),
        Some(false) => Err(Failure {
            error: v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("failed")
                .to_string(),
            retriable: v.get("retriable").and_then(Value::as_bool).unwrap_or(true),
            retry_after_ms: 0,
            refused: false,
        }),
        None => Err(Failure::retriable("reply without \"ok\"")),
    }
}

/// Consumes the reply topics as a member of `group` and turns each reply into a [`Reply`] for
/// the step it answers. Restarts its membership when the set of reply topics changes.
pub async fn consume_replies(
    cluster: Arc<Cluster>,
    group: String,
    mut topics: watch::Receiver<BTreeSet<String>>,
    replies: mpsc::UnboundedSender<Reply>,
    mut shutdown: watch::Receiver<bool>,
    output_bytes_max: usize,
) {
    loop {
        let current: Vec<String> = topics.borrow_and_update().iter().cloned().collect();
        if current.is_empty() {
            tokio::select! {
                changed = topics.changed() => if changed.is_err() { return },
                _ = crate::stopped(&mut shutdown) => return,
            }
            continue;
        }
        let spec = GroupSpec {
            group: group.clone(),
            topics: current,
            client_id: "strand-saga".into(),
            from_earliest: false,
            auto_commit: true,
        };
        let mut consumer = match cluster.group(&spec).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "joining the reply group failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                record = consumer.next() => match record {
                    Ok(record) => {
                        let attempt_id = header_str(&record, headers::ATTEMPT_ID);
                        let Some((saga_id, step_name, phase, attempt)) =
                            attempt_id.as_deref().and_then(parse_attempt_id)
                        else {
                            tracing::debug!(topic = %record.topic, offset = record.offset, "reply without a valid attempt id");
                            continue;
                        };
                        let result = parse_reply_value(record.value.as_deref().unwrap_or_default());
                        let result = checked_output(result, output_bytes_max);
                        let _ = replies.send(Reply { saga_id, step_name, phase, attempt, result });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading replies failed; rejoining");
                        break;
                    }
                },
                changed = topics.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                _ = crate::stopped(&mut shutdown) => {
                    consumer.close().await;
                    return;
                }
            }
        }
        consumer.close().await;
    }
}

/// A command as a broker participant receives it.
#[derive(Debug, Clone)]
pub struct Command {
    pub topic: String,
    pub saga_id: String,
    pub step: String,
    pub phase: String,
    /// Stable across attempts: apply the effect once per key.
    pub idempotency_key: String,
    pub attempt_id: String,
    pub reply_topic: String,
    pub body: Value,
    /// The W3C `traceparent` of the orchestrator's attempt, when it sent one.
    pub traceparent: Option<String>,
}

fn header_str(record: &MirroredRecord, name: &str) -> Option<String> {
    record
        .header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl Command {
    /// Reads a command record; `None` when it lacks the saga headers.
    pub fn from_record(record: &MirroredRecord) -> Option<Command> {
        Some(Command {
            topic: record.topic.clone(),
            saga_id: header_str(record, headers::SAGA_ID)?,
            step: header_str(record, headers::STEP)?,
            phase: header_str(record, headers::PHASE)?,
            idempotency_key: header_str(record, headers::IDEMPOTENCY_KEY)?,
            attempt_id: header_str(record, headers::ATTEMPT_ID)?,
            reply_topic: header_str(record, headers::REPLY_TOPIC)?,
            traceparent: header_str(record, headers::TRACEPARENT),
            body: serde_json::from_slice(record.value.as_deref().unwrap_or(b"null"))
                .unwrap_or(Value::Null),
        })
    }
}

/// Serves broker commands: a member of `group` on `topics` that calls `handler` for each
/// command and sends its answer to the command's reply topic (the attempt id in a header), for
/// participants written in Rust. Commits after answering; runs until shutdown.
pub async fn serve_commands<F>(
    cluster: Arc<Cluster>,
    group: String,
    topics: Vec<String>,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SideError>
where
    F: Fn(&Command) -> Result<Value, Failure> + Send + 'static,
{
    let spec = GroupSpec {
        group,
        topics,
        client_id: "strand-saga-participant".into(),
        from_earliest: true,
        auto_commit: true,
    };
    let mut consumer = cluster.group(&spec).await?;
    loop {
        let record = tokio::select! {
            record = consumer.next() => record?,
            _ = crate::stopped(&mut shutdown) => {
                cluster.flush().await?;
                consumer.close().await;
                return Ok(());
            }
        };
        let Some(command) = Command::from_record(&record) else {
            tracing::debug!(topic = %record.topic, offset = record.offset, "not a saga command");
            continue;
        };
        // The participant's span continues the attempt's trace.
        let span = tracing::info_span!(
            "saga command",
            otel.name = %format!("{} {}", command.phase, command.step),
            otel.kind = "consumer",
            saga = %command.saga_id,
        );
        if let Some(traceparent) = &command.traceparent {
            strand_broker::telemetry::set_parent(&span, traceparent);
        }
        let answer = match span.in_scope(|| handler(&command)) {
            Ok(output) => serde_json::json!({"ok": true, "output": output}),
            Err(f) => serde_json::json!({"ok": false, "error": f.error, "retriable": f.retriable}),
        };
        let reply = MirroredRecord {
            headers: vec![(
                headers::ATTEMPT_ID.into(),
                Some(command.attempt_id.clone().into_bytes()),
            )],
            ..MirroredRecord::new(
                Some(command.saga_id.clone().into_bytes()),
                answer.to_string().into_bytes(),
            )
        };
        // Delivery is not awaited: the next command does not wait for it.
        // A lost reply is a step that times out and is sent again (and answered again).
        drop(
            cluster
                .send_unsynced(&command.reply_topic, None, reply)
                .await?,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_ids_parse_back() {
        let id = crate::engine::attempt_id("0190-abc", "charge", Phase::Compensation, 3);
        assert_eq!(
            parse_attempt_id(&id),
            Some(("0190-abc".into(), "charge".into(), Phase::Compensation, 3))
        );
        assert_eq!(parse_attempt_id("nope"), None);
        assert_eq!(parse_attempt_id("s:x:other:1"), None);
    }

    #[test]
    fn allowed_hosts_match_names_wildcards_and_ports() {
        let hosts: AllowedHosts =
            "payments.internal, *.svc.cluster.local,127.0.0.1:8081,[::1]:9000,Shop.Example."
                .parse()
                .unwrap();
        let allows = |url: &str| hosts.allows(&reqwest::Url::parse(url).unwrap());
        assert!(allows("http://payments.internal/charge"));
        assert!(allows("https://PAYMENTS.internal:8443/charge"));
        assert!(allows("http://a.svc.cluster.local/x"));
        assert!(allows("http://a.b.svc.cluster.local:81/x"));
        assert!(allows("http://127.0.0.1:8081/x"));
        assert!(allows("http://[::1]:9000/x"));
        assert!(allows("http://shop.example/"));
        assert!(
            !allows("http://svc.cluster.local/x"),
            "the domain itself is not under it"
        );
        assert!(!allows("http://evilsvc.cluster.local/x"));
        assert!(!allows("http://127.0.0.1:8082/x"));
        assert!(!allows("http://127.0.0.1/x"), "port 80 is not 8081");
        assert!(!allows("http://[::1]:9001/x"));
        assert!(!allows("http://payments.internal.evil.com/x"));
        // Userinfo does not fool the host check.
        assert!(!allows("http://payments.internal@evil.com/x"));
        assert_eq!(
            hosts.to_string(),
            "payments.internal,*.svc.cluster.local,127.0.0.1:8081,[::1]:9000,shop.example"
        );

        assert!(hosts
            .check_template("http://payments.internal/charge/{{ input.id }}")
            .is_ok());
        let err = hosts
            .check_template("http://{{ input.host }}/charge")
            .unwrap_err();
        assert!(err.contains("template"), "{err}");
        let err = hosts
            .check_template("http://payments.internal@169.254.169.254/latest")
            .unwrap_err();
        assert!(err.contains("169.254.169.254"), "{err}");

        for bad in [
            "", " , ", "a b", "::1", "[::1", "[::1]x", "h:0", "h:99999", "*", "x.*.y",
        ] {
            assert!(bad.parse::<AllowedHosts>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_come_from_files_and_never_into_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-value\n").unwrap();
        let secret = |file: &Path, prefix: Option<&str>| SecretHeader {
            header: "Authorization".into(),
            env: None,
            file: Some(file.to_str().unwrap().into()),
            prefix: prefix.map(str::to_string),
        };
        let (name, value) = resolve_secret(&secret(&file, Some("Bearer ")), dir.path()).unwrap();
        assert_eq!(name, reqwest::header::AUTHORIZATION);
        assert_eq!(value, "Bearer s3cret-value");
        assert!(value.is_sensitive());

        let missing =
            resolve_secret(&secret(&dir.path().join("nope"), None), dir.path()).unwrap_err();
        assert!(
            missing.retriable && missing.error.contains("nope"),
            "{missing:?}"
        );
        std::fs::write(&file, "two\nlines-s3cret\n").unwrap();
        let broken = resolve_secret(&secret(&file, None), dir.path()).unwrap_err();
        assert!(
            broken.error.contains("not a valid header value"),
            "{broken:?}"
        );
        assert!(!broken.error.contains("s3cret"), "{broken:?}");
        std::fs::write(&file, "\n").unwrap();
        assert!(resolve_secret(&secret(&file, None), dir.path())
            .unwrap_err()
            .error
            .contains("empty"));
        std::fs::write(&file, vec![b'a'; SECRET_FILE_BYTES_MAX as usize + 1]).unwrap();
        assert!(resolve_secret(&secret(&file, None), dir.path())
            .unwrap_err()
            .error
            .contains("larger"));

        let unset = SecretHeader {
            header: "X-Token".into(),
            env: Some("TEST_SURELY_UNSET_VARIABLE_OF_STRAND".into()),
            file: None,
            prefix: None,
        };
        let failure = resolve_secret(&unset, dir.path()).unwrap_err();
        assert!(
            !failure.retriable
                && failure
                    .error
                    .contains("TEST_SURELY_UNSET_VARIABLE_OF_STRAND")
        );
    }

    #[test]
    fn secret_files_stay_in_their_folder_and_strand_variables_are_not_secrets() {
        let secrets = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let outside = elsewhere.path().join("orchestrator.key");
        std::fs::write(&outside, "private").unwrap();
        // A link inside the folder that points out of it.
        let link = secrets.path().join("innocent");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let file = |path: &Path| SecretHeader {
            header: "Authorization".into(),
            env: None,
            file: Some(path.to_str().unwrap().into()),
            prefix: None,
        };
        let failure = resolve_secret(&file(&link), secrets.path()).unwrap_err();
        assert!(
            failure.error.contains("not in the secrets folder")
                && !failure.error.contains("private")
        );
        let dotted = secrets
            .path()
            .join("..")
            .join(elsewhere.path().file_name().unwrap())
            .join("orchestrator.key");
        assert!(resolve_secret(&file(&dotted), secrets.path()).is_err());
        let own = SecretHeader {
            env: Some("STRAND_SAGA_KAFKA_PROPERTY_SASL_PASSWORD".into()),
            file: None,
            ..file(&link)
        };
        assert!(resolve_secret(&own, secrets.path())
            .unwrap_err()
            .error
            .contains("own settings"));

        // At definition time too.
        let config = ParticipantsConfig::new(
            None,
            &ParticipantTls::default(),
            secrets.path().to_path_buf(),
        )
        .unwrap();
        let spec = |path: &Path| -> DefinitionSpec {
            serde_json::from_value(serde_json::json!({"steps": [{"name": "a", "kind": "pivot",
                "action": {"type": "http", "url": "http://p/a", "auth": {"file": path}}}]}))
            .unwrap()
        };
        assert!(config
            .check_definition(&spec(&secrets.path().join("payments")))
            .is_ok());
        let err = config.check_definition(&spec(&outside)).unwrap_err();
        assert!(err.contains("--participant-secrets-dir"), "{err}");
        assert!(config.check_definition(&spec(&dotted)).is_err());
        assert!(
            ParticipantsConfig::new(None, &ParticipantTls::default(), "relative".into()).is_err()
        );
    }

    #[test]
    fn tls_files_are_checked_when_the_client_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let tls = ParticipantTls {
            ca_file: Some(garbage),
            ..ParticipantTls::default()
        };
        let err = ParticipantsConfig::new(None, &tls, SECRETS_DIR_DEFAULT.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.pem"), "{err}");
        let tls = ParticipantTls {
            ca_file: Some(dir.path().join("missing.pem")),
            ..ParticipantTls::default()
        };
        let err = ParticipantsConfig::new(None, &tls, SECRETS_DIR_DEFAULT.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let tls = ParticipantTls {
            cert_file: Some(dir.path().join("c.pem")),
            ..ParticipantTls::default()
        };
        let err = ParticipantsConfig::new(None, &tls, SECRETS_DIR_DEFAULT.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("both"), "{err}");
    }

    #[test]
    fn replies_parse() {
        assert_eq!(
            parse_reply_value(br#"{"ok": true, "output": {"id": 1}}"#),
            Ok(serde_json::json!({"id": 1}))
        );
        assert_eq!(
            parse_reply_value(br#"{"ok": false, "error": "declined", "retriable": false}"#),
            Err(Failure::permanent("declined"))
        );
        assert!(parse_reply_value(b"garbage").is_err());
    }
}
