//! Mount options: `-o opt[,opt...]` parsed and validated into a typed [`MountConfig`].
//!
//! Pure functions only (no I/O), so the parser can be unit tested and fuzzed. Every rejected
//! option produces one human-readable line naming the option and what is wrong with it.
//! Generic options that `mount(8)`/`mount.fuse3` pass (`rw`, `dev`, `suid`, `noatime`, ...) are
//! accepted and mapped onto mount flags; `x-*` and `comment=` options are ignored, as mount does.

use crate::pool::HugePagePolicy;
use std::fmt;
use std::time::Duration;

/// When the adapter polls idly after requests (see `fs::spin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpinMode {
    Off,
    /// While the daemon's CPU affinity is a strict subset of the online CPUs that the latest
    /// client cannot run on.
    Auto(Duration),
    Always(Duration),
}

/// Smallest pool that can serve 1 MiB requests from several threads with room to evict.
pub const MIN_CACHE_SIZE: u64 = 16 << 20;

/// Largest pool the option parser accepts on any machine (the machine's memory is the
/// tighter limit everywhere today).
pub const MAX_CACHE_SIZE: u64 = 1 << 44;

/// One documented `-o` option: the single table `extentfs --help` and the man page render.
#[derive(Clone, Copy, Debug)]
pub struct OptionDoc {
    /// As written on the command line, with a placeholder for the value (`cache_size=SIZE`).
    pub name: &'static str,
    /// What it does (one paragraph, no line breaks).
    pub help: &'static str,
    /// The default, or "" when there is none to state.
    pub default: &'static str,
    /// A valid use of it, applied by the unit tests so the table and the parser agree.
    pub example: &'static str,
}

/// Every `-o` option, in the order `--help` and `extentfs(8)` list them.
pub const OPTION_DOCS: &[OptionDoc] = &[
    OptionDoc {
        name: "cache_size=SIZE",
        help: "capacity of the page pool: 512M, 4G, 1.5G or bytes; at least 16M, at most the \
               machine's memory",
        default: "a quarter of RAM, at most 8G",
        example: "cache_size=512M",
    },
    OptionDoc {
        name: "hugepages=MODE",
        help: "pool backing: hugetlb (reserved 2 MiB pages, see /proc/sys/vm/nr_hugepages), thp \
               (transparent huge pages) or off (4 KiB pages); auto tries them in that order",
        default: "auto",
        example: "hugepages=thp",
    },
    OptionDoc {
        name: "writeback_threads=N",
        help: "threads writing dirty data back to SOURCE (1 to 64)",
        default: "2",
        example: "writeback_threads=3",
    },
    OptionDoc {
        name: "threads=N",
        help: "FUSE request threads, each with its own cloned /dev/fuse descriptor (1 to 64)",
        default: "the number of CPUs",
        example: "threads=4",
    },
    OptionDoc {
        name: "rlimit_nofile=N",
        help: "the daemon's RLIMIT_NOFILE (256 to 2^30); past half of it, descriptors of idle \
               inodes are given back and reopened by file handle when next used",
        default: "fs.nr_open when allowed (CAP_SYS_RESOURCE), else the hard limit",
        example: "rlimit_nofile=4096",
    },
    OptionDoc {
        name: "dirty_limit=SHARE",
        help: "share of the pool that may be dirty before writers wait for writeback, e.g. 50% \
               or 0.5",
        default: "50%",
        example: "dirty_limit=25%",
    },
    OptionDoc {
        name: "dirty_expire=TIME",
        help: "age after which dirty data is written back, e.g. 5s, 500ms, 1m",
        default: "5s",
        example: "dirty_expire=500ms",
    },
    OptionDoc {
        name: "spin=auto|0|TIME",
        help: "after each request a thread at idle priority polls for TIME so the CPU does not \
               sleep between requests; auto polls (2ms) only while the daemon is confined to \
               some of the CPUs (taskset) that the client cannot run on; 0 never polls",
        default: "auto",
        example: "spin=2ms",
    },
    OptionDoc {
        name: "cache=pool|kernel",
        help: "pool: files are opened with direct I/O so the pool is the only data cache (mmap \
               still works); kernel: the kernel page cache sits in front",
        default: "pool",
        example: "cache=kernel",
    },
    OptionDoc {
        name: "coherence=cto|strict|none",
        help: "how changes others make to SOURCE are followed: cto, close-to-open as NFS (each \
               open revalidates, each close writes back); strict, also every read; none, \
               extentfs is SOURCE's only writer (see docs/coherence.md)",
        default: "cto",
        example: "coherence=none",
    },
    OptionDoc {
        name: "attr_timeout=TIME",
        help: "how long the kernel caches attributes and names, and a file held open goes \
               without revalidating, e.g. 1s, 200ms or 0",
        default: "1s",
        example: "attr_timeout=200ms",
    },
    OptionDoc {
        name: "allow_other",
        help: "other users may use the mount",
        default: "off",
        example: "allow_other",
    },
    OptionDoc {
        name: "default_permissions",
        help: "accepted; the kernel always checks permissions against the files' modes",
        default: "on",
        example: "default_permissions",
    },
    OptionDoc {
        name: "ro / rw",
        help: "read-only / read-write mount",
        default: "rw",
        example: "ro",
    },
    OptionDoc {
        name: "debug",
        help: "verbose logs (same as RUST_LOG=debug)",
        default: "off",
        example: "debug",
    },
    OptionDoc {
        name: "log_file=PATH",
        help: "where the detached daemon logs (the mount line, warnings and errors); with -f \
               the log goes to stderr",
        default: "syslog when /dev/log exists, else /var/log/extentfs/extentfs.log",
        example: "log_file=/var/log/extentfs.log",
    },
    OptionDoc {
        name: "recovery_dir=PATH",
        help: "absolute path of the directory where data that cannot be written to SOURCE is \
               saved at exit; put it on another filesystem than SOURCE",
        default: "/var/lib/extentfs/recovery",
        example: "recovery_dir=/srv/extentfs-recovery",
    },
    OptionDoc {
        name: "nonempty",
        help: "allow mounting over a non-empty directory",
        default: "off",
        example: "nonempty",
    },
    OptionDoc {
        name: "dev nodev suid nosuid exec noexec atime noatime diratime nodiratime relatime \
               strictatime sync async dirsync",
        help: "as in mount(8)",
        default: "",
        example: "nosuid,nodev,noatime,nodiratime,strictatime,async,dirsync",
    },
    OptionDoc {
        name: "defaults auto noauto user users nofail _netdev x-*",
        help: "accepted and ignored, as mount(8) and fstab pass them",
        default: "",
        example: "defaults,noauto,nofail,_netdev,x-systemd.automount",
    },
];

