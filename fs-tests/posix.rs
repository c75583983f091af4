//! POSIX operations through the mount, checked against exact errno values and against
//! what lands in SOURCE. Helpers at the top (`pub(crate)`) are shared with `cli` and `stats`.

use crate::harness::*;
use std::ffi::{CString, OsStr};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

pub(crate) const NOBODY: u32 = 65534;

pub(crate) fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// The errno of a failed std call (panics if it succeeded).
pub(crate) fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
    }
}

/// A libc return value: Ok or the errno.
fn rc(r: libc::c_int) -> Result<libc::c_int, i32> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

fn open_raw(p: &Path, flags: i32, mode: u32) -> Result<i32, i32> {
    let c = cpath(p);
    // SAFETY: `c` is a NUL-terminated CString alive across the call; `mode` is passed as the
    // variadic unsigned int open reads with O_CREAT.
    rc(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) })
}

fn close(fd: i32) {
    // SAFETY: close takes a descriptor number only; the callers pass descriptors from open_raw that
    // they own and close once, no OwnedFd/File owns them.
    unsafe { libc::close(fd) };
}

pub(crate) fn lstat(p: &Path) -> libc::stat {
    let c = cpath(p);
    // SAFETY: libc::stat is plain old data (integers only), so all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated CString and `st` a live, writable libc::stat, both alive
    // across the call.
    let r = unsafe { libc::lstat(c.as_ptr(), &mut st) };
    assert_eq!(
        r,
        0,
        "lstat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    st
}

fn rename2(a: &Path, b: &Path, flags: libc::c_uint) -> Result<(), i32> {
    let (ca, cb) = (cpath(a), cpath(b));
    // SAFETY: `ca` and `cb` are NUL-terminated CStrings alive across the call.
    rc(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// listxattr as a list of names.
pub(crate) fn listxattr(p: &Path) -> Vec<Vec<u8>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: `c` is a NUL-terminated CString alive across the call; the kernel writes at most
    // `buf.len()` bytes into `buf`, a live Vec.
    let r = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len()) };
    assert!(
        r >= 0,
        "listxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    buf.truncate(r as usize);
    buf.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect()
}

/// getxattr with the errno on failure.
pub(crate) fn getxattr_raw(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: `c` and `n` are NUL-terminated CStrings alive across the call; the kernel writes at
    // most `buf.len()` bytes into `buf`, a live Vec.
    let r = unsafe {
        libc::getxattr(
            c.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut _,
            buf.len(),
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// Run `f` in a forked child that has become uid/gid 65534 with no supplementary groups;
/// returns what `f` returned (0 = success, else an errno), or panics if the child died.
/// `f` must only make raw system calls (no allocation: the test process has threads).
pub(crate) fn as_nobody(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: fork itself takes no arguments; what the child may do afterwards (the process has
    // threads) is limited below to system calls and `f`, whose contract (documented above) is the
    // same.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: in the child, only async-signal-safe system calls run: setgroups with a count of
        // 0 reads no list (null is fine), setgid/setuid take ids, and _exit never returns, so no
        // Rust code of the parent's other threads (gone in the child) is re-entered, except `f`,
        // which by this function's contract only makes system calls.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                libc::_exit(250);
            }
            let r = f();
            libc::_exit(r.clamp(0, 249));
        }
    }
    let mut status = 0;
    // SAFETY: `status` is a live int waitpid writes; `pid` is our child, not yet reaped.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    let code = libc::WEXITSTATUS(status);
    assert_ne!(code, 250, "child could not become uid 65534");
    code
}

/// The errno of `r` in an `as_nobody` child (0 on success).
pub(crate) fn child_errno(r: libc::c_int) -> i32 {
    if r < 0 {
        // SAFETY: __errno_location returns the calling thread's errno, valid for the thread's life.
        unsafe { *libc::__errno_location() }
    } else {
        0
    }
}

/// Write every dirty byte of the mount back to SOURCE (the ctl xattr on the root).
pub(crate) fn sync_mount(m: &Mount) {
    setxattr(&m.mnt, "user.extentfs.ctl", b"sync").expect("ctl sync");
}

/// Let other users reach the mount point (tempdirs are 0700).
pub(crate) fn open_up(m: &Mount) {
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn open_flags_and_errnos() {
    open_flags_and_errnos_with("cache_size=32M");
}

#[test]
fn open_flags_and_errnos_cache_kernel() {
    open_flags_and_errnos_with("cache_size=32M,cache=kernel");
}

fn open_flags_and_errnos_with(opts: &str) {
    let m = Mount::new(opts);
    let f = m.path("f");
    std::fs::write(&f, b"hello world").unwrap();

    assert_eq!(
        open_raw(&f, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644),
        Err(libc::EEXIST)
    );
    // O_CREAT without O_EXCL on an existing file opens it and keeps its data.
    let fd = open_raw(&f, libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
    close(fd);
    assert_eq!(std::fs::read(&f).unwrap(), b"hello world");

    // O_CREAT|O_EXCL on a new name creates it with the mode asked for.
    let g = m.path("g");
    let fd = open_raw(&g, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o640).unwrap();
    close(fd);
    assert_eq!(lstat(&g).st_mode & 0o7777, 0o640);
    assert_eq!(lstat(&m.src_path("g")).st_mode & 0o7777, 0o640);

    // O_APPEND appends, even after a seek to 0.
    {
        let mut a = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
        a.seek(SeekFrom::Start(0)).unwrap();
        a.write_all(b"!!").unwrap();
        a.write_all(b"??").unwrap();
    }
    assert_eq!(std::fs::read(&f).unwrap(), b"hello world!!??");

    // O_TRUNC truncates, through both open and create paths.
    {
        let mut t = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&f)
            .unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 0);
        t.write_all(b"xy").unwrap();
    }
    assert_eq!(std::fs::read(&f).unwrap(), b"xy");
    let fd = open_raw(&f, libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY, 0o644).unwrap();
    close(fd);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 0);
    assert_eq!(std::fs::read(&f).unwrap(), b"");

    assert_eq!(
        open_raw(&m.path("missing"), libc::O_RDONLY, 0),
        Err(libc::ENOENT)
    );
    assert_eq!(
        open_raw(&m.path("missing/x"), libc::O_CREAT | libc::O_WRONLY, 0o644),
        Err(libc::ENOENT)
    );
    std::fs::create_dir(m.path("d")).unwrap();
    assert_eq!(open_raw(&m.path("d"), libc::O_WRONLY, 0), Err(libc::EISDIR));
    assert_eq!(open_raw(&m.path("d"), libc::O_RDWR, 0), Err(libc::EISDIR));
    assert_eq!(
        open_raw(&f.join("x"), libc::O_RDONLY, 0),
        Err(libc::ENOTDIR),
        "a file used as a directory"
    );
}

#[test]
fn mkdir_rmdir_unlink_errnos() {
    let m = Mount::new("cache_size=32M");
    std::fs::create_dir(m.path("d")).unwrap();
    assert!(m.src_path("d").is_dir());
    assert_eq!(errno_of(std::fs::create_dir(m.path("d"))), libc::EEXIST);
    std::fs::write(m.path("d/f"), b"x").unwrap();
    assert_eq!(errno_of(std::fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(std::fs::remove_dir(m.path("d/f"))), libc::ENOTDIR);
    assert_eq!(errno_of(std::fs::remove_file(m.path("d"))), libc::EISDIR);
    assert_eq!(errno_of(std::fs::remove_file(m.path("nope"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::remove_dir(m.path("nope"))), libc::ENOENT);
    std::fs::remove_file(m.path("d/f")).unwrap();
    assert!(!m.src_path("d/f").exists());
    std::fs::remove_dir(m.path("d")).unwrap();
    assert!(!m.src_path("d").exists());
    assert_eq!(errno_of(std::fs::metadata(m.path("d"))), libc::ENOENT);
    // mkdir's mode reaches SOURCE (umask of the test process applies).
    // DirBuilder with a mode is mkdir(path, 0o700).
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(m.path("e"))
        .unwrap();
    assert_eq!(lstat(&m.src_path("e")).st_mode & 0o7777, 0o700);
}

#[test]
fn rename_variants() {
    let m = Mount::new("cache_size=32M");
    std::fs::write(m.path("a"), b"AAA").unwrap();
    std::fs::rename(m.path("a"), m.path("b")).unwrap();
    assert_eq!(errno_of(std::fs::metadata(m.path("a"))), libc::ENOENT);
    assert_eq!(std::fs::read(m.path("b")).unwrap(), b"AAA");
    sync_mount(&m);
    assert_eq!(std::fs::read(m.src_path("b")).unwrap(), b"AAA");

    // Over an existing file: the target is replaced.
    std::fs::write(m.path("c"), b"CCCCCC").unwrap();
    std::fs::rename(m.path("b"), m.path("c")).unwrap();
    assert_eq!(std::fs::read(m.path("c")).unwrap(), b"AAA");
    assert_eq!(std::fs::metadata(m.path("c")).unwrap().len(), 3);
    assert!(!m.src_path("b").exists());

    // Into a subdirectory.
    std::fs::create_dir(m.path("sub")).unwrap();
    std::fs::rename(m.path("c"), m.path("sub/c2")).unwrap();
    assert_eq!(std::fs::read(m.path("sub/c2")).unwrap(), b"AAA");
    assert_eq!(std::fs::read(m.src_path("sub/c2")).unwrap(), b"AAA");

    // Directory over a non-empty directory.
    std::fs::create_dir(m.path("d1")).unwrap();
    std::fs::create_dir(m.path("d2")).unwrap();
    std::fs::write(m.path("d2/x"), b"x").unwrap();
    assert_eq!(
        errno_of(std::fs::rename(m.path("d1"), m.path("d2"))),
        libc::ENOTEMPTY
    );
    // ... and over an empty one it works.
    std::fs::create_dir(m.path("d3")).unwrap();
    std::fs::rename(m.path("d1"), m.path("d3")).unwrap();
    assert!(!m.path("d1").exists());
    // File over a directory / directory over a file.
    std::fs::write(m.path("f"), b"f").unwrap();
    assert_eq!(
        errno_of(std::fs::rename(m.path("f"), m.path("d2"))),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(std::fs::rename(m.path("d2"), m.path("f"))),
        libc::ENOTDIR
    );

    // RENAME_NOREPLACE.
    std::fs::write(m.path("p"), b"PPP").unwrap();
    std::fs::write(m.path("q"), b"QQQQ").unwrap();
    assert_eq!(
        rename2(&m.path("p"), &m.path("q"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    assert_eq!(std::fs::read(m.path("p")).unwrap(), b"PPP");
    assert_eq!(std::fs::read(m.path("q")).unwrap(), b"QQQQ");
    rename2(&m.path("p"), &m.path("p2"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(std::fs::read(m.path("p2")).unwrap(), b"PPP");

    // RENAME_EXCHANGE swaps, data and inode numbers.
    let ino_p = std::fs::metadata(m.path("p2")).unwrap().ino();
    let ino_q = std::fs::metadata(m.path("q")).unwrap().ino();
    rename2(&m.path("p2"), &m.path("q"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(std::fs::read(m.path("p2")).unwrap(), b"QQQQ");
    assert_eq!(std::fs::read(m.path("q")).unwrap(), b"PPP");
    assert_eq!(std::fs::metadata(m.path("p2")).unwrap().ino(), ino_q);
    assert_eq!(std::fs::metadata(m.path("q")).unwrap().ino(), ino_p);
    sync_mount(&m);
    assert_eq!(std::fs::read(m.src_path("p2")).unwrap(), b"QQQQ");
    assert_eq!(
        rename2(&m.path("p2"), &m.path("nope"), libc::RENAME_EXCHANGE),
        Err(libc::ENOENT)
    );
}

#[test]
fn rename_of_dirty_open_file_keeps_data() {
    // Data written before a rename (still dirty in the pool) must follow the inode.
    let mut m = Mount::new("cache_size=32M,dirty_expire=60s");
    let mut f = std::fs::File::create(m.path("old")).unwrap();
    f.write_all(b"dirty data").unwrap();
    std::fs::rename(m.path("old"), m.path("new")).unwrap();
    f.write_all(b" more").unwrap();
    drop(f);
    assert_eq!(std::fs::read(m.path("new")).unwrap(), b"dirty data more");
    let st = m.unmount();
    assert!(st.success());
    assert_eq!(
        std::fs::read(m.src_path("new")).unwrap(),
        b"dirty data more"
    );
    assert!(!m.src_path("old").exists());
}

#[test]
fn hard_links_share_the_inode() {
    hard_links_share_the_inode_with("cache_size=32M");
}

#[test]
fn hard_links_share_the_inode_cache_kernel() {
    hard_links_share_the_inode_with("cache_size=32M,cache=kernel");
}

fn hard_links_share_the_inode_with(opts: &str) {
    let m = Mount::new(opts);
    std::fs::write(m.path("a"), b"one").unwrap();
    std::fs::hard_link(m.path("a"), m.path("b")).unwrap();
    let (ma, mb) = (
        std::fs::metadata(m.path("a")).unwrap(),
        std::fs::metadata(m.path("b")).unwrap(),
    );
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(ma.nlink(), 2);
    assert_eq!(mb.nlink(), 2);
    assert_eq!(
        lstat(&m.src_path("a")).st_ino,
        lstat(&m.src_path("b")).st_ino
    );

    // Data written through one name reads through the other (both cached paths).
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.path("a"))
            .unwrap();
        f.write_all(b"TWO and more").unwrap();
    }
    assert_eq!(std::fs::read(m.path("b")).unwrap(), b"TWO and more");
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.path("b"))
            .unwrap();
        f.write_all(b"!").unwrap();
    }
    assert_eq!(std::fs::read(m.path("a")).unwrap(), b"TWO and more!");

    assert_eq!(
        errno_of(std::fs::hard_link(m.path("a"), m.path("b"))),
        libc::EEXIST
    );
    std::fs::remove_file(m.path("a")).unwrap();
    let mb = std::fs::metadata(m.path("b")).unwrap();
    assert_eq!(mb.nlink(), 1);
    assert_eq!(std::fs::read(m.path("b")).unwrap(), b"TWO and more!");

    std::fs::create_dir(m.path("d")).unwrap();
    assert_eq!(
        errno_of(std::fs::hard_link(m.path("d"), m.path("d2"))),
        libc::EPERM
    );
}

#[test]
fn symlinks() {
    let m = Mount::new("cache_size=32M");
    std::fs::write(m.path("target"), b"T").unwrap();
    std::os::unix::fs::symlink("target", m.path("ln")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/abs", m.path("dangling")).unwrap();
    assert_eq!(
        std::fs::read_link(m.path("ln")).unwrap(),
        Path::new("target")
    );
    assert_eq!(
        std::fs::read_link(m.src_path("ln")).unwrap(),
        Path::new("target")
    );
    assert_eq!(
        std::fs::read_link(m.path("dangling")).unwrap(),
        Path::new("/nonexistent/abs")
    );
    // lstat sees the link, stat follows it.
    let l = std::fs::symlink_metadata(m.path("ln")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(l.len(), "target".len() as u64);
    let s = std::fs::metadata(m.path("ln")).unwrap();
    assert!(s.is_file());
    assert_eq!(s.ino(), std::fs::metadata(m.path("target")).unwrap().ino());
    assert_eq!(std::fs::read(m.path("ln")).unwrap(), b"T");
    assert!(std::fs::symlink_metadata(m.path("dangling"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        errno_of(std::fs::metadata(m.path("dangling"))),
        libc::ENOENT
    );
    assert_eq!(errno_of(std::fs::read_link(m.path("target"))), libc::EINVAL);
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("x", m.path("ln"))),
        libc::EEXIST
    );
    // O_NOFOLLOW on a symlink refuses to open it.
    assert_eq!(
        open_raw(&m.path("ln"), libc::O_RDONLY | libc::O_NOFOLLOW, 0),
        Err(libc::ELOOP)
    );
    std::fs::remove_file(m.path("ln")).unwrap();
    assert!(m.src_path("target").exists());
    assert!(std::fs::symlink_metadata(m.src_path("ln")).is_err());
}

#[test]
fn special_files() {
    let m = Mount::new("cache_size=32M");
    let fifo = cpath(&m.path("fifo"));
    // SAFETY: `fifo` is a NUL-terminated CString alive across the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert!(std::fs::metadata(m.path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(std::fs::metadata(m.src_path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());

    let sock = cpath(&m.path("sock"));
    assert_eq!(
        // SAFETY: `sock` is a NUL-terminated CString alive across the call.
        unsafe { libc::mknod(sock.as_ptr(), libc::S_IFSOCK | 0o600, 0) },
        0
    );
    assert!(std::fs::metadata(m.path("sock"))
        .unwrap()
        .file_type()
        .is_socket());
    assert!(std::fs::metadata(m.src_path("sock"))
        .unwrap()
        .file_type()
        .is_socket());

    // A listening socket bound through the mount shows as a socket too.
    let l = std::os::unix::net::UnixListener::bind(m.path("bound"));
    match l {
        Ok(_l) => assert!(std::fs::metadata(m.path("bound"))
            .unwrap()
            .file_type()
            .is_socket()),
        Err(e) => panic!("bind a unix socket in the mount: {e}"),
    }

    let dev = cpath(&m.path("null"));
    let rdev = libc::makedev(1, 3);
    assert_eq!(
        // SAFETY: `dev` is a NUL-terminated CString alive across the call.
        unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, rdev) },
        0,
        "mknod chr: {}",
        std::io::Error::last_os_error()
    );
    let st = lstat(&m.path("null"));
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(st.st_rdev, rdev);
    let sst = lstat(&m.src_path("null"));
    assert_eq!(sst.st_mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(sst.st_rdev, rdev);

    let bdev = cpath(&m.path("blk"));
    let brdev = libc::makedev(7, 200);
    assert_eq!(
        // SAFETY: `bdev` is a NUL-terminated CString alive across the call.
        unsafe { libc::mknod(bdev.as_ptr(), libc::S_IFBLK | 0o600, brdev) },
        0
    );
    let st = lstat(&m.path("blk"));
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFBLK);
    assert_eq!(st.st_rdev, brdev);

    // readdir reports the right types too.
    let mut kinds: Vec<(String, std::fs::FileType)> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into(),
                e.file_type().unwrap(),
            )
        })
        .collect();
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = kinds.iter().map(|k| k.0.as_str()).collect();
    assert_eq!(names, ["blk", "bound", "fifo", "null", "sock"]);
    assert!(kinds[0].1.is_block_device());
    assert!(kinds[1].1.is_socket());
    assert!(kinds[2].1.is_fifo());
    assert!(kinds[3].1.is_char_device());
    assert!(kinds[4].1.is_socket());
}

#[test]
fn chmod_chown_utimens() {
    chmod_chown_utimens_with("cache_size=32M");
}

#[test]
fn chmod_chown_utimens_cache_kernel() {
    chmod_chown_utimens_with("cache_size=32M,cache=kernel");
}

fn chmod_chown_utimens_with(opts: &str) {
    let m = Mount::new(opts);
    std::fs::write(m.path("f"), b"data").unwrap();
    std::fs::set_permissions(m.path("f"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(lstat(&m.path("f")).st_mode & 0o7777, 0o4751);
    assert_eq!(lstat(&m.src_path("f")).st_mode & 0o7777, 0o4751);
    std::fs::set_permissions(m.path("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(lstat(&m.path("f")).st_mode & 0o7777, 0o600);

    std::os::unix::fs::chown(m.path("f"), Some(NOBODY), Some(NOBODY)).unwrap();
    let st = lstat(&m.path("f"));
    assert_eq!((st.st_uid, st.st_gid), (NOBODY, NOBODY));
    let st = lstat(&m.src_path("f"));
    assert_eq!((st.st_uid, st.st_gid), (NOBODY, NOBODY));
    // Only the group.
    std::os::unix::fs::chown(m.path("f"), None, Some(0)).unwrap();
    let st = lstat(&m.path("f"));
    assert_eq!((st.st_uid, st.st_gid), (NOBODY, 0));
    // lchown of a symlink changes the link, not its target.
    std::os::unix::fs::symlink("f", m.path("ln")).unwrap();
    std::os::unix::fs::lchown(m.path("ln"), Some(NOBODY), Some(NOBODY)).unwrap();
    assert_eq!(lstat(&m.src_path("ln")).st_uid, NOBODY);
    assert_eq!(lstat(&m.src_path("f")).st_gid, 0);

    let c = cpath(&m.path("f"));
    let set = |a: libc::timespec, b: libc::timespec| {
        let ts = [a, b];
        // SAFETY: `c` is a NUL-terminated CString and `ts` exactly the two timespecs utimensat
        // reads, both alive across the call.
        let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
        assert_eq!(r, 0, "utimensat: {}", std::io::Error::last_os_error());
    };
    let t = |s: i64, ns: i64| libc::timespec {
        tv_sec: s,
        tv_nsec: ns,
    };
    set(t(1_000_000_000, 123_456_789), t(1_500_000_000, 987_654_321));
    let st = lstat(&m.path("f"));
    assert_eq!(
        (st.st_atime, st.st_atime_nsec),
        (1_000_000_000, 123_456_789)
    );
    assert_eq!(
        (st.st_mtime, st.st_mtime_nsec),
        (1_500_000_000, 987_654_321)
    );
    let st = lstat(&m.src_path("f"));
    assert_eq!(
        (st.st_mtime, st.st_mtime_nsec),
        (1_500_000_000, 987_654_321)
    );

    // UTIME_OMIT for atime, explicit mtime: atime unchanged.
    set(t(0, libc::UTIME_OMIT), t(1_600_000_000, 5));
    let st = lstat(&m.path("f"));
    assert_eq!(
        (st.st_atime, st.st_atime_nsec),
        (1_000_000_000, 123_456_789)
    );
    assert_eq!((st.st_mtime, st.st_mtime_nsec), (1_600_000_000, 5));

    // UTIME_NOW for mtime, UTIME_OMIT for atime.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    set(t(0, libc::UTIME_OMIT), t(0, libc::UTIME_NOW));
    let st = lstat(&m.path("f"));
    assert_eq!(
        (st.st_atime, st.st_atime_nsec),
        (1_000_000_000, 123_456_789)
    );
    assert!(
        st.st_mtime >= before - 1 && st.st_mtime <= before + 5,
        "mtime {} not now ({before})",
        st.st_mtime
    );
    // UTIME_NOW for atime, mtime omitted: mtime unchanged.
    let mtime = (st.st_mtime, st.st_mtime_nsec);
    set(t(0, libc::UTIME_NOW), t(0, libc::UTIME_OMIT));
    let st = lstat(&m.path("f"));
    assert!(st.st_atime >= before - 1, "atime {} not now", st.st_atime);
    assert_eq!((st.st_mtime, st.st_mtime_nsec), mtime);

    // A write bumps mtime; an explicit mtime after a write wins.
    std::thread::sleep(std::time::Duration::from_millis(20));
    set(t(1_000_000_000, 0), t(1_000_000_000, 0));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.path("f"))
            .unwrap();
        f.write_all(b"DATA").unwrap();
    }
    let st = lstat(&m.path("f"));
    assert!(
        st.st_mtime >= before - 1,
        "write did not bump mtime: {}",
        st.st_mtime
    );
    set(t(0, libc::UTIME_OMIT), t(1_234_567_890, 0));
    assert_eq!(lstat(&m.path("f")).st_mtime, 1_234_567_890);
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"DATA");
}

#[test]
fn truncate_and_sizes() {
    truncate_and_sizes_with("cache_size=32M");
}

#[test]
fn truncate_and_sizes_cache_kernel() {
    truncate_and_sizes_with("cache_size=32M,cache=kernel");
}

fn truncate_and_sizes_with(opts: &str) {
    let m = Mount::new(opts);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.path("f"), &data).unwrap();
    assert_eq!(std::fs::metadata(m.path("f")).unwrap().len(), 100_000);

    let c = cpath(&m.path("f"));
    // SAFETY: `c` is a NUL-terminated CString alive across the call.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 5000) }, 0);
    assert_eq!(std::fs::metadata(m.path("f")).unwrap().len(), 5000);
    assert_eq!(std::fs::read(m.path("f")).unwrap(), &data[..5000]);
    // Grow: the new bytes read as zeros (also those that once held data).
    // SAFETY: `c` is a NUL-terminated CString alive across the call.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 20_000) }, 0);
    let got = std::fs::read(m.path("f")).unwrap();
    assert_eq!(got.len(), 20_000);
    assert_eq!(&got[..5000], &data[..5000]);
    assert!(
        got[5000..].iter().all(|&b| b == 0),
        "stale bytes after grow"
    );
    // SAFETY: `c` is a NUL-terminated CString alive across the call.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 0) }, 0);
    assert_eq!(std::fs::metadata(m.path("f")).unwrap().len(), 0);
    // SAFETY: `c` is a NUL-terminated CString alive across the call; a negative length is refused
    // (EINVAL), not UB.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), -1) }, -1);
    assert_eq!(last_errno(), libc::EINVAL);
    std::fs::create_dir(m.path("d")).unwrap();
    let d = cpath(&m.path("d"));
    // SAFETY: `d` is a NUL-terminated CString alive across the call.
    assert_eq!(unsafe { libc::truncate(d.as_ptr(), 0) }, -1);
    assert_eq!(last_errno(), libc::EISDIR);

    // Sizes seen by stat and fstat while data is only in the pool, then in SOURCE.
    let mut f = std::fs::File::create(m.path("g")).unwrap();
    f.write_all(&[7u8; 12345]).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 12345);
    assert_eq!(std::fs::metadata(m.path("g")).unwrap().len(), 12345);
    f.set_len(777).unwrap();
    assert_eq!(std::fs::metadata(m.path("g")).unwrap().len(), 777);
    f.sync_all().unwrap();
    assert_eq!(std::fs::metadata(m.src_path("g")).unwrap().len(), 777);
    // Write past the end: a hole of zeros.
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(b"end").unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(m.path("g")).unwrap().len(), (1 << 20) + 3);
    let mut buf = vec![0u8; 10];
    let mut f = std::fs::File::open(m.path("g")).unwrap();
    f.seek(SeekFrom::Start(500_000)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [0u8; 10]);
}

#[test]
fn inode_numbers_stable_across_remount() {
    let mut m = Mount::new("cache_size=32M");
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/f"), b"x").unwrap();
    std::fs::write(m.path("g"), b"y").unwrap();
    let ino = |m: &Mount, p: &str| std::fs::metadata(m.path(p)).unwrap().ino();
    let before = [ino(&m, "d"), ino(&m, "d/f"), ino(&m, "g")];
    assert_ne!(before[0], before[1]);
    assert_ne!(before[1], before[2]);
    m.remount();
    let after = [ino(&m, "d"), ino(&m, "d/f"), ino(&m, "g")];
    assert_eq!(before, after);
    // readdir's d_ino agrees with stat's st_ino.
    for e in std::fs::read_dir(&m.mnt).unwrap() {
        let e = e.unwrap();
        assert_eq!(e.ino(), std::fs::symlink_metadata(e.path()).unwrap().ino());
    }
}

#[test]
fn readdir_2000_entries_each_once() {
    let m = Mount::with_source("cache_size=32M", |src| {
        std::fs::create_dir(src.join("pre")).unwrap();
        for i in 0..1000 {
            std::fs::write(src.join(format!("pre/source-made-{i:05}")), b"").unwrap();
        }
    });
    // Half made in SOURCE before the mount, half through the mount.
    for i in 0..1000 {
        std::fs::write(
            m.path(&format!("pre/mount-made-{i:05}-{}", "x".repeat(i % 90))),
            b"",
        )
        .unwrap();
    }
    let mut want: Vec<String> = (0..1000)
        .map(|i| format!("source-made-{i:05}"))
        .chain((0..1000).map(|i| format!("mount-made-{i:05}-{}", "x".repeat(i % 90))))
        .collect();
    want.sort();
    for round in 0..2 {
        let mut got: Vec<String> = std::fs::read_dir(m.path("pre"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(got.len(), 2000, "round {round}: entries returned");
        got.sort();
        let mut dedup = got.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), 2000, "round {round}: duplicates");
        assert_eq!(got, want, "round {round}");
    }
    // `.` and `..` come from raw getdents and are there exactly once.
    let c = cpath(&m.path("pre"));
    // SAFETY: `c` is a NUL-terminated CString alive across the call; the stream returned is checked
    // non-null below and closed once, at the end.
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!dir.is_null());
    let (mut dots, mut total) = (0, 0);
    loop {
        // SAFETY: `dir` is the non-null stream opened above, used only by this thread and not yet
        // closed.
        let e = unsafe { libc::readdir(dir) };
        if e.is_null() {
            break;
        }
        // SAFETY: readdir returned non-null: a dirent valid until the next readdir/closedir on
        // `dir`, and glibc NUL-terminates its d_name; `name` is not used past this iteration.
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) }.to_bytes();
        if name == b"." || name == b".." {
            dots += 1;
        }
        total += 1;
    }
    // SAFETY: `dir` is the stream opened above, closed only here, once; no dirent pointer is used
    // after.
    unsafe { libc::closedir(dir) };
    assert_eq!((dots, total), (2, 2002));
}

