//! The client's error type.

use crate::batch::BatchError;
use crate::native::{DecodeError, ErrorCode};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection to the broker is closed")]
    Closed,
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The broker answered with an error code.
    #[error("broker refused: {code:?}: {message}")]
    Broker { code: ErrorCode, message: String },
    #[error("undecodable answer from the broker: {0}")]
    Decode(#[from] DecodeError),
    #[error("malformed record batch from the broker: {0}")]
    Batch(#[from] BatchError),
    #[error("request of {len} bytes is over the frame limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The SASL exchange failed on the client's side (for SCRAM: the broker could not prove
    /// it holds the credential, or asked for something outside the limits).
    #[error("authentication failed: {0}")]
    Authentication(String),
    #[error("{0}")]
    Invalid(String),
    /// TLS could not be set up: an unreadable certificate, key or CA file, or a bad server name.
    #[error("TLS: {what}: {source}")]
    Tls {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ClientError {
    /// Whether the same request may succeed if tried again (on a new connection).
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Closed | ClientError::Timeout(_) => true,
            ClientError::Broker { code, .. } => code.is_retriable(),
            _ => false,
        }
    }

    /// A copy for reporting one failure to many waiters (IO details become text).
    pub fn duplicate(&self) -> ClientError {
        match self {
            ClientError::Closed => ClientError::Closed,
            ClientError::Timeout(what) => ClientError::Timeout(what),
            ClientError::Broker { code, message } => ClientError::Broker {
                code: *code,
                message: message.clone(),
            },
            ClientError::Decode(e) => ClientError::Decode(e.clone()),
            ClientError::Batch(e) => ClientError::Batch(e.clone()),
            ClientError::TooLarge { len, max } => ClientError::TooLarge {
                len: *len,
                max: *max,
            },
            other => ClientError::Invalid(other.to_string()),
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }
}
