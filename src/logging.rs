//! Where the daemon's log goes, so that warnings and errors of a detached daemon always land
//! where a user looks:
//!
//! - `-f` without `log_file`: stderr;
//! - `-o log_file=PATH`: that file (appended, reopened per line so rotation works);
//! - otherwise syslog, when its socket (`/dev/log`, or `$EXTENTFS_SYSLOG_SOCKET`) accepts a
//!   connection: RFC 3164 datagrams, facility `daemon`, tag `extentfs[PID]`, the severity
//!   from the event's level;
//! - otherwise [`DEFAULT_LOG_FILE`] (its directory is created), or, where that cannot be
//!   opened (not root), `$XDG_STATE_HOME/extentfs/extentfs.log` (`~/.local/state/...`).
//!
//! Syslog is a unix datagram socket and a one-line format, so it is written here rather than
//! through a crate: glibc's `syslog(3)` would need `unsafe` FFI with a format string, and the
//! crates that wrap the protocol bring their own formatting and dependencies for ~60 lines.
//! A line that cannot be sent (the syslog daemon restarted) is retried once on a new
//! connection, then appended to the default file.

use crate::options::DEFAULT_LOG_FILE;
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stderr,
    File(PathBuf),
    Syslog(PathBuf),
}

/// The syslog socket to use: `$EXTENTFS_SYSLOG_SOCKET` or `/dev/log`.
pub fn syslog_socket() -> PathBuf {
    std::env::var_os("EXTENTFS_SYSLOG_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/log"))
}

/// Decide the target (see the module notes). `syslog_ok`: whether a datagram socket can be
/// connected to `socket`.
pub fn choose(
    log_file: Option<&str>,
    foreground: bool,
    socket: &Path,
    syslog_ok: impl FnOnce(&Path) -> bool,
) -> Target {
    match (log_file, foreground) {
        (Some(f), _) => Target::File(PathBuf::from(f)),
        (None, true) => Target::Stderr,
        (None, false) if syslog_ok(socket) => Target::Syslog(socket.to_path_buf()),
        (None, false) => Target::File(default_file()),
    }
}

