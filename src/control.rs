//! `extentfs sync` and `extentfs umount`: what the kernel never asks a FUSE daemon for.
//!
//! `sync(1)`/`syncfs(2)` do not reach a FUSE daemon (the kernel sends FUSE_SYNCFS only to
//! virtiofs), and a plain `umount` returns at once while the daemon writes back afterwards. So:
//!
//! - `extentfs sync MOUNTPOINT` pushes the kernel's dirty pages to the daemon (`syncfs` on the
//!   mount), then has the daemon write back and fsync every file (`ctl sync`), showing
//!   progress, and on failure lists the files whose data is not in SOURCE (`user.extentfs.
//!   unwritten`); `extentfs sync FILE...` fsyncs each FILE.
//! - `extentfs umount MOUNTPOINT` does the same, then hands the daemon a pipe to report its
//!   outcome at exit (`ctl report-exit`), unmounts, reads the report and waits for the daemon
//!   process to be gone.
//!
//! Exit status: 0 everything is in SOURCE and fsynced (and, for umount, unmounted and the
//! daemon gone); 1 some data is not in SOURCE (the files are named; after umount it is in the
//! recovery directory); 2 usage error, or MOUNTPOINT is not a live extentfs mount; 3 (umount)
//! the mount is busy and stays mounted.

use crate::core::ctl as xattr;
use crate::options::format_size;
use std::ffi::CString;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `extentfs sync` as clap describes it (for `help`, the man page and completions; the
/// arguments themselves are read by [`main`]).
pub fn sync_command() -> clap::Command {
    clap::Command::new("sync")
        .about("Write back and fsync everything (or each FILE); exit 1 naming files not written")
        .arg(clap::Arg::new("MOUNTPOINT").required(true))
        .arg(clap::Arg::new("FILE").num_args(0..))
}

/// `extentfs umount` as clap describes it.
pub fn umount_command() -> clap::Command {
    clap::Command::new("umount")
        .about(
            "Write back, unmount and wait for the daemon; exit 0 only when every byte is in \
             SOURCE (1: data not written, saved to recovery_dir; 2: not an extentfs mount; \
             3: busy)",
        )
        .arg(clap::Arg::new("MOUNTPOINT").required(true))
}

const USAGE: &str = "usage: extentfs sync MOUNTPOINT [FILE...]\n       extentfs umount MOUNTPOINT";

/// Exit status: data not in SOURCE.
const EXIT_UNWRITTEN: u8 = 1;
/// Exit status: usage error, not a (live) extentfs mount.
const EXIT_USAGE: u8 = 2;
/// Exit status: the mount is busy and stays mounted.
const EXIT_BUSY: u8 = 3;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// The value of xattr `name` of `path`, however long (up to 64 MiB).
pub(crate) fn getxattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let p = cstr(path);
    let n = CString::new(name).unwrap();
    // Never an empty buffer (rustix would not ask for the size with it).
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match rustix::fs::getxattr(p.as_c_str(), n.as_c_str(), &mut buf[..]) {
            Ok(r) => {
                buf.truncate(r);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < (64 << 20) => {
                buf.resize(buf.len() * 4, 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn setxattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = cstr(path);
    let n = CString::new(name).unwrap();
    Ok(rustix::fs::setxattr(
        p.as_c_str(),
        n.as_c_str(),
        value,
        rustix::fs::XattrFlags::empty(),
    )?)
}

/// The figure `key` of the mount's stats.
fn figure(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// A live extentfs mount point, checked.
struct Target {
    mnt: PathBuf,
    pid: u32,
}

/// Check that `arg` is the mount point of a live extentfs mount; the error is one line.
fn target(cmd: &str, arg: &str) -> Result<Target, String> {
    let mnt = match std::fs::canonicalize(arg) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!(
                "{arg} is a dead FUSE mount (its daemon is gone: data it had not written back \
                 is lost, see the recovery directory); clean it up with: umount -l {arg}"
            ))
        }
        Err(e) => return Err(format!("{arg}: {e}")),
    };
    let Some((fstype, _src)) = crate::fs::mount::mounted_at(&mnt) else {
        return Err(format!("{} is not a mount point", mnt.display()));
    };
    if !fstype.starts_with("fuse") {
        return Err(format!(
            "{} is a {fstype} mount, not extentfs",
            mnt.display()
        ));
    }
    let pid = match getxattr(&mnt, xattr::PID) {
        Ok(v) => String::from_utf8_lossy(&v).trim().parse::<u32>().ok(),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!(
                "{} is a dead FUSE mount (its daemon is gone); clean it up with: umount -l {}",
                mnt.display(),
                mnt.display()
            ))
        }
        Err(_) => None,
    };
    let Some(pid) = pid else {
        return Err(format!(
            "{} is a {fstype} mount, not extentfs (no {} attribute){}",
            mnt.display(),
            xattr::PID,
            if cmd == "umount" {
                "; use umount or fusermount3 -u"
            } else {
                ""
            }
        ));
    };
    Ok(Target { mnt, pid })
}

