//! The Kafka-protocol listener: unmodified Kafka clients produce (including the idempotent
//! producer), consume, join groups, commit offsets and create topics.
//!
//! The wire format is the `kafka-protocol` crate's; the data is the same as the native
//! protocol's, through [`crate::service::Broker`]: a record produced here is consumed with
//! `strand consume`, and the other way, and groups and committed offsets are shared.
//!
//! - this file: framing, decoding, ApiVersions and dispatch. Kafka requires answers in
//!   request order on a connection; like Kafka, a connection handles one request at a time
//!   (clients pipeline on their side and open a separate coordinator connection for group
//!   requests). Accepting and the connection caps are [`crate::listener`]'s; an idle
//!   connection, a frame that does not finish arriving and an answer the client does not read
//!   each have a timeout; request frames and fetched records are charged to the broker's one
//!   [`Budget`] before they are read.
//! - `data`: Metadata, Produce, Fetch, ListOffsets.
//! - `groups`: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//!   OffsetFetch, ListGroups, DescribeGroups on the broker's one coordinator.
//! - `admin`: CreateTopics, DeleteTopics, InitProducerId (idempotent producers).
//! - `txn`: InitProducerId with a transactional id, AddPartitionsToTxn, AddOffsetsToTxn,
//!   TxnOffsetCommit, EndTxn; the last stable offset and aborted transactions `data` serves
//!   `read_committed` fetches with.
//! - `sasl`: SaslHandshake, SaslAuthenticate (both token framings), and the SCRAM user admin
//!   APIs; until a connection on a SASL listener has authenticated, `connection` lets through
//!   only ApiVersions and the SASL requests.
//! - `acls`: CreateAcls, DescribeAcls, DeleteAcls.
//! - `legacy`: the request versions Kafka 3.9 serves below what `kafka-protocol` encodes,
//!   read into the crate's types and answered in their own layout.
//!
//! Every handler gets the connection's [`Session`] and asks the broker's
//! [`crate::security::acl::Authorizer`] what Kafka's broker asks for the same request; a
//! refusal is answered with the protocol's own code (TOPIC_, GROUP_ or
//! CLUSTER_AUTHORIZATION_FAILED) and changes nothing.

mod acls;
mod admin;
mod data;
mod groups;
mod legacy;
mod sasl;
mod txn;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    AddOffsetsToTxnResponse, ApiKey, ApiVersionsResponse, ConsumerGroupHeartbeatResponse,
    DescribeUserScramCredentialsResponse, EndTxnResponse, GetTelemetrySubscriptionsResponse,
    RequestHeader, RequestKind, ResponseHeader, ResponseKind, SaslAuthenticateResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::budget::{Budget, Charge};
use crate::listener::{self, stopped, Admission, AdvertisedListener, BoundListener};
use crate::log::LogError;
use crate::security::acl::{Operation, ResourceType};
use crate::security::sasl::{Authenticator, TOKEN_BYTES_MAX};
use crate::security::{ListenerSpec, SecurityProtocol, Session};
use crate::service::{Broker, ServiceError};
use crate::topics::TopicError;

/// The node id Strand answers as: one broker, leader of every partition.
const NODE_ID: i32 = 0;

/// Requests served, with the versions this listener speaks: Kafka 3.9's, except where noted.
/// Versions below what `kafka-protocol` encodes are `legacy`'s.
pub const SUPPORTED: [(ApiKey, i16, i16); 29] = [
    // v0-v2 carry message sets v0/v1, which Strand does not store: they are answered with
    // UNSUPPORTED_FOR_MESSAGE_FORMAT. They must be advertised all the same: librdkafka up to
    // 2.11 enables gzip, snappy and lz4 only when the broker lists Produce v0 (it checks the
    // range [0, 0]); with v3 as the minimum it silently sends everything uncompressed.
    (ApiKey::Produce, 0, 11),
    // v0-v3 expect message sets v0/v1 back: the batches read are converted down, as Kafka
    // does. v13 and later name topics by topic id, which Strand does not assign yet.
    (ApiKey::Fetch, 0, 12),
    (ApiKey::ListOffsets, 0, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 0, 9),
    (ApiKey::OffsetFetch, 0, 9),
    // librdkafka takes support for FindCoordinator as the sign of a broker new enough for
    // groups and compressed batches, so it must be advertised.
    (ApiKey::FindCoordinator, 0, 5),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 0, 7),
    (ApiKey::DeleteTopics, 0, 6),
    (ApiKey::InitProducerId, 0, 4),
    // Transactions (`txn`). AddPartitionsToTxn v4+ is the brokers' batched form (KIP-890).
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    // v0 has no resource pattern type: its resources and filters are literal.
    (ApiKey::CreateAcls, 0, 3),
    (ApiKey::DescribeAcls, 0, 3),
    (ApiKey::DeleteAcls, 0, 3),
];

pub(crate) use crate::topics::is_internal_topic;

