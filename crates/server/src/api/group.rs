//! `GroupService`: consumer groups. Membership changes and commits are proposed to the
//! metadata group from any node; heartbeats, committed-offset reads and descriptions are
//! answered by the metadata leader (the coordinator), which other nodes forward them to.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use flotilla_metadata::{ConsumerGroup, GroupError, LeaveReason, MemberView, MetaCommand, TopicPartition};
use flotilla_proto::v1;
use flotilla_proto::v1::fetch_service_server::FetchService;
use flotilla_proto::v1::group_service_client::GroupServiceClient;
use flotilla_proto::v1::group_service_server::GroupService;
use flotilla_proto::{flatten_topics, group_by_topic};
use flotilla_types::{ErrorCode, validate_group_name, validate_topic_name};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::FetchApi;
use super::fetch::partition_offsets;
use crate::api_error::{ApiError, from_status};
use crate::context::NodeContext;
use crate::coordinator;
use crate::routing::{Attempt, FORWARD_TIMEOUT, Leadership, METADATA_TIMEOUT, at_leader, forwarded, is_forwarded};

/// Session timeout when a join does not say, and its bounds.
pub const SESSION_TIMEOUT_DEFAULT_MS: u32 = 10_000;
const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 1_000..=300_000;
/// Rebalance timeout when a join does not say, and its bounds.
const REBALANCE_TIMEOUT_DEFAULT_MS: u32 = 60_000;
const REBALANCE_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 1_000..=1_800_000;
/// Longest heartbeat interval handed out: heartbeats are where a member learns of partitions
/// handed to it, so they bound how long a hand-over takes.
const HEARTBEAT_INTERVAL_MAX_MS: u32 = 1_000;
/// Most topics one member may subscribe to, and most offsets one commit may carry.
const TOPICS_PER_MEMBER_MAX: usize = 1_000;
const OFFSETS_PER_COMMIT_MAX: usize = 10_000;
/// Longest client id kept.
const CLIENT_ID_LEN_MAX: usize = 255;

/// Serves `flotilla.v1.GroupService`.
pub struct GroupApi {
    state: Arc<NodeContext>,
}

impl GroupApi {
    /// The service over `state`.
    pub fn new(state: Arc<NodeContext>) -> Self {
        GroupApi { state }
    }

    /// Runs `local` here when this node leads the metadata group, else `remote` against the
    /// leader, retrying while the leadership moves (the routing module's loop). A forwarded
    /// call that misses the leader answers `NotLeader` instead of bouncing again.
    async fn at_coordinator<T, L, LF, R, RF>(&self, was_forwarded: bool, local: L, remote: R) -> Result<T, ApiError>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T, ApiError>>,
        R: Fn(GroupServiceClient<Channel>) -> RF,
        RF: Future<Output = Result<Response<T>, Status>>,
    {
        let state = &self.state;
        let (local, remote) = (&local, &remote);
        at_leader(
            state,
            &Leadership::metadata(state),
            was_forwarded,
            |()| async move { Attempt::unless_no_leader(local().await) },
            |channel| async move {
                let result = remote(GroupServiceClient::new(channel)).await;
                Attempt::unless_no_leader(result.map(Response::into_inner).map_err(|s| from_status(&s)))
            },
        )
        .await
    }

