//! ioctls whose argument is a buffer (the inode-flag ioctls of `source::fileattr`; rustix
//! offers only an `unsafe` generic ioctl).
//!
//! Invariants: the buffer is checked against the size the command encodes (`_IOC_SIZE`), so a
//! command can never make the kernel write past it.

use super::cvt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The argument size encoded in an ioctl command number (`_IOC_SIZE`: 14 bits from bit 16).
pub fn ioc_size(cmd: u32) -> usize {
    ((cmd >> 16) & 0x3fff) as usize
}

/// ioctl(2) `cmd` on `fd` with `buf` as the argument, which must hold at least the size the
/// command encodes (EINVAL otherwise, without the call).
pub fn ioctl_buf(fd: BorrowedFd<'_>, cmd: u32, buf: &mut [u8]) -> io::Result<()> {
    if ioc_size(cmd) > buf.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `fd` is borrowed for the call; the command reads or writes at most its encoded
    // argument size, checked above to fit `buf`, a live mutable slice.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::c_ulong, buf.as_mut_ptr()) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_of_the_flag_commands() {
        assert_eq!(ioc_size(0x8008_6601), 8); // FS_IOC_GETFLAGS
        assert_eq!(ioc_size(0x4004_6602), 4); // FS_IOC32_SETFLAGS
        assert_eq!(ioc_size(0x801c_581f), 28); // FS_IOC_FSGETXATTR
    }
}
