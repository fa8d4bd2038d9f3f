//! Keeps each partition group's Raft membership in line with the catalogue's replica set,
//! which `MoveReplica` changes.
//!
//! Two roles, both run by [`run_membership`] on every node, every [`ROUND`]:
//!
//! - **The group's leader drives the change.** When its voters differ from the catalogue's
//!   replicas, it adds each new replica as a learner and waits (bounded) until it has caught
//!   up, then changes the voters to the catalogue's set without keeping the removed ones. A
//!   leader that is itself moved out drives its own removal and steps down once that commits
//!   (openraft's `removed_leader_step_down`). Every step is idempotent: a leader change
//!   mid-way leaves the group with a learner or in a joint configuration, and the next
//!   leader, seeing its membership still differ from the catalogue, finishes the job.
//! - **A replica moved out retires itself** once the group's committed membership no longer
//!   has it: its own view shows that when it led the change, otherwise it asks the current
//!   replicas for theirs (`ClusterService.LocalReplicas`), and believes a leader whose
//!   membership is settled (uniform and applied). Until then it keeps running: it may still
//!   be a voter the group needs for a quorum.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_metadata::MetadataState;
use flotilla_proto::v1::LocalReplicasRequest;
use flotilla_proto::v1::cluster_service_client::ClusterServiceClient;
use flotilla_raft::NodeInfo;
use flotilla_raft::openraft::ChangeMembers;
use flotilla_types::{GroupId, NodeId};
use parking_lot::Mutex;
use tonic::Request;

use crate::context::NodeContext;
use crate::partitions::Replica;

/// Pause between two passes over the local replicas.
const ROUND: Duration = Duration::from_millis(500);
/// How long a leader waits for a new replica to catch up before it tries again later.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one membership change (joint then uniform configuration).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on asking a peer for its view of a group.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Groups with a driver or a retirement check running on this node.
type InFlight = Arc<Mutex<BTreeSet<GroupId>>>;

/// Removes a group from the in-flight set when its task ends, however it ends.
struct Done(InFlight, GroupId);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

/// Runs forever: drives membership changes of the groups this node leads and retires the
/// replicas this node was moved out of.
pub async fn run_membership(state: Arc<NodeContext>) {
    let in_flight: InFlight = Arc::new(Mutex::new(BTreeSet::new()));
    loop {
        tokio::time::sleep(ROUND).await;
        let catalogue = state.meta.catalogue();
        // Only a partition that was moved can have a membership that differs from its replica
        // set (moving back is refused, so a moved one keeps a former replica); the others
        // keep their bootstrap membership. One pass over the catalogue, then work only for
        // moved partitions hosted here, so idle partitions cost nothing per round.
        let moved = catalogue.partition_groups().filter(|(_, topic, partition, _)| {
            topic.former_replicas.get(*partition as usize).is_some_and(|former| !former.is_empty())
        });
        for (group, _, _, replicas) in moved {
            let Some(replica) = state.partitions.get(group) else { continue };
            let target: BTreeSet<NodeId> = replicas.iter().copied().collect();
            let me = state.node_id;
            // The leader drives, even its own removal; a replica moved out that does not lead
            // waits for the committed membership to drop it.
            let task = if replica.is_leader(me) && differs(&replica, &target) {
                Task::Drive
            } else if !target.contains(&me) {
                Task::Retire
            } else {
                continue;
            };
            if !in_flight.lock().insert(replica.group) {
                continue;
            }
            let done = Done(Arc::clone(&in_flight), replica.group);
            let (state, catalogue) = (Arc::clone(&state), Arc::clone(&catalogue));
            tokio::spawn(async move {
                let _done = done;
                match task {
                    Task::Drive => drive(&replica, &target, &catalogue).await,
                    Task::Retire => retire_if_removed(&state, &replica, &target).await,
                }
            });
        }
    }
}

enum Task {
    Drive,
    Retire,
}

/// Whether the group's membership (as this replica sees it) differs from `target`.
fn differs(replica: &Replica, target: &BTreeSet<NodeId>) -> bool {
    let (voters, learners, settled) = replica.membership();
    !settled || voters != *target || !learners.is_empty()
}

