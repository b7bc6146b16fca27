//! Server-side TLS for every listener (native, Kafka, HTTP, and the saga and bridge HTTP ports):
//! certificate and key from PEM files, optional client certificates verified against a CA
//! bundle, and the principal a verified client certificate stands for.
//!
//! The files are reloaded without a restart: [`ServerTls::acceptor`] looks at their modification
//! times (at most every `reload_check_interval_ms`) and [`ServerTls::reload`] runs on SIGHUP. A
//! reload builds a whole new rustls `ServerConfig` (certificate, key and CA bundle together), so
//! a connection never gets a certificate paired with the previous key, and swaps it in; new
//! connections get it, open ones keep theirs. A reload that fails (a half-written file, a key
//! that does not match) logs an error and keeps serving the material that worked.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

use super::Principal;

/// Largest PEM file read (certificate chain, key or CA bundle): larger is a configuration
/// mistake, not a certificate.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// Whether clients must present a certificate, as Kafka's `ssl.client.auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client certificate is asked for and verified if sent; a client without one still
    /// connects (as `User:ANONYMOUS`, or the SASL user).
    Requested,
    /// A client must present a certificate the CA bundle verifies, or the handshake fails.
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<ClientAuth, String> {
        match s {
            "none" => Ok(ClientAuth::None),
            "requested" => Ok(ClientAuth::Requested),
            "required" => Ok(ClientAuth::Required),
            _ => Err(format!(
                "client_auth {s:?} is not none, requested or required"
            )),
        }
    }
}

/// The `[tls]` settings: used by every listener whose protocol is `SSL` or `SASL_SSL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate, then its chain. Required by a TLS listener.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1). Required by a TLS
    /// listener.
    pub key_file: Option<PathBuf>,
    /// PEM bundle of the CAs that client certificates must chain to. Required when
    /// `client_auth` is not `none`, and refused without it.
    pub client_ca_file: Option<PathBuf>,
    /// Default `none`.
    pub client_auth: ClientAuth,
    /// How often at most the files' modification times are compared with the loaded ones (at
    /// the next TLS connection); 0 checks at every connection. SIGHUP reloads at once.
    /// Default 5000.
    pub reload_check_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_auth: ClientAuth::None,
            reload_check_interval_ms: 5000,
        }
    }
}

impl TlsConfig {
    /// The settings of an HTTP port's TLS from its flags: `None` when none is given (plain
    /// HTTP), else checked like the broker's `[tls]`.
    pub fn from_flags(
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        client_ca_file: Option<PathBuf>,
        client_auth: Option<ClientAuth>,
    ) -> Result<Option<TlsConfig>, String> {
        if cert_file.is_none() && key_file.is_none() && client_ca_file.is_none() {
            if client_auth.is_some_and(|auth| auth != ClientAuth::None) {
                return Err("client authentication needs a certificate, key and CA file".into());
            }
            return Ok(None);
        }
        let config = TlsConfig {
            cert_file,
            key_file,
            client_ca_file,
            client_auth: client_auth.unwrap_or_default(),
            ..TlsConfig::default()
        };
        config.validate(true)?;
        Ok(Some(config))
    }

    /// Whether the settings are consistent; `needed` says whether some listener uses TLS (then
    /// the certificate and key are required).
    pub fn validate(&self, needed: bool) -> Result<(), String> {
        if needed && (self.cert_file.is_none() || self.key_file.is_none()) {
            return Err(
                "a listener uses TLS (SSL or SASL_SSL) but tls.cert_file or tls.key_file is not set"
                    .into(),
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("tls.cert_file and tls.key_file go together: set both or neither".into());
        }
        match (self.client_auth, &self.client_ca_file) {
            (ClientAuth::None, Some(_)) => Err(
                "tls.client_ca_file is set but tls.client_auth is none: set client_auth to \
                 requested or required, or remove client_ca_file"
                    .into(),
            ),
            (ClientAuth::Requested | ClientAuth::Required, None) => Err(format!(
                "tls.client_auth is {:?} but tls.client_ca_file is not set",
                self.client_auth
            )),
            _ => Ok(()),
        }
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {PEM_FILE_BYTES_MAX} bytes, which no PEM file of certificates or keys is")]
    TooLarge { path: PathBuf },
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{what}: {source}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("client CA bundle {path}: {source}")]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("invalid TLS settings: {0}")]
    Invalid(String),
}

/// The modification time and length of each file, to notice a replaced file cheaply.
type Stamps = Vec<Option<(SystemTime, u64)>>;

/// A server's TLS material, reloaded when its files change or on [`ServerTls::reload`].
pub struct ServerTls {
    config: TlsConfig,
    /// Offered by the server in ALPN, in preference order (empty: no ALPN).
    alpn: Vec<Vec<u8>>,
    current: RwLock<Material>,
    check: Mutex<Check>,
}

