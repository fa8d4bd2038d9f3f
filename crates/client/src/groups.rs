//! Consumer-group calls on [`Client`]: membership (used by [`crate::Consumer`]), commits, and
//! the admin side (list, describe with lag, reset).

use std::time::Duration;

use flotilla_proto::v1;
use flotilla_proto::v1::group_service_client::GroupServiceClient;
use tonic::transport::Channel;

use crate::Client;
use crate::error::ClientError;
use crate::router::{Target, request};

/// Where [`Client::reset_group_offsets`] moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The first retained offset of every partition.
    Earliest,
    /// The log end (high watermark): skip everything produced so far.
    Latest,
    /// This exact offset in every partition reset (each must hold it).
    Offset(u64),
    /// The first record at or after this time, in milliseconds since the Unix epoch.
    Timestamp(i64),
}

impl Client {
    fn group_stub(&self, channel: Channel) -> GroupServiceClient<Channel> {
        let limit = self.router.config().message_bytes_max;
        GroupServiceClient::new(channel).max_decoding_message_size(limit).max_encoding_message_size(limit)
    }

    /// Joins `group` as a new member. Prefer [`crate::Consumer`], which heartbeats, follows the
    /// assignment and commits; this is the raw call.
    pub async fn join_group(&self, message: v1::JoinGroupRequest) -> Result<v1::JoinGroupResponse, ClientError> {
        self.router
            .call("join group", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.group_stub(channel);
                let request = request(message.clone(), timeout);
                async move { stub.join_group(request).await }
            })
            .await
    }

    /// One heartbeat of a member (the raw call).
    pub async fn group_heartbeat(&self, message: v1::HeartbeatRequest) -> Result<v1::HeartbeatResponse, ClientError> {
        self.router
            .call("heartbeat", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.group_stub(channel);
                let request = request(message.clone(), timeout);
                async move { stub.heartbeat(request).await }
            })
            .await
    }

    /// Leaves `group` (the raw call); the member's partitions go to the others at once.
    pub async fn leave_group(&self, group: &str, member_id: u64) -> Result<(), ClientError> {
        let message = v1::LeaveGroupRequest { group: group.to_string(), member_id };
        self.router
            .call("leave group", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.group_stub(channel);
                let request = request(message.clone(), timeout);
                async move { stub.leave_group(request).await }
            })
            .await
            .map(|_| ())
    }

    /// Commits positions (the next offset to process) for a member (the raw call).
    pub async fn commit_offsets(&self, message: v1::CommitOffsetsRequest) -> Result<(), ClientError> {
        self.router
            .call("commit offsets", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.group_stub(channel);
                let request = request(message.clone(), timeout);
                async move { stub.commit_offsets(request).await }
            })
            .await
            .map(|_| ())
    }

    /// The committed offsets of `group`, as of this call (read at the coordinator).
    pub async fn group_offsets(&self, group: &str) -> Result<Vec<v1::CommittedPartitionOffset>, ClientError> {
        let message = v1::FetchOffsetsRequest { group: group.to_string() };
        let response = self
            .router
            .call("fetch offsets", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.group_stub(channel);
                let request = request(message.clone(), timeout);
                async move { stub.fetch_offsets(request).await }
            })
            .await?;
        Ok(response.offsets)
    }

    /// Every consumer group, with its state and member count.
    pub async fn list_groups(&self) -> Result<Vec<v1::GroupSummary>, ClientError> {
        let response = self
            .router
            .call("list groups", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.group_stub(channel);
                let request = request(v1::ListGroupsRequest {}, timeout);
                async move { stub.list_groups(request).await }
            })
            .await?;
        Ok(response.groups)
    }

    /// A group's members and assignments and, per partition, its committed offset, log end and
    /// lag in records and in milliseconds.
    pub async fn describe_group(&self, group: &str) -> Result<v1::DescribeGroupResponse, ClientError> {
        let message = v1::DescribeGroupRequest { group: group.to_string() };
        self.router
            .call("describe group", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.group_stub(channel);
                let request = request(message.clone(), timeout);
                async move { stub.describe_group(request).await }
            })
            .await
    }

    /// Moves the committed offsets of an inactive group (no members) for `topic` (every topic
    /// it has offsets for when `None`); returns the new offsets.
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        topic: Option<&str>,
        to: ResetTo,
    ) -> Result<Vec<v1::CommittedPartitionOffset>, ClientError> {
        use v1::reset_offsets_request::To;
        let to = match to {
            ResetTo::Earliest => To::Earliest(true),
            ResetTo::Latest => To::Latest(true),
            ResetTo::Offset(offset) => To::Offset(offset),
            ResetTo::Timestamp(ms) => To::TimestampMs(ms),
        };
        let message = v1::ResetOffsetsRequest {
            group: group.to_string(),
            topic: topic.unwrap_or_default().to_string(),
            to: Some(to),
        };
        let response = self
            .router
            .call("reset offsets", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.group_stub(channel);
                let request = request(message.clone(), timeout);
                async move { stub.reset_offsets(request).await }
            })
            .await?;
        Ok(response.offsets)
    }
}
