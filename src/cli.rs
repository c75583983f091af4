//! `extentfs stats` and `extentfs extents`: read the `user.extentfs.*` xattrs of a mount and
//! print them for people (a one-screen summary, tables and a cache map in human units) or
//! programs (`--json`, `--prometheus`). The renderings themselves are in [`crate::report`].

use crate::report::{self, Figures};
use clap::{CommandFactory, FromArgMatches, Parser};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Show the figures of an extentfs mount, or of files on it.
#[derive(Parser, Debug)]
#[command(name = "stats")]
pub struct StatsArgs {
    /// The mount point (figures of the whole mount) or regular files on the mount (their own
    /// figures).
    #[arg(required = true, value_name = "PATH", value_hint = clap::ValueHint::AnyPath)]
    pub paths: Vec<PathBuf>,
    /// Every figure, one per line (default: a one-screen summary of a mount).
    #[arg(long)]
    pub all: bool,
    /// The raw figures as one JSON object per path.
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// The figures in the OpenMetrics text format (for node_exporter's textfile collector).
    #[arg(long, conflicts_with = "watch")]
    pub prometheus: bool,
    /// Redraw every SECS seconds, with rates; in place on a terminal, scrolling otherwise.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub watch: Option<f64>,
}

/// Show the extent state tree of files on an extentfs mount, or their cache map.
#[derive(Parser, Debug)]
#[command(name = "extents")]
pub struct ExtentsArgs {
    /// Regular files on an extentfs mount.
    #[arg(required = true, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub files: Vec<PathBuf>,
    /// Draw the file's cache as a bar as wide as the terminal: cached clean, dirty, under
    /// writeback, not cached.
    #[arg(long)]
    pub map: bool,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= 86_400.0 => Ok(x),
        _ => Err("expected a number of seconds, e.g. 1 or 0.5".into()),
    }
}

/// `extentfs stats` as clap defines it (also for the man page and completions).
pub fn stats_command() -> clap::Command {
    StatsArgs::command()
}

/// `extentfs extents` as clap defines it.
pub fn extents_command() -> clap::Command {
    ExtentsArgs::command()
}

/// `args[0]` is the subcommand.
pub fn main(args: &[String]) -> ExitCode {
    match args[0].as_str() {
        "stats" => match parse_args::<StatsArgs>(stats_command(), args) {
            Ok(a) => stats(&a),
            Err(code) => code,
        },
        "extents" => match parse_args::<ExtentsArgs>(extents_command(), args) {
            Ok(a) => extents(&a),
            Err(code) => code,
        },
        other => {
            eprintln!("extentfs: unknown command {other}");
            ExitCode::from(2)
        }
    }
}

fn parse_args<T: FromArgMatches>(cmd: clap::Command, args: &[String]) -> Result<T, ExitCode> {
    let cmd = cmd.bin_name(format!("extentfs {}", args[0]));
    match cmd
        .try_get_matches_from(args)
        .and_then(|m| T::from_arg_matches(&m))
    {
        Ok(a) => Ok(a),
        Err(e) => {
            let _ = e.print();
            Err(ExitCode::from(e.exit_code().clamp(0, 255) as u8))
        }
    }
}

fn getxattr(path: &Path, name: &str) -> Result<Vec<u8>, String> {
    crate::control::getxattr(path, name).map_err(|e| match e.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => format!(
            "{} is not on an extentfs mount (no {name} attribute)",
            path.display()
        ),
        _ => format!("{}: {e}", path.display()),
    })
}

/// Why `path` has no `name` attribute, in words.
fn explain(path: &Path, name: &str) -> String {
    let md = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return format!("{}: {e}", path.display()),
    };
    if md.is_dir() && is_fuse(path) {
        return format!(
            "{} is a directory of a mount, not its mount point: give the mount point or a \
             regular file",
            path.display()
        );
    }
    format!(
        "{} is not on an extentfs mount (no {name} attribute)",
        path.display()
    )
}

/// Is `path` on a FUSE filesystem?
fn is_fuse(path: &Path) -> bool {
    const FUSE_SUPER_MAGIC: libc::c_long = 0x6573_5546;
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as libc::c_long == FUSE_SUPER_MAGIC)
}

