//! The filesystem core: every operation of the filesystem, with no FUSE types. Operations
//! take a request context ([`Ctx`]) where POSIX policy needs the caller, and plain Rust types
//! (u64 node ids, `&OsStr` names, [`Attr`]), and return [`Result`]s with a typed [`Error`]
//! (errno, message, log level). The FUSE adapter (`crate::fs`) only decodes, calls the core,
//! replies, and counts and logs the failures.
//!
//! What lives here: the inode table ([`inodes`]); the POSIX policy (objects created as the
//! caller, set-ID clearing, the victim of an unlink or rename held open, ACLs: [`names`],
//! [`attr`], [`file`](mod@file), [`xattr`]); the cache policy (revalidation against SOURCE, write back
//! before a punch, discard at unlink and release: [`file`](mod@file)); directory streams ([`dir`]);
//! `user.extentfs.*` ([`ctl`]); the thread that drops the kernel's pages after direct writes
//! ([`inval`]).
//!
//! Invariants: nothing here names `fuser` or `crate::fs`, calls libc or holds an `unsafe`
//! block (the one file read is the caller's `/proc` status); SOURCE is reached only through
//! [`crate::source`] and file data only through [`crate::cache`]; the kernel's caches are
//! told of changes only through the [`KernelCache`] the adapter installs (none in tests).

pub mod attr;
pub mod caller;
pub mod ctl;
pub mod dir;
pub mod error;
pub mod file;
pub mod fileattr;
pub mod inodes;
pub(crate) mod inval;
pub mod names;
pub mod xattr;

#[cfg(test)]
mod tests;

pub use attr::{Attr, SetAttr, TimeSet};
pub use dir::{DirEntry, DirPlus};
pub use error::{Error, Result};
pub use file::{OpenReply, WriteFrom};

use crate::cache::inode_cache::InodeCache;
use crate::cache::CacheContext;
use crate::options::{CacheMode, Coherence};
use crate::source;
use caller::Caller;
use inodes::{Inode, InodeTable};
use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Who sent a request: what the kernel tells of the calling thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    /// The calling thread's id (its `/proc/PID/status` has its groups and capabilities).
    pub pid: u32,
}

