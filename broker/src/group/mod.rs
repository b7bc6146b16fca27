//! Consumer groups: the coordinator (a pure state machine, time passed in) and the assignors
//! it uses. The network layer and the durable offsets store drive it.

pub mod assignor;
pub mod coordinator;

pub use assignor::{Assignor, TopicPartition};
pub use coordinator::{
    CommittedOffset, Coordinator, CoordinatorConfig, GroupDescription, GroupError, GroupState,
    Input, JoinResult, Output,
};
