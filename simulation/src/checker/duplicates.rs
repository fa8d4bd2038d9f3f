//! No duplicates (DESIGN.md §2, promise 4): a value appears at most once in the log unless a
//! non-idempotent attempt carrying it had an unknown outcome (then the retry may have
//! appended it again: at-least-once, counted but allowed). A value from an idempotent
//! producer must appear exactly once whatever happened — the Redpanda #3039 class, where a
//! retry after a leader change was appended twice.

use super::{Findings, History, placements};

pub const NAME: &str = "duplicate";

pub fn check(history: &History, findings: &mut Findings) {
    for (value, places) in placements(history) {
        if places.len() < 2 {
            continue;
        }
        let places: Vec<String> = places.iter().map(|(p, o)| format!("{p}@{o}")).collect();
        if history.idempotent.contains(value) {
            findings.violation(format!(
                "{value:?} from an idempotent producer appears {} times: {}",
                places.len(),
                places.join(", ")
            ));
        } else if !history.ambiguous.contains(value) {
            findings.violation(format!(
                "{value:?} appears {} times ({}) though every attempt that carried it was answered",
                places.len(),
                places.join(", ")
            ));
        }
    }
}

/// (values with an unknown outcome that are in the log, of those the ones present twice or
/// more without idempotence).
pub fn ambiguous_figures(history: &History) -> (usize, usize) {
    let mut present = 0;
    let mut duplicated = 0;
    for (value, places) in placements(history) {
        if history.ambiguous.contains(value) {
            present += 1;
            if places.len() > 1 && !history.idempotent.contains(value) {
                duplicated += 1;
            }
        }
    }
    (present, duplicated)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn duplicates_are_allowed_only_after_an_unknown_outcome() {
        let mut h = history(vec![ack(0, 0, "a")], vec![(0, vec!["a", "b", "b"]), (1, vec!["a"])]);
        h.attempted.insert("b".into());
        h.ambiguous.insert("b".into());
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("\"a\""), "{found:?}");
        assert_eq!(ambiguous_figures(&h), (1, 1));
    }

    #[test]
    fn an_idempotent_value_may_never_repeat() {
        let mut h = history(vec![], vec![(0, vec!["b", "b"]), (1, vec![])]);
        h.attempt("b", true);
        h.outcome_unknown("b");
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("idempotent"), "{found:?}");
    }
}
