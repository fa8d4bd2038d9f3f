//! `Overlay`: what was written to one file since its last fsync, held in memory over the
//! file's durable bytes. Reads see it, an fsync writes it down, a power cut throws it away.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

/// The unsynced state of one file: its size as readers see it and the bytes written since its
/// last sync, over the durable file (the backing file, which holds exactly what was synced).
///
/// Size changes are unsynced data too: an extension (a write past the end, a truncate up, a
/// size-changing fallocate) and a truncation down both become durable only at the next fsync.
/// A power cut before it brings back the durable size and, after an unsynced truncation, the
/// durable bytes past the truncation point. A real disk may keep or lose such a change; keeping
/// the old size and bytes is one of the states it may be left in, and the one that tests a
/// reader of the file hardest (stale bytes after the point it believed was the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The file's size as readers see it.
    size: u64,
    /// How many leading bytes of the durable file still show through. A pending truncation
    /// below the durable size hides the rest: if the file grows again, it reads as zeros.
    /// Never more than `size`.
    durable_visible: u64,
    /// Bytes written since the last sync, by offset. Extents never overlap or touch: a write
    /// that meets one is merged into it, so appends grow one buffer.
    extents: BTreeMap<u64, Vec<u8>>,
}

impl Overlay {
    /// No unsynced change yet over a durable file of `durable_size` bytes.
    pub fn new(durable_size: u64) -> Overlay {
        Overlay { size: durable_size, durable_visible: durable_size, extents: BTreeMap::new() }
    }

    /// The file's size as readers see it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of file data held only in memory (what a power cut now would lose, not counting
    /// size changes).
    pub fn pending_bytes(&self) -> u64 {
        self.extents.values().map(|bytes| bytes.len() as u64).sum()
    }

