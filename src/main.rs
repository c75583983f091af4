//! The `extentfs` command: mount (the default), or read a mount's figures (`stats`,
//! `extents`). Mounting parses and validates everything first, so a bad option or path fails
//! with one clear line before anything is mounted; then it daemonizes (unless `-f`), mounts,
//! and returns only once the mount is live, which is what mount(8) and fstab rely on.

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

use clap::{CommandFactory, FromArgMatches, Parser};
use extentfs::cache::{CacheConfig, CacheContext};
use extentfs::fs::mount::{self, MountPointState};
use extentfs::fs::{session, FsConfig};
use extentfs::options::{format_size, MountConfig};
use extentfs::pool::{PagePool, PoolConfig};
use extentfs::source::AtimeMode;
use extentfs::sys::mem::total_ram;
use extentfs::sys::process::{self as sys_process, Forked, SignalSet};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

mod generate;

/// `--version`: the version, the commit it was built from and the build date (`build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("EXTENTFS_GIT_COMMIT"),
    ", built ",
    env!("EXTENTFS_BUILD_DATE"),
    ")"
);

const OTHER_HELP: &str = "\
OTHER COMMANDS:
  extentfs stats MOUNTPOINT [FILE...] [--all] [--json | --prometheus] [--watch SECS]
  extentfs extents FILE [--map]
  extentfs sync MOUNTPOINT [FILE...]   write back and fsync (plain sync(1) does not reach
                                       the daemon); exit 1 naming files not written
  extentfs umount MOUNTPOINT           write back, unmount, wait for the daemon; exit 0 only
                                       when every byte is in SOURCE (1: data not written,
                                       saved to recovery_dir; 2: not an extentfs mount;
                                       3: busy)
  extentfs help [COMMAND]

Plain `umount MOUNTPOINT` returns at once; the daemon writes back afterwards (wait for it
before reading SOURCE). SIGTERM/SIGINT write back, then unmount. See extentfs(8).";

/// After the clap-generated part of `--help`: the `-o` options (from the table in
/// `options.rs` that the man page also renders) and the other commands.
fn after_help() -> String {
    format!(
        "MOUNT OPTIONS (-o opt[,opt...]):\n{}\n{OTHER_HELP}",
        extentfs::options::options_help_text()
    )
}

/// Mount SOURCE at MOUNTPOINT with an extent-mapped page cache in front of it.
#[derive(Parser, Debug)]
#[command(name = "extentfs", version = VERSION, after_help = after_help())]
struct MountArgs {
    /// Directory whose contents the mount shows.
    #[arg(value_hint = clap::ValueHint::DirPath)]
    source: PathBuf,
    /// Where to mount it (an existing, empty directory).
    #[arg(value_hint = clap::ValueHint::DirPath)]
    mountpoint: PathBuf,
    /// Mount options, comma-separated (see below). May be repeated.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground (do not daemonize); log to stderr.
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("stats") | Some("extents") => extentfs::cli::main(&args[1..]),
        Some("sync") | Some("umount") => extentfs::control::main(&args[1..]),
        Some("generate") => generate::main(&command(), &args[2..]),
        _ => {
            // Only `help [COMMAND]` reaches here as a subcommand (clap prints it and exits).
            let matches = command().get_matches();
            match MountArgs::from_arg_matches(&matches) {
                Ok(a) => mount_main(a),
                Err(e) => e.exit(),
            }
        }
    }
}

/// The whole command line as clap knows it: mounting, and the subcommands (parsed by
/// `cli`). `--help`, `help`, the man page and the shell completions all come from it.
fn command() -> clap::Command {
    MountArgs::command()
        .subcommand_negates_reqs(true)
        .args_conflicts_with_subcommands(true)
        .subcommand(extentfs::cli::stats_command())
        .subcommand(extentfs::cli::extents_command())
        .subcommand(extentfs::control::sync_command())
        .subcommand(extentfs::control::umount_command())
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("extentfs: {msg}");
    ExitCode::from(1)
}

