//! Nothing read that was never written (DESIGN.md §2, promise 5): every value a consumer or
//! the final drain reads was sent by a producer, and none was definitely refused — an error
//! code such as NotLeader promises the records were not appended, so finding them later
//! means the server lied about a failure (Jepsen's G1a / aborted read). Also: nothing is read
//! from a partition that was never created.

use super::{Findings, History};

pub const NAME: &str = "phantom read";

pub fn check(history: &History, findings: &mut Findings) {
    let fetched = history.fetches.iter().flat_map(|f| f.records.iter().map(move |r| (&f.partition, r, "fetched")));
    let drained = history.reads.iter().flat_map(|(p, records)| records.iter().map(move |r| (p, r, "drained")));
    for (partition, (offset, value), source) in fetched.chain(drained) {
        if !history.attempted.contains(value) {
            findings.violation(format!("{partition} offset {offset} {source} {value:?}, which nobody produced"));
        } else if history.failed.contains(value) {
            findings.violation(format!(
                "{partition} offset {offset} {source} {value:?}, whose produce the server definitely refused"
            ));
        }
    }
    for partition in history.reads.keys().filter(|p| !history.partitions.contains(*p)) {
        findings.violation(format!("{partition} was never created but was read"));
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn unknown_and_refused_values_are_phantoms() {
        let mut h = history(vec![ack(0, 0, "a")], vec![(0, vec!["a", "ghost", "refused"]), (1, vec![])]);
        h.attempt("refused", false);
        h.refused("refused");
        h.reads.insert(p(7), vec![]);
        let found = findings(check, &h);
        assert_eq!(found.len(), 3, "{found:?}");
    }

    #[test]
    fn a_refusal_followed_by_an_unknown_outcome_is_not_definite() {
        let mut h = history(vec![], vec![(0, vec!["v"]), (1, vec![])]);
        h.attempt("v", false);
        h.refused("v");
        h.outcome_unknown("v");
        h.refused("v");
        assert!(findings(check, &h).is_empty());
    }
}
