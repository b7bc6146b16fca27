//! SASL on the Kafka listener: SaslHandshake (v0-v1), SaslAuthenticate (v0-v2), and the user
//! admin APIs DescribeUserScramCredentials and AlterUserScramCredentials.
//!
//! On a `SASL_PLAINTEXT` or `SASL_SSL` listener a connection may send only ApiVersions,
//! SaslHandshake and SaslAuthenticate until it has authenticated; anything else closes it, as
//! Kafka does. After a SaslHandshake v1 the tokens travel in SaslAuthenticate requests; after a
//! v0 one (old clients, kafka-python 2.0 among them) they travel as bare length-prefixed
//! frames with no Kafka header, and the answers too (`connection` reads them with
//! [`SaslState::expects_raw_token`]). A failed authentication is answered
//! SASL_AUTHENTICATION_FAILED (raw framing has no way to say it: the connection just closes)
//! and the connection is closed; so is an unknown mechanism (UNSUPPORTED_SASL_MECHANISM,
//! with the enabled ones listed) and a handshake out of order (ILLEGAL_SASL_STATE).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use strand_client::scram::{ScramMechanism, StoredCredential};

use super::Context;
use crate::security::sasl::{Exchange, Step};
use crate::security::users::UsersError;
use crate::security::{Principal, Session};

/// Where a connection is in its SASL exchange.
#[derive(Debug, Default)]
pub(super) enum SaslState {
    /// No handshake yet.
    #[default]
    Start,
    /// A mechanism was chosen; tokens come in SaslAuthenticate requests, or bare (`raw`) after
    /// a SaslHandshake v0.
    Authenticating { exchange: Exchange, raw: bool },
    /// Authenticated (or, on a listener without SASL, never to be).
    Done,
}

impl SaslState {
    /// Whether the next frame is a bare SASL token rather than a Kafka request.
    pub(super) fn expects_raw_token(&self) -> bool {
        matches!(self, SaslState::Authenticating { raw: true, .. })
    }
}

/// An answer, and the reason to close the connection once it is written, if any.
pub(super) type Answer<T> = (T, Option<String>);

fn text(s: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(s.into()))
}

pub(super) fn handshake(
    cx: &Context,
    state: &mut SaslState,
    session: &Session,
    request: SaslHandshakeRequest,
    version: i16,
) -> Answer<SaslHandshakeResponse> {
    let mechanisms = cx
        .config
        .authenticator
        .as_ref()
        .map(|a| a.mechanism_names())
        .unwrap_or_default();
    let listed = mechanisms
        .iter()
        .map(|m| StrBytes::from_static_str(m))
        .collect::<Vec<_>>();
    let answer = |code: i16| {
        SaslHandshakeResponse::default()
            .with_error_code(code)
            .with_mechanisms(listed.clone())
    };
    let authenticator = match &cx.config.authenticator {
        Some(a) if session.protocol.uses_sasl() => a,
        // A listener without SASL: the client learns that no mechanism is available here.
        _ => return (answer(ResponseError::UnsupportedSaslMechanism.code()), None),
    };
    if !matches!(state, SaslState::Start) {
        return (
            answer(ResponseError::IllegalSaslState.code()),
            Some("a second SaslHandshake on the connection".into()),
        );
    }
    let Some(mechanism) = authenticator.mechanism(&request.mechanism) else {
        return (
            answer(ResponseError::UnsupportedSaslMechanism.code()),
            Some(format!(
                "SASL mechanism {:?} is not enabled (enabled: {})",
                request.mechanism.chars().take(64).collect::<String>(),
                mechanisms.join(", ")
            )),
        );
    };
    *state = SaslState::Authenticating {
        exchange: Exchange::new(mechanism),
        raw: version == 0,
    };
    (answer(0), None)
}

