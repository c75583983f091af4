//! The system calls rustix does not cover, or covers differently from what the crate needs,
//! each a safe function whose `unsafe` block says in a `// SAFETY:` note why it holds; and the
//! adapter's session calls (mounting, descriptor passing, scheduling), so that `fs/` makes no
//! system call itself (those use rustix inside where it covers them).
//!
//! Invariants: every call of a `libc` function in the crate is in this module. A wrapper
//! returns the errno the call set, unchanged (as an `io::Error` from the raw OS error), and
//! takes typed arguments (`BorrowedFd`, `&CStr`, slices) whose lifetimes cover the call, so no
//! caller needs `unsafe` for it. Where a call cannot be made safe by its arguments alone (the
//! kernel writes through the raw iovecs of `io`), the function is an `unsafe fn` whose
//! `# Safety` section says what the caller promises.
//!
//! Elsewhere the crate calls rustix directly where it covers a call well: it is already in the
//! tree (through tempfile), makes the raw system calls on Linux without going through libc,
//! and takes and returns typed descriptors (`OwnedFd`/`BorrowedFd`), so such calls need no
//! `unsafe` at the call site.

pub mod creds;
pub mod fdpass;
pub mod handle;
pub mod io;
pub mod ioctl;
pub mod mem;
pub mod mount;
pub mod process;
pub mod sched;
pub mod stat;
pub mod time;

use std::io::{Error, Result};

/// A libc return value (-1 = errno) as a Result.
pub fn cvt(ret: libc::c_int) -> Result<libc::c_int> {
    if ret < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// As [`cvt`], for the calls returning a byte count (`ssize_t`).
pub fn cvt_isize(ret: isize) -> Result<usize> {
    if ret < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// As [`cvt`], for `syscall(2)`'s `long`.
pub fn cvt_long(ret: libc::c_long) -> Result<libc::c_long> {
    if ret < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(ret)
    }
}
