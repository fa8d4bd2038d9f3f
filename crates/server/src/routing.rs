//! Lead here, else forward: the one loop every request that must be served by a Raft group's
//! leader goes through (produce, fetch, offsets and trims at a partition leader; heartbeats,
//! offset reads and describes at the metadata leader). It serves the request here when this
//! node leads, forwards it to the leader it knows otherwise, and tries again while leadership
//! moves, up to [`LEADER_WAIT`]. Whether a failed attempt may be tried again is the caller's
//! explicit rule: each attempt answers [`Attempt::Done`] or [`Attempt::Retry`].

use std::future::Future;
use std::time::Duration;

use flotilla_metadata::TopicRecord;
use flotilla_raft::NodeInfo;
use flotilla_types::{ErrorCode, NodeId, PartitionId};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::api_error::ApiError;
use crate::context::NodeContext;
use crate::partitions::Replica;

/// Request header marking a request one node forwarded to another. A forwarded request
/// that still misses the leader gets `NotLeader` back instead of bouncing again.
pub const FORWARDED_HEADER: &str = "x-flotilla-forwarded";
/// How long a request waits for a leader to emerge (an election after a crash).
pub const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Bound on a request forwarded to another node.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a metadata change.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts while waiting for a leader.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Whether `request` was forwarded by another node.
pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

/// Wraps `message` as a request forwarded by this node, with a deadline.
pub fn forwarded<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    request.set_timeout(timeout);
    request
}

/// What one attempt at the leader (here or forwarded) came to.
pub enum Attempt<T> {
    /// Served, or failed for good: the caller's answer.
    Done(Result<T, ApiError>),
    /// Not served, and trying again is safe (nothing happened, or the request is idempotent):
    /// find the leader again and retry. The error is the answer if time runs out.
    Retry(ApiError),
}

impl<T> Attempt<T> {
    /// The common rule: retry only the codes that say no leader handled the request.
    pub fn unless_no_leader(result: Result<T, ApiError>) -> Attempt<T> {
        match result {
            Err(err)
                if matches!(err.code, ErrorCode::NotLeader | ErrorCode::LeaderUnavailable | ErrorCode::Unavailable) =>
            {
                Attempt::Retry(err)
            }
            other => Attempt::Done(other),
        }
    }
}

/// A Raft group whose leader serves a request: how to tell this node leads it (and get the
/// handle to serve with), and whom to forward to otherwise.
pub struct Leadership<'a, H> {
    /// The group, named for error messages ("partition 3 of topic \"orders\"").
    pub what: String,
    here: Box<dyn Fn() -> Option<H> + Send + Sync + 'a>,
    leader: Box<dyn Fn() -> Option<(NodeId, NodeInfo)> + Send + Sync + 'a>,
}

impl<'a> Leadership<'a, std::sync::Arc<Replica>> {
    /// `partition` of `topic`: served by its local replica while it leads.
    pub fn partition(ctx: &'a NodeContext, topic: &TopicRecord, partition: PartitionId) -> Self {
        let group = topic.group(partition);
        Leadership {
            what: format!("partition {partition} of topic {:?}", topic.name),
            here: Box::new(move || ctx.partitions.get(group).filter(|replica| replica.is_leader(ctx.node_id))),
            leader: Box::new(move || ctx.leader_of(group)),
        }
    }
}

impl<'a> Leadership<'a, ()> {
    /// The metadata group (the group coordinator).
    pub fn metadata(ctx: &'a NodeContext) -> Self {
        Leadership {
            what: "the metadata group (group coordinator)".to_string(),
            here: Box::new(move || ctx.meta.leading_term().map(|_| ())),
            leader: Box::new(move || ctx.meta.leader()),
        }
    }
}

/// Serves a request at `target`'s leader: `local` when this node leads, else `remote` over a
/// channel to the leader, retrying what the attempts say may be retried until
/// [`LEADER_WAIT`]. `was_forwarded`: the request came from another node, so it is answered
/// `NotLeader` rather than forwarded again.
pub async fn at_leader<T, H, LF, RF>(
    ctx: &NodeContext,
    target: &Leadership<'_, H>,
    was_forwarded: bool,
    mut local: impl FnMut(H) -> LF,
    mut remote: impl FnMut(Channel) -> RF,
) -> Result<T, ApiError>
where
    LF: Future<Output = Attempt<T>>,
    RF: Future<Output = Attempt<T>>,
{
    let deadline = Instant::now() + LEADER_WAIT;
    let mut last: Option<ApiError> = None;
    loop {
        if let Some(handle) = (target.here)() {
            match local(handle).await {
                Attempt::Done(result) => return result,
                Attempt::Retry(err) => last = Some(err),
            }
        }
        match (target.leader)() {
            // Our own stale view: leadership is changing; wait for it to settle.
            Some((leader, _)) if leader == ctx.node_id => {}
            Some((leader, info)) if was_forwarded => {
                return Err(ApiError::not_leader(&target.what, Some((leader, info))));
            }
            Some((_, info)) => {
                let channel = ctx.peers.channel(&info.client_address)?;
                match remote(channel).await {
                    Attempt::Done(result) => return result,
                    Attempt::Retry(err) => last = Some(err),
                }
            }
            None => {}
        }
        if Instant::now() >= deadline {
            return Err(last.unwrap_or_else(|| {
                ApiError::new(
                    ErrorCode::LeaderUnavailable,
                    format!("{} has had no reachable leader for {LEADER_WAIT:?}; retry later", target.what),
                )
            }));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
