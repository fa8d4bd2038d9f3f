//! The nodes' disks in a power-loss run: each node's data directory is a lazy filesystem
//! (`flotilla_lazyfs`) over `node{i}/disk`, which holds exactly what the node synced. A power
//! cut of a node is SIGKILL (by the supervisor) and then dropping its disk's unsynced writes.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use flotilla_lazyfs::{CutReport, LazyMount};

use crate::supervisor::{Health, Supervisor};

/// One lazy mount per node.
#[derive(Debug)]
pub struct Disks {
    mounts: BTreeMap<u64, LazyMount>,
}

impl Disks {
    /// Mounts a lazy filesystem on every node's data directory, over `disk` beside it. The
    /// supervisor has wiped the node directories; nothing runs yet.
    pub fn mount(supervisor: &Supervisor) -> anyhow::Result<Disks> {
        let mut mounts = BTreeMap::new();
        for id in supervisor.node_ids() {
            let data = supervisor.data_dir(id);
            let disk = disk_of(data);
            std::fs::create_dir_all(&disk).with_context(|| format!("creating {}", disk.display()))?;
            std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
            let mount = LazyMount::mount(&disk, data).with_context(|| {
                format!(
                    "mounting the lazy filesystem on {} (needs root and /dev/fuse; `ls -l /dev/fuse`)",
                    data.display()
                )
            })?;
            mounts.insert(id, mount);
        }
        Ok(Disks { mounts })
    }

    /// Drops node `id`'s unsynced writes. The node must be down: a cut under a live process
    /// would model a disk losing data while the machine runs.
    pub fn cut(&self, supervisor: &Supervisor, id: u64) -> anyhow::Result<CutReport> {
        ensure!(supervisor.health(id) == Health::Down, "power cut of n{id} while its process runs");
        let mount = self.mounts.get(&id).with_context(|| format!("node {id} has no lazy disk"))?;
        Ok(mount.power_cut())
    }

    /// Unmounts every disk; call once every node is down.
    pub fn unmount(self) -> anyhow::Result<()> {
        for (id, mount) in self.mounts {
            let path = mount.mountpoint().to_path_buf();
            mount.unmount().with_context(|| format!("unmounting n{id}'s disk at {}", path.display()))?;
        }
        Ok(())
    }
}

/// Unmounts whatever an earlier run that died left mounted on the node data directories under
/// `run_dir` (a dead FUSE server's mount fails every access with "transport endpoint is not
/// connected", and the supervisor could not wipe it).
pub fn clear_stale_mounts(run_dir: &Path, nodes: u64) -> anyhow::Result<()> {
    let mounted = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    for id in 1..=nodes {
        let data = run_dir.join(format!("node{id}")).join("data");
        let wanted = data.to_string_lossy().into_owned();
        if mounted.lines().any(|line| line.split(' ').nth(1) == Some(wanted.as_str())) {
            lazy_unmount(&data)?;
        }
    }
    Ok(())
}

fn disk_of(data: &Path) -> PathBuf {
    data.with_file_name("disk")
}

/// `umount -l`: detaches the mount even if its server is gone.
#[allow(unsafe_code, reason = "umount2(2) has no safe wrapper in std; it reads one C string we own")]
fn lazy_unmount(path: &Path) -> anyhow::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let result = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("umount -l {}", path.display()));
    }
    Ok(())
}
