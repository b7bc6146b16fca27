//! Integration tests of the saga orchestrator, one binary with a module per subject.

mod archive;
mod auth;
mod broker_participants;
mod chaos;
mod cli;
mod consistency;
mod console;
mod crash;
mod http_api;
mod kafka_journal;
mod locks;
mod observability;
mod secure;
mod sizes;
mod support;
mod tls;
mod triggers;
mod usage;
mod zombie;
