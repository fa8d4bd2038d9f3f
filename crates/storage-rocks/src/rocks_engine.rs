//! `RocksEngine`: the [`Engine`] on RocksDB, one column family per [`Space`], writes through
//! the WAL without fsync and one WAL fsync per `sync` call (group commit).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use flotilla_storage::{Direction, Engine, EngineView, KeyValue, Space, StorageError, WriteBatch, WriteOp};
use rocksdb::statistics::{StatsLevel, Ticker};
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor, CompactOptions, DB,
    DBCompressionType, DBRawIterator, DBRecoveryMode, Options, ReadOptions, WriteOptions,
};

use crate::RocksConfig;

/// An [`Engine`] backed by one RocksDB database.
///
/// Durability model: every write goes through the WAL with `sync = false`, so it reaches the
/// operating system before `write` returns (a `kill -9` loses nothing) and the disk only at
/// the next [`Engine::sync`], which fsyncs the WAL once for every write before it.
pub struct RocksEngine {
    /// Shared with the views taken of it, which must not outlive the database.
    db: Arc<DB>,
    /// The options the database was opened with; they own the statistics object that
    /// `bytes_written` reads.
    db_options: Options,
    write_options: WriteOptions,
    /// Test-only: `sync` does nothing. See [`RocksEngine::unsafe_skip_sync_for_tests`].
    skip_sync: bool,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine").field("path", &self.db.path()).finish_non_exhaustive()
    }
}

impl RocksEngine {
    /// Opens (creating if missing) the database at `path` with every space's column family.
    pub fn open(path: &Path, config: RocksConfig) -> Result<RocksEngine, StorageError> {
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let db_options = db_options(&config);
        let descriptors = Space::ALL
            .iter()
            .map(|&space| ColumnFamilyDescriptor::new(space.name(), cf_options(space, &config, &cache)));
        let db = DB::open_cf_descriptors(&db_options, path, descriptors).map_err(engine_error("open"))?;
        tracing::info!(path = %path.display(), ?config, "opened RocksDB engine");

        let mut write_options = WriteOptions::default();
        // Durability comes only from `sync`: a per-write fsync would cost one disk flush per
        // Raft append instead of one per group-commit round.
        write_options.set_sync(false);
        // The WAL is what makes a write survive a process crash before any memtable flush,
        // and what gives the prefix property after a power cut; never skip it.
        write_options.disable_wal(false);

        Ok(RocksEngine { db: Arc::new(db), db_options, write_options, skip_sync: false })
    }

    /// **Breaks durability; for the power-loss harness only.** Makes [`Engine::sync`] return
    /// at once without fsyncing the WAL, so acknowledged writes live only in the OS (or the
    /// harness's lazy filesystem) until RocksDB happens to sync a file on its own (at a
    /// memtable flush it syncs the new SST, the MANIFEST and the closed WALs). The harness
    /// turns this on to prove it can catch lost writes; the server enables it only when
    /// `FLOTILLA_TEST_UNSAFE_NO_SYNC=1` is set and says so at WARN.
    pub fn unsafe_skip_sync_for_tests(mut self) -> RocksEngine {
        tracing::warn!(path = %self.db.path().display(), "RocksDB engine: sync DISABLED (test only): acknowledged writes can be lost at a power cut");
        self.skip_sync = true;
        self
    }

    /// The column family of `space`.
    fn cf(&self, space: Space) -> Result<&ColumnFamily, StorageError> {
        column_family(&self.db, space)
    }
}

/// The column family of `space`. Every space's family is created at open, so a missing one
/// means the database was changed behind our back.
fn column_family(db: &DB, space: Space) -> Result<&ColumnFamily, StorageError> {
    db.cf_handle(space.name()).ok_or_else(|| StorageError::Engine {
        operation: "column family lookup",
        message: format!("column family {:?} is missing", space.name()),
    })
}

/// Read options bounded to `range`: the bounds let RocksDB stop at the range's edge inside its
/// own iterators instead of stepping over (possibly range-deleted) keys beyond it.
fn bounded(range: &Range<&[u8]>) -> ReadOptions {
    let mut read_options = ReadOptions::default();
    read_options.set_iterate_lower_bound(range.start);
    read_options.set_iterate_upper_bound(range.end);
    read_options
}

