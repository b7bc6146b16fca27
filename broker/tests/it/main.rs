//! Integration tests of the broker crate, one binary with a module per subject.

mod acl;
mod broker_process;
mod cli_verbs;
mod compaction;
mod console;
mod corruption;
mod crash;
mod disk_full;
mod durability;
mod exhaustion;
mod group_consumers;
mod groups;
mod hostile;
mod http_auth;
mod internal_topics;
mod kafka_clients;
mod kafka_versions;
mod log_model;
mod observability;
mod sasl;
mod secure_clients;
mod server;
mod support;
mod tls;
mod topics;
mod transactions;
