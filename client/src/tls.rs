//! TLS for client connections (rustls with the ring provider): the broker's certificate is
//! verified against a CA bundle, and a client certificate is presented when one is configured
//! (the broker then takes the connection's principal from its subject's common name).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::ClientError;

/// Largest PEM file read: larger is a configuration mistake, not a certificate or key.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// How to reach a broker's TLS listener (`SSL` or `SASL_SSL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsConfig {
    /// PEM bundle of the CAs the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// PEM certificate (and chain) to present to a broker that asks for one; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry; default: the host of the address
    /// connected to (a name or an IP address).
    pub server_name: Option<String>,
}

impl ClientTlsConfig {
    /// Reads the files and builds the rustls configuration; every file is read again at each
    /// call, so a reconnect picks up a renewed client certificate.
    pub fn connector(&self) -> Result<TlsConnector, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(&self.ca_file)? {
            roots.add(cert).map_err(|e| {
                tls_error(format!("CA certificate in {}", self.ca_file.display()), e)
            })?;
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS protocol versions".into(), e))?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_file), Some(key_file)) => {
                let key = PrivateKeyDer::from_pem_slice(&read(key_file)?)
                    .map_err(|e| tls_error(format!("private key in {}", key_file.display()), e))?;
                builder
                    .with_client_auth_cert(certificates(cert_file)?, key)
                    .map_err(|e| {
                        tls_error(
                            format!(
                                "client certificate {} with key {}",
                                cert_file.display(),
                                key_file.display()
                            ),
                            e,
                        )
                    })?
            }
            _ => {
                return Err(ClientError::Invalid(
                    "a TLS client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// The name to verify the broker's certificate against, for a connection to `addr`
    /// (`host:port`, `[v6]:port`).
    pub fn server_name(&self, addr: &str) -> Result<ServerName<'static>, ClientError> {
        let host = match &self.server_name {
            Some(name) => name.as_str(),
            None => addr
                .rsplit_once(':')
                .map_or(addr, |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']'),
        };
        ServerName::try_from(host.to_string())
            .map_err(|e| tls_error(format!("TLS server name {host:?}"), e))
    }

    /// Connects TLS over `socket`.
    pub async fn connect(
        &self,
        addr: &str,
        socket: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let connector = self.connector()?;
        let name = self.server_name(addr)?;
        Ok(connector.connect(name, socket).await?)
    }
}

fn tls_error(what: String, source: impl std::error::Error + Send + Sync + 'static) -> ClientError {
    ClientError::Tls {
        what,
        source: Box::new(source),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| tls_error(path.display().to_string(), e))?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| tls_error(path.display().to_string(), e))?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(ClientError::Invalid(format!(
            "{} is larger than {PEM_FILE_BYTES_MAX} bytes, which no PEM file of certificates is",
            path.display()
        )));
    }
    Ok(bytes)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path.display().to_string(), e))?;
    if certs.is_empty() {
        return Err(ClientError::Invalid(format!(
            "{} holds no CERTIFICATE block",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_connected_to() {
        let config = ClientTlsConfig {
            ca_file: "ca.pem".into(),
            cert_file: None,
            key_file: None,
            server_name: None,
        };
        let name = |addr| config.server_name(addr).unwrap().to_str().into_owned();
        assert_eq!(name("broker.example:7171"), "broker.example");
        assert_eq!(name("127.0.0.1:7171"), "127.0.0.1");
        assert_eq!(name("[::1]:7171"), "::1");
        let config = ClientTlsConfig {
            server_name: Some("other.example".into()),
            ..config
        };
        assert_eq!(
            config.server_name("127.0.0.1:1").unwrap().to_str(),
            "other.example"
        );
        let config = ClientTlsConfig {
            server_name: Some("not a name!".into()),
            ..config
        };
        assert!(config.server_name("127.0.0.1:1").is_err());
    }

    #[test]
    fn missing_and_empty_ca_files_are_refused() {
        let config = ClientTlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            cert_file: None,
            key_file: None,
            server_name: None,
        };
        let Err(err) = config.connector() else {
            panic!("a missing CA file was accepted")
        };
        let err = err.to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let config = ClientTlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            cert_file: None,
            key_file: None,
            server_name: None,
        };
        // A CA file without a certificate is refused, naming what it lacks.
        let dir = std::env::temp_dir().join(format!("strand-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, "garbage").unwrap();
        let err = ClientTlsConfig {
            ca_file: ca_file.clone(),
            ..config
        }
        .connector()
        .err()
        .expect("a CA file without a certificate was accepted")
        .to_string();
        assert!(err.contains("CERTIFICATE"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
