//! Inode flags of SOURCE's files (`chattr`/`lsattr`): FS_IOC_GETFLAGS/SETFLAGS and
//! FS_IOC_FSGETXATTR/FSSETXATTR, on a descriptor reopened from the inode's `O_PATH` one (the
//! ioctls refuse `O_PATH` descriptors), and appends to an append-only file.

use super::reopen;
use crate::sys::ioctl::ioctl_buf;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// `FS_IMMUTABLE_FL` of linux/fs.h.
pub const IMMUTABLE_FL: u32 = 0x10;
/// `FS_APPEND_FL`.
pub const APPEND_FL: u32 = 0x20;
/// `FS_XFLAG_IMMUTABLE` of struct fsxattr's fsx_xflags.
pub const XFLAG_IMMUTABLE: u32 = 0x8;
/// `FS_XFLAG_APPEND`.
pub const XFLAG_APPEND: u32 = 0x10;

/// `FS_IOC_GETFLAGS` = _IOR('f', 1, long) on 64-bit; the argument is an int all the same.
pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
/// `FS_IOC_SETFLAGS` = _IOW('f', 2, long).
pub const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
/// `FS_IOC32_GETFLAGS` = _IOR('f', 1, int) (what a 32-bit kernel sends).
pub const FS_IOC32_GETFLAGS: u32 = 0x8004_6601;
/// `FS_IOC32_SETFLAGS` = _IOW('f', 2, int).
pub const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
/// `FS_IOC_FSGETXATTR` = _IOR('X', 31, struct fsxattr).
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
/// `FS_IOC_FSSETXATTR` = _IOW('X', 32, struct fsxattr).
pub const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;
/// sizeof(struct fsxattr).
pub const FSXATTR_SIZE: usize = 28;

/// The immutable and append-only bits of an FS_IOC_GETFLAGS word.
pub fn restricting(flags: u32) -> u32 {
    flags & (IMMUTABLE_FL | APPEND_FL)
}

/// The FS_*_FL equivalent of fsx_xflags' immutable and append-only bits.
pub fn restricting_xflags(xflags: u32) -> u32 {
    let mut f = 0;
    if xflags & XFLAG_IMMUTABLE != 0 {
        f |= IMMUTABLE_FL;
    }
    if xflags & XFLAG_APPEND != 0 {
        f |= APPEND_FL;
    }
    f
}

/// fsx_xflags of a struct fsxattr (its first field).
pub fn xflags_of(fsx: &[u8; FSXATTR_SIZE]) -> u32 {
    u32::from_ne_bytes([fsx[0], fsx[1], fsx[2], fsx[3]])
}

/// A descriptor of the inode held by `path_fd` that the flag ioctls accept: read-only (a
/// directory as a directory), non-blocking, never moving atime.
pub fn open_for_flags(path_fd: BorrowedFd<'_>, is_dir: bool) -> io::Result<OwnedFd> {
    let base = libc::O_RDONLY | libc::O_NONBLOCK | if is_dir { libc::O_DIRECTORY } else { 0 };
    match reopen(path_fd, base | libc::O_NOATIME) {
        // O_NOATIME is refused on files the daemon does not own when it is not root.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => reopen(path_fd, base),
        r => r,
    }
}

// FS_IOC_GETFLAGS and SETFLAGS encode the size of a long, but the kernel reads and writes an
// int at the argument's address: the flag word is the first 4 bytes of an 8-byte buffer.

/// FS_IOC_GETFLAGS of the file open as `fd`.
pub fn get_flags(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut b = [0u8; 8];
    ioctl_buf(fd, FS_IOC_GETFLAGS, &mut b)?;
    Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// FS_IOC_SETFLAGS.
pub fn set_flags(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&flags.to_ne_bytes());
    ioctl_buf(fd, FS_IOC_SETFLAGS, &mut b)
}

/// FS_IOC_FSGETXATTR: the raw struct fsxattr.
pub fn get_fsxattr(fd: BorrowedFd<'_>) -> io::Result<[u8; FSXATTR_SIZE]> {
    let mut b = [0u8; FSXATTR_SIZE];
    ioctl_buf(fd, FS_IOC_FSGETXATTR, &mut b)?;
    Ok(b)
}

/// FS_IOC_FSSETXATTR.
pub fn set_fsxattr(fd: BorrowedFd<'_>, fsx: &[u8; FSXATTR_SIZE]) -> io::Result<()> {
    let mut b = *fsx;
    ioctl_buf(fd, FS_IOC_FSSETXATTR, &mut b)
}

/// Append `data` to the file held by `path_fd` through a descriptor opened O_APPEND (the only
/// way SOURCE lets anyone write an append-only file). Returns the offset it landed at.
pub fn append(path_fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<u64> {
    let fd = reopen(path_fd, libc::O_WRONLY | libc::O_APPEND)?;
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        match rustix::io::write(&fd, rest) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let end = super::fstat(std::os::fd::AsFd::as_fd(&fd))?.st_size as u64;
    Ok(end.saturating_sub(data.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xflags_map_to_the_restricting_flags() {
        assert_eq!(restricting_xflags(XFLAG_IMMUTABLE), IMMUTABLE_FL);
        assert_eq!(restricting_xflags(XFLAG_APPEND | 0x1), APPEND_FL);
        assert_eq!(
            restricting(0x80000 | IMMUTABLE_FL | APPEND_FL),
            IMMUTABLE_FL | APPEND_FL
        );
        let mut fsx = [0u8; FSXATTR_SIZE];
        fsx[..4].copy_from_slice(&(XFLAG_APPEND | XFLAG_IMMUTABLE).to_ne_bytes());
        assert_eq!(
            restricting_xflags(xflags_of(&fsx)),
            IMMUTABLE_FL | APPEND_FL
        );
    }

    #[test]
    fn flags_read_on_a_temp_file() {
        let dir = std::env::temp_dir();
        let p = dir.join(format!("extentfs-fileattr-{}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        use std::os::fd::AsFd;
        // tmpfs and ext4 both answer; a filesystem without flags answers ENOTTY.
        match get_flags(f.as_fd()) {
            Ok(fl) => assert_eq!(restricting(fl), 0),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOTTY)),
        }
        std::fs::remove_file(&p).unwrap();
    }
}