fn mount_main(args: MountArgs) -> ExitCode {
    if !args.foreground {
        // Readiness is reported to a service manager only in the foreground (`Type=notify`
        // runs `extentfs -f`); a detached daemon is not the process it watches. No thread
        // exists yet.
        std::env::remove_var(extentfs::notify::ENV);
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut cfg = MountConfig::defaults(total_ram(), cpus);
    for o in &args.options {
        if let Err(e) = cfg.apply(o) {
            return fail(e);
        }
    }
    if cfg.remount {
        return fail(
            "'remount' cannot start a new daemon; to change flags of a live mount use \
             `mount -i -o remount,... MOUNTPOINT`",
        );
    }
    if cfg.cache_size > total_ram() {
        return fail(format!(
            "cache_size={} is larger than this machine's memory ({})",
            format_size(cfg.cache_size),
            format_size(total_ram())
        ));
    }
    let source = match std::fs::canonicalize(&args.source) {
        Ok(p) => p,
        Err(e) => return fail(format!("SOURCE {}: {e}", args.source.display())),
    };
    if !source.is_dir() {
        return fail(format!("SOURCE {} is not a directory", source.display()));
    }
    let mountpoint = match std::fs::canonicalize(&args.mountpoint) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            std::path::absolute(&args.mountpoint).unwrap_or_else(|_| args.mountpoint.clone())
        }
        Err(e) => return fail(format!("MOUNTPOINT {}: {e}", args.mountpoint.display())),
    };
    match mount::check_mount_point(&mountpoint) {
        MountPointState::Ready => {}
        MountPointState::Missing => {
            return fail(format!(
                "MOUNTPOINT {} does not exist",
                mountpoint.display()
            ))
        }
        MountPointState::NotADirectory => {
            return fail(format!(
                "MOUNTPOINT {} is not a directory",
                mountpoint.display()
            ))
        }
        MountPointState::NotEmpty if !cfg.nonempty => {
            return fail(format!(
                "MOUNTPOINT {} is not empty (add -o nonempty to mount over it anyway)",
                mountpoint.display()
            ))
        }
        MountPointState::NotEmpty => {}
        MountPointState::Busy(what) => {
            return fail(format!(
                "MOUNTPOINT {} is already a mount point of {what}; unmount it first: umount {}",
                mountpoint.display(),
                mountpoint.display()
            ))
        }
        MountPointState::Stale => {
            if let Err(e) = mount::clean_stale(&mountpoint) {
                return fail(format!(
                    "MOUNTPOINT {} is a dead FUSE mount (its daemon is gone) and it could not be \
                     cleaned up ({e}); run: fusermount3 -u {}",
                    mountpoint.display(),
                    mountpoint.display()
                ));
            }
            eprintln!(
                "extentfs: cleaned up a dead FUSE mount at {}",
                mountpoint.display()
            );
        }
    }

    init_logging(&cfg, args.foreground);

    // The pool is mapped before daemonizing so that a failure is reported to the caller.
    let mut pcfg = PoolConfig::new(cfg.cache_size as usize, cfg.hugepages);
    pcfg.region_size = pcfg.region_size.min(cfg.cache_size as usize);
    let pool = match PagePool::new(&pcfg) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            return fail(format!(
                "cannot set up a {} page pool: {e}",
                format_size(cfg.cache_size)
            ))
        }
    };

    let reporter = if args.foreground {
        None
    } else {
        match daemonize() {
            Ok(Some(w)) => Some(w),
            Ok(None) => unreachable!(),
            Err(code) => return code,
        }
    };
    let mut live = false;
    let result = serve(
        &cfg,
        &source,
        &mountpoint,
        pool,
        reporter,
        args.foreground,
        &mut live,
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            // Before the mount was live, a daemonized child has sent the message to the
            // waiting parent, which prints it: printing it here too would say it twice.
            if args.foreground || live {
                tracing::error!("{msg}");
            }
            ExitCode::from(1)
        }
    }
}

fn init_logging(cfg: &MountConfig, foreground: bool) {
    extentfs::logging::init(cfg.log_file.as_deref(), foreground, cfg.debug);
}

