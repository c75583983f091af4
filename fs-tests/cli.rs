//! The command line and mounting: option and path errors (one line, nothing mounted), the
//! daemon mode, mount(8) / mount.fuse3, signals, `-o ro`, and recovery from a killed daemon.
//!
//! Daemons started here without `-f` are tracked by a `Daemons` guard, which unmounts and
//! waits for them (found by the unique temp path in their command line) when dropped.

use crate::harness::*;
use crate::posix::{errno_of, sync_mount};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A temp dir with `src` and `mnt` inside; its path is unique to the test.
fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::Builder::new()
        .prefix("extentfs-cli-")
        .tempdir()
        .unwrap();
    let (src, mnt) = (d.path().join("src"), d.path().join("mnt"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    (d, src, mnt)
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run a command to completion (stdout and stderr captured; waits for both pipes to close,
/// so a daemon that kept them open would show up as a timeout).
fn run(cmd: &mut Command, limit: Duration) -> Out {
    cmd.stdin(Stdio::null());
    let desc = format!("{cmd:?}");
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let child = child.unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{desc} did not finish (or kept its output open)"))
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn bin() -> Command {
    Command::new(BIN)
}

/// PIDs of extentfs processes whose command line mentions `marker`.
fn daemon_pids(marker: &Path) -> Vec<i32> {
    let marker = marker.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || !alive(pid) {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmd.split(|&b| b == 0);
        let is_extentfs = args
            .next()
            .is_some_and(|a0| a0.ends_with(b"/extentfs") || a0 == b"extentfs");
        if is_extentfs && args.any(|a| a.windows(marker.len()).any(|w| w == marker)) {
            pids.push(pid);
        }
    }
    pids
}

/// Running (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

fn wait_gone(pid: i32, limit: Duration) -> bool {
    let t0 = Instant::now();
    while alive(pid) {
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn wait_unmounted(mnt: &Path, limit: Duration) -> bool {
    let t0 = Instant::now();
    while is_mounted(mnt) {
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Cleans up detached daemons of one temp dir: unmount everything at `mnt`, wait for the
/// daemons to exit, SIGKILL (by PID) any that do not.
struct Daemons {
    marker: PathBuf,
    mnt: PathBuf,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for _ in 0..8 {
            if !is_mounted(&self.mnt) {
                break;
            }
            if !umount(&self.mnt) {
                umount_lazy(&self.mnt);
            }
        }
        for pid in daemon_pids(&self.marker) {
            if !wait_gone(pid, Duration::from_secs(60)) {
                // SAFETY: kill touches no memory; `pid` is a daemon of this test's mount (found by
                // its marker) that did not go away in time.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                wait_gone(pid, Duration::from_secs(5));
            }
        }
        while is_mounted(&self.mnt) {
            umount_lazy(&self.mnt);
        }
    }
}

fn guard(d: &tempfile::TempDir, mnt: &Path) -> Daemons {
    Daemons {
        marker: d.path().to_path_buf(),
        mnt: mnt.to_path_buf(),
    }
}

/// The one daemon of this temp dir.
fn the_daemon(marker: &Path) -> i32 {
    let pids = daemon_pids(marker);
    assert_eq!(
        pids.len(),
        1,
        "extentfs daemons for {}: {pids:?}",
        marker.display()
    );
    pids[0]
}

fn assert_one_line(out: &Out, want: &str, what: &str) {
    assert_ne!(out.code, 0, "{what}: exit code 0; stderr: {}", out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: want one line on stderr, got:\n{}",
        out.stderr
    );
    assert!(
        lines[0].starts_with("extentfs: "),
        "{what}: not prefixed: {}",
        lines[0]
    );
    assert!(
        lines[0].contains(want),
        "{what}: {:?} does not say {want:?}",
        lines[0]
    );
}

#[test]
fn bad_input_fails_with_one_line_and_mounts_nothing() {
    require_root();
    type Setup = fn(&Path, &Path) -> (PathBuf, PathBuf, Vec<String>);
    let cases: Vec<(&str, Setup, &str)> = vec![
        (
            "unknown option",
            |s, m| (s.into(), m.into(), vec!["-o".into(), "bogus".into()]),
            "unknown option 'bogus'",
        ),
        (
            "unknown option among good ones",
            |s, m| {
                (
                    s.into(),
                    m.into(),
                    vec!["-o".into(), "cache_size=32M,frobnicate=1".into()],
                )
            },
            "unknown option 'frobnicate=1'",
        ),
        (
            "malformed cache_size",
            |s, m| {
                (
                    s.into(),
                    m.into(),
                    vec!["-o".into(), "cache_size=lots".into()],
                )
            },
            "cache_size=lots: not a size",
        ),
        (
            "cache_size too small",
            |s, m| {
                (
                    s.into(),
                    m.into(),
                    vec!["-o".into(), "cache_size=1M".into()],
                )
            },
            "too small",
        ),
        (
            "cache_size beyond RAM",
            |s, m| {
                (
                    s.into(),
                    m.into(),
                    vec!["-o".into(), "cache_size=8T".into()],
                )
            },
            "larger than this machine's memory",
        ),
        (
            "cache_size beyond 16T names the memory, not 16T",
            |s, m| {
                (
                    s.into(),
                    m.into(),
                    vec!["-o".into(), "cache_size=32T".into()],
                )
            },
            "larger than this machine's memory (",
        ),
        (
            "hugepages=bogus",
            |s, m| {
                (
                    s.into(),
                    m.into(),
                    vec!["-o".into(), "hugepages=bogus".into()],
                )
            },
            "hugepages=bogus: expected auto, hugetlb, thp or off",
        ),
        (
            "dirty_limit out of range",
            |s, m| {
                (
                    s.into(),
                    m.into(),
                    vec!["-o".into(), "dirty_limit=150%".into()],
                )
            },
            "dirty_limit=150%",
        ),
        (
            "remount",
            |s, m| (s.into(), m.into(), vec!["-o".into(), "remount".into()]),
            "remount",
        ),
        (
            "missing SOURCE",
            |s, m| (s.join("nope"), m.into(), vec![]),
            "No such file or directory",
        ),
        (
            "SOURCE is a file",
            |s, m| {
                std::fs::write(s.join("file"), b"x").unwrap();
                (s.join("file"), m.into(), vec![])
            },
            "is not a directory",
        ),
        (
            "missing MOUNTPOINT",
            |s, m| (s.into(), m.join("nope"), vec![]),
            "No such file or directory",
        ),
        (
            "MOUNTPOINT is a file",
            |s, m| {
                std::fs::write(m.join("file"), b"x").unwrap();
                (s.into(), m.join("file"), vec![])
            },
            "is not a directory",
        ),
        (
            "non-empty MOUNTPOINT",
            |s, m| {
                std::fs::write(m.join("file"), b"x").unwrap();
                (s.into(), m.into(), vec![])
            },
            "is not empty (add -o nonempty",
        ),
    ];
    for (what, setup, want) in cases {
        let (d, src, mnt) = dirs();
        let _g = guard(&d, &mnt);
        let (s, m, extra) = setup(&src, &mnt);
        let mut cmd = bin();
        cmd.arg(&s)
            .arg(&m)
            .args(["-o", "cache_size=32M"])
            .args(&extra);
        let out = run(&mut cmd, Duration::from_secs(30));
        assert_one_line(&out, want, what);
        if what.contains("SOURCE") {
            assert!(out.stderr.contains("SOURCE "), "{what}: {}", out.stderr);
        }
        if what.contains("MOUNTPOINT") {
            assert!(out.stderr.contains("MOUNTPOINT "), "{what}: {}", out.stderr);
        }
        assert!(out.stdout.is_empty(), "{what}: stdout {:?}", out.stdout);
        assert!(
            !is_mounted(&mnt) && !is_mounted(&m),
            "{what}: something got mounted"
        );
        assert!(daemon_pids(d.path()).is_empty(), "{what}: a daemon stayed");
    }
}

#[test]
fn nonempty_mount_point_with_option() {
    let (d, src, mnt) = dirs();
    let _g = guard(&d, &mnt);
    std::fs::write(mnt.join("hidden"), b"under").unwrap();
    std::fs::write(src.join("shown"), b"over").unwrap();
    let out = run(
        bin().arg(&src).arg(&mnt).args(["-o", "cache_size=32M"]),
        Duration::from_secs(30),
    );
    assert_one_line(&out, "is not empty", "non-empty");
    assert!(!is_mounted(&mnt));
    let out = run(
        bin()
            .arg(&src)
            .arg(&mnt)
            .args(["-o", "cache_size=32M", "-o", "nonempty"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(is_mounted(&mnt));
    assert_eq!(std::fs::read(mnt.join("shown")).unwrap(), b"over");
    assert_eq!(
        errno_of(std::fs::metadata(mnt.join("hidden"))),
        libc::ENOENT
    );
    let pid = the_daemon(d.path());
    assert!(umount(&mnt));
    assert!(wait_gone(pid, Duration::from_secs(30)));
    assert_eq!(std::fs::read(mnt.join("hidden")).unwrap(), b"under");
}

#[test]
fn busy_mount_point_is_refused() {
    let m = Mount::new("cache_size=32M");
    std::fs::write(m.path("f"), b"first").unwrap();
    let other = tempfile::tempdir().unwrap();
    let out = run(
        bin()
            .arg(other.path())
            .arg(&m.mnt)
            .args(["-o", "cache_size=32M"]),
        Duration::from_secs(30),
    );
    assert_one_line(&out, "is already a mount point", "busy");
    assert!(
        out.stderr.contains(&*m.src.to_string_lossy()),
        "{}",
        out.stderr
    );
    assert_eq!(mount_count(&m.mnt), 1, "a second mount was stacked");
    assert!(daemon_pids(other.path()).is_empty());
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"first");
    // Also with -o nonempty (the mount point lists files): still refused.
    let out = run(
        bin()
            .arg(other.path())
            .arg(&m.mnt)
            .args(["-o", "cache_size=32M,nonempty"]),
        Duration::from_secs(30),
    );
    assert_one_line(&out, "is already a mount point", "busy, nonempty");
    assert_eq!(mount_count(&m.mnt), 1);
}

#[test]
fn missing_arguments_are_usage_errors() {
    // clap's usage errors: exit 2, first line says what is missing (followed by usage).
    let (d, src, mnt) = dirs();
    let _g = guard(&d, &mnt);
    let out = run(bin().arg(&src), Duration::from_secs(10));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("<MOUNTPOINT>"), "{}", out.stderr);
    let out = run(&mut bin(), Duration::from_secs(10));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("<SOURCE>"), "{}", out.stderr);
    let out = run(
        bin().arg(&src).arg(&mnt).arg("--bogus"),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--bogus"), "{}", out.stderr);
    assert!(!is_mounted(&mnt));
    assert!(daemon_pids(d.path()).is_empty());
}

#[test]
fn daemon_mode_returns_once_live() {
    let (d, src, mnt) = dirs();
    let _g = guard(&d, &mnt);
    std::fs::write(src.join("pre"), b"made before").unwrap();
    let t0 = Instant::now();
    let out = run(
        bin().arg(&src).arg(&mnt).args(["-o", "cache_size=32M"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(out.stderr.is_empty(), "stderr: {}", out.stderr);
    // Live right away: no polling.
    assert!(is_mounted(&mnt), "returned before the mount was live");
    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["pre"]);
    assert_eq!(std::fs::read(mnt.join("pre")).unwrap(), b"made before");
    assert!(t0.elapsed() < Duration::from_secs(30));
    let (fstype, source) = mount_entry(&mnt).unwrap();
    assert_eq!(fstype, "fuse.extentfs");
    assert_eq!(source, src.to_string_lossy());

    // Detached: a session leader, not our child, stdio on /dev/null.
    let pid = the_daemon(d.path());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let (ppid, sid): (i32, i32) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert_ne!(ppid, std::process::id() as i32);
    assert_eq!(sid, pid, "daemon is not a session leader");
    for fd in 0..3 {
        let t = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(t, Path::new("/dev/null"), "fd {fd}");
    }
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );

    // Written data survives fusermount3 -u: the daemon writes back before exiting.
    std::fs::write(mnt.join("new"), vec![5u8; 300_000]).unwrap();
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!is_mounted(&mnt));
    assert!(
        wait_gone(pid, Duration::from_secs(60)),
        "daemon {pid} did not exit"
    );
    assert_eq!(std::fs::read(src.join("new")).unwrap(), vec![5u8; 300_000]);
}

#[test]
fn mount_t_fuse_with_absolute_path() {
    let (d, src, mnt) = dirs();
    let _g = guard(&d, &mnt);
    std::fs::write(src.join("pre"), b"via mount(8)").unwrap();
    let out = run(
        Command::new("mount")
            .arg("-t")
            .arg(format!("fuse.{BIN}"))
            .arg(&src)
            .arg(&mnt)
            .args(["-o", "cache_size=32M"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 0, "mount: {}", out.stderr);
    assert!(is_mounted(&mnt));
    assert_eq!(std::fs::read(mnt.join("pre")).unwrap(), b"via mount(8)");
    let (fstype, source) = mount_entry(&mnt).unwrap();
    assert_eq!(
        (fstype.as_str(), source.as_str()),
        ("fuse.extentfs", &*src.to_string_lossy())
    );
    let pid = the_daemon(d.path());
    std::fs::write(mnt.join("w"), b"written").unwrap();
    let out = run(Command::new("umount").arg(&mnt), Duration::from_secs(30));
    assert_eq!(out.code, 0, "umount: {}", out.stderr);
    assert!(!is_mounted(&mnt));
    assert!(wait_gone(pid, Duration::from_secs(60)));
    assert_eq!(std::fs::read(src.join("w")).unwrap(), b"written");
}

/// mount.fuse3 runs `/bin/sh -c 'extentfs SRC MNT -o ...'`. Run directly, it keeps PATH.
/// Through mount(8) it does not: util-linux 2.38 mount drops PATH from the helper's
/// environment, so sh falls back to its built-in default path, and an `extentfs` found only
/// through the caller's PATH is "not found". Either way nothing may be left mounted.
#[test]
fn mount_t_fuse_extentfs_uses_path() {
    let bindir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (d, src, mnt) = dirs();
    let _g = guard(&d, &mnt);
    std::fs::write(src.join("pre"), b"x").unwrap();

    // mount.fuse3 called directly: PATH is inherited.
    let out = run(
        Command::new("mount.fuse3")
            .env("PATH", &path)
            .arg(&src)
            .arg(&mnt)
            .args(["-t", "fuse.extentfs", "-o", "cache_size=32M"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 0, "mount.fuse3: {}", out.stderr);
    assert_eq!(mount_entry(&mnt).unwrap().0, "fuse.extentfs");
    assert_eq!(std::fs::read(mnt.join("pre")).unwrap(), b"x");
    let pid = the_daemon(d.path());
    assert_eq!(
        run(Command::new("umount").arg(&mnt), Duration::from_secs(30)).code,
        0
    );
    assert!(wait_gone(pid, Duration::from_secs(60)));

    // mount -t fuse.extentfs with the same PATH.
    let out = run(
        Command::new("mount")
            .env("PATH", &path)
            .args(["-t", "fuse.extentfs"])
            .arg(&src)
            .arg(&mnt)
            .args(["-o", "cache_size=32M"]),
        Duration::from_secs(30),
    );
    let found_elsewhere = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .any(|d| Path::new(d).join("extentfs").exists());
    if out.code == 0 {
        eprintln!("note: mount(8) found extentfs (PATH kept, or installed in a default dir)");
        assert_eq!(mount_entry(&mnt).unwrap().0, "fuse.extentfs");
        let pid = the_daemon(d.path());
        assert_eq!(
            run(Command::new("umount").arg(&mnt), Duration::from_secs(30)).code,
            0
        );
        assert!(wait_gone(pid, Duration::from_secs(60)));
    } else {
        assert!(!found_elsewhere);
        assert!(
            out.stderr.contains("extentfs: not found"),
            "mount -t fuse.extentfs: {}",
            out.stderr
        );
        assert!(!is_mounted(&mnt));
        assert!(daemon_pids(d.path()).is_empty());
    }
}

#[test]
fn sigterm_writes_back_dirty_data_and_exits_0() {
    // coherence=none: under close-to-open every FLUSH writes back, and another test's
    // fork+exec closes a copy of this test's descriptor (the data would not stay dirty).
    let mut m = Mount::new("cache_size=32M,dirty_expire=60s,coherence=none");
    let mut rng = Rng(7);
    let mut data = vec![0u8; 3 << 20];
    rng.fill(&mut data);
    // Several closed files, and one still open with dirty data.
    for i in 0..4 {
        std::fs::write(m.path(&format!("closed{i}")), &data[i << 16..]).unwrap();
    }
    let mut open = std::fs::File::create(m.path("open")).unwrap();
    open.write_all(&data).unwrap();
    let dirty = stat(
        &getxattr(&m.path("open"), "user.extentfs.stats").unwrap(),
        "dirty_bytes",
    );
    assert_eq!(dirty, data.len() as u64, "the test needs dirty data");
    assert_eq!(std::fs::metadata(m.src_path("open")).unwrap().len(), 0);

    let pid = m.pid().unwrap() as i32;
    // SAFETY: kill touches no memory; `pid` is the daemon, the Mount's unreaped child, so it names
    // no other process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // The daemon writes back, then detaches the mount.
    assert!(
        wait_unmounted(&m.mnt, Duration::from_secs(60)),
        "mount stayed after SIGTERM"
    );
    assert_eq!(std::fs::read(m.src_path("open")).unwrap(), data);
    // It exits once the open file (which pins the detached mount) is closed.
    drop(open);
    let st = m.kill(0);
    assert!(st.success(), "exit status after SIGTERM: {st}");
    assert!(!is_mounted(&m.mnt));
    for i in 0..4 {
        assert_eq!(
            std::fs::read(m.src_path(&format!("closed{i}"))).unwrap(),
            &data[i << 16..],
            "closed{i}"
        );
    }
}

#[test]
fn sigint_unmounts_too() {
    let mut m = Mount::new("cache_size=32M,dirty_expire=60s");
    std::fs::write(m.path("f"), b"interrupted").unwrap();
    let st = m.kill(libc::SIGINT);
    assert!(st.success(), "exit status after SIGINT: {st}");
    assert!(!is_mounted(&m.mnt));
    assert_eq!(std::fs::read(m.src_path("f")).unwrap(), b"interrupted");
}

#[test]
fn help_mentions_every_option() {
    let out = run(bin().arg("--help"), Duration::from_secs(10));
    assert_eq!(out.code, 0);
    // Every option docs/usage.md documents.
    let usage =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/usage.md")).unwrap();
    let mut documented = Vec::new();
    for row in usage.lines().skip_while(|l| !l.starts_with("## Options")) {
        if row.starts_with("## ") && !row.starts_with("## Options") {
            break;
        }
        let Some(cell) = row.strip_prefix("| `") else {
            continue;
        };
        for opt in cell.split('|').next().unwrap().split('`').step_by(2) {
            for o in opt.split([' ', ',']).filter(|o| !o.is_empty()) {
                let key = o.split('=').next().unwrap();
                let key = if o.contains('=') {
                    format!("{key}=")
                } else {
                    key.to_string()
                };
                documented.push(key);
            }
        }
    }
    assert!(
        documented.len() > 30,
        "parsed too few options: {documented:?}"
    );
    for opt in [
        "cache_size=",
        "rlimit_nofile=",
        "spin=",
        "ro",
        "rw",
        "noatime",
        "x-*",
        "recovery_dir=",
        "coherence=",
        "attr_timeout=",
    ] {
        assert!(
            documented.iter().any(|d| d == opt),
            "{opt} not parsed from usage.md"
        );
    }
    let words: Vec<&str> = out
        .stdout
        .split(|c: char| c.is_whitespace() || c == '/')
        .collect();
    for opt in &documented {
        assert!(
            words.iter().any(|w| w.starts_with(opt.as_str())),
            "--help does not document {opt:?}:\n{}",
            out.stdout
        );
    }
    for opt in [
        "cache_size=",
        "rlimit_nofile=",
        "threads=",
        "log_file=",
        "ro ",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.trim_start().starts_with(opt)),
            "--help has no line for {opt:?}"
        );
    }
    assert!(out.stdout.contains("extentfs stats MOUNTPOINT"));
    assert!(out.stdout.contains("extentfs extents FILE"));
    assert!(out.stdout.contains("extentfs sync MOUNTPOINT [FILE...]"));
    assert!(out.stdout.contains("extentfs umount MOUNTPOINT"));
    // `help` is help, not a SOURCE named "help".
    let out2 = run(bin().arg("help"), Duration::from_secs(10));
    assert_eq!(out2.code, 0, "{}", out2.stderr);
    assert_eq!(out2.stdout, out.stdout);
    let out = run(bin().args(["help", "stats"]), Duration::from_secs(10));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("--prometheus"), "{}", out.stdout);

    // --version: the version, the commit and the build date.
    let out = run(bin().arg("--version"), Duration::from_secs(10));
    assert_eq!(out.code, 0);
    let v = out.stdout.trim();
    let rest = v
        .strip_prefix(&format!("extentfs {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{v}"));
    let (commit, date) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", built "))
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{v}"
    );
    let d: Vec<&str> = date.split('-').collect();
    assert!(
        d.len() == 3 && d.iter().all(|p| p.parse::<u32>().is_ok()) && d[0].len() == 4,
        "{v}"
    );
}

/// Binds an abstract unix datagram socket to hand to `extentfs -f` as `NOTIFY_SOCKET`.
fn notify_socket() -> (std::os::unix::net::UnixDatagram, String) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let name = format!(
        "extentfs-test-notify-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    (sock, format!("@{name}"))
}

fn recv_string(sock: &std::os::unix::net::UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no {what} notification: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn foreground_notifies_readiness_and_stopping() {
    let (d, src, mnt) = dirs();
    let _g = guard(&d, &mnt);
    std::fs::write(src.join("pre"), b"there").unwrap();
    let (sock, name) = notify_socket();
    let child = bin()
        .arg(&src)
        .arg(&mnt)
        .args(["-f", "-o", "cache_size=32M"])
        .env(extentfs::notify::ENV, &name)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = recv_string(&sock, "READY=1");
    // The mount answers by the time READY=1 arrives.
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(is_mounted(&mnt), "READY=1 before the mount exists");
    assert_eq!(std::fs::read(mnt.join("pre")).unwrap(), b"there");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS in {ready:?}"));
    assert!(status.starts_with("mounted "), "{status}");

    assert!(umount(&mnt));
    let stopping = recv_string(&sock, "STOPPING=1");
    assert_eq!(stopping, "STOPPING=1");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    // The one info line, on stderr at the default log level.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "mounted {} at {} (cache 32.0 MiB, ",
        src.display(),
        mnt.display()
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(&want)).collect();
    assert_eq!(lines.len(), 1, "want one {want:?} line in:\n{stderr}");
    assert!(lines[0].contains(" INFO "), "{}", lines[0]);
    let backing = lines[0].rsplit_once(", ").unwrap().1.trim_end_matches(')');
    assert!(["hugetlb", "thp", "4k"].contains(&backing), "{}", lines[0]);
    assert!(lines[0].ends_with(status), "{} vs {status}", lines[0]);
}

#[test]
fn detached_daemon_logs_the_mount_line_and_does_not_notify() {
    let (d, src, mnt) = dirs();
    let _g = guard(&d, &mnt);
    let log = d.path().join("log");
    let (sock, name) = notify_socket();
    sock.set_nonblocking(true).unwrap();
    let opts = format!("cache_size=32M,log_file={}", log.display());
    let out = run(
        bin()
            .arg(&src)
            .arg(&mnt)
            .args(["-o", &opts])
            .env(extentfs::notify::ENV, &name)
            .env_remove("RUST_LOG"),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let want = format!(
        "mounted {} at {} (cache 32.0 MiB, ",
        src.display(),
        mnt.display()
    );
    // The line is logged once the mount answered (after the caller returned).
    std::fs::metadata(&mnt).unwrap();
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&want) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no mount line in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = the_daemon(d.path());
    assert!(umount(&mnt));
    assert!(wait_gone(pid, Duration::from_secs(60)));
    let mut buf = [0u8; 64];
    assert!(
        sock.recv(&mut buf).is_err(),
        "a detached daemon notified: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn read_only_mount() {
    let m = Mount::with_source("cache_size=32M,ro", |src| {
        std::fs::write(src.join("f"), b"read me").unwrap();
        std::fs::create_dir(src.join("d")).unwrap();
    });
    let opts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = opts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(&*m.mnt.to_string_lossy()))
        .unwrap()
        .to_string();
    assert!(
        line.split(' ')
            .nth(3)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{line}"
    );

    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"read me");
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"read me");
    let erofs = libc::EROFS;
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().write(true).open(m.path("f"))),
        erofs
    );
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().append(true).open(m.path("f"))),
        erofs
    );
    assert_eq!(errno_of(std::fs::File::create(m.path("new"))), erofs);
    assert_eq!(errno_of(std::fs::create_dir(m.path("d2"))), erofs);
    assert_eq!(errno_of(std::fs::remove_file(m.path("f"))), erofs);
    assert_eq!(errno_of(std::fs::remove_dir(m.path("d"))), erofs);
    assert_eq!(errno_of(std::fs::rename(m.path("f"), m.path("g"))), erofs);
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("f", m.path("l"))),
        erofs
    );
    assert_eq!(
        errno_of(std::fs::hard_link(m.path("f"), m.path("h"))),
        erofs
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        errno_of(std::fs::set_permissions(
            m.path("f"),
            std::fs::Permissions::from_mode(0o600)
        )),
        erofs
    );
    let c = crate::posix::cpath(&m.path("f"));
    // SAFETY: `c` is a NUL-terminated CString alive across the call.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 0) }, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(erofs));
    assert_eq!(errno_of(setxattr(&m.path("f"), "user.x", b"1")), erofs);
    // Stats still readable; nothing changed in SOURCE.
    assert!(getxattr(&m.path("f"), "user.extentfs.stats").is_some());
    assert_eq!(std::fs::read(m.src_path("f")).unwrap(), b"read me");
    assert!(!m.src_path("new").exists());
}

