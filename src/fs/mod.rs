//! The FUSE adapter, and the only module that names `fuser`: each request is decoded, handed
//! to the filesystem core ([`crate::core::Core`]), and answered; a failed request is counted
//! against its opcode and logged at its error's level (`ExtentFs::fail`). The adapter also
//! owns the session set-up ([`session`]), mounting ([`mount`]) and the idle poller ([`spin`]).
//!
//! Invariants: no POSIX or cache policy here and no system call on SOURCE (those are the
//! core's and the source layer's); every request is counted once (`stats::Op`) and answered
//! once, also when its handler panics (fuser answers a dropped reply with EIO); read replies
//! go out straight from pool memory.

pub mod mount;
pub mod session;
pub mod spin;

use crate::core::{self, Attr, Core, Ctx, DirPlus, OpenReply, SetAttr, TimeSet, WriteFrom};
use crate::options::CacheMode;
use crate::stats::Op;
use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Level;

pub use crate::core::Config as FsConfig;

/// The fuser filesystem: the core, and the adapter's own poller.
pub struct ExtentFs {
    core: Core,
    spinner: Option<Arc<spin::Spinner>>,
}

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

/// Tells the kernel of changes through the session's notifier.
struct Notifier(fuser::Notifier);

impl core::KernelCache for Notifier {
    fn inval_inode(&self, ino: u64, off: i64, len: i64) -> io::Result<()> {
        self.0.inval_inode(INodeNo(ino), off, len)
    }
}

/// The request context the core takes.
fn ctx_of(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// Log a failed request of node `node` at its error's level.
fn log_failure(op: Op, node: u64, e: &core::Error) {
    let name = op.name();
    match e.level() {
        Level::ERROR => tracing::error!("{name} of node {node} failed: {e}"),
        Level::WARN => tracing::warn!("{name} of node {node} failed: {e}"),
        Level::INFO => tracing::info!("{name} of node {node} failed: {e}"),
        Level::DEBUG => tracing::debug!("{name} of node {node} failed: {e}"),
        _ => tracing::trace!("{name} of node {node} failed: {e}"),
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

/// The core's attributes as fuser's.
fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: UNIX_EPOCH,
        kind: file_type(a.mode),
        perm: a.perm(),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    })
}

/// The handle of a file opened with direct I/O (every open under cache=pool, an O_DIRECT one
/// under cache=kernel); other opens get 0. The kernel hands it back with each request.
const DIRECT_IO_HANDLE: u64 = 1;

fn file_handle(o: OpenReply) -> FileHandle {
    FileHandle(if o.direct_io { DIRECT_IO_HANDLE } else { 0 })
}

fn fopen_flags(o: OpenReply) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if o.parallel_direct_writes {
        f |= FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
    }
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    f
}

/// `size == 0`: the value's length; too small: ERANGE; else the value.
fn reply_value(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if (size as usize) < v.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}