/// Fork: the parent waits until the child says the mount is live (or why not) and exits;
/// the child returns the pipe to report on. No thread may exist yet.
fn daemonize() -> Result<Option<std::fs::File>, ExitCode> {
    // std's pipe is pipe2(O_CLOEXEC), as before.
    let (r, w) = match std::io::pipe() {
        Ok((r, w)) => (OwnedFd::from(r), OwnedFd::from(w)),
        Err(e) => return Err(fail(format!("pipe: {e}"))),
    };
    // The process has one thread here (the caller's contract: logging and the pool start
    // none, the mount's threads come after); fork checks. Each process then owns its copies of
    // `r` and `w` and closes the end it does not use.
    match sys_process::fork() {
        Err(e) => Err(fail(format!("fork: {e}"))),
        Ok(Forked::Child) => {
            drop(r);
            // In the forked child it cannot fail (the child is never a process group leader).
            let _ = rustix::process::setsid();
            let _ = std::env::set_current_dir("/");
            Ok(Some(std::fs::File::from(w)))
        }
        Ok(Forked::Parent(_pid)) => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            if msg == "OK" {
                Err(ExitCode::SUCCESS)
            } else if msg.is_empty() {
                Err(fail("the daemon exited before the mount was live"))
            } else {
                Err(fail(msg))
            }
        }
    }
}

fn report(reporter: &mut Option<std::fs::File>, msg: &str) {
    if let Some(mut w) = reporter.take() {
        let _ = w.write_all(msg.as_bytes());
    }
}

/// Redirect stdin/stdout/stderr to /dev/null (the detached daemon).
fn detach_stdio() {
    use rustix::fs::{Mode, OFlags};
    if let Ok(fd) = rustix::fs::open("/dev/null", OFlags::RDWR, Mode::empty()) {
        let _ = rustix::stdio::dup2_stdin(&fd);
        let _ = rustix::stdio::dup2_stdout(&fd);
        let _ = rustix::stdio::dup2_stderr(&fd);
        if fd.as_raw_fd() <= 2 {
            // It is one of 0-2 now (which were closed): it stays open as such.
            let _ = fd.into_raw_fd();
        }
    }
}

/// The daemon holds a descriptor per inode the kernel knows and per file in use (the inode
/// table gives back idle ones past half the limit, see `source::path_fd`). Take as many as the
/// system allows one process: `fs.nr_open` when privileged (as virtiofsd does), else the
/// hard limit; or exactly `-o rlimit_nofile=N`.
fn set_fd_limit(want: Option<u64>) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // No limit (RLIM_INFINITY) as the largest number, as libc's rlimit says it.
    let got = getrlimit(Resource::Nofile);
    let (rlim_cur, rlim_max) = (
        got.current.unwrap_or(libc::RLIM_INFINITY),
        got.maximum.unwrap_or(libc::RLIM_INFINITY),
    );
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    let mut tries = Vec::new();
    match want {
        Some(n) => tries.push((n, n.max(rlim_max))),
        None => {
            if let Some(n) = nr_open.filter(|&n| n > rlim_max) {
                tries.push((n, n));
            }
            tries.push((rlim_max, rlim_max));
        }
    }
    let limit = |v: u64| (v != libc::RLIM_INFINITY).then_some(v);
    let mut last = None;
    for (cur, max) in tries {
        let r = Rlimit {
            current: limit(cur),
            maximum: limit(max),
        };
        match setrlimit(Resource::Nofile, r) {
            Ok(()) => {
                tracing::debug!("RLIMIT_NOFILE {cur}");
                return;
            }
            Err(e) => last = Some(std::io::Error::from(e)),
        }
    }
    if let Some(e) = last {
        tracing::warn!("cannot set RLIMIT_NOFILE (staying at {rlim_cur}): {e}");
    }
}

