//! SCRAM (RFC 5802, RFC 7677) with SHA-256 and SHA-512: both ends of the exchange, and the
//! stored form of a password (salt, iterations, StoredKey, ServerKey), which is all a server
//! keeps.
//!
//! The exchange is three messages: client-first, server-first, client-final, and the
//! server-final that proves the server knew the password too. [`ScramClient`] drives the
//! client's side; [`ScramServer`] the server's, which takes the stored credential of the user
//! the client-first names. No channel binding (`n,,` or `y,,` only) and, as Kafka, no
//! extension is accepted (Kafka's `tokenauth` is refused). User names are escaped as RFC 5802
//! says (`,` is `=2C`, `=` is `=3D`) but not otherwise SASLprep'd, as Kafka does.
//!
//! No maintained crate does SCRAM-SHA-512 under a usable license, so the messages are built
//! here on RustCrypto's `pbkdf2`, `hmac` and `sha2`; proofs are compared in constant time.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Fewest PBKDF2 iterations accepted, on either side: Kafka's minimum (and RFC 7677's
/// recommendation). A server asking for fewer is refused by the client.
pub const ITERATIONS_MIN: u32 = 4096;
/// Most PBKDF2 iterations accepted, on either side (Kafka's maximum): a hostile server cannot
/// make a client spin for minutes, nor a stored credential make every login slow.
pub const ITERATIONS_MAX: u32 = 16_384;
/// Bytes of a freshly drawn salt.
pub const SALT_BYTES: usize = 32;
/// Longest SCRAM message either side accepts, in bytes. Real ones are under 300 bytes.
pub const MESSAGE_BYTES_MAX: usize = 4096;
/// Random bytes in each side's nonce (base64-encoded on the wire).
const NONCE_BYTES: usize = 24;

/// The two SCRAM mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL name: `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Kafka's number for the mechanism in the user SCRAM credential APIs.
    pub fn kafka_type(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_kafka_type(t: i8) -> Option<ScramMechanism> {
        match t {
            1 => Some(ScramMechanism::Sha256),
            2 => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    /// Bytes of the hash (and so of every key and proof).
    pub fn hash_bytes(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }

    /// `Hi(password, salt, i)`: PBKDF2 with HMAC of the mechanism's hash.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.hash_bytes()];
        match self {
            ScramMechanism::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out)
            }
            ScramMechanism::Sha512 => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out)
            }
        }
        out
    }

    /// HMAC with the mechanism's hash.
    pub fn hmac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut mac =
                    Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes a key of any length");
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
            ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

impl fmt::Display for ScramMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScramMechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<ScramMechanism, String> {
        match s.to_ascii_uppercase().as_str() {
            "SCRAM-SHA-256" => Ok(ScramMechanism::Sha256),
            "SCRAM-SHA-512" => Ok(ScramMechanism::Sha512),
            _ => Err(format!(
                "SCRAM mechanism {s:?} is not SCRAM-SHA-256 or SCRAM-SHA-512"
            )),
        }
    }
}

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// The peer's message does not follow RFC 5802; the text says where.
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    /// The peer asks for something this implementation does not do (channel binding, an
    /// extension such as Kafka's `tokenauth`).
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(String),
    /// The client's proof is wrong: wrong password, or no such user.
    #[error("invalid credentials")]
    InvalidProof,
    /// The server's signature is wrong: it does not know the password (or someone is in the
    /// middle).
    #[error("the server's SCRAM signature does not match: it does not know the credential")]
    InvalidServerSignature,
    /// The server answered with `e=...`.
    #[error("the server refused: {0}")]
    ServerError(String),
    /// The server's iteration count is outside [`ITERATIONS_MIN`]..=[`ITERATIONS_MAX`].
    #[error("iteration count {0} outside {ITERATIONS_MIN}..={ITERATIONS_MAX}")]
    Iterations(u32),
}

fn malformed(what: impl Into<String>) -> ScramError {
    ScramError::Malformed(what.into())
}

