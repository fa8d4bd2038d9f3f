//! The Flotilla node: composes storage, the Raft groups, the metadata catalogue and the
//! partitions, and serves the public gRPC API. The `flotilla` binary wraps [`run`] with
//! configuration parsing, RocksDB and real sockets; the simulation wraps it with the
//! in-memory engine and turmoil sockets.

mod api;
mod api_error;
mod config;
mod context;
mod coordinator;
mod entry_clock;
mod error;
mod fail_stop;
mod http;
mod membership;
mod meta;
mod node;
mod partition_driver;
mod partitions;
mod peers;
mod proposal_order;
mod routing;

pub use config::{FileConfig, GroupsConfig, NodeConfig, RocksFileConfig, parse_initial_cluster};
pub use error::NodeError;
pub use fail_stop::EXIT_STORAGE_FAILED;
pub use http::serve_http;
pub use node::{NodeSeams, run};
