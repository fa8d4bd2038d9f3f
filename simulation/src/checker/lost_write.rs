//! No lost acknowledged write (DESIGN.md §2, promise 1): every acknowledged record is read
//! back by the final drain at the offset it was acknowledged at. Prevents the Jepsen classics:
//! a leader acknowledging before a quorum fsynced, a whole-cluster power loss wiping
//! un-synced acknowledged entries (NATS #7564), a truncated log tail after recovery.

use super::{Findings, History};

pub const NAME: &str = "lost write";

pub fn check(history: &History, findings: &mut Findings) {
    for ack in &history.acks {
        let records = history.reads.get(&ack.partition).map(Vec::as_slice).unwrap_or_default();
        if !records.iter().any(|(offset, _)| *offset == ack.offset) {
            findings.violation(format!(
                "{:?} was acknowledged at {} offset {} but the final drain of that partition ends after {} records",
                ack.value,
                ack.partition,
                ack.offset,
                records.len()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn an_acknowledged_record_missing_from_the_drain_is_lost() {
        let h = history(vec![ack(0, 0, "a"), ack(0, 1, "b")], vec![(0, vec!["a"]), (1, vec![])]);
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("\"b\""), "{found:?}");
    }

    #[test]
    fn records_read_back_are_not_lost() {
        let h = history(vec![ack(0, 0, "a"), ack(1, 0, "b")], vec![(0, vec!["a"]), (1, vec!["b"])]);
        assert!(findings(check, &h).is_empty());
    }
}
