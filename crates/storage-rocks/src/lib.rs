//! The RocksDB [`Engine`](flotilla_storage::Engine): one database per node, one column
//! family per [`Space`](flotilla_storage::Space), durability through an explicit WAL fsync.
//!
//! Architecture Invariant: `rocksdb` enters the workspace through this crate alone; every
//! other crate sees only the `flotilla_storage::Engine` trait.

mod rocks_config;
mod rocks_engine;

pub use rocks_config::RocksConfig;
pub use rocks_engine::RocksEngine;