/// What a server keeps of a password: never the password, nor anything a client could log in
/// with.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub mechanism: ScramMechanism,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys are not secrets a client can log in with, but they allow an offline
        // dictionary attack; keep them out of logs.
        f.debug_struct("StoredCredential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl StoredCredential {
    /// The stored form of `password` with this salt and iteration count.
    pub fn derive(
        mechanism: ScramMechanism,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> StoredCredential {
        let salted = mechanism.salted_password(password, salt, iterations);
        StoredCredential::from_salted_password(mechanism, &salted, salt, iterations)
    }

    /// The stored form from a salted password (`Hi(password, salt, i)`), which is what Kafka's
    /// AlterUserScramCredentials and Strand's UpsertUser carry so that the password itself
    /// never crosses the wire.
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salted_password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> StoredCredential {
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        StoredCredential {
            mechanism,
            salt: salt.to_vec(),
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted_password, b"Server Key"),
        }
    }

    /// The stored form of `password` with a fresh random salt.
    pub fn generate(
        mechanism: ScramMechanism,
        password: &[u8],
        iterations: u32,
    ) -> Result<StoredCredential, ScramError> {
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let mut salt = [0u8; SALT_BYTES];
        random(&mut salt);
        Ok(StoredCredential::derive(
            mechanism, password, &salt, iterations,
        ))
    }

    /// Whether `password` is this credential's, by recomputing the StoredKey (for SASL PLAIN,
    /// which sends the password itself). Costs one PBKDF2; compares in constant time.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let derived =
            StoredCredential::derive(self.mechanism, password, &self.salt, self.iterations);
        bool::from(derived.stored_key.ct_eq(&self.stored_key))
            & bool::from(derived.server_key.ct_eq(&self.server_key))
    }

    /// Whether the key lengths fit the mechanism and the iteration count is within bounds;
    /// what a credential read from a file or the wire must pass before it is used.
    pub fn check(&self) -> Result<(), String> {
        let n = self.mechanism.hash_bytes();
        if self.stored_key.len() != n || self.server_key.len() != n {
            return Err(format!(
                "{} keys must be {n} bytes (stored key {}, server key {})",
                self.mechanism,
                self.stored_key.len(),
                self.server_key.len()
            ));
        }
        if self.salt.is_empty() || self.salt.len() > 1024 {
            return Err(format!(
                "salt of {} bytes is outside 1..=1024",
                self.salt.len()
            ));
        }
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&self.iterations) {
            return Err(format!(
                "iteration count {} outside {ITERATIONS_MIN}..={ITERATIONS_MAX}",
                self.iterations
            ));
        }
        Ok(())
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random(buf: &mut [u8]) {
    // getrandom fails only where the OS has no random source at all; nothing here could
    // continue safely then.
    getrandom::getrandom(buf).expect("the operating system's random source failed");
}

fn nonce() -> String {
    let mut raw = [0u8; NONCE_BYTES];
    random(&mut raw);
    BASE64.encode(raw)
}

