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
    // SAFETY: Handle is #[repr(C)] like struct file_handle (u32 handle_bytes, i32 handle_type, then
    // the bytes) with 128 bytes of room, which `len` tells the kernel, so it writes within `h`; `c`
    // is a NUL-terminated CString and `mount_id` a live int.
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
    // SAFETY: `h` is a live Handle laid out as struct file_handle whose `len` (from
    // name_to_handle_at, at most 128) fits its bytes; the kernel only reads it. `dir` is open
    // across the call.
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
    // SAFETY: `fd` is non-negative (checked above): the new descriptor open_by_handle_at returned,
    // owned by nobody else.
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

/// After the file behind `h` was deleted: once the kernel forgot it (its FORGETs reach the
/// daemon asynchronously, after drop_caches returns) the handle is ESTALE. An open that still
/// found it is closed and the caches dropped again, for up to 5 s; returns the last errno.
fn stale_after_forget(mnt: &Path, h: &mut Handle) -> Option<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        drop_kernel_caches();
        match open_by_handle(mnt, h, libc::O_RDONLY) {
            Err(e) => return Some(e),
            Ok(fd) if std::time::Instant::now() >= deadline => {
                drop(fd);
                return None;
            }
            Ok(fd) => drop(fd),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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
    assert_eq!(stale_after_forget(&m.mnt, &mut hg), Some(libc::ESTALE));

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

/// A tmpfs mounted on a Mount's SOURCE (declared before the Mount, so dropped after it):
/// unmounted on drop, and then the Mount's temporary directory removed, which the Mount could
/// not do while the tmpfs was mounted in it.
struct TmpfsOn(Option<PathBuf>);

impl Drop for TmpfsOn {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            if !umount(p) {
                umount_lazy(p);
            }
            if let Some(tmp) = p.parent() {
                let _ = std::fs::remove_dir_all(tmp);
            }
        }
    }
}

#[test]
fn handles_on_a_source_without_ino32_handles() {
    // tmpfs has 12-byte handles: the daemon keeps the handles of forgotten inodes.
    let (_tmpfs, m) = mount_on_tmpfs("cache_size=16M");
    std::fs::write(m.path("f"), b"on tmpfs").unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    let mut hf = handle_of(&m.path("f"));
    let mut hd = handle_of(&m.path("d"));
    drop_kernel_caches();
    let f = open_by_handle(&m.mnt, &mut hf, libc::O_RDONLY).expect("file after forget");
    assert_eq!(read_all(f), b"on tmpfs");
    open_by_handle(&m.mnt, &mut hd, libc::O_RDONLY | libc::O_DIRECTORY).expect("dir");
    std::fs::remove_file(m.path("f")).unwrap();
    assert_eq!(stale_after_forget(&m.mnt, &mut hf), Some(libc::ESTALE));
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

/// The daemon's soft RLIMIT_NOFILE, from /proc/PID/limits.
fn nofile_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Whether this process has CAP_SYS_RESOURCE (may raise a hard limit).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    const CAP_SYS_RESOURCE: u32 = 24;
    u64::from_str_radix(eff, 16).unwrap() & (1 << CAP_SYS_RESOURCE) != 0
}

#[test]
fn the_daemon_takes_the_descriptor_limit_it_may() {
    // One descriptor per inode the kernel knows until the table gives idle ones back: the
    // daemon takes fs.nr_open when privileged, else its hard limit, or what
    // rlimit_nofile= says.
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a live, writable rlimit the kernel fills.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
    let want = if has_cap_sys_resource() {
        nr_open.max(rl.rlim_max)
    } else {
        rl.rlim_max
    };
    let m = Mount::new("");
    assert_eq!(nofile_limit(m.pid().unwrap()), want);
    drop(m);
    let m = Mount::new("rlimit_nofile=1000");
    assert_eq!(nofile_limit(m.pid().unwrap()), 1000);
}

