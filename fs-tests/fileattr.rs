//! Inode flags through the mount (chattr/lsattr ioctls passed to SOURCE) and what the
//! immutable and append-only flags forbid, compared against SOURCE, in both cache modes.

use crate::harness::*;
use crate::posix::{as_nobody, child_errno, cpath, open_up};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
const IMMUTABLE: u32 = 0x10;
const APPEND: u32 = 0x20;
const NODUMP: u32 = 0x40;
const XFLAG_APPEND: u32 = 0x10;

fn open_ro(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

/// FS_IOC_GETFLAGS of `p`, or the errno.
fn get_flags(p: &Path) -> Result<u32, i32> {
    let f = open_ro(p);
    let mut v: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int into `v`, live across the call; `f` is open.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &mut v) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(v as u32)
    }
}

/// The flags these tests set or clear; the others (ext4's extents flag) are kept, as
/// chattr keeps them (ext4 may refuse to clear the extents flag).
const MANAGED: u32 = IMMUTABLE | APPEND | NODUMP;

/// As `chattr`: FS_IOC_GETFLAGS, then FS_IOC_SETFLAGS with the MANAGED bits replaced by
/// `flags` (0 or the errno).
fn set_flags_fd(fd: i32, flags: u32) -> i32 {
    let mut v: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int into `v`, live across the call.
    let r = unsafe { libc::ioctl(fd, FS_IOC_GETFLAGS, &mut v) };
    if r < 0 {
        return child_errno(r);
    }
    v = ((v as u32 & !MANAGED) | flags) as libc::c_int;
    // SAFETY: FS_IOC_SETFLAGS reads one int from `v`, live across the call.
    child_errno(unsafe { libc::ioctl(fd, FS_IOC_SETFLAGS, &mut v) })
}

fn set_flags(p: &Path, flags: u32) -> i32 {
    let f = open_ro(p);
    set_flags_fd(f.as_raw_fd(), flags)
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Clears the flags in SOURCE at the end, so the temporary directories can be removed even
/// when an assertion failed.
struct Unflag(Vec<PathBuf>);

impl Drop for Unflag {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.exists() {
                let _ = set_flags(p, 0);
            }
        }
    }
}