    async fn describe_here(&self, name: &str) -> Result<v1::DescribeGroupResponse, ApiError> {
        let catalogue = self.state.meta.linearizable_catalogue().await?;
        let group = known_group(&catalogue.groups, name)?;
        let members = {
            let sessions = self.state.sessions.lock();
            group
                .members
                .values()
                .map(|member| {
                    let view = group.view(member.id).expect("a member has a view");
                    v1::GroupMemberDescription {
                        member_id: member.id,
                        client_id: member.client_id.clone(),
                        member_epoch: member.epoch,
                        topics: member.topics.iter().cloned().collect(),
                        assignment: group_by_topic(&view.assignment),
                        revoking: group_by_topic(&view.revoking),
                        session_timeout_ms: member.session_timeout_ms,
                        last_heartbeat_ms_ago: sessions
                            .since_heartbeat(name, member.id)
                            .map_or(-1, |ago| i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)),
                    }
                })
                .collect()
        };
        let owners: BTreeMap<&TopicPartition, u64> =
            group.members.values().flat_map(|m| m.owned.keys().map(move |tp| (tp, m.id))).collect();
        let partitions: BTreeSet<&TopicPartition> = group.target.keys().chain(group.offsets.keys()).collect();
        let lags = partitions.into_iter().map(|tp| {
            let catalogue = &catalogue;
            let owner = owners.get(tp).copied().unwrap_or(0);
            async move { self.partition_lag(catalogue, group, tp, owner).await }
        });
        let partitions = futures::future::join_all(lags).await;
        Ok(v1::DescribeGroupResponse { summary: Some(summary(group)), group_epoch: group.epoch, members, partitions })
    }

    /// Committed offset, log end and lag of one partition for `group`.
    async fn partition_lag(
        &self,
        catalogue: &flotilla_metadata::MetadataState,
        group: &ConsumerGroup,
        (topic, partition): &TopicPartition,
        member_id: u64,
    ) -> v1::PartitionLag {
        let committed = group.offsets.get(&(topic.clone(), *partition));
        let mut lag = v1::PartitionLag {
            topic: topic.clone(),
            partition: *partition,
            committed_offset: committed.map(|c| c.offset),
            committed_at_ms: committed.map_or(0, |c| c.committed_at_ms),
            member_id,
            ..v1::PartitionLag::default()
        };
        let Some(record) = catalogue.topics.get(topic) else { return lag };
        let Ok(offsets) = partition_offsets(&self.state, record, *partition, None, false).await else { return lag };
        lag.log_known = true;
        lag.log_start_offset = offsets.log_start_offset;
        lag.log_end_offset = offsets.high_watermark;
        // Nothing committed: the group would start at the log start.
        let position = committed.map_or(offsets.log_start_offset, |c| c.offset).max(offsets.log_start_offset);
        lag.lag_records = offsets.high_watermark.saturating_sub(position);
        if lag.lag_records > 0 {
            // The age of the oldest unprocessed record: the one at the group's position.
            let fetch = v1::FetchRequest {
                topic: topic.clone(),
                partition: *partition,
                offset: position,
                max_records: 1,
                max_bytes: 1,
                max_wait_ms: 0,
            };
            let oldest = FetchApi::new(Arc::clone(&self.state)).fetch(Request::new(fetch)).await;
            if let Some(timestamp_ms) = oldest
                .ok()
                .and_then(|r| r.into_inner().records.into_iter().next())
                .and_then(|r| r.record)
                .map(|r| r.timestamp_ms)
            {
                lag.lag_ms = (self.state.clock.now_ms() - timestamp_ms).max(0);
            }
        }
        lag
    }

    /// Checks that every offset of a commit lies within its partition: at most the high
    /// watermark (which only grows, so the check stays true once it passed).
    async fn check_within_log(&self, offsets: &[(TopicPartition, u64)]) -> Result<(), ApiError> {
        let state = &self.state;
        let checks = offsets.iter().map(|((topic, partition), offset)| async move {
            let record = state.topic(topic)?;
            state.check_partition(&record, *partition)?;
            let found = partition_offsets(state, &record, *partition, None, false).await?;
            if *offset > found.high_watermark {
                return Err(ApiError::new(
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "cannot commit offset {offset} for partition {partition} of topic {topic:?}: it is beyond the log end {} \
                         (a committed offset names the next record to process, at most the log end)",
                        found.high_watermark
                    ),
                ));
            }
            Ok(())
        });
        futures::future::try_join_all(checks).await.map(|_| ())
    }
}

fn check_group_name(name: &str) -> Result<(), ApiError> {
    validate_group_name(name).map_err(|err| ApiError::new(ErrorCode::InvalidGroupName, err.to_string()))
}

