//! Who is on the other end of a connection, and what they may do.
//!
//! - [`Principal`]: the identity requests are authorized as (`User:alice`), as Kafka names it.
//! - [`SecurityProtocol`]: how a listener is secured, with Kafka's names (`PLAINTEXT`, `SSL`,
//!   `SASL_PLAINTEXT`, `SASL_SSL`); [`ListenerSpec`] is one `PROTOCOL://host:port` entry.
//! - [`Session`]: one connection's protocol, peer and principal. It starts as
//!   [`Principal::anonymous`] (or the client certificate's principal on an `SSL` listener with
//!   client authentication) and becomes the SASL user once a handshake succeeds.
//! - `users`: the SCRAM credential store (`<data_dir>/security/users.json`).
//! - `sasl`: the server's side of a SASL exchange (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512),
//!   which both listeners drive.
//! - [`tls`]: server TLS from PEM files, reloaded without a restart, and the principal of a
//!   client certificate.
//! - [`jwt`]: bearer JWTs for the HTTP APIs (keys, verification, scopes, reloading).
//! - [`acl`]: Kafka-style ACLs, the [`acl::Authorizer`] that checks requests against them, and
//!   their store (`<data_dir>/security/acls.json`).

pub mod acl;
pub mod sasl;
pub mod tls;
pub mod users;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod jwt;

/// An identity, as Kafka writes it: `<type>:<name>`, almost always `User:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal {
    pub kind: String,
    pub name: String,
}

impl Principal {
    /// A user (the only kind Strand's authenticators produce).
    pub fn user(name: impl Into<String>) -> Principal {
        Principal {
            kind: "User".into(),
            name: name.into(),
        }
    }

    /// Kafka's `User:ANONYMOUS`: a connection that has not authenticated.
    pub fn anonymous() -> Principal {
        Principal::user("ANONYMOUS")
    }

    pub fn is_anonymous(&self) -> bool {
        self.kind == "User" && self.name == "ANONYMOUS"
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

impl FromStr for Principal {
    type Err = String;

    fn from_str(s: &str) -> Result<Principal, String> {
        match s.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => Ok(Principal {
                kind: kind.into(),
                name: name.into(),
            }),
            _ => Err(format!(
                "principal {s:?} is not <type>:<name>, e.g. User:alice"
            )),
        }
    }
}

/// How a listener is secured, with Kafka's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    /// No TLS, no authentication: every connection is `User:ANONYMOUS`.
    Plaintext,
    /// TLS; the principal is the client certificate's when client authentication is on.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<SecurityProtocol, String> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => SecurityProtocol::Plaintext,
            "SSL" => SecurityProtocol::Ssl,
            "SASL_PLAINTEXT" => SecurityProtocol::SaslPlaintext,
            "SASL_SSL" => SecurityProtocol::SaslSsl,
            _ => {
                return Err(format!(
                    "security protocol {s:?} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
                ))
            }
        })
    }
}

/// One listener: `PROTOCOL://host:port`, as in Kafka's `listeners`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerSpec {
    pub protocol: SecurityProtocol,
    pub addr: SocketAddr,
}

impl fmt::Display for ListenerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.protocol, self.addr)
    }
}

impl FromStr for ListenerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenerSpec, String> {
        let (protocol, addr) = s
            .split_once("://")
            .ok_or_else(|| format!("listener {s:?} is not PROTOCOL://host:port"))?;
        Ok(ListenerSpec {
            protocol: protocol.parse()?,
            addr: addr
                .parse()
                .map_err(|e| format!("listener {s:?}: address {addr:?}: {e}"))?,
        })
    }
}

impl Serialize for ListenerSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ListenerSpec, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One connection's identity and how it reached the broker.
#[derive(Debug, Clone)]
pub struct Session {
    pub protocol: SecurityProtocol,
    pub peer: SocketAddr,
    /// Who requests are authorized as.
    pub principal: Principal,
    /// Whether a SASL handshake has succeeded on this connection.
    pub sasl_authenticated: bool,
}

impl Session {
    /// A connection that has just been accepted: anonymous until it authenticates.
    pub fn new(protocol: SecurityProtocol, peer: SocketAddr) -> Session {
        Session {
            protocol,
            peer,
            principal: Principal::anonymous(),
            sasl_authenticated: false,
        }
    }

    /// Whether this connection may send requests other than the handshake: on a SASL listener
    /// only once it has authenticated.
    pub fn may_send_requests(&self) -> bool {
        !self.protocol.uses_sasl() || self.sasl_authenticated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_specs_parse_and_print() {
        let spec: ListenerSpec = "sasl_ssl://127.0.0.1:9093".parse().unwrap();
        assert_eq!(spec.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(spec.to_string(), "SASL_SSL://127.0.0.1:9093");
        assert!("TLS://127.0.0.1:1".parse::<ListenerSpec>().is_err());
        assert!("127.0.0.1:1".parse::<ListenerSpec>().is_err());
        assert!("SSL://nowhere".parse::<ListenerSpec>().is_err());
    }

    #[test]
    fn principals_parse_and_print() {
        let p: Principal = "User:alice".parse().unwrap();
        assert_eq!(p, Principal::user("alice"));
        assert_eq!(p.to_string(), "User:alice");
        assert!(Principal::anonymous().is_anonymous());
        assert!("alice".parse::<Principal>().is_err());
    }
}
