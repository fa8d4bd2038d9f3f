//! The lazy filesystem through a real FUSE mount: a power cut drops exactly the writes,
//! truncations and extensions that no fsync covered, keeps every synced byte, and names
//! survive as they were. Needs root and `/dev/fuse` (as `make test` has on our machines).

use std::fs::{File, OpenOptions};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use flotilla_lazyfs::LazyMount;

/// A backing directory, a mountpoint and the mount of one over the other.
struct Fixture {
    _dir: tempfile::TempDir,
    backing: std::path::PathBuf,
    mount: Option<LazyMount>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("disk");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&backing).expect("mkdir disk");
        std::fs::create_dir(&mountpoint).expect("mkdir mnt");
        let mount = LazyMount::mount(&backing, &mountpoint).unwrap_or_else(|error| {
            panic!(
                "cannot mount the lazy filesystem on {} ({error}); this test needs root and /dev/fuse",
                mountpoint.display()
            )
        });
        Fixture { _dir: dir, backing, mount: Some(mount) }
    }

    fn mount(&self) -> &LazyMount {
        self.mount.as_ref().expect("mounted")
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.mount().mountpoint().join(name)
    }

    fn backing_bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.backing.join(name)).expect("read the backing file")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.take() {
            mount.unmount().expect("unmount");
        }
    }
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(path).expect("open")
}

#[test]
fn a_power_cut_drops_exactly_the_unsynced_writes() {
    let fx = Fixture::new();

    // synced: written and fsynced, then more appended without a sync.
    let mut synced = File::create(fx.path("synced")).expect("create");
    synced.write_all(b"durable-").expect("write");
    synced.sync_all().expect("fsync");
    synced.write_all(b"volatile").expect("write");
    // datasync: fdatasync counts as a sync too.
    let mut datasync = File::create(fx.path("datasync")).expect("create");
    datasync.write_all(&[7u8; 10_000]).expect("write");
    datasync.sync_data().expect("fdatasync");
    // unsynced: never synced at all; its name is metadata and survives, its bytes do not.
    let mut unsynced = File::create(fx.path("unsynced")).expect("create");
    unsynced.write_all(b"gone").expect("write");
    // overwritten: durable bytes overwritten in the middle without a sync.
    std::fs::write(fx.path("overwritten"), b"aaaaaaaaaa").expect("write");
    File::open(fx.path("overwritten")).expect("open").sync_all().expect("fsync");
    open_rw(&fx.path("overwritten")).write_all_at(b"BB", 4).expect("pwrite");
    // truncated: an unsynced truncation comes undone; so does an unsynced extension.
    std::fs::write(fx.path("truncated"), b"0123456789").expect("write");
    File::open(fx.path("truncated")).expect("open").sync_all().expect("fsync");
    open_rw(&fx.path("truncated")).set_len(3).expect("truncate");
    std::fs::write(fx.path("extended"), b"xyz").expect("write");
    File::open(fx.path("extended")).expect("open").sync_all().expect("fsync");
    open_rw(&fx.path("extended")).set_len(1 << 20).expect("extend");
    // renamed: synced, then renamed; the rename is durable at once.
    std::fs::write(fx.path("before"), b"moved").expect("write");
    File::open(fx.path("before")).expect("open").sync_all().expect("fsync");
    std::fs::rename(fx.path("before"), fx.path("after")).expect("rename");
    // deleted: an unlink is durable at once.
    std::fs::write(fx.path("deleted"), b"x").expect("write");
    std::fs::remove_file(fx.path("deleted")).expect("unlink");

    // Before the cut every reader sees every write, synced or not.
    assert_eq!(std::fs::read(fx.path("synced")).expect("read"), b"durable-volatile");
    assert_eq!(std::fs::read(fx.path("unsynced")).expect("read"), b"gone");
    assert_eq!(std::fs::read(fx.path("overwritten")).expect("read"), b"aaaaBBaaaa");
    assert_eq!(std::fs::read(fx.path("truncated")).expect("read"), b"012");
    assert_eq!(std::fs::metadata(fx.path("extended")).expect("stat").len(), 1 << 20);
    // ...while the disk holds only what was synced.
    assert_eq!(fx.backing_bytes("synced"), b"durable-");
    assert_eq!(fx.backing_bytes("unsynced"), b"");
    assert_eq!(fx.mount().pending_bytes(), 8 + 4 + 2);

    drop((synced, datasync, unsynced));
    let report = fx.mount().power_cut();
    assert_eq!(report.bytes, 8 + 4 + 2, "the cut dropped every unsynced byte: {report:?}");
    assert_eq!(report.files, 5, "synced, unsynced, overwritten, truncated, extended: {report:?}");

    assert_eq!(std::fs::read(fx.path("synced")).expect("read"), b"durable-");
    assert_eq!(std::fs::read(fx.path("datasync")).expect("read"), vec![7u8; 10_000]);
    assert_eq!(std::fs::read(fx.path("unsynced")).expect("read"), b"");
    assert_eq!(std::fs::read(fx.path("overwritten")).expect("read"), b"aaaaaaaaaa");
    assert_eq!(std::fs::read(fx.path("truncated")).expect("read"), b"0123456789");
    assert_eq!(std::fs::read(fx.path("extended")).expect("read"), b"xyz");
    assert_eq!(std::fs::read(fx.path("after")).expect("read"), b"moved");
    assert!(!fx.path("before").exists() && !fx.path("deleted").exists());
    assert_eq!(fx.mount().pending_bytes(), 0);
}