pub(super) async fn authenticate(
    cx: &Context,
    state: &mut SaslState,
    session: &mut Session,
    request: SaslAuthenticateRequest,
) -> Answer<SaslAuthenticateResponse> {
    let illegal = |message: &str| {
        (
            SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::IllegalSaslState.code())
                .with_error_message(text(message)),
            Some(message.to_string()),
        )
    };
    let (
        Some(authenticator),
        SaslState::Authenticating {
            exchange,
            raw: false,
        },
    ) = (&cx.config.authenticator, &mut *state)
    else {
        return illegal("SaslAuthenticate without a SaslHandshake v1 before it");
    };
    match exchange.step(authenticator, &request.auth_bytes).await {
        Ok(Step::Continue(token)) => (
            SaslAuthenticateResponse::default().with_auth_bytes(token.into()),
            None,
        ),
        Ok(Step::Done { user, token }) => {
            authenticated(state, session, user);
            (
                SaslAuthenticateResponse::default().with_auth_bytes(token.into()),
                None,
            )
        }
        Err(e) => {
            *state = SaslState::Done;
            (
                SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                    .with_error_message(text(e.0.clone())),
                Some(format!("SASL authentication failed: {e}")),
            )
        }
    }
}

/// A bare token after SaslHandshake v0: the token to send back, or the reason to close.
pub(super) async fn raw_token(
    cx: &Context,
    state: &mut SaslState,
    session: &mut Session,
    token: &[u8],
) -> Result<Vec<u8>, String> {
    let (
        Some(authenticator),
        SaslState::Authenticating {
            exchange,
            raw: true,
        },
    ) = (&cx.config.authenticator, &mut *state)
    else {
        return Err("a bare SASL token outside a SaslHandshake v0 exchange".into());
    };
    match exchange.step(authenticator, token).await {
        Ok(Step::Continue(token)) => Ok(token),
        Ok(Step::Done { user, token }) => {
            authenticated(state, session, user);
            Ok(token)
        }
        Err(e) => Err(format!("SASL authentication failed: {e}")),
    }
}

fn authenticated(state: &mut SaslState, session: &mut Session, user: String) {
    tracing::info!(peer = %session.peer, %user, "SASL authenticated");
    session.principal = Principal::user(user);
    session.sasl_authenticated = true;
    *state = SaslState::Done;
}

/// Resource error in the user admin APIs: Kafka's RESOURCE_NOT_FOUND for an unknown user.
fn users_error(e: &UsersError) -> ResponseError {
    match e {
        UsersError::NotFound(_) => ResponseError::ResourceNotFound,
        UsersError::InvalidName { .. } | UsersError::InvalidCredential(_) => {
            ResponseError::UnacceptableCredential
        }
        UsersError::LimitReached { .. } => ResponseError::PolicyViolation,
        _ => {
            tracing::error!(error = %e, "changing SCRAM users failed");
            ResponseError::UnknownServerError
        }
    }
}

