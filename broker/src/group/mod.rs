//! Consumer groups.
//!
//! - `coordinator`: the coordinator as a pure state machine (time passed in).
//! - `assignor`: range, round-robin and cooperative-sticky assignment on the broker.
//! - `offsets`: committed offsets in the internal compacted topic `__consumer_offsets`.
//! - `service`: [`Groups`], which drives the coordinator for the network layer.

pub mod assignor;
pub mod coordinator;
pub mod offsets;
pub mod service;

pub use assignor::{Assignor, TopicPartition};
pub use coordinator::{
    ClientJoin, ClientProtocol, CommittedOffset, Coordinator, CoordinatorConfig, GroupDescription,
    GroupError, GroupState, Input, JoinResult, Output, SyncAssignment,
};
pub use service::{CommitError, Groups, JoinRequest};
