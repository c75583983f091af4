//! The FUSE adapter: decodes requests, calls the cache or SOURCE, replies. Kept thin.
//!
//! - metadata operations go to SOURCE through [`source`] (dirfd + `*at()` calls only);
//! - file data goes through [`crate::cache::CacheContext`] (one `InodeCache` per inode), and
//!   read replies are sent straight from pool memory;
//! - `user.extentfs.*` xattrs are ours (stats and control) and never reach SOURCE.
//!
//! Nothing outside this module knows about FUSE.

pub mod caller;
mod fileattr;
pub mod inodes;
pub mod mount;
pub mod spin;
pub mod xattr;

use crate::cache::inode_cache::InodeCache;
use crate::cache::{CacheContext, WriteKind};
use crate::options::{CacheMode, Coherence};
use crate::source;
use crate::stats::Op;
use caller::Caller;
use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use inodes::{Inode, InodeTable};
use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How the filesystem behaves (from the mount options).
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub cache: CacheMode,
    pub read_only: bool,
    /// Entry and attribute time-to-live given to the kernel.
    pub ttl: Duration,
    /// uid that mounted (may use the ctl xattr besides root).
    pub owner_uid: u32,
    /// The mount's atime options, applied to SOURCE's private mount.
    pub atime: source::AtimeMode,
    pub nodiratime: bool,
    /// Idle polling after each request (see `spin`).
    pub spin: spin::SpinMode,
    /// How changes others make to SOURCE are followed.
    pub coherence: Coherence,
}

/// An open directory stream.
struct DirHandle {
    dir: *mut libc::DIR,
    /// Position the stream is at (telldir cookie of the next entry).
    offset: u64,
}

// SAFETY: a glibc DIR stream is not tied to the thread that opened it; it may be used from
// another thread as long as no two use it at once. DirHandle is only Send, not Sync, and
// lives in `Arc<Mutex<_>>`, so every use (readdir, seekdir, closedir on drop) is serialized.
unsafe impl Send for DirHandle {}

impl Drop for DirHandle {
    fn drop(&mut self) {
        // SAFETY: `self.dir` is the non-null stream fdopendir returned in open_dir and is closed
        // only here, once, when the last Arc to the handle goes; closedir also closes the
        // descriptor the stream took over.
        unsafe { libc::closedir(self.dir) };
    }
}

pub struct ExtentFs {
    pub(crate) inodes: InodeTable,
    pub(crate) ctx: Arc<CacheContext>,
    pub(crate) cfg: FsConfig,
    dirs: Mutex<HashMap<u64, Arc<Mutex<DirHandle>>>>,
    next_fh: AtomicU64,
    /// Set once the session exists: tells the kernel when attributes it caches changed behind
    /// its back (set-ID bits dropped by a write).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    am_root: bool,
    spinner: Option<Arc<spin::Spinner>>,
}

type R<T> = Result<T, Errno>;

/// How long a direct write waits for the kernel to drop its pages of the range (see
/// `ExtentFs::invalidate_written`); normally microseconds.
const INVAL_WAIT: Duration = Duration::from_secs(1);

/// What an entry reply carries: the attributes and the generation for file handles.
type Entry = (FileAttr, Generation);

/// fuser's reply types, for answering an error uniformly.
trait ErrorReply {
    fn fail(self, e: Errno);
}

macro_rules! error_reply {
    ($($t:ty),* $(,)?) => {
        $(impl ErrorReply for $t {
            fn fail(self, e: Errno) {
                self.error(e)
            }
        })*
    };
}

error_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyIoctl,
    ReplyLseek,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr,
);

fn err(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn errno(n: i32) -> Errno {
    Errno::from_i32(n)
}

fn systime(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs((-sec) as u64) + Duration::from_nanos(nsec as u64)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dtype_to_filetype(t: u8) -> FileType {
    match t {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn timespec_of(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = -(d.subsec_nanos() as i64);
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                }
            }
        },
    }
}