fn flags_restrict_data(opts: &str) {
    let m = Mount::new(opts);
    let f = m.path("f");
    let src = m.src_path("f");
    let _unflag = Unflag(vec![src.clone(), m.src_path("g")]);
    std::fs::write(&f, b"0123456789").unwrap();

    // Data written and still only in the cache when +i is set reaches SOURCE first.
    let held = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    held.write_all_at(b"abcd", 10).unwrap();
    assert_eq!(set_flags(&f, IMMUTABLE), 0, "chattr +i through the mount");
    assert_eq!(
        get_flags(&f).unwrap() & IMMUTABLE,
        IMMUTABLE,
        "lsattr through the mount"
    );
    assert_eq!(
        get_flags(&src).unwrap() & IMMUTABLE,
        IMMUTABLE,
        "flag in SOURCE"
    );
    assert_eq!(std::fs::read(&src).unwrap(), b"0123456789abcd");

    // An immutable file takes no change of its data, whatever is open.
    assert_eq!(errno_of(held.write_all_at(b"x", 0)), libc::EPERM, "write");
    assert_eq!(errno_of(held.set_len(2)), libc::EPERM, "ftruncate");
    // SAFETY: fallocate takes no pointers; `held` is open across the call.
    let r = unsafe { libc::fallocate(held.as_raw_fd(), 0, 0, 65536) };
    assert_eq!(child_errno(r), libc::EPERM, "fallocate");
    let r = unsafe {
        // SAFETY: as above.
        libc::fallocate(
            held.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4,
        )
    };
    assert_eq!(child_errno(r), libc::EPERM, "punch hole");
    std::fs::write(m.path("g"), b"copy me").unwrap();
    let from = File::open(m.path("g")).unwrap();
    let r = unsafe {
        // SAFETY: null offsets use the descriptors' positions; both descriptors are open.
        libc::copy_file_range(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            held.as_raw_fd(),
            std::ptr::null_mut(),
            7,
            0,
        )
    };
    assert!(r < 0, "copy_file_range into an immutable file");
    assert_eq!(child_errno(r as i32), libc::EPERM, "copy_file_range");
    drop(held);
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(&f)),
        libc::EPERM,
        "open for writing"
    );
    assert_eq!(
        errno_of(OpenOptions::new().append(true).open(&f)),
        libc::EPERM,
        "open for appending"
    );
    let c = cpath(&f);
    // SAFETY: `c` is a NUL-terminated path alive across the call.
    let r = unsafe { libc::truncate(c.as_ptr(), 0) };
    assert_eq!(child_errno(r), libc::EPERM, "truncate by path");
    assert_eq!(
        std::fs::read(&f).unwrap(),
        b"0123456789abcd",
        "through the mount"
    );
    assert_eq!(std::fs::read(&src).unwrap(), b"0123456789abcd", "in SOURCE");

    // Cleared: writable again, through the descriptor SOURCE refused before.
    assert_eq!(set_flags(&f, 0), 0);
    std::fs::write(&f, b"again").unwrap();
    let fd = OpenOptions::new().write(true).open(&f).unwrap();
    fd.sync_all().unwrap();
    drop(fd);
    assert_eq!(std::fs::read(&src).unwrap(), b"again");

    // Append-only: opens for writing only with O_APPEND, never O_TRUNC; writes land at the
    // end whatever the position; no truncate, no hole.
    assert_eq!(set_flags(&f, APPEND), 0, "chattr +a");
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(&f)),
        libc::EPERM,
        "O_WRONLY"
    );
    assert_eq!(
        errno_of(
            OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_TRUNC)
                .open(&f)
        ),
        libc::EPERM,
        "O_APPEND|O_TRUNC"
    );
    let a = OpenOptions::new().append(true).open(&f).unwrap();
    // SAFETY: lseek takes no pointers; `a` is open. (O_APPEND ignores the position.)
    unsafe { libc::lseek(a.as_raw_fd(), 0, libc::SEEK_SET) };
    use std::io::Write;
    (&a).write_all(b"+one").unwrap();
    (&a).write_all(b"+two").unwrap();
    assert_eq!(
        errno_of(a.set_len(0)),
        libc::EPERM,
        "ftruncate of append-only"
    );
    let r = unsafe {
        // SAFETY: fallocate takes no pointers; `a` is open.
        libc::fallocate(
            a.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            2,
        )
    };
    assert_eq!(child_errno(r), libc::EPERM, "punch hole in append-only");
    drop(a);
    assert_eq!(
        std::fs::read(&f).unwrap(),
        b"again+one+two",
        "through the mount"
    );
    assert_eq!(std::fs::read(&src).unwrap(), b"again+one+two", "in SOURCE");
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 13);

    // FS_IOC_FSGETXATTR/FSSETXATTR (xfs_io's chattr) see and set the same flags.
    let h = open_ro(&f);
    let mut fsx = [0u8; 28];
    // SAFETY: FS_IOC_FSGETXATTR fills a 28-byte struct fsxattr: `fsx`, live across the call.
    let r = unsafe { libc::ioctl(h.as_raw_fd(), FS_IOC_FSGETXATTR, fsx.as_mut_ptr()) };
    assert_eq!(r, 0, "FSGETXATTR: {}", std::io::Error::last_os_error());
    let x = u32::from_ne_bytes(fsx[..4].try_into().unwrap());
    assert_eq!(
        x & XFLAG_APPEND,
        XFLAG_APPEND,
        "fsx_xflags shows append-only"
    );
    fsx[..4].copy_from_slice(&(x & !XFLAG_APPEND).to_ne_bytes());
    // SAFETY: FS_IOC_FSSETXATTR reads the 28-byte `fsx`, live across the call.
    let r = unsafe { libc::ioctl(h.as_raw_fd(), FS_IOC_FSSETXATTR, fsx.as_ptr()) };
    assert_eq!(r, 0, "FSSETXATTR: {}", std::io::Error::last_os_error());
    drop(h);
    assert_eq!(get_flags(&src).unwrap() & APPEND, 0, "cleared in SOURCE");
    std::fs::write(&f, b"free").unwrap();
    assert_eq!(std::fs::read(&src).unwrap(), b"free");

    // Set in SOURCE behind the mount's back: the next open for writing learns it.
    assert_eq!(set_flags(&src, IMMUTABLE), 0);
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(&f)),
        libc::EPERM,
        "flag set in SOURCE"
    );
    assert_eq!(set_flags(&src, 0), 0);
    std::fs::write(&f, b"free again").unwrap();
    assert_eq!(std::fs::read(&src).unwrap(), b"free again");

    // Any other ioctl: ENOTTY. (_IOR('x', 99, int), which no filesystem knows.)
    let h = open_ro(&f);
    let mut v: libc::c_int = 0;
    // SAFETY: the command's argument is one int, `v`, live across the call.
    let r = unsafe { libc::ioctl(h.as_raw_fd(), 0x8004_7863, &mut v) };
    assert_eq!(child_errno(r), libc::ENOTTY);
}

#[test]
fn flags_restrict_data_pool() {
    flags_restrict_data("cache_size=16M");
}

#[test]
fn flags_restrict_data_kernel() {
    flags_restrict_data("cache_size=16M,cache=kernel");
}