/// Collects at most `limit` pairs from a bounded iterator, in `direction` order.
fn collect(mut iter: DBRawIterator<'_>, direction: Direction, limit: usize) -> Result<Vec<KeyValue>, StorageError> {
    match direction {
        Direction::Forward => iter.seek_to_first(),
        Direction::Reverse => iter.seek_to_last(),
    }
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((key, value)) = iter.item() else {
            break;
        };
        out.push((key.to_vec(), value.to_vec()));
        match direction {
            Direction::Forward => iter.next(),
            Direction::Reverse => iter.prev(),
        }
    }
    // An iterator that stops early because of an I/O error is merely invalid; without this
    // check a failed read would look like the end of the range.
    iter.status().map_err(engine_error("scan"))?;
    Ok(out)
}

/// A RocksDB snapshot together with the database it reads, so it can outlive the call that
/// took it (a snapshot transfer reads through it for seconds).
struct RocksView {
    // Fields drop in declaration order: the snapshot is released before the last handle on
    // the database can go.
    snapshot: rocksdb::SnapshotWithThreadMode<'static, DB>,
    db: Arc<DB>,
}

impl RocksView {
    #[allow(unsafe_code, reason = "rust-rocksdb ties a snapshot to a borrow of its DB; see SAFETY")]
    fn new(db: Arc<DB>) -> RocksView {
        let snapshot = db.snapshot();
        // SAFETY: the snapshot borrows the `DB` behind the `Arc`, which lives on the heap and
        // does not move when the `Arc` does. `RocksView` keeps a clone of that `Arc` and drops
        // the snapshot first (field order), so the database outlives every use of the
        // snapshot, which is all the borrow was there to guarantee.
        let snapshot = unsafe {
            std::mem::transmute::<rocksdb::SnapshotWithThreadMode<'_, DB>, rocksdb::SnapshotWithThreadMode<'static, DB>>(
                snapshot,
            )
        };
        RocksView { snapshot, db }
    }
}

impl EngineView for RocksView {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.snapshot.get_cf(column_family(&self.db, space)?, key).map_err(engine_error("get"))
    }

    fn scan(
        &self,
        space: Space,
        range: Range<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        if range.start >= range.end || limit == 0 {
            return Ok(Vec::new());
        }
        let iter = self.snapshot.raw_iterator_cf_opt(column_family(&self.db, space)?, bounded(&range));
        collect(iter, direction, limit)
    }
}

impl EngineView for RocksEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get_cf(self.cf(space)?, key).map_err(engine_error("get"))
    }

    fn scan(
        &self,
        space: Space,
        range: Range<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        if range.start >= range.end || limit == 0 {
            return Ok(Vec::new());
        }
        collect(self.db.raw_iterator_cf_opt(self.cf(space)?, bounded(&range)), direction, limit)
    }
}

impl Engine for RocksEngine {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut rocks_batch = rocksdb::WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                WriteOp::Put { space, key, value } => rocks_batch.put_cf(self.cf(space)?, key, value),
                WriteOp::Delete { space, key } => rocks_batch.delete_cf(self.cf(space)?, key),
                WriteOp::DeleteRange { space, start, end } => {
                    // An empty or inverted range deletes nothing (as in the memory engine);
                    // RocksDB would reject an inverted one and fail the whole batch.
                    if start < end {
                        rocks_batch.delete_range_cf(self.cf(space)?, start, end);
                    }
                }
            }
        }
        self.db.write_opt(rocks_batch, &self.write_options).map_err(engine_error("write"))
    }

    fn sync(&self) -> Result<(), StorageError> {
        if self.skip_sync {
            return Ok(());
        }
        // FlushWAL(sync = true) fsyncs every live WAL file up to the current one, so it
        // covers each write that returned before this call, whichever thread made it.
        self.db.flush_wal(true).map_err(engine_error("sync"))
    }

    fn view(&self) -> Arc<dyn EngineView> {
        Arc::new(RocksView::new(Arc::clone(&self.db)))
    }

    fn compact_range(&self, space: Space, range: Range<&[u8]>) -> Result<(), StorageError> {
        let mut options = CompactOptions::default();
        // The purged prefix of a partition log usually sits in the bottommost level by the
        // time it is deleted; RocksDB skips that level by default and would keep it.
        options.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        // Alongside the automatic compactions, never instead of them: pausing those while a
        // reclaim runs would let L0 pile up and stall writes.
        options.set_exclusive_manual_compaction(false);
        self.db.compact_range_cf_opt(self.cf(space)?, Some(range.start), Some(range.end), &options);
        Ok(())
    }

    fn sync_blocks(&self) -> bool {
        true
    }

    /// WAL bytes plus the bytes flushes and compactions wrote (SST and blob files alike),
    /// since this engine was opened. MANIFEST and info-log writes are left out; they are
    /// tiny next to the data. WAL bytes are the batches' encoded size, without the 7-byte
    /// record headers of the log format.
    fn bytes_written(&self) -> Option<u64> {
        let ticker = |t| self.db_options.get_ticker_count(t);
        Some(ticker(Ticker::WalFileBytes) + ticker(Ticker::FlushWriteBytes) + ticker(Ticker::CompactWriteBytes))
    }
}