/// The rustls configurations built from one load of the files.
struct Material {
    /// With `client_auth` as configured: the `SSL` listeners of the native and Kafka
    /// protocols, where the certificate is how a client is known, and ports with their own TLS
    /// settings (the saga API's, the bridge's).
    tls: Arc<ServerConfig>,
    /// Without client certificates, for listeners that know their clients otherwise:
    /// `SASL_SSL` (SASL; Kafka too asks for no certificate there unless `ssl.client.auth` is
    /// set for that listener) and the broker's HTTPS ports (bearer tokens).
    without_client_auth: Arc<ServerConfig>,
}

impl Material {
    fn build(config: &TlsConfig, alpn: &[Vec<u8>]) -> Result<Material, TlsError> {
        let tls = build(config, alpn)?;
        let without_client_auth = if config.client_auth == ClientAuth::None {
            tls.clone()
        } else {
            let without = TlsConfig {
                client_auth: ClientAuth::None,
                ..config.clone()
            };
            build(&without, alpn)?
        };
        Ok(Material {
            tls,
            without_client_auth,
        })
    }
}

struct Check {
    last: Instant,
    /// The stamps of the files as of the last load attempt, successful or not (a file that
    /// failed to load is tried again when it changes again, not at every check).
    stamps: Stamps,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate, key and (with client authentication) CA bundle; fails with the
    /// file and the reason when any of them is missing or unusable.
    pub fn new(config: TlsConfig) -> Result<Arc<ServerTls>, TlsError> {
        ServerTls::with_alpn(config, Vec::new())
    }

    /// As [`ServerTls::new`], offering `alpn` protocols (e.g. `http/1.1` for an HTTP port).
    pub fn with_alpn(config: TlsConfig, alpn: Vec<Vec<u8>>) -> Result<Arc<ServerTls>, TlsError> {
        config.validate(true).map_err(TlsError::Invalid)?;
        let stamps = stamps(&config);
        let material = Material::build(&config, &alpn)?;
        Ok(Arc::new(ServerTls {
            config,
            alpn,
            current: RwLock::new(material),
            check: Mutex::new(Check {
                last: Instant::now(),
                stamps,
            }),
        }))
    }

    pub fn client_auth(&self) -> ClientAuth {
        self.config.client_auth
    }

    /// An acceptor with the current material, after reloading it if a file changed since the
    /// last check (looked at most every `reload_check_interval_ms`).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor_for(true)
    }

    /// As [`ServerTls::acceptor`]; with `client_certificates` false, one that never asks for a
    /// client certificate, whatever `client_auth` says (see [`Material`]).
    pub fn acceptor_for(&self, client_certificates: bool) -> TlsAcceptor {
        self.reload_if_changed();
        let current = self.current.read().expect("tls config lock");
        TlsAcceptor::from(if client_certificates {
            current.tls.clone()
        } else {
            current.without_client_auth.clone()
        })
    }

    /// The rustls configuration new connections of `SSL` listeners and HTTPS ports get now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().expect("tls config lock").tls.clone()
    }

    /// Reloads every file now (SIGHUP); on failure logs why and keeps the current material.
    /// Returns whether the new material is in use.
    pub fn reload(&self, why: &str) -> bool {
        let mut check = self.check.lock().expect("tls check lock");
        check.last = Instant::now();
        check.stamps = stamps(&self.config);
        self.load(why)
    }

    fn reload_if_changed(&self) {
        let interval = Duration::from_millis(self.config.reload_check_interval_ms);
        let mut check = self.check.lock().expect("tls check lock");
        if check.last.elapsed() < interval {
            return;
        }
        check.last = Instant::now();
        let now = stamps(&self.config);
        if now == check.stamps {
            return;
        }
        check.stamps = now;
        self.load("a certificate, key or CA file changed");
    }

    fn load(&self, why: &str) -> bool {
        match Material::build(&self.config, &self.alpn) {
            Ok(material) => {
                *self.current.write().expect("tls config lock") = material;
                tracing::info!(
                    cert_file = ?self.config.cert_file,
                    reason = why,
                    "reloaded TLS certificate and key"
                );
                true
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    reason = why,
                    "reloading TLS material failed; still serving the previous certificate"
                );
                false
            }
        }
    }
}

fn files(config: &TlsConfig) -> impl Iterator<Item = &PathBuf> {
    [&config.cert_file, &config.key_file, &config.client_ca_file]
        .into_iter()
        .flatten()
}