#[test]
fn odd_names() {
    let m = Mount::new("cache_size=32M");
    let bad = OsStr::from_bytes(b"\xff\xfe");
    std::fs::write(m.mnt.join(bad), b"bytes").unwrap();
    assert_eq!(std::fs::read(m.mnt.join(bad)).unwrap(), b"bytes");
    sync_mount(&m);
    assert_eq!(std::fs::read(m.src.join(bad)).unwrap(), b"bytes");
    let names: Vec<Vec<u8>> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(names, vec![b"\xff\xfe".to_vec()]);

    let n255 = "n".repeat(255);
    std::fs::write(m.path(&n255), b"long").unwrap();
    assert_eq!(std::fs::read(m.path(&n255)).unwrap(), b"long");
    assert!(m.src_path(&n255).exists());
    let n256 = "n".repeat(256);
    assert_eq!(
        errno_of(std::fs::write(m.path(&n256), b"x")),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(std::fs::metadata(m.path(&n256))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(std::fs::create_dir(m.path(&n256))),
        libc::ENAMETOOLONG
    );
    // Spaces, newlines, leading dashes.
    for name in ["a b", "new\nline", "-dash", " lead"] {
        std::fs::write(m.path(name), name).unwrap();
        sync_mount(&m);
        assert_eq!(std::fs::read_to_string(m.src_path(name)).unwrap(), name);
    }
}

#[test]
fn statvfs_is_sane() {
    let m = Mount::new("cache_size=32M");
    let s = statvfs(&m.mnt);
    let ss = statvfs(&m.src);
    assert!(
        s.f_bsize > 0 && s.f_frsize > 0,
        "{} {}",
        s.f_bsize,
        s.f_frsize
    );
    assert!(s.f_blocks > 0);
    assert!(s.f_bfree <= s.f_blocks && s.f_bavail <= s.f_bfree);
    assert!(s.f_files > 0 && s.f_ffree <= s.f_files);
    assert_eq!(s.f_namemax, 255);
    // Total size equals SOURCE's filesystem (byte totals, in case the block sizes differ).
    assert_eq!(
        s.f_blocks * s.f_frsize,
        ss.f_blocks * ss.f_frsize,
        "total bytes differ from SOURCE's filesystem"
    );
    // Also on a file inside.
    std::fs::write(m.path("f"), b"x").unwrap();
    assert_eq!(statvfs(&m.path("f")).f_blocks, s.f_blocks);
}

#[test]
fn user_xattrs_pass_through() {
    let m = Mount::new("cache_size=32M");
    std::fs::write(m.path("f"), b"x").unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    for rel in ["f", "d"] {
        let p = m.path(rel);
        setxattr(&p, "user.color", b"blue").unwrap();
        setxattr(&p, "user.empty", b"").unwrap();
        assert_eq!(getxattr_raw(&p, "user.color").unwrap(), b"blue");
        assert_eq!(
            getxattr_raw(&m.src_path(rel), "user.color").unwrap(),
            b"blue"
        );
        assert_eq!(getxattr_raw(&p, "user.empty").unwrap(), b"");
        let mut names = listxattr(&p);
        names.sort();
        assert_eq!(names, vec![b"user.color".to_vec(), b"user.empty".to_vec()]);
        assert_eq!(getxattr_raw(&p, "user.missing"), Err(libc::ENODATA));

        // Size probe (size 0) and a too-small buffer.
        let c = cpath(&p);
        let n = CString::new("user.color").unwrap();
        // SAFETY: `c` and `n` are NUL-terminated CStrings alive across the call; a null buffer of
        // size 0 only asks for the value's size.
        let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(r, 4);
        let mut small = [0u8; 2];
        // SAFETY: `c` and `n` are NUL-terminated CStrings alive across the call; the kernel writes
        // at most `small.len()` (2) bytes into `small`.
        let r = unsafe {
            libc::getxattr(
                c.as_ptr(),
                n.as_ptr(),
                small.as_mut_ptr() as *mut _,
                small.len(),
            )
        };
        assert_eq!((r, last_errno()), (-1, libc::ERANGE));

        // XATTR_CREATE / XATTR_REPLACE semantics.
        let v = b"red";
        // SAFETY: `c` and `n` are NUL-terminated CStrings alive across the call; the kernel reads 3
        // bytes from `v`, which holds 3.
        let r = unsafe {
            libc::setxattr(
                c.as_ptr(),
                n.as_ptr(),
                v.as_ptr() as *const _,
                3,
                libc::XATTR_CREATE,
            )
        };
        assert_eq!((r, last_errno()), (-1, libc::EEXIST));
        let nn = CString::new("user.new").unwrap();
        // SAFETY: `c` and `nn` are NUL-terminated CStrings alive across the call; the kernel reads
        // 3 bytes from `v`, which holds 3.
        let r = unsafe {
            libc::setxattr(
                c.as_ptr(),
                nn.as_ptr(),
                v.as_ptr() as *const _,
                3,
                libc::XATTR_REPLACE,
            )
        };
        assert_eq!((r, last_errno()), (-1, libc::ENODATA));

        // SAFETY: `c` and `n` are NUL-terminated CStrings alive across the call.
        let r = unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) };
        assert_eq!(r, 0);
        assert_eq!(getxattr_raw(&p, "user.color"), Err(libc::ENODATA));
        assert_eq!(
            getxattr_raw(&m.src_path(rel), "user.color"),
            Err(libc::ENODATA)
        );
        // SAFETY: `c` and `n` are NUL-terminated CStrings alive across the call.
        let r = unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) };
        assert_eq!((r, last_errno()), (-1, libc::ENODATA));
    }
    // Set in SOURCE behind the mount's back: visible through the mount.
    let sp = cpath(&m.src_path("f"));
    let n = CString::new("user.behind").unwrap();
    assert_eq!(
        // SAFETY: `sp` and `n` are NUL-terminated CStrings alive across the call; the kernel reads
        // 1 byte from the static b"1".
        unsafe { libc::setxattr(sp.as_ptr(), n.as_ptr(), b"1".as_ptr() as *const _, 1, 0) },
        0
    );
    assert_eq!(getxattr_raw(&m.path("f"), "user.behind").unwrap(), b"1");
}

