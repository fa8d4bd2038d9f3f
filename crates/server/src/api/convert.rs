//! Conversions from domain types to the wire messages that several services share.

use flotilla_metadata::TopicRecord;
use flotilla_proto::v1::{ConfigEntry, Topic};
use flotilla_types::{Limits, TopicConfig};

/// The wire form of a topic.
pub fn topic_message(topic: &TopicRecord) -> Topic {
    Topic {
        name: topic.name.clone(),
        id: topic.id.0,
        partitions: topic.partitions,
        replication_factor: topic.replication_factor,
        created_at_ms: topic.created_at_ms,
    }
}

/// Every key of `config` with its effective value.
pub fn config_entries(config: &TopicConfig, limits: &Limits) -> Vec<ConfigEntry> {
    config
        .entries(limits)
        .into_iter()
        .map(|entry| ConfigEntry { key: entry.key.to_string(), value: entry.value, is_default: entry.is_default })
        .collect()
}
