//! SASL mechanisms Strand speaks on both protocols: PLAIN (RFC 4616) and SCRAM (see
//! [`crate::scram`]), and the client's settings for them.

use std::fmt;
use std::str::FromStr;

use crate::scram::ScramMechanism;

/// A SASL mechanism, by its IANA name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    /// The password itself, once: only over TLS in production.
    Plain,
    Scram(ScramMechanism),
}

impl Mechanism {
    /// Every mechanism, in the order brokers list them.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::Scram(ScramMechanism::Sha256),
        Mechanism::Scram(ScramMechanism::Sha512),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Mechanism, String> {
        if s.eq_ignore_ascii_case("PLAIN") {
            return Ok(Mechanism::Plain);
        }
        s.parse().map(Mechanism::Scram).map_err(|_| {
            format!("SASL mechanism {s:?} is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        })
    }
}

/// How a client authenticates: a mechanism, a user and a password.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslConfig {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslConfig")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Reads a password file: its first line, without the line ending. An empty password is an
/// error, so that an empty or mistyped file is not taken for a password.
pub fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading password file {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or("");
    if password.is_empty() {
        return Err(format!(
            "password file {} has an empty first line",
            path.display()
        ));
    }
    Ok(password.to_string())
}

/// Longest PLAIN message accepted, in bytes.
pub const PLAIN_MESSAGE_BYTES_MAX: usize = 4096;

/// The PLAIN message: `authzid NUL authcid NUL password`, with an empty authzid.
pub fn plain_message(username: &str, password: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(username.len() + password.len() + 2);
    message.push(0);
    message.extend_from_slice(username.as_bytes());
    message.push(0);
    message.extend_from_slice(password.as_bytes());
    message
}

/// A parsed PLAIN message.
#[derive(PartialEq, Eq)]
pub struct PlainMessage {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for PlainMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainMessage")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Parses a PLAIN message. An authorization id, if present, must be the user name (as Kafka
/// requires); user name and password must be non-empty UTF-8.
pub fn parse_plain(message: &[u8]) -> Result<PlainMessage, String> {
    if message.len() > PLAIN_MESSAGE_BYTES_MAX {
        return Err(format!(
            "PLAIN message of {} bytes is over the limit of {PLAIN_MESSAGE_BYTES_MAX}",
            message.len()
        ));
    }
    let text = std::str::from_utf8(message).map_err(|_| "PLAIN message is not UTF-8")?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(username), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("PLAIN message must be authzid NUL user NUL password".into());
    };
    if username.is_empty() || password.is_empty() {
        return Err("PLAIN user name and password must not be empty".into());
    }
    if !authzid.is_empty() && authzid != username {
        return Err("PLAIN authorization id must be empty or the user name".into());
    }
    Ok(PlainMessage {
        username: username.into(),
        password: password.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mechanisms_parse_and_print() {
        for m in Mechanism::ALL {
            assert_eq!(m.name().parse::<Mechanism>().unwrap(), m);
        }
        assert_eq!(
            "scram-sha-512".parse::<Mechanism>().unwrap(),
            Mechanism::Scram(ScramMechanism::Sha512)
        );
        assert!("GSSAPI".parse::<Mechanism>().is_err());
    }

    #[test]
    fn plain_messages_round_trip_and_bad_ones_are_refused() {
        let parsed = parse_plain(&plain_message("alice", "s3cret")).unwrap();
        assert_eq!(
            (parsed.username.as_str(), parsed.password.as_str()),
            ("alice", "s3cret")
        );
        assert!(parse_plain(b"alice\0alice\0pw").is_ok());
        assert!(parse_plain(b"bob\0alice\0pw").is_err());
        assert!(parse_plain(b"\0alice").is_err());
        assert!(parse_plain(b"\0alice\0pw\0").is_err());
        assert!(parse_plain(b"\0\0pw").is_err());
        assert!(parse_plain(&[0, 0xff, 0, b'p']).is_err());
        assert!(
            format!("{parsed:?}").contains("alice") && !format!("{parsed:?}").contains("s3cret")
        );
    }

    proptest! {
        #[test]
        fn hostile_plain_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_plain(&bytes);
        }
    }
}
