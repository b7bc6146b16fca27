//! The Kafka-protocol listener, first part: enough of the protocol for unmodified Kafka clients to
//! read metadata, produce and consume (ApiVersions, Metadata, Produce, Fetch, ListOffsets).
//! Groups, the idempotent producer and admin requests come with the rest of the Kafka issue.
//!
//! The wire format is the `kafka-protocol` crate's; the data is the same as the native
//! protocol's, through [`crate::service::Broker`]: a record produced here is consumed with
//! `strand consume`, and the other way. Kafka requires answers in request order on a
//! connection, so each connection handles one request at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, FetchResponse, FindCoordinatorResponse,
    ListOffsetsResponse, MetadataResponse, ProduceResponse, RequestHeader, RequestKind,
    ResponseHeader, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::log::LogError;
use crate::service::{Broker, OffsetSpec, ServiceError};
use crate::topics::TopicError;

/// Kafka error codes used here.
mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
}

/// The node id Strand answers as: one broker, leader of every partition.
const NODE_ID: i32 = 0;

/// Requests served, with the versions this listener speaks (within what the crate encodes).
const SUPPORTED: [(ApiKey, i16, i16); 6] = [
    // Advertised from v0 although v0-v2 (legacy message sets) are refused: librdkafka up to
    // 2.11 enables gzip, snappy and lz4 only when the broker lists Produce v0 (it checks the
    // range [0, 0]); with v3 as the minimum it silently sends everything uncompressed.
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    // Strand is every group's coordinator. librdkafka also takes support for FindCoordinator as
    // the sign of a broker new enough for compressed batches, so it must be advertised.
    (ApiKey::FindCoordinator, 0, 4),
];

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub connections_max: usize,
    pub frame_bytes_max: usize,
    /// `host:port` clients are told to connect to (Metadata). By default the bound address,
    /// with 127.0.0.1 in place of an unspecified IP (0.0.0.0 cannot be connected to).
    pub advertised: Option<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            connections_max: 1024,
            frame_bytes_max: 8 << 20,
            advertised: None,
        }
    }
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
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.connections_max));
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
        let broker = broker.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        let advertised = advertised.clone();
        connections.spawn(async move {
            if let Err(reason) = connection(socket, broker, &config, advertised, shutdown).await {
                tracing::info!(%peer, %reason, "closed kafka connection");
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// The (host, port) to advertise.
fn advertised_address(configured: Option<&str>, bound: SocketAddr) -> Arc<(String, i32)> {
    if let Some((host, port)) = configured.and_then(|a| a.rsplit_once(':')) {
        if let Ok(port) = port.parse() {
            return Arc::new((host.to_string(), port));
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
    Arc::new((host, bound.port() as i32))
}

async fn connection(
    mut socket: TcpStream,
    broker: Broker,
    config: &KafkaConfig,
    advertised: Arc<(String, i32)>,
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
        if len < 8 || len as usize > config.frame_bytes_max {
            return Err(format!(
                "frame length {len} outside 8..={}",
                config.frame_bytes_max
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
                ResponseKind::ApiVersions(api_versions(code::UNSUPPORTED_VERSION)),
                0,
            ),
            Decoded::Request {
                header,
                version,
                request,
            } => {
                match handle(&broker, *request, version, &advertised).await {
                    Some(response) => (header, response, version),
                    // acks=0: no answer at all.
                    None => continue,
                }
            }
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
    if !in_range {
        return Err(format!("unsupported request {api_key:?} v{version}"));
    }
    let request = RequestKind::decode(api_key, &mut frame, version)
        .map_err(|e| format!("bad {api_key:?} v{version}: {e}"))?;
    Ok(Decoded::Request {
        header,
        version,
        request: Box::new(request),
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

fn error_code(e: &ServiceError) -> i16 {
    use strand_client::batch::BatchError;
    match e {
        ServiceError::UnknownTopicOrPartition { .. }
        | ServiceError::Topic(TopicError::NotFound(_)) => code::UNKNOWN_TOPIC_OR_PARTITION,
        ServiceError::Log(LogError::InvalidBatch(BatchError::TooLarge { .. })) => {
            code::MESSAGE_TOO_LARGE
        }
        ServiceError::Log(LogError::InvalidBatch(_)) => code::CORRUPT_MESSAGE,
        ServiceError::Log(LogError::OffsetOutOfRange { .. }) => code::OFFSET_OUT_OF_RANGE,
        ServiceError::Log(LogError::Poisoned { .. } | LogError::Io { .. }) => {
            code::KAFKA_STORAGE_ERROR
        }
        _ => code::UNKNOWN_SERVER_ERROR,
    }
}

async fn handle(
    broker: &Broker,
    request: RequestKind,
    version: i16,
    advertised: &(String, i32),
) -> Option<ResponseKind> {
    Some(match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions(code::NONE)),
        RequestKind::FindCoordinator(request) => {
            let host = StrBytes::from_string(advertised.0.clone());
            let coordinators = request
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    Coordinator::default()
                        .with_key(key)
                        .with_node_id(BrokerId(NODE_ID))
                        .with_host(host.clone())
                        .with_port(advertised.1)
                })
                .collect();
            ResponseKind::FindCoordinator(
                FindCoordinatorResponse::default()
                    .with_node_id(BrokerId(NODE_ID))
                    .with_host(host)
                    .with_port(advertised.1)
                    .with_coordinators(coordinators),
            )
        }
        RequestKind::Metadata(request) => {
            let all = broker.list_topics();
            // Metadata v0 has no null list: an empty one means every topic.
            let wanted: Option<Vec<String>> = request
                .topics
                .filter(|topics| !(version == 0 && topics.is_empty()))
                .map(|topics| {
                    topics
                        .into_iter()
                        .filter_map(|t| t.name.map(|n| n.0.to_string()))
                        .collect()
                });
            let topics = match wanted {
                None => all
                    .iter()
                    .map(|t| metadata_topic(&t.name, Some(t.partitions.len())))
                    .collect(),
                Some(names) => names
                    .iter()
                    .map(|name| {
                        metadata_topic(
                            name,
                            all.iter()
                                .find(|t| &t.name == name)
                                .map(|t| t.partitions.len()),
                        )
                    })
                    .collect(),
            };
            ResponseKind::Metadata(
                MetadataResponse::default()
                    .with_brokers(vec![MetadataResponseBroker::default()
                        .with_node_id(BrokerId(NODE_ID))
                        .with_host(StrBytes::from_string(advertised.0.clone()))
                        .with_port(advertised.1)])
                    .with_cluster_id(Some(StrBytes::from_static_str("strand")))
                    .with_controller_id(BrokerId(NODE_ID))
                    .with_topics(topics),
            )
        }
        RequestKind::Produce(request) => {
            let mut topics = Vec::new();
            for topic in request.topic_data {
                let name = topic.name.0.to_string();
                let mut partitions = Vec::new();
                for data in topic.partition_data {
                    let mut response = PartitionProduceResponse::default()
                        .with_index(data.index)
                        .with_log_append_time_ms(-1);
                    let records = data.records.unwrap_or_default();
                    let result = broker.append(&name, data.index as u32, &mut records.to_vec());
                    let result = match result {
                        Ok(info) if request.acks == -1 => broker
                            .wait_durable(&name, data.index as u32, info.last_offset)
                            .await
                            .map(|()| info),
                        other => other,
                    };
                    response = match result {
                        Ok(info) => response
                            .with_base_offset(info.base_offset as i64)
                            .with_log_start_offset(
                                broker
                                    .partition_info(&name, data.index as u32)
                                    .map_or(0, |p| p.log_start_offset as i64),
                            ),
                        Err(e) => {
                            tracing::debug!(topic = %name, partition = data.index, error = %e, "kafka produce failed");
                            response
                                .with_error_code(error_code(&e))
                                .with_base_offset(-1)
                        }
                    };
                    partitions.push(response);
                }
                topics.push(
                    TopicProduceResponse::default()
                        .with_name(topic.name)
                        .with_partition_responses(partitions),
                );
            }
            if request.acks == 0 {
                return None;
            }
            ResponseKind::Produce(ProduceResponse::default().with_responses(topics))
        }
        RequestKind::Fetch(request) => {
            let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
            let mut responses = Vec::new();
            let mut total = 0usize;
            for topic in &request.topics {
                let name = topic.topic.0.to_string();
                let mut partitions = Vec::new();
                for p in &topic.partitions {
                    let index = p.partition as u32;
                    let max_bytes = (p.partition_max_bytes.max(1) as usize)
                        .min(request.max_bytes.max(1) as usize);
                    let result = broker
                        .read(&name, index, p.fetch_offset.max(0) as u64, max_bytes)
                        .await;
                    let data = match result {
                        Ok(read) => {
                            total += read.batches.len();
                            PartitionData::default()
                                .with_partition_index(p.partition)
                                .with_high_watermark(read.high_watermark as i64)
                                .with_last_stable_offset(read.high_watermark as i64)
                                .with_log_start_offset(read.log_start_offset as i64)
                                .with_records(Some(read.batches))
                        }
                        Err(e) => PartitionData::default()
                            .with_partition_index(p.partition)
                            .with_error_code(error_code(&e))
                            .with_high_watermark(-1)
                            .with_last_stable_offset(-1),
                    };
                    partitions.push(data);
                }
                responses.push(
                    FetchableTopicResponse::default()
                        .with_topic(topic.topic.clone())
                        .with_partitions(partitions),
                );
            }
            // Nothing yet: long-poll on the first partition asked for, then read again.
            if total == 0 && !max_wait.is_zero() {
                if let Some((topic, p)) = request
                    .topics
                    .first()
                    .and_then(|t| t.partitions.first().map(|p| (t, p)))
                {
                    let name = topic.topic.0.to_string();
                    let _ = tokio::time::timeout(
                        max_wait,
                        broker.wait_for_data(
                            &name,
                            p.partition as u32,
                            p.fetch_offset.max(0) as u64,
                        ),
                    )
                    .await;
                    let again = RequestKind::Fetch(request.with_max_wait_ms(0));
                    return Box::pin(handle(broker, again, version, advertised)).await;
                }
            }
            ResponseKind::Fetch(FetchResponse::default().with_responses(responses))
        }
        RequestKind::ListOffsets(request) => {
            let mut topics = Vec::new();
            for topic in request.topics {
                let name = topic.name.0.to_string();
                let mut partitions = Vec::new();
                for p in topic.partitions {
                    let spec = match p.timestamp {
                        -2 => OffsetSpec::Earliest,
                        -1 => OffsetSpec::Latest,
                        ts => OffsetSpec::Timestamp(ts),
                    };
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1);
                    partitions.push(
                        match broker
                            .list_offset(&name, p.partition_index as u32, spec)
                            .await
                        {
                            Ok(offset) => response.with_offset(offset.map_or(-1, |o| o as i64)),
                            Err(e) => response.with_error_code(error_code(&e)).with_offset(-1),
                        },
                    );
                }
                topics.push(
                    ListOffsetsTopicResponse::default()
                        .with_name(topic.name)
                        .with_partitions(partitions),
                );
            }
            ResponseKind::ListOffsets(ListOffsetsResponse::default().with_topics(topics))
        }
        other => {
            tracing::warn!(request = ?std::mem::discriminant(&other), "kafka request not served");
            return None;
        }
    })
}

fn metadata_topic(name: &str, partitions: Option<usize>) -> MetadataResponseTopic {
    let topic = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))));
    match partitions {
        None => topic.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION),
        Some(n) => topic.with_partitions(
            (0..n as i32)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(BrokerId(NODE_ID))
                        .with_replica_nodes(vec![BrokerId(NODE_ID)])
                        .with_isr_nodes(vec![BrokerId(NODE_ID)])
                })
                .collect(),
        ),
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use proptest::prelude::*;

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
        assert!(decode_request(frame(ApiKey::Metadata, 13, &MetadataRequest::default())).is_err());
        assert!(decode_request(Bytes::from_static(&[0, 0, 0])).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(Bytes::from(bytes));
        }

        #[test]
        fn damaged_real_requests_never_panic(
            key in prop_oneof![Just(ApiKey::Metadata), Just(ApiKey::ApiVersions)],
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let good = match key {
                ApiKey::Metadata => frame(ApiKey::Metadata, 9, &MetadataRequest::default()),
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
