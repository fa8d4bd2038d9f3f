//! Producer order (DESIGN.md §1, ordering): a producer's acknowledged records land in a
//! partition in the order it sent them. Each producer session sends one request at a time,
//! so its acknowledgements for one partition must carry strictly increasing offsets.
//! Prevents Jepsen's nonmonotonic-send: a retry or failover reordering a producer's records.

use std::collections::BTreeMap;

use super::{Findings, History, PartitionKey};

pub const NAME: &str = "producer order";

pub fn check(history: &History, findings: &mut Findings) {
    let mut last: BTreeMap<(u32, &PartitionKey), (u64, &str)> = BTreeMap::new();
    for ack in &history.acks {
        if let Some((previous, previous_value)) = last.insert((ack.producer, &ack.partition), (ack.offset, &ack.value))
            && ack.offset <= previous
        {
            findings.violation(format!(
                "producer {} got {:?} acknowledged at {} offset {} after {previous_value:?} at offset {previous}",
                ack.producer, ack.value, ack.partition, ack.offset
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn a_later_ack_at_a_lower_offset_is_reordering() {
        let h = history(vec![ack(0, 1, "b"), ack(0, 0, "a")], vec![(0, vec!["a", "b"]), (1, vec![])]);
        assert_eq!(findings(check, &h).len(), 1);
    }

    #[test]
    fn producers_are_judged_separately() {
        let mut other = ack(0, 0, "a");
        other.producer = 1;
        let h = history(vec![ack(0, 1, "b"), other], vec![(0, vec!["a", "b"]), (1, vec![])]);
        assert!(findings(check, &h).is_empty());
    }
}