/// Push the kernel's dirty pages of the mount to the daemon (cache=kernel keeps some).
fn syncfs(mnt: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(mnt)?;
    Ok(rustix::fs::syncfs(&f)?)
}

/// Progress of a writeback, on stderr: one rewritten line on a terminal, a plain line every
/// few seconds otherwise.
struct Progress {
    tty: bool,
    start: Instant,
    last: Option<(Instant, u64)>,
    last_line: Instant,
    shown: bool,
    written_at_start: Option<u64>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
            last: None,
            last_line: Instant::now(),
            shown: false,
            written_at_start: None,
        }
    }

    fn sample(&mut self, cmd: &str, mnt: &Path) {
        let Ok(v) = getxattr(mnt, xattr::STATS) else {
            return;
        };
        let text = String::from_utf8_lossy(&v);
        let left = figure(&text, "dirty_bytes").unwrap_or(0)
            + figure(&text, "writeback_bytes").unwrap_or(0);
        let written = figure(&text, "writeback_bytes_total").unwrap_or(0);
        let now = Instant::now();
        self.written_at_start.get_or_insert(written);
        let rate = match self.last {
            Some((t, w)) if now > t => (written.saturating_sub(w)) as f64 / (now - t).as_secs_f64(),
            _ => 0.0,
        };
        self.last = Some((now, written));
        let line = format!(
            "{cmd}: {} left to write back, {}/s",
            format_size(left),
            format_size(rate as u64)
        );
        if self.tty {
            eprint!("\r\x1b[K{line}");
            self.shown = true;
        } else if now - self.last_line >= Duration::from_secs(5) {
            eprintln!("extentfs {line}");
            self.last_line = now;
        }
    }

    fn done(&mut self, cmd: &str, mnt: &Path) {
        if !self.tty {
            return;
        }
        if self.shown {
            eprint!("\r\x1b[K");
        }
        let written = getxattr(mnt, xattr::STATS)
            .ok()
            .and_then(|v| figure(&String::from_utf8_lossy(&v), "writeback_bytes_total"));
        if let (Some(w), Some(w0)) = (written, self.written_at_start) {
            eprintln!(
                "{cmd}: wrote back {} in {:.1} s",
                format_size(w.saturating_sub(w0)),
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

/// `ctl sync` on the whole mount, with progress. Ok(()) when everything is in SOURCE and
/// fsynced; else the files that are not, as lines for stderr.
fn sync_mount(cmd: &str, mnt: &Path) -> Result<(), Vec<String>> {
    if let Err(e) = syncfs(mnt) {
        // Not fatal: cache=pool keeps no dirty pages in the kernel.
        eprintln!("extentfs {cmd}: syncfs {}: {e}", mnt.display());
    }
    let mut progress = Progress::new();
    let ctl = |mnt: &Path| setxattr(mnt, xattr::CTL, b"sync");
    // The sync runs in a thread; this one samples progress every 250 ms until it answers
    // (at once when it answers: a short sync costs no wait).
    let mut result = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let _ = tx.send(ctl(mnt));
        });
        progress.sample(cmd, mnt);
        loop {
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(r) => break r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => progress.sample(cmd, mnt),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(std::io::Error::other("panic"))
                }
            }
        }
    });
    progress.done(cmd, mnt);
    if let Err(e) = &result {
        if e.raw_os_error() == Some(libc::EPERM) {
            return Err(vec![format!(
                "{}: not allowed (only root and the user who mounted may sync)",
                mnt.display()
            )]);
        }
        // An error of an earlier background writeback is reported once even when the data
        // was written since: only files still holding unwritten data count.
        if unwritten(mnt).is_empty() {
            result = ctl(mnt);
        }
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let files = unwritten(mnt);
            if files.is_empty() {
                return Err(vec![format!(
                    "writeback failed ({e}), but no file is left with unwritten data"
                )]);
            }
            Err(files
                .iter()
                .map(|(bytes, errno, name)| {
                    format!(
                        "{name}: {} not written to SOURCE ({})",
                        format_size(*bytes),
                        errno_text(*errno, &e)
                    )
                })
                .collect())
        }
    }
}

