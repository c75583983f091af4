//! `extentfs generate man|completions DIR` (hidden): the man page extentfs(8) and the bash,
//! zsh and fish completions, generated from the same clap definition the binary parses with
//! and from the `-o` table in `options.rs` that `--help` prints, so none of them can drift
//! from the command line. `scripts/package.sh` runs it on the built binary.

use clap::Command;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;
use extentfs::options::OPTION_DOCS;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: extentfs generate man|completions DIR";

pub fn main(cmd: &Command, args: &[String]) -> ExitCode {
    let (what, dir) = match args {
        [what, dir] => (what.as_str(), Path::new(dir)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let written = match what {
        "man" => man_page(cmd, dir),
        "completions" => completions(cmd, dir),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match written {
        Ok(files) => {
            for f in files {
                println!("{f}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("extentfs generate {what}: {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}

fn completions(cmd: &Command, dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        let path = clap_complete::generate_to(shell, &mut cmd, "extentfs", dir)?;
        files.push(path.display().to_string());
    }
    Ok(files)
}

/// A paragraph of plain text.
fn para(r: &mut Roff, text: &str) {
    r.control("PP", []);
    r.text([roman(text)]);
}

/// A tagged paragraph: `tag` in bold, then `text`.
fn item(r: &mut Roff, tag: Vec<Inline>, text: &str) {
    r.control("TP", []);
    r.text(tag);
    r.text([roman(text)]);
}

/// `--long VALUE`, `-s`, or `<NAME>` for a positional, as the usage line writes them.
fn arg_tag(a: &clap::Arg) -> Vec<Inline> {
    let values: Vec<String> = a
        .get_value_names()
        .map(|v| v.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    let mut tag = Vec::new();
    match (a.get_long(), a.get_short()) {
        (Some(l), Some(s)) => tag.push(bold(format!("-{s}, --{l}"))),
        (Some(l), None) => tag.push(bold(format!("--{l}"))),
        (None, Some(s)) => tag.push(bold(format!("-{s}"))),
        (None, None) => {
            let name = values
                .first()
                .cloned()
                .unwrap_or_else(|| a.get_id().to_string().to_uppercase());
            return vec![italic(name)];
        }
    }
    if a.get_action().takes_values() {
        for v in values {
            tag.push(roman(" "));
            tag.push(italic(v));
        }
    }
    tag
}

fn man_page(cmd: &Command, dir: &Path) -> std::io::Result<Vec<String>> {
    // SYNOPSIS: one form per way to call it, each subcommand's from its own definition.
    let mut forms = vec!["extentfs [-f] [-o OPTIONS] SOURCE MOUNTPOINT".to_string()];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let usage = sub
            .clone()
            .bin_name(format!("extentfs {}", sub.get_name()))
            .render_usage()
            .to_string();
        forms.push(usage.trim_start_matches("Usage: ").trim().to_string());
    }
    let mut cmd = cmd
        .clone()
        .disable_help_subcommand(true)
        .override_usage(forms.join("\n"));
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let date = version
        .rsplit_once("built ")
        .map(|(_, d)| d.trim_end_matches(')').to_string())
        .unwrap_or_default();
    let man = Man::new(cmd.clone())
        .section("8")
        .date(date)
        .source(format!("extentfs {}", env!("CARGO_PKG_VERSION")))
        .manual("System Administration");
    let mut out: Vec<u8> = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;

    let mut r = Roff::new();
    r.control("SH", ["DESCRIPTION"]);
    r.text([roman(
        "extentfs is a FUSE filesystem that mounts the directory SOURCE at MOUNTPOINT and \
         passes every byte of file data through its own extent-mapped page cache: a \
         fixed-size pool of (huge-page backed) memory, per-file extent trees, background \
         writeback that coalesces dirty ranges into large writes to SOURCE, and eviction of \
         clean extents when the pool fills.",
    )]);
    para(
        &mut r,
        "extentfs checks the options, SOURCE and MOUNTPOINT first, maps the page pool, then \
         detaches into the background and returns only once the mount answers requests, as \
         mount(8) and fstab expect. With -f it stays in the foreground, logs to stderr, and \
         tells a service manager when it is ready (READY=1) and when it stops (STOPPING=1) \
         through $NOTIFY_SOCKET, as systemd's Type=notify expects.",
    );
    para(
        &mut r,
        "umount MOUNTPOINT, fusermount3 -u MOUNTPOINT, or SIGTERM, SIGINT or SIGHUP to the \
         daemon unmount. Dirty data is written back to SOURCE (and fsynced) before the \
         daemon exits; on a signal, before it unmounts.",
    );
    r.to_writer(&mut out)?;

    man.render_options_section(&mut out)?;
    let mut r = Roff::new();
    r.control("SS", ["Mount options"]);
    r.text([roman(
        "Given with -o as a comma-separated list (-o may be repeated; later options win), \
         or in the options field of an fstab line:",
    )]);
    for o in OPTION_DOCS {
        let mut text = o.help.to_string();
        if !o.default.is_empty() {
            text.push_str(&format!(". Default: {}.", o.default));
        }
        item(&mut r, vec![bold(o.name)], &text);
    }

    r.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut sub = sub.clone().bin_name(format!("extentfs {}", sub.get_name()));
        let usage = sub.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ").trim().to_string();
        r.control("TP", []);
        r.text([bold(usage)]);
        r.text([roman(
            sub.get_long_about()
                .or(sub.get_about())
                .map(|s| s.to_string())
                .unwrap_or_default(),
        )]);
        r.control("RS", []);
        for a in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let help = a.get_help().map(|s| s.to_string()).unwrap_or_default();
            item(&mut r, arg_tag(a), &help);
        }
        r.control("RE", []);
    }

    r.control("SH", ["EXAMPLES"]);
    let examples = [
        (
            "extentfs /srv/data /mnt/data -o cache_size=4G",
            "Mount /srv/data at /mnt/data with a 4 GiB page pool.",
        ),
        (
            "mount -t fuse.extentfs /srv/data /mnt/data -o cache_size=4G,allow_other",
            "The same through mount(8) and mount.fuse3 (extentfs must be on sh's default PATH).",
        ),
        (
            "/srv/data  /mnt/data  fuse.extentfs  defaults,cache_size=4G,nofail  0 0",
            "An /etc/fstab line for it; then mount /mnt/data.",
        ),
        (
            "systemctl enable --now extentfs@data",
            "Run it as a service from /etc/extentfs/data.conf (see FILES).",
        ),
        (
            "extentfs stats /mnt/data --watch 1",
            "Watch the pool, hit ratio, dirty data, writeback and request rates.",
        ),
        (
            "extentfs stats /mnt/data --prometheus > /var/lib/node_exporter/extentfs.prom",
            "Export the figures for node_exporter's textfile collector.",
        ),
        (
            "extentfs extents /mnt/data/big.db --map",
            "Show which parts of a file are cached, dirty or under writeback.",
        ),
        (
            "setfattr -n user.extentfs.ctl -v sync /mnt/data",
            "Write back and fsync everything now.",
        ),
    ];
    for (cmdline, what) in examples {
        item(&mut r, vec![bold(cmdline)], what);
    }

    r.control("SH", ["FILES"]);
    item(
        &mut r,
        vec![italic("/etc/extentfs/NAME.conf")],
        "Environment file of the service instance extentfs@NAME: SOURCE=, MOUNTPOINT= and \
         OPTIONS= (the -o list).",
    );
    item(
        &mut r,
        vec![italic("/usr/lib/systemd/system/extentfs@.service")],
        "The systemd unit template: Type=notify, runs extentfs -f SOURCE MOUNTPOINT -o OPTIONS.",
    );
    item(
        &mut r,
        vec![italic("/etc/fstab")],
        "Mounts of type fuse.extentfs, started by mount(8) through mount.fuse3.",
    );
    item(
        &mut r,
        vec![italic("/etc/fuse.conf")],
        "user_allow_other lets non-root users mount with -o allow_other.",
    );

    r.control("SH", ["ENVIRONMENT"]);
    item(
        &mut r,
        vec![bold("NOTIFY_SOCKET")],
        "With -f: the unix datagram socket (a path, or @name for an abstract one) that gets \
         READY=1 once the mount answers requests and STOPPING=1 when it unmounts.",
    );
    item(
        &mut r,
        vec![bold("RUST_LOG")],
        "Log filter (e.g. debug, or warn); the default logs the mount line, warnings and errors.",
    );

    r.control("SH", ["EXIT STATUS"]);
    item(
        &mut r,
        vec![bold("0")],
        "Mounted (detached daemon), or the foreground daemon unmounted after writing back \
         all data; a command succeeded.",
    );
    item(
        &mut r,
        vec![bold("1")],
        "An error: a bad option, SOURCE or MOUNTPOINT (one line on stderr, nothing mounted), \
         the mount failed, or a final writeback failed (the reason is in the log).",
    );
    item(
        &mut r,
        vec![bold("2")],
        "Usage error: a missing argument or an unknown flag.",
    );

    r.control("SH", ["SEE ALSO"]);
    r.text([roman(
        "mount(8), umount(8), fstab(5), mount.fuse3(8), fusermount3(1), systemd.service(5), \
         systemd.mount(5), getfattr(1), setfattr(1)",
    )]);
    r.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;

    std::fs::create_dir_all(dir)?;
    let path = dir.join("extentfs.8");
    std::fs::File::create(&path)?.write_all(&out)?;
    Ok(vec![path.display().to_string()])
}