pub(super) fn describe_user_scram_credentials(
    cx: &Context,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let Some(authenticator) = &cx.config.authenticator else {
        return DescribeUserScramCredentialsResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_error_message(text("this broker has no user store"));
    };
    let users = &authenticator.users;
    let result = |name: String| match users.describe(&name) {
        Some(info) => DescribeUserScramCredentialsResult::default()
            .with_user(StrBytes::from_string(name))
            .with_credential_infos(
                info.mechanisms
                    .into_iter()
                    .map(|(m, iterations)| {
                        CredentialInfo::default()
                            .with_mechanism(m.kafka_type())
                            .with_iterations(iterations as i32)
                    })
                    .collect(),
            ),
        None => DescribeUserScramCredentialsResult::default()
            .with_error_code(ResponseError::ResourceNotFound.code())
            .with_error_message(text(format!(
                "Attempt to describe a user credential that does not exist: {name}"
            )))
            .with_user(StrBytes::from_string(name)),
    };
    let results = match request.users {
        // Null or empty: every user.
        None => users.list().into_iter().map(|u| result(u.name)).collect(),
        Some(names) if names.is_empty() => {
            users.list().into_iter().map(|u| result(u.name)).collect()
        }
        Some(names) => {
            let mut seen = std::collections::HashSet::new();
            let mut results = Vec::new();
            for name in names {
                let name = name.name.to_string();
                if !seen.insert(name.clone()) {
                    // As Kafka: a user asked for twice is an error, once.
                    results
                        .retain(|r: &DescribeUserScramCredentialsResult| r.user.as_str() != name);
                    results.push(
                        DescribeUserScramCredentialsResult::default()
                            .with_error_code(ResponseError::DuplicateResource.code())
                            .with_error_message(text("user named more than once"))
                            .with_user(StrBytes::from_string(name)),
                    );
                    continue;
                }
                results.push(result(name));
            }
            results
        }
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

/// The same error for every user the request names, changing nothing.
pub(super) fn refuse_user_scram_changes(
    request: AlterUserScramCredentialsRequest,
    error: ResponseError,
) -> AlterUserScramCredentialsResponse {
    let message = match error {
        ResponseError::ClusterAuthorizationFailed => "changing users needs Alter on the cluster",
        _ => "this broker has no user store",
    };
    let results = request
        .deletions
        .iter()
        .map(|d| d.name.clone())
        .chain(request.upsertions.iter().map(|u| u.name.clone()))
        .map(|name| {
            AlterUserScramCredentialsResult::default()
                .with_user(name)
                .with_error_code(error.code())
                .with_error_message(text(message))
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

pub(super) async fn alter_user_scram_credentials(
    cx: &Context,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let Some(authenticator) = &cx.config.authenticator else {
        return refuse_user_scram_changes(request, ResponseError::UnsupportedVersion);
    };
    let users = authenticator.users.clone();
    // Each user once, in request order: deletions then upsertions, as Kafka applies them.
    // A user named twice for the same mechanism is refused whole, as Kafka does.
    let mut order: Vec<String> = Vec::new();
    let mut errors: std::collections::HashMap<String, (ResponseError, String)> =
        std::collections::HashMap::new();
    let mut mechanisms_seen = std::collections::HashSet::new();
    for (name, mechanism) in request
        .deletions
        .iter()
        .map(|d| (d.name.to_string(), d.mechanism))
        .chain(
            request
                .upsertions
                .iter()
                .map(|u| (u.name.to_string(), u.mechanism)),
        )
    {
        if !order.contains(&name) {
            order.push(name.clone());
        }
        if !mechanisms_seen.insert((name.clone(), mechanism)) {
            errors.entry(name).or_insert((
                ResponseError::DuplicateResource,
                "a user's mechanism named more than once".into(),
            ));
        } else if ScramMechanism::from_kafka_type(mechanism).is_none() {
            errors.entry(name).or_insert((
                ResponseError::UnsupportedSaslMechanism,
                format!("unknown SCRAM mechanism {mechanism}"),
            ));
        }
    }
    let deletions: Vec<(String, ScramMechanism)> = request
        .deletions
        .into_iter()
        .filter_map(|d| {
            let name = d.name.to_string();
            (!errors.contains_key(&name))
                .then(|| ScramMechanism::from_kafka_type(d.mechanism).map(|m| (name, m)))
                .flatten()
        })
        .collect();
    let upsertions: Vec<(String, StoredCredential)> = request
        .upsertions
        .into_iter()
        .filter_map(|u| {
            let name = u.name.to_string();
            if errors.contains_key(&name) {
                return None;
            }
            let m = ScramMechanism::from_kafka_type(u.mechanism)?;
            let iterations = u32::try_from(u.iterations).unwrap_or(0);
            Some((
                name,
                StoredCredential::from_salted_password(m, &u.salted_password, &u.salt, iterations),
            ))
        })
        .collect();
    // Each change is one atomic file write (with fsyncs): off the async threads.
    let outcome = tokio::task::spawn_blocking(move || {
        let mut failures: Vec<(String, UsersError)> = Vec::new();
        for (name, m) in deletions {
            if let Err(e) = users.delete(&name, Some(m)) {
                failures.push((name, e));
            }
        }
        for (name, credential) in upsertions {
            if failures.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if let Err(e) = users.upsert(&name, credential) {
                failures.push((name, e));
            }
        }
        failures
    })
    .await;
    match outcome {
        Ok(failures) => {
            for (name, e) in failures {
                let message = match &e {
                    UsersError::NotFound(_) => {
                        format!("Attempt to delete a user credential that does not exist: {name}")
                    }
                    other => other.to_string(),
                };
                errors.entry(name).or_insert((users_error(&e), message));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "AlterUserScramCredentials task failed");
            for name in &order {
                errors
                    .entry(name.clone())
                    .or_insert((ResponseError::UnknownServerError, "internal error".into()));
            }
        }
    }
    let results = order
        .into_iter()
        .map(|name| {
            let result = AlterUserScramCredentialsResult::default()
                .with_user(StrBytes::from_string(name.clone()));
            match errors.remove(&name) {
                Some((error, message)) => result
                    .with_error_code(error.code())
                    .with_error_message(text(message)),
                None => result,
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}
