//! One record per offset (DESIGN.md §2, promise 2): a (partition, offset) never names two
//! values across acknowledgements, consumers' fetches and the final drain. Prevents divergent
//! leaders overwriting each other's entries (two leaders in one term, a restarted leader
//! reusing log ids after losing un-synced entries) and offsets reassigned after a truncation.

use std::collections::BTreeMap;

use super::{Findings, History, PartitionKey};

pub const NAME: &str = "offset conflict";

pub fn check(history: &History, findings: &mut Findings) {
    // The first value seen at each offset and where it was seen.
    let mut first: BTreeMap<(&PartitionKey, u64), (&str, &'static str)> = BTreeMap::new();
    let acks = history.acks.iter().map(|a| (&a.partition, a.offset, a.value.as_str(), "acknowledged"));
    let fetched = history
        .fetches
        .iter()
        .flat_map(|f| f.records.iter().map(move |(o, v)| (&f.partition, *o, v.as_str(), "fetched")));
    let drained =
        history.reads.iter().flat_map(|(p, records)| records.iter().map(move |(o, v)| (p, *o, v.as_str(), "drained")));
    for (partition, offset, value, source) in acks.chain(fetched).chain(drained) {
        match first.get(&(partition, offset)) {
            Some((other, other_source)) if *other != value => findings.violation(format!(
                "{partition} offset {offset} was {other_source} as {other:?} and {source} as {value:?}"
            )),
            Some(_) => {}
            None => {
                first.insert((partition, offset), (value, source));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Fetch;
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn an_acknowledged_offset_holding_another_value_is_a_conflict() {
        let mut h = history(vec![ack(0, 0, "a")], vec![(0, vec!["x"]), (1, vec![])]);
        h.attempted.insert("x".into());
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("acknowledged as \"a\" and drained as \"x\""), "{found:?}");
    }

    #[test]
    fn a_fetch_disagreeing_with_the_drain_is_a_conflict() {
        let mut h = history(vec![], vec![(0, vec!["a"]), (1, vec![])]);
        h.fetches.push(Fetch {
            consumer: 0,
            partition: p(0),
            from: 0,
            sent_ms: 0,
            high_watermark: 1,
            records: vec![(0, "z".to_string())],
        });
        assert_eq!(findings(check, &h).len(), 1);
    }

    #[test]
    fn agreeing_sources_are_fine() {
        let h = history(vec![ack(0, 0, "a")], vec![(0, vec!["a"]), (1, vec![])]);
        assert!(findings(check, &h).is_empty());
    }
}
