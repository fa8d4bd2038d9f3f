//! The public gRPC API (`flotilla.v1`): one module per service over the shared
//! [`NodeContext`](crate::context::NodeContext). Services sit on top: they use the context,
//! routing and error mapping below them, and nothing below uses them.

mod admin;
mod cluster;
mod convert;
mod fetch;
mod group;
mod produce;
mod produce_answer;

pub use admin::AdminApi;
pub use cluster::ClusterApi;
pub use fetch::FetchApi;
pub use group::GroupApi;
pub use produce::ProduceApi;