#[test]
fn kill_9_leaves_a_dead_mount_that_the_next_mount_cleans_up() {
    let mut m = Mount::new("cache_size=32M,dirty_expire=60s");
    let marker = m.dir.path().to_path_buf();
    let _g = Daemons {
        marker: marker.clone(),
        mnt: m.mnt.clone(),
    };
    let mut rng = Rng(9);
    let mut data = vec![0u8; 2 << 20];
    rng.fill(&mut data);
    {
        let mut f = std::fs::File::create(m.path("synced")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    std::fs::create_dir(m.path("dir")).unwrap();
    let st = m.kill(libc::SIGKILL);
    assert!(!st.success());
    assert!(
        is_mounted(&m.mnt),
        "a killed daemon's mount stays until cleaned up"
    );
    assert_eq!(errno_of(std::fs::metadata(&m.mnt)), libc::ENOTCONN);
    // What was fsync'ed is in SOURCE.
    assert_eq!(std::fs::read(m.src_path("synced")).unwrap(), data);
    assert!(m.src_path("dir").is_dir());

    let out = run(
        bin().arg(&m.src).arg(&m.mnt).args(["-o", "cache_size=32M"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 0, "remount over a dead mount: {}", out.stderr);
    assert!(
        out.stderr.contains("cleaned up a dead FUSE mount"),
        "no note about the cleanup: {:?}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_eq!(
        mount_count(&m.mnt),
        1,
        "the dead mount is still stacked below"
    );
    assert_eq!(std::fs::read(m.path("synced")).unwrap(), data);
    assert!(m.path("dir").is_dir());
    std::fs::write(m.path("after"), b"alive").unwrap();
    let pid = the_daemon(&marker);
    assert!(umount(&m.mnt));
    assert!(wait_gone(pid, Duration::from_secs(60)));
    assert_eq!(std::fs::read(m.src_path("after")).unwrap(), b"alive");
    assert!(!is_mounted(&m.mnt));
}

#[test]
fn extents_and_stats_commands_reject_bad_flags() {
    let m = Mount::new("cache_size=32M");
    sync_mount(&m);
    let out = run(
        bin().args(["stats"]).arg(&m.mnt).arg("--frob"),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("'--frob'"), "{}", out.stderr);
    assert!(
        out.stderr.contains("Usage: extentfs stats"),
        "{}",
        out.stderr
    );
    let out = run(bin().args(["stats"]), Duration::from_secs(10));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("<PATH>"), "{}", out.stderr);
    let out = run(
        bin().args(["stats"]).arg(&m.mnt).args(["--watch", "x"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("expected a number of seconds"),
        "{}",
        out.stderr
    );
    let out = run(
        bin()
            .args(["stats", "--prometheus", "--watch", "1"])
            .arg(&m.mnt),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = run(bin().args(["extents", "--bogus"]), Duration::from_secs(10));
    assert_eq!(out.code, 2);
}

#[test]
fn extents_and_stats_explain_wrong_kinds_of_path() {
    let m = Mount::new("cache_size=32M");
    std::fs::create_dir(m.path("dir")).unwrap();
    std::fs::write(m.path("dir/f"), b"x").unwrap();
    let out = run(
        bin().args(["extents"]).arg(m.path("dir")),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "extentfs extents: {} is a directory: extents needs a regular file",
            m.path("dir").display()
        )
    );
    let out = run(bin().args(["extents"]).arg(&m.mnt), Duration::from_secs(10));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("needs a regular file"),
        "{}",
        out.stderr
    );
    let out = run(
        bin().args(["stats"]).arg(m.path("dir")),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("is a directory of a mount, not its mount point"),
        "{}",
        out.stderr
    );
    // Not on a mount at all.
    let out = run(
        bin().args(["extents"]).arg(m.src_path("dir/f")),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("is not on an extentfs mount"),
        "{}",
        out.stderr
    );
    let out = run(
        bin().args(["extents"]).arg(m.path("dir/f")),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
}
