//! File handles: name_to_handle_at and open_by_handle_at (rustix has neither).
//!
//! Invariants: a [`FileHandle`] is laid out as the kernel's `struct file_handle` with room for
//! MAX_HANDLE_SZ bytes, and its length never exceeds that room, so the kernel reads and writes
//! within it.

use super::cvt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `MAX_HANDLE_SZ` of linux/exportfs.h.
const MAX_HANDLE_SZ: usize = 128;

/// A file handle, as `name_to_handle_at` gives it and `open_by_handle_at` takes it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileHandle {
    len: u32,
    pub kind: i32,
    bytes: [u8; MAX_HANDLE_SZ],
}

impl FileHandle {
    /// A handle of type `kind` with `bytes` (at most MAX_HANDLE_SZ of them are kept).
    pub fn new(kind: i32, bytes: &[u8]) -> FileHandle {
        let mut h = FileHandle {
            len: bytes.len().min(MAX_HANDLE_SZ) as u32,
            kind,
            bytes: [0; MAX_HANDLE_SZ],
        };
        h.bytes[..h.len as usize].copy_from_slice(&bytes[..h.len as usize]);
        h
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// name_to_handle_at(fd, "", AT_EMPTY_PATH): the handle of the inode `fd` holds and the id of
/// the mount `fd` reaches it through.
pub fn name_to_handle(fd: BorrowedFd<'_>) -> io::Result<(FileHandle, i32)> {
    let mut h = FileHandle::new(0, &[]);
    h.len = MAX_HANDLE_SZ as u32;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: FileHandle is #[repr(C)] with struct file_handle's header (u32 handle_bytes, i32
    // handle_type) followed by MAX_HANDLE_SZ bytes, and `h.len` says that capacity, so the kernel
    // writes within `h`; `mount_id` is a live int; the path is the static empty C string.
    cvt(unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut h as *mut FileHandle as *mut libc::file_handle,
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    })?;
    Ok((h, mount_id))
}

/// open_by_handle_at(2) with `flags` (O_CLOEXEC is added): a new descriptor of the inode `h`
/// names on the filesystem of `mount_fd` (needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    h: &FileHandle,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    let mut h = *h;
    // SAFETY: `h` is a local copy laid out as struct file_handle (see FileHandle) whose `len`
    // never exceeds its MAX_HANDLE_SZ bytes (FileHandle::new clamps it, name_to_handle gets it
    // from the kernel); the kernel only reads it. `mount_fd` is borrowed for the call.
    let fd = cvt(unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            &mut h as *mut FileHandle as *mut libc::file_handle,
            flags | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: cvt passed only a non-negative return: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
