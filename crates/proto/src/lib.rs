//! Generated gRPC code for the public `flotilla.v1` API and the internal `raft.v1`
//! transport, plus the descriptor set for gRPC reflection.

#![allow(clippy::all, missing_docs)]

/// The public client API.
pub mod flotilla {
    /// Version 1 of the public API.
    pub mod v1 {
        tonic::include_proto!("flotilla.v1");
    }
}

/// The internal node-to-node transport.
pub mod raft {
    /// Version 1 of the internal transport.
    pub mod v1 {
        tonic::include_proto!("raft.v1");
    }
}

mod convert;
pub use convert::{flatten_topics, group_by_topic};
pub mod error;
pub mod net;

pub use flotilla::v1;

/// Encoded `FileDescriptorSet` of every proto file, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flotilla_descriptor.bin"));
