//! Behaviour a local filesystem has and a passthrough daemon, running with its own privilege,
//! easily lacks: privileged xattr names, SOURCE's maximum file size, set-ID clearing by every
//! kind of write, the cost of absent xattrs, giving pool memory back.

use crate::harness::*;
use crate::posix::{as_nobody, child_errno, cpath, getxattr_raw, listxattr, open_up};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// lsetxattr in SOURCE (behind the mount).
fn set_in_source(p: &Path, name: &str, value: &[u8]) {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    // SAFETY: `c` and `n` are NUL-terminated CStrings alive across the call; the kernel reads
    // `value.len()` bytes from `value`, a live slice.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const _,
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

#[test]
fn trusted_names_hidden_from_unprivileged_callers() {
    // SOURCE is the test's temporary directory (tmpfs or ext4: both keep trusted.* names).
    let m = Mount::with_source("cache_size=16M,allow_other", |src| {
        std::fs::write(src.join("f"), b"x").unwrap();
        set_in_source(&src.join("f"), "trusted.hidden", b"secret");
        set_in_source(&src.join("f"), "user.visible", b"v");
    });
    open_up(&m);
    let f = m.path("f");
    // Root (CAP_SYS_ADMIN) sees both, as on a local filesystem.
    let mut names = listxattr(&f);
    names.sort();
    assert_eq!(
        names,
        vec![b"trusted.hidden".to_vec(), b"user.visible".to_vec()]
    );
    assert_eq!(getxattr_raw(&f, "trusted.hidden").unwrap(), b"secret");

    // uid 65534 without capabilities: only the user name, and its size probe agrees.
    let path = cpath(&f);
    let want: &[u8] = b"user.visible\0";
    let mut buf = [0u8; 256];
    // SAFETY: in the as_nobody child (system calls only, as its contract asks): `path` is a CString
    // and `buf` a stack buffer made before the fork; listxattr writes at most `buf.len()` bytes
    // into `buf`, and a null buffer of size 0 only asks for the size.
    let r = as_nobody(|| unsafe {
        let n = libc::listxattr(path.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len());
        if n < 0 {
            return child_errno(-1);
        }
        if n as usize != want.len() || buf[..want.len()] != *want {
            return 200;
        }
        let probe = libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0);
        if probe != n {
            return 201;
        }
        0
    });
    assert_eq!(
        r, 0,
        "listxattr as nobody (200: trusted name listed; else errno)"
    );
    let name = c"trusted.hidden";
    // SAFETY: in the as_nobody child (system calls only): `path` is a CString and `buf` a buffer
    // made before the fork, and getxattr writes at most `buf.len()` bytes into it; `name` is a
    // static C string.
    let r = as_nobody(|| unsafe {
        let n = libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut _,
            buf.len(),
        );
        if n >= 0 {
            return 202;
        }
        child_errno(-1)
    });
    assert_eq!(r, libc::ENODATA, "getxattr of a trusted name as nobody");
    // Root's answers are unchanged afterwards (nothing is remembered per caller).
    assert_eq!(listxattr(&f).len(), 2);
}

/// An ext4 filesystem with 1 KiB blocks, so a maximum file size of 4 TiB - 1 KiB, in an
/// image file loop-mounted over a test's SOURCE; unmounted on drop (after the Mount).
struct Ext4Image {
    at: PathBuf,
    _img: tempfile::TempDir,
}

/// ext4's maximum file size with 1 KiB blocks: (2^32 - 1) blocks.
const EXT4_1K_MAX: u64 = ((1 << 32) - 1) * 1024;

impl Ext4Image {
    fn mount_over(at: &Path) -> Ext4Image {
        let img = tempfile::Builder::new()
            .prefix("posix-ext4-")
            .tempdir()
            .unwrap();
        let file = img.path().join("img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
        assert!(ok(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024"])
            .arg(&file)
            .stdout(Stdio::null())));
        assert!(ok(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&file)
            .arg(at)));
        Ext4Image {
            at: at.to_path_buf(),
            _img: img,
        }
    }
}

impl Drop for Ext4Image {
    fn drop(&mut self) {
        if !umount(&self.at) {
            umount_lazy(&self.at);
        }
        // The Mount's temporary directory could not remove its SOURCE while this was mounted.
        if let Some(p) = self.at.parent() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn raw_errno(r: isize) -> Result<usize, i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(r as usize)
    }
}