    /// Records a write of `data` at `offset`; the file grows if it ends past the end.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        self.size = self.size.max(end);
        // The fast path of an append log: the write starts where the last extent ends.
        let last_before = self.extents.range(..=offset).next_back().map(|(&start, bytes)| (start, bytes.len() as u64));
        if let Some((start, len)) = last_before
            && start + len == offset
            && self.extents.range(offset..=end).next().is_none()
        {
            self.extents.get_mut(&start).expect("just found").extend_from_slice(data);
            return;
        }
        // Every extent that overlaps or touches [offset, end] merges with the write, which
        // wins where they overlap.
        let mut merged: Vec<(u64, Vec<u8>)> = Vec::new();
        if let Some((&start, bytes)) = self.extents.range(..offset).next_back()
            && start + bytes.len() as u64 >= offset
        {
            merged.push((start, Vec::new()));
        }
        merged.extend(self.extents.range(offset..=end).map(|(&start, _)| (start, Vec::new())));
        for (start, bytes) in &mut merged {
            *bytes = self.extents.remove(start).expect("listed above");
        }
        let new_start = merged.first().map_or(offset, |(start, _)| (*start).min(offset));
        let new_end =
            merged.iter().map(|(start, bytes)| start + bytes.len() as u64).max().map_or(end, |last| last.max(end));
        let mut buffer = vec![0u8; usize::try_from(new_end - new_start).expect("an extent fits in memory")];
        for (start, bytes) in &merged {
            let at = usize::try_from(start - new_start).expect("inside the buffer");
            buffer[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let at = usize::try_from(offset - new_start).expect("inside the buffer");
        buffer[at..at + data.len()].copy_from_slice(data);
        self.extents.insert(new_start, buffer);
    }

    /// Records a change of size (a truncate either way, or a size-changing fallocate).
    pub fn set_size(&mut self, size: u64) {
        if size < self.size {
            let cut: Vec<u64> = self.extents.range(size..).map(|(&start, _)| start).collect();
            for start in cut {
                self.extents.remove(&start);
            }
            if let Some((&start, bytes)) = self.extents.range_mut(..size).next_back()
                && start + bytes.len() as u64 > size
            {
                bytes.truncate(usize::try_from(size - start).expect("inside the extent"));
            }
            self.durable_visible = self.durable_visible.min(size);
        }
        self.size = size;
    }

    /// Reads up to `len` bytes at `offset` as a reader sees them: the durable bytes that still
    /// show through (fetched by `durable`, which fills its buffer from the durable file at the
    /// offset it is given, zeros past that file's end), zeros, and the unsynced writes on top.
    pub fn read(
        &self,
        offset: u64,
        len: usize,
        durable: impl FnOnce(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<Vec<u8>> {
        let end = self.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buffer = vec![0u8; usize::try_from(end - offset).expect("bounded by len")];
        let durable_end = end.min(self.durable_visible);
        if offset < durable_end {
            durable(offset, &mut buffer[..usize::try_from(durable_end - offset).expect("bounded by len")])?;
        }
        for (&start, bytes) in self.extents.range(..end).rev() {
            let extent_end = start + bytes.len() as u64;
            if extent_end <= offset {
                break;
            }
            let from = start.max(offset);
            let to = extent_end.min(end);
            let source = usize::try_from(from - start).expect("inside the extent");
            let target = usize::try_from(from - offset).expect("inside the buffer");
            let count = usize::try_from(to - from).expect("inside the buffer");
            buffer[target..target + count].copy_from_slice(&bytes[source..source + count]);
        }
        Ok(buffer)
    }

    /// Makes every change durable: writes them to `file`, the durable file, which holds
    /// `durable_size` bytes. The overlay is spent afterwards (the caller drops it).
    pub fn persist(&self, file: &File, durable_size: u64) -> io::Result<()> {
        // Durable bytes hidden by a truncation must not come back when the file regrows.
        if self.durable_visible < durable_size {
            file.set_len(self.durable_visible)?;
        }
        for (&start, bytes) in &self.extents {
            file.write_all_at(bytes, start)?;
        }
        file.set_len(self.size)
    }
}

/// Fills `buffer` from `file` at `offset`, with zeros past the file's end.
pub fn read_durable(file: &File, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => {
                buffer[filled..].fill(0);
                break;
            }
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The durable file modelled as a byte vector.
    fn read(overlay: &Overlay, durable: &[u8], offset: u64, len: usize) -> Vec<u8> {
        overlay
            .read(offset, len, |at, buffer| {
                for (i, byte) in buffer.iter_mut().enumerate() {
                    *byte = durable.get(usize::try_from(at).expect("small") + i).copied().unwrap_or(0);
                }
                Ok(())
            })
            .expect("reading a vector cannot fail")
    }

    /// What a plain in-memory file would hold after the same operations: the reference.
    #[derive(Debug, Default)]
    struct Model(Vec<u8>);

    impl Model {
        fn write(&mut self, offset: u64, data: &[u8]) {
            // A write of nothing changes nothing, not even the size (POSIX).
            if data.is_empty() {
                return;
            }
            let offset = usize::try_from(offset).expect("small");
            if self.0.len() < offset + data.len() {
                self.0.resize(offset + data.len(), 0);
            }
            self.0[offset..offset + data.len()].copy_from_slice(data);
        }
        fn set_size(&mut self, size: u64) {
            self.0.resize(usize::try_from(size).expect("small"), 0);
        }
    }

    #[test]
    fn reads_see_unsynced_writes_over_the_durable_bytes() {
        let durable = b"0123456789".to_vec();
        let mut overlay = Overlay::new(durable.len() as u64);
        overlay.write(2, b"ab");
        overlay.write(12, b"xy");
        assert_eq!(overlay.size(), 14);
        assert_eq!(read(&overlay, &durable, 0, 100), b"01ab456789\0\0xy");
        assert_eq!(read(&overlay, &durable, 3, 3), b"b45");
        assert_eq!(overlay.pending_bytes(), 4);
    }

    #[test]
    fn appends_grow_one_extent() {
        let mut overlay = Overlay::new(0);
        for i in 0..100u8 {
            overlay.write(u64::from(i) * 3, &[i, i, i]);
        }
        assert_eq!(overlay.extents.len(), 1);
        assert_eq!(overlay.pending_bytes(), 300);
    }

    #[test]
    fn a_truncation_hides_durable_bytes_until_the_cut_or_the_sync() {
        let durable = b"0123456789".to_vec();
        let mut overlay = Overlay::new(10);
        overlay.write(8, b"AB");
        overlay.set_size(4);
        overlay.set_size(8);
        overlay.write(6, b"z");
        assert_eq!(read(&overlay, &durable, 0, 100), b"0123\0\0z\0");
    }

    #[test]
    fn persisting_leaves_the_durable_file_equal_to_what_readers_saw() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").expect("write");
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open");
        let mut overlay = Overlay::new(10);
        overlay.write(1, b"a");
        overlay.set_size(5);
        overlay.set_size(7);
        overlay.write(9, b"bc");
        let seen = overlay.read(0, 100, |offset, buffer| read_durable(&file, offset, buffer)).expect("read");
        overlay.persist(&file, 10).expect("persist");
        assert_eq!(std::fs::read(&path).expect("read back"), seen);
        assert_eq!(seen, b"0a234\0\0\0\0bc");
    }

    /// Random writes and size changes against the reference model: a read through the overlay
    /// always equals the model, and the durable bytes are never touched until `persist`.
    #[test]
    fn random_operations_match_a_plain_file() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for _ in 0..200 {
            let durable: Vec<u8> = (0..next(64)).map(|i| b'a' + (i % 26) as u8).collect();
            let mut model = Model(durable.clone());
            let mut overlay = Overlay::new(durable.len() as u64);
            for step in 0..40u8 {
                if next(4) == 0 {
                    let size = next(96);
                    model.set_size(size);
                    overlay.set_size(size);
                } else {
                    let offset = next(80);
                    let data: Vec<u8> = (0..next(24)).map(|i| step.wrapping_add(i as u8)).collect();
                    model.write(offset, &data);
                    overlay.write(offset, &data);
                }
                assert_eq!(read(&overlay, &durable, 0, 1000), model.0);
                let offset = next(100);
                let len = usize::try_from(next(50)).expect("small");
                let end = (usize::try_from(offset).expect("small") + len).min(model.0.len());
                let expected = model.0.get(usize::try_from(offset).expect("small")..end).unwrap_or_default();
                assert_eq!(read(&overlay, &durable, offset, len), expected);
            }
        }
    }
}
