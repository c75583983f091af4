//! All access to SOURCE: the only module that makes system calls on the backing tree.
//!
//! Every object is reached from a directory file descriptor with the `*at()` calls and a single
//! path component (FUSE hands us names, never paths), with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`
//! where a symlink could otherwise be followed. So a symlink planted in SOURCE, even one swapped
//! in during an operation, never makes the daemon reach outside SOURCE. Inodes are held as
//! `O_PATH` descriptors; operations that need a real open file reopen them through
//! `/proc/self/fd/N`, which names the very inode already held, not a path.

pub mod dir;
pub mod fileattr;
pub mod path_fd;

use crate::cache::backing::{Backing, IoDescriptors, OwnChange};
use crate::cache::validator::{Check, Seen, Validator};
use crate::sys::{self, creds::fs_id, creds::set_fs_id};
use path_fd::PathFd;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, RenameFlags};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Run `f` (a create/mkdir/mknod) with the caller's umask, as the kernel would: SOURCE's
/// filesystem then applies the parent's default ACL instead of the umask where there is one.
/// Each request thread gets its own umask by unsharing its fs attributes once; if that is not
/// possible, the umask is applied to `mode` here (no default-ACL semantics).
pub fn with_umask<T>(mode: u32, umask: u32, f: impl FnOnce(u32) -> T) -> T {
    use std::cell::Cell;
    thread_local! {
        static OWN_FS: Cell<Option<bool>> = const { Cell::new(None) };
    }
    let own = OWN_FS.with(|c| {
        if c.get().is_none() {
            c.set(Some(sys::creds::unshare_fs()));
        }
        c.get().unwrap()
    });
    if !own {
        return f(mode & !umask);
    }
    // After the unshare above, umask changes this thread's umask only.
    let old = rustix::process::umask(Mode::from_raw_mode(umask & 0o777));
    let r = f(mode);
    rustix::process::umask(old);
    r
}

/// This thread's filesystem credentials switched to a caller's (see [`UserCreds::switch`]);
/// the daemon's own come back on drop.
pub struct UserCreds {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<u32>,
}

/// This thread's supplementary groups (the raw system call: per thread).
fn thread_groups() -> io::Result<Vec<u32>> {
    Ok(rustix::process::getgroups()?
        .into_iter()
        .map(|g| g.as_raw())
        .collect())
}

/// Set this thread's supplementary groups (the raw system call, not glibc's `setgroups`,
/// which changes every thread of the process).
fn set_thread_groups(g: &[u32]) -> io::Result<()> {
    let g: Vec<_> = g
        .iter()
        .map(|&g| rustix::process::Gid::from_raw(g))
        .collect();
    Ok(rustix::thread::set_thread_groups(&g)?)
}

