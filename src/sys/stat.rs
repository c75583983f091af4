//! fstat, fstatat and fstatvfs returning libc's `stat` and `statvfs`, the structs the rest of
//! the crate reads (rustix's `Stat` and `StatVfs` are its own types), and all-zero values of
//! them for code that builds one (tests, the cache's in-memory file).
//!
//! Invariants: `stat` calls never follow a symlink (AT_SYMLINK_NOFOLLOW), and the empty-path
//! form works on `O_PATH` descriptors.

use super::cvt;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// A `stat` of all zeroes.
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain old data (integers only), so all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// A `statvfs` of all zeroes.
pub fn zeroed_statvfs() -> libc::statvfs {
    // SAFETY: libc::statvfs is plain old data (integers only), so all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// The inode `fd` holds (an `O_PATH` descriptor too; a symlink itself).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = zeroed_stat();
    // fstatat(AT_EMPTY_PATH) works on O_PATH descriptors.
    // SAFETY: `fd` is borrowed for the call, the path is the static empty C string AT_EMPTY_PATH
    // needs, and `st` is a live, writable libc::stat the kernel fills.
    cvt(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// The entry `name` of `dir` (a symlink itself).
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = zeroed_stat();
    // SAFETY: `dir` is borrowed for the call, `name` is a NUL-terminated CStr that outlives it, and
    // `st` is a live, writable libc::stat the kernel fills.
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

/// statvfs of the filesystem holding `fd`.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = zeroed_statvfs();
    // SAFETY: `st` is a live, writable libc::statvfs the kernel fills; `fd` is borrowed for the
    // call.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}