/// Writes, copies, truncates and fallocates past SOURCE's maximum file size answer EFBIG as
/// on SOURCE itself (ext4, 1 KiB blocks: 4 TiB - 1 KiB), and leave the size alone.
fn efbig_past_source_limit(opts: &str) {
    let mut image = None;
    let m = Mount::with_source(opts, |src| {
        image = Some(Ext4Image::mount_over(src));
        std::fs::write(src.join("f"), vec![b'a'; 4096]).unwrap();
    });
    let kernel = opts.contains("cache=kernel");
    // Under cache=kernel buffered writes stay in the kernel's page cache (it knows only its
    // own limit, 2^63 - 1): O_DIRECT takes them to the daemon at once.
    let direct = if kernel { libc::O_DIRECT } else { 0 };
    let open = |rel: &str, flags: i32| {
        let c = cpath(&m.path(rel));
        // SAFETY: `c` is a NUL-terminated CString alive across the call; 0o644 is the variadic mode
        // O_CREAT reads.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
        assert!(fd >= 0, "open {rel}: {}", std::io::Error::last_os_error());
        fd
    };
    let f = open("f", libc::O_RDWR | direct);
    let buf = AlignedBuf::new(64 * KIB as usize);
    let pwrite = |fd: i32, len: usize, off: u64| {
        // SAFETY: pwrite reads `len` bytes from `buf`, which holds 64 KiB; every caller below
        // passes len <= 64 KiB; `fd` is one of ours, open until the close at the end.
        raw_errno(unsafe { libc::pwrite(fd, buf.as_slice().as_ptr() as *const _, len, off as i64) })
    };
    // generic/564's write: 64 KiB at 8 EiB - 65537.
    assert_eq!(
        pwrite(f, 64 * KIB as usize, (1 << 63) - 65537),
        Err(libc::EFBIG)
    );
    assert_eq!(pwrite(f, 4096, EXT4_1K_MAX), Err(libc::EFBIG));
    assert_eq!(
        // SAFETY: ftruncate takes no pointers; `f` is our descriptor, open until the close below.
        raw_errno(unsafe { libc::ftruncate(f, (5u64 << 40) as i64) } as isize),
        Err(libc::EFBIG)
    );
    assert_eq!(
        // SAFETY: fallocate takes no pointers; `f` is our descriptor, open until the close below.
        raw_errno(unsafe { libc::fallocate(f, 0, 5 << 40, 4096) } as isize),
        Err(libc::EFBIG)
    );
    assert_eq!(
        // SAFETY: fallocate takes no pointers; `f` is our descriptor, open until the close below.
        raw_errno(unsafe {
            libc::fallocate(
                f,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (EXT4_1K_MAX - 1024) as i64,
                4096,
            )
        } as isize),
        Err(libc::EFBIG)
    );
    // copy_file_range beyond 8 TiB (generic/564), and just at the limit.
    let g = open("g", libc::O_RDWR | libc::O_CREAT | direct);
    for dst in [8u64 << 40, EXT4_1K_MAX] {
        let mut off_in: i64 = 0;
        let mut off_out = dst as i64;
        // SAFETY: `off_in` and `off_out` are live i64s the kernel reads and updates; `f` and `g`
        // are our descriptors, open until the close below.
        let r = unsafe { libc::copy_file_range(f, &mut off_in, g, &mut off_out, 4096, 0) };
        assert_eq!(raw_errno(r as isize), Err(libc::EFBIG), "copy to {dst}");
    }
    // A write crossing the limit is cut short there, as on ext4; under cache=kernel refused
    // (the kernel's asynchronous direct I/O would turn a short write into EIO).
    let crossing = pwrite(g, 4096, EXT4_1K_MAX - 1024);
    if kernel {
        assert_eq!(crossing, Err(libc::EFBIG));
        assert_eq!(pwrite(g, 1024, EXT4_1K_MAX - 1024), Ok(1024));
    } else {
        assert_eq!(crossing, Ok(1024));
    }
    // SAFETY: `f` and `g` came from `open` above, are owned by no File/OwnedFd and are closed here
    // once.
    unsafe {
        libc::close(f);
        libc::close(g);
    }
    crate::posix::sync_mount(&m);
    assert_eq!(std::fs::metadata(m.path("f")).unwrap().len(), 4096);
    assert_eq!(std::fs::metadata(m.src_path("f")).unwrap().len(), 4096);
    assert_eq!(std::fs::read(m.src_path("f")).unwrap(), vec![b'a'; 4096]);
    assert_eq!(std::fs::metadata(m.path("g")).unwrap().len(), EXT4_1K_MAX);
    assert_eq!(
        std::fs::metadata(m.src_path("g")).unwrap().len(),
        EXT4_1K_MAX
    );
    drop(m);
    drop(image);
}

#[test]
fn efbig_past_source_limit_pool() {
    efbig_past_source_limit("cache_size=16M");
}

#[test]
fn efbig_past_source_limit_kernel() {
    efbig_past_source_limit("cache_size=16M,cache=kernel");
}

/// What an unprivileged caller does to a file in `setid_cleared_by_every_modification`.
#[derive(Clone, Copy, Debug)]
enum Modify {
    Write,
    Fallocate,
    PunchHole,
    ZeroRange,
    CopyInto,
}

