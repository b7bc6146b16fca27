//! The Kafka-protocol listener: unmodified Kafka clients produce (including the idempotent
//! producer), consume, join groups, commit offsets and create topics.
//!
//! The wire format is the `kafka-protocol` crate's; the data is the same as the native
//! protocol's, through [`crate::service::Broker`]: a record produced here is consumed with
//! `strand consume`, and the other way, and groups and committed offsets are shared.
//!
//! - this file: accepting connections, framing, decoding, ApiVersions and dispatch. Kafka
//!   requires answers in request order on a connection; like Kafka, a connection handles one
//!   request at a time (clients pipeline on their side and open a separate coordinator
//!   connection for group requests).
//! - `data`: Metadata, Produce, Fetch, ListOffsets.
//! - `groups`: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//!   OffsetFetch, ListGroups, DescribeGroups on the broker's one coordinator.
//! - `admin`: CreateTopics, DeleteTopics, InitProducerId.

mod admin;
mod data;
mod groups;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    AddOffsetsToTxnResponse, ApiKey, ApiVersionsResponse, ConsumerGroupHeartbeatResponse,
    EndTxnResponse, GetTelemetrySubscriptionsResponse, RequestHeader, RequestKind, ResponseHeader,
    ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::log::LogError;
use crate::service::{Broker, ServiceError};
use crate::topics::TopicError;

/// The node id Strand answers as: one broker, leader of every partition.
const NODE_ID: i32 = 0;

/// Requests served, with the versions this listener speaks (within what the crate encodes).
const SUPPORTED: [(ApiKey, i16, i16); 19] = [
    // Advertised from v0 although v0-v2 (legacy message sets) are refused: librdkafka up to
    // 2.11 enables gzip, snappy and lz4 only when the broker lists Produce v0 (it checks the
    // range [0, 0]); with v3 as the minimum it silently sends everything uncompressed.
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    // librdkafka takes support for FindCoordinator as the sign of a broker new enough for
    // groups and compressed batches, so it must be advertised.
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    // Transactions are not supported: InitProducerId serves idempotent producers only.
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::SaslHandshake, 0, 1),
];

/// Topics Kafka itself keeps (offsets, transactions, KRaft metadata): clients may not create or
/// delete them. Other names starting with `__` are ordinary topics, as on Kafka (the saga
/// orchestrator's `__saga_journal`, say).
pub(crate) fn is_internal_topic(name: &str) -> bool {
    matches!(
        name,
        "__consumer_offsets" | "__transaction_state" | "__cluster_metadata"
    )
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub connections_max: usize,
    pub frame_bytes_max: usize,
    /// `host:port` clients are told to connect to (Metadata). By default the bound address,
    /// with 127.0.0.1 in place of an unspecified IP (0.0.0.0 cannot be connected to).
    pub advertised: Option<String>,
    /// Create topics that Metadata requests name and that do not exist.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics asking for the default.
    pub default_partitions: u32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            connections_max: 1024,
            frame_bytes_max: 8 << 20,
            advertised: None,
            auto_create_topics: true,
            default_partitions: 1,
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

/// Serves Kafka clients until shutdown.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    config: KafkaConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let advertised = advertised_address(
        config.advertised.as_deref(),
        listener.local_addr().expect("bound listener"),
    );
    let permits = Arc::new(Semaphore::new(config.connections_max));
    let context = Arc::new(Context {
        broker,
        config,
        advertised,
    });
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = socket.set_nodelay(true);
        let context = context.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            if let Err(reason) = connection(socket, &context, shutdown).await {
                tracing::info!(%peer, %reason, "closed kafka connection");
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// The (host, port) to advertise.
fn advertised_address(configured: Option<&str>, bound: SocketAddr) -> (String, i32) {
    if let Some((host, port)) = configured.and_then(|a| a.rsplit_once(':')) {
        if let Ok(port) = port.parse() {
            return (host.to_string(), port);
        }
    }
    if configured.is_some() {
        tracing::warn!(advertised = ?configured, "ignoring an advertised address that is not host:port");
    }
    let host = if bound.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        bound.ip().to_string()
    };
    (host, bound.port() as i32)
}

