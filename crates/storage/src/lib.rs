//! Node-level storage: the engine trait every Raft group on a node shares, the in-memory
//! engine the simulation runs on, group commit, and the conformance suite every engine passes.
//!
//! Architecture Invariant: this crate knows nothing about RocksDB, openraft or tonic.

mod engine;
mod error;
mod keys;
mod memory;
mod reclaimer;
mod syncer;

pub mod conformance;

pub use engine::{Direction, Engine, EngineView, KeyValue, Space, WriteBatch, WriteOp};
pub use error::StorageError;
pub use keys::{group_key, group_prefix_range, group_range, split_group_key};
pub use memory::{MemoryEngine, MemoryFaults};
pub use reclaimer::Reclaimer;
pub use syncer::{SyncHandle, Syncer};