fn block_signals() -> SignalSet {
    SignalSet::block(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
}

fn serve(
    cfg: &MountConfig,
    source: &Path,
    mountpoint: &Path,
    pool: Arc<PagePool>,
    mut reporter: Option<std::fs::File>,
    foreground: bool,
    live: &mut bool,
) -> Result<(), String> {
    rustix::process::umask(rustix::fs::Mode::empty());
    set_fd_limit(cfg.rlimit_nofile);
    // Every thread started from here on inherits the blocked signals; one thread waits.
    let sigset = block_signals();

    let mut ccfg = CacheConfig::new(cfg.cache_size, cfg.dirty_limit);
    ccfg.dirty_expire = cfg.dirty_expire;
    ccfg.writeback_threads = cfg.writeback_threads;
    ccfg.read_only = cfg.read_only;
    // Every write(2) reaches the daemon as itself under cache=pool, and under cache=kernel
    // unless the kernel's writeback cache is on (coherence=none), where it arrives as page
    // writeback only.
    ccfg.reserve_space = cfg.cache == extentfs::options::CacheMode::Pool
        || cfg.coherence != extentfs::options::Coherence::None;
    let ctx = CacheContext::new(pool, ccfg);
    let fscfg = FsConfig {
        cache: cfg.cache,
        read_only: cfg.read_only,
        // strict: nothing cached in the kernel either, so that every read and stat asks
        // (under cache=kernel a read(2) then refreshes the attributes and the kernel drops
        // pages of a file whose size or mtime changed).
        ttl: if cfg.coherence == extentfs::options::Coherence::Strict {
            std::time::Duration::ZERO
        } else {
            cfg.attr_timeout
        },
        coherence: cfg.coherence,
        owner_uid: rustix::process::getuid().as_raw(),
        atime: if cfg.noatime {
            AtimeMode::NoAtime
        } else if cfg.strictatime {
            AtimeMode::StrictAtime
        } else {
            AtimeMode::RelAtime
        },
        nodiratime: cfg.nodiratime,
        spin: cfg.spin,
        request_threads: cfg.threads,
    };
    let mounted = match session::mount(cfg, source, mountpoint, ctx.clone(), fscfg) {
        Ok(m) => m,
        Err(m) => {
            report(&mut reporter, &m);
            return Err(m);
        }
    };
    let wb = match ctx.start_writeback() {
        Ok(wb) => wb,
        Err(e) => {
            let m = format!("cannot start writeback threads: {e}");
            report(&mut reporter, &m);
            let _ = mount::unmount(mountpoint);
            return Err(m);
        }
    };
    // Signals: write everything back, then unmount, which ends the session below.
    {
        let ctx = ctx.clone();
        let mp = mountpoint.to_path_buf();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let Ok(sig) = sigset.wait() else {
                    continue;
                };
                tracing::info!("signal {sig}: writing back and unmounting");
                extentfs::notify::stopping();
                if let Err(e) = ctx.sync_all() {
                    tracing::error!("writeback before unmount failed: {e}");
                }
                if let Err(e) = mount::unmount(&mp) {
                    tracing::error!("unmount of {} failed: {e}", mp.display());
                }
            })
            .map_err(|e| {
                let m = format!("cannot start the signal thread: {e}");
                report(&mut reporter, &m);
                let _ = mount::unmount(mountpoint);
                m
            })?;
    }
    report(&mut reporter, "OK");
    *live = true;
    if !foreground {
        detach_stdio();
    }
    // Ready once the mount answers a request: a stat of the mount point, answered by the
    // session threads that `run` starts.
    let ready_line = format!(
        "mounted {} at {} (cache {}, {})",
        source.display(),
        mountpoint.display(),
        format_size(cfg.cache_size),
        ctx.pool.backing().as_str()
    );
    {
        let mp = mountpoint.to_path_buf();
        std::thread::Builder::new()
            .name("ready".into())
            .spawn(move || match std::fs::metadata(&mp) {
                Ok(_) => {
                    tracing::info!("{ready_line}");
                    let msg = format!("READY=1\nSTATUS={ready_line}");
                    if let Err(e) = extentfs::notify::notify(&msg) {
                        tracing::warn!("cannot notify {}: {e}", extentfs::notify::ENV);
                    }
                }
                Err(e) => tracing::warn!("the mount at {} does not answer: {e}", mp.display()),
            })
            .map_err(|e| e.to_string())?;
    }
    mounted.run();
    extentfs::notify::stopping();
    // Unmounted: let go of SOURCE's files at once where nothing is left to write (a program
    // may delete them in SOURCE right after umount returns), then write back the rest; what
    // cannot be written goes to the recovery directory (never dropped silently).
    ctx.release_clean();
    wb.stop(&ctx);
    ctx.finish(Path::new(&cfg.recovery_dir), source)
}