/// UTIME_NOW as the current wall-clock time.
fn resolve_now(t: libc::timespec) -> libc::timespec {
    if t.tv_nsec != libc::UTIME_NOW {
        return t;
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a live, writable timespec; CLOCK_REALTIME_COARSE is always supported.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
    now
}

impl ExtentFs {
    pub fn new(source: &Path, ctx: Arc<CacheContext>, cfg: FsConfig) -> io::Result<ExtentFs> {
        let root = source::open_root_with_atime(source, cfg.atime, cfg.nodiratime)?;
        let st = source::fstat(root.as_fd())?;
        Ok(ExtentFs {
            inodes: InodeTable::new(root, &st),
            ctx,
            cfg,
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            notifier: Arc::new(std::sync::OnceLock::new()),
            // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
            am_root: unsafe { libc::geteuid() } == 0,
            spinner: None,
        })
    }

    /// Where the mount code puts the session's notifier.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    pub fn context(&self) -> &Arc<CacheContext> {
        &self.ctx
    }

    /// Whether changes others make to SOURCE are followed (close-to-open or strict).
    fn coherent(&self) -> bool {
        self.cfg.coherence != Coherence::None
    }

    /// Revalidate a cached file against SOURCE (close-to-open); when someone else changed it,
    /// the cache adopted the change and the kernel is told its attributes (and, under
    /// `cache=kernel`, its pages; `kernel_pages` false when the caller makes the kernel drop
    /// them itself, e.g. an open without FOPEN_KEEP_CACHE). Returns SOURCE's stat and
    /// whether it changed.
    fn revalidate(
        &self,
        ino: INodeNo,
        c: &InodeCache,
        kernel_pages: bool,
    ) -> R<(libc::stat, bool)> {
        self.revalidate_with(ino, c, kernel_pages, None)
    }

    /// As `revalidate`, given a stat of the file just taken (lookup), which saves an fstat
    /// when nothing changed.
    fn revalidate_with(
        &self,
        ino: INodeNo,
        c: &InodeCache,
        kernel_pages: bool,
        taken: Option<&libc::stat>,
    ) -> R<(libc::stat, bool)> {
        let (st, changed) = self.ctx.revalidate_with(c, taken).map_err(err)?;
        if changed {
            self.tell_kernel_changed(ino, kernel_pages && self.cfg.cache == CacheMode::Kernel);
        }
        Ok((st, changed))
    }

    /// The kernel's attributes (and with `pages`, its cached pages) of `ino` are stale. Pages
    /// are invalidated from another thread: the kernel locks them to drop them, and the
    /// request being served may hold one of them until it is answered.
    fn tell_kernel_changed(&self, ino: INodeNo, pages: bool) {
        let Some(n) = self.notifier.get() else { return };
        if !pages {
            let _ = n.inval_inode(ino, -1, 0);
            return;
        }
        let n = n.clone();
        let spawned = std::thread::Builder::new()
            .name("inval".into())
            .spawn(move || {
                if let Err(e) = n.inval_inode(ino, 0, 0) {
                    tracing::debug!("invalidating the kernel's pages of node {}: {e}", ino.0);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("kernel pages of node {} not invalidated: {e}", ino.0);
        }
    }

    /// Drop the kernel's cached pages of `[off, off + len)` of `ino` after a direct write to
    /// them (`cache=kernel`), before the write is answered, so nothing read once it completed
    /// can come from a page cached before it reached the pool. The kernel locks each page to
    /// drop it, so this runs on another thread and is waited for only a bounded time: a page
    /// locked by a request that waits for this one must not block it forever.
    fn invalidate_written(&self, ino: INodeNo, off: u64, len: u64) {
        let Some(n) = self.notifier.get() else { return };
        if len == 0 {
            return;
        }
        let n = n.clone();
        let (done, wait) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("inval".into())
            .spawn(move || {
                if let Err(e) = n.inval_inode(ino, off as i64, len as i64) {
                    tracing::debug!("invalidating the kernel's pages of node {}: {e}", ino.0);
                }
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => {
                if wait.recv_timeout(INVAL_WAIT).is_err() {
                    tracing::debug!(
                        "node {}: pages after a direct write still being dropped",
                        ino.0
                    );
                }
            }
            Err(e) => tracing::warn!("kernel pages of node {} not invalidated: {e}", ino.0),
        }
    }

    fn inode(&self, ino: INodeNo) -> R<Arc<Inode>> {
        self.inodes.get(ino.0).ok_or(Errno::ESTALE)
    }

    /// Before `name` in `dir` loses a link: its stat and, if the kernel knows the inode, its
    /// descriptor held open (reopened if it was given back) until the caller drops it, so a
    /// process that still holds the inode (a cwd, an `O_PATH` descriptor) finds it once its
    /// last name is gone (nlink 0), as on a local filesystem, not ESTALE; with no links left
    /// the descriptor is never given back again.
    ///
    /// Also returns the victim's cache, if it has one: the removal changes its ctime in
    /// SOURCE, which the caller brackets as an own change.
    fn hold_victim(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> (
        Option<libc::stat>,
        Option<Arc<OwnedFd>>,
        Option<Arc<InodeCache>>,
    ) {
        let Ok(st) = source::fstatat(dir, name) else {
            return (None, None, None);
        };
        let inode = self.inodes.get_by_key((st.st_dev, st.st_ino));
        if let Some(i) = &inode {
            i.unlinked_via_mount.store(true, Ordering::Relaxed);
        }
        let held = inode.as_ref().and_then(|i| i.fd().ok());
        let cache = inode.and_then(|i| i.cache.get().cloned());
        (Some(st), held, cache)
    }

    /// The cache of the regular file `name` in `dir`, if it has one.
    fn moved_cache(&self, dir: BorrowedFd<'_>, name: &CStr) -> Option<Arc<InodeCache>> {
        let st = source::fstatat(dir, name).ok()?;
        (st.st_mode & libc::S_IFMT == libc::S_IFREG)
            .then(|| self.ctx.get((st.st_dev, st.st_ino)))
            .flatten()
    }

    fn cache_of(&self, inode: &Inode) -> R<Arc<InodeCache>> {
        if !inode.is_file() {
            return Err(if inode.is_dir() {
                Errno::EISDIR
            } else {
                Errno::EINVAL
            });
        }
        if let Some(c) = inode.cache.get() {
            return Ok(c.clone());
        }
        let ro = self.cfg.read_only;
        let c = self
            .ctx
            .get_or_create(inode.key, || source::DataFile::open(inode.path_fd(), ro))
            .map_err(err)?;
        let _ = inode.cache.set(c.clone());
        Ok(c)
    }

    /// FileAttr of an inode, with the cache's view of size and mtime when it has one.
    fn attr_of(&self, inode: &Inode, st: &libc::stat) -> FileAttr {
        let mut size = st.st_size as u64;
        let mut blocks = st.st_blocks as u64;
        let mut mtime = systime(st.st_mtime, st.st_mtime_nsec);
        let mut ctime = systime(st.st_ctime, st.st_ctime_nsec);
        inode
            .xattr_absent
            .note_ctime(xattr::ctime_stamp(st.st_ctime, st.st_ctime_nsec));
        if inode.is_file() {
            if let Some(c) = inode
                .cache
                .get()
                .cloned()
                .or_else(|| self.ctx.get(inode.key))
            {
                size = c.size();
                let dirty = c.dirty_bytes();
                if dirty > 0 {
                    blocks = blocks.max(size.div_ceil(512).min(blocks + dirty.div_ceil(512)));
                }
                if let Some(t) = c.mtime_override() {
                    mtime = systime(t.tv_sec, t.tv_nsec);
                    if mtime > ctime {
                        ctime = mtime;
                    }
                }
            }
        }
        FileAttr {
            ino: INodeNo(inode.id),
            size,
            blocks,
            atime: systime(st.st_atime, st.st_atime_nsec),
            mtime,
            ctime,
            crtime: UNIX_EPOCH,
            kind: file_type(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    fn stat_attr(&self, inode: &Inode) -> R<FileAttr> {
        self.stat_attr_via(inode, inode.fd()?.as_fd())
    }

    /// Attributes for getattr: a cached file is revalidated against SOURCE (close-to-open;
    /// the kernel asks again only once `attr_timeout` passed) with the same one fstat.
    fn getattr_of(&self, ino: INodeNo, inode: &Inode) -> R<FileAttr> {
        match inode.cache.get() {
            Some(c) if self.coherent() => {
                let (st, _) = self.revalidate(ino, c, true)?;
                Ok(self.attr_of(inode, &st))
            }
            _ => self.stat_attr(inode),
        }
    }

    /// As `stat_attr`, through the inode's descriptor that the caller already holds.
    fn stat_attr_via(&self, inode: &Inode, fd: BorrowedFd<'_>) -> R<FileAttr> {
        let st = source::fstat(fd).map_err(err)?;
        Ok(self.attr_of(inode, &st))
    }

    /// Look `name` up in `parent` and take a kernel reference on the result.
    fn do_lookup(&self, parent: &Inode, name: &CStr) -> R<Entry> {
        let fd = source::open_path(parent.fd()?.as_fd(), name).map_err(err)?;
        let st = source::fstat(fd.as_fd()).map_err(err)?;
        let inode = self.inodes.lookup(fd, &st);
        if let Some(c) = inode.cache.get().filter(|_| self.coherent()) {
            self.revalidate_with(INodeNo(inode.id), c, true, Some(&st))?;
        }
        Ok((self.attr_of(&inode, &st), Generation(inode.generation)))
    }

    /// LOOKUP of "." and "..": the kernel decoding an export handle (FUSE_EXPORT_SUPPORT)
    /// asks for node `parent` itself, or for a directory's parent. Both take a reference.
    fn export_lookup(&self, parent: INodeNo, dotdot: bool) -> R<Entry> {
        let inode = if !dotdot {
            self.inodes.revive(parent.0).map_err(err)?
        } else if parent.0 == inodes::ROOT_ID {
            self.inodes.revive(inodes::ROOT_ID).map_err(err)?
        } else {
            let dir = self.inode(parent)?;
            if !dir.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            return self.do_lookup(&dir, c"..");
        };
        match source::fstat(inode.fd()?.as_fd()) {
            Ok(st) => Ok((self.attr_of(&inode, &st), Generation(inode.generation))),
            Err(e) => {
                self.forget_one(inode.id, 1);
                Err(err(e))
            }
        }
    }

    /// Reply with `ok(reply, value)`, or count the error against `op` and reply with it.
    fn answer<T, P: ErrorReply>(&self, op: Op, reply: P, r: R<T>, ok: impl FnOnce(P, T)) {
        match r {
            Ok(v) => ok(reply, v),
            Err(e) => {
                self.ctx.ops.error(op);
                reply.fail(e)
            }
        }
    }

    fn reply_entry(&self, op: Op, reply: ReplyEntry, r: R<Entry>) {
        self.answer(op, reply, r, |reply, (attr, generation)| {
            reply.entry(&self.cfg.ttl, &attr, generation)
        })
    }

    /// Become the caller of `req` for a creation in SOURCE (see [`source::UserCreds`]):
    /// `Ok(Some(guard))` while the thread acts as the caller, `Ok(None)` when it need not (the
    /// daemon is not root, or the caller is root with group 0: what the daemon creates is
    /// the caller's anyway), `Err` when the switch was refused (then the creation runs as
    /// the daemon and `chown_new` gives the object to the caller after).
    fn become_caller(&self, req: &Request) -> io::Result<Option<source::UserCreds>> {
        if !self.am_root || (req.uid() == 0 && req.gid() == 0) {
            return Ok(None);
        }
        let groups = Caller::of(req).groups();
        source::UserCreds::switch(req.uid(), req.gid(), &groups).map(Some)
    }

    /// Run `make`, a creation in SOURCE, as the caller of `req`; returns its result and
    /// whether the new object still has to be given to the caller (`chown_new`).
    fn create_as_caller<T>(&self, req: &Request, make: impl FnOnce() -> T) -> (T, bool) {
        match self.become_caller(req) {
            Ok(creds) => {
                let r = make();
                drop(creds);
                (r, false)
            }
            Err(e) => {
                tracing::debug!(
                    "creating as uid {} gid {} refused ({e}): created by the daemon, then chowned",
                    req.uid(),
                    req.gid()
                );
                (make(), true)
            }
        }
    }

    /// After creating `name` in `parent` as root (when acting as the caller was refused):
    /// give it to the caller, as a local filesystem would (the group stays the directory's
    /// when it is setgid).
    fn chown_new(&self, req: &Request, parent: &Inode, name: &CStr, mode: u32) -> R<()> {
        if !self.am_root || (req.uid() == 0 && req.gid() == 0) {
            return Ok(());
        }
        let dir = parent.fd()?;
        let pst = source::fstat(dir.as_fd()).map_err(err)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            req.gid()
        };
        let fd = source::open_path(dir.as_fd(), name).map_err(err)?;
        source::chown(fd.as_fd(), req.uid(), gid).map_err(err)?;
        // chown clears set-id bits of non-directories; restore what was asked for.
        let st = source::fstat(fd.as_fd()).map_err(err)?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFLNK && kind != libc::S_IFDIR && mode & 0o6000 != 0 {
            let _ = source::chmod(fd.as_fd(), mode & 0o7777);
        }
        Ok(())
    }

    /// A modification of `c`'s data by the caller of `req` (a write, fallocate in any mode, a
    /// copy into it): drop set-user-ID and set-group-ID as the kernel does for a local file
    /// (`setattr_should_drop_suidgid`), since the kernel leaves that to the daemon for direct
    /// I/O, fallocate and copy_file_range, and the daemon acts with its own CAP_FSETID. Costs
    /// an atomic load unless the file may have such a bit.
    fn kill_setid_for(&self, req: &Request, ino: INodeNo, c: &InodeCache) -> R<()> {
        if !c.may_have_setid.load(Ordering::Relaxed) {
            return Ok(());
        }
        let changed = c
            .kill_setid(|mode, gid| Caller::of(req).setid_to_drop(mode, gid))
            .map_err(err)?;
        if changed {
            if let Some(n) = self.notifier.get() {
                // Attributes only (negative offset): the cached mode is stale.
                let _ = n.inval_inode(ino, -1, 0);
            }
        }
        Ok(())
    }

    /// Tell the spinner who sends the data requests (`spin=auto` polls only for a client
    /// that cannot run on the daemon's CPUs).
    #[inline]
    fn note_client(&self, req: &Request) {
        if let Some(s) = &self.spinner {
            s.note_client(req.pid());
        }
    }

    /// Count and run one request's handler; a panic becomes EIO for that request (its unsent reply is
    /// dropped, which fuser answers with EIO) and a log line, and the mount keeps serving.
    fn guard(&self, op: Op, f: impl FnOnce()) {
        self.ctx.ops.request(op);
        if let Some(s) = &self.spinner {
            s.note_request();
        }
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            self.ctx.ops.error(op);
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("bug: {} request panicked ({msg}); answered EIO", op.name());
        }
    }

    /// Create `name` in `parent` with `make(parent_fd, name)`, give it to the caller, and
    /// look it up (mknod, mkdir, symlink). `mode` is what was asked for, after the umask.
    fn make_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        make: impl FnOnce(std::os::fd::BorrowedFd<'_>, &CStr) -> io::Result<()>,
    ) -> R<Entry> {
        self.check_writable()?;
        let parent = self.inode(parent)?;
        let cname = source::name_cstr(name).map_err(err)?;
        let dir = parent.fd()?;
        let (made, chown) = self.create_as_caller(req, || make(dir.as_fd(), &cname));
        made.map_err(err)?;
        if chown {
            self.chown_new(req, &parent, &cname, mode)?;
        }
        self.do_lookup(&parent, &cname)
    }

    fn check_writable(&self) -> R<()> {
        if self.cfg.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Flags of an open; `changed`: the file changed in SOURCE since the kernel cached its
    /// pages (cache=kernel then opens without FOPEN_KEEP_CACHE, so the kernel drops them).
    fn open_flags(&self, changed: bool) -> FopenFlags {
        match self.cfg.cache {
            CacheMode::Pool => {
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
            }
            CacheMode::Kernel if changed => FopenFlags::empty(),
            CacheMode::Kernel => FopenFlags::FOPEN_KEEP_CACHE,
        }
    }

    /// A file held open revalidates on read at most once per `attr_timeout` (every read
    /// with `coherence=strict`).
    #[inline]
    fn read_revalidate(&self, ino: INodeNo, c: &InodeCache) -> R<()> {
        let due = match self.cfg.coherence {
            Coherence::None => false,
            Coherence::Strict => true,
            Coherence::Cto => self
                .ctx
                .revalidation_due(c, self.cfg.ttl.as_millis() as u64),
        };
        if due {
            self.revalidate(ino, c, true)?;
        }
        Ok(())
    }

    /// Close-to-open at open: revalidate against SOURCE. A file whose last link went away
    /// in SOURCE (deleted, or replaced by a rename) and not through the mount answers ESTALE:
    /// the kernel then looks the name up again and opens what SOURCE has now. Returns
    /// whether the file changed.
    fn open_revalidate(&self, ino: INodeNo, inode: &Inode, c: &InodeCache) -> R<bool> {
        if !self.coherent() {
            return Ok(false);
        }
        let (st, changed) = self.revalidate(ino, c, false)?;
        if st.st_nlink == 0 && !inode.unlinked_via_mount.load(Ordering::Relaxed) {
            tracing::debug!("node {} was removed from SOURCE: ESTALE at open", ino.0);
            return Err(Errno::ESTALE);
        }
        Ok(changed)
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        inode: &Inode,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> R<FileAttr> {
        if mode.is_some()
            || uid.is_some()
            || gid.is_some()
            || size.is_some()
            || atime.is_some()
            || mtime.is_some()
        {
            self.check_writable()?;
        }
        // Taken once for the whole request (each take locks the PathFd).
        let fd = inode.fd()?;
        // Every change below is extentfs's own, not one to revalidate against.
        let cache = if size.is_some() {
            Some(self.cache_of(inode)?)
        } else {
            inode.cache.get().cloned()
        };
        if let (Some(c), Some(_)) = (&cache, size) {
            // Immutable and append-only files are never truncated (a truncate by path has
            // no open that would have learnt the flags).
            self.refuse_if_restricted(inode, c, true)?;
        }
        let _own = cache.as_ref().map(|c| c.file.own_change());
        if uid.is_some() || gid.is_some() {
            source::chown(fd.as_fd(), uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))
                .map_err(err)?;
        }
        if let Some(m) = mode {
            if inode.is_symlink() {
                return Err(Errno::EOPNOTSUPP);
            }
            source::chmod(fd.as_fd(), m & 0o7777).map_err(err)?;
            if let Some(c) = inode.cache.get() {
                c.may_have_setid
                    .store(m & (libc::S_ISUID | libc::S_ISGID) != 0, Ordering::Relaxed);
            }
        }
        if let Some(s) = size {
            let c = self.cache_of(inode)?;
            self.ctx.truncate(&c, s).map_err(err)?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec_of(atime), timespec_of(mtime)];
            if let (Some(c), Some(_)) = (inode.cache.get(), mtime) {
                if c.mtime_override().is_some() {
                    // Writes not yet in SOURCE would otherwise stamp their own time later:
                    // the explicit mtime is what writeback stamps now.
                    c.set_pending_mtime(Some(resolve_now(times[1])));
                }
            }
            source::utimens(fd.as_fd(), &times, inode.is_symlink()).map_err(err)?;
        }
        self.stat_attr_via(inode, fd.as_fd())
    }

    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> R<(Entry, Arc<InodeCache>)> {
        self.check_writable()?;
        let parent = self.inode(parent)?;
        let cname = source::name_cstr(name).map_err(err)?;
        let excl = flags & libc::O_EXCL;
        let dir = parent.fd()?;
        let (made, chown) = self.create_as_caller(req, || {
            source::with_umask(mode & 0o7777, umask, |m| {
                source::openat(
                    dir.as_fd(),
                    &cname,
                    libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY,
                    m,
                )
            })
        });
        let created = match made {
            Ok(fd) => {
                drop(fd);
                true
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && excl == 0 => false,
            Err(e) => return Err(err(e)),
        };
        if created && chown {
            self.chown_new(req, &parent, &cname, mode & !umask)?;
        }
        let (attr, generation) = self.do_lookup(&parent, &cname)?;
        let inode = self.inodes.get(attr.ino.0).ok_or(Errno::ESTALE)?;
        let c = match self.cache_of(&inode) {
            Ok(c) => c,
            Err(e) => {
                self.forget_one(attr.ino.0, 1);
                return Err(e);
            }
        };
        if !created {
            self.check_open_flags(&inode, &c, flags)?;
        }
        if !created && flags & libc::O_TRUNC != 0 {
            self.ctx.truncate(&c, 0).map_err(err)?;
        }
        c.open_handles.fetch_add(1, Ordering::Relaxed);
        let attr = self.stat_attr(&inode)?;
        Ok(((attr, generation), c))
    }

    fn forget_one(&self, id: u64, n: u64) {
        if let Some(key) = self.inodes.forget(id, n) {
            self.ctx.forget(key);
        }
    }

    fn do_fallocate(
        &self,
        req: &Request,
        inode: &Inode,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> R<()> {
        self.check_writable()?;
        let c = self.cache_of(inode)?;
        self.check_fallocate_flags(inode, mode)?;
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        // As vfs_fallocate checks against SOURCE's limit, whatever the mode.
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        if end > c.file.max_size() {
            return Err(Errno::EFBIG);
        }
        // Every mode modifies the file (file_modified() in a local filesystem's fallocate).
        self.kill_setid_for(req, INodeNo(inode.id), &c)?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            // Collapse/insert range move data in SOURCE: write back and drop the cache first.
            self.ctx.invalidate(&c).map_err(err)?;
            c.file.fallocate(mode, offset, length).map_err(err)?;
            c.source_stamped();
            let st = c.file.stat().map_err(err)?;
            self.ctx.truncate_cache_to(&c, st.st_size as u64);
            return Ok(());
        }
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            // Before the hole reaches SOURCE, dirty data that extends the file past SOURCE's
            // size must be there, or a KEEP_SIZE punch would act on a shorter file.
            let size = c.size();
            if c.file.stat().map_err(err)?.st_size as u64 != size {
                self.ctx.writeback_file(&c, true).map_err(err)?;
            }
            let file = &c.file;
            self.ctx
                .punch(&c, offset, length, || file.fallocate(mode, offset, length))
                .map_err(err)?;
            c.source_stamped();
            if !keep && end > c.size() {
                self.ctx.refresh_size(&c).map_err(err)?;
            }
            return Ok(());
        }
        // Plain allocation (mode 0 or KEEP_SIZE): SOURCE reserves blocks; the size may grow.
        c.file.fallocate(mode, offset, length).map_err(err)?;
        c.source_stamped();
        if !keep && end > c.size() {
            self.ctx.refresh_size(&c).map_err(err)?;
        }
        Ok(())
    }

    fn do_copy_range(
        &self,
        src: &InodeCache,
        mut off_in: u64,
        dst: &InodeCache,
        mut off_out: u64,
        len: u64,
    ) -> R<u64> {
        self.check_writable()?;
        // Only what the source file holds is copied, and only up to the destination's size
        // limit on SOURCE; starting at or past that limit is EFBIG (generic_copy_file_checks).
        let max = dst.file.max_size();
        if off_out >= max {
            return Err(Errno::EFBIG);
        }
        let len = len
            .min(src.size().saturating_sub(off_in))
            .min(max - off_out);
        let mut done = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        while done < len {
            let chunk = (len - done).min(1 << 20) as u32;
            buf.clear();
            self.ctx
                .read(src, off_in, chunk, false, |b| buf.extend_from_slice(b))
                .map_err(err)?;
            if buf.is_empty() {
                break;
            }
            let (_, n) = self
                .ctx
                .write(dst, off_out, &buf, WriteKind::At)
                .map_err(err)?;
            done += n as u64;
            off_in += n as u64;
            off_out += n as u64;
            if n < buf.len() {
                break;
            }
        }
        Ok(done)
    }

    fn open_dir(&self, inode: &Inode) -> R<u64> {
        let fd: OwnedFd =
            source::reopen(inode.fd()?.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(err)?;
        let raw = fd.as_raw_fd();
        // SAFETY: `raw` is an open directory descriptor owned by `fd`; on success the stream takes
        // it over (hence the forget below), on failure it is left to `fd`, which closes it.
        let dir = unsafe { libc::fdopendir(raw) };
        if dir.is_null() {
            return Err(err(io::Error::last_os_error()));
        }
        std::mem::forget(fd); // owned by the DIR stream now
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap()
            .insert(fh, Arc::new(Mutex::new(DirHandle { dir, offset: 0 })));
        Ok(fh)
    }

    fn dir_handle(&self, fh: FileHandle) -> R<Arc<Mutex<DirHandle>>> {
        self.dirs
            .lock()
            .unwrap()
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// Walk a directory stream from `offset`, calling `add(name, d_ino, d_type, next_offset)`
    /// until it returns true (buffer full).
    fn walk_dir(
        &self,
        fh: FileHandle,
        offset: u64,
        mut add: impl FnMut(&[u8], u64, u8, u64) -> bool,
    ) -> R<()> {
        let h = self.dir_handle(fh)?;
        let mut h = h.lock().unwrap();
        if offset != h.offset {
            // SAFETY: `h.dir` is a live stream (closed only on drop of the handle we hold an Arc
            // to) and the guard on its Mutex makes this the only user; any offset is accepted (a
            // bad one makes readdir fail or end).
            unsafe { libc::seekdir(h.dir, offset as libc::c_long) };
            h.offset = offset;
        }
        loop {
            // SAFETY: __errno_location returns this thread's errno, valid for the thread's life; it
            // is cleared to tell readdir's end from its error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `h.dir` is a live stream and its Mutex guard makes this the only user.
            let ent = unsafe { libc::readdir(h.dir) };
            if ent.is_null() {
                // SAFETY: __errno_location returns this thread's errno, valid for the thread's
                // life.
                let e = unsafe { *libc::__errno_location() };
                if e != 0 {
                    return Err(errno(e));
                }
                return Ok(());
            }
            // SAFETY: readdir returned non-null: a dirent inside the stream's buffer, valid until
            // the next readdir/seekdir/closedir on `h.dir`, none of which runs while `ent` is in
            // use (we hold the guard).
            let ent = unsafe { &*ent };
            // SAFETY: glibc NUL-terminates d_name inside the dirent, and `name` is used only before
            // the next readdir or seekdir on the stream.
            let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes();
            let next = ent.d_off as u64;
            if add(name, ent.d_ino, ent.d_type, next) {
                // SAFETY: `h.dir` is a live stream, its Mutex guard is held, and `h.offset` is a
                // telldir cookie from the same stream (0 or an earlier d_off).
                unsafe { libc::seekdir(h.dir, h.offset as libc::c_long) };
                return Ok(());
            }
            h.offset = next;
        }
    }
}

impl Filesystem for ExtentFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let mut caps = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_CACHE_SYMLINKS
            // The umask comes with each create; SOURCE applies it or the default ACL.
            | InitFlags::FUSE_DONT_MASK
            // POSIX ACLs (stored as xattrs in SOURCE) take part in the kernel's permission
            // checks, and ACL changes update the mode the kernel caches.
            | InitFlags::FUSE_POSIX_ACL;
        if self.inodes.exportable() {
            caps |= InitFlags::FUSE_EXPORT_SUPPORT;
        }
        match self.cfg.cache {
            CacheMode::Pool => caps |= InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            // With other writers the kernel must take sizes and times from extentfs: in
            // writeback-cache mode it trusts its own for regular files. Instead it drops its
            // pages of a file whose mtime or size changed (and at an open that revalidated).
            CacheMode::Kernel if self.coherent() => caps |= InitFlags::FUSE_AUTO_INVAL_DATA,
            CacheMode::Kernel => caps |= InitFlags::FUSE_WRITEBACK_CACHE,
        }
        if let Err(unsupported) = config.add_capabilities(caps) {
            tracing::debug!("kernel lacks FUSE capabilities {unsupported:?}");
            let _ = config.add_capabilities(caps & !unsupported);
        }
        if self.cfg.spin != spin::SpinMode::Off {
            // Started here, in the daemon, after daemonizing (fork keeps one thread).
            match spin::Spinner::start(self.cfg.spin) {
                Ok(s) => self.spinner = Some(s),
                Err(e) => tracing::warn!("spin: no polling thread: {e}"),
            }
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(s) = self.spinner.take() {
            s.stop();
        }
        if let Err(e) = self.ctx.sync_all() {
            tracing::error!("final writeback failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let op = Op::Lookup;
        self.guard(op, move || {
            let r = (|| {
                if let d @ (b"." | b"..") = name.as_bytes() {
                    let r = self.export_lookup(parent, d == b"..");
                    tracing::debug!("export lookup of {name:?} in node {}: {r:?}", parent.0);
                    return r;
                }
                let parent = self.inode(parent)?;
                let cname = source::name_cstr(name).map_err(err)?;
                self.do_lookup(&parent, &cname)
            })();
            self.reply_entry(op, reply, r);
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let op = Op::Forget;
        self.guard(op, move || {
            self.forget_one(ino.0, nlookup);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let op = Op::Getattr;
        self.guard(op, move || {
            self.answer(
                op,
                reply,
                self.inode(ino).and_then(|i| self.getattr_of(ino, &i)),
                |reply, attr| reply.attr(&self.cfg.ttl, &attr),
            )
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let op = Op::Setattr;
        self.guard(op, move || {
            let r = self.inode(ino).and_then(|i| {
                let nothing = mode.is_none()
                    && uid.is_none()
                    && gid.is_none()
                    && size.is_none()
                    && atime.is_none()
                    && mtime.is_none()
                    && ctime.is_none();
                if nothing && i.is_file() {
                    // The kernel's file_remove_privs() before a buffered write (cache=kernel):
                    // its FUSE setattr drops only set-user-ID and group-executable
                    // set-group-ID itself and sends what is left, nothing, when its rule
                    // (setattr_should_drop_suidgid) wanted more: set-group-ID of a file whose
                    // group the writer is not in. Decide it here by the writer's groups.
                    let c = self.cache_of(&i)?;
                    self.kill_setid_for(req, ino, &c)?;
                }
                self.do_setattr(&i, mode, uid, gid, size, atime, mtime)
            });
            self.answer(op, reply, r, |reply, attr| reply.attr(&self.cfg.ttl, &attr))
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let op = Op::Readlink;
        self.guard(op, move || {
            match self
                .inode(ino)
                .and_then(|i| source::readlink(i.fd()?.as_fd()).map_err(err))
            {
                Ok(t) => reply.data(&t),
                Err(e) => {
                    self.ctx.ops.error(op);
                    reply.error(e)
                }
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let op = Op::Mknod;
        self.guard(op, move || {
            let r = self.make_node(req, parent, name, mode & !umask, |dir, cname| {
                source::with_umask(mode, umask, |m| source::mknodat(dir, cname, m, rdev as u64))
            });
            self.reply_entry(op, reply, r);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let op = Op::Mkdir;
        self.guard(op, move || {
            let r = self.make_node(req, parent, name, mode & !umask, |dir, cname| {
                source::with_umask(mode & 0o7777, umask, |m| source::mkdirat(dir, cname, m))
            });
            self.reply_entry(op, reply, r);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::Unlink;
        self.guard(op, move || {
            let r = (|| {
                self.check_writable()?;
                let parent = self.inode(parent)?;
                let cname = source::name_cstr(name).map_err(err)?;
                let dir = parent.fd()?;
                let (victim, _held, vc) = self.hold_victim(dir.as_fd(), &cname);
                let own = vc.as_ref().map(|c| c.file.own_change());
                source::unlinkat(dir.as_fd(), &cname, 0).map_err(err)?;
                drop(own);
                // The last name of a file nobody has open: its cached data is dead.
                if let Some(st) = victim.filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG) {
                    if let Some(c) = self.ctx.get((st.st_dev, st.st_ino)) {
                        if c.open_handles.load(Ordering::Relaxed) == 0 {
                            self.ctx.discard_if_deleted(&c);
                        }
                    }
                }
                Ok(())
            })();
            self.answer(op, reply, r, |reply, ()| reply.ok())
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::Rmdir;
        self.guard(op, move || {
            let r = (|| {
                self.check_writable()?;
                let parent = self.inode(parent)?;
                let cname = source::name_cstr(name).map_err(err)?;
                let dir = parent.fd()?;
                let _held = self.hold_victim(dir.as_fd(), &cname);
                source::unlinkat(dir.as_fd(), &cname, libc::AT_REMOVEDIR).map_err(err)
            })();
            self.answer(op, reply, r, |reply, ()| reply.ok())
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let op = Op::Symlink;
        self.guard(op, move || {
            let r = std::ffi::CString::new(target.as_os_str().as_bytes())
                .map_err(|_| Errno::EINVAL)
                .and_then(|ctarget| {
                    self.make_node(req, parent, link_name, 0o777, |dir, cname| {
                        source::symlinkat(&ctarget, dir, cname)
                    })
                });
            self.reply_entry(op, reply, r);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let op = Op::Rename;
        self.guard(op, move || {
            let r = (|| {
                self.check_writable()?;
                let p = self.inode(parent)?;
                let np = self.inode(newparent)?;
                let a = source::name_cstr(name).map_err(err)?;
                let b = source::name_cstr(newname).map_err(err)?;
                let to = np.fd()?;
                // The file a rename replaces loses its name.
                let (_, _held, vc) = self.hold_victim(to.as_fd(), &b);
                let _own_victim = vc.as_ref().map(|c| c.file.own_change());
                // The renamed file's ctime moves too.
                let moved = self
                    .moved_cache(p.fd()?.as_fd(), &a)
                    .filter(|m| vc.as_ref().is_none_or(|v| !Arc::ptr_eq(m, v)));
                let _own_moved = moved.as_ref().map(|c| c.file.own_change());
                source::renameat2(p.fd()?.as_fd(), &a, to.as_fd(), &b, flags.bits()).map_err(err)
            })();
            self.answer(op, reply, r, |reply, ()| reply.ok())
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let op = Op::Link;
        self.guard(op, move || {
            let r = (|| {
                self.check_writable()?;
                let inode = self.inode(ino)?;
                let np = self.inode(newparent)?;
                let b = source::name_cstr(newname).map_err(err)?;
                let own = inode.cache.get().map(|c| c.file.own_change());
                source::linkat_fd(inode.fd()?.as_fd(), np.fd()?.as_fd(), &b).map_err(err)?;
                drop(own);
                self.do_lookup(&np, &b)
            })();
            self.reply_entry(op, reply, r);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let op = Op::Open;
        self.guard(op, move || {
            let r = (|| {
                let inode = self.inode(ino)?;
                let wants_write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
                if wants_write {
                    self.check_writable()?;
                }
                let c = self.cache_of(&inode)?;
                let append_only = self.check_open_flags(&inode, &c, flags.0)?;
                if wants_write && !c.file.writable() && !append_only {
                    return Err(Errno::EACCES);
                }
                let changed = self.open_revalidate(ino, &inode, &c)?;
                if flags.0 & libc::O_TRUNC != 0 {
                    self.ctx.truncate(&c, 0).map_err(err)?;
                }
                c.open_handles.fetch_add(1, Ordering::Relaxed);
                Ok(changed)
            })();
            self.answer(op, reply, r, |reply, changed| {
                reply.opened(FileHandle(0), self.open_flags(changed))
            })
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let op = Op::Read;
        // Under cache=pool read(2) comes with a lock owner; a read without one fills the
        // kernel's page cache (a shared mapping faulting pages in).
        let into_page_cache = self.cfg.cache == CacheMode::Pool && lock_owner.is_none();
        self.note_client(req);
        self.guard(op, move || {
            let c = match self
                .inode(ino)
                .and_then(|i| self.cache_of(&i))
                .and_then(|c| self.read_revalidate(ino, &c).map(|()| c))
            {
                Ok(c) => c,
                Err(e) => {
                    self.ctx.ops.error(op);
                    return reply.error(e);
                }
            };
            let mut reply = Some(reply);
            let touch = self.cfg.atime != source::AtimeMode::NoAtime;
            let r = self.ctx.read(&c, offset, size, into_page_cache, |bytes| {
                if touch {
                    c.touch_atime();
                }
                reply.take().unwrap().data(bytes);
            });
            if let Err(e) = r {
                if let Some(reply) = reply.take() {
                    {
                        self.ctx.ops.error(op);
                        reply.error(err(e));
                    }
                }
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let op = Op::Write;
        self.note_client(req);
        self.guard(op, move || {
            let r = (|| {
                self.check_writable()?;
                let inode = self.inode(ino)?;
                let c = self.cache_of(&inode)?;
                let pool = self.cfg.cache == CacheMode::Pool;
                let from_page_cache = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
                if let Some(r) =
                    self.restricted_write(req, ino, &inode, &c, data, flags.0, from_page_cache)
                {
                    let (at, n) = r?;
                    if at != offset && !pool {
                        self.tell_kernel_changed(ino, true);
                    }
                    return Ok((at, n));
                }
                let append = flags.0 & libc::O_APPEND != 0;
                // FUSE_WRITE_CACHE: the kernel writing back a page of its page cache (a
                // mapping's, or any buffered write in writeback-cache mode). It drops a page
                // whose writeback failed, so such writes take no SOURCE space reservation.
                let kind = if write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) {
                    WriteKind::PageCache
                } else if append && (pool || self.coherent()) {
                    // Under cache=kernel the kernel picked the offset from the size it
                    // caches; with other writers, the end of the file is SOURCE's.
                    WriteKind::Append
                } else {
                    WriteKind::At
                };
                // A foreign append must not be overwritten: writes that extend the file
                // first learn SOURCE's size.
                let extends = offset.saturating_add(data.len() as u64) > c.size();
                if self.coherent() && kind != WriteKind::PageCache && (append || extends) {
                    self.revalidate(ino, &c, true)?;
                }
                // The size limit is checked before the write changes anything, set-ID bits
                // included (as generic_write_checks comes before file_remove_privs).
                let max = c.file.max_size();
                let at = if kind == WriteKind::Append {
                    c.size()
                } else {
                    offset
                };
                let end = at.saturating_add(data.len() as u64);
                if !data.is_empty() && (at >= max || (!pool && end > max)) {
                    // Past SOURCE's limit. Under cache=kernel a write crossing it is refused
                    // whole: the kernel knows only its own limit (2^63 - 1), and its
                    // asynchronous direct I/O turns a short write into EIO (under cache=pool
                    // it is cut short at the limit, as on SOURCE).
                    return Err(Errno::EFBIG);
                }
                self.kill_setid_for(req, ino, &c)?;
                let (at, n) = self.ctx.write(&c, offset, data, kind).map_err(err)?;
                if at != offset && !pool {
                    // The kernel's pages hold the data where it thought the end was.
                    self.tell_kernel_changed(ino, true);
                } else if !pool
                    && flags.0 & libc::O_DIRECT != 0
                    && !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE)
                {
                    // An O_DIRECT write to a page-cached file: the kernel dropped its pages of
                    // the range before sending it, but a buffered read meanwhile may have
                    // cached the old bytes again, and after an asynchronous one (AIO) it
                    // does not drop them (xfstests generic/451).
                    self.invalidate_written(ino, at, n as u64);
                }
                Ok((at, n))
            })();
            self.answer(op, reply, r, |reply, (_, n)| reply.written(n as u32))
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let op = Op::Flush;
        self.guard(op, move || {
            let r = (|| {
                let inode = self.inode(ino)?;
                // Report a writeback error; the writeback itself starts at release: FLUSH
                // also comes for every copy of the descriptor a forked child closes.
                if let Some(c) = self.ctx.get(inode.key) {
                    if let Some(e) = c.take_wb_error() {
                        return Err(errno(e));
                    }
                    // Close-to-open: what was written is in SOURCE when close returns.
                    if self.coherent() {
                        self.ctx.write_back_for_close(&c).map_err(err)?;
                    }
                }
                Ok(())
            })();
            self.answer(op, reply, r, |reply, ()| reply.ok())
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let op = Op::Release;
        self.guard(op, move || {
            if let Some(inode) = self.inodes.get(ino.0) {
                if let Some(c) = inode.cache.get() {
                    let prev =
                        c.open_handles
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            });
                    if prev == Ok(1) {
                        self.ctx.discard_if_deleted(c);
                        c.close_file_if_idle();
                    }
                    // The last close of this open file: start writing back what is dirty.
                    if c.dirty_bytes() > 0 {
                        self.ctx.queue_writeback(c);
                    }
                }
            }
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let op = Op::Fsync;
        self.guard(op, move || {
            let r = (|| {
                let inode = self.inode(ino)?;
                let c = self.cache_of(&inode)?;
                self.ctx.sync_file(&c, datasync).map_err(err)
            })();
            self.answer(op, reply, r, |reply, ()| reply.ok())
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let op = Op::Opendir;
        self.guard(op, move || {
            self.answer(
                op,
                reply,
                self.inode(ino).and_then(|i| self.open_dir(&i)),
                |reply, fh| reply.opened(FileHandle(fh), FopenFlags::empty()),
            )
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let op = Op::Readdir;
        self.guard(op, move || {
            let r = self.walk_dir(fh, offset, |name, d_ino, d_type, next| {
                reply.add(
                    INodeNo(d_ino),
                    next,
                    dtype_to_filetype(d_type),
                    OsStr::from_bytes(name),
                )
            });
            self.answer(op, reply, r, |reply, ()| reply.ok())
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let op = Op::Readdirplus;
        self.guard(op, move || {
            let parent = match self.inode(ino) {
                Ok(p) => p,
                Err(e) => {
                    self.ctx.ops.error(op);
                    return reply.error(e);
                }
            };
            let zero = Duration::ZERO;
            let r = self.walk_dir(fh, offset, |name, d_ino, d_type, next| {
                if name == b"." || name == b".." {
                    let attr = FileAttr {
                        ino: INodeNo(d_ino),
                        size: 0,
                        blocks: 0,
                        atime: UNIX_EPOCH,
                        mtime: UNIX_EPOCH,
                        ctime: UNIX_EPOCH,
                        crtime: UNIX_EPOCH,
                        kind: dtype_to_filetype(d_type),
                        perm: 0,
                        nlink: 0,
                        uid: 0,
                        gid: 0,
                        rdev: 0,
                        blksize: 4096,
                        flags: 0,
                    };
                    return reply.add(
                        INodeNo(d_ino),
                        next,
                        OsStr::from_bytes(name),
                        &zero,
                        &attr,
                        Generation(0),
                    );
                }
                let Ok(cname) = std::ffi::CString::new(name) else {
                    return false;
                };
                match self.do_lookup(&parent, &cname) {
                    Ok((attr, generation)) => {
                        let full = reply.add(
                            attr.ino,
                            next,
                            OsStr::from_bytes(name),
                            &self.cfg.ttl,
                            &attr,
                            generation,
                        );
                        if full {
                            // The kernel never saw this entry: drop the reference we took.
                            self.forget_one(attr.ino.0, 1);
                        }
                        full
                    }
                    // Vanished between readdir and lookup: skip it.
                    Err(_) => false,
                }
            });
            self.answer(op, reply, r, |reply, ()| reply.ok())
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let op = Op::Releasedir;
        self.guard(op, move || {
            self.dirs.lock().unwrap().remove(&fh.0);
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let op = Op::Fsyncdir;
        self.guard(op, move || {
            let r = (|| {
                let inode = self.inode(ino)?;
                let fd = source::reopen(inode.fd()?.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(err)?;
                // SAFETY: `fd` is an open directory descriptor owned here until the end of the
                // closure; fdatasync/fsync take no pointers.
                let rc = unsafe {
                    if datasync {
                        libc::fdatasync(fd.as_raw_fd())
                    } else {
                        libc::fsync(fd.as_raw_fd())
                    }
                };
                source::cvt(rc).map(drop).map_err(err)
            })();
            self.answer(op, reply, r, |reply, ()| reply.ok())
        });
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let op = Op::Statfs;
        self.guard(op, move || {
            let r = (|| {
                // fstatvfs works on O_PATH descriptors: no need to open (a device) for real.
                let inode = self.inode(ino)?;
                source::statvfs(inode.fd()?.as_fd()).map_err(err)
            })();
            self.answer(op, reply, r, |reply, s| {
                reply.statfs(
                    s.f_blocks,
                    s.f_bfree,
                    s.f_bavail,
                    s.f_files,
                    s.f_ffree,
                    s.f_bsize as u32,
                    s.f_namemax as u32,
                    s.f_frsize as u32,
                )
            })
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let op = Op::Setxattr;
        self.guard(op, move || {
            self.answer(
                op,
                reply,
                self.do_setxattr(req, ino, name, value, flags),
                |reply, ()| reply.ok(),
            )
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let op = Op::Getxattr;
        self.guard(op, move || match self.do_getxattr(req, ino, name, size) {
            // An absent attribute is an answer, not a failure.
            Err(Errno::NO_XATTR) => {
                crate::stats::add(&self.ctx.stats.xattr_absent, 1);
                reply.error(Errno::NO_XATTR)
            }
            r => self.answer(op, reply, r, |reply, v| xattr::reply_value(reply, &v, size)),
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let op = Op::Listxattr;
        self.guard(op, move || {
            self.answer(op, reply, self.do_listxattr(req, ino), |reply, v| {
                xattr::reply_value(reply, &v, size)
            })
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::Removexattr;
        self.guard(op, move || {
            self.answer(op, reply, self.do_removexattr(ino, name), |reply, ()| {
                reply.ok()
            })
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let op = Op::Access;
        self.guard(op, move || {
            // Permission checks are the kernel's (default_permissions is always on).
            self.answer(op, reply, self.inode(ino), |reply, _| reply.ok())
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let op = Op::Create;
        self.guard(op, move || {
            self.answer(
                op,
                reply,
                self.do_create(req, parent, name, mode, umask, flags),
                |reply, ((attr, generation), _c)| {
                    reply.created(
                        &self.cfg.ttl,
                        &attr,
                        generation,
                        FileHandle(0),
                        self.open_flags(false),
                    )
                },
            )
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let op = Op::Fallocate;
        self.guard(op, move || {
            match self
                .inode(ino)
                .and_then(|i| self.do_fallocate(req, &i, offset, length, mode))
            {
                Ok(()) => reply.ok(),
                Err(e) => {
                    self.ctx.ops.error(op);
                    reply.error(e)
                }
            }
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let op = Op::Lseek;
        self.guard(op, move || {
            let r = (|| {
                let inode = self.inode(ino)?;
                let c = self.cache_of(&inode)?;
                if self.cfg.cache == CacheMode::Kernel {
                    // The kernel holds dirty pages we have not seen yet: let it answer
                    // (everything below EOF is data) rather than answer from SOURCE.
                    return Err(Errno::ENOSYS);
                }
                if whence == libc::SEEK_DATA || whence == libc::SEEK_HOLE {
                    if offset < 0 || offset as u64 >= c.size() {
                        return Err(Errno::ENXIO);
                    }
                    return self.ctx.seek(&c, offset, whence).map_err(err);
                }
                Err(Errno::EINVAL)
            })();
            self.answer(op, reply, r, |reply, o| reply.offset(o))
        });
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let op = Op::CopyFileRange;
        self.guard(op, move || {
            let r = (|| {
                let a = self.inode(ino_in).and_then(|i| self.cache_of(&i))?;
                let out = self.inode(ino_out)?;
                let b = self.cache_of(&out)?;
                self.refuse_if_restricted(&out, &b, false)?;
                // The destination is modified as by write(2) (file_modified() on it, after
                // the size checks).
                if offset_out >= b.file.max_size() {
                    return Err(Errno::EFBIG);
                }
                self.kill_setid_for(req, ino_out, &b)?;
                self.do_copy_range(&a, offset_in, &b, offset_out, len)
            })();
            self.answer(op, reply, r, |reply, n| {
                reply.written(n.min(u32::MAX as u64) as u32)
            })
        });
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let op = Op::Ioctl;
        self.guard(op, move || {
            let r = self.do_ioctl(req, ino, cmd, in_data, out_size);
            self.answer(op, reply, r, |reply, data| reply.ioctl(0, &data))
        });
    }
}
