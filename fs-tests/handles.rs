//! File handles (open_by_handle_at, what NFS export uses) and the daemon's descriptor economy.
//!
//! A handle taken through the mount must open the same file after the kernel forgot the inode
//! (dropped caches) and after a remount (SOURCE on ext4: the node id is the inode number and
//! the generation SOURCE's); a handle of a deleted file must give ESTALE.

use crate::harness::*;
use crate::posix::cpath;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[repr(C)]
struct Handle {
    len: u32,
    kind: i32,
    bytes: [u8; 128],
}

fn handle_of(p: &Path) -> Handle {
    let mut h = Handle {
        len: 128,
        kind: 0,
        bytes: [0; 128],
    };
    let mut mount_id = 0;
    let c = cpath(p);
    let r = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            &mut h as *mut Handle as *mut libc::file_handle,
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "name_to_handle_at {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    h
}

/// open_by_handle_at on the mount at `mnt`: the open file, or the errno.
fn open_by_handle(mnt: &Path, h: &mut Handle, flags: i32) -> Result<std::fs::File, i32> {
    let dir = std::fs::File::open(mnt).unwrap();
    let fd = unsafe {
        libc::open_by_handle_at(
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            h as *mut Handle as *mut libc::file_handle,
            flags,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn read_all(mut f: std::fs::File) -> Vec<u8> {
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

/// The kernel evicts unused inodes (and sends FORGET) when caches are dropped.
fn drop_kernel_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
}

#[test]
fn handles_open_after_forget_and_remount() {
    let mut m = Mount::new("cache_size=16M");
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/f"), b"hello handles").unwrap();
    std::fs::write(m.path("gone"), b"x").unwrap();
    let mut hf = handle_of(&m.path("d/f"));
    let mut hd = handle_of(&m.path("d"));
    let mut hg = handle_of(&m.path("gone"));
    let ino_f = std::fs::metadata(m.path("d/f")).unwrap().ino();
    std::fs::remove_file(m.path("gone")).unwrap();

    drop_kernel_caches();
    let f = open_by_handle(&m.mnt, &mut hf, libc::O_RDONLY).expect("file after forget");
    assert_eq!(read_all(f), b"hello handles");
    assert_eq!(
        open_by_handle(&m.mnt, &mut hg, libc::O_RDONLY).err(),
        Some(libc::ESTALE)
    );

    m.remount();
    let f = open_by_handle(&m.mnt, &mut hf, libc::O_RDWR).expect("file after remount");
    assert_eq!(f.metadata().unwrap().ino(), ino_f);
    std::os::unix::fs::FileExt::write_all_at(&f, b"H", 0).unwrap();
    drop(f);
    assert_eq!(std::fs::read(m.path("d/f")).unwrap(), b"Hello handles");
    let d = open_by_handle(&m.mnt, &mut hd, libc::O_RDONLY | libc::O_DIRECTORY)
        .expect("directory after remount");
    assert!(d.metadata().unwrap().is_dir());
    assert_eq!(
        open_by_handle(&m.mnt, &mut hg, libc::O_RDONLY).err(),
        Some(libc::ESTALE)
    );

    // A new file that reuses the deleted one's inode number is not what the old handle named.
    for i in 0..50 {
        std::fs::write(m.path(&format!("new{i}")), b"n").unwrap();
    }
    drop_kernel_caches();
    assert_eq!(
        open_by_handle(&m.mnt, &mut hg, libc::O_RDONLY).err(),
        Some(libc::ESTALE)
    );
}

/// Unmounts a tmpfs when dropped (declared before the Mount on it, so dropped after).
struct TmpfsOn(Option<PathBuf>);

impl Drop for TmpfsOn {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            umount(p);
        }
    }
}

#[test]
fn handles_on_a_source_without_ino32_handles() {
    // tmpfs has 12-byte handles: the daemon keeps the handles of forgotten inodes.
    let mut tmpfs = TmpfsOn(None);
    let m = Mount::with_source("cache_size=16M", |src| {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64M", "none"])
            .arg(src)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        tmpfs.0 = Some(src.to_path_buf());
    });
    std::fs::write(m.path("f"), b"on tmpfs").unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    let mut hf = handle_of(&m.path("f"));
    let mut hd = handle_of(&m.path("d"));
    drop_kernel_caches();
    let f = open_by_handle(&m.mnt, &mut hf, libc::O_RDONLY).expect("file after forget");
    assert_eq!(read_all(f), b"on tmpfs");
    open_by_handle(&m.mnt, &mut hd, libc::O_RDONLY | libc::O_DIRECTORY).expect("dir");
    std::fs::remove_file(m.path("f")).unwrap();
    drop_kernel_caches();
    assert_eq!(
        open_by_handle(&m.mnt, &mut hf, libc::O_RDONLY).err(),
        Some(libc::ESTALE)
    );
    drop(m);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn closed_files_do_not_keep_a_second_descriptor() {
    // Every file the kernel knows costs the daemon one O_PATH descriptor; the one opened for
    // I/O goes back once the file is closed and clean (generic/471 creates 10,000 files
    // under RLIMIT_NOFILE 20,000).
    let m = Mount::new("cache_size=16M");
    let pid = m.pid().unwrap();
    let before = open_fds(pid);
    const N: usize = 2000;
    for i in 0..N {
        std::fs::write(m.path(&format!("f{i}")), b"data").unwrap();
    }
    // Written-back files give theirs back when the writeback commits.
    crate::posix::sync_mount(&m);
    let grown = open_fds(pid) - before;
    assert!(
        grown <= N + 50,
        "{grown} new descriptors for {N} closed files"
    );
    // And the data is all there (reopened for reading).
    for i in (0..N).step_by(97) {
        assert_eq!(std::fs::read(m.path(&format!("f{i}"))).unwrap(), b"data");
    }
}