impl ExtentFs {
    pub fn new(
        source: &Path,
        ctx: Arc<crate::cache::CacheContext>,
        cfg: FsConfig,
    ) -> io::Result<ExtentFs> {
        Ok(ExtentFs {
            core: Core::new(source, ctx, cfg)?,
            spinner: None,
        })
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Hand the session's notifier to the core.
    pub fn notifier_installer(&self) -> impl FnOnce(fuser::Notifier) {
        let slot = self.core.kernel_slot();
        move |n| {
            let _ = slot.set(Arc::new(Notifier(n)));
        }
    }

    fn ttl(&self) -> &Duration {
        &self.core.config().ttl
    }

    /// Count `e` against `op`, log it at its level and answer it (mountpoint-s3's
    /// `fuse_error!`): every failed request goes through here.
    fn fail<P: ErrorReply>(&self, op: Op, node: u64, reply: P, e: core::Error) {
        self.core.context().ops.error(op);
        log_failure(op, node, &e);
        reply.fail(Errno::from_i32(e.raw_errno()));
    }

    /// Reply with `ok(reply, value)`, or fail.
    fn answer<T, P: ErrorReply>(
        &self,
        op: Op,
        node: u64,
        reply: P,
        r: core::Result<T>,
        ok: impl FnOnce(P, T),
    ) {
        match r {
            Ok(v) => ok(reply, v),
            Err(e) => self.fail(op, node, reply, e),
        }
    }

    fn reply_entry(&self, op: Op, node: u64, reply: ReplyEntry, r: core::Result<core::Entry>) {
        self.answer(op, node, reply, r, |reply, e| {
            reply.entry(self.ttl(), &file_attr(&e.attr), Generation(e.generation))
        })
    }

    /// Tell the spinner who sends the data requests (`spin=auto` polls only for a client
    /// that cannot run on the daemon's CPUs).
    #[inline]
    fn note_client(&self, req: &Request) {
        if let Some(s) = &self.spinner {
            s.note_client(req.pid());
        }
    }

    /// Count and run one request's handler; a panic becomes EIO for that request (its unsent
    /// reply is dropped, which fuser answers with EIO) and a log line, and the mount keeps
    /// serving.
    fn guard(&self, op: Op, f: impl FnOnce()) {
        self.core.context().ops.request(op);
        if let Some(s) = &self.spinner {
            s.note_request();
        }
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            self.core.context().ops.error(op);
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("bug: {} request panicked ({msg}); answered EIO", op.name());
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
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        if self.core.exportable() {
            caps |= InitFlags::FUSE_EXPORT_SUPPORT;
        }
        match self.core.config().cache {
            CacheMode::Pool => {}
            // With other writers the kernel must take sizes and times from extentfs: in
            // writeback-cache mode it trusts its own for regular files. Instead it drops its
            // pages of a file whose mtime or size changed (and at an open that revalidated).
            CacheMode::Kernel if self.core.coherent() => caps |= InitFlags::FUSE_AUTO_INVAL_DATA,
            CacheMode::Kernel => caps |= InitFlags::FUSE_WRITEBACK_CACHE,
        }
        if let Err(unsupported) = config.add_capabilities(caps) {
            tracing::debug!("kernel lacks FUSE capabilities {unsupported:?}");
            let _ = config.add_capabilities(caps & !unsupported);
        }
        let spin = self.core.config().spin;
        if spin != spin::SpinMode::Off {
            // Started here, in the daemon, after daemonizing (fork keeps one thread).
            match spin::Spinner::start(spin) {
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
        self.core.destroy();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let op = Op::Lookup;
        self.guard(op, move || {
            self.reply_entry(op, parent.0, reply, self.core.lookup(parent.0, name));
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let op = Op::Forget;
        self.guard(op, move || self.core.forget(ino.0, nlookup));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let op = Op::Getattr;
        self.guard(op, move || {
            self.answer(op, ino.0, reply, self.core.getattr(ino.0), |reply, a| {
                reply.attr(self.ttl(), &file_attr(&a))
            })
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
            let set = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: time_set(atime),
                mtime: time_set(mtime),
                ctime,
            };
            let r = self.core.setattr(&ctx_of(req), ino.0, &set);
            self.answer(op, ino.0, reply, r, |reply, a| {
                reply.attr(self.ttl(), &file_attr(&a))
            })
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let op = Op::Readlink;
        self.guard(op, move || {
            self.answer(op, ino.0, reply, self.core.readlink(ino.0), |reply, t| {
                reply.data(&t)
            })
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
            let r = self
                .core
                .mknod(&ctx_of(req), parent.0, name, mode, umask, rdev);
            self.reply_entry(op, parent.0, reply, r);
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
            let r = self.core.mkdir(&ctx_of(req), parent.0, name, mode, umask);
            self.reply_entry(op, parent.0, reply, r);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::Unlink;
        self.guard(op, move || {
            self.answer(
                op,
                parent.0,
                reply,
                self.core.unlink(parent.0, name),
                |reply, ()| reply.ok(),
            )
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::Rmdir;
        self.guard(op, move || {
            self.answer(
                op,
                parent.0,
                reply,
                self.core.rmdir(parent.0, name),
                |reply, ()| reply.ok(),
            )
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
            let r = self.core.symlink(&ctx_of(req), parent.0, link_name, target);
            self.reply_entry(op, parent.0, reply, r);
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
            let r = self
                .core
                .rename(parent.0, name, newparent.0, newname, flags.bits());
            self.answer(op, parent.0, reply, r, |reply, ()| reply.ok())
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
            self.reply_entry(
                op,
                ino.0,
                reply,
                self.core.link(ino.0, newparent.0, newname),
            );
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let op = Op::Open;
        self.guard(op, move || {
            self.answer(
                op,
                ino.0,
                reply,
                self.core.open(ino.0, flags.0),
                |reply, o| reply.opened(file_handle(o), fopen_flags(o)),
            )
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
        self.note_client(req);
        self.guard(op, move || {
            // read(2) comes with a lock owner; a read without one is a shared mapping
            // faulting pages in.
            let mut reply = Some(reply);
            let r = self
                .core
                .read(ino.0, offset, size, lock_owner.is_none(), |bytes| {
                    reply.take().unwrap().data(bytes);
                });
            if let Err(e) = r {
                if let Some(reply) = reply.take() {
                    self.fail(op, ino.0, reply, e);
                }
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
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
            let from = if write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) {
                WriteFrom::PageCache
            } else {
                // A write through a direct-I/O handle is a direct write even when the
                // caller turned O_DIRECT off with fcntl since: the kernel did not put it
                // in its page cache.
                let direct = if fh.0 == DIRECT_IO_HANDLE {
                    libc::O_DIRECT
                } else {
                    0
                };
                WriteFrom::Call {
                    open_flags: flags.0 | direct,
                }
            };
            let r = self.core.write(&ctx_of(req), ino.0, offset, data, from);
            self.answer(op, ino.0, reply, r, |reply, n| reply.written(n))
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
            self.answer(op, ino.0, reply, self.core.flush(ino.0), |reply, ()| {
                reply.ok()
            })
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
            self.core.release(ino.0);
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
            self.answer(
                op,
                ino.0,
                reply,
                self.core.fsync(ino.0, datasync),
                |reply, ()| reply.ok(),
            )
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let op = Op::Opendir;
        self.guard(op, move || {
            self.answer(op, ino.0, reply, self.core.opendir(ino.0), |reply, fh| {
                reply.opened(FileHandle(fh), FopenFlags::empty())
            })
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let op = Op::Readdir;
        self.guard(op, move || {
            let r = self.core.readdir(fh.0, offset, |e| {
                reply.add(
                    INodeNo(e.ino),
                    e.next,
                    dtype_to_filetype(e.kind),
                    OsStr::from_bytes(e.name),
                )
            });
            self.answer(op, ino.0, reply, r, |reply, ()| reply.ok())
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
            let zero = Duration::ZERO;
            let r = self
                .core
                .readdirplus(ino.0, fh.0, offset, |e, plus| match plus {
                    // Nothing for the kernel to cache of "." and "..".
                    DirPlus::Dot => {
                        let attr = FileAttr {
                            ino: INodeNo(e.ino),
                            size: 0,
                            blocks: 0,
                            atime: UNIX_EPOCH,
                            mtime: UNIX_EPOCH,
                            ctime: UNIX_EPOCH,
                            crtime: UNIX_EPOCH,
                            kind: dtype_to_filetype(e.kind),
                            perm: 0,
                            nlink: 0,
                            uid: 0,
                            gid: 0,
                            rdev: 0,
                            blksize: 4096,
                            flags: 0,
                        };
                        reply.add(
                            INodeNo(e.ino),
                            e.next,
                            OsStr::from_bytes(e.name),
                            &zero,
                            &attr,
                            Generation(0),
                        )
                    }
                    DirPlus::Entry(entry) => reply.add(
                        INodeNo(entry.attr.ino),
                        e.next,
                        OsStr::from_bytes(e.name),
                        self.ttl(),
                        &file_attr(&entry.attr),
                        Generation(entry.generation),
                    ),
                });
            self.answer(op, ino.0, reply, r, |reply, ()| reply.ok())
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
            self.core.releasedir(fh.0);
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
            self.answer(
                op,
                ino.0,
                reply,
                self.core.fsyncdir(ino.0, datasync),
                |reply, ()| reply.ok(),
            )
        });
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let op = Op::Statfs;
        self.guard(op, move || {
            self.answer(op, ino.0, reply, self.core.statfs(ino.0), |reply, s| {
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
            let r = self.core.setxattr(&ctx_of(req), ino.0, name, value, flags);
            self.answer(op, ino.0, reply, r, |reply, ()| reply.ok())
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let op = Op::Getxattr;
        self.guard(op, move || {
            match self.core.getxattr(&ctx_of(req), ino.0, name, size) {
                // An absent attribute is an answer, not a failure (the core counts it).
                Err(e) if e.is(libc::ENODATA) => reply.error(Errno::NO_XATTR),
                r => self.answer(op, ino.0, reply, r, |reply, v| reply_value(reply, &v, size)),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let op = Op::Listxattr;
        self.guard(op, move || {
            self.answer(
                op,
                ino.0,
                reply,
                self.core.listxattr(&ctx_of(req), ino.0),
                |reply, v| reply_value(reply, &v, size),
            )
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let op = Op::Removexattr;
        self.guard(op, move || {
            self.answer(
                op,
                ino.0,
                reply,
                self.core.removexattr(ino.0, name),
                |reply, ()| reply.ok(),
            )
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let op = Op::Access;
        self.guard(op, move || {
            self.answer(op, ino.0, reply, self.core.access(ino.0), |reply, ()| {
                reply.ok()
            })
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
            let r = self
                .core
                .create(&ctx_of(req), parent.0, name, mode, umask, flags);
            self.answer(op, parent.0, reply, r, |reply, (e, o)| {
                reply.created(
                    self.ttl(),
                    &file_attr(&e.attr),
                    Generation(e.generation),
                    file_handle(o),
                    fopen_flags(o),
                )
            })
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
            let r = self
                .core
                .fallocate(&ctx_of(req), ino.0, offset, length, mode);
            self.answer(op, ino.0, reply, r, |reply, ()| reply.ok())
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
            self.answer(
                op,
                ino.0,
                reply,
                self.core.lseek(ino.0, offset, whence),
                |reply, o| reply.offset(o),
            )
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
            let r = self.core.copy_file_range(
                &ctx_of(req),
                ino_in.0,
                offset_in,
                ino_out.0,
                offset_out,
                len,
            );
            self.answer(op, ino_in.0, reply, r, |reply, n| {
                reply.written(n.min(u32::MAX as u64) as u32)
            })
        });
    }

    /// Only the inode-flag ioctls the kernel turns fileattr calls into (see
    /// `core::fileattr`); every other one answers ENOTTY.
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
            let r = self.core.ioctl(&ctx_of(req), ino.0, cmd, in_data, out_size);
            self.answer(op, ino.0, reply, r, |reply, data| reply.ioctl(0, &data))
        });
    }
}