/// [`DEFAULT_LOG_FILE`] when it can be opened (creating its directory), else the user's
/// state directory.
pub fn default_file() -> PathBuf {
    let p = PathBuf::from(DEFAULT_LOG_FILE);
    if open_append(&p).is_ok() {
        return p;
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match state {
        Some(s) => s.join("extentfs/extentfs.log"),
        None => p,
    }
}

fn open_append(p: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = p.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
}

fn connect(socket: &Path) -> io::Result<UnixDatagram> {
    let s = UnixDatagram::unbound()?;
    s.connect(socket)?;
    Ok(s)
}

/// Set up `tracing` for the daemon: `debug` or `RUST_LOG`, else warnings and errors. Returns
/// the target chosen.
pub fn init(log_file: Option<&str>, foreground: bool, debug: bool) -> Target {
    use tracing_subscriber::EnvFilter;
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let mut target = choose(log_file, foreground, &syslog_socket(), |s| {
        connect(s).is_ok()
    });
    if let Target::File(p) = &target {
        if let Err(e) = open_append(p) {
            // Said while stderr is still the caller's; the lines go where a user looks anyway.
            let fallback = default_file();
            eprintln!(
                "extentfs: log file {}: {e}; logging to {} instead",
                p.display(),
                fallback.display()
            );
            target = Target::File(fallback);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match &target {
        Target::Stderr => builder.with_writer(io::stderr).try_init(),
        Target::File(p) => builder.with_writer(FileWriter(p.clone())).try_init(),
        Target::Syslog(s) => builder
            .without_time()
            .with_level(false)
            .with_writer(Syslog::new(s.clone()))
            .try_init(),
    };
    target
}

/// Appends each line to a file, opened per line (so rotation works); the default file when
/// it cannot be opened any more.
struct FileWriter(PathBuf);

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = Box<dyn Write>;
    fn make_writer(&'a self) -> Self::Writer {
        match open_append(&self.0).or_else(|_| open_append(&default_file())) {
            Ok(f) => Box::new(f),
            Err(_) => Box::new(io::sink()),
        }
    }
}

/// Sends each event as one syslog datagram.
pub struct Syslog {
    socket: PathBuf,
    conn: Arc<Mutex<Option<UnixDatagram>>>,
}

impl Syslog {
    pub fn new(socket: PathBuf) -> Syslog {
        let conn = connect(&socket).ok();
        Syslog {
            socket,
            conn: Arc::new(Mutex::new(conn)),
        }
    }
}

/// One event being formatted; sent when dropped.
pub struct SyslogLine {
    socket: PathBuf,
    conn: Arc<Mutex<Option<UnixDatagram>>>,
    severity: u8,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Facility `daemon`.
const LOG_DAEMON: u8 = 3 << 3;

fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// `<PRI>Mmm dd hh:mm:ss extentfs[PID]: MESSAGE` (RFC 3164 as glibc sends it locally).
pub fn format_line(severity: u8, unix_secs: i64, pid: u32, msg: &str) -> Vec<u8> {
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let tm = crate::sys::time::localtime(unix_secs);
    let msg = msg.trim_end_matches('\n');
    format!(
        "<{}>{} {:2} {:02}:{:02}:{:02} extentfs[{pid}]: {msg}",
        LOG_DAEMON | severity,
        MON[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
    .into_bytes()
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let msg = String::from_utf8_lossy(&self.buf).into_owned();
        let line = format_line(self.severity, now, std::process::id(), &msg);
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for _ in 0..2 {
            if let Some(c) = conn.as_ref() {
                if c.send(&line).is_ok() {
                    return;
                }
            }
            *conn = connect(&self.socket).ok();
        }
        drop(conn);
        // Syslog is gone: the line still lands where a user looks.
        if let Ok(mut f) = open_append(&default_file()) {
            let _ = f.write_all(&line[line.iter().position(|&b| b == b'>').map_or(0, |i| i + 1)..]);
            let _ = f.write_all(b"\n");
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> SyslogLine {
        self.make_line(7)
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogLine {
        self.make_line(severity(meta.level()))
    }
}

impl Syslog {
    fn make_line(&self, severity: u8) -> SyslogLine {
        SyslogLine {
            socket: self.socket.clone(),
            conn: self.conn.clone(),
            severity,
            buf: Vec::new(),
        }
    }
}

/// A path for a log line or a report: lossy UTF-8, with control characters (a newline in a
/// name) escaped so one message stays one line.
pub fn display_name(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    if s.chars().any(char::is_control) {
        s.escape_debug().to_string()
    } else {
        s.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_line() {
        assert_eq!(display_name(b"a\nb"), "a\\nb");
        assert_eq!(display_name(b"a\nb".as_slice()).lines().count(), 1);
        assert_eq!(display_name(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn the_target_is_chosen_in_order() {
        let sock = Path::new("/run/x.sock");
        assert_eq!(
            choose(Some("/l"), true, sock, |_| true),
            Target::File("/l".into())
        );
        assert_eq!(
            choose(Some("/l"), false, sock, |_| true),
            Target::File("/l".into())
        );
        assert_eq!(choose(None, true, sock, |_| true), Target::Stderr);
        assert_eq!(
            choose(None, false, sock, |_| true),
            Target::Syslog(sock.into())
        );
        match choose(None, false, sock, |_| false) {
            Target::File(p) => assert!(p.ends_with("extentfs/extentfs.log"), "{p:?}"),
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn syslog_lines() {
        let l = String::from_utf8(format_line(3, 0, 42, "a: failed\n")).unwrap();
        assert!(l.starts_with("<27>"), "{l}");
        assert!(l.ends_with(" extentfs[42]: a: failed"), "{l}");
        // "<27>Mmm dd hh:mm:ss " is 20 bytes.
        assert_eq!(&l[19..20], " ", "{l}");
        assert_eq!(&format_line(4, 0, 1, "x")[..4], b"<28>");
    }

    #[test]
    fn syslog_datagrams_reach_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let s = Syslog::new(path.clone());
        {
            let mut w = s.make_line(severity(&Level::WARN));
            write!(w, "dir/f: hello").unwrap();
        }
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with("<28>"), "{got}");
        assert!(
            got.ends_with(&format!("extentfs[{}]: dir/f: hello", std::process::id())),
            "{got}"
        );
    }
}
