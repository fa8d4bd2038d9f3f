//! The metadata group: the cluster catalogue (nodes, topics, partition placement, leader
//! hints, the producer-id counter, consumer groups and their committed offsets) as a pure state machine, and placement as a pure function.
//!
//! Architecture Invariant: `MetadataState::apply` is deterministic: it reads no clock, no
//! randomness and no I/O, so every replica computes the same catalogue from the same log.

mod command;
mod groups;
mod placement;
mod requests;
mod state;
mod state_machine;
#[cfg(test)]
mod stored_formats;

pub use command::{GroupReply, LeaveReason, MetaCommand, MetaError, MetaReply, MetaResponse};
pub use groups::{
    CommittedOffset, ConsumerGroup, GROUP_MEMBERS_MAX, GROUPS_MAX, GroupError, GroupMember, MemberView, TopicPartition,
    assign,
};
pub use placement::place_replicas;
pub use requests::{REQUESTS_REMEMBERED, RequestId, RequestLog};
pub use state::{LeaderHint, MetadataState, NodeRecord, TopicRecord};
pub use state_machine::{MetaConfig, MetadataStateMachine};
