//! Integration tests of the cluster crate, one binary with a module per subject.

mod bridge;
mod bridge_metrics;
mod librdkafka;
mod secure_bridge;
mod support;
mod tls;
