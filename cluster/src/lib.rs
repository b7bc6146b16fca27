//! Strand's Kafka-client side: everything that links librdkafka, so that the broker does not.
//!
//! - [`cluster`] (re-exported at the root): one API over either kind of cluster Strand works
//!   with, a Strand broker (through `strand-client`) or a Kafka-protocol cluster (through
//!   `rdkafka`). The saga orchestrator keeps its journal on one; the bridge mirrors between two.
//! - [`bridge`]: mirroring topics between clusters, run by the `strand-bridge` binary
//!   (`src/bin/strand-bridge.rs`).
//! - [`properties`]: librdkafka properties from a file or environment variables, for secrets.
//! - [`librdkafka_features`]: what the linked librdkafka was built with.

pub mod bridge;
pub mod cluster;
pub mod properties;

pub use cluster::*;

/// The features the linked librdkafka was built with (its `builtin.features` property), such
/// as `ssl`, `sasl_scram` or `zstd`.
pub fn librdkafka_features() -> Result<Vec<String>, rdkafka::error::KafkaError> {
    let native = rdkafka::ClientConfig::new().create_native_config()?;
    let features = native.get("builtin.features")?;
    Ok(features.split(',').map(str::to_string).collect())
}
