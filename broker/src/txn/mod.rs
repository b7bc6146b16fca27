//! Kafka transactions (KIP-98): the coordinator, its durable state and what each partition
//! knows of the transactions that wrote to it.
//!
//! - `coordinator`: [`Transactions`], the transaction coordinator (InitProducerId with a
//!   transactional id, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn, timeouts,
//!   completing what a crash left prepared).
//! - `store`: the state of every transactional id in the compacted topic `__transaction_state`.
//! - `partition`: per partition, the open transactions (which bound the last stable offset)
//!   and the index of aborted ones, rebuilt from the log's control batches at start; the
//!   COMMIT/ABORT marker batches.
//!
//! The Kafka protocol side is `crate::kafka::txn`; this module knows nothing of the wire.

pub mod coordinator;
pub mod partition;
pub mod store;

pub use coordinator::{
    next_producer_id, PendingOffset, Transactions, TxnConfig, TxnError, TxnMeta, TxnState,
};
pub use partition::{AbortedTxn, PartitionTxnState, PartitionTxns, TxnAppendError};
pub use store::TXN_STATE_TOPIC;
