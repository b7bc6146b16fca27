//! The server's side of a SASL exchange, whatever protocol carries its tokens: the Kafka
//! listener (`kafka::sasl`) and the native one (`server`) both drive an [`Exchange`] with the
//! client's tokens until it names the authenticated user or fails.
//!
//! Every failure (wrong password, unknown user, malformed token) is answered only after
//! [`Authenticator::failure_delay`], as Kafka's `connection.failed.authentication.delay.ms`,
//! which slows down guessing; an unknown user runs the same SCRAM exchange (with a fake salt)
//! and the same PBKDF2 for PLAIN as a known one, so the answer does not tell them apart.

use std::sync::Arc;
use std::time::Duration;

use strand_client::sasl::{parse_plain, Mechanism};
use strand_client::scram::{ClientFirst, ScramError, ScramMechanism, ScramServer};

use super::users::Users;

/// Longest SASL token a client may send, in bytes. Real ones are under 300 bytes.
pub const TOKEN_BYTES_MAX: usize = 8192;

/// What the listeners authenticate against.
#[derive(Debug)]
pub struct Authenticator {
    pub users: Arc<Users>,
    /// Mechanisms clients may use, in the order they are listed to clients.
    pub mechanisms: Vec<Mechanism>,
    /// How long a failed authentication waits before it is answered.
    pub failure_delay: Duration,
}

impl Authenticator {
    /// The enabled mechanism called `name`, if any.
    pub fn mechanism(&self, name: &str) -> Option<Mechanism> {
        name.parse::<Mechanism>()
            .ok()
            .filter(|m| self.mechanisms.contains(m))
    }

    pub fn mechanism_names(&self) -> Vec<&'static str> {
        self.mechanisms.iter().map(|m| m.name()).collect()
    }
}

/// Why an exchange failed. The text is what the client is told: it never says whether the
/// user exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthenticationFailed(pub String);

/// What a step of the exchange gives back.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this token and wait for the client's next one.
    Continue(Vec<u8>),
    /// Authenticated as `user`; send this last token (empty for PLAIN).
    Done { user: String, token: Vec<u8> },
}

#[derive(Debug)]
enum State {
    Start,
    /// SCRAM: server-first sent, waiting for client-final.
    ScramFirstSent(Box<ScramServer>),
    /// Succeeded or failed: no more tokens.
    Finished,
}

/// One connection's exchange for the mechanism its handshake chose.
#[derive(Debug)]
pub struct Exchange {
    mechanism: Mechanism,
    state: State,
}

impl Exchange {
    pub fn new(mechanism: Mechanism) -> Exchange {
        Exchange {
            mechanism,
            state: State::Start,
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Takes the client's next token. A failure ends the exchange (and, as the callers do,
    /// the connection).
    pub async fn step(
        &mut self,
        auth: &Authenticator,
        token: &[u8],
    ) -> Result<Step, AuthenticationFailed> {
        let result = self.step_inner(auth, token).await;
        match &result {
            Ok(Step::Continue(_)) => {}
            Ok(Step::Done { .. }) => self.state = State::Finished,
            Err(e) => {
                self.state = State::Finished;
                tracing::info!(mechanism = %self.mechanism, reason = %e, "SASL authentication failed");
                tokio::time::sleep(auth.failure_delay).await;
            }
        }
        result
    }

    async fn step_inner(
        &mut self,
        auth: &Authenticator,
        token: &[u8],
    ) -> Result<Step, AuthenticationFailed> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthenticationFailed(format!(
                "SASL token of {} bytes is over the limit of {TOKEN_BYTES_MAX}",
                token.len()
            )));
        }
        let invalid = || {
            AuthenticationFailed(format!(
                "Authentication failed: invalid credentials with SASL mechanism {}",
                self.mechanism
            ))
        };
        match (
            std::mem::replace(&mut self.state, State::Finished),
            self.mechanism,
        ) {
            (State::Start, Mechanism::Plain) => {
                let plain = parse_plain(token).map_err(AuthenticationFailed)?;
                let users = auth.users.clone();
                let username = plain.username.clone();
                // PBKDF2 takes milliseconds: off the async threads.
                let ok = tokio::task::spawn_blocking(move || {
                    users.verify_plain(&plain.username, &plain.password)
                })
                .await
                .map_err(|e| AuthenticationFailed(format!("internal error: {e}")))?;
                if !ok {
                    return Err(invalid());
                }
                Ok(Step::Done {
                    user: username,
                    token: Vec::new(),
                })
            }
            (State::Start, Mechanism::Scram(m)) => {
                let first = ClientFirst::parse(token).map_err(scram_failure(m))?;
                auth.users
                    .check_name(&first.username)
                    .map_err(|e| AuthenticationFailed(e.to_string()))?;
                let credential = auth.users.credential_or_fake(&first.username, m);
                let (server, server_first) = ScramServer::new(first, credential);
                self.state = State::ScramFirstSent(Box::new(server));
                Ok(Step::Continue(server_first))
            }
            (State::ScramFirstSent(server), Mechanism::Scram(m)) => {
                let user = server.username().to_string();
                match server.client_final(token) {
                    Ok(server_final) => Ok(Step::Done {
                        user,
                        token: server_final,
                    }),
                    Err(ScramError::InvalidProof) => Err(invalid()),
                    Err(e) => Err(scram_failure(m)(e)),
                }
            }
            (State::ScramFirstSent(_), Mechanism::Plain) => {
                unreachable!("PLAIN never waits for a second token")
            }
            (State::Finished, _) => Err(AuthenticationFailed(
                "the SASL exchange is already over".into(),
            )),
        }
    }
}

