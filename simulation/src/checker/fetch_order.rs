//! Contiguous reads (DESIGN.md §2, promise 3): a fetch returns a gap-free run of offsets
//! starting exactly where it was asked to, all below the high watermark it reports, and the
//! final drain of every partition is dense from the log start it began at (0 without
//! retention). Prevents Jepsen's poll-skip: a
//! consumer silently missing records because an index or a truncation left a hole.

use super::{Findings, History};

pub const NAME: &str = "fetch order";

pub fn check(history: &History, findings: &mut Findings) {
    for fetch in &history.fetches {
        for (position, (offset, _)) in fetch.records.iter().enumerate() {
            let expected = fetch.from + position as u64;
            if *offset != expected {
                findings.violation(format!(
                    "consumer {} fetched {} from offset {} and got offset {offset} where {expected} belongs",
                    fetch.consumer, fetch.partition, fetch.from
                ));
                break;
            }
            if *offset >= fetch.high_watermark {
                findings.violation(format!(
                    "consumer {} fetched {} offset {offset}, at or above the high watermark {} of the same answer",
                    fetch.consumer, fetch.partition, fetch.high_watermark
                ));
                break;
            }
        }
    }
    for (partition, records) in &history.reads {
        let start = history.drain_starts.get(partition).map_or(0, |s| s.offset);
        if let Some((position, (offset, _))) =
            records.iter().enumerate().find(|(position, (offset, _))| *offset != start + *position as u64)
        {
            findings.violation(format!(
                "the final drain of {partition} is not dense from its log start {start}: record {position} has \
                 offset {offset}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Fetch;
    use super::super::test_support::*;
    use super::*;

    fn fetch(from: u64, high_watermark: u64, offsets: &[u64]) -> Fetch {
        Fetch {
            consumer: 0,
            partition: p(0),
            from,
            sent_ms: 0,
            high_watermark,
            records: offsets.iter().map(|o| (*o, format!("v{o}"))).collect(),
        }
    }

    #[test]
    fn gaps_skips_and_reads_past_the_watermark_are_caught() {
        let mut h = history(vec![], vec![(0, vec![]), (1, vec![])]);
        h.fetches.push(fetch(3, 10, &[3, 4, 6]));
        h.fetches.push(fetch(3, 10, &[4]));
        h.fetches.push(fetch(8, 9, &[8, 9]));
        h.fetches.push(fetch(0, 3, &[0, 1, 2]));
        h.reads.insert(p(1), vec![(1, "x".into())]);
        assert_eq!(findings(check, &h).len(), 4);
    }
}
