//! Integration tests of the cluster crate, one binary with a module per subject.

mod bridge;
mod bridge_metrics;
mod librdkafka;
mod read_to_end;
mod secure_bridge;
mod support;
mod tls;
mod topics;
