//! Integration tests of the cluster crate, one binary with a module per subject.

mod bridge;
mod librdkafka;
mod strand_sasl;
mod support;
mod tls;