fn errno_text(errno: i32, fallback: &std::io::Error) -> String {
    if errno == 0 {
        fallback.to_string()
    } else {
        std::io::Error::from_raw_os_error(errno).to_string()
    }
}

fn unwritten(mnt: &Path) -> Vec<(u64, i32, String)> {
    getxattr(mnt, xattr::UNWRITTEN)
        .map(|v| crate::cache::report::parse_unwritten(&String::from_utf8_lossy(&v)))
        .unwrap_or_default()
}

pub fn main(args: &[String]) -> ExitCode {
    let cmd = args[0].as_str();
    let mut paths: Vec<&str> = Vec::new();
    for a in &args[1..] {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') => {
                eprintln!("extentfs {cmd}: unknown flag {s}\n{USAGE}");
                return ExitCode::from(EXIT_USAGE);
            }
            s => paths.push(s),
        }
    }
    let Some((&mnt, files)) = paths.split_first() else {
        eprintln!("extentfs {cmd}: missing MOUNTPOINT\n{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    };
    if cmd == "umount" && !files.is_empty() {
        eprintln!("extentfs umount: one MOUNTPOINT only\n{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    }
    let t = match target(cmd, mnt) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("extentfs {cmd}: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cmd == "sync" {
        if files.is_empty() {
            return match sync_mount(cmd, &t.mnt) {
                Ok(()) => ExitCode::SUCCESS,
                Err(lines) => {
                    for l in lines {
                        eprintln!("extentfs sync: {l}");
                    }
                    ExitCode::from(EXIT_UNWRITTEN)
                }
            };
        }
        return sync_files(files);
    }
    umount(&t)
}

/// fsync each FILE (the daemon writes it back and fsyncs SOURCE's file).
fn sync_files(files: &[&str]) -> ExitCode {
    let mut ok = true;
    for f in files {
        let r = std::fs::File::open(f).and_then(|f| f.sync_all());
        if let Err(e) = r {
            eprintln!("extentfs sync: {f}: {e}");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNWRITTEN)
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Wait until process `pid` (held by `pidfd` when the kernel has pidfds) has exited.
fn wait_exit(pid: u32, pidfd: Option<&OwnedFd>) {
    match pidfd {
        Some(fd) => {
            use rustix::event::{poll, PollFd, PollFlags};
            while poll(&mut [PollFd::new(fd, PollFlags::IN)], None).is_err() {}
        }
        None => {
            // Signal 0 sends nothing; it only checks that the process exists.
            let exists = || {
                rustix::process::Pid::from_raw(pid as i32)
                    .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
            };
            while exists() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn umount(t: &Target) -> ExitCode {
    let mnt = t.mnt.display().to_string();
    // Opened before anything else, so a reused pid cannot fool the wait.
    let pidfd = pidfd_open(t.pid);
    let synced = sync_mount("umount", &t.mnt);
    if let Err(lines) = &synced {
        for l in lines {
            eprintln!("extentfs umount: {l}");
        }
        eprintln!(
            "extentfs umount: unmounting anyway; the daemon saves what it cannot write to its \
             recovery directory"
        );
    }
    // The daemon's outcome at exit comes through this pipe; EOF means it is gone.
    // std's pipe is pipe2(O_CLOEXEC).
    let (r, w) = match std::io::pipe() {
        Ok((r, w)) => (OwnedFd::from(r), OwnedFd::from(w)),
        Err(e) => {
            eprintln!("extentfs umount: pipe: {e}");
            return ExitCode::from(EXIT_UNWRITTEN);
        }
    };
    let verb = format!("report-exit {}", w.as_raw_fd());
    if let Err(e) = setxattr(&t.mnt, xattr::CTL, verb.as_bytes()) {
        eprintln!("extentfs umount: {mnt}: the daemon cannot report back ({e})");
        return ExitCode::from(EXIT_UNWRITTEN);
    }
    drop(w);
    if let Err(e) = unmount(&t.mnt) {
        if e.raw_os_error() == Some(libc::EBUSY) {
            eprintln!(
                "extentfs umount: {mnt} is busy (a file is open there or a process works in it; \
                 see fuser -vm {mnt}): still mounted{}",
                if synced.is_ok() {
                    "; everything written so far is in SOURCE"
                } else {
                    ""
                }
            );
            return ExitCode::from(EXIT_BUSY);
        }
        eprintln!("extentfs umount: {mnt}: {e}");
        return ExitCode::from(EXIT_UNWRITTEN);
    }
    let mut report = String::new();
    let _ = std::fs::File::from(r).read_to_string(&mut report);
    wait_exit(t.pid, pidfd.as_ref());
    let mut lost = false;
    let mut ok = false;
    for line in report.lines() {
        let f: Vec<&str> = line.splitn(5, '\t').collect();
        match f.as_slice() {
            ["ok"] => ok = true,
            ["lost", bytes, errno, name, whereto] => {
                lost = true;
                let bytes = bytes.parse::<u64>().unwrap_or(0);
                let errno = errno.parse::<i32>().unwrap_or(0);
                eprintln!(
                    "extentfs umount: {name}: {} could not be written to SOURCE ({}); {whereto}",
                    format_size(bytes),
                    errno_text(errno, &std::io::Error::from_raw_os_error(libc::EIO))
                );
            }
            _ => {}
        }
    }
    let _ = std::io::stderr().flush();
    if lost {
        return ExitCode::from(EXIT_UNWRITTEN);
    }
    if !ok {
        eprintln!(
            "extentfs umount: the daemon (pid {}) exited without reporting its last writeback \
             (killed?); see its log",
            t.pid
        );
        return ExitCode::from(EXIT_UNWRITTEN);
    }
    ExitCode::SUCCESS
}

/// umount2, or fusermount3 -u where we may not (an unprivileged user's mount).
fn unmount(mnt: &Path) -> std::io::Result<()> {
    let Err(e) = crate::sys::mount::unmount(mnt, false) else {
        return Ok(());
    };
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(e);
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    if msg.contains("busy") {
        return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
    }
    Err(std::io::Error::other(msg.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_stats_text() {
        let t = "dirty_bytes=10\nwriteback_bytes=5\nwriteback_bytes_total=99\n";
        assert_eq!(figure(t, "dirty_bytes"), Some(10));
        assert_eq!(figure(t, "writeback_bytes"), Some(5));
        assert_eq!(figure(t, "writeback_bytes_total"), Some(99));
        assert_eq!(figure(t, "missing"), None);
    }

    #[test]
    fn not_a_mount_point_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = target("umount", d.path().to_str().unwrap()).err().unwrap();
        assert!(e.contains("is not a mount point"), "{e}");
        let e = target("sync", "/nonexistent/wb-x").err().unwrap();
        assert!(e.contains("No such file"), "{e}");
    }
}
