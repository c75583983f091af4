//! The Debian package: `scripts/package.sh --bin` packages the binary under test; the .deb
//! lists the binary, the man page, the completions and the unit template; the man page
//! renders with `man -l`; the binary inside runs.

use crate::harness::BIN;
use std::path::Path;
use std::process::Command;

fn output(cmd: &mut Command) -> (String, String) {
    let desc = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{desc}: {e}"));
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{desc}: {}\n{o}\n{e}", out.status);
    (o, e)
}

#[test]
fn debian_package_holds_binary_man_page_completions_and_unit() {
    let dir = tempfile::Builder::new()
        .prefix("extentfs-deb-")
        .tempdir()
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package.sh");
    let (stdout, _) = output(
        Command::new(script)
            .args(["--bin", BIN, "--out"])
            .arg(dir.path()),
    );
    let deb = stdout.lines().last().unwrap().trim().to_string();
    assert!(Path::new(&deb).is_file(), "no package at {deb:?}");
    assert!(
        deb.ends_with(&format!("extentfs_{}_{}.deb", env!("CARGO_PKG_VERSION"), {
            output(Command::new("dpkg").arg("--print-architecture"))
                .0
                .trim()
                .to_string()
        })),
        "{deb}"
    );

    let (list, _) = output(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/extentfs",
        "./usr/share/man/man8/extentfs.8.gz",
        "./usr/share/bash-completion/completions/extentfs",
        "./usr/share/zsh/vendor-completions/_extentfs",
        "./usr/share/fish/vendor_completions.d/extentfs.fish",
        "./usr/lib/systemd/system/extentfs@.service",
        "./usr/share/doc/extentfs/examples/instance.conf",
    ] {
        let line = list
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{list}"));
        assert!(line.contains("root/root"), "{line}");
        if path == "./usr/bin/extentfs" {
            assert!(line.starts_with("-rwxr-xr-x"), "{line}");
        }
    }
    let field = |f: &str| output(Command::new("dpkg-deb").args(["-f", &deb, f])).0;
    assert_eq!(field("Package").trim(), "extentfs");
    assert_eq!(field("Version").trim(), env!("CARGO_PKG_VERSION"));
    let depends = field("Depends");
    assert!(
        depends.split(',').any(|d| d.trim() == "fuse3"),
        "Depends: {depends}"
    );

    let root = dir.path().join("root");
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let (version, _) = output(Command::new(root.join("usr/bin/extentfs")).arg("--version"));
    assert!(
        version.starts_with(&format!("extentfs {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    // The man page renders, without groff warnings, with every section and option.
    let (man, warnings) = output(
        Command::new("man")
            .arg("--warnings")
            .arg("-l")
            .arg(root.join("usr/share/man/man8/extentfs.8.gz"))
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat"),
    );
    assert!(warnings.trim().is_empty(), "man warnings:\n{warnings}");
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "EXAMPLES",
        "FILES",
        "ENVIRONMENT",
        "EXIT STATUS",
        "SEE ALSO",
    ] {
        assert!(
            man.lines().any(|l| l == section),
            "no {section} section:\n{man}"
        );
    }
    for o in extentfs::options::OPTION_DOCS {
        let first = o.name.split_whitespace().next().unwrap();
        assert!(
            man.lines().any(|l| l.trim_start().starts_with(first)),
            "{first} not in the man page"
        );
    }
    for s in [
        "extentfs stats",
        "extentfs extents",
        "--prometheus",
        "--map",
        "--foreground",
        "NOTIFY_SOCKET",
        "extentfs@",
    ] {
        assert!(man.contains(s), "{s} not in the man page");
    }

    // Completions: valid bash that knows the subcommands and their flags.
    let bash = root.join("usr/share/bash-completion/completions/extentfs");
    output(Command::new("bash").arg("-n").arg(&bash));
    let text = std::fs::read_to_string(&bash).unwrap();
    for w in ["stats", "extents", "--prometheus", "--watch", "--map"] {
        assert!(text.contains(w), "{w} not in the bash completion");
    }
    for f in [
        "usr/share/zsh/vendor-completions/_extentfs",
        "usr/share/fish/vendor_completions.d/extentfs.fish",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(text.contains("prometheus"), "{f}");
    }

    // The unit template.
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/extentfs@.service")).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "Type=notify",
        "EnvironmentFile=/etc/extentfs/%i.conf",
        "ExecStart=/usr/bin/extentfs -f ${SOURCE} ${MOUNTPOINT} -o ${OPTIONS}",
    ] {
        assert!(lines.contains(&want), "{want} not in the unit:\n{unit}");
    }
    let conf = std::fs::read_to_string(root.join("usr/share/doc/extentfs/examples/instance.conf"))
        .unwrap();
    for key in ["SOURCE=", "MOUNTPOINT=", "OPTIONS="] {
        assert!(conf.lines().any(|l| l.starts_with(key)), "{key}");
    }
}
