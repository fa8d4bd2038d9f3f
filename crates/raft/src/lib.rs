//! openraft glue shared by every Raft group on a node: type configuration, the log store
//! and state-machine adapter over the node's one storage engine, the batched multi-group
//! transport, and the registry that routes incoming messages to local groups.
//!
//! Architecture Invariant: nothing here knows what a topic, a record or a consumer group is;
//! applications plug in through [`GroupStateMachine`].

mod codec;
mod config;
mod endpoint;
mod error;
mod launcher;
mod log_store;
mod network;
mod node_info;
mod registry;
mod service;
mod state_machine;
mod transport;
mod type_config;

pub use codec::{decode, encode};
pub use config::RaftConfig;
pub use endpoint::{GroupEndpoint, ProposeError, RaftEndpoint, propose_error as endpoint_propose_error};
pub use error::RaftGlueError;
pub use launcher::GroupLauncher;
pub use log_store::{LogStore, PurgeMode};
pub use network::GroupNetworkFactory;
pub use node_info::NodeInfo;
pub use registry::GroupRegistry;
pub use service::{Introduction, Introductions, RaftTransportService};
pub use state_machine::{GroupStateMachine, Persistence, StateMachineStore};
pub use transport::{Transport, TransportConfig};
pub use type_config::{GroupConfig, Runtime, scoped};

pub use openraft;

#[cfg(test)]
mod storage_suite;