/// Run `how` on `f` as uid/gid 65534 (copying from `from`); 0 or the errno.
fn modify_as_nobody(how: Modify, f: &CString, from: &CString) -> i32 {
    // SAFETY: in the as_nobody child (system calls only, as its contract asks): `f` and `from` are
    // CStrings made before the fork; pwrite reads 1 byte of the static b"y"; copy_file_range gets
    // live i64 offsets; every descriptor opened is closed once.
    as_nobody(|| unsafe {
        let fd = libc::open(f.as_ptr(), libc::O_RDWR);
        if fd < 0 {
            return child_errno(fd);
        }
        let r = match how {
            Modify::Write => libc::pwrite(fd, b"y".as_ptr() as *const _, 1, 1) as i32 - 1,
            Modify::Fallocate => libc::fallocate(fd, 0, 0, 8192),
            Modify::PunchHole => libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096,
            ),
            Modify::ZeroRange => libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 0, 4096),
            Modify::CopyInto => {
                let src = libc::open(from.as_ptr(), libc::O_RDONLY);
                if src < 0 {
                    return child_errno(src);
                }
                let (mut a, mut b) = (0i64, 0i64);
                let n = libc::copy_file_range(src, &mut a, fd, &mut b, 10, 0);
                libc::close(src);
                if n == 10 {
                    0
                } else {
                    -1
                }
            }
        };
        let e = child_errno(r);
        libc::close(fd);
        e
    })
}

/// xfstests generic/683-685 and their write/copy siblings: a modification by a caller without
/// CAP_FSETID drops set-user-ID always and set-group-ID when the file is group-executable or
/// the caller is outside its group, as the kernel does for a local file; root keeps them.
fn setid_cleared_by_every_modification(opts: &str) {
    let m = Mount::new(opts);
    open_up(&m);
    std::fs::write(m.path("from"), b"0123456789").unwrap();
    let from = cpath(&m.path("from"));
    let f = m.path("f");
    let cf = cpath(&f);
    use std::os::unix::fs::PermissionsExt;
    // (mode, group of the file, mode afterwards); nobody is in group 65534 only.
    let cases = [
        (0o2666, 0, 0o666),
        (0o4666, 0, 0o666),
        (0o6676, 0, 0o676),
        (0o2676, NOGROUP, 0o676),
        (0o2666, NOGROUP, 0o2666),
    ];
    for how in [
        Modify::Write,
        Modify::Fallocate,
        Modify::PunchHole,
        Modify::ZeroRange,
        Modify::CopyInto,
    ] {
        for (mode, gid, want) in cases {
            std::fs::write(&f, vec![b'x'; 4096]).unwrap();
            std::os::unix::fs::chown(&f, Some(0), Some(gid)).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = modify_as_nobody(how, &cf, &from);
            assert_eq!(r, 0, "{how:?} as nobody on mode {mode:o}: errno {r}");
            let seen = crate::posix::lstat(&f).st_mode & 0o7777;
            assert_eq!(seen, want, "{how:?}: mode {mode:o} gid {gid} ({opts})");
            let in_source = crate::posix::lstat(&m.src_path("f")).st_mode & 0o7777;
            assert_eq!(
                in_source, want,
                "{how:?} in SOURCE: mode {mode:o} gid {gid}"
            );
        }
        // Root (CAP_FSETID) keeps them.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o6777)).unwrap();
        // std's read+write open is open(f, O_RDWR | O_CLOEXEC); the File closes it at the end.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f)
            .unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: fallocate takes no pointers; `fd` belongs to `file`, open across the call.
        assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 16384) }, 0);
        drop(file);
        assert_eq!(crate::posix::lstat(&f).st_mode & 0o7777, 0o6777);
    }
}

const NOGROUP: u32 = 65534;

#[test]
fn setid_cleared_by_every_modification_pool() {
    setid_cleared_by_every_modification("cache_size=16M,allow_other");
}

#[test]
fn setid_cleared_by_every_modification_kernel() {
    setid_cleared_by_every_modification("cache_size=16M,allow_other,cache=kernel");
}

/// lgetxattr's errno (0 when the attribute exists).
fn lgetxattr_errno(p: &Path, name: &CString) -> i32 {
    let c = cpath(p);
    let mut buf = [0u8; 256];
    // SAFETY: `c` and `name` are NUL-terminated CStrings alive across the call; the kernel writes
    // at most `buf.len()` bytes into `buf`, a live array.
    let r = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut _,
            buf.len(),
        )
    };
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    } else {
        0
    }
}

/// What `ls -lR` does to every entry: lstat, its SELinux label, its ACLs.
fn ls_l_walk(dir: &Path) -> usize {
    let names = [
        CString::new("security.selinux").unwrap(),
        CString::new("system.posix_acl_access").unwrap(),
        CString::new("system.posix_acl_default").unwrap(),
    ];
    let mut asked = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let is_dir = std::fs::symlink_metadata(&p).unwrap().is_dir();
        for n in &names[..if is_dir { 3 } else { 2 }] {
            assert_eq!(lgetxattr_errno(&p, n), libc::ENODATA, "{}", p.display());
            asked += 1;
        }
        if is_dir {
            asked += ls_l_walk(&p);
        }
    }
    asked
}