#[test]
fn a_sync_after_a_truncation_keeps_exactly_what_readers_saw() {
    let fx = Fixture::new();
    let mut file = File::create(fx.path("f")).expect("create");
    file.write_all(b"0123456789").expect("write");
    file.sync_all().expect("fsync");
    file.set_len(4).expect("truncate");
    file.seek(SeekFrom::Start(8)).expect("seek");
    file.write_all(b"zz").expect("write");
    let seen = std::fs::read(fx.path("f")).expect("read");
    assert_eq!(seen, b"0123\0\0\0\0zz", "the bytes a truncation hid stay hidden when the file regrows");
    file.sync_data().expect("fdatasync");
    file.write_all(b"lost").expect("write");
    drop(file);
    fx.mount().power_cut();
    assert_eq!(std::fs::read(fx.path("f")).expect("read"), seen);
    assert_eq!(fx.backing_bytes("f"), seen);
}

#[test]
fn a_file_opened_before_the_cut_cannot_write_after_it() {
    let fx = Fixture::new();
    let mut file = File::create(fx.path("f")).expect("create");
    file.write_all(b"a").expect("write");
    fx.mount().power_cut();
    // A dead process's late request: refused, so nothing lands on the post-cut disk.
    assert!(file.write_all(b"late").is_err(), "a write through a pre-cut handle must fail");
    assert!(file.sync_all().is_err(), "a sync through a pre-cut handle must fail");
    drop(file);
    assert_eq!(std::fs::read(fx.path("f")).expect("read"), b"");
    // New opens work as usual.
    let mut file = OpenOptions::new().append(true).open(fx.path("f")).expect("open");
    file.write_all(b"new").expect("write");
    file.sync_all().expect("fsync");
    assert_eq!(fx.backing_bytes("f"), b"new");
}

#[test]
fn directories_and_listings_pass_through() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.path("a/b")).expect("mkdir");
    std::fs::write(fx.path("a/b/one"), b"1").expect("write");
    std::fs::write(fx.path("a/two"), b"2").expect("write");
    std::fs::rename(fx.path("a"), fx.path("c")).expect("rename a directory");
    assert_eq!(std::fs::read(fx.path("c/b/one")).expect("read through the moved directory"), b"1");
    let mut names: Vec<String> = std::fs::read_dir(fx.path("c"))
        .expect("readdir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "two"]);
    std::fs::remove_file(fx.path("c/b/one")).expect("unlink");
    std::fs::remove_dir(fx.path("c/b")).expect("rmdir");
    assert!(fx.backing.join("c").is_dir() && !fx.backing.join("c/b").exists());
}
