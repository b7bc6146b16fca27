//! Error codes carried in responses, and the codec's own errors.

/// A response's error code. The numbers are part of the protocol: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    None = 0,
    /// The broker failed in a way the client cannot fix; the message says more.
    Internal = 1,
    /// A record batch failed validation (length, magic, CRC-32C, record count, offset deltas).
    CorruptBatch = 2,
    UnknownTopicOrPartition = 3,
    OffsetOutOfRange = 4,
    TopicAlreadyExists = 5,
    InvalidTopic = 6,
    InvalidConfig = 7,
    /// A batch or a frame is over the broker's size limit.
    TooLarge = 8,
    /// The request type is unknown to this broker.
    UnsupportedRequest = 9,
    UnsupportedVersion = 10,
    /// The request body could not be decoded.
    InvalidRequest = 11,
    /// The partition's storage failed (for example an fsync); it refuses writes until restart.
    StorageError = 12,
    ShuttingDown = 13,
    /// No subscription with that id on this connection.
    UnknownSubscription = 14,
    /// The group does not know this member (it left, or its session expired): join anew.
    UnknownMember = 15,
    /// The member's generation is stale: it must rejoin before committing.
    IllegalGeneration = 16,
    /// The group is rebalancing: rejoin to get the new assignment.
    RebalanceInProgress = 17,
    InvalidSessionTimeout = 18,
    UnknownGroup = 19,
    /// The group is used by Kafka clients that assign partitions themselves (or the other way).
    InconsistentGroupProtocol = 20,
    /// The topic is the broker's own (`__consumer_offsets`): clients may read it, but not
    /// write, create or delete it.
    InternalTopic = 21,
    /// One of the broker's resource limits (topics, partitions, groups, members) would be
    /// passed; the message names it. Nothing was changed.
    LimitReached = 22,
    /// SASL authentication failed: wrong password, unknown user (the two are not told apart)
    /// or a malformed token. The broker closes the connection after this answer.
    SaslAuthenticationFailed = 23,
    /// The SaslHandshake named a mechanism the broker has not enabled; the message lists the
    /// enabled ones.
    UnsupportedSaslMechanism = 24,
    /// A SASL request out of order (SaslAuthenticate before SaslHandshake, a second
    /// handshake), or any other request before authentication on a SASL listener; the broker
    /// closes the connection after this answer.
    IllegalSaslState = 25,
    /// The connection's principal may not do this; the message names the operation and the
    /// resource. Nothing was changed.
    AuthorizationFailed = 26,
    /// The group has members: only an empty group can be deleted. Nothing was changed.
    GroupNotEmpty = 27,
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> ErrorCode {
        use ErrorCode::*;
        match code {
            0 => None,
            2 => CorruptBatch,
            3 => UnknownTopicOrPartition,
            4 => OffsetOutOfRange,
            5 => TopicAlreadyExists,
            6 => InvalidTopic,
            7 => InvalidConfig,
            8 => TooLarge,
            9 => UnsupportedRequest,
            10 => UnsupportedVersion,
            11 => InvalidRequest,
            12 => StorageError,
            13 => ShuttingDown,
            14 => UnknownSubscription,
            15 => UnknownMember,
            16 => IllegalGeneration,
            17 => RebalanceInProgress,
            18 => InvalidSessionTimeout,
            19 => UnknownGroup,
            20 => InconsistentGroupProtocol,
            21 => InternalTopic,
            22 => LimitReached,
            23 => SaslAuthenticationFailed,
            24 => UnsupportedSaslMechanism,
            25 => IllegalSaslState,
            26 => AuthorizationFailed,
            27 => GroupNotEmpty,
            _ => Internal,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(self, ErrorCode::ShuttingDown | ErrorCode::Internal)
    }
}

/// Why a frame or body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("frame of {len} bytes is over the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes is too short for its header")]
    FrameTooShort { len: usize },
    #[error("field {field} runs past the end of the frame")]
    Truncated { field: &'static str },
    #[error("field {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("{n} bytes left over after the last field")]
    TrailingBytes { n: usize },
    #[error("unknown request type {api_key}")]
    UnknownRequest { api_key: u16 },
    #[error("request type {api_key} has no version {version}")]
    UnsupportedVersion { api_key: u16, version: u16 },
}

impl DecodeError {
    /// The error code a server answers a request with when its body fails to decode.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::TooLarge,
            DecodeError::UnknownRequest { .. } => ErrorCode::UnsupportedRequest,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::InvalidRequest,
        }
    }
}
