//! The partition: its state machine, built from parts (the log with its offset index and
//! retention, the idempotent producers' table), and the reader that serves fetches straight
//! from the Raft log, which doubles as the record store so records are written to disk once.
//!
//! Architecture Invariant: `PartitionStateMachine::apply` is deterministic: offsets,
//! timestamps and every decision that depends on time come from the log (the leader's clock
//! reading in each entry), never from the applying node's clock.

mod command;
mod digest;
mod error;
mod keys;
mod log;
mod part;
mod partition;
mod producers;
#[cfg(test)]
mod stored_formats;
#[cfg(test)]
mod testing;

pub use command::{PartitionCommand, PartitionEntry, PartitionRejection, PartitionResponse, ProducerSequence};
pub use digest::{Fnv64, hash_record, replica_digest};
pub use error::BrokerError;
pub use log::{FetchedBatch, IndexEntry, LogMeta, PartitionReader, PartitionWatermarks};
pub use partition::{Maintenance, PartitionConfig, PartitionStateMachine, PartitionStatus, PartitionWatches};
pub use producers::{BATCHES_PER_PRODUCER, PRODUCERS_PER_PARTITION_MAX};