/// Limits and settings of the Kafka listener.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Open connections at most; more are closed as soon as they are accepted.
    pub connections_max: usize,
    /// Open connections from one IP address at most.
    pub connections_per_ip_max: usize,
    pub frame_bytes_max: usize,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// A request whose first byte has arrived must be complete within this (slowloris).
    pub request_timeout: Duration,
    /// A connection whose client takes longer than this to take one answer is closed.
    pub write_timeout: Duration,
    /// Record bytes one Fetch answer carries at most, whatever the request's limits.
    pub fetch_bytes_max: usize,
    /// Bytes in flight across every connection (shared with the native listener).
    pub budget: Budget,
    /// `host:port` clients of the PLAINTEXT listener, or of the only listener, are told to
    /// connect to (Metadata, FindCoordinator) unless `advertised_listeners` names one for its
    /// protocol. By default each listener's bound address, with 127.0.0.1 in place of an
    /// unspecified IP.
    pub advertised: Option<String>,
    /// Per protocol, the address clients of the listener with that protocol are told to
    /// connect to, as Kafka's `advertised.listeners`.
    pub advertised_listeners: Vec<AdvertisedListener>,
    /// Create topics that Metadata requests name and that do not exist.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics asking for the default.
    pub default_partitions: u32,
    /// Topics one Metadata request may auto-create.
    pub metadata_auto_create_topics_max: u32,
    /// Users and SASL mechanisms: what SASL listeners authenticate against and what the SCRAM
    /// user APIs change. `None`: no user store, every SASL handshake fails.
    pub authenticator: Option<Arc<Authenticator>>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            connections_max: 1024,
            connections_per_ip_max: 256,
            frame_bytes_max: 8 << 20,
            idle_timeout: Duration::from_secs(600),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            fetch_bytes_max: 50 << 20,
            budget: Budget::default(),
            advertised: None,
            advertised_listeners: Vec::new(),
            auto_create_topics: true,
            default_partitions: 1,
            metadata_auto_create_topics_max: 100,
            authenticator: None,
        }
    }
}

/// What every request handler may use.
#[derive(Debug)]
struct Context {
    broker: Broker,
    config: KafkaConfig,
    /// The (host, port) advertised in Metadata and FindCoordinator.
    advertised: (String, i32),
}

impl Context {
    /// Whether the session may do `operation` to the resource.
    fn allowed(
        &self,
        session: &Session,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        self.broker
            .authorizer
            .authorize(session, operation, resource_type, name)
    }

    fn allowed_on_topic(&self, session: &Session, operation: Operation, topic: &str) -> bool {
        self.allowed(session, operation, ResourceType::Topic, topic)
    }

    fn allowed_on_group(&self, session: &Session, operation: Operation, group: &str) -> bool {
        self.allowed(session, operation, ResourceType::Group, group)
    }

    fn allowed_on_cluster(&self, session: &Session, operation: Operation) -> bool {
        self.broker.authorizer.authorize_cluster(session, operation)
    }
}

/// Serves Kafka clients on every listener until shutdown. Each listener advertises its own
/// address (see [`KafkaConfig::advertised_listeners`]); the connection caps count the
/// connections of all of them together.
pub async fn serve(
    listeners: Vec<BoundListener>,
    broker: Broker,
    config: KafkaConfig,
    shutdown: watch::Receiver<bool>,
) {
    let admission = Admission::new(
        "kafka",
        config.connections_max,
        config.connections_per_ip_max,
        broker.metrics.clone(),
    );
    let only = listeners.len() == 1;
    let served = listeners.into_iter().map(|bound| {
        let advertised = advertised_address(&config, bound.spec, only);
        let context = Arc::new(Context {
            broker: broker.clone(),
            config: config.clone(),
            advertised,
        });
        let shutdown = shutdown.clone();
        listener::serve(
            bound,
            admission.clone(),
            config.request_timeout,
            shutdown.clone(),
            move |stream, session| connection(stream, session, context.clone(), shutdown.clone()),
        )
    });
    futures::future::join_all(served).await;
}

