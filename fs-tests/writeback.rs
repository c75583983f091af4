//! The write-back contract, mounted for real with detached daemons: `extentfs umount` and
//! `extentfs sync` (every byte in SOURCE when they return 0, files named when not), the
//! recovery directory for data that cannot be written at exit, and log lines that name files
//! by their path in SOURCE.

use crate::harness::*;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A detached daemon (started without `-f`) on `src` at `mnt`; dropping it unmounts (lazily
/// if need be) and waits for that daemon's PID to be gone, killing only it after a minute.
struct Detached {
    mnt: PathBuf,
    pid: u32,
}

impl Detached {
    fn start(src: &Path, mnt: &Path, opts: &str, env: &[(&str, &str)]) -> Detached {
        require_root();
        let mut cmd = Command::new(BIN);
        cmd.arg(src).arg(mnt).arg("-o").arg(opts);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = getxattr(mnt, "user.extentfs.pid")
            .expect("user.extentfs.pid")
            .trim()
            .parse()
            .unwrap();
        Detached {
            mnt: mnt.to_path_buf(),
            pid,
        }
    }
}

/// The process is gone (or a zombie nobody reaped yet: it has exited).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) && !umount(&self.mnt) {
            umount_lazy(&self.mnt);
        }
        let t0 = Instant::now();
        while !gone(self.pid) {
            if t0.elapsed() > Duration::from_secs(60) {
                // SAFETY: a signal to the one daemon this guard started.
                unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A tmpfs the test mounted; unmounted on drop (declare it before the `Detached` on it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if is_mounted(&self.0) && !umount(&self.0) {
            umount_lazy(&self.0);
        }
    }
}

fn dirs(tag: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::Builder::new()
        .prefix(&format!("extentfs-wb-{tag}-"))
        .tempdir()
        .unwrap();
    let (src, mnt) = (d.path().join("src"), d.path().join("mnt"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    (d, src, mnt)
}

fn extentfs(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let (code, _out, err) = run_bin_out(args);
    (code, err)
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Chunk `i` of the data of file `seed`.
fn chunk(seed: u64, i: u64, len: usize) -> Vec<u8> {
    random_bytes(&mut Rng(seed * 1_000_003 + i + 1), len)
}

/// Compare `path` with chunks `chunk(seed, 0..)` of `len` bytes each, `total` bytes in all.
fn check_file(path: &Path, seed: u64, len: usize, total: u64) {
    let f = File::open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), total, "{}", path.display());
    let mut off = 0;
    let mut i = 0;
    while off < total {
        let n = (total - off).min(len as u64) as usize;
        let got = read_at_full(&f, off, n);
        check_bytes(
            &format!("{} at {off}", path.display()),
            &got,
            &chunk(seed, i, len)[..n],
        );
        off += n as u64;
        i += 1;
    }
}

fn dirty_bytes(mnt: &Path) -> u64 {
    stat(
        &getxattr(mnt, "user.extentfs.stats").unwrap(),
        "dirty_bytes",
    )
}

#[test]
fn extentfs_umount_writes_hundreds_of_mib_back_before_it_returns() {
    let (_d, src, mnt) = dirs("umount");
    let daemon = Detached::start(&src, &mnt, "cache_size=2G,dirty_expire=60s", &[]);
    // One 280 MiB file, still open (so its close cannot start writeback early), and 20 files
    // of 1 MiB + 7 bytes, closed.
    let big = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(mnt.join("big"))
        .unwrap();
    for i in 0..280 {
        big.write_all_at(&chunk(1, i, MIB as usize), i * MIB)
            .unwrap();
    }
    std::fs::create_dir(mnt.join("dir")).unwrap();
    for k in 0..20u64 {
        let mut f = File::create(mnt.join(format!("dir/f{k}"))).unwrap();
        f.write_all(&chunk(100 + k, 0, MIB as usize + 7)).unwrap();
    }
    drop(big);
    // (Its close queued a writeback: some of it may be under way already.)
    let dirty = dirty_bytes(&mnt);
    let t0 = Instant::now();
    let (code, err) = extentfs(&[os("umount"), mnt.as_os_str()]);
    eprintln!(
        "\n{} MiB dirty; extentfs umount took {:.2} s, stderr: {err}",
        dirty >> 20,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "extentfs umount: {err}");
    // Right after it returned: unmounted, the daemon gone, every byte in SOURCE.
    assert!(!is_mounted(&mnt));
    assert!(gone(daemon.pid), "daemon {} still running", daemon.pid);
    check_file(&src.join("big"), 1, MIB as usize, 280 * MIB);
    for k in 0..20u64 {
        check_file(
            &src.join(format!("dir/f{k}")),
            100 + k,
            MIB as usize + 7,
            MIB + 7,
        );
    }
}

#[test]
fn extentfs_umount_of_a_busy_mount_keeps_it_mounted() {
    let (_d, src, mnt) = dirs("busy");
    let daemon = Detached::start(&src, &mnt, "cache_size=64M,dirty_expire=60s", &[]);
    let f = File::create(mnt.join("open")).unwrap();
    f.write_all_at(&chunk(8, 0, MIB as usize), 0).unwrap();
    let (code, err) = extentfs(&[os("umount"), mnt.as_os_str()]);
    assert_eq!(code, 3, "busy: {err}");
    assert!(
        err.contains("is busy") && err.contains("everything written so far is in SOURCE"),
        "{err}"
    );
    assert!(is_mounted(&mnt) && !gone(daemon.pid));
    check_file(&src.join("open"), 8, MIB as usize, MIB);
    // Once closed, it unmounts.
    drop(f);
    let (code, err) = extentfs(&[os("umount"), mnt.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    assert!(gone(daemon.pid));
}

#[test]
fn extentfs_sync_writes_back_while_mounted() {
    let (_d, src, mnt) = dirs("sync");
    // coherence=none: under close-to-open a process forked by another test closes its copy
    // of the open file's descriptor at exec, and that close writes the data back early.
    let _daemon = Detached::start(
        &src,
        &mnt,
        "cache_size=64M,dirty_expire=60s,coherence=none",
        &[],
    );
    let name = "p";
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(mnt.join(name))
        .unwrap();
    f.write_all_at(&chunk(7, 0, 3 * MIB as usize), 0).unwrap();
    assert!(dirty_bytes(&mnt) > 0);
    // Open, so its close did not queue a writeback: only the command writes it back.
    let (code, err) = extentfs(&[os("sync"), mnt.as_os_str()]);
    assert_eq!(code, 0, "extentfs sync: {err}");
    assert_eq!(dirty_bytes(&mnt), 0);
    check_file(&src.join(name), 7, 3 * MIB as usize, 3 * MIB);
    // And one FILE.
    f.write_all_at(b"tail", 3 * MIB).unwrap();
    let file = mnt.join(name);
    let (code, err) = extentfs(&[os("sync"), mnt.as_os_str(), file.as_os_str()]);
    assert_eq!(code, 0, "extentfs sync FILE: {err}");
    assert_eq!(
        read_at_full(&File::open(src.join(name)).unwrap(), 3 * MIB, 8),
        b"tail"
    );
}

#[test]
fn extentfs_sync_kernel_cache_pushes_the_page_cache_first() {
    let (_d, src, mnt) = dirs("synck");
    let _daemon = Detached::start(
        &src,
        &mnt,
        "cache_size=64M,dirty_expire=60s,cache=kernel",
        &[],
    );
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(mnt.join("k"))
        .unwrap();
    f.write_all_at(&chunk(9, 0, 2 * MIB as usize), 0).unwrap();
    let (code, err) = extentfs(&[os("sync"), mnt.as_os_str()]);
    assert_eq!(code, 0, "extentfs sync: {err}");
    check_file(&src.join("k"), 9, 2 * MIB as usize, 2 * MIB);
    drop(f);
}

#[test]
fn sync_and_umount_refuse_what_is_not_a_live_extentfs_mount() {
    require_root();
    let (d, _src, _mnt) = dirs("refuse");
    // Not a mount point.
    let plain = d.path().join("src");
    for cmd in ["umount", "sync"] {
        let (code, err) = extentfs(&[os(cmd), plain.as_os_str()]);
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(err.contains("is not a mount point"), "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // Another filesystem's mount point.
    let t = d.path().join("tmpfs");
    let _tmpfs = Tmpfs::mount(&t, "1m");
    let (code, err) = extentfs(&[os("umount"), t.as_os_str()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not extentfs"), "{err}");
    assert!(is_mounted(&t), "left mounted");
    // Missing arguments, unknown flags, missing paths.
    assert_eq!(extentfs(&[os("umount")]).0, 2);
    assert_eq!(extentfs(&[os("sync"), os("--bogus"), t.as_os_str()]).0, 2);
    let (code, err) = extentfs(&[os("umount"), os("/nonexistent/wb-nothing")]);
    assert_eq!(code, 2);
    assert!(err.contains("No such file"), "{err}");
}

/// SOURCE is an 8 MiB tmpfs. `a` has 2 MiB in SOURCE (fsynced); then, through the mount,
/// 100 bytes at 1000 are overwritten and 3 MiB appended at 2 MiB while another writer fills
/// SOURCE. `extentfs umount` must fail, naming `a`; the overwrite (no new space needed) is in
/// SOURCE; the recovery directory holds exactly the 3 MiB that SOURCE could not take, the
/// manifest says where they belong, and restore.sh puts them back once there is room. The
/// detached daemon's log names `a`, never an inode.
#[test]
fn unwritable_data_at_exit_goes_to_the_recovery_dir() {
    let (d, src, mnt) = dirs("recovery");
    let _tmpfs = Tmpfs::mount(&src, "8m");
    let rdir = d.path().join("recovery");
    let log = d.path().join("daemon.log");
    let opts = format!(
        "cache_size=64M,dirty_expire=60s,recovery_dir={},log_file={}",
        rdir.display(),
        log.display()
    );
    let daemon = Detached::start(&src, &mnt, &opts, &[]);
    let base = chunk(3, 0, 2 * MIB as usize);
    let patch = chunk(4, 0, 100);
    let tail = chunk(5, 0, 3 * MIB as usize);
    {
        let mut f = File::create(mnt.join("a")).unwrap();
        f.write_all(&base).unwrap();
        f.sync_all().unwrap();
    }
    let f = OpenOptions::new().write(true).open(mnt.join("a")).unwrap();
    f.write_all_at(&patch, 1000).unwrap();
    f.write_all_at(&tail, 2 * MIB).unwrap();
    // Another writer fills SOURCE (4 KiB at a time, to the last page).
    {
        let mut filler = File::create(src.join("filler")).unwrap();
        let page = vec![0x55u8; 4096];
        while filler.write_all(&page).is_ok() {}
    }
    drop(f);
    let (code, err) = extentfs(&[os("umount"), mnt.as_os_str()]);
    eprintln!("extentfs umount stderr:\n{err}");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("a: 3.0 MiB could not be written") && l.contains("saved to")),
        "names the file and where its bytes went: {err}"
    );
    assert!(!is_mounted(&mnt));
    assert!(gone(daemon.pid));
    // The overwrite needed no new space and landed.
    let mut want = base.clone();
    want[1000..1100].copy_from_slice(&patch);
    check_bytes(
        "a in SOURCE",
        &read_at_full(&File::open(src.join("a")).unwrap(), 0, 8 << 20),
        &want,
    );
    // Exactly the lost bytes, and a manifest saying where they belong.
    let saves: Vec<PathBuf> = std::fs::read_dir(&rdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saves.len(), 1, "{saves:?}");
    let save = &saves[0];
    check_bytes(
        "1.data",
        &std::fs::read(save.join("1.data")).unwrap(),
        &tail,
    );
    let manifest = std::fs::read_to_string(save.join("MANIFEST")).unwrap();
    let ranges: Vec<&str> = manifest.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        ranges,
        vec![format!("1.data\t0\t{}\t{}\ta", 2 * MIB, 3 * MIB)],
        "{manifest}"
    );
    // The log names the path, never an inode number.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("ERROR")
            && l.contains("a: 3145728 bytes")
            && l.contains(&save.display().to_string())),
        "log:\n{text}"
    );
    assert!(!text.contains("inode ("), "log:\n{text}");
    // Room again: restore.sh puts the bytes back.
    std::fs::remove_file(src.join("filler")).unwrap();
    let st = Command::new(save.join("restore.sh")).status().unwrap();
    assert!(st.success());
    want.extend_from_slice(&tail);
    check_bytes(
        "a after restore.sh",
        &std::fs::read(src.join("a")).unwrap(),
        &want,
    );
}

/// A detached daemon with no `log_file` logs to syslog (here a socket the test binds,
/// through `EXTENTFS_SYSLOG_SOCKET`): a writeback that SOURCE (a 4 MiB tmpfs filled by
/// another writer) refuses is an error datagram (facility daemon, severity err) naming the file's path in SOURCE.
#[test]
fn detached_daemon_logs_errors_to_syslog_by_path() {
    let (d, src, mnt) = dirs("syslog");
    let _tmpfs = Tmpfs::mount(&src, "4m");
    let sock_path = d.path().join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // coherence=none: under close-to-open a process forked by another test closes its copy
    // of the open file's descriptor at exec, and that close writes the data back early.
    let _daemon = Detached::start(
        &src,
        &mnt,
        "cache_size=64M,dirty_expire=60s,coherence=none",
        &[("EXTENTFS_SYSLOG_SOCKET", sock_path.to_str().unwrap())],
    );
    std::fs::create_dir(mnt.join("sub")).unwrap();
    let f = File::create(mnt.join("sub/x")).unwrap();
    f.write_all_at(&chunk(11, 0, 2 * MIB as usize), 0).unwrap();
    // Another writer fills SOURCE after extentfs accepted the data.
    {
        let mut filler = File::create(src.join("filler")).unwrap();
        let page = vec![0x55u8; 4096];
        while filler.write_all(&page).is_ok() {}
    }
    let e = f.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    let mut buf = vec![0u8; 8192];
    let mut seen = Vec::new();
    let line = loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no error datagram naming sub/x ({e}); got {seen:?}"));
        let l = String::from_utf8_lossy(&buf[..n]).into_owned();
        if l.starts_with("<27>") && l.contains(" of sub/x failed") {
            break l;
        }
        seen.push(l);
    };
    eprintln!("syslog datagram: {line}");
    assert!(line.contains("extentfs["), "{line}");
    assert!(line.contains("No space left on device"), "{line}");
    assert!(!line.contains("inode"), "{line}");
    // Deleted through the mount, its data is gone for good: nothing is left to write.
    drop(f);
    std::fs::remove_file(mnt.join("sub/x")).unwrap();
    let (code, err) = extentfs(&[os("umount"), mnt.as_os_str()]);
    assert_eq!(code, 0, "{err}");
}

/// SOURCE is a 20 MiB tmpfs. Writing 30 MiB into one file through the mount (cache=pool)
/// fails with ENOSPC at `write()` once SOURCE cannot hold more; so does filling many files.
/// Everything acknowledged is in SOURCE after `extentfs umount`, which exits 0 (nothing was
/// accepted that SOURCE could not take).
#[test]
fn write_fails_with_enospc_under_cache_kernel_with_coherence() {
    // Under cache=kernel with coherence (the default), the kernel writes through: each write()
    // reaches the daemon and gets ENOSPC when SOURCE cannot hold it, as under cache=pool.
    let (_d, src, mnt) = dirs("space-kernel");
    let _tmpfs = Tmpfs::mount(&src, "20m");
    let daemon = Detached::start(
        &src,
        &mnt,
        "cache=kernel,cache_size=128M,dirty_expire=60s",
        &[],
    );
    let mut f = File::create(mnt.join("one")).unwrap();
    let mut acked = 0u64;
    let mut failed = None;
    for i in 0..30u64 {
        match f.write_all(&chunk(23, i, MIB as usize)) {
            Ok(()) => acked += MIB,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("30 MiB into a 20 MiB SOURCE: some write() must fail");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert!((16 * MIB..=20 * MIB).contains(&acked), "{acked}");
    drop(f);
    let (code, err) = extentfs(&[os("umount"), mnt.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    assert!(gone(daemon.pid));
    // Everything acknowledged is in SOURCE (a write() that failed may have left part of its
    // megabyte, never more).
    let got = std::fs::read(src.join("one")).unwrap();
    assert!(got.len() as u64 >= acked, "{} < {acked}", got.len());
    for i in 0..acked / MIB {
        check_bytes(
            &format!("SOURCE/one MiB {i}"),
            &got[(i * MIB) as usize..((i + 1) * MIB) as usize],
            &chunk(23, i, MIB as usize),
        );
    }
}

#[test]
fn write_fails_with_enospc_when_source_cannot_hold_it() {
    let (_d, src, mnt) = dirs("space");
    let _tmpfs = Tmpfs::mount(&src, "20m");
    // coherence=none: the reservation figures checked below need the data still dirty, and
    // under close-to-open another test's fork+exec, closing a copy of the descriptor, writes
    // it back.
    let daemon = Detached::start(
        &src,
        &mnt,
        "cache_size=128M,dirty_expire=60s,coherence=none",
        &[],
    );
    // One file in 1 MiB writes.
    let f = File::create(mnt.join("one")).unwrap();
    let mut acked = 0u64;
    let mut failed = None;
    for i in 0..30u64 {
        match f.write_at(&chunk(21, i, MIB as usize), i * MIB) {
            Ok(n) => {
                assert_eq!(n as u64, MIB, "short write at {i} MiB");
                acked += MIB;
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("30 MiB into a 20 MiB SOURCE: some write() must fail");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    eprintln!("one file: {} MiB acknowledged, then {e}", acked >> 20);
    assert!((16 * MIB..=20 * MIB).contains(&acked), "{acked}");
    let reserved = |mnt: &Path| {
        stat(
            &getxattr(mnt, "user.extentfs.stats").unwrap(),
            "source_reserved_bytes",
        )
    };
    assert_eq!(
        reserved(&mnt),
        acked,
        "every acknowledged page past EOF reserved"
    );
    f.sync_all().unwrap();
    assert_eq!(reserved(&mnt), 0, "released once written back");
    drop(f);
    check_file(&src.join("one"), 21, MIB as usize, acked);
    // Room for more once the file shrinks (the reservation follows the data).
    let f = OpenOptions::new()
        .write(true)
        .open(mnt.join("one"))
        .unwrap();
    f.set_len(4 * MIB).unwrap();
    drop(f);
    // Many files of 256 KiB until SOURCE is full; the last one may be short.
    let mut files = Vec::new();
    let mut failed = None;
    'outer: for k in 0..200u64 {
        let name = format!("m{k}");
        let f = File::create(mnt.join(&name)).unwrap();
        let mut len = 0;
        for j in 0..4u64 {
            let piece = chunk(300 + k, j, 64 << 10);
            match f.write_at(&piece, j * (64 << 10)) {
                Ok(n) => {
                    assert_eq!(n, 64 << 10);
                    len += 64 << 10;
                }
                Err(e) => {
                    files.push((name, k, len));
                    failed = Some(e);
                    break 'outer;
                }
            }
        }
        files.push((name, k, len));
    }
    let e = failed.expect("200 x 256 KiB into 16 MiB: some write() must fail");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    eprintln!("many files: {} files written, then {e}", files.len());
    assert!(files.len() > 40, "{}", files.len());
    let (code, err) = extentfs(&[os("umount"), mnt.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    assert!(gone(daemon.pid));
    check_file(&src.join("one"), 21, MIB as usize, 4 * MIB);
    for (name, k, len) in files {
        check_file(&src.join(&name), 300 + k, 64 << 10, len);
    }
}

/// Under cache=kernel, writes land in the kernel's page cache and reach the daemon as page
/// writeback, which is never refused (the kernel would drop a refused page): 6 MiB into a
/// 4 MiB tmpfs SOURCE are all accepted, `extentfs umount` exits 1 naming the file, the
/// recovery directory holds all 6 MiB (the range whose write failed part-way is saved whole),
/// and once SOURCE is larger restore.sh makes the file whole.
#[test]
fn cache_kernel_keeps_what_a_full_source_refuses_and_saves_it() {
    let (d, src, mnt) = dirs("kernel-full");
    let _tmpfs = Tmpfs::mount(&src, "4m");
    let rdir = d.path().join("recovery");
    // coherence=none: the kernel's writeback cache, so every write reaches the daemon as
    // page writeback, which takes no reservation (the kernel would drop a refused page).
    let opts = format!(
        "cache=kernel,coherence=none,cache_size=64M,dirty_expire=60s,recovery_dir={}",
        rdir.display()
    );
    let daemon = Detached::start(&src, &mnt, &opts, &[]);
    let data = chunk(41, 0, 6 * MIB as usize);
    {
        let mut f = File::create(mnt.join("k")).unwrap();
        f.write_all(&data).unwrap();
        // close may report the failed writeback; the data is kept either way.
    }
    let (code, err) = extentfs(&[os("umount"), mnt.as_os_str()]);
    eprintln!("extentfs umount stderr:\n{err}");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("k: 6.0 MiB could not be written")),
        "{err}"
    );
    assert!(gone(daemon.pid));
    let saves: Vec<PathBuf> = std::fs::read_dir(&rdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saves.len(), 1, "{saves:?}");
    check_bytes(
        "1.data",
        &std::fs::read(saves[0].join("1.data")).unwrap(),
        &data,
    );
    let st = Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new(saves[0].join("restore.sh")).status().unwrap();
    assert!(st.success());
    check_bytes(
        "k after restore.sh",
        &std::fs::read(src.join("k")).unwrap(),
        &data,
    );
}

/// Reservations follow the data: truncating dirty data, punching it out, or deleting its
/// file gives the SOURCE space back at once (before any writeback), so the space can be
/// written again; `source_reserved_bytes` ends at 0.
#[test]
fn space_reservations_are_released_with_the_data() {
    let (_d, src, mnt) = dirs("space-release");
    let _tmpfs = Tmpfs::mount(&src, "20m");
    // coherence=none: under close-to-open a process forked by another test closes its copy
    // of `t`'s descriptor at exec, and that close writes `t` back (its reservations with it).
    let _daemon = Detached::start(
        &src,
        &mnt,
        "cache_size=128M,dirty_expire=60s,coherence=none",
        &[],
    );
    let reserved = || {
        stat(
            &getxattr(&mnt, "user.extentfs.stats").unwrap(),
            "source_reserved_bytes",
        )
    };
    let fill = |f: &File, seed: u64, mib: u64| {
        for i in 0..mib {
            f.write_all_at(&chunk(seed, i, MIB as usize), i * MIB)
                .unwrap_or_else(|e| panic!("write {i} MiB (seed {seed}): {e}"));
        }
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(mnt.join("t"))
        .unwrap();
    fill(&f, 51, 16);
    assert_eq!(reserved(), 16 * MIB);
    let e = f.write_all_at(&chunk(52, 0, 8 * MIB as usize), 16 * MIB);
    assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    // Truncate (nothing written back yet): the 16 MiB are free again.
    f.set_len(0).unwrap();
    assert_eq!(reserved(), 0);
    // Extended by truncate, SOURCE's file is all hole (and as long as the cache says, so
    // punching needs no writeback first): writing it reserves every page.
    f.set_len(16 * MIB).unwrap();
    fill(&f, 53, 16);
    assert_eq!(reserved(), 16 * MIB);
    // Punch out 8 MiB in the middle (whole pages) and 1 MiB + 100 bytes at the start.
    let punch = |off: u64, len: u64| {
        // SAFETY: fallocate takes no pointers; its descriptor is `f`'s, held open across the call.
        let r = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                len as libc::off_t,
            )
        };
        assert_eq!(r, 0, "punch: {}", std::io::Error::last_os_error());
    };
    punch(4 * MIB, 8 * MIB);
    punch(0, MIB + 100);
    assert_eq!(
        reserved(),
        16 * MIB - 8 * MIB - MIB,
        "the page with byte 1 MiB + 99 stays"
    );
    // A second file may now use what was given back.
    let g = File::create(mnt.join("g")).unwrap();
    fill(&g, 54, 8);
    // Deleting a file with dirty data releases its part.
    drop(g);
    std::fs::remove_file(mnt.join("g")).unwrap();
    let t0 = Instant::now();
    while reserved() != 7 * MIB {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", reserved());
        std::thread::sleep(Duration::from_millis(20));
    }
    f.sync_all().unwrap();
    assert_eq!(reserved(), 0);
    // What SOURCE has: zeros where punched, the data elsewhere.
    let mut want = Vec::new();
    for i in 0..16 {
        want.extend_from_slice(&chunk(53, i, MIB as usize));
    }
    want[..(MIB + 100) as usize].fill(0);
    want[(4 * MIB) as usize..(12 * MIB) as usize].fill(0);
    drop(f);
    let (code, err) = extentfs(&[os("umount"), mnt.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    check_bytes("t in SOURCE", &std::fs::read(src.join("t")).unwrap(), &want);
    assert!(!src.join("g").exists());
}
