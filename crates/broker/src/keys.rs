//! The registry of everything a partition stores in `Space::StateMachine`, and of its snapshot
//! sections. Each part owns one prefix and one section here; nothing else in the crate makes
//! up a key. (The records themselves live in the Raft log, whose layout `flotilla_raft`'s
//! `LogLayout` owns.)
//!
//! A key is `group id (8 bytes BE) ++ prefix byte ++ suffix`. Prefix bytes are lowercase
//! letters, below the `~` from which the Raft glue's own keys start (`APP_KEYS_END`), so a
//! snapshot install clears a partition's whole state with one range delete. A prefix or a
//! section number, once used, is never reused for something else: stored data would be read
//! as the wrong thing.

use std::ops::Range;

use flotilla_storage::{group_key, group_prefix_range};
use flotilla_types::GroupId;

/// A partition's key prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    /// The log part's metadata: one key, a [`crate::log::LogMeta`].
    LogMeta,
    /// The offset index: `o ++ base_offset (BE)` → [`crate::log::IndexEntry`].
    Index,
    /// The idempotent producers: `p ++ producer_id (BE)` → a producer's state.
    Producer,
    /// The producers part's own metadata: one key, a `ProducersMeta` (the eviction floor).
    ProducersMeta,
}

impl Prefix {
    /// Every prefix, to check them against each other.
    #[cfg(test)]
    pub(crate) const ALL: [Prefix; 4] = [Prefix::LogMeta, Prefix::Index, Prefix::Producer, Prefix::ProducersMeta];

    /// The prefix byte.
    pub(crate) fn byte(self) -> u8 {
        match self {
            Prefix::LogMeta => b'l',
            Prefix::Index => b'o',
            Prefix::Producer => b'p',
            Prefix::ProducersMeta => b'q',
        }
    }

    /// `group ++ prefix ++ suffix`.
    pub(crate) fn key(self, group: GroupId, suffix: &[u8]) -> Vec<u8> {
        let mut tail = Vec::with_capacity(1 + suffix.len());
        tail.push(self.byte());
        tail.extend_from_slice(suffix);
        group_key(group.0, &tail)
    }

    /// `group ++ prefix ++ id (BE)`.
    pub(crate) fn id_key(self, group: GroupId, id: u64) -> Vec<u8> {
        self.key(group, &id.to_be_bytes())
    }

    /// Every key of `group` under this prefix.
    pub(crate) fn range(self, group: GroupId) -> Range<Vec<u8>> {
        group_prefix_range(group.0, &[self.byte()])
    }

    /// The id at the end of an `id_key`.
    pub(crate) fn id_of(key: &[u8]) -> std::io::Result<u64> {
        key.len()
            .checked_sub(8)
            .and_then(|at| key[at..].try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "a partition key without its id"))
    }
}

/// A partition snapshot's sections: each frame starts with its section's number, then the
/// part's versioned body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// The log part's metadata (watermarks, retention, replicated time); the first frame.
    LogMeta = 1,
    /// A run of retained batches: index entries with the Raft log entries holding them.
    LogBatches = 2,
    /// A run of idempotent producers.
    Producers = 3,
    /// The producers part's metadata (the eviction floor). Absent from snapshots of builds
    /// before it: no producer was known to be evicted then.
    ProducersMeta = 4,
}

impl Section {
    /// The section a frame's first byte names.
    pub(crate) fn of(byte: u8) -> std::io::Result<Section> {
        match byte {
            1 => Ok(Section::LogMeta),
            2 => Ok(Section::LogBatches),
            3 => Ok(Section::Producers),
            4 => Ok(Section::ProducersMeta),
            other => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "partition snapshot frame of unknown section {other}: it was sent by a newer build; this build \
                     knows sections 1 to 4"
                ),
            )),
        }
    }

    /// A frame of this section holding `body`.
    pub(crate) fn frame(self, body: Vec<u8>) -> Vec<u8> {
        let mut frame = Vec::with_capacity(1 + body.len());
        frame.push(self as u8);
        frame.extend(body);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_distinct_lowercase_and_below_the_raft_glues_keys() {
        let bytes: Vec<u8> = Prefix::ALL.iter().map(|p| p.byte()).collect();
        let mut unique = bytes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), bytes.len(), "two parts share a prefix: {bytes:?}");
        for byte in bytes {
            assert!(byte.is_ascii_lowercase(), "{byte}");
            assert!(&[byte][..] < flotilla_raft::APP_KEYS_END, "prefix {byte} would collide with the Raft glue's keys");
        }
        for section in [Section::LogMeta, Section::LogBatches, Section::Producers, Section::ProducersMeta] {
            assert_eq!(Section::of(section as u8).expect("known"), section);
        }
        assert!(Section::of(9).expect_err("unknown").to_string().contains("newer build"));
    }
}
