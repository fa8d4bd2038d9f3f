//! `LazyMount`: one mounted [`LazyFs`](crate::lazy_fs::LazyFs) over a backing directory, and
//! the power switch that drops its unsynced writes. Unmounts when dropped.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption};

use crate::lazy_fs::{CutReport, LazyFs, Shared};

/// A mounted lazy filesystem: `mountpoint` shows `backing` plus every unsynced write.
#[derive(Debug)]
pub struct LazyMount {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    /// The FUSE session; `None` once unmounted.
    session: Option<BackgroundSession>,
}

impl LazyMount {
    /// Mounts a lazy view of `backing` (an existing directory, the durable disk) on
    /// `mountpoint` (an existing, empty directory). Needs the right to mount: root, with
    /// `/dev/fuse` present. No `fusermount` is involved.
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<LazyMount> {
        let backing = backing.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        let shared = Arc::new(Shared::new(backing.clone()));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("lazyfs:{}", backing.display())),
            MountOption::Subtype("flotilla-lazyfs".into()),
            MountOption::NoAtime,
        ];
        // One thread: every request takes the one state lock anyway, and the order in which
        // the kernel sent them is the order they apply in.
        config.n_threads = Some(1);
        let session = fuser::spawn_mount(LazyFs::new(Arc::clone(&shared)), &mountpoint, &config)?;
        Ok(LazyMount { shared, mountpoint, session: Some(session) })
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The power cut: every write, truncation and extension since each file's last sync is
    /// gone. Kill every process using the mount first.
    pub fn power_cut(&self) -> CutReport {
        self.shared.power_cut()
    }

    /// Bytes of file data written but not yet synced.
    pub fn pending_bytes(&self) -> u64 {
        self.shared.pending_bytes()
    }

    /// Unmounts and waits for the FUSE thread to end.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}