/// Columns of the terminal on stdout, else `$COLUMNS`, else 80.
fn terminal_width() -> usize {
    if std::io::stdout().is_terminal() {
        match rustix::termios::tcgetwinsize(std::io::stdout()) {
            Ok(ws) if ws.ws_col > 0 => return ws.ws_col as usize,
            _ => {}
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(80)
}

fn extents(a: &ExtentsArgs) -> ExitCode {
    for p in &a.files {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() => {}
            Ok(m) => {
                let kind = if m.is_dir() {
                    "a directory"
                } else {
                    "not a regular file"
                };
                eprintln!(
                    "extentfs extents: {} is {kind}: extents needs a regular file",
                    p.display()
                );
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("extentfs extents: {}: {e}", p.display());
                return ExitCode::from(1);
            }
        }
        let text = match getxattr(p, crate::core::ctl::EXTENTS) {
            Ok(v) => String::from_utf8_lossy(&v).into_owned(),
            Err(e) => {
                eprintln!("extentfs extents: {e}");
                return ExitCode::from(1);
            }
        };
        if a.map {
            let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let ranges = report::parse_extents(&text);
            print!(
                "{}",
                report::extent_map(&p.display().to_string(), size, &ranges, terminal_width())
            );
        } else {
            println!("# {}: start end bits", p.display());
            print!("{text}");
        }
    }
    ExitCode::SUCCESS
}

fn read_figures(p: &Path, json: bool) -> Result<String, String> {
    let name = if json {
        crate::core::ctl::STATS_JSON
    } else {
        crate::core::ctl::STATS
    };
    match getxattr(p, name) {
        Ok(v) => Ok(String::from_utf8_lossy(&v).into_owned()),
        Err(e) if e.contains("is not on an extentfs mount") => Err(explain(p, name)),
        Err(e) => Err(e),
    }
}

fn stats(a: &StatsArgs) -> ExitCode {
    let fail = |e: String| {
        eprintln!("extentfs stats: {e}");
        ExitCode::from(1)
    };
    if a.prometheus {
        let mut items = Vec::new();
        for p in &a.paths {
            match read_figures(p, false) {
                Ok(t) => items.push((p.display().to_string(), report::parse(&t))),
                Err(e) => return fail(e),
            }
        }
        print!("{}", report::openmetrics(&items));
        return ExitCode::SUCCESS;
    }
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(Vec<Figures>, Instant)> = None;
    let mut first = true;
    loop {
        let mut frame = String::new();
        let mut now = Vec::new();
        let at = Instant::now();
        for (i, p) in a.paths.iter().enumerate() {
            let text = match read_figures(p, a.json) {
                Ok(t) => t,
                Err(e) => return fail(e),
            };
            if a.json {
                frame.push_str(&text);
                continue;
            }
            let figs = report::parse(&text);
            let before = prev
                .as_ref()
                .and_then(|(v, t)| v.get(i).map(|f| (f, at.duration_since(*t).as_secs_f64())));
            let title = p.display().to_string();
            frame.push_str(&if a.all {
                report::table(&title, &figs, before)
            } else {
                report::summary(&title, &figs, before)
            });
            now.push(figs);
        }
        let mut out = std::io::stdout().lock();
        let r = match (a.watch, tty) {
            (Some(_), true) => {
                // In place: home the cursor, rewrite each line (clearing what was longer),
                // clear below. The first frame clears the screen.
                let clear = if first { "\x1b[2J" } else { "" };
                let body: String = frame.lines().map(|l| format!("{l}\x1b[K\n")).collect();
                write!(out, "{clear}\x1b[H{body}\x1b[J")
            }
            (Some(_), false) if !first => write!(out, "\n{frame}"),
            _ => write!(out, "{frame}"),
        };
        if r.and_then(|()| out.flush()).is_err() {
            // The reader went away (a closed pipe): nothing more to show.
            return ExitCode::SUCCESS;
        }
        drop(out);
        let Some(secs) = a.watch else {
            return ExitCode::SUCCESS;
        };
        first = false;
        prev = Some((now, at));
        std::thread::sleep(Duration::from_secs_f64(secs));
    }
}