/// Database-wide options.
fn db_options(config: &RocksConfig) -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_max_background_jobs(i32::from(config.max_background_jobs));
    // A crash that tears the WAL tail (a power cut before fsync) must keep a prefix of the
    // writes: point-in-time recovery replays up to the first damaged record and stops, never
    // applying a later write without an earlier one. It is RocksDB's default; set here so a
    // change of default cannot silently weaken the contract. The WAL stays whole across
    // column families too: before a flush persists one family's memtable, RocksDB syncs the
    // closed WALs it came from whenever the database has more than one family.
    options.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    // Every write is handed to the OS at once (manual_wal_flush off, the default), so a
    // process crash loses nothing that `write` returned; only a power cut needs `sync`.
    options.set_manual_wal_flush(false);
    // Bounds how much WAL a restart replays: past this RocksDB flushes the families that
    // pin the oldest WAL file (typically the rarely written ones).
    options.set_max_total_wal_size(4 * config.write_buffer_bytes as u64);
    // Writes SST and blob files out in 1 MiB steps instead of one burst at file close, so
    // a flush does not queue megabytes in front of the syncer's WAL fsync.
    options.set_bytes_per_sync(1 << 20);
    // Deletes obsolete files on a background thread rather than in the read or write that
    // released them.
    options.set_avoid_unnecessary_blocking_io(true);
    // Tickers only (no timers, no histograms): `bytes_written` needs three counters and the
    // hot path should not pay for clock reads.
    options.enable_statistics();
    options.set_statistics_level(StatsLevel::ExceptHistogramOrTimers);
    // The info log is rolled at each open; keep a few for post-mortems, not a thousand.
    options.set_keep_log_file_num(10);
    options
}

/// Options of the column family for `space`.
fn cf_options(space: Space, config: &RocksConfig, cache: &Cache) -> Options {
    let mut options = Options::default();
    options.set_write_buffer_size(config.write_buffer_bytes);
    // The crate is built with LZ4 only; it is cheap enough for the keys and small values
    // that live in SST files.
    options.set_compression_type(DBCompressionType::Lz4);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    match space {
        Space::RaftLog => {
            // Four memtables let the log absorb a burst while a flush is still running
            // instead of stalling appends.
            options.set_max_write_buffer_number(4);
            if config.enable_blob_files {
                options.set_enable_blob_files(true);
                options.set_min_blob_size(config.min_blob_bytes);
                options.set_blob_compression_type(if config.compress_blobs {
                    DBCompressionType::Lz4
                } else {
                    DBCompressionType::None
                });
                options.set_enable_blob_gc(config.enable_blob_gc);
                options.set_blob_cache(cache);
            }
            // No bloom filter: the log is read by index ranges and by keys that exist, where
            // a filter only costs memory and write time.
        }
        Space::RaftState | Space::StateMachine | Space::Node => {
            // Point lookups of keys that may be absent (idempotency keys, votes on a fresh
            // node) skip SST files whose filter rules them out.
            table.set_bloom_filter(10.0, false);
        }
    }
    options.set_block_based_table_factory(&table);
    options
}

