//! Replica placement: which nodes host each partition of a new topic. A pure function of the
//! catalogue so every metadata replica computes the same answer during apply.

use std::collections::BTreeMap;

use flotilla_types::NodeId;

/// Replica sets for `partitions` partitions of `replication_factor` replicas each, over
/// `nodes`, given how many replicas each node already hosts. Each partition goes to the
/// least-loaded nodes (ties broken by a rotation, so leaders — the first replica — spread
/// too). Requires `1 <= replication_factor <= nodes.len()`.
pub fn place_replicas(
    nodes: &[NodeId],
    existing_load: &BTreeMap<NodeId, usize>,
    partitions: u32,
    replication_factor: u32,
    rotation_seed: u64,
) -> Vec<Vec<NodeId>> {
    let rf = replication_factor as usize;
    assert!(rf >= 1 && rf <= nodes.len(), "replication factor {rf} over {} nodes", nodes.len());
    let mut sorted: Vec<NodeId> = nodes.to_vec();
    sorted.sort_unstable();
    let mut load: BTreeMap<NodeId, usize> =
        sorted.iter().map(|n| (*n, existing_load.get(n).copied().unwrap_or(0))).collect();
    let mut leaders: BTreeMap<NodeId, usize> = sorted.iter().map(|n| (*n, 0)).collect();
    let mut placement = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions as u64 {
        let start = ((rotation_seed + partition) % sorted.len() as u64) as usize;
        // Rotation order for this partition, then stable-sorted by load: least loaded first,
        // rotation breaks ties.
        let mut order: Vec<NodeId> = (0..sorted.len()).map(|i| sorted[(start + i) % sorted.len()]).collect();
        order.sort_by_key(|n| load[n]);
        let mut replicas: Vec<NodeId> = order.into_iter().take(rf).collect();
        // Preferred leader: the chosen replica leading the fewest partitions so far.
        let (leader_pos, _) = replicas
            .iter()
            .enumerate()
            .min_by_key(|(pos, n)| (leaders[*n], *pos))
            .expect("replication factor is at least 1");
        replicas.swap(0, leader_pos);
        for n in &replicas {
            *load.get_mut(n).expect("replica is a known node") += 1;
        }
        *leaders.get_mut(&replicas[0]).expect("leader is a known node") += 1;
        placement.push(replicas);
    }
    placement
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balances_replicas_and_leaders() {
        let nodes = [1, 2, 3];
        let placement = place_replicas(&nodes, &BTreeMap::new(), 6, 3, 0);
        assert_eq!(placement.len(), 6);
        let mut leaders = BTreeMap::new();
        for replicas in &placement {
            let mut unique = replicas.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), 3, "replicas distinct: {replicas:?}");
            *leaders.entry(replicas[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "leaders spread: {placement:?}");
    }

    #[test]
    fn prefers_least_loaded_nodes() {
        let nodes = [1, 2, 3, 4];
        let load = BTreeMap::from([(1, 10), (2, 10), (3, 0), (4, 0)]);
        let placement = place_replicas(&nodes, &load, 2, 2, 0);
        for replicas in placement {
            assert!(replicas.iter().all(|n| *n == 3 || *n == 4), "{replicas:?}");
        }
    }

    #[test]
    fn is_deterministic() {
        let nodes = [5, 1, 3];
        let a = place_replicas(&nodes, &BTreeMap::new(), 10, 2, 7);
        let b = place_replicas(&nodes, &BTreeMap::new(), 10, 2, 7);
        assert_eq!(a, b);
    }
}