/// Only the owner (or CAP_FOWNER) sets flags; immutable and append-only also take
/// CAP_LINUX_IMMUTABLE, which root has and nobody has not. Directories have flags too.
#[test]
fn flags_need_owner_and_cap_linux_immutable() {
    let m = Mount::new("cache_size=16M,allow_other,default_permissions");
    open_up(&m);
    let _unflag = Unflag(vec![
        m.src_path("root"),
        m.src_path("mine"),
        m.src_path("d"),
    ]);
    std::fs::write(m.path("root"), b"r").unwrap();
    std::fs::write(m.path("mine"), b"m").unwrap();
    std::os::unix::fs::chown(m.path("mine"), Some(crate::posix::NOBODY), None).unwrap();
    let (root, mine) = (cpath(&m.path("root")), cpath(&m.path("mine")));
    let as_nobody_set = |p: &std::ffi::CString, flags: u32| {
        as_nobody(|| {
            // SAFETY: `p` is a NUL-terminated path alive across the call.
            let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
            if fd < 0 {
                return 200;
            }
            set_flags_fd(fd, flags)
        })
    };
    assert_eq!(as_nobody_set(&root, NODUMP), libc::EPERM, "not the owner");
    assert_eq!(as_nobody_set(&mine, NODUMP), 0, "the owner sets nodump");
    assert_eq!(get_flags(&m.src_path("mine")).unwrap() & NODUMP, NODUMP);
    assert_eq!(
        as_nobody_set(&mine, IMMUTABLE),
        libc::EPERM,
        "+i needs the capability"
    );
    assert_eq!(
        as_nobody_set(&mine, APPEND),
        libc::EPERM,
        "+a needs the capability"
    );
    assert_eq!(
        get_flags(&m.src_path("mine")).unwrap() & (IMMUTABLE | APPEND),
        0
    );
    // Root may; and a directory made immutable takes no new entries.
    std::fs::create_dir(m.path("d")).unwrap();
    assert_eq!(set_flags(&m.path("d"), IMMUTABLE), 0);
    assert_eq!(get_flags(&m.path("d")).unwrap() & IMMUTABLE, IMMUTABLE);
    assert_eq!(errno_of(std::fs::write(m.path("d/new"), b"")), libc::EPERM);
    assert_eq!(set_flags(&m.path("d"), 0), 0);
    std::fs::write(m.path("d/new"), b"").unwrap();

    // An append to an append-only set-group-ID file by someone outside its group: SOURCE
    // refuses the chmod that would drop the bit, and the append still happens.
    let ap = m.path("ap");
    std::fs::write(&ap, b"log:").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ap, std::fs::Permissions::from_mode(0o2666)).unwrap();
    assert_eq!(set_flags(&ap, APPEND), 0);
    let _unflag_ap = Unflag(vec![m.src_path("ap")]);
    let cap = cpath(&ap);
    let r = as_nobody(|| {
        // SAFETY: `cap` is a NUL-terminated path alive across the call.
        let fd = unsafe { libc::open(cap.as_ptr(), libc::O_WRONLY | libc::O_APPEND) };
        if fd < 0 {
            return child_errno(fd);
        }
        // SAFETY: writes 3 bytes from a static buffer; `fd` was just opened.
        let n = unsafe { libc::write(fd, b"one".as_ptr() as *const _, 3) };
        let e = if n == 3 { 0 } else { child_errno(-1) };
        // SAFETY: `fd` was opened above and is closed once.
        unsafe { libc::close(fd) };
        e
    });
    assert_eq!(r, 0, "append as nobody");
    assert_eq!(std::fs::read(&ap).unwrap(), b"log:one");
    assert_eq!(std::fs::read(m.src_path("ap")).unwrap(), b"log:one");
}

/// fuser 0.18 has no FUSE_TMPFILE request (its opcodes end at FUSE_COPY_FILE_RANGE); the
/// kernel's FUSE answers O_TMPFILE with EOPNOTSUPP once the daemon said ENOSYS, and the mount
/// goes on working (docs/conformance.md).
#[test]
fn o_tmpfile_is_refused_cleanly() {
    let m = Mount::new("cache_size=16M");
    let d = cpath(&m.mnt);
    for _ in 0..2 {
        // SAFETY: `d` is a NUL-terminated path alive across the call; O_TMPFILE takes a mode.
        let fd = unsafe { libc::open(d.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o600) };
        let e = child_errno(fd);
        if fd >= 0 {
            // SAFETY: `fd` was just opened here and is closed once.
            unsafe { libc::close(fd) };
        }
        assert_eq!(e, libc::EOPNOTSUPP, "O_TMPFILE");
    }
    std::fs::write(m.path("after"), b"ok").unwrap();
    assert_eq!(std::fs::read(m.src_path("after")).unwrap(), b"ok");
}