/// The `-o` options as a plain-text table for `--help`: names in a column, help wrapped
/// to fit 80 columns.
pub fn options_help_text() -> String {
    const NAME: usize = 24;
    const WIDTH: usize = 80;
    let mut s = String::new();
    for o in OPTION_DOCS {
        let mut text = o.help.to_string();
        if !o.default.is_empty() {
            text.push_str(&format!(" (default: {})", o.default));
        }
        let lines = wrap(&text, WIDTH - 2 - NAME);
        let name_lines = wrap(o.name, WIDTH - 2);
        let mut first = true;
        if name_lines.len() > 1 || o.name.len() >= NAME {
            for l in &name_lines {
                s.push_str(&format!("  {l}\n"));
            }
            first = false;
        }
        for l in lines {
            if first {
                s.push_str(&format!("  {:<NAME$}{l}\n", o.name));
                first = false;
            } else {
                s.push_str(&format!("  {:<NAME$}{l}\n", ""));
            }
        }
    }
    s
}

/// Greedy word wrap at `width` columns.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for w in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + w.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(w);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Where file data is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// The pool is the only data cache: files are opened with FOPEN_DIRECT_IO.
    Pool,
    /// The kernel page cache sits in front of the pool (keep_cache, writeback_cache).
    Kernel,
}

/// How the mount follows changes that others make to SOURCE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coherence {
    /// Close-to-open, as NFS: every open revalidates against SOURCE, a close writes back,
    /// attributes and reads of a file held open revalidate once per `attr_timeout`.
    Cto,
    /// As `Cto`, and every read revalidates too; the kernel caches no attributes or names.
    Strict,
    /// extentfs is SOURCE's only writer: nothing is revalidated.
    None,
}

