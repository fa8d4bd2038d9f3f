//! Conversions between wire messages and the `flotilla-types` records.

use flotilla_types::{Header, Record};

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
}