/// The (host, port) a listener advertises: the advertised listener with its protocol, else the
/// single `advertised` address for the PLAINTEXT listener or for the only listener (whatever
/// its protocol), else the bound address with 127.0.0.1 in place of an unspecified IP (0.0.0.0
/// cannot be connected to).
fn advertised_address(config: &KafkaConfig, bound: ListenerSpec, only: bool) -> (String, i32) {
    if let Some(a) = config
        .advertised_listeners
        .iter()
        .find(|a| a.protocol == bound.protocol)
    {
        return (a.host.clone(), i32::from(a.port));
    }
    let configured = config
        .advertised
        .as_deref()
        .filter(|_| only || bound.protocol == SecurityProtocol::Plaintext);
    if let Some((host, port)) = configured.and_then(|a| a.rsplit_once(':')) {
        if let Ok(port) = port.parse() {
            return (host.to_string(), port);
        }
    }
    if configured.is_some() {
        tracing::warn!(advertised = ?configured, "ignoring an advertised address that is not host:port");
    }
    let host = if bound.addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        bound.addr.ip().to_string()
    };
    (host, i32::from(bound.addr.port()))
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    mut session: Session,
    context: Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let context = &*context;
    let config = &context.config;
    let mut sasl = sasl::SaslState::default();
    loop {
        // Idle until the first byte of the next request's length.
        let mut len = [0u8; 4];
        let n = tokio::select! {
            read = tokio::time::timeout(config.idle_timeout, socket.read(&mut len)) => match read {
                Err(_) => return Err("idle timeout".into()),
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("read failed: {e}")),
            },
            _ = stopped(&mut shutdown) => return Ok(()),
        };
        // From here the whole request must arrive within the request timeout (not counting
        // time the broker itself spends waiting for its budget).
        let mut deadline = Instant::now() + config.request_timeout;
        tokio::time::timeout_at(deadline, socket.read_exact(&mut len[n..]))
            .await
            .map_err(|_| request_timeout(config))?
            .map_err(|e| format!("read failed: {e}"))?;
        let len = i32::from_be_bytes(len);
        if sasl.expects_raw_token() {
            // After SaslHandshake v0 the client sends bare tokens, not requests.
            if !(0..=TOKEN_BYTES_MAX as i32).contains(&len) {
                return Err(format!(
                    "SASL token length {len} outside 0..={TOKEN_BYTES_MAX}"
                ));
            }
            let mut token = vec![0u8; len as usize];
            tokio::time::timeout_at(deadline, socket.read_exact(&mut token))
                .await
                .map_err(|_| request_timeout(config))?
                .map_err(|e| format!("read failed: {e}"))?;
            let answer = sasl::raw_token(context, &mut sasl, &mut session, &token).await?;
            let mut out = Vec::with_capacity(4 + answer.len());
            out.extend_from_slice(&(answer.len() as u32).to_be_bytes());
            out.extend_from_slice(&answer);
            write_answer(&mut socket, &out, config).await?;
            continue;
        }
        if len < 8 || len as usize > config.frame_bytes_max {
            return Err(format!(
                "frame length {len} outside 8..={}",
                config.frame_bytes_max
            ));
        }
        let waiting = Instant::now();
        let frame_charge = tokio::select! {
            charge = config.budget.charge(4 + len as usize) => charge,
            _ = stopped(&mut shutdown) => return Ok(()),
        };
        deadline += waiting.elapsed();
        let mut frame = vec![0u8; len as usize];
        tokio::time::timeout_at(deadline, socket.read_exact(&mut frame))
            .await
            .map_err(|_| request_timeout(config))?
            .map_err(|e| format!("read failed: {e}"))?;
        let decoded = decode_request(Bytes::from(frame))?;
        let started = Instant::now();
        if !session.may_send_requests() {
            // As Kafka: before authentication only ApiVersions and the SASL requests.
            let key = match &decoded {
                Decoded::ApiVersionsFallback { .. } => ApiKey::ApiVersions,
                Decoded::Unsupported { api_key, .. } => *api_key,
                Decoded::Request { header, .. } => {
                    ApiKey::try_from(header.request_api_key).expect("checked when decoded")
                }
            };
            if !matches!(
                key,
                ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
            ) {
                return Err(format!(
                    "{key:?} request before SASL authentication (closing, as Kafka does)"
                ));
            }
        }
        // The reason to close the connection once the answer is written (failed SASL).
        let mut close_after: Option<String> = None;
        let (header, response, response_version, charge) = match decoded {
            Decoded::ApiVersionsFallback { header } => (
                header,
                ResponseKind::ApiVersions(api_versions(ResponseError::UnsupportedVersion.code())),
                0,
                Charge::default(),
            ),
            Decoded::Unsupported {
                header,
                api_key,
                version,
            } => match unsupported(api_key, version) {
                Some(response) => {
                    tracing::info!(
                        request = ?api_key,
                        version,
                        "answered an unsupported kafka request with UNSUPPORTED_VERSION"
                    );
                    (header, response, version, Charge::default())
                }
                None => {
                    return Err(format!(
                        "unsupported request {api_key:?} v{version}, which has no error field to answer with"
                    ))
                }
            },
            Decoded::Request {
                header,
                version,
                request,
            } => {
                let api_key =
                    ApiKey::try_from(header.request_api_key).expect("checked when decoded");
                let refused = legacy::is_legacy(api_key, version)
                    .then(|| legacy::refused(&request))
                    .flatten();
                if let Some(answer) = refused {
                    drop(frame_charge);
                    match answer {
                        Some(response) => (header, response, version, Charge::default()),
                        None => continue,
                    }
                } else if let RequestKind::Fetch(fetch) = *request {
                    // A fetch request holds little; what it reads is charged on its own,
                    // and waiting for that must not hold this frame's charge.
                    drop(frame_charge);
                    let (mut response, charge) = data::fetch(context, &session, fetch)
                        .instrument(tracing::info_span!("kafka.fetch", otel.kind = "server"))
                        .await;
                    if legacy::is_legacy(api_key, version) {
                        legacy::down_convert(&mut response, version);
                    }
                    (header, ResponseKind::Fetch(response), version, charge)
                } else if let RequestKind::SaslHandshake(r) = *request {
                    drop(frame_charge);
                    let (response, close) = sasl::handshake(context, &mut sasl, &session, r, version);
                    close_after = close;
                    (header, ResponseKind::SaslHandshake(response), version, Charge::default())
                } else if let RequestKind::SaslAuthenticate(r) = *request {
                    drop(frame_charge);
                    let (response, close) =
                        sasl::authenticate(context, &mut sasl, &mut session, r).await;
                    close_after = close;
                    (header, ResponseKind::SaslAuthenticate(response), version, Charge::default())
                } else {
                    let handled = handle(context, &mut session, &header, *request, version).await;
                    drop(frame_charge);
                    match handled {
                        Some(response) => (header, response, version, Charge::default()),
                        // acks=0: no answer at all.
                        None => continue,
                    }
                }
            }
        };
        let api_key = ApiKey::try_from(header.request_api_key).expect("checked when decoded");
        // Sized for the records up front: growing by doubling would briefly hold up to three
        // times a large answer.
        let mut out = BytesMut::with_capacity(charge.bytes() + 4096);
        out.put_i32(0);
        let response_header = ResponseHeader::default().with_correlation_id(header.correlation_id);
        response_header
            .encode(&mut out, api_key.response_header_version(response_version))
            .map_err(|e| format!("encoding a response header: {e}"))?;
        if legacy::is_legacy(api_key, response_version) {
            legacy::encode(&response, response_version, &mut out)
                .map_err(|e| format!("encoding {api_key:?}: {e}"))?;
        } else {
            response
                .encode(&mut out, response_version)
                .map_err(|e| format!("encoding {api_key:?}: {e}"))?;
        }
        drop(response);
        let n = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&n.to_be_bytes());
        write_answer(&mut socket, &out, config).await?;
        drop(charge);
        context
            .broker
            .metrics
            .observe_kafka_request(&format!("{api_key:?}"), started.elapsed());
        if let Some(reason) = close_after {
            return Err(reason);
        }
    }
}

