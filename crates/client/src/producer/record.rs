//! `ProducerRecord`: one record as a [`crate::Producer`] takes it, with its topic and optional
//! key, headers, partition and timestamp.

use bytes::Bytes;
use flotilla_proto::v1;
use flotilla_types::PartitionId;

/// A record to send: topic and value, plus builder methods for the optional parts.
///
/// Placement: an explicit [`ProducerRecord::partition`] is honoured; else a keyed record goes
/// to `murmur2(key) mod partitions` (the server's rule, so a key lands in the same partition
/// whoever places it); else the producer's sticky partition for the topic, which moves on
/// each time a batch there closes (Kafka's sticky partitioner: large batches, spread over
/// every partition).
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerRecord {
    /// Topic to append to.
    pub topic: String,
    /// Routing key; `None` for a keyless record.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Application headers.
    pub headers: Vec<v1::Header>,
    /// Partition to append to, overriding placement by key.
    pub partition: Option<PartitionId>,
    /// Milliseconds since the Unix epoch; `None` lets the partition leader stamp its clock.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A keyless record with `value` for `topic`.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            key: None,
            value: value.into(),
            headers: Vec::new(),
            partition: None,
            timestamp_ms: None,
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        self.headers.push(v1::Header { key: key.into(), value: value.into() });
        self
    }

    /// Sends the record to `partition` whatever its key.
    #[must_use]
    pub fn partition(mut self, partition: PartitionId) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    /// Sets the record's timestamp (milliseconds since the Unix epoch).
    #[must_use]
    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> ProducerRecord {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Record bytes as the server counts them against its limits: key + value + headers.
    pub fn size(&self) -> usize {
        record_bytes(self.key.as_ref(), &self.value, &self.headers)
    }
}

/// Key + value + header keys and values: the measure the server's limits use.
pub(crate) fn record_bytes(key: Option<&Bytes>, value: &Bytes, headers: &[v1::Header]) -> usize {
    key.map_or(0, Bytes::len) + value.len() + headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_every_part_and_size_counts_like_the_server() {
        let record = ProducerRecord::new("orders", "value")
            .key("k1")
            .header("trace", "abc")
            .partition(2)
            .timestamp_ms(1_700_000_000_000);
        assert_eq!(record.topic, "orders");
        assert_eq!(record.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(record.partition, Some(2));
        assert_eq!(record.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(record.size(), 2 + 5 + 5 + 3);
        assert_eq!(ProducerRecord::new("t", Bytes::new()).size(), 0);
    }
}
