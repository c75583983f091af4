//! Standard suites run from inside a mount: pjdfstest (the Rust rewrite, `cargo install
//! pjdfstest`; scripts/test.sh installs it). xfstests, fsx and fsstress have their own scripts.

use crate::harness::*;
use std::process::Command;

const PJDFSTEST_CONFIG: &str = r#"
[features]
utimensat = {}
utime_now = {}
rename_ctime = {}
posix_fallocate = {}
[settings]
naptime = 0.01
allow_remount = false
[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
"#;

fn pjdfstest_bin() -> String {
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(|h| format!("{h}/bin/pjdfstest"))
        .unwrap_or_else(|_| {
            format!(
                "{}/.cargo/bin/pjdfstest",
                std::env::var("HOME").unwrap_or_default()
            )
        });
    for c in [cargo_bin.as_str(), "/usr/local/bin/pjdfstest"] {
        if std::path::Path::new(c).exists() {
            return c.to_string();
        }
    }
    panic!(
        "pjdfstest is not installed: run `cargo install pjdfstest --locked` (scripts/test.sh does)"
    );
}

fn run_pjdfstest(opts: &str) {
    let bin = pjdfstest_bin();
    let m = Mount::new(opts);
    let cfg = m.dir.path().join("pjdfstest.toml");
    std::fs::write(&cfg, PJDFSTEST_CONFIG).unwrap();
    let out = Command::new(&bin)
        .arg("-c")
        .arg(&cfg)
        .arg("-p")
        .arg(&m.mnt)
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .chain(stderr.lines())
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or_else(|| panic!("no pjdfstest summary:\n{stdout}\n{stderr}"))
        .to_string();
    eprintln!("pjdfstest ({opts}): {summary}");
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("FAILED") || l.contains("PASSED UNEXPECTEDLY"))
        .collect();
    assert!(
        summary.starts_with("Summary: 0 failed") && out.status.success(),
        "pjdfstest failures with {opts}: {summary}\n{}",
        failures.join("\n")
    );
    let passed: u64 = summary
        .split(", ")
        .find_map(|p| p.strip_suffix(" passed"))
        .and_then(|n| n.parse().ok())
        .expect("passed count");
    assert!(passed > 350, "only {passed} pjdfstest tests passed");
}

#[test]
fn pjdfstest_cache_pool() {
    run_pjdfstest("cache_size=64M,allow_other");
}

#[test]
fn pjdfstest_cache_kernel() {
    run_pjdfstest("cache_size=64M,allow_other,cache=kernel");
}
