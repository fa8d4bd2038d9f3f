//! Conversions between wire messages and the `flotilla-types` records.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_types::{Header, PartitionId, Record};

use crate::v1;

impl From<v1::Record> for Record {
    fn from(record: v1::Record) -> Self {
        Record {
            key: record.key,
            value: record.value,
            headers: record.headers.into_iter().map(|h| Header { key: h.key, value: h.value }).collect(),
            timestamp_ms: record.timestamp_ms,
        }
    }
}

impl From<Record> for v1::Record {
    fn from(record: Record) -> Self {
        v1::Record {
            key: record.key,
            value: record.value,
            headers: record.headers.into_iter().map(|h| v1::Header { key: h.key, value: h.value }).collect(),
            timestamp_ms: record.timestamp_ms,
        }
    }
}

/// Partitions named (topic, partition), grouped by topic for the wire (`TopicPartitions`).
pub fn group_by_topic<'a>(partitions: impl IntoIterator<Item = &'a (String, PartitionId)>) -> Vec<v1::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<PartitionId>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic).or_default().push(*partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| v1::TopicPartitions { topic: topic.to_string(), partitions })
        .collect()
}

/// The (topic, partition) pairs of wire `TopicPartitions`.
pub fn flatten_topics(partitions: Vec<v1::TopicPartitions>) -> BTreeSet<(String, PartitionId)> {
    partitions.into_iter().flat_map(|tp| tp.partitions.into_iter().map(move |p| (tp.topic.clone(), p))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let record = Record {
            key: Some("k".into()),
            value: "v".into(),
            headers: vec![Header { key: "h".into(), value: "x".into() }],
            timestamp_ms: 42,
        };
        assert_eq!(Record::from(v1::Record::from(record.clone())), record);
    }

    #[test]
    fn partitions_group_by_topic_on_the_wire_and_back() {
        let list = vec![("a".to_string(), 0), ("b".to_string(), 2), ("a".to_string(), 3)];
        let wire = group_by_topic(&list);
        assert_eq!(wire.len(), 2);
        assert_eq!(wire[0], v1::TopicPartitions { topic: "a".into(), partitions: vec![0, 3] });
        assert_eq!(flatten_topics(wire), list.into_iter().collect());
    }
}
