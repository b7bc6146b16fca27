//! Bearer JWTs for the HTTP APIs (the broker's and the saga orchestrator's): signed service
//! tokens verified against public keys the operator configures, as the system Strand replaces
//! did with RS256 service tokens.
//!
//! - [`JwtConfig`]: issuer, audience, key files (PEM public keys or certificates, and/or one
//!   JWKS file), clock leeway, how often the files are checked for changes.
//! - [`Verifier`]: the loaded keys and [`Verifier::verify`], which checks a token's signature
//!   (RS256/384/512, PS256/384/512, ES256/384; never HMAC or `none`, so a public key cannot be
//!   used as a shared secret), `iss`, `aud`, `exp` and `nbf`, and returns its [`Claims`]
//!   (subject and scopes). A JWKS key is chosen by the token's `kid`.
//! - Keys are reloaded when a file changes (checked every `reload_interval_ms`) or on SIGHUP,
//!   see [`Verifier::watch`]; a reload that fails keeps the keys in force and logs why.
//!
//! The HTTP side (the `Authorization: Bearer` header, 401 and 403 answers) is
//! `crate::http::RequireScope`; this module knows nothing of HTTP.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Longest token accepted, checked before any decoding.
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;
/// Largest key or JWKS file read.
pub const KEY_FILE_BYTES_MAX: u64 = 1 << 20;
/// Largest clock leeway accepted for `exp` and `nbf`: a larger one would keep expired tokens
/// alive for long.
pub const LEEWAY_S_MAX: u64 = 300;
/// Most keys loaded from all files together.
pub const KEYS_MAX: usize = 100;
/// Shortest RSA modulus `ring` verifies signatures with.
pub const RSA_BITS_MIN: usize = 2048;