fn mount_stats(m: &Mount) -> String {
    getxattr(&m.mnt, "user.extentfs.stats").expect("stats")
}

/// Absent xattrs are answers, not errors, and a second walk over 200 files is answered from
/// what the first one learnt, without asking SOURCE; a change through the mount, or in
/// SOURCE once the daemon stats the inode again, is seen.
#[test]
fn absent_xattrs_are_remembered_not_errors() {
    let m = Mount::with_source("cache_size=16M", |src| {
        for d in 0..10 {
            let dir = src.join(format!("d{d}"));
            std::fs::create_dir(&dir).unwrap();
            for f in 0..20 {
                std::fs::write(dir.join(format!("f{f}")), b"x").unwrap();
            }
        }
    });
    let s0 = mount_stats(&m);
    let first = ls_l_walk(&m.mnt);
    assert_eq!(first, 10 * 3 + 200 * 2);
    let s1 = mount_stats(&m);
    let second = ls_l_walk(&m.mnt);
    let s2 = mount_stats(&m);
    let d = |a: &str, b: &str, k: &str| stat(b, k) - stat(a, k);
    // Every answer was ENODATA, none an error.
    assert_eq!(stat(&s2, "fuse_getxattr_errors"), 0, "{s2}");
    // (Two of the getxattr requests were the stats reads of s1 and s2.)
    assert_eq!(
        d(&s0, &s2, "xattr_absent"),
        d(&s0, &s2, "fuse_getxattr_requests") - 2
    );
    // The kernel asks again each walk (it keeps no xattr answers across listings), but the
    // second walk's answers come from memory: no SOURCE call.
    let asked = d(&s1, &s2, "xattr_absent");
    assert!(asked > 0, "the kernel sent no getxattr at all:\n{s2}");
    assert_eq!(
        d(&s1, &s2, "xattr_absent_remembered"),
        asked,
        "second walk of {second} lookups"
    );
    assert!(d(&s0, &s1, "xattr_absent_remembered") < d(&s0, &s1, "xattr_absent"));

    // Set through the mount: seen at once.
    let label = CString::new("security.selinux").unwrap();
    let f0 = m.path("d0/f0");
    setxattr(&f0, "security.selinux", b"mine").unwrap();
    assert_eq!(lgetxattr_errno(&f0, &label), 0);
    assert_eq!(getxattr_raw(&f0, "security.selinux").unwrap(), b"mine");
    // Set in SOURCE behind the mount's back: seen once the daemon stats the inode again
    // (when the kernel's attribute timeout, 1 s, has passed).
    let f1 = m.path("d0/f1");
    set_in_source(&m.src_path("d0/f1"), "security.selinux", b"theirs");
    let t0 = std::time::Instant::now();
    while lgetxattr_errno(&f1, &label) != 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "a label set in SOURCE never became visible"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        let _ = std::fs::symlink_metadata(&f1);
    }
    assert_eq!(getxattr_raw(&f1, "security.selinux").unwrap(), b"theirs");
    // Removed through the mount: absent again.
    let c = cpath(&f0);
    // SAFETY: `c` and `label` are NUL-terminated CStrings alive across the call.
    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), label.as_ptr()) }, 0);
    assert_eq!(lgetxattr_errno(&f0, &label), libc::ENODATA);
}

/// An unprivileged mount where /dev/fuse is mode 0600: extentfs falls back to fusermount3 (as
/// for EPERM from mount(2)); that helper opens /dev/fuse with the user's rights too, so the
/// mount fails, and the reason is printed once. The 0600 device is a private copy bound over
/// /dev/fuse in a mount namespace of its own (`unshare -m`), so nothing else sees it.
#[test]
fn unprivileged_mount_with_0600_dev_fuse_says_why_once() {
    require_root();
    let d = tempfile::Builder::new()
        .prefix("posix-devfuse-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (s, mnt, node) = (
        d.path().join("s"),
        d.path().join("m"),
        d.path().join("fuse"),
    );
    for p in [&s, &mnt] {
        std::fs::create_dir(p).unwrap();
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let n = cpath(&node);
    // SAFETY: `n` is a NUL-terminated CString alive across the call.
    let r = unsafe { libc::mknod(n.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(10, 229)) };
    assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
    let script = format!(
        "mount --bind '{}' /dev/fuse && exec setpriv --reuid=65534 --regid=65534 \
         --clear-groups '{BIN}' '{}' '{}' -o cache_size=16M",
        node.display(),
        s.display(),
        mnt.display()
    );
    for foreground in [false, true] {
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c"]);
        cmd.arg(if foreground {
            format!("{script} -f")
        } else {
            script.clone()
        });
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "foreground {foreground}: {err}");
        assert_eq!(err.matches("cannot mount").count(), 1, "said once: {err}");
        assert!(
            err.contains("fusermount3"),
            "fell back to fusermount3: {err}"
        );
        assert!(
            !err.contains("/etc/mtab"),
            "no unmount of what was never mounted: {err}"
        );
        assert!(!is_mounted(&mnt));
    }
}