#[test]
fn permissions_with_allow_other() {
    let m = Mount::with_source("cache_size=32M,allow_other", |src| {
        std::fs::write(src.join("public"), b"for everyone").unwrap();
        std::fs::set_permissions(src.join("public"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::write(src.join("secret"), b"root only").unwrap();
        std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::create_dir(src.join("open")).unwrap();
        std::fs::set_permissions(src.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::create_dir(src.join("closed")).unwrap();
        std::fs::set_permissions(src.join("closed"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    });
    open_up(&m);

    let public = cpath(&m.path("public"));
    let secret = cpath(&m.path("secret"));
    let mine = cpath(&m.path("open/mine"));
    let mydir = cpath(&m.path("open/mydir"));
    let nope = cpath(&m.path("closed/nope"));

    // Reads the 0644 file (and its bytes).
    // SAFETY: in the as_nobody child (system calls only, as its contract asks): `public` is a
    // CString made before the fork, and read writes at most `b.len()` bytes into the child's stack
    // buffer `b`.
    let r = as_nobody(|| unsafe {
        let fd = libc::open(public.as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            return child_errno(fd);
        }
        let mut b = [0u8; 64];
        let n = libc::read(fd, b.as_mut_ptr() as *mut _, b.len());
        if n != 12 || &b[..12] != b"for everyone" {
            return 200;
        }
        0
    });
    assert_eq!(r, 0, "nobody reading a 0644 file");
    // SAFETY: in the as_nobody child: `public` is a CString made before the fork; open without
    // O_CREAT reads no mode.
    let r = as_nobody(|| unsafe { child_errno(libc::open(public.as_ptr(), libc::O_WRONLY)) });
    assert_eq!(r, libc::EACCES, "nobody writing a 0644 root file");
    // SAFETY: in the as_nobody child: `secret` is a CString made before the fork; open without
    // O_CREAT reads no mode.
    let r = as_nobody(|| unsafe { child_errno(libc::open(secret.as_ptr(), libc::O_RDONLY)) });
    assert_eq!(r, libc::EACCES, "nobody reading a 0600 root file");
    // SAFETY: in the as_nobody child: `nope` is a CString made before the fork; open is given the
    // mode O_CREAT reads.
    let r = as_nobody(|| unsafe {
        child_errno(libc::open(
            nope.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        ))
    });
    assert_eq!(r, libc::EACCES, "nobody creating in a 0755 root dir");
    // SAFETY: in the as_nobody child: `public` is a CString made before the fork.
    let r = as_nobody(|| unsafe { child_errno(libc::chmod(public.as_ptr(), 0o777)) });
    assert_eq!(r, libc::EPERM, "nobody chmod of root's file");

    // Creates in a 0777 directory: owned by nobody in SOURCE.
    // SAFETY: in the as_nobody child (system calls only): `mine` and `mydir` are CStrings made
    // before the fork, open gets the mode O_CREAT reads, write reads 4 bytes from the static
    // b"mine", and `fd` is closed once.
    let r = as_nobody(|| unsafe {
        let fd = libc::open(mine.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
        if fd < 0 {
            return child_errno(fd);
        }
        let n = libc::write(fd, b"mine".as_ptr() as *const _, 4);
        libc::close(fd);
        if n != 4 {
            return 201;
        }
        child_errno(libc::mkdir(mydir.as_ptr(), 0o700))
    });
    assert_eq!(r, 0, "nobody creating in a 0777 dir");
    for rel in ["open/mine", "open/mydir"] {
        let st = lstat(&m.src_path(rel));
        assert_eq!((st.st_uid, st.st_gid), (NOBODY, NOBODY), "{rel} in SOURCE");
        let st = lstat(&m.path(rel));
        assert_eq!(
            (st.st_uid, st.st_gid),
            (NOBODY, NOBODY),
            "{rel} in the mount"
        );
    }
    assert_eq!(lstat(&m.src_path("open/mine")).st_mode & 0o7777, 0o600);
    // Root still reads it; nobody reads its own 0600 file back.
    assert_eq!(std::fs::read(m.path("open/mine")).unwrap(), b"mine");
    // SAFETY: in the as_nobody child (system calls only): `mine` is a CString made before the fork;
    // `fd` is closed once.
    let r = as_nobody(|| unsafe {
        let fd = libc::open(mine.as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            return child_errno(fd);
        }
        libc::close(fd);
        0
    });
    assert_eq!(r, 0);

    // The same with the setpriv tool, as a separate process image.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(m.path("secret"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(m.path("public"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"for everyone");
}

#[test]
fn without_allow_other_others_are_refused() {
    let m = Mount::with_source("cache_size=32M", |src| {
        std::fs::write(src.join("public"), b"x").unwrap();
        std::fs::set_permissions(src.join("public"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    });
    open_up(&m);
    let public = cpath(&m.path("public"));
    // SAFETY: in the as_nobody child: `public` is a CString made before the fork; open without
    // O_CREAT reads no mode.
    let r = as_nobody(|| unsafe { child_errno(libc::open(public.as_ptr(), libc::O_RDONLY)) });
    assert_eq!(
        r,
        libc::EACCES,
        "FUSE refuses other users without allow_other"
    );
}

#[test]
fn readdir_while_unlinking_sees_every_entry_once() {
    // `rm -r` style: unlink each entry as it is returned; entries not yet removed must still
    // come back exactly once, and the directory ends empty.
    let m = Mount::with_source("cache_size=32M", |src| {
        std::fs::create_dir(src.join("d")).unwrap();
        for i in 0..2000 {
            std::fs::write(src.join(format!("d/entry-{i:05}")), b"").unwrap();
        }
    });
    let mut seen = std::collections::HashSet::new();
    for e in std::fs::read_dir(m.path("d")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        assert!(seen.insert(name.clone()), "{name} returned twice");
        std::fs::remove_file(e.path()).unwrap();
    }
    assert_eq!(seen.len(), 2000);
    assert_eq!(std::fs::read_dir(m.path("d")).unwrap().count(), 0);
    std::fs::remove_dir(m.path("d")).unwrap();
    assert!(!m.src_path("d").exists());
}

/// A write by an unprivileged user drops set-user-ID, and set-group-ID on a group-executable
/// file, as on a local filesystem; the mode seen through the mount changes at once.
fn setid_cleared_on_write_by_non_owner(opts: &str) {
    let m = Mount::new(opts);
    open_up(&m);
    let f = m.path("suid");
    std::fs::write(&f, b"x").unwrap();
    for (mode, want) in [(0o6777, 0o0777), (0o2757, 0o0757)] {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        let path = cpath(&f);
        // SAFETY: in the as_nobody child (system calls only): `path` is a CString made before the
        // fork, write reads 1 byte from the static b"y", and `fd` is closed once.
        let r = as_nobody(|| unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
            if fd < 0 {
                return child_errno(fd);
            }
            let w = libc::write(fd, b"y".as_ptr() as *const _, 1);
            libc::close(fd);
            if w == 1 {
                0
            } else {
                child_errno(-1)
            }
        });
        assert_eq!(r, 0, "write as nobody failed: errno {r}");
        let seen = lstat(&f).st_mode & 0o7777;
        assert_eq!(seen, want, "mode {mode:o} after a write by nobody ({opts})");
        assert_eq!(lstat(&m.src_path("suid")).st_mode & 0o7777, want);
    }
    // Root's writes keep the bits.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o6777)).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"z")
        .unwrap();
    assert_eq!(lstat(&f).st_mode & 0o7777, 0o6777);
}

#[test]
fn setid_cleared_on_write_by_non_owner_pool() {
    setid_cleared_on_write_by_non_owner("cache_size=16M,allow_other");
}

#[test]
fn setid_cleared_on_write_by_non_owner_kernel() {
    setid_cleared_on_write_by_non_owner("cache_size=16M,allow_other,cache=kernel");
}

/// lsetxattr/lgetxattr/llistxattr/lremovexattr: the errno on failure.
fn lxattr(p: &Path, op: &str, name: &str, value: &[u8]) -> Result<Vec<u8>, i32> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: `c` and `n` are NUL-terminated CStrings alive across each call; the set reads
    // `value.len()` bytes from `value`, get and list write at most `buf.len()` bytes into `buf`, a
    // live Vec.
    let r = unsafe {
        match op {
            "set" => libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr() as *const _,
                value.len(),
                0,
            ) as isize,
            "get" => libc::lgetxattr(
                c.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr() as *mut _,
                buf.len(),
            ),
            "list" => libc::llistxattr(c.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len()),
            _ => libc::lremovexattr(c.as_ptr(), n.as_ptr()) as isize,
        }
    };
    if r < 0 {
        return Err(last_errno());
    }
    buf.truncate(r.max(0) as usize);
    Ok(buf)
}

#[test]
fn xattrs_on_symlinks() {
    // As on a local filesystem: trusted.* works on the link itself, user.* is refused (EPERM).
    let m = Mount::new("cache_size=16M");
    std::fs::write(m.path("target"), b"T").unwrap();
    std::os::unix::fs::symlink("target", m.path("ln")).unwrap();
    let ln = m.path("ln");
    lxattr(&ln, "set", "trusted.colour", b"red").unwrap();
    assert_eq!(lxattr(&ln, "get", "trusted.colour", b"").unwrap(), b"red");
    assert_eq!(lxattr(&ln, "list", "", b"").unwrap(), b"trusted.colour\0");
    assert_eq!(
        lxattr(&m.src_path("ln"), "get", "trusted.colour", b"").unwrap(),
        b"red"
    );
    assert_eq!(lxattr(&ln, "set", "user.colour", b"red"), Err(libc::EPERM));
    // Not the target's.
    assert_eq!(
        lxattr(&m.path("target"), "get", "trusted.colour", b""),
        Err(libc::ENODATA)
    );
    lxattr(&ln, "remove", "trusted.colour", b"").unwrap();
    assert_eq!(
        lxattr(&ln, "get", "trusted.colour", b""),
        Err(libc::ENODATA)
    );
}

/// A minimal access ACL (user::rwx group::rwx other::rwx), in the xattr's binary form.
fn acl_rwx_all() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for tag in [0x01u16, 0x04, 0x20] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&7u16.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

#[test]
fn acl_set_by_a_non_member_drops_setgid() {
    // chmod would drop S_ISGID for an owner outside the file's group; setting an ACL must too
    // (generic/375), while root keeps it.
    let m = Mount::new("cache_size=16M,allow_other");
    open_up(&m);
    for (name, dir) in [("f", false), ("d", true)] {
        let p = m.path(name);
        if dir {
            std::fs::create_dir(&p).unwrap();
        } else {
            std::fs::write(&p, b"x").unwrap();
        }
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(0)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o2777)).unwrap();
        let acl = acl_rwx_all();
        let c = cpath(&p);
        // SAFETY: in the as_nobody child: `c` is a CString and `acl` a buffer made before the fork,
        // and setxattr reads `acl.len()` bytes from it; the name is a static C string.
        let r = as_nobody(|| unsafe {
            child_errno(libc::setxattr(
                c.as_ptr(),
                c"system.posix_acl_access".as_ptr(),
                acl.as_ptr() as *const _,
                acl.len(),
                0,
            ))
        });
        assert_eq!(r, 0, "setxattr of the ACL as nobody: errno {r}");
        assert_eq!(lstat(&p).st_mode & 0o7777, 0o777, "{name}: S_ISGID kept");
        assert_eq!(lstat(&m.src_path(name)).st_mode & 0o7777, 0o777);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o2777)).unwrap();
        setxattr(&p, "system.posix_acl_access", &acl).unwrap();
        assert_eq!(
            lstat(&p).st_mode & 0o7777,
            0o2777,
            "{name}: root's ACL change"
        );
    }
}

#[test]
fn a_write_is_timed_in_order_with_what_changed_before_and_after_it() {
    // As generic/423 checks. SOURCE's kernel gives a fine-grained timestamp to a file whose
    // times were looked at, and stamps everything after it no earlier (multigrain
    // timestamps); the coarse clock a write is timed with runs behind such a stamp for up to
    // a tick, and stamps objects created after a write no earlier than it. Under
    // close-to-open the writeback at close is SOURCE's own stamp of the write.
    let m = Mount::new("cache_size=16M");
    for i in 0..200 {
        let before = m.src_path(&format!("before{i}"));
        std::fs::write(&before, b"1").unwrap();
        std::fs::metadata(&before).unwrap();
        std::fs::write(&before, b"2").unwrap();
        let f = m.path(&format!("w{i}"));
        std::fs::write(&f, b"written through the mount").unwrap();
        let d = m.path(&format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        let after = m.path(&format!("after{i}"));
        std::fs::write(&after, b"").unwrap();
        let (tb, tf, td, ta) = (
            times(&before)[1],
            times(&f)[1],
            times(&d)[1],
            times(&after)[1],
        );
        assert!(
            tb <= tf,
            "round {i}: the write's mtime {tf:?} is before {tb:?}"
        );
        assert!(
            tf <= td,
            "round {i}: dir {td:?} older than the file written before it {tf:?}"
        );
        assert!(
            tf <= ta,
            "round {i}: the write's mtime {tf:?} is after {ta:?}"
        );
        assert_eq!(
            times(&m.src_path(&format!("w{i}")))[1],
            tf,
            "round {i}: SOURCE's mtime"
        );
    }
}

fn times(p: &Path) -> [(i64, i64); 3] {
    let st = lstat(p);
    [
        (st.st_atime, st.st_atime_nsec),
        (st.st_mtime, st.st_mtime_nsec),
        (st.st_ctime, st.st_ctime_nsec),
    ]
}

#[test]
fn reads_update_atime_as_the_mount_options_say() {
    // Reads are served from the pool; SOURCE records the access through a private mount with
    // this mount's atime options, so mtime and ctime never move (generic/003).
    for (opt, first_moves, second_moves) in [
        ("strictatime", true, true),
        ("relatime", true, false),
        ("noatime", false, false),
    ] {
        let m = Mount::new(&format!("cache_size=16M,{opt}"));
        let p = m.path("f");
        std::fs::write(&p, b"data").unwrap();
        sync_mount(&m);
        let t0 = times(&p);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
        let t1 = times(&p);
        assert_eq!(
            t1[0] > t0[0],
            first_moves,
            "{opt}: atime after the first read"
        );
        assert_eq!(t1[1..], t0[1..], "{opt}: mtime/ctime moved on a read");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::read(&p).unwrap();
        let t2 = times(&p);
        assert_eq!(
            t2[0] > t1[0],
            second_moves,
            "{opt}: atime after the second read"
        );
        assert_eq!(t2[1..], t0[1..], "{opt}: mtime/ctime moved on a read");
        assert_eq!(times(&m.src_path("f"))[0], t2[0], "{opt}: SOURCE's atime");
    }
}

#[test]
fn mtime_of_a_write_survives_fsync_and_remount() {
    let mut m = Mount::new("cache_size=16M");
    let p = m.path("f");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(b"abc").unwrap();
    let written = times(&p);
    // The writeback below happens in a later clock tick than the write.
    std::thread::sleep(std::time::Duration::from_millis(30));
    f.sync_all().unwrap();
    assert_eq!(
        times(&m.src_path("f"))[1],
        written[1],
        "SOURCE's mtime after fsync"
    );
    drop(f);
    m.remount();
    assert_eq!(times(&p)[1], written[1], "mtime after remount");
}

#[test]
fn close_starts_writeback() {
    // close (FUSE flush) queues the file's dirty data at once, not after dirty_expire.
    let m = Mount::new("cache_size=16M,dirty_expire=60s");
    std::fs::write(m.path("f"), b"closed").unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read(m.src_path("f")).unwrap() != b"closed" {
        assert!(
            t0.elapsed().as_secs() < 10,
            "not written back 10 s after close"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