const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// How bearer tokens are verified. Both `issuer` and `audience` are required: a token minted
/// for another service must not be accepted here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// A value the token's `aud` (a string or a list) must contain.
    pub audience: String,
    /// PEM files, each with one RSA or EC public key (`PUBLIC KEY`, `RSA PUBLIC KEY`) or a
    /// certificate. Such keys have no `kid`; a token is tried against each that fits its `alg`.
    pub key_files: Vec<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`, as an identity provider publishes it); a token's `kid`
    /// picks the key. Keys with `"use": "enc"` are skipped.
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 30, at most 300.
    pub leeway_s: u64,
    /// How often the key files are checked for changes (and reloaded), in ms; 0 reloads only
    /// on SIGHUP. Default 10 s.
    pub reload_interval_ms: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: String::new(),
            audience: String::new(),
            key_files: Vec::new(),
            jwks_file: None,
            leeway_s: 30,
            reload_interval_ms: 10_000,
        }
    }
}

impl JwtConfig {
    /// Every problem with these settings, in one message.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.issuer.is_empty() {
            problems.push("an issuer is required".to_string());
        }
        if self.audience.is_empty() {
            problems.push("an audience is required".to_string());
        }
        if self.key_files.is_empty() && self.jwks_file.is_none() {
            problems.push("at least one key file or a JWKS file is required".to_string());
        }
        if self.leeway_s > LEEWAY_S_MAX {
            problems.push(format!(
                "leeway_s is {}, at most {LEEWAY_S_MAX}",
                self.leeway_s
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("JWT settings: {}", problems.join("; ")))
        }
    }

    fn files(&self) -> impl Iterator<Item = &Path> {
        self.key_files
            .iter()
            .chain(self.jwks_file.iter())
            .map(PathBuf::as_path)
    }
}

/// Why the keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    #[error("JWT key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JWT key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

/// Why a token was refused; the message is safe to return to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("the token is longer than {TOKEN_BYTES_MAX} bytes")]
    TooLong,
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token's algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    #[error("no configured key has kid {0:?}")]
    UnknownKey(String),
    #[error("no configured key can verify a {0:?} token")]
    NoKey(Algorithm),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer is not the expected one")]
    Issuer,
    #[error("the token's audience does not include this service")]
    Audience,
    #[error("the token has no {0:?} claim")]
    MissingClaim(String),
    #[error("the token's claims are not valid: {0}")]
    Claims(String),
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The `sub` claim, when present.
    pub subject: Option<String>,
    /// From `scope` (space-separated, OAuth 2) and `scp` (a list, or a space-separated string).
    pub scopes: BTreeSet<String>,
}

impl Claims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

/// The claims read beyond those `jsonwebtoken` validates.
#[derive(Debug, Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<ScopeList>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeList {
    List(Vec<String>),
    Spaced(String),
}

/// One public key and the algorithms it verifies.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// What the files looked like when the keys were read: a change reloads them.
type Stamps = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

#[derive(Debug)]
struct KeySet {
    keys: Vec<VerifyKey>,
    stamps: Stamps,
}

/// The configured keys, and token verification against them. Shared (`Arc`) by the HTTP
/// layers and the task that reloads the keys.
#[derive(Debug)]
pub struct Verifier {
    config: JwtConfig,
    keys: RwLock<Arc<KeySet>>,
}

impl Verifier {
    /// Reads the key files; any unreadable file or unusable key is an error naming the file.
    pub fn load(config: JwtConfig) -> Result<Verifier, JwtError> {
        config.validate().map_err(JwtError::Config)?;
        let keys = read_keys(&config)?;
        Ok(Verifier {
            config,
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// How many keys are in force.
    pub fn keys_loaded(&self) -> usize {
        self.current().keys.len()
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().expect("JWT keys lock").clone()
    }

    /// Reads the key files again and puts the new keys in force; on error the old ones stay.
    pub fn reload(&self) -> Result<usize, JwtError> {
        let keys = read_keys(&self.config)?;
        let n = keys.keys.len();
        *self.keys.write().expect("JWT keys lock") = Arc::new(keys);
        Ok(n)
    }

    /// Whether a key file changed (modification time or size) since the keys were read.
    fn files_changed(&self) -> bool {
        self.current().stamps != stamps(&self.config)
    }

    /// Verifies `token` (the part after `Bearer `): signature, `iss`, `aud`, `exp`, `nbf`.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(token_error)?;
        let alg = header.alg;
        if !RSA_ALGORITHMS.contains(&alg) && !matches!(alg, Algorithm::ES256 | Algorithm::ES384) {
            return Err(TokenError::Algorithm(alg));
        }
        let keys = self.current();
        // A token naming a kid is verified by that key only; PEM keys have no kid and are
        // tried for any token, so a single PEM key works with issuers that set a kid.
        let named: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => keys
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => Vec::new(),
        };
        // A kid no key has, tried on the PEM keys in vain, is reported as the unknown kid:
        // most likely the issuer rotated to a key not configured here yet.
        let fell_back = header.kid.is_some() && named.is_empty();
        let candidates: Vec<&VerifyKey> = if named.is_empty() {
            keys.keys.iter().filter(|k| k.kid.is_none()).collect()
        } else {
            named
        };
        let candidates: Vec<&VerifyKey> = candidates
            .into_iter()
            .filter(|k| k.algorithms.contains(&alg))
            .collect();
        if candidates.is_empty() {
            return Err(match header.kid {
                Some(kid) => TokenError::UnknownKey(kid),
                None => TokenError::NoKey(alg),
            });
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway_s;
        let mut last = TokenError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<RawClaims>(token, &key.key, &validation) {
                Ok(data) => return Ok(claims(data.claims)),
                Err(e) => {
                    last = token_error(e);
                    // Only a signature that does not verify is worth trying the next key for;
                    // anything else (expired, wrong audience) is the token's, whichever key.
                    if last != TokenError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        match (last, header.kid) {
            (TokenError::Signature, Some(kid)) if fell_back => Err(TokenError::UnknownKey(kid)),
            (last, _) => Err(last),
        }
    }

    /// Reloads the keys on SIGHUP and, unless `reload_interval_ms` is 0, when a file changes,
    /// until `shutdown`. Reload failures are logged and the keys in force kept.
    pub fn watch(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hangup = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGHUP handler: JWT keys reload only when their files change");
                    None
                }
            };
            let interval_ms = self.config.reload_interval_ms;
            let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let forced = tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                    _ = tick.tick(), if interval_ms > 0 => false,
                };
                let this = self.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    if forced || this.files_changed() {
                        this.reload().map(Some)
                    } else {
                        Ok(None)
                    }
                })
                .await;
                match outcome {
                    Ok(Ok(Some(n))) => tracing::info!(keys = n, "JWT keys reloaded"),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "reloading JWT keys failed; the keys in force stay")
                    }
                    Err(e) => tracing::error!(error = %e, "reloading JWT keys panicked"),
                }
            }
        })
    }
}

fn claims(raw: RawClaims) -> Claims {
    let mut scopes = BTreeSet::new();
    if let Some(s) = &raw.scope {
        scopes.extend(s.split_ascii_whitespace().map(str::to_string));
    }
    match raw.scp {
        Some(ScopeList::List(list)) => scopes.extend(list),
        Some(ScopeList::Spaced(s)) => scopes.extend(s.split_ascii_whitespace().map(str::to_string)),
        None => {}
    }
    Claims {
        subject: raw.sub,
        scopes,
    }
}

fn token_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.into_kind() {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => TokenError::Signature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c),
        ErrorKind::Json(e) => TokenError::Claims(e.to_string()),
        ErrorKind::InvalidToken => TokenError::Malformed("not three base64url parts".into()),
        ErrorKind::Base64(e) => TokenError::Malformed(format!("base64: {e}")),
        ErrorKind::Utf8(e) => TokenError::Malformed(format!("UTF-8: {e}")),
        ErrorKind::InvalidAlgorithmName => TokenError::Malformed("unknown algorithm".into()),
        other => TokenError::Malformed(format!("{other:?}")),
    }
}

fn stamps(config: &JwtConfig) -> Stamps {
    config
        .files()
        .map(|path| {
            let stamp = std::fs::metadata(path)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            (path.to_path_buf(), stamp)
        })
        .collect()
}

fn read_file(path: &Path) -> Result<Vec<u8>, JwtError> {
    let read_error = |source| JwtError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(KEY_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > KEY_FILE_BYTES_MAX {
        return Err(JwtError::Key {
            path: path.to_path_buf(),
            reason: format!("larger than {KEY_FILE_BYTES_MAX} bytes"),
        });
    }
    Ok(bytes)
}

fn read_keys(config: &JwtConfig) -> Result<KeySet, JwtError> {
    // Stamps first: a file replaced while it is read is read again at the next check.
    let stamps = stamps(config);
    let mut keys = Vec::new();
    for path in &config.key_files {
        keys.push(pem_key(path, &read_file(path)?)?);
    }
    if let Some(path) = &config.jwks_file {
        keys.extend(jwks_keys(path, &read_file(path)?)?);
    }
    if keys.len() > KEYS_MAX {
        return Err(JwtError::Config(format!(
            "{} JWT keys configured, at most {KEYS_MAX}",
            keys.len()
        )));
    }
    Ok(KeySet { keys, stamps })
}

/// An RSA or EC public key (or certificate) in PEM.
fn pem_key(path: &Path, pem: &[u8]) -> Result<VerifyKey, JwtError> {
    // jsonwebtoken would take a private key's bytes as a public key that verifies nothing.
    if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(JwtError::Key {
            path: path.to_path_buf(),
            reason: "holds a private key; give the public key (openssl pkey -pubout)".into(),
        });
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(VerifyKey {
            kid: None,
            algorithms: RSA_ALGORITHMS.to_vec(),
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // The curve decides: a P-384 key does not verify an ES256 signature, and says so as
        // a bad signature.
        return Ok(VerifyKey {
            kid: None,
            algorithms: vec![Algorithm::ES256, Algorithm::ES384],
            key,
        });
    }
    Err(JwtError::Key {
        path: path.to_path_buf(),
        reason: "not a PEM RSA or EC public key or certificate (a private key, an HMAC secret \
                 or an Ed25519 key is not accepted)"
            .into(),
    })
}

/// Every signing key of a JWKS file.
fn jwks_keys(path: &Path, json: &[u8]) -> Result<Vec<VerifyKey>, JwtError> {
    let bad = |reason: String| JwtError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let set: JwkSet =
        serde_json::from_slice(json).map_err(|e| bad(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    let mut kids = BTreeSet::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = match &jwk.common.key_id {
            Some(kid) => format!("key {kid:?}"),
            None => format!("key {i}"),
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                // ring verifies nothing with a shorter modulus: say so now, not at every token.
                let bits = base64url_bytes(&p.n) * 8;
                if bits < RSA_BITS_MIN {
                    return Err(bad(format!(
                        "{name}: an RSA key of about {bits} bits; at least {RSA_BITS_MIN}"
                    )));
                }
                RSA_ALGORITHMS.to_vec()
            }
            AlgorithmParameters::EllipticCurve(p) => {
                let (algorithm, coordinate_bytes) = match p.curve {
                    EllipticCurve::P256 => (Algorithm::ES256, 32),
                    EllipticCurve::P384 => (Algorithm::ES384, 48),
                    ref other => {
                        return Err(bad(format!("{name}: curve {other:?} is not supported")))
                    }
                };
                if base64url_bytes(&p.x) != coordinate_bytes
                    || base64url_bytes(&p.y) != coordinate_bytes
                {
                    return Err(bad(format!(
                        "{name}: x and y must be {coordinate_bytes} bytes each for its curve"
                    )));
                }
                vec![algorithm]
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(bad(format!(
                    "{name} is a symmetric (oct) key; only RSA and EC public keys are accepted"
                )))
            }
            AlgorithmParameters::OctetKeyPair(_) => {
                return Err(bad(format!("{name}: OKP (Ed25519) keys are not supported")))
            }
        };
        let algorithms = match jwk.common.key_algorithm {
            None => family,
            Some(declared) => {
                let alg = key_algorithm(declared)
                    .filter(|a| family.contains(a))
                    .ok_or_else(|| {
                        bad(format!("{name}: alg {declared} does not fit its key type"))
                    })?;
                vec![alg]
            }
        };
        if let Some(kid) = &jwk.common.key_id {
            if !kids.insert(kid.clone()) {
                return Err(bad(format!("kid {kid:?} appears twice")));
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("{name}: {e}")))?;
        keys.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        });
    }
    if keys.is_empty() {
        return Err(bad("no signing keys in it".into()));
    }
    Ok(keys)
}

/// How many bytes a base64url text (padded or not) decodes to.
fn base64url_bytes(text: &str) -> usize {
    text.trim_end_matches('=').len() * 3 / 4
}

fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::process::Command;

    fn openssl(args: &[&str]) -> Vec<u8> {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        out.stdout
    }

    /// A key pair made by openssl: (private PEM, public PEM path).
    struct Pair {
        private: Vec<u8>,
        public: PathBuf,
    }

    fn pair(dir: &Path, name: &str, algorithm: &[&str]) -> Pair {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let mut args = vec!["genpkey", "-out", private.to_str().unwrap()];
        args.extend_from_slice(algorithm);
        openssl(&args);
        openssl(&[
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        Pair {
            private: std::fs::read(&private).unwrap(),
            public,
        }
    }

    fn rsa(dir: &Path, name: &str) -> Pair {
        pair(
            dir,
            name,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        )
    }

    fn ec(dir: &Path, name: &str) -> Pair {
        pair(
            dir,
            name,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |n, b| n << 8 | *b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    /// The JWK of a public key file.
    fn jwk(public: &Path, kid: &str) -> serde_json::Value {
        let path = public.to_str().unwrap();
        let der = openssl(&["pkey", "-pubin", "-in", path, "-outform", "DER"]);
        let text = String::from_utf8(openssl(&["pkey", "-pubin", "-in", path, "-noout", "-text"]))
            .unwrap();
        if text.contains("Modulus") {
            let modulus = String::from_utf8(openssl(&[
                "rsa", "-pubin", "-in", path, "-noout", "-modulus",
            ]))
            .unwrap();
            let hex = modulus.trim().trim_start_matches("Modulus=");
            let n: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64url(&n), "e": "AQAB"})
        } else {
            // P-256 SPKI ends with the uncompressed point 04 || x || y.
            let point = &der[der.len() - 64..];
            json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64url(&point[..32]), "y": b64url(&point[32..])})
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c =
            json!({"iss": "https://idp", "aud": "strand", "sub": "svc", "exp": now() + 600});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn sign(pair: &Pair, alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pair.private).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pair.private).unwrap(),
        };
        let header = Header {
            kid: kid.map(str::to_string),
            ..Header::new(alg)
        };
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn config(key_files: Vec<PathBuf>, jwks_file: Option<PathBuf>) -> JwtConfig {
        JwtConfig {
            issuer: "https://idp".into(),
            audience: "strand".into(),
            key_files,
            jwks_file,
            ..JwtConfig::default()
        }
    }

    #[test]
    fn pem_keys_verify_rs256_and_es256_and_check_every_claim() {
        let dir = tempfile::tempdir().unwrap();
        let (r, e, other) = (
            rsa(dir.path(), "r"),
            ec(dir.path(), "e"),
            rsa(dir.path(), "o"),
        );
        let v = Verifier::load(config(vec![r.public.clone(), e.public.clone()], None)).unwrap();
        assert_eq!(v.keys_loaded(), 2);

        let c = v
            .verify(&sign(
                &r,
                Algorithm::RS256,
                None,
                &claims(json!({"scope": "saga:read saga:start", "scp": ["x"]})),
            ))
            .unwrap();
        assert_eq!(c.subject.as_deref(), Some("svc"));
        assert_eq!(
            c.scopes.iter().map(String::as_str).collect::<Vec<_>>(),
            ["saga:read", "saga:start", "x"]
        );
        // A kid on a PEM-verified token is fine; `scp` may also be a spaced string.
        let c = v
            .verify(&sign(
                &e,
                Algorithm::ES256,
                Some("any"),
                &claims(json!({"scp": "a b", "aud": ["other", "strand"]})),
            ))
            .unwrap();
        assert!(c.has_scope("a") && c.has_scope("b"));

        let refused = |claims: serde_json::Value| {
            v.verify(&sign(&r, Algorithm::RS256, None, &claims))
                .unwrap_err()
        };
        assert_eq!(
            refused(claims(json!({"exp": now() - 120}))),
            TokenError::Expired
        );
        assert_eq!(
            refused(claims(json!({"nbf": now() + 120}))),
            TokenError::NotYetValid
        );
        assert_eq!(
            refused(claims(json!({"iss": "https://evil"}))),
            TokenError::Issuer
        );
        assert_eq!(
            refused(claims(json!({"aud": "billing"}))),
            TokenError::Audience
        );
        assert_eq!(
            refused(claims(json!({"aud": null}))),
            TokenError::MissingClaim("aud".into())
        );
        assert_eq!(
            refused(claims(json!({"exp": null}))),
            TokenError::MissingClaim("exp".into())
        );
        assert!(matches!(
            refused(claims(json!({"scope": 7}))),
            TokenError::Claims(_)
        ));
        // Within the leeway, a just-expired token still passes.
        assert!(v
            .verify(&sign(
                &r,
                Algorithm::RS256,
                None,
                &claims(json!({"exp": now() - 5}))
            ))
            .is_ok());

        assert_eq!(
            v.verify(&sign(&other, Algorithm::RS256, None, &claims(json!({}))))
                .unwrap_err(),
            TokenError::Signature
        );
        // HMAC with the public key as the secret (algorithm confusion) never verifies.
        let public_pem = std::fs::read(&r.public).unwrap();
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        assert_eq!(
            v.verify(&forged).unwrap_err(),
            TokenError::Algorithm(Algorithm::HS256)
        );
        assert!(matches!(
            v.verify("not.a.jwt").unwrap_err(),
            TokenError::Malformed(_)
        ));
        assert!(matches!(
            v.verify("abc").unwrap_err(),
            TokenError::Malformed(_)
        ));
        assert_eq!(
            v.verify(&"a".repeat(TOKEN_BYTES_MAX + 1)).unwrap_err(),
            TokenError::TooLong
        );
        // A token whose signature part was swapped for another token's.
        let good = sign(&r, Algorithm::RS256, None, &claims(json!({})));
        let evil = sign(
            &r,
            Algorithm::RS256,
            None,
            &claims(json!({"scope": "saga:operate"})),
        );
        let spliced = format!(
            "{}.{}",
            evil.rsplit_once('.').unwrap().0,
            good.rsplit_once('.').unwrap().1
        );
        assert_eq!(v.verify(&spliced).unwrap_err(), TokenError::Signature);
    }

    #[test]
    fn a_jwks_key_is_chosen_by_kid() {
        let dir = tempfile::tempdir().unwrap();
        let (r, e) = (rsa(dir.path(), "r"), ec(dir.path(), "e"));
        let jwks = dir.path().join("jwks.json");
        let enc = json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"});
        std::fs::write(
            &jwks,
            json!({"keys": [jwk(&r.public, "rsa-1"), jwk(&e.public, "ec-1"), enc]}).to_string(),
        )
        .unwrap();
        let v = Verifier::load(config(vec![], Some(jwks.clone()))).unwrap();
        assert_eq!(v.keys_loaded(), 2, "the encryption key is skipped");
        v.verify(&sign(
            &r,
            Algorithm::RS256,
            Some("rsa-1"),
            &claims(json!({})),
        ))
        .unwrap();
        assert!(v
            .verify(&sign(
                &e,
                Algorithm::ES256,
                Some("ec-1"),
                &claims(json!({}))
            ))
            .is_ok());
        // The right key under the wrong kid, and an unknown kid.
        assert_eq!(
            v.verify(&sign(
                &r,
                Algorithm::RS256,
                Some("ec-1"),
                &claims(json!({}))
            ))
            .unwrap_err(),
            TokenError::UnknownKey("ec-1".into())
        );
        assert_eq!(
            v.verify(&sign(
                &r,
                Algorithm::RS256,
                Some("rsa-2"),
                &claims(json!({}))
            ))
            .unwrap_err(),
            TokenError::UnknownKey("rsa-2".into())
        );
        // No kid: JWKS keys are only used by kid.
        assert_eq!(
            v.verify(&sign(&r, Algorithm::RS256, None, &claims(json!({}))))
                .unwrap_err(),
            TokenError::NoKey(Algorithm::RS256)
        );
    }

    #[test]
    fn bad_key_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let load = |c: JwtConfig| Verifier::load(c).unwrap_err().to_string();
        let err = load(config(vec![write("garbage.pem", "hello")], None));
        assert!(
            err.contains("garbage.pem") && err.contains("not a PEM"),
            "{err}"
        );
        let err = load(config(vec![dir.path().join("missing.pem")], None));
        assert!(err.contains("missing.pem"), "{err}");
        let private = rsa(dir.path(), "p");
        let err = load(config(
            vec![write(
                "private.pem",
                std::str::from_utf8(&private.private).unwrap(),
            )],
            None,
        ));
        assert!(
            err.contains("private.pem") && err.contains("private key"),
            "{err}"
        );
        let oct = write(
            "oct.json",
            &json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}).to_string(),
        );
        let err = load(config(vec![], Some(oct)));
        assert!(err.contains("symmetric"), "{err}");
        let twice = jwk(&private.public, "k");
        let dup = write("dup.json", &json!({"keys": [twice, twice]}).to_string());
        assert!(load(config(vec![], Some(dup))).contains("appears twice"));
        let short = write(
            "short.json",
            &json!({"keys": [{"kty": "RSA", "kid": "s", "n": b64url(&[0xc5; 128]), "e": "AQAB"}]})
                .to_string(),
        );
        assert!(load(config(vec![], Some(short))).contains("at least 2048"));
        let mut point = jwk(&ec(dir.path(), "e").public, "e");
        point["x"] = json!("AQAB");
        let point = write("point.json", &json!({"keys": [point]}).to_string());
        assert!(load(config(vec![], Some(point))).contains("32 bytes"));
        let empty = write("empty.json", r#"{"keys": []}"#);
        assert!(load(config(vec![], Some(empty))).contains("no signing keys"));
        let err = load(JwtConfig {
            leeway_s: 3600,
            ..config(vec![], None)
        });
        assert!(
            err.contains("key file") && err.contains("leeway_s"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_watcher_reloads_a_changed_file_by_itself_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (ec(dir.path(), "old"), ec(dir.path(), "new"));
        let key_file = dir.path().join("signing.pem");
        std::fs::copy(&old.public, &key_file).unwrap();
        let config = JwtConfig {
            reload_interval_ms: 20,
            ..config(vec![key_file.clone()], None)
        };
        let v = Arc::new(Verifier::load(config).unwrap());
        let (stop, shutdown) = watch::channel(false);
        let task = v.clone().watch(shutdown);
        let token = sign(&new, Algorithm::ES256, None, &claims(json!({})));
        assert_eq!(v.verify(&token).unwrap_err(), TokenError::Signature);
        // Renamed into place, as a secret mount or a careful operator does.
        let staged = dir.path().join("staged.pem");
        std::fs::write(
            &staged,
            format!("{}\n", std::fs::read_to_string(&new.public).unwrap()),
        )
        .unwrap();
        std::fs::rename(&staged, &key_file).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while v.verify(&token).is_err() {
            assert!(tokio::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn keys_reload_when_their_file_changes_and_a_bad_reload_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (rsa(dir.path(), "old"), rsa(dir.path(), "new"));
        let key_file = dir.path().join("signing.pem");
        std::fs::copy(&old.public, &key_file).unwrap();
        let v = Verifier::load(config(vec![key_file.clone()], None)).unwrap();
        let token = |p: &Pair| sign(p, Algorithm::RS256, None, &claims(json!({})));
        assert!(v.verify(&token(&old)).is_ok());
        assert!(!v.files_changed());

        // A rotated key: another size, so the change is seen whatever the clock resolution.
        let rotated = format!("{}\n", std::fs::read_to_string(&new.public).unwrap());
        std::fs::write(&key_file, rotated).unwrap();
        assert!(v.files_changed());
        v.reload().unwrap();
        assert!(v.verify(&token(&new)).is_ok());
        assert_eq!(v.verify(&token(&old)).unwrap_err(), TokenError::Signature);

        std::fs::write(&key_file, "truncated").unwrap();
        assert!(v.reload().is_err());
        assert!(v.verify(&token(&new)).is_ok(), "the keys in force stay");
    }
}
