//! Retention: which of a partition's oldest batches go, decided at apply from the log's own
//! state and the entry's replicated time, so every replica deletes exactly the same records.
//!
//! A trim removes whole batches from the front: the index entries go in one range delete, the
//! log start moves past them, and the floor (the first Raft log index holding a retained
//! record) rises, after which the node's partition driver lets openraft purge the log below it — the
//! records' bytes leave the disk then, in one more range delete. Nothing above the high
//! watermark is ever trimmed: a trim only looks at applied (so committed) batches.

use flotilla_storage::Space;

use super::LogPart;
use super::index::{IndexEntry, index_key, scan_index};
use crate::PartitionRejection;
use crate::part::ApplyContext;

impl LogPart {
    /// Deletes the batches retention no longer keeps at the entry's replicated time: those
    /// appended longer than `retention.ms` ago, then the oldest while the partition holds more
    /// than `retention.bytes` (never the newest batch: retention.bytes is at least one maximum
    /// batch, so it only ever bites when there is a newer one to keep).
    pub fn enforce_retention(&mut self, ctx: &mut ApplyContext<'_>) {
        let policy = self.meta.retention;
        if let Some(max_age_ms) = policy.max_age_ms {
            let max_age_ms = i64::try_from(max_age_ms).unwrap_or(i64::MAX);
            let now = ctx.now_ms;
            let expired = self.trim_while(ctx, |_, _, entry| entry.appended_ms.saturating_add(max_age_ms) <= now);
            if expired {
                flotilla_types::coverage!("retention_by_age");
            }
        }
        if let Some(max_bytes) = policy.max_bytes {
            let trimmed = self.trim_while(ctx, |meta, base, entry| {
                meta.retained_bytes > max_bytes && base + u64::from(entry.count) < meta.watermarks.high_watermark
            });
            if trimmed {
                flotilla_types::coverage!("retention_by_bytes");
            }
        }
    }

    /// Deletes every record below `before_offset` (`DeleteRecords`); returns the new log start.
    pub fn delete_records(
        &mut self,
        ctx: &mut ApplyContext<'_>,
        before_offset: u64,
    ) -> Result<u64, PartitionRejection> {
        let high_watermark = self.meta.watermarks.high_watermark;
        if before_offset > high_watermark {
            return Err(PartitionRejection::TrimBeyondHighWatermark { before_offset, high_watermark });
        }
        if before_offset <= self.meta.watermarks.log_start {
            return Ok(self.meta.watermarks.log_start);
        }
        self.trim_while(ctx, |_, base, entry| base + u64::from(entry.count) <= before_offset);
        // The batch holding `before_offset` stays; the records of it below the new log start
        // are no longer served.
        self.meta.watermarks.log_start = before_offset;
        self.dirty = true;
        flotilla_types::coverage!("records_deleted_on_request");
        Ok(before_offset)
    }

    /// Removes the oldest batches while `remove(meta, base, entry)` says so. Returns whether it
    /// removed any.
    fn trim_while(
        &mut self,
        ctx: &mut ApplyContext<'_>,
        mut remove: impl FnMut(&super::LogMeta, u64, &IndexEntry) -> bool,
    ) -> bool {
        let Some((first_base, _)) = self.meta.oldest else { return false };
        let mut removed = false;
        while let Some((base, entry)) = self.meta.oldest {
            if !remove(&self.meta, base, &entry) {
                break;
            }
            removed = true;
            self.meta.retained_bytes = self.meta.retained_bytes.saturating_sub(entry.bytes);
            let end = base + u64::from(entry.count);
            self.meta.watermarks.log_start = self.meta.watermarks.log_start.max(end);
            self.meta.oldest = self.batch_after(ctx, base);
        }
        if !removed {
            return false;
        }
        let keep_from = self.meta.oldest.map_or(self.meta.watermarks.high_watermark, |(base, _)| base);
        ctx.batch.delete_range(Space::StateMachine, index_key(ctx.group, first_base), index_key(ctx.group, keep_from));
        self.pending.retain(|base, _| *base >= keep_from);
        // With nothing retained, everything up to this entry may go.
        self.meta.floor = self.meta.oldest.map_or(ctx.log_index + 1, |(_, entry)| entry.log_index);
        self.dirty = true;
        true
    }

    /// The retained batch after the one starting at `base`: from the engine, or among those
    /// appended in this apply batch (all of which come after every stored one).
    fn batch_after(&self, ctx: &ApplyContext<'_>, base: u64) -> Option<(u64, IndexEntry)> {
        let first_pending = self.pending.keys().next().copied().unwrap_or(u64::MAX);
        if base + 1 < first_pending {
            let stored = scan_index(ctx.store, ctx.group, base + 1, first_pending, 1).unwrap_or_else(|err| {
                // Apply cannot fail and go on: a replica that could not read its own index
                // would diverge from the others. Stop the node instead.
                panic!(
                    "partition {} cannot read its index while applying log entry {}: {err}",
                    ctx.group, ctx.log_index
                )
            });
            if let Some(found) = stored.into_iter().next() {
                return Some(found);
            }
        }
        self.pending.range(base + 1..).next().map(|(base, entry)| (*base, *entry))
    }
}