/// RFC 5802 `saslname`: `,` and `=` escaped.
pub fn escape_username(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// The inverse of [`escape_username`]; any other `=` sequence is an error.
pub fn unescape_username(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(malformed("'=' in a user name must be =2C or =3D")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn utf8(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MESSAGE_BYTES_MAX {
        return Err(malformed(format!(
            "{} bytes is over the limit of {MESSAGE_BYTES_MAX}",
            message.len()
        )));
    }
    std::str::from_utf8(message).map_err(|_| malformed("not UTF-8"))
}

/// Splits `k=v,k=v` into (key, value) pairs. RFC 5802's attribute names are one letter;
/// extensions (Kafka's `tokenauth=true`) have longer ones, which are parsed so that they can be
/// refused by name.
fn attributes(message: &str) -> Result<Vec<(&str, &str)>, ScramError> {
    message
        .split(',')
        .map(|part| match part.split_once('=') {
            Some((k, v)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                Ok((k, v))
            }
            _ => Err(malformed(format!(
                "attribute {:?} is not a name, '=' and a value",
                part.chars().take(16).collect::<String>()
            ))),
        })
        .collect()
}

/// A nonce: printable ASCII except `,` (RFC 5802), not empty.
fn check_nonce(nonce: &str) -> Result<(), ScramError> {
    if nonce.is_empty()
        || !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(malformed("nonce must be printable ASCII without ','"));
    }
    Ok(())
}

fn decode_base64(what: &str, value: &str) -> Result<Vec<u8>, ScramError> {
    BASE64
        .decode(value)
        .map_err(|e| malformed(format!("{what} is not base64: {e}")))
}

/// The client's side of one exchange. Call [`ScramClient::client_first`], send it, give the
/// answer to [`ScramClient::server_first`], send what it returns, and check the server's last
/// message with [`ScramClientFinal::server_final`].
pub struct ScramClient {
    mechanism: ScramMechanism,
    password: Vec<u8>,
    client_nonce: String,
    client_first_bare: String,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    pub fn new(mechanism: ScramMechanism, username: &str, password: &str) -> ScramClient {
        ScramClient::with_nonce(mechanism, username, password, nonce())
    }

    /// With a given nonce: for the RFC's test vectors.
    fn with_nonce(
        mechanism: ScramMechanism,
        username: &str,
        password: &str,
        client_nonce: String,
    ) -> ScramClient {
        let client_first_bare = format!("n={},r={client_nonce}", escape_username(username));
        ScramClient {
            mechanism,
            password: password.as_bytes().to_vec(),
            client_nonce,
            client_first_bare,
        }
    }

    /// The first message: no channel binding, no authorization id.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Checks the server's first message and computes the client's proof; returns the
    /// client-final message and what checks the server's answer to it.
    pub fn server_first(self, message: &[u8]) -> Result<(Vec<u8>, ScramClientFinal), ScramError> {
        let server_first = utf8(message)?;
        let attrs = attributes(server_first)?;
        if let Some((_, e)) = attrs.iter().find(|(k, _)| *k == "e") {
            return Err(ScramError::ServerError(e.to_string()));
        }
        let (nonce, salt, iterations) = match attrs.as_slice() {
            [("r", r), ("s", s), ("i", i), ..] => (*r, *s, *i),
            [("m", _), ..] => return Err(ScramError::Unsupported("mandatory extension".into())),
            _ => return Err(malformed("server-first must be r=...,s=...,i=...")),
        };
        check_nonce(nonce)?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(malformed("the server's nonce does not extend the client's"));
        }
        let salt = decode_base64("salt", salt)?;
        if salt.is_empty() {
            return Err(malformed("empty salt"));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| malformed("iteration count is not a number"))?;
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let m = self.mechanism;
        let salted = m.salted_password(&self.password, &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        // "biws" is base64("n,,"): no channel binding, no authorization id.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = m.hmac(&salted, b"Server Key");
        let server_signature = m.hmac(&server_key, auth_message.as_bytes());
        let client_final = format!("{without_proof},p={}", BASE64.encode(proof));
        Ok((
            client_final.into_bytes(),
            ScramClientFinal { server_signature },
        ))
    }
}

/// The client's last step: checking the server's signature.
#[derive(Debug)]
pub struct ScramClientFinal {
    server_signature: Vec<u8>,
}

impl ScramClientFinal {
    /// Accepts `v=<signature>` when it is the one only a server holding the credential can
    /// compute.
    pub fn server_final(self, message: &[u8]) -> Result<(), ScramError> {
        let text = utf8(message)?;
        let attrs = attributes(text)?;
        match attrs.first() {
            Some(("e", e)) => Err(ScramError::ServerError(e.to_string())),
            Some(("v", v)) => {
                let signature = decode_base64("server signature", v)?;
                if bool::from(signature.ct_eq(&self.server_signature)) {
                    Ok(())
                } else {
                    Err(ScramError::InvalidServerSignature)
                }
            }
            _ => Err(malformed("server-final must be v=... or e=...")),
        }
    }
}

/// A parsed client-first message: who wants to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user name, unescaped.
    pub username: String,
    client_nonce: String,
    /// The GS2 header (`n,,` or `y,,`), which the client-final's `c=` must repeat.
    gs2_header: String,
    client_first_bare: String,
}

impl ClientFirst {
    /// Parses a client-first message. Refuses channel binding, an authorization id other than
    /// the user name, and extensions (Kafka's `tokenauth` included).
    pub fn parse(message: &[u8]) -> Result<ClientFirst, ScramError> {
        let text = utf8(message)?;
        let (cbind, rest) = text
            .split_once(',')
            .ok_or_else(|| malformed("client-first has no GS2 header"))?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or_else(|| malformed("client-first has no GS2 header"))?;
        let gs2_header = format!("{cbind},{authzid},");
        match cbind {
            "n" | "y" => {}
            _ if cbind.starts_with("p=") => {
                return Err(ScramError::Unsupported("channel binding".into()))
            }
            _ => return Err(malformed("GS2 channel binding flag must be n, y or p=")),
        }
        let authzid = match authzid {
            "" => None,
            a => match a.strip_prefix("a=") {
                Some(a) => Some(unescape_username(a)?),
                None => return Err(malformed("authorization id must be a=...")),
            },
        };
        let attrs = attributes(bare)?;
        let (username, client_nonce) = match attrs.as_slice() {
            [("m", _), ..] => return Err(ScramError::Unsupported("mandatory extension".into())),
            [("n", n), ("r", r)] => (unescape_username(n)?, *r),
            [("n", _), ("r", _), (ext, _), ..] => {
                return Err(ScramError::Unsupported(format!(
                    "extension {ext:?} (tokenauth and other extensions are not supported)"
                )))
            }
            _ => return Err(malformed("client-first must be n=...,r=...")),
        };
        if username.is_empty() {
            return Err(malformed("empty user name"));
        }
        check_nonce(client_nonce)?;
        if let Some(authzid) = authzid {
            if authzid != username {
                return Err(ScramError::Unsupported(
                    "an authorization id other than the user name".into(),
                ));
            }
        }
        Ok(ClientFirst {
            username,
            client_nonce: client_nonce.to_string(),
            gs2_header,
            client_first_bare: bare.to_string(),
        })
    }
}

/// The server's side of one exchange, after the client-first: built with the user's stored
/// credential (or a fake one for an unknown user, so that the client cannot tell the two
/// apart), it answers server-first and then checks the client's proof.
pub struct ScramServer {
    credential: StoredCredential,
    first: ClientFirst,
    nonce: String,
    server_first: String,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("username", &self.first.username)
            .field("mechanism", &self.credential.mechanism)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Starts the server side with the credential to check against; returns the state and the
    /// server-first message.
    pub fn new(first: ClientFirst, credential: StoredCredential) -> (ScramServer, Vec<u8>) {
        ScramServer::with_nonce(first, credential, nonce())
    }

    fn with_nonce(
        first: ClientFirst,
        credential: StoredCredential,
        server_nonce: String,
    ) -> (ScramServer, Vec<u8>) {
        let nonce = format!("{}{server_nonce}", first.client_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credential.salt),
            credential.iterations
        );
        let message = server_first.clone().into_bytes();
        (
            ScramServer {
                credential,
                first,
                nonce,
                server_first,
            },
            message,
        )
    }

    pub fn username(&self) -> &str {
        &self.first.username
    }

    /// Checks the client-final message. On success returns the server-final message (`v=`),
    /// which the client checks to know the server held the credential.
    pub fn client_final(self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = utf8(message)?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| malformed("client-final has no proof"))?;
        let attrs = attributes(without_proof)?;
        let (channel_binding, nonce) = match attrs.as_slice() {
            [("c", c), ("r", r)] => (*c, *r),
            [("c", _), ("r", _), (ext, _), ..] => {
                return Err(ScramError::Unsupported(format!("extension {ext:?}")))
            }
            _ => return Err(malformed("client-final must be c=...,r=...,p=...")),
        };
        if decode_base64("channel binding", channel_binding)? != self.first.gs2_header.as_bytes() {
            return Err(malformed("channel binding does not repeat the GS2 header"));
        }
        // RFC 5802 wants the nonce exactly; librdkafka sends its own nonce in front of the
        // server's whole one (which already starts with it), and Kafka accepts any nonce that
        // ends with the server's, so Strand does too. The proof covers the nonce as sent.
        if !nonce.ends_with(&self.nonce) {
            return Err(malformed("nonce does not match the exchange's"));
        }
        let proof = decode_base64("proof", proof)?;
        let m = self.credential.mechanism;
        if proof.len() != m.hash_bytes() {
            return Err(ScramError::InvalidProof);
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.first.client_first_bare, self.server_first
        );
        let client_signature = m.hmac(&self.credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if !bool::from(m.hash(&client_key).ct_eq(&self.credential.stored_key)) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = m.hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 7677 section 3: user "user", password "pencil", 4096 iterations.
    #[test]
    fn rfc_7677_example() {
        let client = ScramClient::with_nonce(
            ScramMechanism::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        assert_eq!(client.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, last) = client.server_first(server_first).unwrap();
        assert_eq!(
            std::str::from_utf8(&client_final).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        last.server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();

        // The server's side with the same nonce and salt produces the same messages.
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential = StoredCredential::derive(ScramMechanism::Sha256, b"pencil", &salt, 4096);
        let first = ClientFirst::parse(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.username, "user");
        let (server, message) =
            ScramServer::with_nonce(first, credential, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into());
        assert_eq!(message, server_first);
        let server_final = server.client_final(&client_final).unwrap();
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    fn exchange(
        mechanism: ScramMechanism,
        user: &str,
        stored_password: &str,
        given_password: &str,
    ) -> Result<(), ScramError> {
        let credential =
            StoredCredential::generate(mechanism, stored_password.as_bytes(), ITERATIONS_MIN)
                .unwrap();
        let client = ScramClient::new(mechanism, user, given_password);
        let first = ClientFirst::parse(&client.client_first())?;
        assert_eq!(first.username, user);
        let (server, server_first) = ScramServer::new(first, credential);
        let (client_final, last) = client.server_first(&server_first)?;
        let server_final = server.client_final(&client_final)?;
        last.server_final(&server_final)
    }

    #[test]
    fn both_mechanisms_round_trip_and_refuse_a_wrong_password() {
        for m in ScramMechanism::ALL {
            exchange(m, "alice", "secret", "secret").unwrap();
            exchange(m, "we,ird=name", "pässwörd", "pässwörd").unwrap();
            assert_eq!(
                exchange(m, "alice", "secret", "Secret"),
                Err(ScramError::InvalidProof)
            );
        }
    }

    /// librdkafka's client-final repeats its nonce in front of the server's (which Kafka
    /// accepts); the proof is computed over what it sent, so the exchange still verifies.
    #[test]
    fn librdkafkas_doubled_nonce_is_accepted() {
        let m = ScramMechanism::Sha256;
        let credential = StoredCredential::derive(m, b"pw", b"salt", 4096);
        let first = ClientFirst::parse(b"n,,n=u,r=cnonce").unwrap();
        let (server, server_first) = ScramServer::with_nonce(first, credential, "snonce".into());
        assert_eq!(server_first, b"r=cnoncesnonce,s=c2FsdA==,i=4096");
        let salted = m.salted_password(b"pw", b"salt", 4096);
        let client_key = m.hmac(&salted, b"Client Key");
        let without_proof = "c=biws,r=cnoncecnoncesnonce";
        let auth_message = format!("n=u,r=cnonce,r=cnoncesnonce,s=c2FsdA==,i=4096,{without_proof}");
        let signature = m.hmac(&m.hash(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let client_final = format!("{without_proof},p={}", BASE64.encode(proof));
        server.client_final(client_final.as_bytes()).unwrap();
    }

    #[test]
    fn a_server_without_the_credential_is_caught_by_the_client() {
        let m = ScramMechanism::Sha512;
        let client = ScramClient::new(m, "alice", "secret");
        let first = ClientFirst::parse(&client.client_first()).unwrap();
        // The impostor knows the salt and iterations but not the keys.
        let real = StoredCredential::generate(m, b"secret", ITERATIONS_MIN).unwrap();
        let (_, server_first) = ScramServer::new(first, real.clone());
        let (_, last) = client.server_first(&server_first).unwrap();
        let forged = format!("v={}", BASE64.encode(vec![7u8; 64]));
        assert_eq!(
            last.server_final(forged.as_bytes()),
            Err(ScramError::InvalidServerSignature)
        );
    }

    #[test]
    fn plain_passwords_verify_against_the_stored_form() {
        let c = StoredCredential::generate(ScramMechanism::Sha256, b"pw", 4096).unwrap();
        assert!(c.verify_password(b"pw"));
        assert!(!c.verify_password(b"pw "));
        assert!(c.check().is_ok());
        assert!(StoredCredential::generate(ScramMechanism::Sha256, b"pw", 4095).is_err());
    }

    #[test]
    fn user_names_are_escaped_and_bad_escapes_refused() {
        assert_eq!(escape_username("a,b=c"), "a=2Cb=3Dc");
        assert_eq!(unescape_username("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert!(unescape_username("a=2").is_err());
        assert!(unescape_username("a=41").is_err());
    }

    #[test]
    fn unsupported_features_are_refused() {
        assert!(matches!(
            ClientFirst::parse(b"n,,n=alice,r=abc,tokenauth=true"),
            Err(ScramError::Unsupported(_))
        ));
        assert!(matches!(
            ClientFirst::parse(b"p=tls-unique,,n=alice,r=abc"),
            Err(ScramError::Unsupported(_))
        ));
        assert!(matches!(
            ClientFirst::parse(b"n,a=bob,n=alice,r=abc"),
            Err(ScramError::Unsupported(_))
        ));
        assert!(ClientFirst::parse(b"n,a=alice,n=alice,r=abc").is_ok());
        assert!(matches!(
            ClientFirst::parse(b"n,,m=x,n=alice,r=abc"),
            Err(ScramError::Unsupported(_))
        ));
        assert!(ClientFirst::parse(b"n,,n=,r=abc").is_err());
        assert!(ClientFirst::parse(&vec![b'a'; MESSAGE_BYTES_MAX + 1]).is_err());
    }

    #[test]
    fn a_hostile_server_cannot_ask_for_endless_iterations() {
        let client = ScramClient::new(ScramMechanism::Sha256, "u", "p");
        let nonce = std::str::from_utf8(&client.client_first()).unwrap()[7..].to_string();
        let message = format!("{nonce}xyz,s=c2FsdA==,i=4000000000");
        assert_eq!(
            client.server_first(message.as_bytes()).unwrap_err(),
            ScramError::Iterations(4_000_000_000)
        );
    }

    proptest! {
        // The last test runs two PBKDF2 derivations per case.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn hostile_client_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ClientFirst::parse(&bytes);
            let first = ClientFirst::parse(b"n,,n=u,r=abc").unwrap();
            // Made-up keys: what is checked is the parsing, which comes first.
            let credential = StoredCredential {
                mechanism: ScramMechanism::Sha256,
                salt: b"salt".to_vec(),
                iterations: 4096,
                stored_key: vec![1; 32],
                server_key: vec![2; 32],
            };
            let (server, _) = ScramServer::new(first, credential);
            let _ = server.client_final(&bytes);
        }

        #[test]
        fn hostile_server_messages_never_panic(text in "[a-z=,0-9A-Z+/]{0,200}") {
            let client = ScramClient::new(ScramMechanism::Sha512, "u", "p");
            let _ = client.server_first(text.as_bytes());
            let last = ScramClientFinal { server_signature: vec![0; 64] };
            let _ = last.server_final(text.as_bytes());
        }

        #[test]
        fn damaged_client_finals_are_refused(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let m = ScramMechanism::Sha256;
            let credential = StoredCredential::derive(m, b"p", b"salt", 4096);
            let client = ScramClient::new(m, "u", "p");
            let first = ClientFirst::parse(&client.client_first()).unwrap();
            let (server, server_first) = ScramServer::new(first, credential);
            let (mut client_final, _) = client.server_first(&server_first).unwrap();
            let i = at.index(client_final.len());
            prop_assume!(client_final[i] != byte);
            client_final[i] = byte;
            prop_assert!(server.client_final(&client_final).is_err());
        }
    }
}