#[test]
fn more_inodes_than_descriptors() {
    // 3,000 files in 30 directories, all known to the kernel at once (its dentry cache
    // keeps them), under a limit of 512 descriptors: the inode table gives back the
    // descriptors of idle inodes and reopens them by file handle, and every operation
    // keeps working.
    let m = Mount::new("rlimit_nofile=512,cache_size=16M");
    let pid = m.pid().unwrap();
    const DIRS: usize = 30;
    const PER: usize = 100;
    let name = |d: usize, f: usize| m.path(&format!("d{d}/f{f}"));
    for d in 0..DIRS {
        std::fs::create_dir(m.path(&format!("d{d}"))).unwrap();
        for f in 0..PER {
            std::fs::write(name(d, f), format!("{d}/{f}")).unwrap();
        }
    }
    crate::posix::sync_mount(&m);
    let max_fds = std::cell::Cell::new(0);
    let sample = || max_fds.set(max_fds.get().max(open_fds(pid)));
    // Every inode again, through its released descriptor: stat, read, chmod, xattr,
    // rename, link.
    for d in 0..DIRS {
        for f in 0..PER {
            let p = name(d, f);
            let md = std::fs::metadata(&p).unwrap();
            assert_eq!(md.len(), format!("{d}/{f}").len() as u64);
            assert_eq!(std::fs::read(&p).unwrap(), format!("{d}/{f}").as_bytes());
            if f % 10 == 0 {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
                crate::harness::setxattr(&p, "user.k", b"v").unwrap();
                std::fs::hard_link(&p, m.path(&format!("d{d}/l{f}"))).unwrap();
                std::fs::rename(&p, m.path(&format!("d{d}/r{f}"))).unwrap();
            }
        }
        sample();
    }
    // Many files open at once (more than the budget of path descriptors).
    let open: Vec<std::fs::File> = (0..DIRS)
        .flat_map(|d| (1..8).map(move |f| (d, f)))
        .map(|(d, f)| std::fs::File::open(name(d, f)).unwrap())
        .collect();
    sample();
    drop(open);
    // What the renames, links and attribute changes left, seen through the mount and in
    // SOURCE.
    for d in 0..DIRS {
        for f in (0..PER).step_by(10) {
            let r = m.path(&format!("d{d}/r{f}"));
            let md = std::fs::metadata(&r).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(md.mode() & 0o777, 0o600);
            assert_eq!(md.nlink(), 2);
            assert_eq!(crate::harness::getxattr(&r, "user.k").as_deref(), Some("v"));
            assert_eq!(
                std::fs::read(m.src_path(&format!("d{d}/l{f}"))).unwrap(),
                format!("{d}/{f}").as_bytes()
            );
        }
    }
    assert!(
        max_fds.get() <= 512,
        "{} descriptors under a limit of 512",
        max_fds.get()
    );
}

/// Mount extentfs over a fresh tmpfs (the guard unmounts it after the mount is gone).
fn mount_on_tmpfs(opts: &str) -> (TmpfsOn, Mount) {
    let mut tmpfs = TmpfsOn(None);
    let m = Mount::with_source(opts, |src| {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64M", "none"])
            .arg(src)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        tmpfs.0 = Some(src.to_path_buf());
    });
    (tmpfs, m)
}

/// A process holds a file and a directory (O_PATH descriptors, as a cwd would), the daemon
/// gives back their descriptors (1,000 newer files under a limit of 512), then both lose
/// their last name through the mount: they stay reachable with nlink 0, as on a local
/// filesystem, not ESTALE.
fn held_inodes_survive_removal(m: &Mount) {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::write(m.path("f"), b"x").unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    // std opens with O_RDONLY (0) | O_CLOEXEC | the custom flags: open(p, O_PATH | O_CLOEXEC |
    // flags), as a raw open would.
    let hold = |p: &std::path::Path, flags: i32| -> OwnedFd {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | flags)
            .open(p)
            .unwrap_or_else(|e| panic!("open {p:?}: {e}"))
            .into()
    };
    let f = hold(&m.path("f"), 0);
    let d = hold(&m.path("d"), libc::O_DIRECTORY);
    for i in 0..1000 {
        std::fs::write(m.path(&format!("n{i}")), b"").unwrap();
    }
    std::fs::remove_file(m.path("f")).unwrap();
    std::fs::remove_dir(m.path("d")).unwrap();
    for (what, fd) in [("file", &f), ("directory", &d)] {
        // SAFETY: libc::stat is plain old data (integers only), so all-zero bytes are a valid
        // value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a live, writable libc::stat; `fd` is an OwnedFd held across the call.
        let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
        assert_eq!(
            r,
            0,
            "fstat of the removed {what}: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(st.st_nlink, 0, "{what}");
    }
}

#[test]
fn a_held_inode_removed_after_its_descriptor_was_given_back() {
    // ext4 (the test directory) still opens a deleted inode by handle until it is reused;
    // tmpfs does not, which is where keeping the descriptor across the removal matters.
    held_inodes_survive_removal(&Mount::new("rlimit_nofile=512"));
    let (_tmpfs, m) = mount_on_tmpfs("rlimit_nofile=512");
    held_inodes_survive_removal(&m);
}
