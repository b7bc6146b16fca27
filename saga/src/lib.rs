//! Strand's saga orchestrator.
//!
//! The engine, journal, participants and HTTP API arrive with the saga issue; this crate exists
//! now so that the workspace has its final shape and the dependency direction
//! (`client` <- `broker` <- `saga`) is fixed from the start.