fn known_group<'a>(
    groups: &'a BTreeMap<String, Arc<ConsumerGroup>>,
    name: &str,
) -> Result<&'a ConsumerGroup, ApiError> {
    groups
        .get(name)
        .map(|g| g.as_ref())
        .ok_or_else(|| ApiError::from(GroupError::UnknownGroup { group: name.to_string() }))
}

/// A timeout from a request: 0 means `default`; otherwise it must lie in `range`.
fn timeout_ms(what: &str, given: u32, default: u32, range: std::ops::RangeInclusive<u32>) -> Result<u32, ApiError> {
    match given {
        0 => Ok(default),
        ms if range.contains(&ms) => Ok(ms),
        ms => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{what} {ms} ms is out of range: it must be between {} and {} ms", range.start(), range.end()),
        )),
    }
}

/// How often a member with `session_timeout_ms` should heartbeat.
fn heartbeat_interval_ms(session_timeout_ms: u32) -> u32 {
    (session_timeout_ms / 4).clamp(100, HEARTBEAT_INTERVAL_MAX_MS)
}

fn summary(group: &ConsumerGroup) -> v1::GroupSummary {
    let state = if group.members.is_empty() {
        "EMPTY"
    } else if group.members.values().all(|m| m.owned.keys().all(|tp| group.target.get(tp) == Some(&m.id)))
        && group.target.iter().all(|(tp, m)| group.members.get(m).is_some_and(|m| m.owned.contains_key(tp)))
    {
        "STABLE"
    } else {
        "RECONCILING"
    };
    let topics: BTreeSet<String> = group
        .members
        .values()
        .flat_map(|m| m.topics.iter().cloned())
        .chain(group.offsets.keys().map(|(t, _)| t.clone()))
        .collect();
    v1::GroupSummary {
        group: group.name.clone(),
        state: state.to_string(),
        members: group.members.len() as u32,
        topics: topics.into_iter().collect(),
    }
}

fn member_reply(view: MemberView, heartbeat_interval_ms: u32) -> v1::HeartbeatResponse {
    v1::HeartbeatResponse {
        member_epoch: view.member_epoch,
        assignment: group_by_topic(&view.assignment),
        revoking: group_by_topic(&view.revoking),
        heartbeat_interval_ms,
    }
}

