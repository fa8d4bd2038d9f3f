//! `Staging`: a snapshot being received, chunk by chunk, into the receiver's engine, and read
//! back in order when it is installed. A transfer that a crash, a leader change or a newer
//! transfer interrupts leaves only staged chunks behind, which the next transfer (or the
//! group's next start) deletes: the group's live state is untouched until the install's
//! commit point.

use std::io;
use std::sync::Arc;

use flotilla_storage::{Direction, Engine, Space, WriteBatch};
use flotilla_types::GroupId;

use super::keys::{STAGE_CHUNK, STAGE_META, chunk_key, chunk_range, key};

/// The staging area of one group.
pub(crate) struct Staging {
    group: GroupId,
    engine: Arc<dyn Engine>,
}

impl Staging {
    pub(crate) fn new(group: GroupId, engine: Arc<dyn Engine>) -> Self {
        Staging { group, engine }
    }

    /// Adds deletes of everything staged to `batch`.
    pub(crate) fn clear_into(&self, batch: &mut WriteBatch) {
        let range = chunk_range(self.group, STAGE_CHUNK);
        batch.delete_range(Space::StateMachine, range.start, range.end);
        batch.delete(Space::StateMachine, key(self.group, STAGE_META));
    }

    /// Deletes everything staged.
    pub(crate) fn clear(&self) -> io::Result<()> {
        let mut batch = WriteBatch::new();
        self.clear_into(&mut batch);
        Ok(self.engine.write(batch)?)
    }

    /// Whether anything is staged.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> io::Result<bool> {
        let range = chunk_range(self.group, STAGE_CHUNK);
        let found = self.engine.scan(Space::StateMachine, &range.start[..]..&range.end[..], Direction::Forward, 1)?;
        Ok(found.is_empty() && self.engine.get(Space::StateMachine, &key(self.group, STAGE_META))?.is_none())
    }

    /// Starts a new transfer: drops whatever an earlier one staged.
    pub(crate) fn begin(&self, transfer_id: u64) -> io::Result<()> {
        let mut batch = WriteBatch::new();
        self.clear_into(&mut batch);
        batch.put(Space::StateMachine, key(self.group, STAGE_META), transfer_id.to_be_bytes().to_vec());
        Ok(self.engine.write(batch)?)
    }

    /// Stores chunk `seq`.
    pub(crate) fn put(&self, seq: u64, data: &[u8]) -> io::Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(Space::StateMachine, chunk_key(self.group, STAGE_CHUNK, seq), data.to_vec());
        Ok(self.engine.write(batch)?)
    }

    /// The staged chunk with the lowest sequence number at or after `seq`, if any.
    pub(crate) fn next_from(&self, seq: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
        let range = chunk_range(self.group, STAGE_CHUNK);
        let start = chunk_key(self.group, STAGE_CHUNK, seq);
        let found = self.engine.scan(Space::StateMachine, &start[..]..&range.end[..], Direction::Forward, 1)?;
        match found.into_iter().next() {
            Some((k, value)) => {
                let seq =
                    k.get(k.len() - 8..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("group {} staged chunk key", self.group))
                    })?;
                Ok(Some((seq, value)))
            }
            None => Ok(None),
        }
    }

    /// Adds the delete of chunk `seq` to `batch`.
    pub(crate) fn consume_into(&self, batch: &mut WriteBatch, seq: u64) {
        batch.delete(Space::StateMachine, chunk_key(self.group, STAGE_CHUNK, seq));
    }
}

/// The transfer a group is receiving, as the receiver tracks it in memory: chunks must come
/// in order, each of the same transfer; anything else is refused and the sender starts over.
#[derive(Debug, Default)]
pub(crate) struct Receiving {
    current: Option<Transfer>,
}

#[derive(Debug)]
struct Transfer {
    id: u64,
    next_seq: u64,
    header: Vec<u8>,
}

/// What a chunk completes.
#[derive(Debug)]
pub(crate) enum Received {
    /// More chunks to come.
    More,
    /// The last chunk: install the `chunks` staged ones, described by `header`.
    Done { header: Vec<u8>, chunks: u64 },
}

impl Receiving {
    /// Takes chunk `seq` of transfer `id` (the header comes with chunk 0; `done` marks the last
    /// one, which may carry data too) into `staging`.
    pub(crate) fn chunk(
        &mut self,
        staging: &Staging,
        id: u64,
        seq: u64,
        header: &[u8],
        data: &[u8],
        done: bool,
    ) -> Result<Received, String> {
        if seq == 0 {
            // A new transfer replaces any other: the sender that started it holds the newest
            // view of who leads (openraft refuses the install itself if it is stale).
            staging.begin(id).map_err(|e| format!("staging a snapshot: {e}"))?;
            self.current = Some(Transfer { id, next_seq: 0, header: header.to_vec() });
        }
        let Some(transfer) = self.current.as_mut() else {
            return Err(format!("snapshot chunk {seq} of transfer {id:#x} arrived with no transfer in progress"));
        };
        if transfer.id != id || transfer.next_seq != seq {
            return Err(format!(
                "snapshot chunk {seq} of transfer {id:#x} is out of order: expected chunk {} of transfer {:#x}",
                transfer.next_seq, transfer.id
            ));
        }
        if !data.is_empty() {
            staging.put(seq, data).map_err(|e| format!("staging a snapshot chunk: {e}"))?;
        }
        transfer.next_seq += 1;
        if done {
            let transfer = self.current.take().expect("checked above");
            return Ok(Received::Done { header: transfer.header, chunks: transfer.next_seq });
        }
        Ok(Received::More)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_storage::MemoryEngine;

    use super::*;

    #[test]
    fn chunks_must_come_in_order_and_a_new_transfer_replaces_the_old() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let staging = Staging::new(GroupId(9), Arc::clone(&engine));
        let mut receiving = Receiving::default();
        assert!(receiving.chunk(&staging, 1, 1, b"", b"x", false).is_err(), "no transfer yet");
        assert!(matches!(receiving.chunk(&staging, 1, 0, b"h1", b"a", false), Ok(Received::More)));
        assert!(receiving.chunk(&staging, 1, 2, b"", b"c", false).is_err(), "a gap");
        assert!(matches!(receiving.chunk(&staging, 1, 1, b"", b"b", false), Ok(Received::More)));
        // Another leader starts over: transfer 1's chunks are gone, and its late chunks refused.
        assert!(matches!(receiving.chunk(&staging, 2, 0, b"h2", b"z", false), Ok(Received::More)));
        assert!(receiving.chunk(&staging, 1, 2, b"", b"c", true).is_err(), "superseded");
        assert_eq!(staging.next_from(0).expect("read"), Some((0, b"z".to_vec())));
        match receiving.chunk(&staging, 2, 1, b"", b"", true) {
            Ok(Received::Done { header, chunks }) => {
                assert_eq!(header, b"h2".to_vec());
                assert_eq!(chunks, 2);
            }
            other => panic!("expected the end of transfer 2: {other:?}"),
        }
        staging.clear().expect("clear");
        assert!(staging.is_empty().expect("read"));
    }
}