fn scram_failure(m: ScramMechanism) -> impl Fn(ScramError) -> AuthenticationFailed {
    move |e| AuthenticationFailed(format!("{m} authentication failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::users::UsersConfig;
    use strand_client::sasl::plain_message;
    use strand_client::scram::ScramClient;

    fn authenticator(dir: &std::path::Path) -> Authenticator {
        let users = Users::open(dir, UsersConfig::default()).unwrap();
        users
            .upsert_password("alice", ScramMechanism::Sha512, "secret", None)
            .unwrap();
        Authenticator {
            users: Arc::new(users),
            mechanisms: Mechanism::ALL.to_vec(),
            failure_delay: Duration::from_millis(1),
        }
    }

    async fn scram(auth: &Authenticator, user: &str, password: &str) -> Result<Step, String> {
        let m = ScramMechanism::Sha512;
        let mut exchange = Exchange::new(Mechanism::Scram(m));
        let client = ScramClient::new(m, user, password);
        let Step::Continue(server_first) = exchange
            .step(auth, &client.client_first())
            .await
            .map_err(|e| e.0)?
        else {
            panic!("SCRAM needs two steps");
        };
        let (client_final, last) = client.server_first(&server_first).unwrap();
        let step = exchange.step(auth, &client_final).await.map_err(|e| e.0)?;
        if let Step::Done { token, .. } = &step {
            last.server_final(token).unwrap();
        }
        Ok(step)
    }

    #[tokio::test]
    async fn unknown_users_and_wrong_passwords_fail_alike() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(dir.path());
        assert!(matches!(
            scram(&auth, "alice", "secret").await,
            Ok(Step::Done { user, .. }) if user == "alice"
        ));
        let wrong = scram(&auth, "alice", "guess").await.unwrap_err();
        let unknown = scram(&auth, "mallory", "guess").await.unwrap_err();
        assert_eq!(wrong, unknown);
        assert!(wrong.contains("invalid credentials"), "{wrong}");
    }

    #[tokio::test]
    async fn plain_checks_the_scram_credential() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(dir.path());
        let mut ok = Exchange::new(Mechanism::Plain);
        assert_eq!(
            ok.step(&auth, &plain_message("alice", "secret")).await,
            Ok(Step::Done {
                user: "alice".into(),
                token: vec![]
            })
        );
        assert!(ok.step(&auth, b"again").await.is_err(), "over is over");
        let mut bad = Exchange::new(Mechanism::Plain);
        let wrong = bad
            .step(&auth, &plain_message("alice", "nope"))
            .await
            .unwrap_err();
        let mut unknown = Exchange::new(Mechanism::Plain);
        let unknown = unknown
            .step(&auth, &plain_message("bob", "nope"))
            .await
            .unwrap_err();
        assert_eq!(wrong, unknown);
    }

    #[tokio::test]
    async fn hostile_tokens_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(dir.path());
        for token in [
            vec![0u8; TOKEN_BYTES_MAX + 1],
            vec![0xff; 40],
            b"n,,n=alice,r=x,tokenauth=true".to_vec(),
            Vec::new(),
        ] {
            for m in Mechanism::ALL {
                let mut e = Exchange::new(m);
                assert!(e.step(&auth, &token).await.is_err(), "{m} {token:?}");
            }
        }
    }
}