/// Writes one answer within the write timeout. The flush matters on TLS: a write may leave
/// the last records in the TLS layer when the socket is full, and the client, waiting for its
/// answer, would send nothing that pushes them out.
async fn write_answer<S: AsyncWrite + Unpin>(
    socket: &mut S,
    out: &[u8],
    config: &KafkaConfig,
) -> Result<(), String> {
    tokio::time::timeout(config.write_timeout, async {
        socket.write_all(out).await?;
        socket.flush().await
    })
    .await
    .map_err(|_| {
        format!(
            "the client did not take its answer within the write timeout ({:?})",
            config.write_timeout
        )
    })?
    .map_err(|e| format!("write failed: {e}"))
}

fn request_timeout(config: &KafkaConfig) -> String {
    format!(
        "request not completed within the request timeout ({:?})",
        config.request_timeout
    )
}

/// A request frame, decoded.
#[derive(Debug)]
enum Decoded {
    /// ApiVersions in a version this listener does not speak: clients try their newest first,
    /// and an answer in v0 with UNSUPPORTED_VERSION tells them which versions to use.
    ApiVersionsFallback { header: RequestHeader },
    /// A request this listener does not serve (not advertised, or outside the advertised
    /// versions); answered with UNSUPPORTED_VERSION where its response has an error field.
    Unsupported {
        header: RequestHeader,
        api_key: ApiKey,
        version: i16,
    },
    Request {
        header: RequestHeader,
        version: i16,
        request: Box<RequestKind>,
    },
}

/// Decodes one request frame (without its length prefix). Never panics on any input; what
/// cannot be served is an `Err` with the reason the connection is closed for.
fn decode_request(mut frame: Bytes) -> Result<Decoded, String> {
    if frame.len() < 8 {
        return Err(format!(
            "frame of {} bytes is shorter than a request header",
            frame.len()
        ));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let Ok(api_key) = ApiKey::try_from(key) else {
        return Err(format!("unknown api key {key}"));
    };
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version.max(0)))
        .map_err(|e| format!("bad request header: {e}"))?;
    let supported = SUPPORTED.iter().find(|(k, _, _)| *k == api_key);
    let in_range = supported.is_some_and(|(_, min, max)| (*min..=*max).contains(&version));
    if api_key == ApiKey::ApiVersions && !in_range {
        return Ok(Decoded::ApiVersionsFallback { header });
    }
    if in_range && legacy::is_legacy(api_key, version) {
        let request = legacy::decode(api_key, version, frame)?;
        return Ok(Decoded::Request {
            header,
            version,
            request: Box::new(request),
        });
    }
    let valid = api_key.valid_versions();
    if !in_range || version < valid.min || version > valid.max {
        return Ok(Decoded::Unsupported {
            header,
            api_key,
            version,
        });
    }
    let request = RequestKind::decode(api_key, &mut frame, version)
        .map_err(|e| format!("bad {api_key:?} v{version}: {e}"))?;
    Ok(Decoded::Request {
        header,
        version,
        request: Box::new(request),
    })
}

/// Decodes one request frame (without its length prefix) exactly as the listener does, and
/// returns the reason the connection would be closed for; the entry point of the fuzz target in
/// `fuzz/`, which cannot reach the private decoder.
#[doc(hidden)]
pub fn decode_request_frame(frame: Bytes) -> Result<(), String> {
    decode_request(frame).map(|_| ())
}

/// The UNSUPPORTED_VERSION answer to a request that is not served, for the requests whose
/// response carries a top-level error code (the ones clients send unasked: SASL, telemetry,
/// transactions, the next-generation group protocol). `None` when there is no such field or
/// the crate cannot encode that version.
fn unsupported(api_key: ApiKey, version: i16) -> Option<ResponseKind> {
    let valid = api_key.valid_versions();
    if version < valid.min || version > valid.max {
        return None;
    }
    let code = ResponseError::UnsupportedVersion.code();
    Some(match api_key {
        ApiKey::SaslAuthenticate => ResponseKind::SaslAuthenticate(
            SaslAuthenticateResponse::default().with_error_code(code),
        ),
        ApiKey::GetTelemetrySubscriptions => ResponseKind::GetTelemetrySubscriptions(
            GetTelemetrySubscriptionsResponse::default().with_error_code(code),
        ),
        ApiKey::ConsumerGroupHeartbeat => ResponseKind::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatResponse::default().with_error_code(code),
        ),
        ApiKey::AddOffsetsToTxn => {
            ResponseKind::AddOffsetsToTxn(AddOffsetsToTxnResponse::default().with_error_code(code))
        }
        ApiKey::EndTxn => ResponseKind::EndTxn(EndTxnResponse::default().with_error_code(code)),
        _ => return unsupported_more(api_key, version),
    })
}

