//! A FUSE passthrough filesystem that models a disk losing power: file data written since a
//! file's last fsync or fdatasync is held in memory (reads see it), written to the backing
//! directory at the sync, and dropped at a simulated power cut. In the spirit of LazyFS; used
//! by `flotilla-chaos --power-loss` to cut the power under real `flotilla` nodes on RocksDB.
//!
//! # What is modelled
//!
//! - **File data and size are durable only after an fsync of that file.** Writes, truncations
//!   (either way) and size-changing fallocates are kept in an [`Overlay`] per file; an fsync or
//!   fdatasync writes them to the backing file; a power cut ([`LazyMount::power_cut`]) drops
//!   them all, so every file is back to exactly the bytes and size it had at its last sync.
//!   An unsynced truncation is undone by a cut (the durable bytes past it come back): a state
//!   a real disk can be left in, and a harsh one for a reader that trusted the truncation.
//! - **Metadata is durable at once**, as in LazyFS: create, mkdir, unlink, rmdir, rename,
//!   chmod, chown and utimes pass straight through to the backing directory, and directory
//!   fsync is a no-op. A real filesystem may lose a name change that no directory fsync
//!   covered; we never do. That is weaker than the worst disk, but for RocksDB it loses no
//!   case that matters: RocksDB syncs a file's data before it publishes the file by rename
//!   (CURRENT, OPTIONS) or records it in the MANIFEST, and syncs the directory after, so the
//!   states a lost rename or create would add are states it already guards against with
//!   those directory fsyncs. What this filesystem catches is the class that matters for
//!   Flotilla's promise: acknowledging data whose bytes were never synced.
//! - **Nothing of the kernel's survives either**: files are opened with direct I/O (no page
//!   cache) and attributes and names are never cached, so after a cut every read and every
//!   size comes from the overlay or the backing file.
//! - Not served: hard links, symlinks, device nodes, extended attributes, `RENAME_NOREPLACE`
//!   and `RENAME_EXCHANGE`, fallocate modes other than plain and `KEEP_SIZE`, and `mmap` of
//!   files (direct I/O). RocksDB as Flotilla configures it uses none of them.
//!
//! A power cut must come after every process using the mount was killed: the cut drops what
//! was unsynced at that instant, and refuses writes and syncs through files opened before it
//! (a dead process's requests the kernel may still deliver).

mod lazy_fs;
mod lazy_mount;
mod overlay;

pub use lazy_fs::CutReport;
pub use lazy_mount::LazyMount;
pub use overlay::Overlay;