/// Resident bytes of process `pid` (`Rss` of /proc/PID/smaps_rollup).
fn rss_of(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Rss in smaps_rollup");
    kb * 1024
}

/// After `ctl drop` the pool's free memory goes back to the kernel: the daemon's resident
/// size falls by about what was cached, and the pool works as before.
#[test]
fn ctl_drop_gives_pool_memory_back() {
    let m = Mount::new("cache_size=64M");
    let pid = m.pid().unwrap();
    let data: Vec<u8> = (0..48 * MIB as usize).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.path("f"), &data).unwrap();
    crate::posix::sync_mount(&m);
    let s = mount_stats(&m);
    assert!(stat(&s, "pool_used_bytes") >= 48 * MIB, "{s}");
    let before = rss_of(pid);
    assert!(before >= 48 * MIB, "daemon resident {before}");
    setxattr(&m.mnt, "user.extentfs.ctl", b"drop").unwrap();
    let s = mount_stats(&m);
    assert_eq!(stat(&s, "pool_used_bytes"), 0, "{s}");
    assert!(stat(&s, "pool_released_bytes") >= 48 * MIB, "{s}");
    assert!(stat(&s, "pool_resident_bytes") < 4 * MIB, "{s}");
    let after = rss_of(pid);
    assert!(
        after + 40 * MIB <= before,
        "daemon resident {before} -> {after} after ctl drop"
    );
    // The data is read back from SOURCE into the given-back memory.
    check_bytes("after drop", &std::fs::read(m.path("f")).unwrap(), &data);
    assert!(stat(&mount_stats(&m), "pool_used_bytes") > 0);
}

/// (ctime, mtime) of `p` to the nanosecond.
fn times_of(p: &Path) -> ((i64, i64), (i64, i64)) {
    let st = crate::posix::lstat(p);
    (
        (st.st_ctime, st.st_ctime_nsec),
        (st.st_mtime, st.st_mtime_nsec),
    )
}

/// xfstests generic/003: create a file, `stat`, `cat`, `stat`: under close-to-open the data is
/// written back (which moves SOURCE's ctime) before the close returns, so the times a user sees
/// afterwards do not move, through a read, `ctl sync` or a remount. (With coherence=none the
/// background writeback still moves ctime after the close: docs/conformance.md.)
/// `attr_timeout=0` makes every stat ask the daemon.
fn ctime_still_after_writeback(opts: &str) {
    let m = Mount::new(&format!("cache_size=16M,attr_timeout=0,{opts}"));
    for i in 0..10 {
        let f = m.path(&format!("f{i}"));
        std::fs::write(&f, b"hello\n").unwrap();
        let before = times_of(&f);
        assert_eq!(std::fs::read(&f).unwrap(), b"hello\n");
        let after_read = times_of(&f);
        // Wait until the data is in SOURCE (background writeback under coherence=none;
        // there at close otherwise), then write everything back and stamp the mtime.
        let src = m.src_path(&format!("f{i}"));
        let t0 = std::time::Instant::now();
        while std::fs::read(&src).unwrap() != b"hello\n" {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "[{opts}] f{i} never reached SOURCE"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        crate::posix::sync_mount(&m);
        let after_wb = times_of(&f);
        assert_eq!(
            after_read, before,
            "[{opts}] f{i}: times moved after the read"
        );
        assert_eq!(
            after_wb, before,
            "[{opts}] f{i}: times moved after writeback"
        );
    }
}

#[test]
fn ctime_still_after_writeback_pool() {
    ctime_still_after_writeback("cache=pool");
}

#[test]
fn ctime_still_after_writeback_kernel() {
    ctime_still_after_writeback("cache=kernel");
}

/// Linux AIO's `struct iocb` (linux/aio_abi.h, little-endian field order).
#[repr(C)]
#[derive(Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// Linux AIO's `struct io_event`.
#[repr(C)]
#[derive(Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const IOCB_CMD_PWRITE: u16 = 1;

/// One asynchronous O_DIRECT pwrite of `buf` at `off` through `fd` (io_submit), waited for;
/// returns its result.
fn aio_pwrite(ctx: libc::c_ulong, fd: i32, buf: &AlignedBuf, off: u64) -> i64 {
    let mut cb = Iocb {
        opcode: IOCB_CMD_PWRITE,
        fildes: fd as u32,
        buf: buf.as_slice().as_ptr() as u64,
        nbytes: buf.as_slice().len() as u64,
        offset: off as i64,
        ..Default::default()
    };
    let mut cbs = [&mut cb as *mut Iocb];
    // SAFETY: io_submit reads one iocb whose buffer (`buf`) outlives the request: the
    // io_getevents below waits for its completion before `buf` can go.
    let r = unsafe { libc::syscall(libc::SYS_io_submit, ctx, 1, cbs.as_mut_ptr()) };
    assert_eq!(r, 1, "io_submit: {}", std::io::Error::last_os_error());
    let mut ev = IoEvent::default();
    // SAFETY: room for the one event asked for; no timeout.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_getevents,
            ctx,
            1,
            1,
            &mut ev as *mut IoEvent,
            std::ptr::null_mut::<libc::timespec>(),
        )
    };
    assert_eq!(r, 1, "io_getevents: {}", std::io::Error::last_os_error());
    ev.res
}