/// More of [`unsupported`]: the other responses with a top-level error code, in the versions
/// that have it (checked by encoding the answer once here).
fn unsupported_more(api_key: ApiKey, version: i16) -> Option<ResponseKind> {
    use kafka_protocol::messages::*;
    let code = ResponseError::UnsupportedVersion.code();
    let response = match api_key {
        ApiKey::Fetch => ResponseKind::Fetch(FetchResponse::default().with_error_code(code)),
        ApiKey::Metadata => {
            ResponseKind::Metadata(MetadataResponse::default().with_error_code(code))
        }
        ApiKey::OffsetFetch => {
            ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_error_code(code))
        }
        ApiKey::FindCoordinator => {
            ResponseKind::FindCoordinator(FindCoordinatorResponse::default().with_error_code(code))
        }
        ApiKey::JoinGroup => {
            ResponseKind::JoinGroup(JoinGroupResponse::default().with_error_code(code))
        }
        ApiKey::SyncGroup => {
            ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(code))
        }
        ApiKey::Heartbeat => {
            ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code))
        }
        ApiKey::LeaveGroup => {
            ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(code))
        }
        ApiKey::ListGroups => {
            ResponseKind::ListGroups(ListGroupsResponse::default().with_error_code(code))
        }
        ApiKey::InitProducerId => ResponseKind::InitProducerId(
            InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id((-1).into())
                .with_producer_epoch(-1),
        ),
        ApiKey::DescribeCluster => {
            ResponseKind::DescribeCluster(DescribeClusterResponse::default().with_error_code(code))
        }
        ApiKey::OffsetDelete => {
            ResponseKind::OffsetDelete(OffsetDeleteResponse::default().with_error_code(code))
        }
        ApiKey::DescribeQuorum => {
            ResponseKind::DescribeQuorum(DescribeQuorumResponse::default().with_error_code(code))
        }
        ApiKey::ListTransactions => ResponseKind::ListTransactions(
            ListTransactionsResponse::default().with_error_code(code),
        ),
        ApiKey::PushTelemetry => {
            ResponseKind::PushTelemetry(PushTelemetryResponse::default().with_error_code(code))
        }
        ApiKey::DescribeClientQuotas => ResponseKind::DescribeClientQuotas(
            DescribeClientQuotasResponse::default().with_error_code(code),
        ),
        ApiKey::ListPartitionReassignments => ResponseKind::ListPartitionReassignments(
            ListPartitionReassignmentsResponse::default().with_error_code(code),
        ),
        ApiKey::AlterPartitionReassignments => ResponseKind::AlterPartitionReassignments(
            AlterPartitionReassignmentsResponse::default().with_error_code(code),
        ),
        ApiKey::ElectLeaders => {
            ResponseKind::ElectLeaders(ElectLeadersResponse::default().with_error_code(code))
        }
        ApiKey::AllocateProducerIds => ResponseKind::AllocateProducerIds(
            AllocateProducerIdsResponse::default().with_error_code(code),
        ),
        _ => return None,
    };
    // A version without the field cannot say it; such a request closes the connection.
    response
        .encode(&mut BytesMut::new(), version)
        .ok()
        .map(|()| response)
}

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|(key, min, max)| {
                    // The minimum may go below what the crate decodes (`legacy` serves those).
                    let valid = key.valid_versions();
                    ApiVersion::default()
                        .with_api_key(*key as i16)
                        .with_min_version(*min)
                        .with_max_version((*max).min(valid.max))
                })
                .collect(),
        )
}

/// Serves one decoded request; `None` means no answer is sent (Produce with acks=0).
async fn handle(
    cx: &Context,
    session: &mut Session,
    header: &RequestHeader,
    request: RequestKind,
    version: i16,
) -> Option<ResponseKind> {
    let client_id = header
        .client_id
        .as_ref()
        .map_or_else(String::new, |c| c.to_string());
    Some(match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions(0)),
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(data::metadata(cx, session, r, version).await)
        }
        RequestKind::Produce(r) => ResponseKind::Produce(
            data::produce(cx, session, r)
                .instrument(tracing::info_span!("kafka.produce", otel.kind = "server"))
                .await?,
        ),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(data::list_offsets(cx, session, r).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(cx, session, r, version))
        }
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(groups::join(cx, session, r, version, client_id).await)
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync(cx, session, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(cx, session, r)),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(groups::leave(cx, session, r)),
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(cx, session, r).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(cx, session, r, version))
        }
        RequestKind::ListGroups(_) => ResponseKind::ListGroups(groups::list(cx, session)),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe(cx, session, r))
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(cx, session, r).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(cx, session, r, version).await)
        }
        RequestKind::InitProducerId(r) if txn::is_transactional(&r) => {
            ResponseKind::InitProducerId(txn::init_producer_id(cx, session, r, version).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(admin::init_producer_id(cx, session, r))
        }
        RequestKind::AddPartitionsToTxn(r) => {
            ResponseKind::AddPartitionsToTxn(txn::add_partitions(cx, session, r, version).await)
        }
        RequestKind::AddOffsetsToTxn(r) => {
            ResponseKind::AddOffsetsToTxn(txn::add_offsets(cx, session, r, version).await)
        }
        RequestKind::TxnOffsetCommit(r) => {
            ResponseKind::TxnOffsetCommit(txn::txn_offset_commit(cx, session, r, version).await)
        }
        RequestKind::EndTxn(r) => ResponseKind::EndTxn(txn::end_txn(cx, session, r, version).await),
        RequestKind::CreateAcls(r) => {
            ResponseKind::CreateAcls(acls::create_acls(cx, session, r).await)
        }
        RequestKind::DescribeAcls(r) => {
            ResponseKind::DescribeAcls(acls::describe_acls(cx, session, r))
        }
        RequestKind::DeleteAcls(r) => {
            ResponseKind::DeleteAcls(acls::delete_acls(cx, session, r).await)
        }
        RequestKind::DescribeCluster(_) => {
            ResponseKind::DescribeCluster(data::describe_cluster(cx))
        }
        // As Kafka: describing users needs Describe on the cluster, changing them Alter.
        RequestKind::DescribeUserScramCredentials(r) => ResponseKind::DescribeUserScramCredentials(
            if cx.allowed_on_cluster(session, Operation::Describe) {
                sasl::describe_user_scram_credentials(cx, r)
            } else {
                DescribeUserScramCredentialsResponse::default()
                    .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            },
        ),
        RequestKind::AlterUserScramCredentials(r) => ResponseKind::AlterUserScramCredentials(
            if cx.allowed_on_cluster(session, Operation::Alter) {
                sasl::alter_user_scram_credentials(cx, r).await
            } else {
                sasl::refuse_user_scram_changes(r, ResponseError::ClusterAuthorizationFailed)
            },
        ),
        other => {
            // Only requests listed in SUPPORTED are decoded, and each has an arm above (Fetch
            // and the SASL exchange are served by the connection, which keeps its budget
            // charge and its SASL state).
            tracing::error!(request = ?std::mem::discriminant(&other), "kafka request decoded but not served");
            return None;
        }
    })
}