#[tonic::async_trait]
impl GroupService for GroupApi {
    async fn join_group(
        &self,
        request: Request<v1::JoinGroupRequest>,
    ) -> Result<Response<v1::JoinGroupResponse>, Status> {
        let request = request.into_inner();
        check_group_name(&request.group)?;
        if request.topics.is_empty() || request.topics.len() > TOPICS_PER_MEMBER_MAX {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "a member of group {:?} subscribes to {} topics; it must name between 1 and {TOPICS_PER_MEMBER_MAX}",
                    request.group,
                    request.topics.len()
                ),
            )
            .into());
        }
        for topic in &request.topics {
            validate_topic_name(topic).map_err(|err| ApiError::new(ErrorCode::InvalidTopicName, err.to_string()))?;
        }
        let session_timeout_ms =
            timeout_ms("session timeout", request.session_timeout_ms, SESSION_TIMEOUT_DEFAULT_MS, SESSION_TIMEOUT_MS)?;
        let rebalance_timeout_ms = timeout_ms(
            "rebalance timeout",
            request.rebalance_timeout_ms,
            REBALANCE_TIMEOUT_DEFAULT_MS,
            REBALANCE_TIMEOUT_MS,
        )?;
        let client_id: String = request.client_id.chars().take(CLIENT_ID_LEN_MAX).collect();
        let command = MetaCommand::JoinGroup {
            group: request.group.clone(),
            client_id,
            topics: request.topics,
            session_timeout_ms,
            rebalance_timeout_ms,
        };
        let view = self.state.meta.propose_member(command, METADATA_TIMEOUT).await?;
        Ok(Response::new(v1::JoinGroupResponse {
            member_id: view.member_id,
            member_epoch: view.member_epoch,
            assignment: group_by_topic(&view.assignment),
            heartbeat_interval_ms: heartbeat_interval_ms(session_timeout_ms),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let was_forwarded = is_forwarded(&request);
        let request = request.into_inner();
        check_group_name(&request.group)?;
        let reply = self
            .at_coordinator(
                was_forwarded,
                || async {
                    let owned = flatten_topics(request.owned.clone());
                    let view = coordinator::heartbeat(&self.state, &request.group, request.member_id, owned).await?;
                    let session = self
                        .state
                        .meta
                        .catalogue()
                        .groups
                        .get(&request.group)
                        .and_then(|g| g.members.get(&request.member_id).map(|m| m.session_timeout_ms))
                        .unwrap_or(SESSION_TIMEOUT_DEFAULT_MS);
                    Ok(member_reply(view, heartbeat_interval_ms(session)))
                },
                |mut stub| {
                    let message = request.clone();
                    async move { stub.heartbeat(forwarded(message, FORWARD_TIMEOUT)).await }
                },
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn leave_group(
        &self,
        request: Request<v1::LeaveGroupRequest>,
    ) -> Result<Response<v1::LeaveGroupResponse>, Status> {
        let request = request.into_inner();
        check_group_name(&request.group)?;
        let command =
            MetaCommand::LeaveGroup { group: request.group, member_id: request.member_id, reason: LeaveReason::Left };
        self.state.meta.propose_group(command, METADATA_TIMEOUT).await?;
        Ok(Response::new(v1::LeaveGroupResponse {}))
    }

    async fn commit_offsets(
        &self,
        request: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        let request = request.into_inner();
        check_group_name(&request.group)?;
        if request.offsets.len() > OFFSETS_PER_COMMIT_MAX {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("a commit carries {} offsets; the limit is {OFFSETS_PER_COMMIT_MAX}", request.offsets.len()),
            )
            .into());
        }
        let mut offsets: BTreeMap<TopicPartition, u64> = BTreeMap::new();
        for entry in request.offsets {
            if let Some(previous) = offsets.insert((entry.topic.clone(), entry.partition), entry.offset)
                && previous != entry.offset
            {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "the commit names partition {} of topic {:?} twice, with offsets {previous} and {}",
                        entry.partition, entry.topic, entry.offset
                    ),
                )
                .into());
            }
        }
        let offsets: Vec<(TopicPartition, u64)> = offsets.into_iter().collect();
        // No early check against this node's catalogue: it may lag the group (a member that
        // joined a moment ago, an epoch it has not seen yet) and would refuse commits the group
        // accepts. The apply judges against the state it applies to.
        self.check_within_log(&offsets).await?;
        let command = MetaCommand::CommitOffsets {
            group: request.group,
            member_id: request.member_id,
            member_epoch: request.member_epoch,
            offsets,
            committed_at_ms: self.state.clock.now_ms(),
        };
        self.state.meta.propose_group(command, METADATA_TIMEOUT).await?;
        Ok(Response::new(v1::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<v1::FetchOffsetsRequest>,
    ) -> Result<Response<v1::FetchOffsetsResponse>, Status> {
        let was_forwarded = is_forwarded(&request);
        let request = request.into_inner();
        check_group_name(&request.group)?;
        let reply = self
            .at_coordinator(
                was_forwarded,
                || async {
                    let catalogue = self.state.meta.linearizable_catalogue().await?;
                    let group = known_group(&catalogue.groups, &request.group)?;
                    let offsets = group
                        .offsets
                        .iter()
                        .map(|((topic, partition), committed)| v1::CommittedPartitionOffset {
                            topic: topic.clone(),
                            partition: *partition,
                            offset: committed.offset,
                            committed_at_ms: committed.committed_at_ms,
                        })
                        .collect();
                    Ok(v1::FetchOffsetsResponse { offsets })
                },
                |mut stub| {
                    let message = request.clone();
                    async move { stub.fetch_offsets(forwarded(message, FORWARD_TIMEOUT)).await }
                },
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn list_groups(
        &self,
        _request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let catalogue = self.state.meta.catalogue();
        let groups = catalogue.groups.values().map(|g| summary(g)).collect();
        Ok(Response::new(v1::ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let was_forwarded = is_forwarded(&request);
        let request = request.into_inner();
        check_group_name(&request.group)?;
        let reply = self
            .at_coordinator(
                was_forwarded,
                || self.describe_here(&request.group),
                |mut stub| {
                    let message = request.clone();
                    async move { stub.describe_group(forwarded(message, FORWARD_TIMEOUT)).await }
                },
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn reset_offsets(
        &self,
        request: Request<v1::ResetOffsetsRequest>,
    ) -> Result<Response<v1::ResetOffsetsResponse>, Status> {
        let request = request.into_inner();
        check_group_name(&request.group)?;
        let Some(to) = request.to else {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "a reset must say where to: earliest, latest, an offset or a timestamp",
            )
            .into());
        };
        let catalogue = self.state.meta.catalogue();
        let group = known_group(&catalogue.groups, &request.group)?;
        if !group.members.is_empty() {
            return Err(ApiError::from(GroupError::GroupActive {
                group: request.group.clone(),
                members: group.members.keys().copied().collect(),
            })
            .into());
        }
        let topics: BTreeSet<String> = if request.topic.is_empty() {
            group.offsets.keys().map(|(t, _)| t.clone()).collect()
        } else {
            [request.topic.clone()].into_iter().collect()
        };
        if topics.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("group {:?} has no committed offsets; name the topic to reset with --topic", request.group),
            )
            .into());
        }
        let timestamp_ms = match to {
            v1::reset_offsets_request::To::TimestampMs(ms) => Some(ms),
            _ => None,
        };
        let mut offsets = Vec::new();
        for topic in &topics {
            let record = self.state.topic(topic)?;
            for partition in 0..record.partitions {
                let found = partition_offsets(&self.state, &record, partition, timestamp_ms, false).await?;
                let offset = match to {
                    v1::reset_offsets_request::To::Earliest(_) => found.log_start_offset,
                    v1::reset_offsets_request::To::Latest(_) => found.high_watermark,
                    v1::reset_offsets_request::To::TimestampMs(_) => {
                        found.offset_for_timestamp.unwrap_or(found.high_watermark)
                    }
                    v1::reset_offsets_request::To::Offset(offset) => {
                        if offset < found.log_start_offset || offset > found.high_watermark {
                            return Err(ApiError::new(
                                ErrorCode::OffsetOutOfRange,
                                format!(
                                    "cannot reset group {:?} to offset {offset}: partition {partition} of topic {topic:?} holds \
                                     offsets {}..={}",
                                    request.group, found.log_start_offset, found.high_watermark
                                ),
                            )
                            .into());
                        }
                        offset
                    }
                };
                offsets.push(((topic.clone(), partition), offset));
            }
        }
        let at_ms = self.state.clock.now_ms();
        let command = MetaCommand::ResetOffsets { group: request.group, offsets: offsets.clone(), at_ms };
        self.state.meta.propose_group(command, METADATA_TIMEOUT).await?;
        let offsets = offsets
            .into_iter()
            .map(|((topic, partition), offset)| v1::CommittedPartitionOffset {
                topic,
                partition,
                offset,
                committed_at_ms: at_ms,
            })
            .collect();
        Ok(Response::new(v1::ResetOffsetsResponse { offsets }))
    }
}

/// The default session must outlast at least one missed heartbeat.
const _: () = assert!(SESSION_TIMEOUT_DEFAULT_MS >= 2 * HEARTBEAT_INTERVAL_MAX_MS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_default_and_name_the_range() {
        assert_eq!(timeout_ms("session timeout", 0, 10_000, SESSION_TIMEOUT_MS).expect("default"), 10_000);
        let err = timeout_ms("session timeout", 10, 10_000, SESSION_TIMEOUT_MS).expect_err("too short");
        assert_eq!(err.message, "session timeout 10 ms is out of range: it must be between 1000 and 300000 ms");
        assert_eq!(heartbeat_interval_ms(10_000), 1_000);
        assert_eq!(heartbeat_interval_ms(1_000), 250);
    }
}