/// Run by the group's leader: brings the voters to `target`.
async fn drive(replica: &Replica, target: &BTreeSet<NodeId>, catalogue: &MetadataState) {
    let group = replica.group;
    let (voters, _, _) = replica.membership();
    for node in target.difference(&voters) {
        let Some(record) = catalogue.nodes.get(node) else { return };
        let info =
            NodeInfo { peer_address: record.peer_address.clone(), client_address: record.client_address.clone() };
        tracing::info!(%group, node, "adding a replica as a learner and waiting for it to catch up");
        match tokio::time::timeout(CATCH_UP_TIMEOUT, replica.raft.add_learner(*node, info, true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::info!(%group, node, error = %err, "adding a learner failed; retrying later");
                return;
            }
            Err(_) => {
                tracing::info!(%group, node, "the new replica did not catch up in {CATCH_UP_TIMEOUT:?}; retrying later");
                return;
            }
        }
    }
    let (voters, _, settled) = replica.membership();
    if voters != *target || !settled {
        tracing::info!(%group, from = ?voters, to = ?target, "changing the partition's voters");
        match tokio::time::timeout(CHANGE_TIMEOUT, replica.raft.change_membership(target.clone(), false)).await {
            Ok(Ok(_)) => {
                flotilla_types::coverage!("partition_membership_changed");
                tracing::info!(%group, voters = ?target, "partition membership changed");
            }
            Ok(Err(err)) => {
                tracing::info!(%group, error = %err, "membership change failed; retrying later");
                return;
            }
            Err(_) => {
                tracing::info!(%group, "membership change did not commit in {CHANGE_TIMEOUT:?}; retrying later");
                return;
            }
        }
    }
    // Learners the catalogue no longer wants (added for a move that was superseded).
    let (_, learners, _) = replica.membership();
    let stray: BTreeSet<NodeId> = learners.difference(target).copied().collect();
    if !stray.is_empty() {
        let change = ChangeMembers::RemoveNodes(stray.clone());
        match tokio::time::timeout(CHANGE_TIMEOUT, replica.raft.change_membership(change, false)).await {
            Ok(Ok(_)) => tracing::info!(%group, removed = ?stray, "stray learners removed"),
            Ok(Err(err)) => tracing::info!(%group, error = %err, "removing stray learners failed; retrying later"),
            Err(_) => tracing::info!(%group, "removing stray learners did not commit in time; retrying later"),
        }
    }
}

/// Run by a replica the catalogue moved away: retires it once the group's committed
/// membership no longer has this node.
async fn retire_if_removed(state: &NodeContext, replica: &Replica, target: &BTreeSet<NodeId>) {
    let me = state.node_id;
    let group = replica.group;
    let (voters, learners, settled) = replica.membership();
    // It led its own removal (or learned of it): its settled membership is committed.
    let mut removed = settled && !voters.contains(&me) && !learners.contains(&me);
    if !removed {
        for node in target {
            if let Some((is_leader, members, settled)) = ask(state, *node, group).await
                && is_leader
                && settled
                && !members.contains(&me)
            {
                removed = true;
                break;
            }
        }
    }
    if removed {
        flotilla_types::coverage!("partition_replica_retired");
        state.partitions.retire(group).await;
    }
}

/// `node`'s view of `group`: whether it leads, its members, whether its membership is settled.
async fn ask(state: &NodeContext, node: NodeId, group: GroupId) -> Option<(bool, Vec<NodeId>, bool)> {
    let address = state.client_address_of(node)?;
    let channel = state.peers.channel(&address).ok()?;
    let mut request = Request::new(LocalReplicasRequest { group_ids: vec![group.0] });
    request.set_timeout(ASK_TIMEOUT);
    let response = tokio::time::timeout(ASK_TIMEOUT, ClusterServiceClient::new(channel).local_replicas(request))
        .await
        .ok()?
        .ok()?
        .into_inner();
    let replica = response.replicas.into_iter().find(|r| r.group_id == group.0)?;
    Some((replica.is_leader, replica.members, replica.membership_settled))
}
