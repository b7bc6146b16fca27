//! Strand's saga orchestrator.
//!
//! - `definition`: saga definitions (JSON), versions and their validation.
//! - `template`: minijinja templates in participant URLs, headers and bodies.
//! - `engine`: one saga as a pure event-sourced state machine (decide, apply, replay).
//! - `breaker`: a circuit breaker per participant endpoint.

pub mod breaker;
pub mod definition;
pub mod engine;
pub mod template;
