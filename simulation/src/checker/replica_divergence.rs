//! Replicas never diverge (DESIGN.md §2, promise 8): after the final heal every replica of a
//! partition hashes the same committed prefix to the same digest. Prevents the silent kind
//! of data loss a client may never read back: a follower that kept an entry the new leader
//! overwrote, a snapshot install that skipped records, a torn tail accepted as valid.

use super::{Findings, History};

pub const NAME: &str = "replica divergence";

pub fn check(history: &History, findings: &mut Findings) {
    for (partition, digests) in &history.digests {
        for pair in digests.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.start_offset == b.start_offset && a.end_offset == b.end_offset && a.digest != b.digest {
                findings.violation(format!(
                    "{partition}: node {} and node {} hold different records in offsets {}..{} (digests {:016x} and {:016x})",
                    a.node, b.node, a.start_offset, a.end_offset, a.digest, b.digest
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ReplicaDigest;
    use super::super::test_support::*;
    use super::*;

    fn digest(node: u64, digest: u64) -> ReplicaDigest {
        ReplicaDigest { node, start_offset: 0, end_offset: 10, high_watermark: 10, digest }
    }

    #[test]
    fn different_digests_of_one_range_are_divergence() {
        let mut h = history(vec![], vec![]);
        h.digests.insert(p(0), vec![digest(1, 7), digest(2, 7), digest(3, 8)]);
        h.digests.insert(p(1), vec![digest(1, 9), digest(2, 9)]);
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("node 2 and node 3"), "{found:?}");
    }
}
