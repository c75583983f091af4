//! Behaviour a local filesystem has and a passthrough daemon, running with its own privilege,
//! easily lacks: privileged xattr names, SOURCE's maximum file size, set-ID clearing by every
//! kind of write, the cost of absent xattrs, giving pool memory back.

use crate::harness::*;
use crate::posix::{as_nobody, child_errno, cpath, getxattr_raw, listxattr, open_up};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// lsetxattr in SOURCE (behind the mount).
fn set_in_source(p: &Path, name: &str, value: &[u8]) {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
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
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
        assert!(fd >= 0, "open {rel}: {}", std::io::Error::last_os_error());
        fd
    };
    let f = open("f", libc::O_RDWR | direct);
    let buf = AlignedBuf::new(64 * KIB as usize);
    let pwrite = |fd: i32, len: usize, off: u64| {
        raw_errno(unsafe { libc::pwrite(fd, buf.as_slice().as_ptr() as *const _, len, off as i64) })
    };
    // generic/564's write: 64 KiB at 8 EiB - 65537.
    assert_eq!(
        pwrite(f, 64 * KIB as usize, (1 << 63) - 65537),
        Err(libc::EFBIG)
    );
    assert_eq!(pwrite(f, 4096, EXT4_1K_MAX), Err(libc::EFBIG));
    assert_eq!(
        raw_errno(unsafe { libc::ftruncate(f, (5u64 << 40) as i64) } as isize),
        Err(libc::EFBIG)
    );
    assert_eq!(
        raw_errno(unsafe { libc::fallocate(f, 0, 5 << 40, 4096) } as isize),
        Err(libc::EFBIG)
    );
    assert_eq!(
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
