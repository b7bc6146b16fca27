//! Prometheus metrics of the broker, served as text on the HTTP listener's `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text: OpenMetrics 1.0 (it ends in `# EOF` and
/// names counters' samples `_total`), which Prometheus scrapes natively.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub request: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SaslLabel {
    pub mechanism: &'static str,
    /// `ok` or `failed`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `native`, `kafka` or `http`.
    pub listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiKeyLabel {
    /// The Kafka API's name, as Kafka spells it (`Produce`, `Fetch`, `JoinGroup`...).
    pub api_key: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupPartitionLabel {
    pub group: String,
    pub topic: String,
    pub partition: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageOperationLabel {
    /// `append`, `fsync` or `read`.
    pub operation: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 10 µs to about 10 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 21))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub connections_refused: Counter,
    pub in_flight_bytes: Gauge,
    pub bytes_in: Family<TopicLabel, Counter>,
    pub records_in: Family<TopicLabel, Counter>,
    pub bytes_out: Family<TopicLabel, Counter>,
    pub records_out: Family<TopicLabel, Counter>,
    pub request_seconds: HistogramFamily<RequestLabel>,
    pub fsync_seconds: Histogram,
    /// Partitions refusing writes after a failed fsync or write (set when scraped).
    pub poisoned_partitions: Gauge,
    /// Sealed segments whose files are open, across all partitions (set when scraped).
    pub open_sealed_segments: Gauge,
    /// SASL logins on either listener, by mechanism and result: a climbing `failed` count is
    /// someone guessing passwords (or a client with a stale one).
    pub sasl_authentications: Family<SaslLabel, Counter>,
    /// Open connections per listener (the sum is `connections`).
    pub listener_connections: Family<ListenerLabel, Gauge>,
    /// Kafka-protocol requests answered, by API key (acks=0 produce requests have no answer and
    /// are not counted).
    pub kafka_requests: Family<ApiKeyLabel, Counter>,
    /// Time from a Kafka request's last byte read to its answer's last byte written.
    pub kafka_request_seconds: HistogramFamily<ApiKeyLabel>,
    /// Committed offset's distance to the partition's high watermark, per group and partition
    /// (set when scraped).
    pub consumer_group_lag: Family<GroupPartitionLabel, Gauge>,
    /// Storage IO errors (failed write, fsync or read; a poisoned partition's refusals count
    /// under the operation refused).
    pub storage_errors: Family<StorageOperationLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("strand");
        let metrics = Metrics {
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            in_flight_bytes: Gauge::default(),
            bytes_in: Family::default(),
            records_in: Family::default(),
            bytes_out: Family::default(),
            records_out: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            fsync_seconds: latency_histogram(),
            poisoned_partitions: Gauge::default(),
            open_sealed_segments: Gauge::default(),
            sasl_authentications: Family::default(),
            listener_connections: Family::default(),
            kafka_requests: Family::default(),
            kafka_request_seconds: Family::new_with_constructor(latency_histogram),
            consumer_group_lag: Family::default(),
            storage_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open client connections on every listener (native, Kafka, HTTP)",
            metrics.connections.clone(),
        );
        registry.register(
            "poisoned_partitions",
            "Partitions refusing writes after a failed fsync, until recovered in place",
            metrics.poisoned_partitions.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because a connection cap was reached",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "in_flight_bytes",
            "Bytes of requests and answers in flight, charged to the in-flight budget",
            metrics.in_flight_bytes.clone(),
        );
        registry.register(
            "open_sealed_segments",
            "Sealed segments whose files are open (bounded by open_sealed_segments_max)",
            metrics.open_sealed_segments.clone(),
        );
        registry.register(
            "bytes_in",
            "Record batch bytes appended",
            metrics.bytes_in.clone(),
        );
        registry.register("records_in", "Records appended", metrics.records_in.clone());
        registry.register(
            "bytes_out",
            "Record batch bytes served to consumers",
            metrics.bytes_out.clone(),
        );
        registry.register(
            "records_out",
            "Records served to consumers",
            metrics.records_out.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "fsync_duration_seconds",
            "Time of one group-commit fsync pass",
            metrics.fsync_seconds.clone(),
        );
        registry.register(
            "sasl_authentications",
            "SASL logins on the native and Kafka listeners, by mechanism and result (ok, failed)",
            metrics.sasl_authentications.clone(),
        );
        registry.register(
            "listener_connections",
            "Open client connections per listener (native, kafka, http)",
            metrics.listener_connections.clone(),
        );
        registry.register(
            "kafka_requests",
            "Kafka-protocol requests handled, by API key",
            metrics.kafka_requests.clone(),
        );
        registry.register(
            "kafka_request_duration_seconds",
            "Time to answer a Kafka-protocol request, by API key (a fetch includes its long-poll wait)",
            metrics.kafka_request_seconds.clone(),
        );
        registry.register(
            "consumer_group_lag_records",
            "Records between a group's committed offset and the partition's high watermark",
            metrics.consumer_group_lag.clone(),
        );
        registry.register(
            "storage_errors",
            "Failed writes, fsyncs and reads of partition logs (including refusals of a poisoned partition)",
            metrics.storage_errors.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn observe_fsync(&self, elapsed: Duration) {
        self.fsync_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn observe_request(&self, request: &'static str, elapsed: Duration) {
        self.request_seconds
            .get_or_create(&RequestLabel { request })
            .observe(elapsed.as_secs_f64());
    }

    pub fn count_in(&self, topic: &str, bytes: u64, records: u64) {
        let label = TopicLabel {
            topic: topic.to_string(),
        };
        self.bytes_in.get_or_create(&label).inc_by(bytes);
        self.records_in.get_or_create(&label).inc_by(records);
    }

    pub fn count_out(&self, topic: &str, bytes: u64, records: u64) {
        let label = TopicLabel {
            topic: topic.to_string(),
        };
        self.bytes_out.get_or_create(&label).inc_by(bytes);
        self.records_out.get_or_create(&label).inc_by(records);
    }

    pub fn observe_kafka_request(&self, api_key: &str, elapsed: Duration) {
        let label = ApiKeyLabel {
            api_key: api_key.to_string(),
        };
        self.kafka_requests.get_or_create(&label).inc();
        self.kafka_request_seconds
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a storage failure of `operation`; errors that are the client's (a bad batch, an
    /// offset out of range) are not storage errors and are not counted.
    pub fn count_storage_error(&self, operation: &'static str, error: &crate::log::LogError) {
        use crate::log::LogError;
        if matches!(error, LogError::Io { .. } | LogError::Poisoned { .. }) {
            self.storage_errors
                .get_or_create(&StorageOperationLabel { operation })
                .inc();
        }
    }

    /// Replaces the consumer-group lag gauges with `lags` (group, topic, partition, lag), so
    /// that deleted groups and topics disappear.
    pub fn set_consumer_group_lag(
        &self,
        lags: impl IntoIterator<Item = (String, String, u32, i64)>,
    ) {
        self.consumer_group_lag.clear();
        for (group, topic, partition, lag) in lags {
            self.consumer_group_lag
                .get_or_create(&GroupPartitionLabel {
                    group,
                    topic,
                    partition,
                })
                .set(lag);
        }
    }

    /// The OpenMetrics text exposition of every metric (what prometheus-client writes; serve it
    /// as [`OPENMETRICS_CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
