//! Strand's client crate: the wire types that broker and clients share, the async client, and
//! the `strand` CLI (`src/bin/strand.rs`).
//!
//! - [`batch`]: Kafka RecordBatch v2, the unit Strand stores, checks and serves unchanged, and
//!   a builder for producers.
//! - [`partitioner`]: Kafka's murmur2 key partitioner.
//! - [`native`]: the native TCP protocol (frames, requests, responses, pushes).
//! - [`connection`]: one pipelined connection, over TCP or TLS ([`tls`]); [`client`]: reconnecting [`Client`] and [`Admin`].
//! - [`producer`]: batching [`Producer`] with delivery futures; [`consumer`]: [`Consumer`];
//!   [`group`]: [`GroupConsumer`], a consumer-group member.
//! - [`sasl`]: the SASL mechanisms (PLAIN, SCRAM) and [`SaslConfig`]; [`scram`]: both sides of
//!   a SCRAM exchange and the stored form of a password, shared with the broker.

pub mod batch;
pub mod client;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
pub mod native;
pub mod partitioner;
pub mod producer;
pub mod sasl;
pub mod scram;
pub mod tls;

pub use client::{Admin, Client, ClientConfig};
pub use consumer::{Consumer, ConsumerConfig, Record, StartFrom};
pub use error::ClientError;
pub use group::{GroupConfig, GroupConsumer, OffsetReset};
pub use native::{Acks, TopicSettings};
pub use producer::{Producer, ProducerConfig, ProducerRecord};
pub use sasl::{Mechanism, SaslConfig};
pub use tls::ClientTlsConfig;
