//! All access to SOURCE: the only module that makes system calls on the backing tree.
//!
//! Every object is reached from a directory file descriptor with the `*at()` calls and a single
//! path component (FUSE hands us names, never paths), with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`
//! where a symlink could otherwise be followed. So a symlink planted in SOURCE, even one swapped
//! in during an operation, never makes the daemon reach outside SOURCE. Inodes are held as
//! `O_PATH` descriptors; operations that need a real open file reopen them through
//! `/proc/self/fd/N`, which names the very inode already held, not a path.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

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
            c.set(Some(unsafe { libc::unshare(libc::CLONE_FS) } == 0));
        }
        c.get().unwrap()
    });
    if !own {
        return f(mode & !umask);
    }
    let old = unsafe { libc::umask(umask & 0o777) };
    let r = f(mode);
    unsafe { libc::umask(old) };
    r
}

/// Convert a libc return value (-1 = errno) into a Result.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_isize(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
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

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // fstatat(AT_EMPTY_PATH) works on O_PATH descriptors.
    cvt(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            empty_path().as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `openat` relative to a directory fd; always O_CLOEXEC and O_NOFOLLOW.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `O_PATH` handle on the entry `name` in `dir` (the entry itself, never a symlink target).
pub fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat(dir, name, libc::O_PATH, 0)
}

/// An `O_PATH` handle on a directory given by absolute path (the SOURCE root only).
pub fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reopen an `O_PATH` handle as a real open file with `flags`.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let p = proc_path(fd);
    let fd = cvt(unsafe {
        libc::open(
            p.as_ptr(),
            (flags | libc::O_CLOEXEC) & !(libc::O_CREAT | libc::O_NOFOLLOW | libc::O_TRUNC),
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// Hard link the inode held by `fd` as `name` in `newdir`.
pub fn linkat_fd(fd: BorrowedFd<'_>, newdir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // AT_EMPTY_PATH on an O_PATH fd needs CAP_DAC_READ_SEARCH; fall back to the /proc link.
    let r = unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            empty_path().as_ptr(),
            newdir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let p = proc_path(fd);
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            p.as_ptr(),
            newdir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n = cvt_isize(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            empty_path().as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let p = proc_path(fd);
    cvt(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

/// Change owner (`u32::MAX` = leave unchanged) of the held inode itself (no symlink follow).
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            empty_path().as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Set times; `is_symlink` selects the no-follow form on the /proc link.
pub fn utimens(
    fd: BorrowedFd<'_>,
    times: &[libc::timespec; 2],
    is_symlink: bool,
) -> io::Result<()> {
    if is_symlink {
        // The /proc magic link cannot be used with AT_SYMLINK_NOFOLLOW; AT_EMPTY_PATH can.
        return cvt(unsafe {
            libc::utimensat(
                fd.as_raw_fd(),
                empty_path().as_ptr(),
                times.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })
        .map(drop);
    }
    let p = proc_path(fd);
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

pub fn truncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) }).map(drop)
}

pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

// ---- extended attributes (through the /proc link; not on symlinks) ----

fn xattr_path(fd: BorrowedFd<'_>) -> CString {
    proc_path(fd)
}

pub fn getxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let p = xattr_path(fd);
    cvt_isize(unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    })
}

pub fn setxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let p = xattr_path(fd);
    cvt(unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn listxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let p = xattr_path(fd);
    cvt_isize(unsafe {
        libc::listxattr(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
    })
}

pub fn removexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let p = xattr_path(fd);
    cvt(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) }).map(drop)
}

/// An open regular file of SOURCE that the cache reads from and writes back to.
#[derive(Debug)]
pub struct DataFile {
    fd: OwnedFd,
    writable: bool,
}

impl DataFile {
    /// Open the inode held by `path_fd` for data I/O: read-write when possible.
    pub fn open(path_fd: BorrowedFd<'_>, read_only: bool) -> io::Result<DataFile> {
        if !read_only {
            match reopen(path_fd, libc::O_RDWR | libc::O_NOATIME) {
                Ok(fd) => return Ok(DataFile { fd, writable: true }),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    // O_NOATIME is refused on files we do not own when not privileged.
                    if let Ok(fd) = reopen(path_fd, libc::O_RDWR) {
                        return Ok(DataFile { fd, writable: true });
                    }
                }
                Err(_) => {}
            }
        }
        let fd = reopen(path_fd, libc::O_RDONLY)?;
        Ok(DataFile {
            fd,
            writable: false,
        })
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Read into `iov` at `off` until it is full or EOF; returns bytes read.
    pub fn read_full(&self, iov: &mut [libc::iovec], mut off: u64) -> io::Result<usize> {
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        let mut done = 0;
        let mut first = 0;
        while done < total {
            let n = cvt_isize(unsafe {
                libc::preadv(
                    self.raw(),
                    iov[first..].as_ptr(),
                    (iov.len() - first).min(1024) as i32,
                    off as libc::off_t,
                )
            });
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

    /// Write all of `iov` at `off` (pwritev, retried on short writes).
    pub fn write_all(&self, iov: &mut [libc::iovec], mut off: u64) -> io::Result<()> {
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        let mut done = 0;
        let mut first = 0;
        while done < total {
            let n = cvt_isize(unsafe {
                libc::pwritev(
                    self.raw(),
                    iov[first..].as_ptr(),
                    (iov.len() - first).min(1024) as i32,
                    off as libc::off_t,
                )
            });
            let n = match n {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            done += n;
            off += n as u64;
            advance(iov, &mut first, n);
        }
        Ok(())
    }

    pub fn sync(&self, datasync: bool) -> io::Result<()> {
        let r = if datasync {
            unsafe { libc::fdatasync(self.raw()) }
        } else {
            unsafe { libc::fsync(self.raw()) }
        };
        cvt(r).map(drop)
    }

    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        cvt(unsafe { libc::fchmod(self.raw(), mode) }).map(drop)
    }

    pub fn set_len(&self, size: u64) -> io::Result<()> {
        truncate(self.fd.as_fd(), size)
    }

    pub fn fallocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        cvt(unsafe { libc::fallocate(self.raw(), mode, off as libc::off_t, len as libc::off_t) })
            .map(drop)
    }

    pub fn lseek(&self, off: i64, whence: i32) -> io::Result<i64> {
        let r = unsafe { libc::lseek(self.raw(), off, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    pub fn stat(&self) -> io::Result<libc::stat> {
        fstat(self.fd.as_fd())
    }

    /// Set mtime (and atime omitted) on the file.
    pub fn set_mtime(&self, mtime: libc::timespec) -> io::Result<()> {
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            mtime,
        ];
        cvt(unsafe { libc::futimens(self.raw(), times.as_ptr()) }).map(drop)
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
        let df = DataFile::open(h.as_fd(), false).unwrap();
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
    }
}
