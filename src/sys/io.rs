//! preadv/pwritev over raw iovecs, and mknodat.
//!
//! The cache hands SOURCE iovecs that name pool memory (built by `ExtentPtr::iovecs` over
//! ranges held LOCKED or WRITEBACK); rustix's vectored calls take `IoSlice`s, which would need a
//! slice over that memory built first. So these two stay on libc, as `unsafe fn`s: the memory
//! each iovec names is the caller's promise. mknodat stays on libc because rustix's takes the
//! file type apart from the mode, and a mode without type bits (a regular file to mknod(2))
//! has no rustix `FileType`.
//!
//! Invariants: at most 1024 iovecs (IOV_MAX) go to one call; the offset is the kernel's
//! `off_t`, never the descriptor's file position.

use super::{cvt, cvt_isize};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The most iovecs one preadv/pwritev takes (IOV_MAX on Linux).
pub const IOV_MAX: usize = 1024;

/// preadv(2) of `fd` at `off` into the first [`IOV_MAX`] iovecs of `iov`: bytes read.
///
/// # Safety
/// Each iovec's `iov_base` must be valid for writes of `iov_len` bytes for the whole call, and
/// no one else may read or write that memory meanwhile.
pub unsafe fn preadv(fd: BorrowedFd<'_>, iov: &[libc::iovec], off: u64) -> io::Result<usize> {
    // SAFETY: `fd` is borrowed for the call; `iov` is a live slice and the count passed is at
    // most its length; the memory the iovecs name is valid for writes (the caller's promise).
    cvt_isize(unsafe {
        libc::preadv(
            fd.as_raw_fd(),
            iov.as_ptr(),
            iov.len().min(IOV_MAX) as libc::c_int,
            off as libc::off_t,
        )
    })
}

/// pwritev(2) of the first [`IOV_MAX`] iovecs of `iov` to `fd` at `off`: bytes written.
///
/// # Safety
/// Each iovec's `iov_base` must be valid for reads of `iov_len` bytes for the whole call, and
/// no one may write that memory meanwhile.
pub unsafe fn pwritev(fd: BorrowedFd<'_>, iov: &[libc::iovec], off: u64) -> io::Result<usize> {
    // SAFETY: `fd` is borrowed for the call; `iov` is a live slice and the count passed is at
    // most its length; the memory the iovecs name is valid for reads (the caller's promise).
    cvt_isize(unsafe {
        libc::pwritev(
            fd.as_raw_fd(),
            iov.as_ptr(),
            iov.len().min(IOV_MAX) as libc::c_int,
            off as libc::off_t,
        )
    })
}

/// mknodat(2): `mode` carries the file type bits (none: a regular file), `rdev` the device.
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: `dir` is borrowed for the call and `name` is a NUL-terminated CStr that outlives it.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}