/// xfstests generic/451 under `cache=kernel`: after an O_DIRECT write (synchronous or AIO)
/// a buffered read sees the new bytes, also when buffered reads ran while the write was in
/// flight (the kernel drops its pages before an asynchronous direct write but not after);
/// and the other way round, an O_DIRECT read sees what a buffered write left in the kernel's
/// pages.
fn buffered_read_after_direct_write(opts: &str) {
    use std::os::unix::fs::FileExt;
    let m = Mount::new(&format!("cache_size=16M,{opts}"));
    const N: usize = 64 * 1024;
    const ROUNDS: u32 = 500;
    let p = m.path("f");
    std::fs::write(&p, vec![b'a'; N]).unwrap();
    let buffered = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let direct = open_direct_rw(&p);
    // Synchronous: pages cached by a buffered read, then 4 KiB written directly.
    assert_eq!(read_at_full(&buffered, 0, N), vec![b'a'; N]);
    let mut buf = AlignedBuf::new(4096);
    buf.as_mut_slice().fill(b'B');
    assert_eq!(direct.write_at(buf.as_slice(), 4096).unwrap(), 4096);
    let mut want = vec![b'a'; N];
    want[4096..8192].fill(b'B');
    check_bytes(
        &format!("[{opts}] buffered read after a direct write"),
        &read_at_full(&buffered, 0, N),
        &want,
    );
    // The other way round: a buffered write, then a direct read of the same pages.
    buffered.write_at(&[b'c'; 100], 4000).unwrap();
    want[4000..4100].fill(b'c');
    let mut rbuf = AlignedBuf::new(N);
    assert_eq!(direct.read_at(rbuf.as_mut_slice(), 0).unwrap(), N);
    check_bytes(
        &format!("[{opts}] direct read after a buffered write"),
        rbuf.as_slice(),
        &want,
    );

    // AIO direct writes of the whole file while another thread keeps reading it buffered.
    let mut ctx: libc::c_ulong = 0;
    // SAFETY: io_setup writes the new context into `ctx`.
    let r = unsafe { libc::syscall(libc::SYS_io_setup, 4, &mut ctx as *mut libc::c_ulong) };
    assert_eq!(r, 0, "io_setup: {}", std::io::Error::last_os_error());
    let buffered = std::sync::Arc::new(buffered);
    let mut wbuf = AlignedBuf::new(N);
    let mut stale = Vec::new();
    for round in 0..ROUNDS {
        let fill = b'A' + (round % 26) as u8;
        wbuf.as_mut_slice().fill(fill);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (f, stop) = (buffered.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut b = vec![0u8; N];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = f.read_at(&mut b, 0);
                }
            })
        };
        let res = aio_pwrite(ctx, direct.as_raw_fd(), &wbuf, 0);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
        assert_eq!(res, N as i64, "[{opts}] AIO write result");
        let got = read_at_full(&buffered, 0, N);
        if got.iter().any(|&b| b != fill) {
            stale.push(round);
        }
    }
    // SAFETY: the context was set up above and has no request in flight.
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    assert!(
        stale.is_empty(),
        "[{opts}] buffered reads after an AIO direct write returned old bytes in rounds {stale:?}"
    );
    drop(direct);
    crate::posix::sync_mount(&m);
    assert_eq!(
        std::fs::read(m.src_path("f")).unwrap(),
        vec![b'A' + ((ROUNDS - 1) % 26) as u8; N]
    );
}

#[test]
fn buffered_read_after_direct_write_kernel() {
    buffered_read_after_direct_write("cache=kernel");
}

#[test]
fn buffered_read_after_direct_write_kernel_no_coherence() {
    buffered_read_after_direct_write("cache=kernel,coherence=none");
}

#[test]
fn buffered_read_after_direct_write_pool() {
    buffered_read_after_direct_write("cache=pool");
}

/// A tmpfs mounted inside a test's SOURCE; unmounted on drop (after the Mount, which is
/// declared after it), also when the test failed.
struct TmpfsInside {
    at: PathBuf,
}

impl TmpfsInside {
    fn mount(at: &Path) -> TmpfsInside {
        std::fs::create_dir(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "posix2-tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mount tmpfs at {}", at.display());
        TmpfsInside {
            at: at.to_path_buf(),
        }
    }
}

