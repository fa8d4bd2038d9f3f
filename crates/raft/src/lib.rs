//! openraft glue shared by every Raft group on a node: type configuration, the log store
//! and state-machine adapter over the node's one storage engine, the batched multi-group
//! transport, and the registry that routes incoming messages to local groups.
//!
//! Architecture Invariant: nothing here knows what a topic, a record or a consumer group is;
//! applications plug in through [`GroupStateMachine`].

mod blocking;
mod codec;
mod config;
mod endpoint;
mod error;
pub mod golden;
mod launcher;
mod log_layout;
mod log_store;
mod network;
mod node_info;
mod registry;
mod service;
mod snapshot;
mod state_machine;
mod transport;
mod type_config;

pub use codec::{
    Versioned, decode, decode_versioned, decode_with_version, encode, encode_versioned, encode_with_version,
    unreadable_version,
};
pub use config::RaftConfig;
pub use endpoint::{GroupEndpoint, ProposeError, RaftEndpoint, propose_error as endpoint_propose_error};
pub use error::RaftGlueError;
pub use launcher::GroupLauncher;
pub use log_layout::{ENTRY_ENVELOPE_VERSION, LogLayout, RAFT_STATE_VERSION, decode_entry, encode_entry};
pub use log_store::{LogStore, PurgeMode, RetainFloor};
pub use network::GroupNetworkFactory;
pub use node_info::NodeInfo;
pub use registry::GroupRegistry;
pub use service::{Introduction, Introductions, RaftTransportService};
pub use snapshot::keys::APP_KEYS_END;
pub use snapshot::{CHUNK_BYTES, FrameSource, GroupSnapshot, IterFrames};
pub use state_machine::{GroupStateMachine, Persistence, SM_STATE_VERSION, StateMachineStore};
pub use transport::{Transport, TransportConfig};
pub use type_config::{GroupConfig, Runtime, scoped};

pub use openraft;

#[cfg(test)]
mod install_tests;
#[cfg(test)]
mod storage_suite;
#[cfg(test)]
mod stored_formats;
