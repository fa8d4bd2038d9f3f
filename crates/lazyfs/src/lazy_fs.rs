//! `LazyFs`: the FUSE filesystem. Metadata passes straight through to the backing directory;
//! file data written since a file's last fsync stays in an [`Overlay`] in memory until the
//! next fsync or fdatasync writes it down, or a power cut drops it.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::overlay::{Overlay, read_durable};

/// How long the kernel may cache an attribute or a name: not at all. Sizes change under the
/// kernel's feet at a power cut, and a cached one would let a reader past the durable end.
const TTL: Duration = Duration::ZERO;
/// The inode number a backing file with inode number 1 goes by, since 1 is the root's.
const INODE_ONE_ALIAS: u64 = u64::MAX;

/// What a power cut threw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had unsynced changes.
    pub files: usize,
    /// Bytes of unsynced file data dropped.
    pub bytes: u64,
    /// Files still open at the cut (by a process that was killed but not yet fully released
    /// by the kernel); their later writes are refused.
    pub open_handles: usize,
}

/// The state every FUSE request and the power switch share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The backing directory: the durable disk.
    root: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Inode → path under the root ("" for the root), for every inode the kernel was told of
    /// and that still has a name.
    paths: BTreeMap<u64, PathBuf>,
    /// Inode → its unsynced changes, for files that have any.
    overlays: BTreeMap<u64, Overlay>,
    /// Open files.
    handles: BTreeMap<u64, Handle>,
    next_handle: u64,
    /// Power cuts so far: a handle opened before the latest belongs to a dead process.
    cuts: u64,
}

#[derive(Debug)]
struct Handle {
    ino: u64,
    /// The backing file, opened for reading and writing.
    file: Arc<File>,
    /// `State::cuts` when it was opened.
    era: u64,
}

impl Shared {
    pub(crate) fn new(root: PathBuf) -> Shared {
        let mut state = State::default();
        state.paths.insert(INodeNo::ROOT.0, PathBuf::new());
        Shared { root, state: Mutex::new(state) }
    }

    /// The power cut: drops every unsynced change, and refuses writes through files opened
    /// before it. The processes using the filesystem must be dead already.
    pub(crate) fn power_cut(&self) -> CutReport {
        let mut state = self.state.lock();
        let report = CutReport {
            files: state.overlays.len(),
            bytes: state.overlays.values().map(Overlay::pending_bytes).sum(),
            open_handles: state.handles.len(),
        };
        state.overlays.clear();
        state.cuts += 1;
        report
    }

    /// Bytes of file data not yet synced, over all files.
    pub(crate) fn pending_bytes(&self) -> u64 {
        self.state.lock().overlays.values().map(Overlay::pending_bytes).sum()
    }
}

/// The filesystem served to the kernel.
#[derive(Debug)]
pub(crate) struct LazyFs {
    shared: Arc<Shared>,
}

impl LazyFs {
    pub(crate) fn new(shared: Arc<Shared>) -> LazyFs {
        LazyFs { shared }
    }

    fn backing(&self, relative: &Path) -> PathBuf {
        self.shared.root.join(relative)
    }