impl Drop for TmpfsInside {
    fn drop(&mut self) {
        if !umount(&self.at) {
            umount_lazy(&self.at);
        }
        // The Mount's temporary directory could not remove SOURCE while this was mounted.
        if let Some(tmp) = self.at.parent().and_then(Path::parent) {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

/// Descriptors the process `pid` holds.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Issue 16 item 1: a filesystem mounted inside SOURCE (a tmpfs at SOURCE/sub, 700 files) under
/// a small descriptor budget (`rlimit_nofile=256`): the daemon gives back descriptors of idle
/// inodes there too and reopens them through that mount, so every file reads twice and every
/// `O_PATH` descriptor of them stats (each getattr reaching the daemon), never ESTALE.
#[test]
fn submount_inodes_reopen_through_their_mount() {
    let mut tmpfs = None;
    let m = Mount::with_source("cache_size=16M,rlimit_nofile=256,attr_timeout=0", |src| {
        let t = TmpfsInside::mount(&src.join("sub"));
        for i in 0..700 {
            std::fs::write(t.at.join(format!("f{i}")), format!("file {i}\n")).unwrap();
        }
        tmpfs = Some(t);
    });
    let pid = m.pid().unwrap();
    let mut held = Vec::new();
    for i in 0..700 {
        let c = cpath(&m.path(&format!("sub/f{i}")));
        // SAFETY: `c` is a NUL-terminated path that lives across the call.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        assert!(fd >= 0, "O_PATH f{i}: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor just opened and owned by nobody else (closed on unwind too,
        // which the unmount needs).
        held.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    }
    for pass in 0..2 {
        for i in 0..700 {
            let got = std::fs::read(m.path(&format!("sub/f{i}")))
                .unwrap_or_else(|e| panic!("pass {pass}: read f{i}: {e}"));
            assert_eq!(got, format!("file {i}\n").into_bytes(), "pass {pass}: f{i}");
        }
    }
    // The daemon did give descriptors back (it knows 700 inodes under a limit of 256).
    let n = fd_count(pid);
    assert!(n < 256, "daemon holds {n} descriptors");
    for (i, fd) in held.iter().enumerate() {
        // SAFETY: stat is plain old data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is an open descriptor this test holds; `st` is a live stat to fill.
        let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
        assert_eq!(r, 0, "fstat f{i}: {}", std::io::Error::last_os_error());
        assert_eq!(st.st_size, format!("file {i}\n").len() as i64);
    }
    drop(held);
    // The rest of SOURCE is unaffected.
    std::fs::write(m.path("top"), b"top").unwrap();
    assert_eq!(std::fs::read(m.src_path("top")).unwrap(), b"top");
    drop(m);
    drop(tmpfs);
}

/// Run `f` in a forked child as uid/gid 65534 with supplementary `groups`; its exit code
/// (0-249), 250 when the credentials could not be taken.
fn as_nobody_in(groups: &[u32], f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only makes system calls (setgroups/setresgid/setresuid, then `f`'s) and
    // leaves with _exit, so nothing of the forked process's other threads is touched.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: the child only makes system calls and exits, never returning into the test.
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(65534, 65534, 65534) != 0
            {
                libc::_exit(250);
            }
            let r = f();
            libc::_exit(r.clamp(0, 249));
        }
    }
    let mut status = 0;
    // SAFETY: `pid` is this test's child and `status` a live int.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// Issue 16 item 4: objects another user creates through the mount are theirs in SOURCE from
/// the start (created with their fsuid, fsgid and groups, not created by the daemon and then
/// chowned: SOURCE sees no attribute change after the creation), take the group of a
/// set-group-ID directory (directories also its set-group-ID bit), and SOURCE's own
/// permission checks see the caller's supplementary groups.
#[test]
fn created_objects_belong_to_their_creator() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const SG_GID: u32 = 4242;
    const MEMBER_GID: u32 = 4343;
    let m = Mount::with_source("cache_size=16M,allow_other", |src| {
        let mk = |name: &str, gid: u32, mode: u32| {
            let d = src.join(name);
            std::fs::create_dir(&d).unwrap();
            std::os::unix::fs::chown(&d, Some(0), Some(gid)).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        mk("pub", 0, 0o1777);
        mk("sg", SG_GID, 0o2777);
        mk("grp", MEMBER_GID, 0o770);
    });
    open_up(&m);
    // SOURCE reports every attribute change of the new objects.
    // SAFETY: inotify_init1 takes no pointer; the descriptor is owned right below.
    let ino = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(ino >= 0);
    // SAFETY: a descriptor just opened, owned here (closed on unwind too).
    let ino = unsafe { std::os::fd::OwnedFd::from_raw_fd(ino) };
    for d in ["pub", "sg", "grp"] {
        let c = cpath(&m.src_path(d));
        // SAFETY: the inotify descriptor is open and `c` a NUL-terminated path.
        let w = unsafe { libc::inotify_add_watch(ino.as_raw_fd(), c.as_ptr(), libc::IN_ATTRIB) };
        assert!(w >= 0, "inotify watch: {}", std::io::Error::last_os_error());
    }
    let p = |rel: &str| cpath(&m.path(rel));
    let (pf, pd, pp, pl, sf, sd, gf) = (
        p("pub/f"),
        p("pub/d"),
        p("pub/p"),
        p("pub/l"),
        p("sg/f"),
        p("sg/d"),
        p("grp/f"),
    );
    // SAFETY: the closure runs in the forked child and only makes system calls on paths
    // that live across them.
    let r = as_nobody_in(&[MEMBER_GID], || unsafe {
        let create = |c: &CString| {
            let fd = libc::open(
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o644,
            );
            if fd >= 0 {
                libc::close(fd);
            }
            fd
        };
        let steps = [
            create(&pf),
            libc::mkdir(pd.as_ptr(), 0o755),
            libc::mknod(pp.as_ptr(), libc::S_IFIFO | 0o644, 0),
            libc::symlink(c"target".as_ptr(), pl.as_ptr()),
            create(&sf),
            libc::mkdir(sd.as_ptr(), 0o755),
            create(&gf),
        ];
        match steps.iter().position(|&r| r < 0) {
            Some(i) => 10 + i as i32,
            None => 0,
        }
    });
    assert_eq!(r, 0, "creations as nobody (10 + the step that failed)");
    let owner = |rel: &str| {
        let md = std::fs::symlink_metadata(m.src_path(rel)).unwrap();
        (md.uid(), md.gid(), md.mode() & 0o7777)
    };
    for rel in ["pub/f", "pub/d", "pub/p", "pub/l", "grp/f"] {
        let (uid, gid, _) = owner(rel);
        assert_eq!((uid, gid), (65534, 65534), "{rel} in SOURCE");
        let md = std::fs::symlink_metadata(m.path(rel)).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (65534, 65534),
            "{rel} through the mount"
        );
    }
    assert_eq!(
        owner("sg/f"),
        (65534, SG_GID, 0o644),
        "file in a setgid directory"
    );
    assert_eq!(
        owner("sg/d"),
        (65534, SG_GID, 0o2755),
        "directory in a setgid one"
    );
    // Created as the caller: no chown or chmod after the creation.
    let mut buf = [0u8; 4096];
    // SAFETY: `buf` is a live buffer of `buf.len()` bytes and the descriptor is open.
    let n = unsafe { libc::read(ino.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len()) };
    assert!(
        n < 0,
        "SOURCE saw {n} bytes of attribute-change events on the new objects"
    );
    // Without the group, SOURCE's directory stays closed (the kernel says so first).
    let g2 = p("grp/g");
    // SAFETY: as above: system calls only, in the forked child, on live paths.
    let r = as_nobody_in(&[], || unsafe {
        let fd = libc::open(g2.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        if fd >= 0 {
            libc::close(fd);
            return 0;
        }
        child_errno(fd)
    });
    assert_eq!(r, libc::EACCES);
    assert!(!m.src_path("grp/g").exists());
}

/// Under `cache=kernel` an O_DIRECT open is a direct-I/O open: a shared mapping of it works
/// and sees what was written; after fcntl turns O_DIRECT off, writes through it still reach
/// readers that hold the file in the kernel's page cache.
fn direct_open_mapped_and_fcntl_cleared(opts: &str) {
    use std::os::unix::fs::FileExt;
    let m = Mount::new(&format!("cache_size=16M,{opts}"));
    const N: usize = 16 * 1024;
    let p = m.path("f");
    std::fs::write(&p, vec![b'a'; N]).unwrap();
    let buffered = std::fs::File::open(&p).unwrap();
    assert_eq!(read_at_full(&buffered, 0, N), vec![b'a'; N]);
    let direct = open_direct_rw(&p);
    let mut want = vec![b'a'; N];
    {
        let mut map = Mapping::new(&direct, N);
        assert_eq!(
            map.bytes(),
            &want[..],
            "[{opts}] mapping of an O_DIRECT open"
        );
        map.bytes_mut()[100..200].fill(b'm');
        map.sync();
        want[100..200].fill(b'm');
    }
    check_bytes(
        &format!("[{opts}] buffered read after stores through the mapping"),
        &read_at_full(&buffered, 0, N),
        &want,
    );
    // O_DIRECT off: an unaligned write through the same descriptor.
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    let fl = unsafe { libc::fcntl(direct.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(direct.as_raw_fd(), libc::F_SETFL, fl & !libc::O_DIRECT) };
    assert_eq!(r, 0, "fcntl: {}", std::io::Error::last_os_error());
    direct.write_at(&[b'z'; 10], 5000).unwrap();
    want[5000..5010].fill(b'z');
    check_bytes(
        &format!("[{opts}] buffered read after a write with O_DIRECT turned off"),
        &read_at_full(&buffered, 0, N),
        &want,
    );
    drop((buffered, direct));
    crate::posix::sync_mount(&m);
    assert_eq!(std::fs::read(m.src_path("f")).unwrap(), want);
}

#[test]
fn direct_open_mapped_and_fcntl_cleared_kernel() {
    direct_open_mapped_and_fcntl_cleared("cache=kernel");
}

#[test]
fn direct_open_mapped_and_fcntl_cleared_pool() {
    direct_open_mapped_and_fcntl_cleared("cache=pool");
}
