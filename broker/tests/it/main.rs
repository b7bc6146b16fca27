//! Integration tests of the broker crate, one binary with a module per subject.

mod corruption;
mod crash;
mod durability;
mod log_model;
mod support;
mod topics;