/// Kafka's code for a refusal of an operation on a resource of this type.
fn authorization_failed(resource_type: ResourceType) -> ResponseError {
    match resource_type {
        ResourceType::Topic => ResponseError::TopicAuthorizationFailed,
        ResourceType::Group => ResponseError::GroupAuthorizationFailed,
        ResourceType::Cluster => ResponseError::ClusterAuthorizationFailed,
        ResourceType::TransactionalId => ResponseError::TransactionalIdAuthorizationFailed,
    }
}

/// The Kafka error code for a broker error.
fn error_code(e: &ServiceError) -> i16 {
    use strand_client::batch::BatchError;
    let error = match e {
        ServiceError::UnknownTopicOrPartition { .. }
        | ServiceError::Topic(TopicError::NotFound(_)) => ResponseError::UnknownTopicOrPartition,
        ServiceError::Topic(TopicError::AlreadyExists(_)) => ResponseError::TopicAlreadyExists,
        ServiceError::Topic(TopicError::InvalidName { .. }) => ResponseError::InvalidTopicException,
        ServiceError::Topic(TopicError::InvalidConfig(_)) => ResponseError::InvalidConfig,
        // As Kafka: partitions past the per-topic bound are INVALID_PARTITIONS; a topic or
        // total-partition count past the broker's bound is what a create-topic policy
        // refusal is, POLICY_VIOLATION.
        ServiceError::Topic(TopicError::LimitReached {
            limit: "partitions_per_topic_max",
            ..
        }) => ResponseError::InvalidPartitions,
        ServiceError::Topic(TopicError::LimitReached { .. }) => ResponseError::PolicyViolation,
        // Kafka refuses appends to internal topics with INVALID_TOPIC_EXCEPTION ("cannot append
        // to internal topic") and so creating one; deleting one is not authorized.
        ServiceError::InternalTopic {
            operation: "delete",
            ..
        } => ResponseError::TopicAuthorizationFailed,
        ServiceError::InternalTopic { .. } => ResponseError::InvalidTopicException,
        ServiceError::Log(LogError::InvalidBatch(BatchError::TooLarge { .. })) => {
            ResponseError::MessageTooLarge
        }
        ServiceError::Log(LogError::InvalidBatch(_)) => ResponseError::CorruptMessage,
        ServiceError::Log(LogError::OffsetOutOfRange { .. }) => ResponseError::OffsetOutOfRange,
        ServiceError::Log(LogError::Poisoned { .. } | LogError::Io { .. }) => {
            ResponseError::KafkaStorageError
        }
        ServiceError::Sequence(crate::producers::SequenceError::OutOfOrder { .. }) => {
            ResponseError::OutOfOrderSequenceNumber
        }
        ServiceError::Sequence(crate::producers::SequenceError::FencedEpoch { .. }) => {
            ResponseError::InvalidProducerEpoch
        }
        ServiceError::IdempotentBatchCount => ResponseError::InvalidRecord,
        ServiceError::Txn(crate::txn::TxnAppendError::NotInTransaction { .. }) => {
            ResponseError::InvalidTxnState
        }
        ServiceError::Txn(crate::txn::TxnAppendError::Fenced { .. }) => {
            ResponseError::InvalidProducerEpoch
        }
        ServiceError::Txn(_) => ResponseError::InvalidRecord,
        ServiceError::Denied(denied) => authorization_failed(denied.resource_type),
        _ => {
            tracing::error!(error = %e, "kafka request failed");
            ResponseError::UnknownServerError
        }
    };
    error.code()
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_listener_advertises_its_own_address() {
        let spec = |s: &str| s.parse::<ListenerSpec>().unwrap();
        let config = KafkaConfig {
            advertised: Some("public.example:9092".into()),
            advertised_listeners: vec!["SSL://tls.example:9093".parse().unwrap()],
            ..KafkaConfig::default()
        };
        let at = |s: &str, only| super::advertised_address(&config, spec(s), only);
        assert_eq!(at("SSL://0.0.0.0:1", false), ("tls.example".into(), 9093));
        assert_eq!(
            at("PLAINTEXT://0.0.0.0:2", false),
            ("public.example".into(), 9092)
        );
        // The single address is not another protocol's, unless that listener is the only one.
        assert_eq!(at("SASL_SSL://0.0.0.0:3", false), ("127.0.0.1".into(), 3));
        assert_eq!(
            at("SASL_SSL://0.0.0.0:3", true),
            ("public.example".into(), 9092)
        );
        assert_eq!(
            at("SASL_PLAINTEXT://10.0.0.1:4", false),
            ("10.0.0.1".into(), 4)
        );
    }

    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    /// A JoinGroup v0 request whose protocol array claims i32::MAX entries and has none:
    /// kafka-protocol 0.18.0 sized its vector from that count and aborted the process; the
    /// patched copy (`vendor/kafka-protocol`) bounds it, so it is a decode error.
    #[test]
    fn a_hostile_array_length_is_an_error_not_an_abort() {
        let mut b = BytesMut::new();
        b.put_i16(11); // JoinGroup
        b.put_i16(0); // v0
        b.put_i32(7); // correlation id
        b.put_i16(1);
        b.put_slice(b"c"); // client id
        b.put_i16(1);
        b.put_slice(b"g"); // group id
        b.put_i32(10_000); // session timeout
        b.put_i16(0); // member id ""
        b.put_i16(8);
        b.put_slice(b"consumer"); // protocol type
        let mut honest = b.clone();
        honest.put_i32(0); // protocols: none
        assert!(decode_request(honest.freeze()).is_ok());
        b.put_i32(i32::MAX); // protocols
        assert!(decode_request(b.freeze()).is_err());
    }

    /// One record batch (v2, uncompressed) holding one record with null key and value whose
    /// header count is `headers` (already a zigzag varint) and that has no header bytes.
    fn batch_claiming_headers(headers: &[u8]) -> Bytes {
        let mut record = BytesMut::new();
        record.put_slice(&[0, 0, 0, 1, 1]); // attributes, deltas, null key, null value
        record.put_slice(headers);
        let mut body = BytesMut::new();
        body.put_i16(0); // attributes
        body.put_i32(0); // last offset delta
        body.put_i64(1_700_000_000_000);
        body.put_i64(1_700_000_000_000);
        body.put_i64(-1); // producer id
        body.put_i16(-1); // producer epoch
        body.put_i32(-1); // base sequence
        body.put_i32(1); // record count
        body.put_u8((record.len() as u8) << 1); // record length, zigzag
        body.put_slice(&record);
        let mut batch = BytesMut::new();
        batch.put_i64(0); // base offset
        batch.put_i32(4 + 1 + 4 + body.len() as i32); // batch length
        batch.put_i32(-1); // partition leader epoch
        batch.put_i8(2); // magic
        batch.put_u32(crc32c::crc32c(&body));
        batch.put_slice(&body);
        batch.freeze()
    }

    /// A record claiming i32::MAX headers and holding none: kafka-protocol 0.18.0 sized its
    /// header map from that count; the patched copy bounds it, so decoding is an error. The
    /// offsets store decodes batches with this decoder at start.
    #[test]
    fn a_hostile_header_count_is_an_error_not_an_abort() {
        use kafka_protocol::records::RecordBatchDecoder;
        let honest = batch_claiming_headers(&[0]);
        let set = RecordBatchDecoder::decode(&mut honest.clone()).unwrap();
        assert_eq!(set.records.len(), 1, "the honest batch decodes");
        let mut hostile = batch_claiming_headers(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert!(RecordBatchDecoder::decode(&mut hostile).is_err());
    }

    /// The same in a flexible version (JoinGroup v6): the compact array's length is a varint.
    #[test]
    fn a_hostile_compact_array_length_is_an_error_not_an_abort() {
        let mut b = BytesMut::new();
        b.put_i16(11); // JoinGroup
        b.put_i16(6); // v6, flexible
        b.put_i32(7); // correlation id
        b.put_i16(1);
        b.put_slice(b"c"); // client id (a nullable string even in flexible headers)
        b.put_u8(0); // header tagged fields
        b.put_u8(2);
        b.put_slice(b"g"); // group id
        b.put_i32(10_000); // session timeout
        b.put_i32(10_000); // rebalance timeout
        b.put_u8(1); // member id ""
        b.put_u8(0); // group instance id null
        b.put_u8(9);
        b.put_slice(b"consumer"); // protocol type
                                  // The same request with no protocols decodes, so the error below is the length's.
        let mut honest = b.clone();
        honest.put_slice(&[1, 0]); // protocols: empty; body tagged fields
        assert!(decode_request(honest.freeze()).is_ok());
        b.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]); // protocols: 2^31 - 2 entries
        assert!(decode_request(b.freeze()).is_err());
    }

    fn frame(api_key: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")))
            .encode(&mut buf, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn real_requests_decode_and_unknown_versions_fall_back() {
        let decoded = decode_request(frame(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        ))
        .unwrap();
        assert!(matches!(decoded, Decoded::Request { version: 3, .. }));
        // A newer ApiVersions than we speak: the v0 fallback, keeping the correlation id.
        let mut newer = frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).to_vec();
        newer[2..4].copy_from_slice(&9i16.to_be_bytes());
        match decode_request(Bytes::from(newer)).unwrap() {
            Decoded::ApiVersionsFallback { header } => assert_eq!(header.correlation_id, 7),
            other => panic!("{other:?}"),
        }
        let metadata =
            decode_request(frame(ApiKey::Metadata, 12, &MetadataRequest::default())).unwrap();
        assert!(matches!(metadata, Decoded::Request { version: 12, .. }));
        // Unsupported: decoded as such and answered with UNSUPPORTED_VERSION where the answer
        // has a top-level error field in that version (Metadata v13 and telemetry do; Produce
        // has none, so its connection is closed with a log line).
        assert!(matches!(
            decode_request(frame(ApiKey::Metadata, 13, &MetadataRequest::default())),
            Ok(Decoded::Unsupported { version: 13, .. })
        ));
        assert!(matches!(
            unsupported(ApiKey::Metadata, 13),
            Some(ResponseKind::Metadata(r)) if r.error_code == 35
        ));
        assert!(unsupported(ApiKey::Produce, 12).is_none());
        assert!(
            unsupported(ApiKey::FindCoordinator, 6).is_none(),
            "no top-level code in v6"
        );
        assert!(matches!(
            unsupported(ApiKey::GetTelemetrySubscriptions, 0),
            Some(ResponseKind::GetTelemetrySubscriptions(r)) if r.error_code == 35
        ));
        assert!(decode_request(Bytes::from_static(&[0, 0, 0])).is_err());
    }

    fn join_group() -> kafka_protocol::messages::JoinGroupRequest {
        use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
        kafka_protocol::messages::JoinGroupRequest::default()
            .with_group_id(StrBytes::from_static_str("g").into())
            .with_session_timeout_ms(10_000)
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(
                    b"\x00\x01\x00\x00\x00\x01\x00\x01t",
                ))])
    }

    fn offset_commit() -> kafka_protocol::messages::OffsetCommitRequest {
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        kafka_protocol::messages::OffsetCommitRequest::default()
            .with_group_id(StrBytes::from_static_str("g").into())
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(StrBytes::from_static_str("t").into())
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default().with_committed_offset(42)
                ])])
    }

    fn produce() -> kafka_protocol::messages::ProduceRequest {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        kafka_protocol::messages::ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(StrBytes::from_static_str("t").into())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_records(Some(Bytes::from_static(&[0u8; 70])))])])
    }

    /// A request of `api_key` with every field at its default, in the crate's encoding of
    /// `version`, or in the old layout `legacy` reads for the versions the crate lacks.
    fn default_body(api_key: ApiKey, version: i16) -> BytesMut {
        try_default_body(api_key, version).unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}"))
    }

    fn try_default_body(api_key: ApiKey, version: i16) -> anyhow::Result<BytesMut> {
        use kafka_protocol::messages::*;
        if legacy::is_legacy(api_key, version) {
            return Ok(legacy::tests::example_body(api_key, version));
        }
        macro_rules! body {
            ($($key:ident => $request:ty),* $(,)?) => {
                match api_key {
                    $(ApiKey::$key => {
                        let mut b = BytesMut::new();
                        <$request>::default().encode(&mut b, version)?;
                        Ok(b)
                    })*
                    other => panic!("no default request for {other:?}: add it here"),
                }
            };
        }
        body!(
            Produce => ProduceRequest,
            Fetch => FetchRequest,
            ListOffsets => ListOffsetsRequest,
            Metadata => MetadataRequest,
            OffsetCommit => OffsetCommitRequest,
            OffsetFetch => OffsetFetchRequest,
            FindCoordinator => FindCoordinatorRequest,
            JoinGroup => JoinGroupRequest,
            Heartbeat => HeartbeatRequest,
            AddPartitionsToTxn => AddPartitionsToTxnRequest,
            AddOffsetsToTxn => AddOffsetsToTxnRequest,
            EndTxn => EndTxnRequest,
            TxnOffsetCommit => TxnOffsetCommitRequest,
            LeaveGroup => LeaveGroupRequest,
            SyncGroup => SyncGroupRequest,
            DescribeGroups => DescribeGroupsRequest,
            ListGroups => ListGroupsRequest,
            ApiVersions => ApiVersionsRequest,
            CreateTopics => CreateTopicsRequest,
            DeleteTopics => DeleteTopicsRequest,
            InitProducerId => InitProducerIdRequest,
            DescribeCluster => DescribeClusterRequest,
            SaslHandshake => SaslHandshakeRequest,
            SaslAuthenticate => SaslAuthenticateRequest,
            DescribeUserScramCredentials => DescribeUserScramCredentialsRequest,
            AlterUserScramCredentials => AlterUserScramCredentialsRequest,
            CreateAcls => CreateAclsRequest,
            DescribeAcls => DescribeAclsRequest,
            DeleteAcls => DeleteAclsRequest,
        )
    }

    /// Every (API, version) ApiVersions advertises.
    fn served() -> Vec<(ApiKey, i16)> {
        SUPPORTED
            .iter()
            .flat_map(|(key, min, max)| (*min..=*max).map(move |v| (*key, v)))
            .collect()
    }

    fn framed(api_key: ApiKey, version: i16, body: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")))
            .encode(&mut buf, api_key.request_header_version(version))
            .unwrap();
        buf.put_slice(body);
        buf.freeze()
    }

    /// Every advertised version of every API decodes through the listener's decoder into a
    /// request of that version, and the version past each range does not (it is answered
    /// with UNSUPPORTED_VERSION where the answer allows, else the connection is closed). The
    /// handlers' answers are checked over a socket in `tests/it/kafka_versions.rs`.
    #[test]
    fn every_advertised_version_decodes() {
        for (api_key, version) in served() {
            let frame = framed(api_key, version, &default_body(api_key, version));
            match decode_request(frame) {
                Ok(Decoded::Request { version: v, .. }) if v == version => {}
                other => panic!("{api_key:?} v{version}: {other:?}"),
            }
        }
        for (api_key, _, max) in SUPPORTED {
            if api_key == ApiKey::ApiVersions || max >= api_key.valid_versions().max {
                continue;
            }
            // Some of the crate's types encode fewer versions than its ApiKey table lists.
            let Ok(body) = try_default_body(api_key, max + 1) else {
                continue;
            };
            let frame = framed(api_key, max + 1, &body);
            assert!(
                matches!(decode_request(frame), Ok(Decoded::Unsupported { .. })),
                "{api_key:?} v{}",
                max + 1
            );
            if let Some(answer) = unsupported(api_key, max + 1) {
                answer.encode(&mut BytesMut::new(), max + 1).unwrap();
            }
        }
    }

    proptest! {
        /// Any advertised version of any API, with a byte changed and the tail cut anywhere.
        #[test]
        fn damaged_requests_of_every_version_never_panic(
            which in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let served = served();
            let (api_key, version) = served[which.index(served.len())];
            let mut bytes = framed(api_key, version, &default_body(api_key, version)).to_vec();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = decode_request(Bytes::from(bytes));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(Bytes::from(bytes));
        }

        #[test]
        fn damaged_real_requests_never_panic(
            key in prop_oneof![
                Just(ApiKey::Metadata),
                Just(ApiKey::ApiVersions),
                Just(ApiKey::JoinGroup),
                Just(ApiKey::OffsetCommit),
                Just(ApiKey::Produce),
            ],
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let good = match key {
                ApiKey::Metadata => frame(ApiKey::Metadata, 9, &MetadataRequest::default()),
                ApiKey::JoinGroup => frame(ApiKey::JoinGroup, 5, &join_group()),
                ApiKey::OffsetCommit => frame(ApiKey::OffsetCommit, 8, &offset_commit()),
                ApiKey::Produce => frame(ApiKey::Produce, 9, &produce()),
                _ => frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()),
            };
            let mut bytes = good.to_vec();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = decode_request(Bytes::from(bytes));
        }
    }
}