/// Everything `-o` can say, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct MountConfig {
    pub cache_size: u64,
    pub hugepages: HugePagePolicy,
    pub writeback_threads: usize,
    /// Fraction of the pool that may be dirty before writers wait for writeback.
    pub dirty_limit: f64,
    pub dirty_expire: Duration,
    pub cache: CacheMode,
    pub coherence: Coherence,
    /// How long the kernel may keep attributes and names (and a file held open may go
    /// without revalidating) before asking again.
    pub attr_timeout: Duration,
    pub allow_other: bool,
    pub default_permissions: bool,
    pub read_only: bool,
    pub debug: bool,
    pub nonempty: bool,
    /// FUSE worker threads (fuser `n_threads`).
    pub threads: usize,
    /// RLIMIT_NOFILE for the daemon; None: as high as allowed (fs.nr_open when privileged).
    pub rlimit_nofile: Option<u64>,
    /// Idle polling after each request (see `fs::spin`).
    pub spin: SpinMode,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub noatime: bool,
    pub nodiratime: bool,
    pub sync: bool,
    pub dirsync: bool,
    pub relatime: bool,
    pub strictatime: bool,
    /// The `-o remount` generic option: never valid for a FUSE daemon start.
    pub remount: bool,
    /// Where the daemon writes its log once detached (default: syslog, else
    /// [`DEFAULT_LOG_FILE`]).
    pub log_file: Option<String>,
    /// Where data that could not be written to SOURCE is saved at exit.
    pub recovery_dir: String,
    /// The machine's memory: `cache_size` may not exceed it.
    pub memory: u64,
}

/// Default `recovery_dir`.
pub const DEFAULT_RECOVERY_DIR: &str = "/var/lib/extentfs/recovery";
/// Where a detached daemon logs when there is no syslog socket and no `log_file`.
pub const DEFAULT_LOG_FILE: &str = "/var/log/extentfs/extentfs.log";

/// One rejected option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError(pub String);

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionError {}

impl MountConfig {
    /// Defaults for a machine with `total_ram` bytes of memory and `cpus` cores.
    pub fn defaults(total_ram: u64, cpus: usize) -> MountConfig {
        // A quarter of RAM, at least the minimum, at most 8 GiB.
        let cache_size = (total_ram / 4).clamp(MIN_CACHE_SIZE, 8 << 30) & !((2 << 20) - 1);
        MountConfig {
            cache_size: cache_size.max(MIN_CACHE_SIZE),
            hugepages: HugePagePolicy::Auto,
            writeback_threads: 2,
            dirty_limit: 0.5,
            dirty_expire: Duration::from_secs(5),
            spin: SpinMode::Auto(Duration::from_millis(2)),
            cache: CacheMode::Pool,
            coherence: Coherence::Cto,
            attr_timeout: Duration::from_secs(1),
            allow_other: false,
            default_permissions: false,
            read_only: false,
            debug: false,
            nonempty: false,
            threads: cpus.max(1),
            rlimit_nofile: None,
            nosuid: false,
            nodev: false,
            noexec: false,
            noatime: false,
            nodiratime: false,
            sync: false,
            dirsync: false,
            relatime: false,
            strictatime: false,
            remount: false,
            log_file: None,
            recovery_dir: DEFAULT_RECOVERY_DIR.to_string(),
            memory: total_ram,
        }
    }

    /// Apply a comma-separated option string (as given after `-o`). Later options win.
    pub fn apply(&mut self, opts: &str) -> Result<(), OptionError> {
        for raw in opts.split(',') {
            let opt = raw.trim();
            if opt.is_empty() {
                continue;
            }
            if opt.chars().any(char::is_control) {
                // Quoted with escapes, so the message stays one line.
                return Err(OptionError(format!(
                    "option {opt:?} contains a control character"
                )));
            }
            self.apply_one(opt)?;
        }
        Ok(())
    }

