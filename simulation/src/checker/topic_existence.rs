//! Topics never vanish (DESIGN.md §2, promise 7): after the final heal every node lists every
//! topic whose create was acknowledged and not deleted, and none that was deleted. Prevents
//! the NATS family of "the stream is gone": a kill -9 right after a create (#6888), a
//! metadata snapshot or orphan cleanup that drops an existing topic.

use super::{Findings, History};

pub const NAME: &str = "topic existence";

pub fn check(history: &History, findings: &mut Findings) {
    for (node, listed) in &history.final_listings {
        for topic in history.created_topics.difference(&history.deleted_topics) {
            if !listed.contains(topic) {
                findings.violation(format!(
                    "node {node} does not list topic {topic:?}, which was created and never deleted"
                ));
            }
        }
        for topic in history.deleted_topics.intersection(listed) {
            findings.violation(format!("node {node} still lists topic {topic:?} after its delete was acknowledged"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn a_missing_topic_and_a_resurrected_one_are_caught() {
        let mut h = history(vec![], vec![]);
        h.created_topics.insert("gone".into());
        h.deleted_topics.insert("gone".into());
        h.final_listings.insert(1, ["t".to_string(), "gone".to_string()].into());
        h.final_listings.insert(2, Default::default());
        let found = findings(check, &h);
        assert_eq!(found.len(), 2, "{found:?}");
    }
}
