//! The partition: its state machine (offsets assigned at apply, an index from offsets to
//! Raft log positions) and the reader that serves fetches straight from the Raft log, which
//! doubles as the record store so records are written to disk once.
//!
//! Architecture Invariant: `PartitionStateMachine::apply` is deterministic: offsets and
//! timestamps come from the log, never from the applying node's clock.

mod command;
mod digest;
mod error;
mod producer_table;
mod reader;
mod state_machine;

pub use command::{PartitionCommand, PartitionRejection, PartitionResponse, ProducerSequence};
pub use digest::{Fnv64, hash_record, replica_digest};
pub use error::BrokerError;
pub use producer_table::{BATCHES_PER_PRODUCER, PRODUCERS_PER_PARTITION_MAX};
pub use reader::{FetchedBatch, PartitionReader};
pub use state_machine::{PartitionConfig, PartitionStateMachine, PartitionWatermarks};