    fn apply_one(&mut self, opt: &str) -> Result<(), OptionError> {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        fn need<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str, OptionError> {
            match v {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(OptionError(format!(
                    "option '{key}' needs a value ({key}=...)"
                ))),
            }
        }
        let flag = |v: Option<&str>| -> Result<(), OptionError> {
            match v {
                None => Ok(()),
                Some(_) => Err(OptionError(format!("option '{key}' takes no value"))),
            }
        };
        match key {
            "cache_size" => {
                let v = need(key, value)?;
                let size = parse_size(v).ok_or_else(|| {
                    OptionError(format!("cache_size={v}: not a size (e.g. 512M, 4G)"))
                })?;
                if size < MIN_CACHE_SIZE {
                    return Err(OptionError(format!(
                        "cache_size={v}: too small, the minimum is {}M",
                        MIN_CACHE_SIZE >> 20
                    )));
                }
                if size > self.memory.min(MAX_CACHE_SIZE) {
                    return Err(OptionError(if self.memory <= MAX_CACHE_SIZE {
                        format!(
                            "cache_size={v}: larger than this machine's memory ({})",
                            format_size(self.memory)
                        )
                    } else {
                        format!(
                            "cache_size={v}: too large (at most {})",
                            format_size(MAX_CACHE_SIZE)
                        )
                    }));
                }
                self.cache_size = size;
            }
            "hugepages" => {
                let v = need(key, value)?;
                self.hugepages = match v {
                    "auto" => HugePagePolicy::Auto,
                    "hugetlb" => HugePagePolicy::Hugetlb,
                    "thp" => HugePagePolicy::Thp,
                    "off" | "4k" => HugePagePolicy::Off,
                    _ => {
                        return Err(OptionError(format!(
                            "hugepages={v}: expected auto, hugetlb, thp or off"
                        )))
                    }
                };
            }
            "writeback_threads" => {
                let v = need(key, value)?;
                self.writeback_threads = parse_count(key, v, 1, 64)?;
            }
            "threads" => {
                let v = need(key, value)?;
                self.threads = parse_count(key, v, 1, 64)?;
            }
            "rlimit_nofile" => {
                let v = need(key, value)?;
                self.rlimit_nofile = Some(parse_count(key, v, 256, 1 << 30)? as u64);
            }
            "dirty_limit" => {
                let v = need(key, value)?;
                self.dirty_limit = parse_fraction(v).ok_or_else(|| {
                    OptionError(format!(
                        "dirty_limit={v}: expected a share of the pool, e.g. 50% or 0.5 (between 1% and 100%)"
                    ))
                })?;
            }
            "dirty_expire" => {
                let v = need(key, value)?;
                self.dirty_expire = parse_duration(v).ok_or_else(|| {
                    OptionError(format!(
                        "dirty_expire={v}: expected a duration such as 5s, 500ms or 1m (at most 1h)"
                    ))
                })?;
            }
            "spin" => {
                let v = need(key, value)?;
                self.spin = match v {
                    "0" | "off" => SpinMode::Off,
                    "auto" => SpinMode::Auto(Duration::from_millis(2)),
                    _ => SpinMode::Always(
                        parse_duration(v)
                            .filter(|d| *d <= Duration::from_secs(1))
                            .ok_or_else(|| {
                                OptionError(format!(
                                "spin={v}: expected auto, 0 (off) or a duration such as 2ms (at most 1s)"
                            ))
                            })?,
                    ),
                };
            }
            "cache" => {
                let v = need(key, value)?;
                self.cache = match v {
                    "pool" => CacheMode::Pool,
                    "kernel" => CacheMode::Kernel,
                    _ => return Err(OptionError(format!("cache={v}: expected pool or kernel"))),
                };
            }
            "coherence" => {
                let v = need(key, value)?;
                self.coherence = match v {
                    "cto" => Coherence::Cto,
                    "strict" => Coherence::Strict,
                    "none" => Coherence::None,
                    _ => {
                        return Err(OptionError(format!(
                            "coherence={v}: expected cto, strict or none"
                        )))
                    }
                };
            }
            "attr_timeout" => {
                let v = need(key, value)?;
                self.attr_timeout = match v {
                    "0" => Duration::ZERO,
                    _ => parse_duration(v).ok_or_else(|| {
                        OptionError(format!(
                            "attr_timeout={v}: expected a duration such as 1s, 200ms or 0 (at most 1h)"
                        ))
                    })?,
                };
            }
            "allow_other" => {
                flag(value)?;
                self.allow_other = true;
            }
            "default_permissions" => {
                flag(value)?;
                self.default_permissions = true;
            }
            "ro" => {
                flag(value)?;
                self.read_only = true;
            }
            "rw" => {
                flag(value)?;
                self.read_only = false;
            }
            "debug" => {
                flag(value)?;
                self.debug = true;
            }
            "nonempty" => {
                flag(value)?;
                self.nonempty = true;
            }
            "suid" => self.nosuid = false,
            "nosuid" => self.nosuid = true,
            "dev" => self.nodev = false,
            "nodev" => self.nodev = true,
            "exec" => self.noexec = false,
            "noexec" => self.noexec = true,
            "atime" => self.noatime = false,
            "noatime" => self.noatime = true,
            "diratime" => self.nodiratime = false,
            "nodiratime" => self.nodiratime = true,
            "relatime" => self.relatime = true,
            "norelatime" => self.relatime = false,
            "strictatime" => self.strictatime = true,
            "sync" => self.sync = true,
            "async" => self.sync = false,
            "dirsync" => self.dirsync = true,
            "remount" => self.remount = true,
            "log_file" => self.log_file = Some(need(key, value)?.to_string()),
            "recovery_dir" => {
                let v = need(key, value)?;
                if !v.starts_with('/') {
                    return Err(OptionError(format!(
                        "recovery_dir={v}: expected an absolute path"
                    )));
                }
                self.recovery_dir = v.to_string();
            }
            // Options mount(8) and fstab use that mean nothing to the daemon.
            "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "owner" | "group"
            | "_netdev" | "nofail" | "loud" | "silent" | "lazytime" | "nolazytime" | "iversion"
            | "noiversion" | "nostrictatime" => {}
            // fuse options that mount.fuse3 or users pass and that do not apply.
            "fsname" | "subtype" | "comment" | "blksize" | "max_read" | "auto_unmount" => {}
            _ if key.starts_with("x-") => {}
            _ => {
                return Err(OptionError(format!(
                    "unknown option '{opt}' (see extentfs --help)"
                )))
            }
        }
        Ok(())
    }
}

