//! Integration tests of the broker crate, one binary with a module per subject.

mod bridge;
mod broker_process;
mod compaction;
mod corruption;
mod crash;
mod durability;
mod group_consumers;
mod groups;
mod hostile;
mod kafka_clients;
mod log_model;
mod server;
mod support;
mod topics;