/// Maps a RocksDB error to the storage error naming the operation that failed.
fn engine_error(operation: &'static str) -> impl Fn(rocksdb::Error) -> StorageError {
    move |err| StorageError::Engine { operation, message: err.into_string() }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    use flotilla_storage::{group_key, group_range};

    use super::*;

    fn open(dir: &Path) -> RocksEngine {
        RocksEngine::open(dir, RocksConfig::default()).expect("open RocksDB engine")
    }

    fn entry_key(group: u64, index: u64) -> Vec<u8> {
        group_key(group, &index.to_be_bytes())
    }

    fn put(engine: &RocksEngine, space: Space, key: Vec<u8>, value: Vec<u8>) {
        let mut batch = WriteBatch::new();
        batch.put(space, key, value);
        engine.write(batch).expect("write");
    }

    /// Live bytes in the Raft log's blob files.
    fn live_blob_bytes(engine: &RocksEngine) -> u64 {
        let cf = engine.cf(Space::RaftLog).expect("raft_log family");
        engine
            .db
            .property_int_value_cf(cf, "rocksdb.live-blob-file-size")
            .expect("property")
            .expect("RocksDB knows the property")
    }

    #[test]
    fn passes_the_conformance_suite() {
        // Each check gets a fresh engine in its own directory; the directories outlive the
        // engines (dropped after each check) and are removed when the test ends.
        let dirs = std::sync::Mutex::new(Vec::new());
        flotilla_storage::conformance::run_all(&|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let engine = open(dir.path());
            dirs.lock().expect("not poisoned").push(dir);
            Box::new(engine)
        });
    }

    #[test]
    fn synced_writes_survive_close_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = vec![7u8; 64 << 10];
        {
            let engine = open(dir.path());
            for index in 0..100u64 {
                put(&engine, Space::RaftLog, entry_key(3, index), index.to_be_bytes().to_vec());
            }
            // One value large enough to live in a blob file once flushed.
            put(&engine, Space::RaftLog, entry_key(3, 100), big.clone());
            put(&engine, Space::RaftState, group_key(3, b"vote"), b"term 4".to_vec());
            engine.sync().expect("sync");
        }
        let engine = open(dir.path());
        let range = group_range(3, b"", 0, 100);
        let entries =
            engine.scan(Space::RaftLog, &range.start[..]..&range.end[..], Direction::Forward, 1000).expect("scan");
        assert_eq!(entries.len(), 100, "every synced entry is back after reopen");
        for (index, (key, value)) in (0u64..).zip(&entries) {
            assert_eq!(key, &entry_key(3, index));
            assert_eq!(value, &index.to_be_bytes().to_vec());
        }
        assert_eq!(engine.get(Space::RaftLog, &entry_key(3, 100)).expect("get"), Some(big));
        assert_eq!(engine.get(Space::RaftState, &group_key(3, b"vote")).expect("get"), Some(b"term 4".to_vec()));
    }

    #[test]
    fn delete_range_removes_exactly_one_groups_index_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path());
        // The first half of every group goes to SST and blob files, the second half stays in
        // the memtable, so the range delete has to hide data in both.
        for (half, indexes) in [(0, 0..25u64), (1, 25..50)] {
            for group in [6u64, 7, 8] {
                for index in indexes.clone() {
                    put(&engine, Space::RaftLog, entry_key(group, index), vec![group as u8; 300]);
                }
            }
            if half == 0 {
                engine.db.flush_cf(engine.cf(Space::RaftLog).expect("cf")).expect("flush");
            }
        }
        let purge = group_range(7, b"", 10, 40);
        let mut batch = WriteBatch::new();
        batch.delete_range(Space::RaftLog, purge.start, purge.end);
        engine.write(batch).expect("write");

        let everything =
            engine.scan(Space::RaftLog, &[0u8; 8][..]..&[0xffu8; 9][..], Direction::Forward, 1000).expect("scan");
        let expected: Vec<Vec<u8>> = [6u64, 7, 8]
            .into_iter()
            .flat_map(|group| (0..50u64).map(move |index| (group, index)))
            .filter(|&(group, index)| !(group == 7 && (10..40).contains(&index)))
            .map(|(group, index)| entry_key(group, index))
            .collect();
        let keys: Vec<Vec<u8>> = everything.into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, expected, "only group 7's [10, 40) is gone");

        // A reverse scan starting inside the deleted range lands on the entry before it.
        let range = group_range(7, b"", 0, 30);
        let last = engine.scan(Space::RaftLog, &range.start[..]..&range.end[..], Direction::Reverse, 1).expect("scan");
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].0, entry_key(7, 9));
    }

    #[test]
    fn empty_and_inverted_delete_ranges_delete_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path());
        put(&engine, Space::StateMachine, b"b".to_vec(), b"1".to_vec());
        let mut batch = WriteBatch::new();
        batch.delete_range(Space::StateMachine, b"c".to_vec(), b"a".to_vec());
        batch.delete_range(Space::StateMachine, b"b".to_vec(), b"b".to_vec());
        batch.put(Space::StateMachine, b"d".to_vec(), b"2".to_vec());
        engine.write(batch).expect("a batch with an inverted range still applies");
        assert_eq!(engine.get(Space::StateMachine, b"b").expect("get"), Some(b"1".to_vec()));
        assert_eq!(engine.get(Space::StateMachine, b"d").expect("get"), Some(b"2".to_vec()));
    }

    #[test]
    fn log_values_are_written_once_and_compaction_does_not_rewrite_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path());
        let cf = engine.cf(Space::RaftLog).expect("cf");
        let value_bytes = 4096;
        let entries = 2048u64; // 8 MiB of values
        let produced = entries * (value_bytes as u64 + 16);
        // Incompressible bytes, as in the reference workload.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random_value = || {
            (0..value_bytes / 8)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()
                })
                .collect::<Vec<u8>>()
        };
        // Four groups append in each of four rounds, so every L0 file spans every group's
        // keys and compaction must merge them (disjoint files would only be moved).
        let per_round = entries / 16;
        for round in 0..4u64 {
            for group in 0..4u64 {
                for index in round * per_round..(round + 1) * per_round {
                    put(&engine, Space::RaftLog, entry_key(group, index), random_value());
                }
            }
            engine.sync().expect("sync");
            engine.db.flush_cf(cf).expect("flush");
        }
        let before_compaction = engine.bytes_written().expect("RocksDB reports bytes written");
        assert!(before_compaction >= 2 * produced, "WAL and blob files each hold every value once");
        engine.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        let total = engine.bytes_written().expect("bytes written");
        let amplification = total as f64 / produced as f64;
        assert!(
            amplification <= 2.2,
            "write amplification {amplification:.2} ({total} bytes for {produced} produced); \
             {before_compaction} before compaction"
        );
        assert!(live_blob_bytes(&engine) >= produced - entries * 16, "values live in blob files");

        // Retention drops whole groups; once compaction drops their keys, blob files whose
        // every blob is garbage are deleted without blob GC.
        let mut batch = WriteBatch::new();
        batch.delete_range(Space::RaftLog, entry_key(0, 0), entry_key(4, 0));
        engine.write(batch).expect("write");
        engine.db.flush_cf(cf).expect("flush");
        engine.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        assert_eq!(live_blob_bytes(&engine), 0, "fully deleted blob files are reclaimed");
    }

    /// Env var that turns `kill_minus_nine_child` into the crashing writer.
    const CRASH_DIR_ENV: &str = "FLOTILLA_ROCKS_CRASH_DIR";
    const CRASH_WRITES: u64 = 2000;

    #[test]
    fn kill_minus_nine_keeps_every_returned_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args(["--exact", "rocks_engine::tests::kill_minus_nine_child", "--ignored", "--nocapture"])
            .env(CRASH_DIR_ENV, dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the crashing writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let reported = loop {
            let line = lines.next().expect("child reports before exiting").expect("read child stdout");
            if let Some(count) = line.strip_prefix("written ") {
                break count.parse::<u64>().expect("count");
            }
        };
        assert_eq!(reported, CRASH_WRITES);
        // SIGKILL: no destructor runs, the database is never closed, nothing unsynced is
        // flushed by us; only what RocksDB handed the OS survives.
        child.kill().expect("kill -9 the writer");
        child.wait().expect("reap the writer");

        let engine = open(dir.path());
        for index in 0..CRASH_WRITES {
            let value = engine.get(Space::RaftLog, &entry_key(1, index)).expect("get");
            assert_eq!(value, Some(index.to_be_bytes().to_vec()), "entry {index} returned by write survived kill -9");
        }
    }

    /// The child half of `kill_minus_nine_keeps_every_returned_write`: writes without
    /// syncing the last half, reports, then blocks on stdin until killed.
    #[test]
    #[ignore = "child process of kill_minus_nine_keeps_every_returned_write, which runs it"]
    fn kill_minus_nine_child() {
        let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
            return;
        };
        let engine = open(Path::new(&dir));
        for index in 0..CRASH_WRITES {
            put(&engine, Space::RaftLog, entry_key(1, index), index.to_be_bytes().to_vec());
            if index == CRASH_WRITES / 2 {
                engine.sync().expect("sync");
            }
        }
        let mut stdout = std::io::stdout();
        writeln!(stdout, "written {CRASH_WRITES}").expect("report");
        stdout.flush().expect("flush stdout");
        // Blocks until the parent kills us; the parent never writes to our stdin.
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        panic!("the parent should have killed this process");
    }
}