/// `512M`, `4G`, `1048576`, `1.5G`, `64KiB`. Binary units. None on garbage or overflow.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return None;
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    if num.contains('.') {
        let f: f64 = num.parse().ok()?;
        let v = f * (1u64 << shift) as f64;
        if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
            return None;
        }
        Some(v as u64)
    } else {
        let n: u64 = num.parse().ok()?;
        n.checked_mul(1u64 << shift)
    }
}

/// `50%` or `0.5`, within [0.01, 1].
pub fn parse_fraction(s: &str) -> Option<f64> {
    let v = if let Some(p) = s.strip_suffix('%') {
        p.trim().parse::<f64>().ok()? / 100.0
    } else {
        s.trim().parse::<f64>().ok()?
    };
    (v.is_finite() && (0.01..=1.0).contains(&v)).then_some(v)
}

/// `5s`, `500ms`, `2m`, `5` (seconds). At most one hour, at least 1 ms.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (d >= Duration::from_millis(1) && d <= Duration::from_secs(3600)).then_some(d)
}

fn parse_count(key: &str, v: &str, min: usize, max: usize) -> Result<usize, OptionError> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(OptionError(format!(
            "{key}={v}: expected a whole number from {min} to {max}"
        ))),
    }
}

/// Human-readable size (binary units), for messages and stats.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MountConfig {
        MountConfig::defaults(24 << 30, 2)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size("-1G"), None);
        assert_eq!(parse_size("99999999999999999999T"), None);
        assert_eq!(parse_size("20000000T"), None);
    }

    #[test]
    fn defaults_are_sane() {
        let c = cfg();
        assert_eq!(c.cache_size, 6 << 30);
        let small = MountConfig::defaults(32 << 20, 1);
        assert_eq!(small.cache_size, MIN_CACHE_SIZE);
        assert_eq!(small.threads, 1);
    }

    #[test]
    fn typical_lines() {
        let mut c = cfg();
        c.apply("rw,dev,suid,allow_other,default_permissions,cache_size=1G,hugepages=thp")
            .unwrap();
        assert!(c.allow_other && c.default_permissions && !c.read_only);
        assert_eq!(c.cache_size, 1 << 30);
        assert_eq!(c.hugepages, HugePagePolicy::Thp);
        c.apply("defaults,noatime,x-systemd.automount,cache=kernel,dirty_limit=25%,dirty_expire=500ms,writeback_threads=3,ro")
            .unwrap();
        assert!(c.noatime && c.read_only);
        assert_eq!(c.cache, CacheMode::Kernel);
        assert_eq!(c.dirty_limit, 0.25);
        assert_eq!(c.dirty_expire, Duration::from_millis(500));
        assert_eq!(c.writeback_threads, 3);
        assert_eq!(c.spin, SpinMode::Auto(Duration::from_millis(2)));
        assert_eq!(c.recovery_dir, DEFAULT_RECOVERY_DIR);
        c.apply("recovery_dir=/mnt/other/rescue").unwrap();
        assert_eq!(c.recovery_dir, "/mnt/other/rescue");
        c.apply("rlimit_nofile=4096").unwrap();
        assert_eq!(c.rlimit_nofile, Some(4096));
        c.apply("spin=5ms").unwrap();
        assert_eq!(c.spin, SpinMode::Always(Duration::from_millis(5)));
        c.apply("spin=0").unwrap();
        assert_eq!(c.spin, SpinMode::Off);
        c.apply("spin=auto").unwrap();
        assert_eq!(c.spin, SpinMode::Auto(Duration::from_millis(2)));
    }

    #[test]
    fn rejects_with_clear_messages() {
        let cases = [
            ("bogus", "unknown option 'bogus'"),
            ("cache_size=", "needs a value"),
            ("cache_size=1M", "too small"),
            ("cache_size=lots", "not a size"),
            ("hugepages=yes", "expected auto, hugetlb, thp or off"),
            ("cache=none", "expected pool or kernel"),
            ("dirty_limit=0", "dirty_limit=0"),
            ("dirty_limit=150%", "dirty_limit=150%"),
            ("dirty_expire=forever", "dirty_expire=forever"),
            ("spin=5s", "at most 1s"),
            ("spin=fast", "spin=fast"),
            ("writeback_threads=0", "from 1 to 64"),
            ("rlimit_nofile=100", "from 256 to"),
            ("allow_other=1", "takes no value"),
            ("a\nb", "control character"),
            ("recovery_dir=rel/dir", "absolute path"),
            ("recovery_dir=", "needs a value"),
            ("hugepages=x\ny", "control character"),
        ];
        for (opt, want) in cases {
            let err = cfg().apply(opt).unwrap_err().to_string();
            assert!(err.contains(want), "{opt}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn cache_size_limit_is_the_machines_memory() {
        let mut c = cfg();
        c.apply("cache_size=24G").unwrap();
        let err = c.apply("cache_size=25G").unwrap_err().to_string();
        assert_eq!(
            err,
            "cache_size=25G: larger than this machine's memory (24.0 GiB)"
        );
        let mut huge = MountConfig::defaults(1 << 50, 2);
        let err = huge.apply("cache_size=17T").unwrap_err().to_string();
        assert_eq!(err, "cache_size=17T: too large (at most 16.0 TiB)");
    }

    #[test]
    fn every_documented_option_is_accepted() {
        for o in OPTION_DOCS {
            let mut c = cfg();
            c.apply(o.example)
                .unwrap_or_else(|e| panic!("{}: example {:?}: {e}", o.name, o.example));
            if o.help.contains("ignored") {
                assert_eq!(c, cfg(), "{}: example {:?}", o.name, o.example);
            } else {
                assert_ne!(
                    c,
                    cfg(),
                    "{}: example {:?} changed nothing",
                    o.name,
                    o.example
                );
            }
            // The example uses the option it documents.
            let key = o.example.split(['=', ',']).next().unwrap();
            assert!(o.name.contains(key), "{}: example {:?}", o.name, o.example);
            assert!(
                !o.help.contains('\n') && !o.help.contains("  "),
                "{}",
                o.name
            );
        }
        let text = options_help_text();
        for o in OPTION_DOCS {
            let first = o.name.split_whitespace().next().unwrap();
            assert!(
                text.lines().any(|l| l.trim_start().starts_with(first)),
                "{first} missing from:\n{text}"
            );
        }
        assert!(text.lines().all(|l| l.len() <= 80), "{text}");
    }

    #[test]
    fn fractions_and_durations() {
        assert_eq!(parse_fraction("0.5"), Some(0.5));
        assert_eq!(parse_fraction("100%"), Some(1.0));
        assert_eq!(parse_fraction("NaN"), None);
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration("2h"), None);
        assert_eq!(parse_duration("99999999999999999999"), None);
    }

    #[test]
    fn format_sizes() {
        assert_eq!(format_size(10), "10 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(3 << 30), "3.0 GiB");
    }
}