impl Ctx {
    /// Root with group 0 (what the daemon creates is then the caller's anyway).
    pub const ROOT: Ctx = Ctx {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// How the filesystem behaves (from the mount options).
#[derive(Clone, Debug)]
pub struct Config {
    pub cache: CacheMode,
    pub read_only: bool,
    /// Entry and attribute time-to-live given to the kernel.
    pub ttl: Duration,
    /// uid that mounted (may use the ctl xattr besides root).
    pub owner_uid: u32,
    /// The mount's atime options, applied to SOURCE's private mount.
    pub atime: source::AtimeMode,
    pub nodiratime: bool,
    /// Idle polling after each request (the adapter's `spin`).
    pub spin: crate::options::SpinMode,
    /// How changes others make to SOURCE are followed.
    pub coherence: Coherence,
    /// Threads serving FUSE requests (the adapter's `threads`).
    pub request_threads: usize,
}

/// What the core tells the kernel's caches of a node: the adapter implements it with the
/// session's notifier. `off < 0`: the attributes only; else the pages of `[off, off + len)`
/// (`len` 0: to the end) and the attributes.
pub trait KernelCache: Send + Sync {
    fn inval_inode(&self, ino: u64, off: i64, len: i64) -> io::Result<()>;
}

/// Where the adapter installs its [`KernelCache`] once the session exists.
pub type KernelSlot = Arc<OnceLock<Arc<dyn KernelCache>>>;

/// What an entry reply carries: the attributes and the generation for file handles.
#[derive(Clone, Debug)]
pub struct Entry {
    pub attr: Attr,
    pub generation: u64,
}

/// How long a direct write waits for the kernel to drop its pages of the range (see
/// `Core::invalidate_written`); normally microseconds.
const INVAL_WAIT: Duration = Duration::from_secs(1);

/// The filesystem: the inode table, the cache, the open directories.
pub struct Core {
    pub(crate) inodes: InodeTable,
    pub(crate) ctx: Arc<CacheContext>,
    pub(crate) cfg: Config,
    dirs: Mutex<HashMap<u64, Arc<Mutex<source::dir::DirStream>>>>,
    next_fh: AtomicU64,
    /// Set once the session exists: tells the kernel when attributes or pages it caches
    /// changed behind its back (set-ID bits dropped by a write, a file changed in SOURCE).
    kernel: KernelSlot,
    /// Drops the kernel's pages after direct writes, started at the first one.
    page_dropper: OnceLock<inval::PageDropper>,
    am_root: bool,
}

/// An errno as an error (shorthand).
fn errno(n: i32) -> Error {
    Error::errno(n)
}

impl Core {
    pub fn new(source: &Path, ctx: Arc<CacheContext>, cfg: Config) -> io::Result<Core> {
        let root = source::open_root_with_atime(source, cfg.atime, cfg.nodiratime)?;
        let st = source::fstat(root.as_fd())?;
        Ok(Core {
            inodes: InodeTable::new(root, &st),
            ctx,
            cfg,
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            kernel: Arc::new(OnceLock::new()),
            page_dropper: OnceLock::new(),
            am_root: source::running_as_root(),
        })
    }

    /// Where the adapter puts what tells the kernel of changes (the session's notifier).
    pub fn kernel_slot(&self) -> KernelSlot {
        self.kernel.clone()
    }

    pub fn context(&self) -> &Arc<CacheContext> {
        &self.ctx
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether the kernel may decode file handles (export support).
    pub fn exportable(&self) -> bool {
        self.inodes.exportable()
    }

    /// Whether changes others make to SOURCE are followed (close-to-open or strict).
    pub fn coherent(&self) -> bool {
        self.cfg.coherence != Coherence::None
    }

    /// The session is over: write everything back.
    pub fn destroy(&self) {
        if let Err(e) = self.ctx.sync_all() {
            tracing::error!("final writeback failed: {e}");
        }
    }

    fn inode(&self, ino: u64) -> Result<Arc<Inode>> {
        self.inodes.get(ino).ok_or(errno(libc::ESTALE))
    }

    fn check_writable(&self) -> Result<()> {
        if self.cfg.read_only {
            Err(errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    fn cache_of(&self, inode: &Inode) -> Result<Arc<InodeCache>> {
        if !inode.is_file() {
            return Err(errno(if inode.is_dir() {
                libc::EISDIR
            } else {
                libc::EINVAL
            }));
        }
        if let Some(c) = inode.cache.get() {
            return Ok(c.clone());
        }
        let ro = self.cfg.read_only;
        let c = self
            .ctx
            .get_or_create(inode.key, || source::DataFile::open(inode.path_fd(), ro))?;
        let _ = inode.cache.set(c.clone());
        Ok(c)
    }

    /// Drop `n` kernel references to node `id` (FORGET, or an entry the kernel never saw).
    pub fn forget(&self, id: u64, n: u64) {
        if let Some(key) = self.inodes.forget(id, n) {
            self.ctx.forget(key);
        }
    }

    // ---- coherence and the kernel's caches ----

    /// Revalidate a cached file against SOURCE (close-to-open); when someone else changed it,
    /// the cache adopted the change and the kernel is told its attributes (and, under
    /// `cache=kernel`, its pages; `kernel_pages` false when the caller makes the kernel drop
    /// them itself, e.g. an open without keeping the cache). Returns SOURCE's stat and
    /// whether it changed.
    fn revalidate(
        &self,
        ino: u64,
        c: &InodeCache,
        kernel_pages: bool,
    ) -> Result<(libc::stat, bool)> {
        self.revalidate_with(ino, c, kernel_pages, None)
    }

    /// As `revalidate`, given a stat of the file just taken (lookup), which saves an fstat
    /// when nothing changed.
    fn revalidate_with(
        &self,
        ino: u64,
        c: &InodeCache,
        kernel_pages: bool,
        taken: Option<&libc::stat>,
    ) -> Result<(libc::stat, bool)> {
        let (st, changed) = self.ctx.revalidate_with(c, taken)?;
        if changed {
            self.tell_kernel_changed(ino, kernel_pages && self.cfg.cache == CacheMode::Kernel);
        }
        Ok((st, changed))
    }

    /// The kernel's attributes (and with `pages`, its cached pages) of `ino` are stale. Pages
    /// are invalidated from another thread: the kernel locks them to drop them, and the
    /// request being served may hold one of them until it is answered.
    fn tell_kernel_changed(&self, ino: u64, pages: bool) {
        let Some(n) = self.kernel.get() else { return };
        if !pages {
            let _ = n.inval_inode(ino, -1, 0);
            return;
        }
        let n = n.clone();
        let spawned = std::thread::Builder::new()
            .name("inval".into())
            .spawn(move || {
                if let Err(e) = n.inval_inode(ino, 0, 0) {
                    tracing::debug!("invalidating the kernel's pages of node {ino}: {e}");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("kernel pages of node {ino} not invalidated: {e}");
        }
    }

    /// Drop the kernel's cached pages of `[off, off + len)` of `ino` after a direct write to
    /// them (`cache=kernel`), before the write is answered, so nothing read once it completed
    /// can come from a page cached before it reached the pool. The kernel locks each page to
    /// drop it, so this runs on the [`inval::PageDropper`]'s thread and is waited for only a
    /// bounded time: a page locked by a request that waits for this one must not block it
    /// forever.
    fn invalidate_written(&self, ino: u64, off: u64, len: u64) {
        let Some(n) = self.kernel.get() else { return };
        if len == 0 {
            return;
        }
        let dropper = match self.page_dropper.get() {
            Some(d) => d,
            None => match inval::PageDropper::start(n.clone(), self.cfg.request_threads) {
                // Two first writers may both start one: the loser's ends at once.
                Ok(d) => self.page_dropper.get_or_init(|| d),
                Err(e) => {
                    tracing::warn!("kernel pages of node {ino} not invalidated: {e}");
                    return;
                }
            },
        };
        if !dropper.drop_pages(ino, off, len, INVAL_WAIT) {
            tracing::debug!("node {ino}: pages after a direct write still being dropped");
        }
    }

    // ---- POSIX policy shared by several operations ----

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

    /// Become the caller for a creation in SOURCE (see [`source::UserCreds`]): `Ok(Some(guard))`
    /// while the thread acts as the caller, `Ok(None)` when it need not (the daemon is not
    /// root, or the caller is root with group 0: what the daemon creates is the caller's
    /// anyway), `Err` when the switch was refused (then the creation runs as the daemon and
    /// `chown_new` gives the object to the caller after).
    fn become_caller(&self, ctx: &Ctx) -> io::Result<Option<source::UserCreds>> {
        if !self.am_root || (ctx.uid == 0 && ctx.gid == 0) {
            return Ok(None);
        }
        let groups = Caller::of(ctx).groups();
        source::UserCreds::switch(ctx.uid, ctx.gid, &groups).map(Some)
    }

    /// Run `make`, a creation in SOURCE, as the caller; returns its result and whether the
    /// new object still has to be given to the caller (`chown_new`).
    fn create_as_caller<T>(&self, ctx: &Ctx, make: impl FnOnce() -> T) -> (T, bool) {
        match self.become_caller(ctx) {
            Ok(creds) => {
                let r = make();
                drop(creds);
                (r, false)
            }
            Err(e) => {
                tracing::debug!(
                    "creating as uid {} gid {} refused ({e}): created by the daemon, then chowned",
                    ctx.uid,
                    ctx.gid
                );
                (make(), true)
            }
        }
    }

    /// After creating `name` in `parent` as root (when acting as the caller was refused):
    /// give it to the caller, as a local filesystem would (the group stays the directory's
    /// when it is setgid).
    fn chown_new(&self, ctx: &Ctx, parent: &Inode, name: &CStr, mode: u32) -> Result<()> {
        if !self.am_root || (ctx.uid == 0 && ctx.gid == 0) {
            return Ok(());
        }
        let dir = parent.fd()?;
        let pst = source::fstat(dir.as_fd())?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            ctx.gid
        };
        let fd = source::open_path(dir.as_fd(), name)?;
        source::chown(fd.as_fd(), ctx.uid, gid)?;
        // chown clears set-id bits of non-directories; restore what was asked for.
        let st = source::fstat(fd.as_fd())?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFLNK && kind != libc::S_IFDIR && mode & 0o6000 != 0 {
            let _ = source::chmod(fd.as_fd(), mode & 0o7777);
        }
        Ok(())
    }

    /// A modification of `c`'s data by the caller (a write, fallocate in any mode, a copy
    /// into it): drop set-user-ID and set-group-ID as the kernel does for a local file
    /// (`setattr_should_drop_suidgid`), since the kernel leaves that to the daemon for direct
    /// I/O, fallocate and copy_file_range, and the daemon acts with its own CAP_FSETID. Costs
    /// an atomic load unless the file may have such a bit.
    fn kill_setid_for(&self, ctx: &Ctx, ino: u64, c: &InodeCache) -> Result<()> {
        if !c.may_have_setid() {
            return Ok(());
        }
        let changed = c.kill_setid(|mode, gid| Caller::of(ctx).setid_to_drop(mode, gid))?;
        if changed {
            if let Some(n) = self.kernel.get() {
                // Attributes only (negative offset): the cached mode is stale.
                let _ = n.inval_inode(ino, -1, 0);
            }
        }
        Ok(())
    }
}
