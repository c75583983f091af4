//! Mounting: mount(2) and umount2(2) for the adapter and the `umount` command (through
//! rustix), and mount_setattr(2), which rustix does not have, for SOURCE's private mount.
//!
//! Invariants: nothing here decides what to mount; the callers build the flags and the FUSE
//! option string. Errors are the calls' errno, unchanged.

use rustix::mount::{MountFlags, UnmountFlags};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Open `/dev/fuse` for a mount of our own (read-write, close-on-exec).
pub fn open_dev_fuse() -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        "/dev/fuse",
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// mount(2) of `source` at `target` with filesystem type `fstype`, the `MS_*` bits `flags`
/// and the option string `data`.
pub fn mount(
    source: &Path,
    target: &Path,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: &CStr,
) -> io::Result<()> {
    Ok(rustix::mount::mount(
        source,
        target,
        fstype,
        MountFlags::from_bits_retain(flags as libc::c_uint),
        data,
    )?)
}

/// umount2(2) of `target`; `detach`: lazily (MNT_DETACH).
pub fn unmount(target: &Path, detach: bool) -> io::Result<()> {
    let flags = if detach {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    Ok(rustix::mount::unmount(target, flags)?)
}

/// `MOUNT_ATTR_NOATIME` of linux/mount.h.
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
/// `MOUNT_ATTR_STRICTATIME`.
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
/// `MOUNT_ATTR__ATIME`: the atime mode's bits.
pub const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
/// `MOUNT_ATTR_NODIRATIME`.
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// mount_setattr(2) on the whole tree of the mount `tree` holds (AT_EMPTY_PATH |
/// AT_RECURSIVE): clear the `clr` attributes, then set `set`.
pub fn mount_setattr(tree: BorrowedFd<'_>, set: u64, clr: u64) -> io::Result<()> {
    const SYS_MOUNT_SETATTR: libc::c_long = 442;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) reads `size_of::<MountAttr>()` bytes at `&attr`, a live #[repr(C)]
    // struct laid out as the kernel's struct mount_attr (four u64s, MOUNT_ATTR_SIZE_VER0); `tree`
    // is borrowed for the call, and the path is the static empty C string AT_EMPTY_PATH needs.
    let r = unsafe {
        libc::syscall(
            SYS_MOUNT_SETATTR,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    super::cvt_long(r).map(drop)
}