async fn connection(
    mut socket: TcpStream,
    context: &Context,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    loop {
        let mut len = [0u8; 4];
        tokio::select! {
            read = socket.read_exact(&mut len) => match read {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(format!("read failed: {e}")),
            },
            _ = stopped(&mut shutdown) => return Ok(()),
        }
        let len = i32::from_be_bytes(len);
        if len < 8 || len as usize > context.config.frame_bytes_max {
            return Err(format!(
                "frame length {len} outside 8..={}",
                context.config.frame_bytes_max
            ));
        }
        let mut frame = vec![0u8; len as usize];
        socket
            .read_exact(&mut frame)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        let (header, response, response_version) = match decode_request(Bytes::from(frame))? {
            Decoded::ApiVersionsFallback { header } => (
                header,
                ResponseKind::ApiVersions(api_versions(ResponseError::UnsupportedVersion.code())),
                0,
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
                    (header, response, version)
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
            } => match handle(context, &header, *request, version).await {
                Some(response) => (header, response, version),
                // acks=0: no answer at all.
                None => continue,
            },
        };
        let api_key = ApiKey::try_from(header.request_api_key).expect("checked when decoded");
        let mut out = BytesMut::new();
        out.put_i32(0);
        let response_header = ResponseHeader::default().with_correlation_id(header.correlation_id);
        response_header
            .encode(&mut out, api_key.response_header_version(response_version))
            .map_err(|e| format!("encoding a response header: {e}"))?;
        response
            .encode(&mut out, response_version)
            .map_err(|e| format!("encoding {api_key:?}: {e}"))?;
        let n = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&n.to_be_bytes());
        socket
            .write_all(&out)
            .await
            .map_err(|e| format!("write failed: {e}"))?;
    }
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
        _ => return None,
    })
}

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|(key, min, max)| {
                    // The advertised minimum may go below what the crate decodes (see Produce).
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
        RequestKind::Metadata(r) => ResponseKind::Metadata(data::metadata(cx, r, version).await),
        RequestKind::Produce(r) => ResponseKind::Produce(data::produce(cx, r).await?),
        RequestKind::Fetch(r) => ResponseKind::Fetch(data::fetch(cx, r).await),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(data::list_offsets(cx, r).await),
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(cx, r))
        }
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(groups::join(cx, r, version, client_id).await)
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync(cx, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(cx, r)),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(groups::leave(cx, r)),
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(cx, r).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(cx, r, version))
        }
        RequestKind::ListGroups(_) => ResponseKind::ListGroups(groups::list(cx)),
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(groups::describe(cx, r)),
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(cx, r).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(cx, r, version).await)
        }
        RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(admin::init_producer_id(r)),
        RequestKind::DescribeCluster(_) => {
            ResponseKind::DescribeCluster(data::describe_cluster(cx))
        }
        RequestKind::SaslHandshake(_) => ResponseKind::SaslHandshake(
            // No SASL mechanism is enabled: the client learns it with the list it may use.
            SaslHandshakeResponse::default()
                .with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
        ),
        other => {
            // Only requests listed in SUPPORTED are decoded, and each has an arm above.
            tracing::error!(request = ?std::mem::discriminant(&other), "kafka request decoded but not served");
            return None;
        }
    })
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
        _ => {
            tracing::error!(error = %e, "kafka request failed");
            ResponseError::UnknownServerError
        }
    };
    error.code()
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    /// A JoinGroup v0 request whose protocol array claims i32::MAX entries and has none: the
    /// decoder sizes its vector from that count (see `crate::alloc`), and it must come back as a
    /// decode error, not abort the broker.
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
        b.put_i32(i32::MAX); // protocols
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
        // Unsupported: decoded as such; Metadata has no top-level error field (the connection
        // is closed with a log line), telemetry has one (answered with UNSUPPORTED_VERSION).
        assert!(matches!(
            decode_request(frame(ApiKey::Metadata, 13, &MetadataRequest::default())),
            Ok(Decoded::Unsupported { version: 13, .. })
        ));
        assert!(unsupported(ApiKey::Metadata, 13).is_none());
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

    proptest! {
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