impl UserCreds {
    /// Make this thread's filesystem credentials those of a caller: fsuid `uid`, fsgid `gid`
    /// and supplementary groups `groups` (per thread, as virtiofsd does: raw system calls, not
    /// glibc's wrappers, which change every thread of the process). What SOURCE creates
    /// meanwhile is owned as on a local filesystem (the group, and a directory's set-group-ID,
    /// from a set-group-ID directory), passes SOURCE's own permission checks as that caller,
    /// and is never the daemon's for a moment. Until the guard drops (also on an error or a
    /// panic), which gives the daemon's credentials back. Fails when the switch is refused
    /// (it needs CAP_SETUID and CAP_SETGID), with nothing changed.
    pub fn switch(uid: u32, gid: u32, groups: &[u32]) -> io::Result<UserCreds> {
        let saved = UserCreds {
            fsuid: fs_id(false),
            fsgid: fs_id(true),
            groups: thread_groups()?,
        };
        // (An early return drops `saved`, which undoes what was changed.)
        set_thread_groups(groups)?;
        if !set_fs_id(gid, true) || !set_fs_id(uid, false) {
            drop(saved);
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(saved)
    }
}

impl Drop for UserCreds {
    fn drop(&mut self) {
        // The fsuid first: back at 0 it gives back the capabilities it dropped.
        let ok = set_fs_id(self.fsuid, false)
            && set_fs_id(self.fsgid, true)
            && set_thread_groups(&self.groups).is_ok();
        if !ok {
            // A request thread acting as someone else would create files for them later.
            tracing::error!("bug: the thread's own credentials could not be restored; exiting");
            std::process::abort();
        }
    }
}

/// A single name component as a C string. Names with NUL or '/' are invalid here.
pub fn name_cstr(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if b.len() > 255 {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/N` for an fd we hold.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
}

pub fn empty_path() -> &'static CStr {
    c""
}

/// open(2) flags as rustix takes them (the bits are the kernel's either way).
fn oflags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as u32)
}

/// `openat` relative to a directory fd; always O_CLOEXEC and O_NOFOLLOW.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        name,
        oflags(flags | libc::O_CLOEXEC | libc::O_NOFOLLOW),
        Mode::from_raw_mode(mode),
    )?)
}

/// An `O_PATH` handle on the entry `name` in `dir` (the entry itself, never a symlink target).
pub fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat(dir, name, libc::O_PATH, 0)
}

/// An `O_PATH` handle on a directory given by absolute path (the SOURCE root only).
pub fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// How reads through extentfs move SOURCE's atimes (the mount's atime options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtimeMode {
    NoAtime,
    RelAtime,
    StrictAtime,
}

/// The SOURCE root as an `O_PATH` descriptor on a private, detached copy of SOURCE's mount
/// (open_tree(OPEN_TREE_CLONE), with submounts) carrying the atime options of the extentfs
/// mount, so that SOURCE updates atimes as that mount's options say. Nobody else sees the copy.
/// Where that is not allowed (not root, old kernel), SOURCE's own mount (and its options).
pub fn open_root_with_atime(
    path: &std::path::Path,
    atime: AtimeMode,
    nodiratime: bool,
) -> io::Result<OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    use sys::mount::{
        MOUNT_ATTR_ATIME_MASK, MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_STRICTATIME,
    };
    let tree = match rustix::mount::open_tree(
        rfs::CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    ) {
        Ok(tree) => tree,
        Err(e) => {
            tracing::debug!(
                "private copy of SOURCE's mount refused ({}); atimes follow SOURCE's own options",
                io::Error::from(e)
            );
            note_root_for_names(path, false);
            return open_root(path);
        }
    };
    note_root_for_names(path, true);
    let mut set = match atime {
        AtimeMode::NoAtime => MOUNT_ATTR_NOATIME,
        AtimeMode::RelAtime => 0,
        AtimeMode::StrictAtime => MOUNT_ATTR_STRICTATIME,
    };
    if nodiratime {
        set |= MOUNT_ATTR_NODIRATIME;
    }
    if let Err(e) = sys::mount::mount_setattr(
        tree.as_fd(),
        set,
        MOUNT_ATTR_ATIME_MASK | MOUNT_ATTR_NODIRATIME,
    ) {
        tracing::debug!(
            "atime options on SOURCE's private mount refused ({e}); SOURCE's own apply"
        );
    }
    // The tree's root must be a directory, as open_root checks with O_DIRECTORY.
    let st = fstat(tree.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    Ok(tree)
}

/// Reopen an `O_PATH` handle as a real open file with `flags`.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        proc_path(fd).as_c_str(),
        oflags((flags | libc::O_CLOEXEC) & !(libc::O_CREAT | libc::O_NOFOLLOW | libc::O_TRUNC)),
        Mode::empty(),
    )?)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    Ok(rfs::mkdirat(dir, name, Mode::from_raw_mode(mode))?)
}

pub use crate::sys::io::mknodat;

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rfs::symlinkat(target, dir, name)?)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    Ok(rfs::unlinkat(
        dir,
        name,
        AtFlags::from_bits_retain(flags as u32),
    )?)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    Ok(rfs::renameat_with(
        olddir,
        oldname,
        newdir,
        newname,
        RenameFlags::from_bits_retain(flags),
    )?)
}

/// Hard link the inode held by `fd` as `name` in `newdir`.
pub fn linkat_fd(fd: BorrowedFd<'_>, newdir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // AT_EMPTY_PATH on an O_PATH fd needs CAP_DAC_READ_SEARCH; fall back to the /proc link.
    if rfs::linkat(fd, empty_path(), newdir, name, AtFlags::EMPTY_PATH).is_ok() {
        return Ok(());
    }
    Ok(rfs::linkat(
        rfs::CWD,
        proc_path(fd).as_c_str(),
        newdir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )?)
}

pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    Ok(rfs::readlinkat(fd, empty_path(), Vec::with_capacity(256))?.into_bytes())
}

pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(rfs::chmod(
        proc_path(fd).as_c_str(),
        Mode::from_raw_mode(mode),
    )?)
}

/// Change owner (`u32::MAX` = leave unchanged) of the held inode itself (no symlink follow).
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let uid = (uid != u32::MAX).then(|| rustix::fs::Uid::from_raw(uid));
    let gid = (gid != u32::MAX).then(|| rustix::fs::Gid::from_raw(gid));
    Ok(rfs::chownat(
        fd,
        empty_path(),
        uid,
        gid,
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Set times; `is_symlink` selects the no-follow form on the /proc link.
pub fn utimens(
    fd: BorrowedFd<'_>,
    times: &[libc::timespec; 2],
    is_symlink: bool,
) -> io::Result<()> {
    let ts = |t: &libc::timespec| rfs::Timespec {
        tv_sec: t.tv_sec,
        tv_nsec: t.tv_nsec,
    };
    let times = rfs::Timestamps {
        last_access: ts(&times[0]),
        last_modification: ts(&times[1]),
    };
    if is_symlink {
        // The /proc magic link cannot be used with AT_SYMLINK_NOFOLLOW; AT_EMPTY_PATH can.
        return Ok(rfs::utimensat(
            fd,
            empty_path(),
            &times,
            AtFlags::EMPTY_PATH,
        )?);
    }
    Ok(rfs::utimensat(
        rfs::CWD,
        proc_path(fd).as_c_str(),
        &times,
        AtFlags::empty(),
    )?)
}

pub fn truncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    Ok(rfs::ftruncate(fd, size)?)
}

pub use crate::sys::stat::{fstat, fstatat, fstatvfs as statvfs};

/// fsync (or fdatasync) the directory held by `fd`, reopened for reading.
pub fn fsync_dir(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    let fd = reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY)?;
    Ok(if datasync {
        rfs::fdatasync(&fd)
    } else {
        rfs::fsync(&fd)
    }?)
}

/// Whether the daemon runs as root (effective uid 0).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The wall-clock time now, as the coarse clock the kernel stamps files with.
pub fn now_coarse() -> libc::timespec {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    libc::timespec {
        tv_sec: now.tv_sec,
        tv_nsec: now.tv_nsec,
    }
}

// ---- file handles (what open_by_handle_at on the mount is answered from) ----

/// `FILEID_INO32_GEN`: the handle layout of ext2/3/4 and most others, a 32-bit inode number
/// then a 32-bit generation (a generation of 0 in a handle means "do not check").
pub const FILEID_INO32_GEN: i32 = 1;

/// A SOURCE file handle, as `name_to_handle_at` gives it and `open_by_handle_at` takes it.
pub use crate::sys::handle::FileHandle as SourceHandle;

/// The handle of the inode held by `fd`.
pub fn handle_of(fd: BorrowedFd<'_>) -> io::Result<SourceHandle> {
    handle_and_mount_of(fd).map(|(h, _)| h)
}

/// The handle of the inode held by `fd` and the id of the mount `fd` reaches it through: a
/// handle is decoded only through a descriptor of a mount of the same filesystem.
pub fn handle_and_mount_of(fd: BorrowedFd<'_>) -> io::Result<(SourceHandle, i32)> {
    sys::handle::name_to_handle(fd)
}

/// An `open_by_handle_at` failure as the caller should see it: a shortage (EMFILE, ENFILE,
/// ENOMEM) as it is, to be retried; anything else means the handle no longer names a file
/// (ESTALE).
pub fn stale_unless_shortage(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => e,
        _ => io::Error::from_raw_os_error(libc::ESTALE),
    }
}

/// An `O_PATH` descriptor of the inode `h` names on the filesystem of `mount_fd` (needs
/// CAP_DAC_READ_SEARCH).
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, h: &SourceHandle) -> io::Result<OwnedFd> {
    sys::handle::open_by_handle(mount_fd, h, libc::O_PATH)
}

// ---- extended attributes (through the /proc link, which names the inode held, symlinks too) ----

fn xattr_path(fd: BorrowedFd<'_>) -> CString {
    proc_path(fd)
}

// An empty buffer asks for the size needed, as getxattr(2) and listxattr(2) answer it:
// rustix's buffer-filling getxattr/listxattr answer 0 for an empty buffer (they take it as
// filled), so that case goes to their `_query` forms, which make the same call with size 0.
pub fn getxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let p = xattr_path(fd);
    Ok(if buf.is_empty() {
        rfs::getxattr_query(p.as_c_str(), name)?
    } else {
        rfs::getxattr(p.as_c_str(), name, buf)?
    })
}

pub fn setxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    Ok(rfs::setxattr(
        xattr_path(fd).as_c_str(),
        name,
        value,
        rfs::XattrFlags::from_bits_retain(flags as u32),
    )?)
}

pub fn listxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let p = xattr_path(fd);
    Ok(if buf.is_empty() {
        rfs::listxattr_query(p.as_c_str())?
    } else {
        rfs::listxattr(p.as_c_str(), buf)?
    })
}

pub fn removexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rfs::removexattr(xattr_path(fd).as_c_str(), name)?)
}

/// How to turn `/proc/self/fd/N` of a SOURCE descriptor into a path relative to SOURCE, for
/// messages: SOURCE's path, and whether descriptors live on the private detached copy of its
/// mount (whose paths read from that copy's root, i.e. already relative to SOURCE).
static ROOT_FOR_NAMES: std::sync::OnceLock<(std::path::PathBuf, bool)> = std::sync::OnceLock::new();

fn note_root_for_names(path: &std::path::Path, detached: bool) {
    let _ = ROOT_FOR_NAMES.set((path.to_path_buf(), detached));
}

/// The path of the inode held by `fd`, relative to SOURCE (as the kernel names it now: a
/// deleted file ends in " (deleted)"). For log lines and reports only: one readlink, never on
/// a data path. None when the kernel cannot name it inside SOURCE.
pub fn name_in_source(fd: BorrowedFd<'_>) -> Option<Vec<u8>> {
    let (root, detached) = ROOT_FOR_NAMES.get()?;
    name_under(fd, root, *detached)
}

fn name_under(fd: BorrowedFd<'_>, root: &std::path::Path, detached: bool) -> Option<Vec<u8>> {
    let link = std::fs::read_link(OsStr::from_bytes(proc_path(fd).as_bytes())).ok()?;
    relative_name(
        link.as_os_str().as_bytes(),
        root.as_os_str().as_bytes(),
        detached,
    )
}

/// `link` (what /proc/self/fd/N reads) relative to SOURCE at `root`; `detached`: `link` is
/// already relative to SOURCE (starts at the detached copy's root).
fn relative_name(link: &[u8], root: &[u8], detached: bool) -> Option<Vec<u8>> {
    let rest = if detached {
        link.strip_prefix(b"/")?
    } else {
        let root = root.strip_suffix(b"/").unwrap_or(root);
        let r = link.strip_prefix(root)?;
        if r.is_empty() {
            r
        } else {
            r.strip_prefix(b"/")?
        }
    };
    Some(if rest.is_empty() {
        b".".to_vec()
    } else {
        rest.to_vec()
    })
}

/// A regular file of SOURCE that the cache reads from and writes back to.
///
/// It holds the inode's `O_PATH` descriptor (a [`PathFd`] shared with the inode table, which
/// may give it back while no I/O descriptor is open) and, while in use, a descriptor open for
/// I/O. `close_io` gives the latter back when the file is idle, so the daemon needs at most one
/// descriptor per inode the kernel knows plus one per file in use (not two per inode: 10,000
/// created files would otherwise exhaust RLIMIT_NOFILE); the next I/O reopens it. Metadata
/// calls (stat, chmod, truncate, times) go through the `O_PATH` descriptor.
#[derive(Debug)]
pub struct DataFile {
    path: Arc<PathFd>,
    io: RwLock<Option<OwnedFd>>,
    /// The I/O descriptor is open for writing (it follows the last open: SOURCE refuses one
    /// for an immutable or append-only file, even to root).
    writable: AtomicBool,
    /// Opened for reading only whatever SOURCE allows (a read-only mount).
    read_only_mount: bool,
    /// What SOURCE said of the file after extentfs's own last change (see [`Seen`]). Every
    /// method here that changes the file brackets the change with [`DataFile::own_change`],
    /// one system call at a time, so that a foreign change can only hide inside one of them.
    seen: Mutex<Seen>,
    /// Signalled when the last own change in flight ends.
    seen_idle: std::sync::Condvar,
    /// The largest size SOURCE's filesystem allows this file (see [`max_file_size`]).
    max_size: u64,
}

/// The last answer of [`max_file_size`] and the device (st_dev) it was found on: the limit is
/// the filesystem's (its superblock's `s_maxbytes`), so the next file on that device needs no
/// probe, and a file elsewhere is checked against it first (two calls when right).
static LAST_MAX_SIZE: Mutex<(u64, u64)> = Mutex::new((u64::MAX, 0));

/// The largest size a file may have on the filesystem of `fd` (the kernel's `s_maxbytes`:
/// ext4 with 4 KiB blocks 16 TiB - 4 KiB, with 1 KiB blocks 4 TiB - 1 KiB; tmpfs, xfs,
/// btrfs 2^63 - 1). There is no system call that says; lseek(SEEK_SET) to an offset past it
/// fails with EINVAL on every filesystem using the generic llseek, and never moves data, so
/// the limit is found by bisection. `hint` (an earlier answer) is checked first: two calls
/// when it is right. A descriptor that cannot seek at all gets 2^63 - 1.
pub fn max_file_size(fd: BorrowedFd<'_>, hint: u64) -> u64 {
    const TOP: u64 = i64::MAX as u64;
    // lseek on a descriptor we hold only moves its file position, which nobody uses (all I/O
    // is positioned: preadv/pwritev).
    let ok = |off: u64| rfs::seek(fd, rfs::SeekFrom::Start(off)).is_ok();
    if hint > 0 && hint <= TOP && ok(hint) && (hint == TOP || !ok(hint + 1)) {
        return hint;
    }
    if ok(TOP) || !ok(0) {
        return TOP;
    }
    // ok(lo) and !ok(hi) throughout.
    let (mut lo, mut hi) = (0u64, TOP);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Open the inode held by `path_fd` for data I/O: read-write when possible. Returns the
/// descriptor and whether it is writable.
fn open_io(path_fd: BorrowedFd<'_>, read_only: bool) -> io::Result<(OwnedFd, bool)> {
    // Read-only only where writing is refused for good; a shortage (EMFILE, ENFILE,
    // ENOMEM) is an error to report, not a reason to make the file read-only.
    let refused = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ETXTBSY)
        )
    };
    if !read_only {
        match reopen(path_fd, libc::O_RDWR | libc::O_NOATIME) {
            Ok(fd) => return Ok((fd, true)),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                // O_NOATIME is refused on files we do not own when not privileged.
                match reopen(path_fd, libc::O_RDWR) {
                    Ok(fd) => return Ok((fd, true)),
                    Err(e) if refused(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) if refused(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((reopen(path_fd, libc::O_RDONLY)?, false))
}

impl Drop for DataFile {
    fn drop(&mut self) {
        if self
            .io
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            self.path.note_io(false);
        }
    }
}

impl DataFile {
    /// Open the inode held by `path` for data I/O: read-write when possible.
    pub fn open(path: Arc<PathFd>, read_only: bool) -> io::Result<DataFile> {
        let (fd, writable) = open_io(path.get()?.as_fd(), read_only)?;
        let st = fstat(fd.as_fd())?;
        let (dev, hint) = *LAST_MAX_SIZE.lock().unwrap_or_else(|p| p.into_inner());
        let max_size = if dev == st.st_dev as u64 {
            hint
        } else {
            let max = max_file_size(fd.as_fd(), hint);
            *LAST_MAX_SIZE.lock().unwrap_or_else(|p| p.into_inner()) = (st.st_dev as u64, max);
            max
        };
        path.note_io(true);
        Ok(DataFile {
            path,
            io: RwLock::new(Some(fd)),
            writable: AtomicBool::new(writable),
            read_only_mount: read_only,
            seen: Mutex::new(Seen::new(Validator::of(&st))),
            seen_idle: std::sync::Condvar::new(),
            max_size,
        })
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` on the I/O descriptor, reopening it if `close_io` gave it back.
    fn with_io<T>(&self, f: impl FnOnce(BorrowedFd<'_>) -> io::Result<T>) -> io::Result<T> {
        {
            let g = self.io.read().unwrap();
            if let Some(fd) = g.as_ref() {
                return f(fd.as_fd());
            }
        }
        let mut g = self.io.write().unwrap();
        if g.is_none() {
            // The same access as the first open decided; an error (EMFILE, ...) is the
            // caller's, never a quiet fall back to read-only under a writable file.
            let was = self.writable();
            let (fd, writable) = open_io(self.path.get()?.as_fd(), !was)?;
            if writable != was {
                // SOURCE refuses writing now (the file became immutable or append-only):
                // reads go on; a write through it fails (EBADF).
                tracing::debug!("SOURCE file no longer opens for writing");
                self.writable.store(writable, Ordering::Relaxed);
            }
            *g = Some(fd);
            self.path.note_io(true);
        }
        f(g.as_ref().unwrap().as_fd())
    }

    /// Run `op` (preadv or pwritev) over `iov` from `off` until all of it is moved or `op`
    /// moves nothing (EOF); retried on EINTR and short transfers. Returns bytes moved.
    fn vectored(
        &self,
        iov: &mut [libc::iovec],
        mut off: u64,
        op: impl Fn(BorrowedFd<'_>, &[libc::iovec], u64) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        let mut done = 0;
        let mut first = 0;
        while done < total {
            // `fd` is kept open by `with_io`'s lock guard for the closure's run. The kernel
            // reads or writes the memory each iovec names: that it is valid for iov_len bytes
            // (and not touched by anyone else) is the caller's promise, not checked here:
            // read_full and write_all are safe fns, callers build their iovecs with
            // ExtentPtr::iovecs over ranges they hold LOCKED or WRITEBACK.
            let n = self.with_io(|fd| op(fd, &iov[first..], off));
            let n = match n {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            done += n;
            off += n as u64;
            advance(iov, &mut first, n);
        }
        Ok(done)
    }
}

impl Backing for DataFile {
    fn begin_own(&self) {
        let mut s = self.lock_seen();
        let now = if s.wants_pre_check() {
            self.stat().ok().map(|st| Validator::of(&st))
        } else {
            None
        };
        s.begin_own(now);
    }

    fn end_own(&self) {
        let mut s = self.lock_seen();
        if s.end_own() {
            // If the stat fails, the next check sees a change: at worst clean data is
            // dropped and read again.
            if let Ok(st) = self.stat() {
                s.record(Validator::of(&st));
            }
            if s.waiters > 0 {
                self.seen_idle.notify_all();
            }
        }
    }

    /// Stat SOURCE's file and compare it with what extentfs last recorded of it. An own
    /// change in flight (one system call) is waited for, up to a few seconds (then `Busy`).
    /// Never call it while holding an [`OwnChange`] of the same file.
    fn check(&self) -> io::Result<(Check, libc::stat)> {
        let mut s = self.lock_seen();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !s.wants_pre_check() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            s.waiters += 1;
            s = self
                .seen_idle
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.waiters -= 1;
        }
        let st = self.stat()?;
        Ok((s.check(Validator::of(&st)), st))
    }

    /// As [`DataFile::check`], given `st`, a stat of the same inode the caller took a moment
    /// ago: when it shows just what was recorded, no fstat is needed (see
    /// [`Seen::unchanged_per`]); otherwise a fresh check.
    fn check_taken(&self, st: &libc::stat) -> io::Result<(Check, libc::stat)> {
        if self.lock_seen().unchanged_per(Validator::of(st)) {
            return Ok((Check::Unchanged, *st));
        }
        self.check()
    }

    /// The validator last recorded (stats).
    fn validator(&self) -> Validator {
        self.lock_seen().recorded()
    }

    fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    fn inode_flags(&self) -> io::Result<u32> {
        self.with_io(fileattr::get_flags)
    }

    fn reopen_io(&self) -> io::Result<()> {
        let mut g = self.io.write().unwrap();
        let (fd, writable) = open_io(self.path.get()?.as_fd(), self.read_only_mount)?;
        if g.replace(fd).is_none() {
            self.path.note_io(true);
        }
        self.writable.store(writable, Ordering::Relaxed);
        Ok(())
    }

    fn append(&self, data: &[u8]) -> io::Result<u64> {
        let _own = OwnChange::begin(self);
        fileattr::append(self.path.get()?.as_fd(), data)
    }

    /// The largest size SOURCE's filesystem allows this file: a write, truncate, fallocate or
    /// copy past it answers EFBIG, as SOURCE itself would.
    fn max_size(&self) -> u64 {
        self.max_size
    }

    /// statvfs of the filesystem holding the file.
    fn statvfs(&self) -> io::Result<libc::statvfs> {
        statvfs(self.path.get()?.as_fd())
    }

    /// The file's path relative to SOURCE, for messages (see [`name_in_source`]).
    fn name(&self) -> Option<Vec<u8>> {
        name_in_source(self.path.get().ok()?.as_fd())
    }

    /// Close the I/O descriptor unless it is in use or `idle()`, asked with no I/O running,
    /// says no. `idle` must be false while data written through it awaits an fsync: a fresh
    /// descriptor's fsync would not report an error that happened before it was opened.
    fn close_io(&self, idle: &dyn Fn() -> bool) {
        if let Ok(mut g) = self.io.try_write() {
            if idle() && g.take().is_some() {
                self.path.note_io(false);
            }
        }
    }

    /// Whether the I/O descriptor is open (for tests and stats).
    fn descriptors(&self) -> IoDescriptors {
        path_fd::io_descriptors()
    }

    fn io_open(&self) -> bool {
        self.io.read().unwrap().is_some()
    }

    fn holds_inode(&self) -> bool {
        self.io_open() || self.path.is_open()
    }

    /// Read into `iov` at `off` until it is full or EOF; returns bytes read.
    fn read_full(&self, iov: &mut [libc::iovec], off: u64) -> io::Result<usize> {
        // SAFETY: preadv writes only the memory the iovecs name, which this fn's caller promises
        // valid for iov_len bytes and untouched by others meanwhile (see `vectored`).
        self.vectored(iov, off, |fd, iov, off| unsafe {
            sys::io::preadv(fd, iov, off)
        })
    }

    /// Write all of `iov` at `off` (pwritev, retried on short writes).
    fn write_all(&self, iov: &mut [libc::iovec], off: u64) -> io::Result<()> {
        let _own = OwnChange::begin(self);
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        // SAFETY: pwritev reads only the memory the iovecs name, which this fn's caller promises
        // valid for iov_len bytes and not written by others meanwhile (see `vectored`).
        match self.vectored(iov, off, |fd, iov, off| unsafe {
            sys::io::pwritev(fd, iov, off)
        })? {
            n if n == total => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    fn sync(&self, datasync: bool) -> io::Result<()> {
        self.with_io(|fd| {
            Ok(if datasync {
                rfs::fdatasync(fd)
            } else {
                rfs::fsync(fd)
            }?)
        })
    }

    /// syncfs(2) of the filesystem holding the file: everything written to it before the
    /// call is durable when it returns Ok. An error may be any file's on that filesystem
    /// since this descriptor was opened.
    fn syncfs(&self) -> io::Result<()> {
        self.with_io(|fd| Ok(rfs::syncfs(fd)?))
    }

    fn chmod(&self, mode: u32) -> io::Result<()> {
        let _own = OwnChange::begin(self);
        chmod(self.path.get()?.as_fd(), mode)
    }

    fn set_len(&self, size: u64) -> io::Result<()> {
        let _own = OwnChange::begin(self);
        self.with_io(|fd| Ok(rfs::ftruncate(fd, size)?))
    }

    fn fallocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        let _own = OwnChange::begin(self);
        let mode = rfs::FallocateFlags::from_bits_retain(mode as u32);
        self.with_io(|fd| Ok(rfs::fallocate(fd, mode, off, len)?))
    }

    fn lseek(&self, off: i64, whence: i32) -> io::Result<i64> {
        // A negative offset is what the kernel answers for it: EINVAL for SEEK_SET, ENXIO
        // (past the end) for SEEK_DATA and SEEK_HOLE.
        let at = |e| u64::try_from(off).map_err(|_| io::Error::from_raw_os_error(e));
        let pos = match whence {
            libc::SEEK_SET => rfs::SeekFrom::Start(at(libc::EINVAL)?),
            libc::SEEK_CUR => rfs::SeekFrom::Current(off),
            libc::SEEK_END => rfs::SeekFrom::End(off),
            libc::SEEK_DATA => rfs::SeekFrom::Data(at(libc::ENXIO)?),
            libc::SEEK_HOLE => rfs::SeekFrom::Hole(at(libc::ENXIO)?),
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        self.with_io(|fd| Ok(rfs::seek(fd, pos)? as i64))
    }

    fn stat(&self) -> io::Result<libc::stat> {
        fstat(self.path.get()?.as_fd())
    }

    /// Let SOURCE record a read access (reads are served from the pool, and the I/O
    /// descriptor is O_NOATIME): read one byte through a fresh descriptor, so SOURCE's mount
    /// options decide whether atime moves. (Setting atime explicitly would move ctime too.)
    fn touch_atime(&self) -> io::Result<()> {
        let fd = reopen(self.path.get()?.as_fd(), libc::O_RDONLY)?;
        let mut b = [0u8; 1];
        Ok(rustix::io::pread(&fd, &mut b, 0).map(drop)?)
    }

    fn recorded_mtime(&self) -> Option<libc::timespec> {
        let (tv_sec, tv_nsec) = self.lock_seen().recorded().mtime;
        Some(libc::timespec { tv_sec, tv_nsec })
    }

    /// Set mtime (and atime omitted) on the file.
    fn set_mtime(&self, mtime: libc::timespec) -> io::Result<()> {
        let _own = OwnChange::begin(self);
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            mtime,
        ];
        utimens(self.path.get()?.as_fd(), &times, false)
    }
}

fn advance(iov: &mut [libc::iovec], first: &mut usize, mut n: usize) {
    while n > 0 && *first < iov.len() {
        let v = &mut iov[*first];
        if n >= v.iov_len {
            n -= v.iov_len;
            v.iov_len = 0;
            *first += 1;
        } else {
            // SAFETY: n < v.iov_len, so the result stays inside the buffer this iovec describes
            // (the same object as iov_base, which the caller of `vectored` promised valid).
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
            v.iov_len -= n;
            n = 0;
        }
    }
    while *first < iov.len() && iov[*first].iov_len == 0 {
        *first += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn max_file_size_is_what_the_filesystem_enforces() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(d.path().join("f"))
            .unwrap();
        let max = max_file_size(f.as_fd(), 0);
        assert!(max > 1 << 31, "{max}");
        // Whatever the hint, the same answer.
        for hint in [1, max / 2, max - 1, max + 1, i64::MAX as u64, u64::MAX] {
            assert_eq!(max_file_size(f.as_fd(), hint), max, "hint {hint}");
        }
        if max < i64::MAX as u64 {
            // SOURCE's own limit: a write at it is refused as too large.
            let r = rustix::io::pwrite(&f, b"x", max);
            assert_eq!(r, Err(rustix::io::Errno::FBIG));
        }
        // tmpfs (a memfd) has no limit below the kernel's.
        let m = rfs::memfd_create(c"posix-max", rfs::MemfdFlags::CLOEXEC).unwrap();
        assert_eq!(max_file_size(m.as_fd(), max), i64::MAX as u64);
    }

    #[test]
    fn names_are_single_components() {
        assert!(name_cstr(OsStr::new("a/b")).is_err());
        assert!(name_cstr(OsStr::new("")).is_err());
        assert_eq!(
            name_cstr(OsStr::new(&"x".repeat(256)))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        // Invalid UTF-8 is fine: names are bytes.
        assert!(name_cstr(OsStr::from_bytes(b"\xff\xfe")).is_ok());
    }

    #[test]
    fn names_relative_to_source() {
        assert_eq!(relative_name(b"/a/b", b"/srv", true).unwrap(), b"a/b");
        assert_eq!(relative_name(b"/", b"/srv", true).unwrap(), b".");
        assert_eq!(relative_name(b"/srv/a/b", b"/srv", false).unwrap(), b"a/b");
        assert_eq!(relative_name(b"/srv/a/b", b"/srv/", false).unwrap(), b"a/b");
        assert_eq!(relative_name(b"/srv", b"/srv", false).unwrap(), b".");
        // Outside SOURCE (a sibling with the same prefix, or elsewhere): no name.
        assert_eq!(relative_name(b"/srvx/a", b"/srv", false), None);
        assert_eq!(relative_name(b"/etc/x", b"/srv", false), None);
        assert_eq!(relative_name(b"a", b"/srv", true), None);
        assert_eq!(
            relative_name(b"/d/f (deleted)", b"/srv", true).unwrap(),
            b"d/f (deleted)"
        );
    }

    #[test]
    fn data_file_is_named_relative_to_source() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), b"x").unwrap();
        let canon = std::fs::canonicalize(dir.path()).unwrap();
        let root = open_root(&canon).unwrap();
        let d = open_path(root.as_fd(), &name_cstr(OsStr::new("d")).unwrap()).unwrap();
        let f = open_path(d.as_fd(), &name_cstr(OsStr::new("f")).unwrap()).unwrap();
        assert_eq!(name_under(f.as_fd(), &canon, false).unwrap(), b"d/f");
        assert_eq!(name_under(root.as_fd(), &canon, false).unwrap(), b".");
        std::fs::rename(dir.path().join("d/f"), dir.path().join("g")).unwrap();
        assert_eq!(
            name_under(f.as_fd(), &canon, false).unwrap(),
            b"g",
            "follows renames"
        );
    }

    #[test]
    fn open_path_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("evil")).unwrap();
        let root = open_root(dir.path()).unwrap();
        let evil = name_cstr(OsStr::new("evil")).unwrap();
        let h = open_path(root.as_fd(), &evil).unwrap();
        let st = fstat(h.as_fd()).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
        // Opening for data refuses the symlink instead of reading /etc/passwd.
        assert!(openat(root.as_fd(), &evil, libc::O_RDONLY, 0).is_err());
    }

    #[test]
    fn data_file_roundtrip_with_short_iovecs() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(dir.path().join("f")).unwrap();
        f.write_all(b"hello world").unwrap();
        let root = open_root(dir.path()).unwrap();
        let h = open_path(root.as_fd(), &name_cstr(OsStr::new("f")).unwrap()).unwrap();
        let df = DataFile::open(PathFd::fixed(h).unwrap(), false).unwrap();
        assert!(df.writable());
        let mut a = [0u8; 5];
        let mut b = [0u8; 20];
        let mut iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr() as *mut _,
                iov_len: 5,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr() as *mut _,
                iov_len: 20,
            },
        ];
        assert_eq!(df.read_full(&mut iov, 0).unwrap(), 11);
        assert_eq!(&a, b"hello");
        assert_eq!(&b[..6], b" world");
        let mut data = *b"XY";
        let mut iov = [libc::iovec {
            iov_base: data.as_mut_ptr() as *mut _,
            iov_len: 2,
        }];
        df.write_all(&mut iov, 20).unwrap();
        assert_eq!(df.stat().unwrap().st_size, 22);
        // Given back when idle, reopened by the next I/O.
        df.close_io(&|| false);
        assert!(df.io_open());
        df.close_io(&|| true);
        assert!(!df.io_open());
        let mut c = [0u8; 2];
        let mut iov = [libc::iovec {
            iov_base: c.as_mut_ptr() as *mut _,
            iov_len: 2,
        }];
        assert_eq!(df.read_full(&mut iov, 20).unwrap(), 2);
        assert_eq!(&c, b"XY");
        assert!(df.io_open());
    }

    /// Switched credentials are this thread's only, creations are the caller's, and the
    /// daemon's own come back when the guard drops.
    #[test]
    fn user_creds_are_per_thread_and_restored() {
        if !running_as_root() {
            return; // switching needs root
        }
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let before = thread_groups().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
        let d = dir.path().to_path_buf();
        let t = std::thread::spawn(move || {
            let g = UserCreds::switch(65534, 65534, &[4343]).unwrap();
            assert_eq!(thread_groups().unwrap(), vec![4343]);
            std::fs::write(d.join("theirs"), b"x").unwrap();
            tx.send(()).unwrap();
            back_rx.recv().unwrap();
            drop(g);
            std::fs::write(d.join("mine-again"), b"x").unwrap();
        });
        rx.recv().unwrap();
        // Meanwhile this thread is still the daemon.
        std::fs::write(dir.path().join("mine"), b"x").unwrap();
        back_tx.send(()).unwrap();
        t.join().unwrap();
        let owner = |n: &str| {
            let md = std::fs::metadata(dir.path().join(n)).unwrap();
            (md.uid(), md.gid())
        };
        assert_eq!(owner("theirs"), (65534, 65534));
        assert_eq!(owner("mine"), (0, 0));
        assert_eq!(owner("mine-again"), (0, 0));
        assert_eq!(thread_groups().unwrap(), before);
    }
}
