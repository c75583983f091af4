//! Mounting for real in tests: a `Mount` owns a temporary SOURCE and mount point and an
//! `extentfs -f` child process started by PID. Dropping it unmounts (also when the test
//! failed), waits for the daemon, and kills only that PID if it does not exit.

#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_extentfs");
pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

pub fn require_root() {
    assert_eq!(
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
        unsafe { libc::geteuid() },
        0,
        "fs-tests mount FUSE filesystems and must run as root (with /dev/fuse)"
    );
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing");
}

/// How many mounts are stacked at `path` (per /proc/self/mountinfo).
pub fn mount_count(path: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}

/// Is `path` a mount point right now?
pub fn is_mounted(path: &Path) -> bool {
    mount_count(path) > 0
}

/// The fstype and source /proc/mounts shows for `path`.
pub fn mount_entry(path: &Path) -> Option<(String, String)> {
    let m = std::fs::read_to_string("/proc/mounts").ok()?;
    let want = path.to_string_lossy().replace(' ', "\\040");
    m.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 2 && f[1] == want).then(|| (f[2].to_string(), f[0].to_string()))
    })
}

/// Unmount `path`; false if it stays busy. EBUSY can be fleeting here: a child another test
/// forks holds copies of all of this process's descriptors (some of them on this mount) until
/// it execs, so a busy mount is tried again for up to 5 s.
pub fn umount(path: &Path) -> bool {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // SAFETY: `c` is a NUL-terminated CString alive across the call; umount2 only reads it.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return true;
        }
        let busy = std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY);
        if !busy || std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn umount_lazy(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated CString alive across the call; umount2 only reads it.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

pub struct Mount {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub mnt: PathBuf,
    pub opts: String,
    child: Option<Child>,
}

impl Mount {
    /// Mount a fresh empty SOURCE with `-o opts`.
    pub fn new(opts: &str) -> Mount {
        Self::with_source(opts, |_| {})
    }

    /// Mount after `setup` filled SOURCE.
    pub fn with_source(opts: &str, setup: impl FnOnce(&Path)) -> Mount {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("extentfs-test-")
            .tempdir()
            .unwrap();
        let src = dir.path().join("src");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        setup(&src);
        let mut m = Mount {
            dir,
            src,
            mnt,
            opts: opts.to_string(),
            child: None,
        };
        m.start();
        m
    }

    /// A second mount of this mount's SOURCE (another client of the same storage), on a
    /// mount point of its own.
    pub fn second(&self, opts: &str) -> Mount {
        Mount::on(&self.src, opts)
    }

    /// Mount an existing directory `src` (which the caller owns and cleans up) on a mount
    /// point of its own.
    pub fn on(src: &Path, opts: &str) -> Mount {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("extentfs-test-")
            .tempdir()
            .unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut m = Mount {
            dir,
            src: src.to_path_buf(),
            mnt,
            opts: opts.to_string(),
            child: None,
        };
        m.start();
        m
    }

    fn start(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.arg(&self.src).arg(&self.mnt).arg("-f");
        if !self.opts.is_empty() {
            cmd.arg("-o").arg(&self.opts);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn extentfs");
        self.child = Some(child);
        let t0 = Instant::now();
        while !is_mounted(&self.mnt) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("extentfs exited before mounting: {st}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "mount did not come up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The root answers once INIT is done.
        std::fs::metadata(&self.mnt).unwrap();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Path inside SOURCE.
    pub fn src_path(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }

    /// Unmount and wait for the daemon to finish writing back; returns its exit status.
    pub fn unmount(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("mounted");
        let t0 = Instant::now();
        while is_mounted(&self.mnt) && !umount(&self.mnt) {
            assert!(t0.elapsed() < Duration::from_secs(30), "umount stays busy");
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_or_kill(&mut child, Duration::from_secs(120))
    }

    /// Unmount and mount again on the same SOURCE (cold cache).
    pub fn remount(&mut self) {
        let st = self.unmount();
        assert!(st.success(), "daemon exit status {st}");
        self.start();
    }

    /// Kill the daemon with a signal (crash tests); the dead mount stays until `cleanup_dead`.
    pub fn kill(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("mounted");
        // SAFETY: `child` is our child and not yet waited for, so its pid cannot have been reused
        // by another process; kill touches no memory.
        unsafe { libc::kill(child.id() as i32, sig) };
        wait_or_kill(&mut child, Duration::from_secs(120))
    }

    /// Start a daemon again on the same mount point (after a crash).
    pub fn restart(&mut self) {
        self.start();
    }
}

fn wait_or_kill(child: &mut Child, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if is_mounted(&self.mnt) && !umount(&self.mnt) {
                umount_lazy(&self.mnt);
            }
            wait_or_kill(&mut child, Duration::from_secs(60));
        }
        // A daemon killed by a test may leave a dead mount behind.
        if is_mounted(&self.mnt) {
            umount_lazy(&self.mnt);
        }
    }
}

/// Run the extentfs binary with `args`; returns (exit code, stdout, stderr).
pub fn run_bin_out(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run the extentfs binary with `args`; returns (exit code, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String) {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let (code, _, err) = run_bin_out(&args);
    (code, err)
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// getxattr as a String (None when absent).
pub fn getxattr(path: &Path, name: &str) -> Option<String> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    // SAFETY: `p` and `n` are NUL-terminated CStrings alive across the call; the kernel writes at
    // most `buf.len()` bytes into `buf`, a live Vec.
    let r = unsafe {
        libc::getxattr(
            p.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut _,
            buf.len(),
        )
    };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(String::from_utf8_lossy(&buf).into_owned())
}

pub fn setxattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: `p` and `n` are NUL-terminated CStrings alive across the call; the kernel reads
    // `value.len()` bytes from `value`, a live slice.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const _,
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One figure from the `key=value` stats text.
pub fn stat(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in stats:\n{text}"))
        .parse()
        .unwrap()
}

/// `p` opened for reading and writing with O_DIRECT.
pub fn open_direct_rw(p: &Path) -> File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .unwrap_or_else(|e| panic!("open {} with O_DIRECT: {e}", p.display()))
}

/// A 4096-aligned heap buffer: for O_DIRECT, and because direct-io requests are split at
/// user-page boundaries.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively (no other pointer to it exists, it is not
// Clone), like a Box<[u8]>, and u8 is Send, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        assert!(len > 0, "AlignedBuf of 0 bytes");
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: `layout` has a non-zero size (asserted above) and a power-of-two alignment
        // (from_size_align checked it), as alloc_zeroed requires.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        AlignedBuf { ptr, layout }
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live allocation of layout.size() zero-initialized bytes owned by self,
        // and the shared borrow of self keeps as_mut_slice away while the slice lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of layout.size() initialized bytes owned by self; the
        // unique borrow of self makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated in new() with exactly `self.layout`, by the global allocator,
        // and is freed only here, once.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// A shared writable mapping of the first `len` bytes of `f` (unmapped on drop).
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    pub fn new(f: &File, len: usize) -> Mapping {
        // SAFETY: a null hint, a length, protections and flags cannot violate memory safety: mmap
        // picks a fresh range that overlaps nothing of ours; `f` is open for the call (the mapping
        // keeps its own reference to the file).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert!(
            p != libc::MAP_FAILED,
            "mmap {len}: {}",
            std::io::Error::last_os_error()
        );
        Mapping {
            ptr: p as *mut u8,
            len,
        }
    }
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes readable (PROT_READ), alive until drop; within the file's
        // size (the tests map no more than it holds) they can be read without SIGBUS. The shared
        // borrow of self keeps bytes_mut away; the tests change the file through other descriptors
        // only while no slice is alive.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` bytes writable (PROT_WRITE), alive until drop; the unique borrow
        // of self makes this the only view in this process.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    pub fn sync(&self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in new(), still mapped; msync does not
        // change it.
        let r = unsafe { libc::msync(self.ptr as *mut _, self.len, libc::MS_SYNC) };
        assert_eq!(r, 0, "msync: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in new(), unmapped only here, once; no
        // slice of it outlives self.
        unsafe { libc::munmap(self.ptr as *mut _, self.len) };
    }
}

// ---- data helpers shared by the data and reliability tests ----

/// Compare two byte strings; on mismatch say where (never dump megabytes).
#[track_caller]
pub fn check_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let n = got.len().min(want.len());
    let first = (0..n).find(|&i| got[i] != want[i]);
    match first {
        Some(i) => {
            let last = (i..n).rev().find(|&j| got[j] != want[j]).unwrap();
            let ctx = |b: &[u8]| b[i..(i + 16).min(b.len())].to_vec();
            panic!(
                "{what}: differs first at byte {i} (last differing byte {last}; lengths got {} \
                 want {}): got {:02x?} want {:02x?}",
                got.len(),
                want.len(),
                ctx(got),
                ctx(want)
            );
        }
        None => panic!(
            "{what}: length differs: got {} bytes, want {} (common prefix equal)",
            got.len(),
            want.len()
        ),
    }
}

/// Read `[off, off+len)` through `f`, looping over short reads; stops at EOF.
pub fn read_at_full(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f
            .read_at(&mut buf[done..], off + done as u64)
            .unwrap_or_else(|e| panic!("read {len} at {off}: {e}"));
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    buf
}

pub fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// statvfs of `p` (panics on failure).
pub fn statvfs(p: &Path) -> libc::statvfs {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: libc::statvfs is plain old data (integers only), so all-zero bytes are a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        // SAFETY: `c` is a NUL-terminated CString and `s` a live, writable libc::statvfs, both
        // alive across the call.
        unsafe { libc::statvfs(c.as_ptr(), &mut s) },
        0,
        "statvfs {}",
        p.display()
    );
    s
}