fn stamps(config: &TlsConfig) -> Stamps {
    files(config)
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// The process's crypto provider for TLS: rustls's ring provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file within [`PEM_FILE_BYTES_MAX`].
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Every certificate in a PEM file, in order; an error if there is none.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "CERTIFICATE block",
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_path_buf(),
            what: "PRIVATE KEY block",
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// A root store with every certificate of a PEM bundle.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: format!("CA certificate in {}", path.display()),
            source,
        })?;
    }
    Ok(roots)
}

fn build(config: &TlsConfig, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Err(TlsError::Invalid(
            "tls.cert_file and tls.key_file are required".into(),
        ));
    };
    let certs = load_certificates(cert_file)?;
    let key = load_private_key(key_file)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS protocol versions".into(),
            source,
        })?;
    let builder = match (config.client_auth, &config.client_ca_file) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (auth, Some(ca_file)) => {
            let roots = Arc::new(load_roots(ca_file)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca_file.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        (_, None) => {
            return Err(TlsError::Invalid(
                "tls.client_auth needs tls.client_ca_file".into(),
            ))
        }
    };
    let mut server_config =
        builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::Rustls {
                what: format!(
                    "certificate {} with key {}",
                    cert_file.display(),
                    key_file.display()
                ),
                source,
            })?;
    server_config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(server_config))
}

/// The principal a verified client certificate stands for: `User:<CN>`, the first common name
/// of its subject. A subject without a common name maps to its whole distinguished name in RFC
/// 4514 form (`User:O=Example,C=DE`), as Kafka's default principal builder does; a certificate
/// that cannot be parsed maps to `None` (it was verified, so this does not happen in practice).
pub fn principal_from_certificate(cert: &CertificateDer<'_>) -> Option<Principal> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty());
    Some(match common_name {
        Some(cn) => Principal::user(cn),
        None => Principal::user(subject.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str], cn: Option<&str>) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Strand Tests");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn the_principal_is_the_subject_common_name() {
        let (pem, _) = self_signed(&["localhost"], Some("alice"));
        let cert = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(
            principal_from_certificate(&cert),
            Some(Principal::user("alice"))
        );
        let (pem, _) = self_signed(&["localhost"], None);
        let cert = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(
            principal_from_certificate(&cert),
            Some(Principal::user("O=Strand Tests"))
        );
        assert_eq!(
            principal_from_certificate(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            None
        );
    }

    #[test]
    fn settings_that_do_not_go_together_are_refused() {
        let config = TlsConfig::default();
        assert!(config.validate(false).is_ok());
        assert!(config.validate(true).unwrap_err().contains("cert_file"));
        let config = TlsConfig {
            cert_file: Some("c.pem".into()),
            ..TlsConfig::default()
        };
        assert!(config.validate(false).unwrap_err().contains("go together"));
        let config = TlsConfig {
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            client_auth: ClientAuth::Required,
            ..TlsConfig::default()
        };
        assert!(config
            .validate(true)
            .unwrap_err()
            .contains("client_ca_file"));
        let config = TlsConfig {
            client_ca_file: Some("ca.pem".into()),
            client_auth: ClientAuth::None,
            ..config
        };
        assert!(config.validate(true).unwrap_err().contains("client_auth"));
        assert!("sometimes".parse::<ClientAuth>().is_err());
    }

    #[test]
    fn bad_files_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&["localhost"], Some("broker"));
        let (_, other_key) = self_signed(&["localhost"], Some("other"));
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        let config = TlsConfig {
            cert_file: Some(cert_file.clone()),
            key_file: Some(key_file.clone()),
            ..TlsConfig::default()
        };
        let tls = ServerTls::new(config.clone()).unwrap();
        let before = tls.current();

        // Missing file.
        let missing = TlsConfig {
            key_file: Some(dir.path().join("nope.pem")),
            ..config.clone()
        };
        let err = ServerTls::new(missing).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
        // A certificate file without a certificate.
        std::fs::write(&cert_file, "not pem at all").unwrap();
        let err = ServerTls::new(config.clone()).unwrap_err().to_string();
        assert!(
            err.contains("cert.pem") && err.contains("CERTIFICATE"),
            "{err}"
        );
        // A file far too large.
        std::fs::write(&cert_file, vec![b'x'; PEM_FILE_BYTES_MAX as usize + 1]).unwrap();
        let err = ServerTls::new(config.clone()).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        // A key that is not the certificate's.
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &other_key).unwrap();
        let err = ServerTls::new(config.clone()).unwrap_err().to_string();
        assert!(err.contains("cert.pem"), "{err}");

        // A reload that fails keeps the material that worked.
        assert!(!tls.reload("test"));
        assert!(Arc::ptr_eq(&before, &tls.current()));
        std::fs::write(&key_file, &key).unwrap();
        assert!(tls.reload("test"));
        assert!(!Arc::ptr_eq(&before, &tls.current()));
    }
}
