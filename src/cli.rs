//! `extentfs stats` and `extentfs extents`: read the `user.extentfs.*` xattrs of a mount and
//! print them for people (tables in human units) or programs (`--json`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

fn getxattr(path: &Path, name: &str) -> Result<Vec<u8>, String> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(|_| "bad path".to_string())?;
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let r = unsafe {
            libc::getxattr(
                p.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => {
                return Err(format!(
                    "{} is not on an extentfs mount (no {name} attribute)",
                    path.display()
                ))
            }
            _ => return Err(format!("{}: {e}", path.display())),
        }
    }
}

fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn human(key: &str, v: &str) -> String {
    if key.ends_with("bytes") || key.ends_with("_bytes_total") || key == "size" {
        if let Ok(n) = v.parse::<u64>() {
            return format!("{} ({n})", crate::options::format_size(n));
        }
    }
    if key.ends_with("ratio") {
        if let Ok(x) = v.parse::<f64>() {
            return format!("{:.1}%", x * 100.0);
        }
    }
    v.to_string()
}

fn print_table(
    title: &str,
    figs: &[(String, String)],
    prev: Option<&[(String, String)]>,
    secs: f64,
) {
    println!("== {title}");
    for (k, v) in figs {
        let mut line = format!("  {k:<28} {}", human(k, v));
        if let Some(prev) = prev {
            if let (Some((_, pv)), Ok(n)) = (prev.iter().find(|(pk, _)| pk == k), v.parse::<u64>())
            {
                if let Ok(p) = pv.parse::<u64>() {
                    if n > p && secs > 0.0 {
                        line.push_str(&format!("   +{:.1}/s", (n - p) as f64 / secs));
                    }
                }
            }
        }
        println!("{line}");
    }
}

pub fn main(args: &[String]) -> ExitCode {
    let cmd = args[0].as_str();
    let mut json = false;
    let mut watch: Option<f64> = None;
    let mut paths = Vec::new();
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--watch" => match it.next().and_then(|s| s.parse::<f64>().ok()) {
                Some(s) if s > 0.0 => watch = Some(s),
                _ => {
                    eprintln!("extentfs {cmd}: --watch needs a number of seconds");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("usage: extentfs stats MOUNTPOINT [FILE...] [--json] [--watch SECS]\n       extentfs extents FILE");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') => {
                eprintln!("extentfs {cmd}: unknown flag {s}");
                return ExitCode::from(2);
            }
            _ => paths.push(Path::new(a).to_path_buf()),
        }
    }
    if paths.is_empty() {
        eprintln!("extentfs {cmd}: missing path (see --help)");
        return ExitCode::from(2);
    }
    if cmd == "extents" {
        for p in &paths {
            match getxattr(p, crate::fs::xattr::EXTENTS) {
                Ok(v) => {
                    println!("# {}: start end bits", p.display());
                    print!("{}", String::from_utf8_lossy(&v));
                }
                Err(e) => {
                    eprintln!("extentfs extents: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    let mut prev: Vec<Vec<(String, String)>> = Vec::new();
    loop {
        let mut now = Vec::new();
        for p in &paths {
            let name = if json {
                crate::fs::xattr::STATS_JSON
            } else {
                crate::fs::xattr::STATS
            };
            match getxattr(p, name) {
                Ok(v) => {
                    let text = String::from_utf8_lossy(&v).into_owned();
                    if json {
                        print!("{text}");
                        now.push(Vec::new());
                    } else {
                        let figs = parse(&text);
                        let i = now.len();
                        print_table(
                            &p.display().to_string(),
                            &figs,
                            prev.get(i).map(|v| v.as_slice()),
                            watch.unwrap_or(0.0),
                        );
                        now.push(figs);
                    }
                }
                Err(e) => {
                    eprintln!("extentfs stats: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        let Some(secs) = watch else {
            return ExitCode::SUCCESS;
        };
        prev = now;
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    }
}
