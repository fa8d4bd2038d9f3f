//! What every group's openraft type configuration has in common.

use std::future::Future;

use openraft::{EntryPayload, RaftTypeConfig};

use crate::NodeInfo;

/// The async runtime of every group: tokio, with openraft's randomness (election timeouts,
/// tick phase) drawn from a seeded, task-local RNG so a simulation replays exactly.
pub type Runtime = openraft_rt::deterministic_rng::DeterministicRng<openraft_rt_tokio::TokioRuntime>;

/// A type configuration the glue in this crate accepts. Declare one per application with
/// `openraft::declare_raft_types!`, setting `NodeId = u64`, `Node = NodeInfo`,
/// `AsyncRuntime = Runtime` and `LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>`.
pub trait GroupConfig:
    RaftTypeConfig<NodeId = u64, Node = NodeInfo, Term = u64, AsyncRuntime = Runtime, R: Default>
{
    /// The name of the application's command format, in error messages.
    const COMMAND_FORMAT: &'static str;
    /// The version of the application's command encoding, stored in every log entry. Bump it
    /// when the encoding of `D` changes other than by a variant appended at the end.
    const COMMAND_VERSION: u8;

    /// Takes an entry apart into its payload (`entry.payload` for openraft's `Entry`, which
    /// generic code cannot name).
    fn into_payload(entry: Self::Entry) -> EntryPayload<Self::D, u64, NodeInfo>;
}

/// Runs `future` with openraft's RNG seeded by `seed`. Every call that creates a Raft (and so
/// spawns its tasks) must run inside such a scope: tokio does not carry task-locals into
/// spawned tasks, and openraft's runtime panics without one.
pub fn scoped<F: Future>(seed: u64, future: F) -> impl Future<Output = F::Output> {
    Runtime::scope(seed, future)
}

/// Declares the openraft type configuration of one application's groups, with the types
/// every group on a node shares (`u64` ids and terms, [`NodeInfo`], the deterministic
/// [`Runtime`], one leader per term), and implements [`GroupConfig`] for it.
///
/// ```ignore
/// flotilla_raft::declare_group_config!(
///     /// openraft types of partition groups.
///     pub PartitionConfig: PartitionEntry => PartitionResponse, format "partition command" version 1
/// );
/// ```
#[macro_export]
macro_rules! declare_group_config {
    ($(#[$meta:meta])* $visibility:vis $name:ident: $command:ty => $response:ty, format $format:literal version $version:literal) => {
        $crate::openraft::declare_raft_types!(
            $(#[$meta])*
            $visibility $name:
                D = $command,
                R = $response,
                NodeId = u64,
                Node = $crate::NodeInfo,
                Term = u64,
                LeaderId = $crate::openraft::impls::leader_id_std::LeaderId<u64, u64>,
                AsyncRuntime = $crate::Runtime,
        );

        impl $crate::GroupConfig for $name {
            const COMMAND_FORMAT: &'static str = $format;
            const COMMAND_VERSION: u8 = $version;

            fn into_payload(
                entry: Self::Entry,
            ) -> $crate::openraft::EntryPayload<$command, u64, $crate::NodeInfo> {
                entry.payload
            }
        }
    };
}
