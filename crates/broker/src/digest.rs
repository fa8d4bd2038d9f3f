//! Replica digests: a hash of a replica's committed records in offset order, so checkers can
//! prove that the copies of a partition never diverge (DESIGN.md §2, promise 8) without
//! shipping the records themselves.

use flotilla_types::Record;

use crate::{BrokerError, PartitionReader, PartitionWatermarks};

/// Records read per step while hashing; bounds the memory a digest takes.
const DIGEST_CHUNK_RECORDS: usize = 1024;
/// Byte budget per step (the reader returns at least one record regardless).
const DIGEST_CHUNK_BYTES: usize = 4 << 20;

/// FNV-1a 64: stable across processes, builds and machines, which `std`'s hashers are not.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Mixes `bytes` in.
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Mixes a length-prefixed field in, so ("ab", "c") and ("a", "bc") hash apart.
    pub fn write_field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_be_bytes());
        self.write(bytes);
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Mixes one record, at `offset`, into `hash`: everything a consumer can observe of it.
pub fn hash_record(hash: &mut Fnv64, offset: u64, record: &Record) {
    hash.write(&offset.to_be_bytes());
    match &record.key {
        Some(key) => {
            hash.write(&[1]);
            hash.write_field(key);
        }
        None => hash.write(&[0]),
    }
    hash.write_field(&record.value);
    hash.write(&(record.headers.len() as u64).to_be_bytes());
    for header in &record.headers {
        hash.write_field(header.key.as_bytes());
        hash.write_field(&header.value);
    }
    hash.write(&record.timestamp_ms.to_be_bytes());
}

/// The digest of the records in `[start_offset, end_offset)` of the replica `reader` reads.
/// The range must lie within `watermarks`: only committed, retained records are hashed.
pub fn replica_digest(
    reader: &PartitionReader,
    watermarks: PartitionWatermarks,
    start_offset: u64,
    end_offset: u64,
) -> Result<u64, BrokerError> {
    for offset in [start_offset, end_offset] {
        if offset > watermarks.high_watermark || offset < watermarks.log_start || start_offset > end_offset {
            return Err(BrokerError::OffsetOutOfRange {
                group: reader.group(),
                offset,
                log_start: watermarks.log_start,
                high_watermark: watermarks.high_watermark,
            });
        }
    }
    let bounded = PartitionWatermarks { log_start: start_offset, high_watermark: end_offset };
    let mut hash = Fnv64::default();
    let mut offset = start_offset;
    while offset < end_offset {
        let batch = reader.read(offset, DIGEST_CHUNK_RECORDS, DIGEST_CHUNK_BYTES, bounded)?;
        let Some((last, _)) = batch.records.last() else {
            // The index promised records up to the watermark; a short read is corruption.
            return Err(BrokerError::Storage {
                group: reader.group(),
                source: std::io::Error::other(format!("no records at offset {offset} below {end_offset}")),
            });
        };
        offset = last + 1;
        for (record_offset, record) in &batch.records {
            hash_record(&mut hash, *record_offset, record);
        }
    }
    Ok(hash.finish())
}
