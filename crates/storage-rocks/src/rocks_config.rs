//! `RocksConfig`: the tunables of the RocksDB engine, with defaults sized for a node that
//! shares a 2-core machine with its peers and keeps write amplification at or below 2.5.

/// Tunables of [`RocksEngine`](crate::RocksEngine). The data directory is not here: it is
/// identity, passed to `RocksEngine::open` by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksConfig {
    /// Size of one memtable per column family. Larger memtables mean fewer, larger L0 files
    /// and so fewer compactions of the Raft log's keys; they cost memory and lengthen WAL
    /// replay after a crash (the total WAL is capped at four times this).
    pub write_buffer_bytes: usize,
    /// Background flush and compaction threads. Two matches the reference machine's cores:
    /// more would only steal CPU from the request path, fewer lets L0 pile up and stall
    /// writes during bursts.
    pub max_background_jobs: u16,
    /// LRU cache shared by every column family's data blocks and the Raft log's blobs, so
    /// consumers re-reading recent records do not hit the disk.
    pub block_cache_bytes: usize,
    /// Stores Raft log values of at least `min_blob_bytes` in blob files: a record is then
    /// written once at flush and compaction moves only its small key and pointer. Without
    /// it leveled compaction rewrites every record once per level, far above the target of
    /// 2.5 bytes written per byte produced.
    pub enable_blob_files: bool,
    /// Smallest Raft log value moved to a blob file. Below this the blob pointer and
    /// per-blob header (about 50 bytes) are not worth it; 256 keeps even one small record
    /// per entry out of the LSM tree while leaving votes and blank entries inline.
    pub min_blob_bytes: u64,
    /// Relocates live blobs out of the oldest blob files during compaction. Off by default:
    /// the log is deleted in whole prefix ranges, so old blob files become pure garbage and
    /// are dropped without relocation, and relocating records that retention still keeps
    /// would write them a second time. Turn it on if a long-idle group pins old blob files.
    pub enable_blob_gc: bool,
    /// Compresses Raft log blobs with LZ4. Off by default: producers usually compress their
    /// batches already, random payloads do not shrink (RocksDB stores blobs compressed even
    /// when that makes them larger), and CPU is the bottleneck on a 2-core machine.
    pub compress_blobs: bool,
}

impl Default for RocksConfig {
    fn default() -> Self {
        Self {
            write_buffer_bytes: 64 << 20,
            max_background_jobs: 2,
            block_cache_bytes: 128 << 20,
            enable_blob_files: true,
            min_blob_bytes: 256,
            enable_blob_gc: false,
            compress_blobs: false,
        }
    }
}