    /// The path of `ino` under the root.
    fn path_of(&self, state: &State, ino: INodeNo) -> Result<PathBuf, Errno> {
        state.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    /// Stats `relative`, names its inode, and remembers the name.
    fn entry(&self, state: &mut State, relative: PathBuf) -> Result<FileAttr, Errno> {
        let metadata = std::fs::symlink_metadata(self.backing(&relative)).map_err(Errno::from)?;
        let ino = inode_of(&relative, &metadata);
        state.paths.insert(ino, relative);
        Ok(attr(ino, &metadata, state.overlays.get(&ino)))
    }

    /// Forgets the unsynced changes of a file that lost its last name, unless it is still open.
    fn drop_if_orphaned(state: &mut State, ino: u64) {
        if !state.paths.contains_key(&ino) && !state.handles.values().any(|handle| handle.ino == ino) {
            state.overlays.remove(&ino);
        }
    }

    /// The overlay of `ino`, created over the durable file `file` if it has none yet.
    fn overlay<'s>(state: &'s mut State, ino: u64, file: &File) -> Result<&'s mut Overlay, Errno> {
        match state.overlays.entry(ino) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => {
                let durable = file.metadata().map_err(Errno::from)?.len();
                Ok(entry.insert(Overlay::new(durable)))
            }
        }
    }

    /// The backing file of an open handle of this era.
    fn live_handle(state: &State, fh: FileHandle) -> Result<Arc<File>, Errno> {
        match state.handles.get(&fh.0) {
            Some(handle) if handle.era == state.cuts => Ok(Arc::clone(&handle.file)),
            // Opened before a power cut: its process is dead, and so is what it writes.
            Some(_) => Err(Errno::EIO),
            None => Err(Errno::EBADF),
        }
    }

    fn register(state: &mut State, ino: u64, file: File) -> FileHandle {
        state.next_handle += 1;
        let fh = state.next_handle;
        state.handles.insert(fh, Handle { ino, file: Arc::new(file), era: state.cuts });
        FileHandle(fh)
    }

    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        times: (Option<TimeOrNow>, Option<TimeOrNow>),
    ) -> Result<FileAttr, Errno> {
        let mut state = self.shared.state.lock();
        let relative = self.path_of(&state, ino)?;
        let path = self.backing(&relative);
        if let Some(mode) = mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777)).map_err(Errno::from)?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid).map_err(Errno::from)?;
        }
        if let Some(size) = size {
            // A truncation is a change of the file's data: unsynced until the next fsync.
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(Errno::from)?;
            Self::overlay(&mut state, ino.0, &file)?.set_size(size);
        }
        if let (None, None) = times {
        } else {
            let file = File::open(&path).map_err(Errno::from)?;
            let mut new_times = std::fs::FileTimes::new();
            if let Some(atime) = times.0 {
                new_times = new_times.set_accessed(time_of(atime));
            }
            if let Some(mtime) = times.1 {
                new_times = new_times.set_modified(time_of(mtime));
            }
            file.set_times(new_times).map_err(Errno::from)?;
        }
        self.entry(&mut state, relative)
    }

    fn do_create(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, FileHandle), Errno> {
        let mut state = self.shared.state.lock();
        let relative = self.path_of(&state, parent)?.join(name);
        let mut options = OpenOptions::new();
        options.read(true).write(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        // Creating the name is metadata, durable at once; emptying an existing file is data.
        let file = options.open(self.backing(&relative)).map_err(Errno::from)?;
        let attr = self.entry(&mut state, relative)?;
        if flags & libc::O_TRUNC != 0 {
            Self::overlay(&mut state, attr.ino.0, &file)?.set_size(0);
        }
        let fh = Self::register(&mut state, attr.ino.0, file);
        let attr = FileAttr { size: state.overlays.get(&attr.ino.0).map_or(attr.size, Overlay::size), ..attr };
        Ok((attr, fh))
    }

    fn do_open(&self, ino: INodeNo, flags: OpenFlags) -> Result<FileHandle, Errno> {
        let mut state = self.shared.state.lock();
        let relative = self.path_of(&state, ino)?;
        // Always read-write: reads of unsynced data and the fsync that writes it down both go
        // through the handle, whatever the caller asked for. The harness runs as root.
        let file = OpenOptions::new().read(true).write(true).open(self.backing(&relative)).map_err(Errno::from)?;
        if flags.0 & libc::O_TRUNC != 0 {
            Self::overlay(&mut state, ino.0, &file)?.set_size(0);
        }
        Ok(Self::register(&mut state, ino.0, file))
    }

    fn do_read(&self, ino: INodeNo, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let state = self.shared.state.lock();
        let file = match state.handles.get(&fh.0) {
            Some(handle) => Arc::clone(&handle.file),
            None => return Err(Errno::EBADF),
        };
        let len = usize::try_from(size).expect("u32 fits in usize");
        match state.overlays.get(&ino.0) {
            Some(overlay) => {
                overlay.read(offset, len, |at, buffer| read_durable(&file, at, buffer)).map_err(Errno::from)
            }
            None => {
                drop(state);
                let end = file.metadata().map_err(Errno::from)?.len().min(offset.saturating_add(u64::from(size)));
                let mut buffer = vec![0u8; usize::try_from(end.saturating_sub(offset)).expect("bounded by size")];
                read_durable(&file, offset, &mut buffer).map_err(Errno::from)?;
                Ok(buffer)
            }
        }
    }

    fn do_write(&self, ino: INodeNo, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let mut state = self.shared.state.lock();
        let file = Self::live_handle(&state, fh)?;
        Self::overlay(&mut state, ino.0, &file)?.write(offset, data);
        Ok(u32::try_from(data.len()).expect("a FUSE write is at most a few MiB"))
    }

    fn do_fsync(&self, ino: INodeNo, fh: FileHandle) -> Result<(), Errno> {
        let mut state = self.shared.state.lock();
        let file = Self::live_handle(&state, fh)?;
        if let Some(overlay) = state.overlays.get(&ino.0) {
            let durable = file.metadata().map_err(Errno::from)?.len();
            overlay.persist(&file, durable).map_err(Errno::from)?;
            state.overlays.remove(&ino.0);
        }
        // The backing file is the disk that survives the cut; it needs no fsync of its own.
        Ok(())
    }

    fn do_fallocate(&self, ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        let mut state = self.shared.state.lock();
        let file = Self::live_handle(&state, fh)?;
        if mode & libc::FALLOC_FL_KEEP_SIZE != 0 && mode & !libc::FALLOC_FL_KEEP_SIZE == 0 {
            // Preallocation that keeps the size changes nothing a reader can see.
            return Ok(());
        }
        if mode != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let overlay = Self::overlay(&mut state, ino.0, &file)?;
        let end = offset.saturating_add(length);
        if end > overlay.size() {
            overlay.set_size(end);
        }
        Ok(())
    }

    fn do_unlink(&self, parent: INodeNo, name: &OsStr, directory: bool) -> Result<(), Errno> {
        let mut state = self.shared.state.lock();
        let relative = self.path_of(&state, parent)?.join(name);
        let path = self.backing(&relative);
        let metadata = std::fs::symlink_metadata(&path).map_err(Errno::from)?;
        let ino = inode_of(&relative, &metadata);
        if directory {
            std::fs::remove_dir(&path).map_err(Errno::from)?;
        } else {
            std::fs::remove_file(&path).map_err(Errno::from)?;
        }
        if state.paths.get(&ino) == Some(&relative) {
            state.paths.remove(&ino);
        }
        Self::drop_if_orphaned(&mut state, ino);
        Ok(())
    }

    fn do_rename(&self, parent: INodeNo, name: &OsStr, new_parent: INodeNo, new_name: &OsStr) -> Result<(), Errno> {
        let mut state = self.shared.state.lock();
        let from = self.path_of(&state, parent)?.join(name);
        let to = self.path_of(&state, new_parent)?.join(new_name);
        let moved = std::fs::symlink_metadata(self.backing(&from)).map_err(Errno::from)?;
        let moved_ino = inode_of(&from, &moved);
        let replaced = std::fs::symlink_metadata(self.backing(&to)).ok().map(|metadata| inode_of(&to, &metadata));
        std::fs::rename(self.backing(&from), self.backing(&to)).map_err(Errno::from)?;
        // Renames are metadata, durable at once. Every name under a moved directory moves too.
        let renamed: Vec<(u64, PathBuf)> = state
            .paths
            .iter()
            .filter_map(|(&ino, path)| path.strip_prefix(&from).ok().map(|rest| (ino, to.join(rest))))
            .collect();
        if let Some(replaced) = replaced.filter(|&replaced| replaced != moved_ino) {
            state.paths.remove(&replaced);
            Self::drop_if_orphaned(&mut state, replaced);
        }
        for (ino, path) in renamed {
            state.paths.insert(ino, path);
        }
        state.paths.insert(moved_ino, to);
        Ok(())
    }

    fn do_readdir(&self, ino: INodeNo) -> Result<Vec<(u64, FileType, std::ffi::OsString)>, Errno> {
        let mut state = self.shared.state.lock();
        let relative = self.path_of(&state, ino)?;
        let mut entries = vec![(ino.0, FileType::Directory, ".".into()), (ino.0, FileType::Directory, "..".into())];
        let mut names: Vec<_> = std::fs::read_dir(self.backing(&relative))
            .map_err(Errno::from)?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name())
            .collect();
        // One order for every call, so the offsets the kernel hands back stay meaningful.
        names.sort();
        for name in names {
            let child = relative.join(&name);
            let Ok(metadata) = std::fs::symlink_metadata(self.backing(&child)) else { continue };
            let child_ino = inode_of(&child, &metadata);
            state.paths.insert(child_ino, child);
            entries.push((child_ino, kind_of(&metadata), name));
        }
        Ok(entries)
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.shared.state.lock();
        let result = self.path_of(&state, parent).and_then(|path| self.entry(&mut state, path.join(name)));
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(error) => reply.error(error),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut state = self.shared.state.lock();
        let result = self.path_of(&state, ino).and_then(|path| self.entry(&mut state, path));
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(error) => reply.error(error),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, uid, gid, size, (atime, mtime)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(error) => reply.error(error),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut state = self.shared.state.lock();
        let result = self.path_of(&state, parent).and_then(|path| {
            let relative = path.join(name);
            std::fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(self.backing(&relative))
                .map_err(Errno::from)?;
            self.entry(&mut state, relative)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(error) => reply.error(error),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_unlink(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_unlink(parent, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            // RENAME_NOREPLACE, RENAME_EXCHANGE: nothing we serve uses them.
            return reply.error(Errno::EINVAL);
        }
        reply_empty(reply, self.do_rename(parent, name, new_parent, new_name));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags) {
            // Direct I/O: the kernel keeps no page cache of its own, so every read and write
            // reaches the overlay, and nothing survives a cut in the kernel.
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(error) => reply.error(error),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent, name, mode, umask, flags) {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(error) => reply.error(error),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(ino, fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(error) => reply.error(error),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(ino, fh, offset, data) {
            Ok(written) => reply.written(written),
            Err(error) => reply.error(error),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2) makes nothing durable on a real disk either.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.shared.state.lock();
        state.handles.remove(&fh.0);
        Self::drop_if_orphaned(&mut state, ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // fdatasync and fsync alike write down data and size, all a reader can tell apart.
        reply_empty(reply, self.do_fsync(ino, fh));
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.do_readdir(ino) {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (index, (child, kind, name)) in entries.into_iter().enumerate().skip(skip) {
                    if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(error) => reply.error(error),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Names are durable as soon as they change (see the crate documentation).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A large, empty disk: RocksDB only reads this to report it.
        reply.statfs(1 << 28, 1 << 28, 1 << 28, 1 << 24, 1 << 24, 4096, 255, 4096);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.do_fallocate(ino, fh, offset, length, mode));
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(error) => reply.error(error),
    }
}

/// The inode number the kernel knows `relative` by: the backing file's, except the root's.
fn inode_of(relative: &Path, metadata: &Metadata) -> u64 {
    if relative.as_os_str().is_empty() {
        INodeNo::ROOT.0
    } else if metadata.ino() == INodeNo::ROOT.0 {
        INODE_ONE_ALIAS
    } else {
        metadata.ino()
    }
}

fn kind_of(metadata: &Metadata) -> FileType {
    FileType::from_std(metadata.file_type()).unwrap_or(FileType::RegularFile)
}

/// The attributes of inode `ino`, whose size is the overlay's when it has unsynced changes.
fn attr(ino: u64, metadata: &Metadata, overlay: Option<&Overlay>) -> FileAttr {
    let size = overlay.map_or(metadata.len(), Overlay::size);
    let time = |secs: i64, nanos: i64| {
        let nanos = u32::try_from(nanos).unwrap_or(0);
        match u64::try_from(secs) {
            Ok(secs) => UNIX_EPOCH + Duration::new(secs, nanos),
            Err(_) => UNIX_EPOCH,
        }
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(metadata.atime(), metadata.atime_nsec()),
        mtime: time(metadata.mtime(), metadata.mtime_nsec()),
        ctime: time(metadata.ctime(), metadata.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind_of(metadata),
        perm: u16::try_from(metadata.mode() & 0o7777).expect("masked to 12 bits"),
        nlink: u32::try_from(metadata.nlink()).unwrap_or(u32::MAX),
        uid: metadata.uid(),
        gid: metadata.gid(),
        rdev: u32::try_from(metadata.rdev()).unwrap_or(0),
        blksize: 4096,
        flags: 0,
    }
}

#[allow(clippy::disallowed_methods, reason = "a touch(1) to 'now' asks for the real clock; this is no simulation")]
fn time_of(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}
