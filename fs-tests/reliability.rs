//! Issue 7, "Nothing lost": a randomized differential tester (mount vs. an in-memory model,
//! both cache modes, with a foreign writer changing SOURCE between a close and the next open,
//! checked against close-to-open), SIGKILL at random moments, SOURCE running full and failing with I/O
//! errors, the daemon's memory bound, a concurrency stress with a deadlock watchdog, unmount
//! with a busy dirty file, symlink races and hostile input. See docs/reliability.md.
//!
//! The differential tester is bounded for CI (1500 operations per cache mode); set
//! `EXTENTFS_DIFF_OPS` and `EXTENTFS_DIFF_SEED` (or run `scripts/difftest.sh SEED OPS`) for
//! long runs. A failure prints the seed and the command that reproduces it.

use crate::harness::*;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// helpers

fn errno(r: libc::c_long) -> Result<libc::c_long, i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(r)
    }
}

fn io_errno<T>(r: std::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> Result<(), i32> {
    // SAFETY: fallocate takes no pointers; `f` is borrowed, so its descriptor is open across the
    // call.
    errno(unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) } as _).map(|_| ())
}

fn run_cmd(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A filesystem the test mounted (tmpfs, ext4) plus the loop device under it: unmounted and
/// detached on drop, also when the test failed. Declare it *before* the `Mount` over it, so
/// that the extentfs mount is dropped first. The `Mount`'s temporary directory cannot be
/// removed while these are mounted in it, so the guard removes it after unmounting them
/// (`remove_after`).
#[derive(Default)]
struct FsGuard {
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
    remove: Vec<PathBuf>,
}

impl FsGuard {
    fn tmpfs(&mut self, dir: &Path, size: &str) {
        std::fs::create_dir_all(dir).unwrap();
        run_cmd(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.to_str().unwrap(),
        ])
        .unwrap();
        self.mounts.push(dir.to_path_buf());
    }

    /// Remove `dir` (a `Mount`'s temporary directory holding these mounts) once they are gone.
    fn remove_after(&mut self, dir: &Path) {
        self.remove.push(dir.to_path_buf());
    }
}

impl Drop for FsGuard {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            if is_mounted(m) && !umount(m) {
                umount_lazy(m);
            }
        }
        for l in &self.loops {
            let _ = run_cmd(&["losetup", "-d", l]);
        }
        for d in &self.remove {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------------------
// 1. randomized differential tester

/// The model: names -> inodes (hard links share one), each inode's bytes.
struct ModelFs {
    names: BTreeMap<String, usize>,
    inodes: HashMap<usize, Vec<u8>>,
    next_ino: usize,
    next_name: usize,
}

impl ModelFs {
    fn names_of(&self, ino: usize) -> Vec<String> {
        self.names
            .iter()
            .filter(|(_, &i)| i == ino)
            .map(|(n, _)| n.clone())
            .collect()
    }
    fn write(&mut self, ino: usize, off: u64, buf: &[u8]) {
        let d = self.inodes.get_mut(&ino).unwrap();
        let (off, end) = (off as usize, off as usize + buf.len());
        if d.len() < end {
            d.resize(end, 0);
        }
        d[off..end].copy_from_slice(buf);
    }
    fn zero(&mut self, ino: usize, off: u64, end: u64) {
        let d = self.inodes.get_mut(&ino).unwrap();
        let end = (end as usize).min(d.len());
        if (off as usize) < end {
            d[off as usize..end].fill(0);
        }
    }
    fn extend(&mut self, ino: usize, len: u64) {
        let d = self.inodes.get_mut(&ino).unwrap();
        if (d.len() as u64) < len {
            d.resize(len as usize, 0);
        }
    }
}

/// Largest file the tester makes (three of them make ~9x the 16 MiB pool).
const DIFF_MAX_FILE: u64 = 48 * MIB;

fn diff_len(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0 => 1 + rng.below(16) as usize,
        1 => 4095 + rng.below(3) as usize,
        2..=4 => 1 + rng.below(12 * KIB) as usize,
        5..=7 => 1 + rng.below(300 * KIB) as usize,
        8 => MIB as usize + rng.below(3) as usize - 1,
        _ => 1 + rng.below(3 * MIB) as usize,
    }
}

fn diff_off(rng: &mut Rng, size: u64) -> u64 {
    let span = size.max(64 * KIB) + 64 * KIB;
    match rng.below(5) {
        0 | 1 => rng.below(span),
        2 => (rng.below(span / 4096 + 1) * 4096 + rng.below(5)).saturating_sub(2),
        3 => size.saturating_sub(rng.below(6000)),
        _ => (rng.below(span / MIB + 1) * MIB + rng.below(3)).saturating_sub(1),
    }
}

/// Prints how to reproduce when a differential run panics.
struct Repro(String);
impl Drop for Repro {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\n*** differential test failed: {}\n", self.0);
        }
    }
}

#[derive(Default, Debug)]
struct DiffCounts {
    ops: u64,
    by_kind: BTreeMap<&'static str, u64>,
}

fn differential(mode: &str, seed: u64, ops: usize) -> DiffCounts {
    let _repro = Repro(format!(
        "mode {mode} seed {seed} ops {ops}: reproduce with EXTENTFS_DIFF_SEED={seed} \
         EXTENTFS_DIFF_OPS={ops} cargo test --test fs_tests reliability::differential_{} \
         (or scripts/difftest.sh {seed} {ops})",
        mode.trim_start_matches("cache=")
    ));
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let expire = if seed % 2 == 1 {
        ",dirty_expire=50ms"
    } else {
        ""
    };
    let mut m = Mount::new(&format!("cache_size=16M,{mode}{expire}"));
    let tag = format!("[{mode} seed {seed}]");
    eprintln!("{tag} differential: {ops} operations, opts {}", m.opts);
    let mut fs = ModelFs {
        names: BTreeMap::new(),
        inodes: HashMap::new(),
        next_ino: 0,
        next_name: 0,
    };
    let mut handles: HashMap<usize, File> = HashMap::new();
    let mut counts = DiffCounts::default();
    let open_rw = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
    };
    // Three files; the first starts bigger than the pool.
    for i in 0..3 {
        let name = format!("f{i}");
        let ino = fs.next_ino;
        fs.next_ino += 1;
        fs.names.insert(name.clone(), ino);
        fs.inodes.insert(ino, Vec::new());
        let f = open_rw(&m.path(&name));
        if i == 0 {
            let target = 20 * MIB + rng.below(4 * MIB);
            while (fs.inodes[&ino].len() as u64) < target {
                let off = fs.inodes[&ino].len() as u64;
                let buf = random_bytes(&mut rng, MIB as usize);
                f.write_all_at(&buf, off).unwrap();
                fs.write(ino, off, &buf);
            }
        }
        handles.insert(ino, f);
    }
    fs.next_name = 3;

    for step in 0..ops {
        // The inode and one of its names.
        let (name, ino) = {
            let k = rng.below(fs.names.len() as u64) as usize;
            let (n, i) = fs.names.iter().nth(k).unwrap();
            (n.clone(), *i)
        };
        let path = m.path(&name);
        let size = fs.inodes[&ino].len() as u64;
        let at = format!("{tag} step {step} on {name} (inode {ino}, size {size})");
        let what = rng.below(100);
        let kind: &'static str = match what {
            0..=19 => {
                let off = diff_off(&mut rng, size).min(DIFF_MAX_FILE - 3 * MIB);
                let n = diff_len(&mut rng);
                let buf = random_bytes(&mut rng, n);
                let h = handles.entry(ino).or_insert_with(|| open_rw(&path));
                h.write_all_at(&buf, off)
                    .unwrap_or_else(|e| panic!("{at}: pwrite {} at {off}: {e}", buf.len()));
                fs.write(ino, off, &buf);
                "write"
            }
            20..=23 => {
                // Grow towards the maximum with big sequential writes.
                if size + 4 * MIB <= DIFF_MAX_FILE {
                    let n = (1 + rng.below(4 * MIB)) as usize;
                    let buf = random_bytes(&mut rng, n);
                    let h = handles.entry(ino).or_insert_with(|| open_rw(&path));
                    h.write_all_at(&buf, size).unwrap();
                    fs.write(ino, size, &buf);
                }
                "write_seq"
            }
            24..=27 => {
                if size + MIB <= DIFF_MAX_FILE {
                    let n = (1 + rng.below(MIB)) as usize;
                    let buf = random_bytes(&mut rng, n);
                    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
                    f.write_all(&buf)
                        .unwrap_or_else(|e| panic!("{at}: append: {e}"));
                    fs.write(ino, size, &buf);
                }
                "append"
            }
            28..=45 => {
                let off = diff_off(&mut rng, size);
                let n = diff_len(&mut rng);
                let h = handles.entry(ino).or_insert_with(|| open_rw(&path));
                let got = read_at_full(h, off, n);
                let s = (off as usize).min(size as usize);
                let e = (off as usize + n).min(size as usize);
                check_bytes(
                    &format!("{at}: read {n} at {off}"),
                    &got,
                    &fs.inodes[&ino][s..e],
                );
                "read"
            }
            46..=49 => {
                let new = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(size + 1),
                    2 => (size + rng.below(2 * MIB)).min(DIFF_MAX_FILE),
                    _ => size.saturating_sub(rng.below(5000)),
                };
                let h = handles.entry(ino).or_insert_with(|| open_rw(&path));
                h.set_len(new)
                    .unwrap_or_else(|e| panic!("{at}: truncate to {new}: {e}"));
                fs.inodes.get_mut(&ino).unwrap().resize(new as usize, 0);
                "truncate"
            }
            50..=55 => {
                let off = diff_off(&mut rng, size).min(DIFF_MAX_FILE - 3 * MIB);
                let len = 1 + rng.below(2 * MIB);
                let modes = [
                    0,
                    libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_ZERO_RANGE,
                ];
                let mode = modes[rng.below(4) as usize];
                let h = handles.entry(ino).or_insert_with(|| open_rw(&path));
                fallocate(h, mode, off, len).unwrap_or_else(|e| {
                    panic!("{at}: fallocate(mode {mode:#x}, {off}, {len}): errno {e}")
                });
                if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 || mode & libc::FALLOC_FL_ZERO_RANGE != 0
                {
                    fs.zero(ino, off, off + len);
                }
                if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
                    fs.extend(ino, off + len);
                }
                match mode {
                    0 => "fallocate",
                    libc::FALLOC_FL_KEEP_SIZE => "fallocate_keep_size",
                    libc::FALLOC_FL_ZERO_RANGE => "zero_range",
                    _ => "punch_hole",
                }
            }
            56..=59 if size > 0 => {
                let h = handles.entry(ino).or_insert_with(|| open_rw(&path));
                let map = Mapping::new(h, size as usize);
                let off = rng.below(size);
                let n = (1 + rng.below(256 * KIB)).min(size - off) as usize;
                check_bytes(
                    &format!("{at}: mmap read {n} at {off}"),
                    &map.bytes()[off as usize..off as usize + n],
                    &fs.inodes[&ino][off as usize..off as usize + n],
                );
                "mmap_read"
            }
            60..=63 if size > 0 => {
                let h = handles.entry(ino).or_insert_with(|| open_rw(&path));
                let mut map = Mapping::new(h, size as usize);
                let off = rng.below(size);
                let n = (1 + rng.below(256 * KIB)).min(size - off) as usize;
                let buf = random_bytes(&mut rng, n);
                map.bytes_mut()[off as usize..off as usize + n].copy_from_slice(&buf);
                map.sync();
                drop(map);
                fs.write(ino, off, &buf);
                "mmap_write"
            }
            64..=67 => {
                let h = handles.entry(ino).or_insert_with(|| open_rw(&path));
                h.sync_all().unwrap_or_else(|e| panic!("{at}: fsync: {e}"));
                "fsync"
            }
            68..=72 => {
                handles.remove(&ino);
                "close"
            }
            73..=76 => {
                // Rename to a fresh name, or over another name (which loses its link).
                let to = if rng.below(3) == 0 && fs.names.len() > 2 {
                    let k = rng.below(fs.names.len() as u64) as usize;
                    fs.names.keys().nth(k).unwrap().clone()
                } else {
                    fs.next_name += 1;
                    format!("f{}", fs.next_name)
                };
                std::fs::rename(&path, m.path(&to))
                    .unwrap_or_else(|e| panic!("{at}: rename to {to}: {e}"));
                // Renaming a name onto another link of the same inode does nothing.
                if to != name && fs.names.get(&to) != Some(&ino) {
                    let old = fs.names.insert(to.clone(), ino);
                    fs.names.remove(&name);
                    if let Some(o) = old {
                        if o != ino && fs.names_of(o).is_empty() {
                            fs.inodes.remove(&o);
                            handles.remove(&o);
                        }
                    }
                }
                "rename"
            }
            77..=78 => {
                if fs.names.len() < 7 {
                    fs.next_name += 1;
                    let to = format!("f{}", fs.next_name);
                    std::fs::hard_link(&path, m.path(&to))
                        .unwrap_or_else(|e| panic!("{at}: link to {to}: {e}"));
                    fs.names.insert(to, ino);
                }
                "link"
            }
            79 => {
                if fs.names.len() > 2 {
                    std::fs::remove_file(&path).unwrap();
                    fs.names.remove(&name);
                    if fs.names_of(ino).is_empty() {
                        fs.inodes.remove(&ino);
                        handles.remove(&ino);
                    }
                } else {
                    fs.next_name += 1;
                    let n = format!("f{}", fs.next_name);
                    File::create(m.path(&n)).unwrap();
                    fs.names.insert(n, fs.next_ino);
                    fs.inodes.insert(fs.next_ino, Vec::new());
                    fs.next_ino += 1;
                }
                "unlink_or_create"
            }
            80..=83 => {
                let target = if rng.below(2) == 0 {
                    path.clone()
                } else {
                    m.mnt.clone()
                };
                setxattr(&target, "user.extentfs.ctl", b"drop")
                    .unwrap_or_else(|e| panic!("{at}: ctl drop: {e}"));
                "drop_cache"
            }
            84 if rng.below(3) == 0 => {
                handles.clear();
                m.remount();
                "remount"
            }
            85..=88 => {
                // Someone else changes SOURCE between a close and the next open: under
                // close-to-open the next open through the mount sees it (the model takes it
                // at once, and the op ends with that open).
                handles.remove(&ino);
                let sp = m.src_path(&name);
                let f = OpenOptions::new()
                    .write(true)
                    .open(&sp)
                    .unwrap_or_else(|e| panic!("{at}: foreign open {}: {e}", sp.display()));
                let kind = match rng.below(3) {
                    0 => {
                        let off = rng.below(size + 1);
                        let n = 1 + rng.below(64 * KIB) as usize;
                        let buf = random_bytes(&mut rng, n);
                        f.write_all_at(&buf, off).unwrap();
                        fs.write(ino, off, &buf);
                        "foreign_write"
                    }
                    1 => {
                        let n = 1 + rng.below(64 * KIB) as usize;
                        let buf = random_bytes(&mut rng, n);
                        f.write_all_at(&buf, size).unwrap();
                        fs.write(ino, size, &buf);
                        "foreign_append"
                    }
                    _ => {
                        let new = rng.below(size + 1);
                        f.set_len(new).unwrap();
                        fs.inodes.get_mut(&ino).unwrap().resize(new as usize, 0);
                        "foreign_truncate"
                    }
                };
                drop(f);
                // The next open, and a stat: a mapping made later takes the file's size from
                // the kernel, which learns a new size from attributes, not from the open.
                let h = open_rw(&path);
                assert_eq!(
                    h.metadata().unwrap().len(),
                    fs.inodes[&ino].len() as u64,
                    "{at}"
                );
                handles.insert(ino, h);
                kind
            }
            _ => {
                let st = std::fs::metadata(&path).unwrap();
                assert_eq!(st.len(), size, "{at}: stat size");
                if let Some(h) = handles.get(&ino) {
                    assert_eq!(h.metadata().unwrap().len(), size, "{at}: fstat size");
                }
                "stat"
            }
        };
        counts.ops += 1;
        *counts.by_kind.entry(kind).or_default() += 1;
    }
    // Every name through the mount, then SOURCE after the final writeback.
    handles.clear();
    if let Some(st) = getxattr(&m.mnt, "user.extentfs.stats") {
        eprintln!(
            "{tag} since the last (re)mount: evicted {} bytes, written back {} bytes",
            stat(&st, "evicted_bytes"),
            stat(&st, "writeback_bytes_total")
        );
    }
    for (name, ino) in &fs.names {
        check_bytes(
            &format!("{tag} {name} through the mount at the end"),
            &std::fs::read(m.path(name)).unwrap(),
            &fs.inodes[ino],
        );
    }
    let st = m.unmount();
    assert!(st.success(), "{tag} daemon exit status {st}");
    let mut in_source: Vec<String> = std::fs::read_dir(&m.src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    in_source.sort();
    let want: Vec<String> = fs.names.keys().cloned().collect();
    assert_eq!(in_source, want, "{tag} names in SOURCE");
    let mut ino_of: HashMap<usize, u64> = HashMap::new();
    for (name, ino) in &fs.names {
        let p = m.src_path(name);
        check_bytes(
            &format!("{tag} SOURCE/{name} after unmount"),
            &std::fs::read(&p).unwrap(),
            &fs.inodes[ino],
        );
        let src_ino = std::fs::metadata(&p).unwrap().ino();
        assert_eq!(
            *ino_of.entry(*ino).or_insert(src_ino),
            src_ino,
            "{tag} hard links of {name} no longer share an inode"
        );
    }
    eprintln!("{tag} differential passed: {counts:?}");
    counts
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

fn differential_mode(mode: &str, default_seeds: [u64; 2]) {
    match env_u64("EXTENTFS_DIFF_SEED") {
        Some(seed) => {
            let ops = env_u64("EXTENTFS_DIFF_OPS").unwrap_or(1500) as usize;
            differential(mode, seed, ops);
        }
        None => {
            // CI: 1500 operations per mode, one seed with background writeback every 50ms.
            let per = env_u64("EXTENTFS_DIFF_OPS").unwrap_or(1500) as usize / 2;
            for seed in default_seeds {
                differential(mode, seed, per);
            }
        }
    }
}

#[test]
fn differential_pool() {
    differential_mode("cache=pool", [1, 2]);
}

#[test]
fn differential_kernel() {
    differential_mode("cache=kernel", [3, 4]);
}

// ---------------------------------------------------------------------------------------
// 2. SIGKILL at random moments during writes

const REC: u64 = 64 * KIB;

fn kill_record(seed: u64, r: u64) -> Vec<u8> {
    let mut rng = Rng((seed << 32 | r).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let mut v = random_bytes(&mut rng, REC as usize);
    v[..16].copy_from_slice(&[seed.to_le_bytes(), r.to_le_bytes()].concat());
    v
}

/// Start `extentfs -f` on a dead mount point with stderr captured, wait until it serves,
/// return the child and its stderr so far.
fn start_capturing(src: &Path, mnt: &Path, opts: &str) -> (std::process::Child, String) {
    let mut child = Command::new(BIN)
        .arg(src)
        .arg(mnt)
        .arg("-f")
        .arg("-o")
        .arg(opts)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines() {
            let Ok(l) = l else { break };
            eprintln!("(restarted daemon) {l}");
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    let mut lines = String::new();
    loop {
        while let Ok(l) = rx.try_recv() {
            lines.push_str(&l);
            lines.push('\n');
        }
        if std::fs::metadata(mnt).is_ok() && is_mounted(mnt) {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("restarted extentfs exited: {st}: {lines}");
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("restart over the dead mount did not come up: {lines}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The cleanup note is printed before the mount comes up; give the pipe a moment.
    let t1 = Instant::now();
    while !lines.contains("dead FUSE mount") && t1.elapsed() < Duration::from_secs(2) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push_str(&l);
            lines.push('\n');
        }
    }
    (child, lines)
}

#[test]
fn kill_9_during_writes_keeps_fsynced_records() {
    let mut total_records = 0;
    let mut total_durable = 0;
    for round in 0..4u64 {
        let mode = if round % 2 == 0 {
            "cache=pool"
        } else {
            "cache=kernel"
        };
        let opts = format!("cache_size=16M,dirty_expire=100ms,{mode}");
        let mut m = Mount::new(&opts);
        let seed = 1000 + round;
        let mut rng = Rng((seed * 7919) | 1);
        let durable = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let path = m.path("log");
        let fsync_every = 1 + rng.below(8);
        let writer = {
            let (durable, written) = (durable.clone(), written.clone());
            std::thread::spawn(move || {
                let f = match File::create(&path) {
                    Ok(f) => f,
                    Err(_) => return,
                };
                for r in 0.. {
                    if f.write_all_at(&kill_record(seed, r), r * REC).is_err() {
                        return;
                    }
                    written.store(r + 1, Ordering::SeqCst);
                    if (r + 1) % fsync_every == 0 {
                        if f.sync_all().is_err() {
                            return;
                        }
                        durable.store(r + 1, Ordering::SeqCst);
                    }
                    if r > 4000 {
                        return; // 256 MiB: the kill comes long before
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(150 + rng.below(1200)));
        let st = m.kill(libc::SIGKILL);
        assert!(!st.success(), "round {round}: killed daemon exit {st}");
        writer.join().unwrap();
        let durable = durable.load(Ordering::SeqCst);
        let written = written.load(Ordering::SeqCst);
        assert!(
            durable > 0,
            "round {round}: no fsync returned before the kill"
        );
        eprintln!(
            "[kill round {round} {mode}] {written} records written, {durable} fsynced \
             (fsync every {fsync_every})"
        );
        total_records += written;
        total_durable += durable;
        // The dead mount.
        assert!(is_mounted(&m.mnt), "round {round}: dead mount gone");
        // The kernel may answer from attributes it cached before the kill (1 s TTL).
        let t0 = Instant::now();
        let e = loop {
            match std::fs::metadata(&m.mnt) {
                Err(e) => break e,
                Ok(_) if t0.elapsed() < Duration::from_secs(3) => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(_) => panic!("round {round}: the dead mount still answers after 3 s"),
            }
        };
        assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "round {round}: {e}");
        // Acknowledged records in SOURCE, byte for byte.
        let src = std::fs::read(m.src_path("log")).unwrap();
        assert!(
            src.len() as u64 >= durable * REC,
            "round {round}: SOURCE has {} bytes, {durable} records were fsynced",
            src.len()
        );
        for r in 0..durable {
            let s = (r * REC) as usize;
            check_bytes(
                &format!("round {round}: fsynced record {r} in SOURCE"),
                &src[s..s + REC as usize],
                &kill_record(seed, r),
            );
        }
        // A new extentfs cleans up the dead mount (saying so) and serves the same data.
        let (mut child, lines) = start_capturing(&m.src, &m.mnt, &opts);
        let ok = lines.contains("cleaned up a dead FUSE mount");
        let stacked = mount_count(&m.mnt);
        let via = std::fs::read(m.path("log"));
        if !umount(&m.mnt) {
            umount_lazy(&m.mnt);
        }
        let st = child.wait().unwrap();
        assert!(ok, "round {round}: no cleanup note on stderr: {lines:?}");
        assert_eq!(stacked, 1, "round {round}: dead mount still stacked");
        assert!(st.success(), "round {round}: restarted daemon exit {st}");
        let via = via.unwrap();
        for r in 0..durable {
            let s = (r * REC) as usize;
            check_bytes(
                &format!("round {round}: record {r} through the restarted mount"),
                &via[s..s + REC as usize],
                &kill_record(seed, r),
            );
        }
        // And Mount::restart on the now clean mount point works on.
        m.restart();
        let f = OpenOptions::new().write(true).open(m.path("log")).unwrap();
        f.write_all_at(b"after restart", durable * REC).unwrap();
        drop(f);
        let st = m.unmount();
        assert!(st.success());
        let src = std::fs::read(m.src_path("log")).unwrap();
        let s = (durable * REC) as usize;
        assert_eq!(&src[s..s + 13], b"after restart");
    }
    eprintln!("kill -9: {total_records} records written, {total_durable} fsynced, 0 lost");
}

// ---------------------------------------------------------------------------------------
// 3a. SOURCE full

#[test]
fn source_full_enospc_then_recovers() {
    // SOURCE is a 24 MiB tmpfs holding a 12 MiB file: 20 MiB of new data cannot fit until
    // that file is deleted (through the mount).
    let mut guard = FsGuard::default();
    let mut m = Mount::with_source("cache_size=64M,dirty_expire=100ms", |src| {
        guard.tmpfs(src, "24M");
        std::fs::write(src.join("filler"), vec![7u8; (12 * MIB) as usize]).unwrap();
        std::fs::write(src.join("other"), b"other file").unwrap();
    });
    guard.remove_after(m.dir.path());
    let mut rng = Rng(31337);
    let mut model: Vec<u8> = Vec::new();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("big"))
        .unwrap();
    let mut acked = 0u64; // bytes whose fsync returned OK
    let mut errors: Vec<(String, i32)> = Vec::new();
    for i in 0..20u64 {
        let buf = random_bytes(&mut rng, MIB as usize);
        match io_errno(f.write_all_at(&buf, i * MIB)) {
            Ok(()) => {
                if model.len() < ((i + 1) * MIB) as usize {
                    model.resize(((i + 1) * MIB) as usize, 0);
                }
                model[(i * MIB) as usize..((i + 1) * MIB) as usize].copy_from_slice(&buf);
            }
            Err(e) => errors.push((format!("write {i}"), e)),
        }
        if i % 4 == 3 {
            match io_errno(f.sync_all()) {
                Ok(()) => acked = model.len() as u64,
                Err(e) => errors.push((format!("fsync after {i}"), e)),
            }
        }
    }
    eprintln!("SOURCE full: errors {errors:?}; {acked} bytes acknowledged durable");
    assert!(
        !errors.is_empty(),
        "20 MiB into 12 MiB of free space: every write and fsync succeeded"
    );
    assert!(
        errors.iter().all(|(_, e)| *e == libc::ENOSPC),
        "errors other than ENOSPC: {errors:?}"
    );
    assert!(acked > 0, "not even the first 4 MiB were acknowledged");
    // Acknowledged data is intact in SOURCE.
    let src = std::fs::read(m.src_path("big")).unwrap();
    check_bytes(
        "acknowledged part of big in SOURCE",
        &src[..acked as usize],
        &model[..acked as usize],
    );
    // Other files keep working meanwhile.
    assert_eq!(std::fs::read(m.path("other")).unwrap(), b"other file");
    std::fs::write(m.path("other2"), b"still writable").unwrap();
    assert_eq!(std::fs::read(m.path("other2")).unwrap(), b"still writable");
    // Read back what was written, acknowledged or not: nothing dropped from the cache.
    check_bytes(
        "big through the mount while SOURCE is full",
        &read_at_full(&f, 0, model.len()),
        &model,
    );
    // Free space, retry: the dirty data that could not be written was kept.
    std::fs::remove_file(m.path("filler")).unwrap();
    let df = |p: &Path| {
        let s = statvfs(p);
        s.f_bavail * s.f_frsize / KIB
    };
    let mut tries = Vec::new();
    for _ in 0..5 {
        let free = df(&m.src);
        let r = io_errno(f.sync_all());
        tries.push((free, r));
        if r.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("SOURCE full: after deleting filler, (free KiB in SOURCE, fsync) = {tries:?}");
    assert!(
        tries.last().unwrap().1.is_ok(),
        "retried fsync keeps failing: {tries:?}"
    );
    check_bytes(
        "big in SOURCE after the retried fsync",
        &std::fs::read(m.src_path("big")).unwrap(),
        &model,
    );
    drop(f);
    let st = m.unmount();
    assert!(st.success(), "daemon exit {st}");
    check_bytes(
        "big in SOURCE after unmount",
        &std::fs::read(m.src_path("big")).unwrap(),
        &model,
    );
    assert_eq!(
        std::fs::read(m.src_path("other2")).unwrap(),
        b"still writable"
    );
    drop(m);
    drop(guard);
}

// ---------------------------------------------------------------------------------------
// 3b. SOURCE fails with I/O errors

/// SOURCE is an ext4 (no journal, so a failed write does not turn it read-only) on a loop
/// device whose backing file is a sparse image on a small tmpfs: once the tmpfs is full, the
/// loop device fails writes, and ext4's writeback of SOURCE's pages reports the error at
/// fsync. (device-mapper's `error` target is the usual tool, but this kernel has no
/// device-mapper; see docs/reliability.md.)
fn io_error_source(guard: &mut FsGuard, base: &Path, src: &Path) -> Result<(), String> {
    let back = base.join("backing");
    // Room for the whole 16 MiB file and the ext4 metadata once the filler is gone.
    guard.tmpfs(&back, "40M");
    let img = back.join("img");
    run_cmd(&["truncate", "-s", "64M", img.to_str().unwrap()])?;
    run_cmd(&[
        "mkfs.ext4",
        "-q",
        "-F",
        "-O",
        "^has_journal",
        img.to_str().unwrap(),
    ])?;
    let dev = run_cmd(&["losetup", "-f", "--show", img.to_str().unwrap()])?;
    guard.loops.push(dev.clone());
    run_cmd(&["mount", "-t", "ext4", &dev, src.to_str().unwrap()])?;
    guard.mounts.push(src.to_path_buf());
    // Leave ~4 MiB free in the tmpfs under the image.
    let free = {
        let s = statvfs(&back);
        s.f_bavail * s.f_frsize
    };
    std::fs::write(
        back.join("filler"),
        vec![1u8; (free.saturating_sub(4 * MIB)) as usize],
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(src.join("other"), b"other file").map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn source_io_error_reaches_fsync() {
    if run_cmd(&["losetup", "--version"]).is_err() || run_cmd(&["mkfs.ext4", "-V"]).is_err() {
        eprintln!("SKIPPED: losetup or mkfs.ext4 missing");
        return;
    }
    let mut guard = FsGuard::default();
    let mut setup_err = None;
    // No background writeback (60 s expiry, and no pressure: 16 MiB dirty plus a page would
    // pass half of a 50% limit): the fsyncs below do all of it, so the cache's state between
    // them is exact, not a moment of a concurrent retry.
    // coherence=none: a close of a forked copy of the descriptor (another test's exec) would
    // otherwise retry the writeback between the steps checked here.
    let mut m = Mount::with_source(
        "cache_size=64M,dirty_expire=60s,dirty_limit=100%,coherence=none",
        |src| {
            let base = src.parent().unwrap().to_path_buf();
            if let Err(e) = io_error_source(&mut guard, &base, src) {
                setup_err = Some(e);
            }
        },
    );
    guard.remove_after(m.dir.path());
    if let Some(e) = setup_err {
        panic!("building the failing SOURCE: {e}");
    }
    let back = m.dir.path().join("backing");
    let mut rng = Rng(4242);
    let data = random_bytes(&mut rng, (16 * MIB) as usize);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("big"))
        .unwrap();
    let mut first_err = None;
    for i in 0..16u64 {
        let s = (i * MIB) as usize;
        if let Err(e) = io_errno(f.write_all_at(&data[s..s + MIB as usize], i * MIB)) {
            first_err.get_or_insert((format!("write {i}"), e));
            break;
        }
    }
    let sync1 = io_errno(f.sync_all());
    eprintln!("I/O errors: first write error {first_err:?}, fsync {sync1:?}");
    let e = sync1.expect_err("16 MiB through a device with 4 MiB of room: fsync succeeded");
    assert!(
        e == libc::EIO || e == libc::ENOSPC,
        "fsync error {e}, want EIO (or ENOSPC as the loop device reports a full backing)"
    );
    // The daemon keeps serving other files.
    assert_eq!(std::fs::read(m.path("other")).unwrap(), b"other file");
    std::fs::write(m.path("other2"), b"cached").unwrap();
    assert_eq!(std::fs::read(m.path("other2")).unwrap(), b"cached");
    check_bytes(
        "big through the mount after the error",
        &read_at_full(&f, 0, data.len()),
        &data,
    );
    // The data whose fsync failed is dirty again in the cache (SOURCE's page cache may have
    // dropped it), and the error is recorded for the file.
    let fstats = getxattr(&m.path("big"), "user.extentfs.stats").unwrap();
    assert_eq!(
        stat(&fstats, "dirty_bytes"),
        data.len() as u64,
        "after a failed fsync the written-back data must be dirty again:\n{fstats}"
    );
    assert!(fstats.contains("last_writeback_error=No space"), "{fstats}");
    let wb_before = stat(
        &getxattr(&m.mnt, "user.extentfs.stats").unwrap(),
        "writeback_bytes_total",
    );
    // Make room under the device: the next fsyncs write everything again. The first may still
    // report the earlier failure (reported once, as the kernel's errseq does).
    std::fs::remove_file(back.join("filler")).unwrap();
    let sync2 = io_errno(f.sync_all());
    let sync3 = io_errno(f.sync_all());
    eprintln!("I/O errors: fsyncs after freeing the backing: {sync2:?} {sync3:?}");
    assert!(sync3.is_ok(), "fsync after freeing space failed: {sync3:?}");
    let fstats = getxattr(&m.path("big"), "user.extentfs.stats").unwrap();
    assert_eq!(stat(&fstats, "dirty_bytes"), 0, "{fstats}");
    let wb_after = stat(
        &getxattr(&m.mnt, "user.extentfs.stats").unwrap(),
        "writeback_bytes_total",
    );
    assert!(
        wb_after - wb_before >= data.len() as u64,
        "the failed data was not written again: {} bytes written back after the error",
        wb_after - wb_before
    );
    check_bytes(
        "big through the mount after the retry",
        &read_at_full(&f, 0, data.len()),
        &data,
    );
    drop(f);
    let st = m.unmount();
    assert!(st.success(), "daemon exit {st}");
    // Not checked: the blocks on the device. On this kernel the ext4-on-loop stack itself
    // loses blocks whose writeback failed even when a program rewrites them and fsync then
    // succeeds (reproduced without extentfs; see docs/reliability.md), so the device cannot
    // tell whether extentfs wrote them again; the counters above do.
    drop(m);
    drop(guard);
}

// ---------------------------------------------------------------------------------------
// 4. memory bound

/// What the daemon may use beyond the pool: code and heap, a request buffer per FUSE thread
/// (4 here), writeback and read-ahead bookkeeping, thread stacks. Measured 2026-11-26 on the
/// debug build: 7 MiB idle, peak 41 MiB with a 32 MiB pool, i.e. ~9 MiB over the pool; the
/// allowance leaves room for allocator noise. See docs/reliability.md.
const RSS_OVERHEAD: u64 = 48 * MIB;

#[test]
fn rss_stays_within_pool_plus_overhead() {
    let cache = 32 * MIB;
    // threads pinned: every FUSE thread keeps a request buffer (~1 MiB resident after the
    // first 1 MiB write), so the default (one per CPU) would make the bound machine-dependent.
    let mut m = Mount::new("cache_size=32M,threads=4");
    let pid = m.pid().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max_rss) = (stop.clone(), max_rss.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(k) = vm_rss_kib(pid) {
                    max_rss.fetch_max(k * KIB, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let idle = vm_rss_kib(pid).unwrap() * KIB;
    let total = 4 * cache;
    let mut buf = AlignedBuf::new(MIB as usize);
    let mut rng = Rng(99);
    rng.fill(buf.as_mut_slice());
    {
        let f = File::create(m.path("stream")).unwrap();
        for i in 0..total / MIB {
            buf.as_mut_slice()[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all_at(buf.as_slice(), i * MIB).unwrap();
        }
    }
    let after_write = max_rss.load(Ordering::Relaxed);
    {
        let f = File::open(m.path("stream")).unwrap();
        let mut rb = AlignedBuf::new(MIB as usize);
        for i in 0..total / MIB {
            let n = f.read_at(rb.as_mut_slice(), i * MIB).unwrap();
            assert_eq!(n, MIB as usize);
            assert_eq!(&rb.as_slice()[..8], &i.to_le_bytes());
            assert_eq!(&rb.as_slice()[8..], &buf.as_slice()[8..]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let max = max_rss.load(Ordering::Relaxed);
    eprintln!(
        "RSS: idle {} MiB, max during 128 MiB of writes {} MiB, max overall {} MiB \
         (cache_size 32 MiB, allowed {} MiB)",
        idle / MIB,
        after_write / MIB,
        max / MIB,
        (cache + RSS_OVERHEAD) / MIB
    );
    assert!(
        max <= cache + RSS_OVERHEAD,
        "daemon RSS {} MiB > cache_size 32 MiB + {} MiB",
        max / MIB,
        RSS_OVERHEAD / MIB
    );
    let st = m.unmount();
    assert!(st.success());
    assert_eq!(
        std::fs::metadata(m.src_path("stream")).unwrap().len(),
        total
    );
}

// ---------------------------------------------------------------------------------------
// 5. concurrency with a deadlock watchdog

const CREC: u64 = 4096;
const CRECS: u64 = 512; // a 2 MiB region of records

/// Record `rec` as written by writer `w` in its write number `seq`: a 24-byte header and a
/// body derived from it.
fn conc_record(w: u64, seq: u64, rec: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&(w + 1).to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&rec.to_le_bytes());
    let mut x = ((w + 1) * 0x9E37_79B9) ^ seq.wrapping_mul(0x85EB_CA6B) ^ (rec << 20);
    for b in out[24..].iter_mut() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (x >> 56) as u8;
    }
}

/// Some writer's whole record (w, seq), or all zero (None); panics on a torn record.
fn check_conc(what: &str, rec: u64, got: &[u8]) -> Option<(u64, u64)> {
    if got.iter().all(|&b| b == 0) {
        return None;
    }
    let w = u64::from_le_bytes(got[..8].try_into().unwrap());
    let seq = u64::from_le_bytes(got[8..16].try_into().unwrap());
    let mut want = vec![0u8; CREC as usize];
    assert!(
        (1..=8).contains(&w),
        "{what}: record {rec} torn/garbage (writer {w})"
    );
    conc_record(w - 1, seq, rec, &mut want);
    check_bytes(
        &format!("{what}: record {rec} (writer {}, seq {seq})", w - 1),
        got,
        &want,
    );
    Some((w - 1, seq))
}

fn concurrency(mode: &str) {
    let mut m = Mount::new(&format!("cache_size=16M,dirty_expire=50ms,{mode}"));
    let pid = m.pid().unwrap() as i32;
    let shared = m.path("shared");
    File::create(&shared)
        .unwrap()
        .set_len(CRECS * CREC)
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    // Watchdog: on a deadlock, kill the daemon (by its PID) so every blocked call returns.
    let (wd_tx, wd_rx) = mpsc::channel::<()>();
    let watchdog = {
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            if wd_rx.recv_timeout(Duration::from_secs(120)) == Err(mpsc::RecvTimeoutError::Timeout)
            {
                timed_out.store(true, Ordering::SeqCst);
                eprintln!("watchdog: no progress in 120 s, killing daemon {pid}");
                // SAFETY: kill touches no memory. `pid` is the daemon, the Mount's unreaped child,
                // so it names no other process while the mount lives.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    // last[w][rec] = last seq writer w completed on rec
    let mut threads = Vec::new();
    // Readers check every record they see. In cache=kernel they read with O_DIRECT, i.e.
    // from the daemon: a buffered read copies out of the kernel's page cache while a buffered
    // write may be copying into the same page (Linux makes no read/write atomicity promise
    // there, ext4 neither), which would show a torn record that extentfs never held.
    let reader_flags = if mode.contains("cache=kernel") {
        libc::O_DIRECT
    } else {
        0
    };
    for w in 0..8u64 {
        let shared = shared.clone();
        let done = done.clone();
        threads.push(std::thread::spawn(
            move || -> Result<Vec<Option<u64>>, String> {
                let mut rng = Rng(w * 1_000_003 + 17);
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&shared)
                    .map_err(|e| e.to_string())?;
                let reader = OpenOptions::new()
                    .read(true)
                    .custom_flags(reader_flags)
                    .open(&shared)
                    .map_err(|e| e.to_string())?;
                let mut last = vec![None; CRECS as usize];
                let mut buf = AlignedBuf::new((16 * CREC) as usize);
                let mut seq = 0u64;
                while Instant::now() < deadline && !done.load(Ordering::Relaxed) {
                    let n = 1 + rng.below(16);
                    let first = rng.below(CRECS - n + 1);
                    let bytes = (n * CREC) as usize;
                    if rng.below(2) == 0 {
                        seq += 1;
                        for i in 0..n {
                            let s = (i * CREC) as usize;
                            conc_record(
                                w,
                                seq,
                                first + i,
                                &mut buf.as_mut_slice()[s..s + CREC as usize],
                            );
                        }
                        f.write_all_at(&buf.as_slice()[..bytes], first * CREC)
                            .map_err(|e| format!("writer {w}: {e}"))?;
                        for i in 0..n {
                            last[(first + i) as usize] = Some(seq);
                        }
                    } else {
                        let got = reader
                            .read_at(&mut buf.as_mut_slice()[..bytes], first * CREC)
                            .map_err(|e| format!("reader {w}: {e}"))?;
                        if got != bytes {
                            return Err(format!("reader {w}: short read {got} of {bytes}"));
                        }
                        for i in 0..n {
                            let s = (i * CREC) as usize;
                            check_conc(
                                &format!("reader {w}"),
                                first + i,
                                &buf.as_slice()[s..s + CREC as usize],
                            );
                        }
                    }
                }
                Ok(last)
            },
        ));
    }
    // Two other files, each written sequentially by its own thread, with truncates of the
    // shared file past the records region in between.
    let mut others = Vec::new();
    for k in 0..2u64 {
        let p = m.path(&format!("other{k}"));
        let shared = shared.clone();
        others.push(std::thread::spawn(move || -> Result<Vec<u8>, String> {
            let mut rng = Rng(77 + k);
            let mut f = File::create(&p).map_err(|e| e.to_string())?;
            let s = OpenOptions::new()
                .write(true)
                .open(&shared)
                .map_err(|e| e.to_string())?;
            let mut model = Vec::new();
            while Instant::now() < deadline {
                let n = (1 + rng.below(512 * KIB)) as usize;
                let buf = random_bytes(&mut rng, n);
                f.write_all(&buf).map_err(|e| format!("other{k}: {e}"))?;
                model.extend_from_slice(&buf);
                if model.len() as u64 > 24 * MIB {
                    f.set_len(0).map_err(|e| e.to_string())?;
                    f = OpenOptions::new()
                        .append(true)
                        .open(&p)
                        .map_err(|e| e.to_string())?;
                    model.clear();
                }
                // Truncate the shared file beyond the records, up and down.
                let to = CRECS * CREC + rng.below(4 * MIB);
                s.set_len(to)
                    .map_err(|e| format!("truncate shared to {to}: {e}"))?;
            }
            Ok(model)
        }));
    }
    let mut lasts = Vec::new();
    let mut errors = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(l)) => lasts.push(l),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a reader found a torn record (see panic above)".into()),
        }
    }
    let mut other_models = Vec::new();
    for t in others {
        match t.join().unwrap() {
            Ok(mo) => other_models.push(mo),
            Err(e) => errors.push(e),
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = wd_tx.send(());
    watchdog.join().unwrap();
    assert!(
        !timed_out.load(Ordering::SeqCst),
        "[{mode}] deadlock: no progress for 120 s"
    );
    assert!(errors.is_empty(), "[{mode}] {errors:?}");
    // Final state: each record is the last write of the writer whose record it holds.
    let check_final = |what: &str, data: &[u8]| {
        for rec in 0..CRECS {
            let s = (rec * CREC) as usize;
            match check_conc(what, rec, &data[s..s + CREC as usize]) {
                None => assert!(
                    lasts.iter().all(|l| l[rec as usize].is_none()),
                    "{what}: record {rec} is zero but was written"
                ),
                Some((w, seq)) => assert_eq!(
                    lasts[w as usize][rec as usize],
                    Some(seq),
                    "{what}: record {rec} holds writer {w}'s seq {seq}, not its last write"
                ),
            }
        }
    };
    let via = std::fs::read(&shared).unwrap();
    check_final(&format!("[{mode}] shared through the mount"), &via);
    for (k, mo) in other_models.iter().enumerate() {
        check_bytes(
            &format!("[{mode}] other{k} through the mount"),
            &std::fs::read(m.path(&format!("other{k}"))).unwrap(),
            mo,
        );
    }
    let st = m.unmount();
    assert!(st.success(), "[{mode}] exit {st}");
    let src = std::fs::read(m.src_path("shared")).unwrap();
    assert_eq!(src.len(), via.len(), "[{mode}] shared size in SOURCE");
    check_final(&format!("[{mode}] shared in SOURCE"), &src);
    for (k, mo) in other_models.iter().enumerate() {
        check_bytes(
            &format!("[{mode}] SOURCE/other{k}"),
            &std::fs::read(m.src_path(&format!("other{k}"))).unwrap(),
            mo,
        );
    }
    let writes: usize = lasts
        .iter()
        .map(|l| l.iter().filter(|s| s.is_some()).count())
        .sum();
    eprintln!("[{mode}] concurrency: {writes} (writer, record) pairs written, all consistent");
}

#[test]
fn concurrency_pool() {
    concurrency("cache=pool");
}

#[test]
fn concurrency_kernel() {
    concurrency("cache=kernel");
}

// ---------------------------------------------------------------------------------------
// 6. umount while a writer holds a dirty file open

#[test]
fn umount_with_open_dirty_file() {
    for mode in ["cache=pool", "cache=kernel"] {
        // coherence=none: the file must still be dirty when umount is tried (under
        // close-to-open another test's exec, closing a forked copy of it, writes it back).
        let mut m = Mount::new(&format!(
            "cache_size=32M,dirty_expire=60s,coherence=none,{mode}"
        ));
        let mut rng = Rng(606);
        let mut model = random_bytes(&mut rng, (5 * MIB + 123) as usize);
        let mut f = File::create(m.path("held")).unwrap();
        f.write_all(&model).unwrap();
        let stats = getxattr(&m.mnt, "user.extentfs.stats").unwrap();
        if mode == "cache=pool" {
            assert!(stat(&stats, "dirty_bytes") > 0, "the test needs dirty data");
        }
        // A plain umount refuses while the file is open.
        let c = CString::new(m.mnt.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated CString alive across the call; umount2 only reads it.
        let r = unsafe { libc::umount2(c.as_ptr(), 0) };
        let e = std::io::Error::last_os_error().raw_os_error();
        assert!(
            r != 0 && e == Some(libc::EBUSY),
            "[{mode}] busy umount: {r} {e:?}"
        );
        // Lazy: the mount goes away, the open file keeps working, the daemon writes back
        // everything once the last handle is closed.
        // SAFETY: `c` is a NUL-terminated CString alive across the call; umount2 only reads it.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        assert!(!is_mounted(&m.mnt));
        let more = random_bytes(&mut rng, (2 * MIB) as usize);
        f.write_all(&more).unwrap();
        model.extend_from_slice(&more);
        f.write_all_at(b"patched", 4095).unwrap();
        model[4095..4102].copy_from_slice(b"patched");
        drop(f);
        let st = m.kill(0); // signal 0: just wait for the exit
        assert!(st.success(), "[{mode}] exit after lazy umount: {st}");
        check_bytes(
            &format!("[{mode}] SOURCE/held after lazy umount"),
            &std::fs::read(m.src_path("held")).unwrap(),
            &model,
        );
    }
}

// ---------------------------------------------------------------------------------------
// 7. security: symlinks in SOURCE, racing swaps, hostile offsets and names

#[test]
fn symlink_in_source_is_followed_by_the_caller() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"outside").unwrap();
    let secret2 = secret.clone();
    let m = Mount::with_source("cache_size=16M", move |src| {
        std::os::unix::fs::symlink(&secret2, src.join("abs")).unwrap();
        // Resolves per reading process: the daemon would read its own name.
        std::os::unix::fs::symlink("/proc/thread-self/comm", src.join("comm")).unwrap();
    });
    let l = std::fs::symlink_metadata(m.path("abs")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(std::fs::read_link(m.path("abs")).unwrap(), secret);
    assert_eq!(std::fs::read(m.path("abs")).unwrap(), b"outside");
    let comm = std::thread::Builder::new()
        .name("caller-xyz".into())
        .spawn({
            let p = m.path("comm");
            move || std::fs::read(p).unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        comm, b"caller-xyz\n",
        "the link was not resolved in the caller's context"
    );
    // O_NOFOLLOW refuses it; writing through it writes where the caller's path leads, so the
    // daemon is not involved: only the kernel's resolution (same as on any filesystem).
    let e = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(m.path("abs"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
}

#[test]
fn swapping_file_and_symlink_in_source_never_writes_outside() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    let original = b"must never change".to_vec();
    std::fs::write(&victim, &original).unwrap();
    let victim_mtime = std::fs::metadata(&victim).unwrap().mtime_nsec();
    let victim_mode = std::fs::metadata(&victim).unwrap().mode() & 0o7777;
    for mode in ["cache=pool", "cache=kernel"] {
        let m = Mount::new(&format!("cache_size=16M,dirty_expire=20ms,{mode}"));
        std::fs::write(m.path("x"), b"inside").unwrap();
        let held = OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("x"))
            .unwrap();
        // Swap x in SOURCE between a regular file and a symlink to the victim, atomically
        // with rename, as fast as possible.
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (src, victim, stop) = (m.src.clone(), victim.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let tmp = src.join(".swap");
                    let _ = std::fs::remove_file(&tmp);
                    if n.is_multiple_of(2) {
                        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
                    } else {
                        std::fs::write(&tmp, b"file again").unwrap();
                    }
                    std::fs::rename(&tmp, src.join("x")).unwrap();
                    n += 1;
                }
                n
            })
        };
        let mut opened = 0;
        let t0 = Instant::now();
        let mut i = 0u64;
        while t0.elapsed() < Duration::from_secs(3) {
            i += 1;
            let _ = held.write_all_at(b"held handle write", i % 8192);
            let _ = held.set_len(i % 5000);
            // O_NOFOLLOW everywhere: the test process itself must not follow the planted
            // symlink (that would be the kernel doing what the caller asked); only the
            // daemon could write the victim then.
            let mut o = OpenOptions::new();
            o.write(true).custom_flags(libc::O_NOFOLLOW);
            match i % 4 {
                0 => o.truncate(true),
                1 => o.create(true),
                2 => o.append(true),
                _ => o.read(true),
            };
            if let Ok(f) = o.open(m.path("x")) {
                opened += 1;
                let _ = f.write_all_at(b"PWNED through a new open", 0);
                let _ = f.set_len(3);
                let _ = fallocate(&f, 0, 0, 1 << 20);
                let _ = f.sync_all();
                let _ = f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
            }
            let c = CString::new(m.path("x").as_os_str().as_bytes()).unwrap();
            // SAFETY: `c` and the ctl name are NUL-terminated C strings alive across both calls;
            // lsetxattr reads 4 bytes of the static b"drop"; a null `times` asks utimensat for
            // "now" and reads nothing.
            unsafe {
                libc::lsetxattr(
                    c.as_ptr(),
                    c"user.extentfs.ctl".as_ptr(),
                    b"drop".as_ptr() as *const _,
                    4,
                    0,
                );
                // truncate(2)-like setattr by path without following: O_PATH is not enough
                // for ftruncate, so use utimensat with AT_SYMLINK_NOFOLLOW for a setattr.
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    std::ptr::null(),
                    libc::AT_SYMLINK_NOFOLLOW,
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        let _ = held.sync_all();
        drop(held);
        let mut m = m;
        let _ = m.unmount();
        eprintln!("[{mode}] {swaps} swaps in SOURCE, {opened} opens of x, {i} rounds");
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            original,
            "[{mode}] the daemon wrote outside SOURCE"
        );
        let md = std::fs::metadata(&victim).unwrap();
        assert_eq!(md.mtime_nsec(), victim_mtime, "[{mode}] victim touched");
        assert_eq!(
            md.mode() & 0o7777,
            victim_mode,
            "[{mode}] victim's mode changed"
        );
    }
}

#[test]
fn hostile_offsets_and_names() {
    for mode in ["cache=pool", "cache=kernel"] {
        let m = Mount::new(&format!("cache_size=16M,{mode}"));
        let pid = m.pid().unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(m.path("f"))
            .unwrap();
        f.write_all_at(b"base", 0).unwrap();
        let fd = f.as_raw_fd();
        let b = b"0123456789abcdef0123";
        let mut results = Vec::new();
        // pwrite across the maximum offset
        let r =
            // SAFETY: pwrite reads `b.len()` bytes from `b`; `fd` belongs to `f`, open for the
            // whole test. The hostile offset is the point: the kernel checks it, memory is not
            // involved.
            errno(unsafe { libc::pwrite(fd, b.as_ptr() as *const _, b.len(), i64::MAX - 10) } as _);
        results.push(("pwrite at i64::MAX-10", r));
        assert!(
            matches!(r, Err(libc::EFBIG) | Err(libc::EINVAL)),
            "[{mode}] pwrite at i64::MAX-10: {r:?}"
        );
        let r =
            // SAFETY: pwrite reads `b.len()` bytes from `b`; `fd` belongs to `f`, open for the
            // whole test.
            errno(unsafe { libc::pwrite(fd, b.as_ptr() as *const _, b.len(), (1 << 62) + 5) } as _);
        results.push(("pwrite at 2^62+5", r));
        assert!(
            matches!(r, Err(libc::EFBIG) | Err(libc::EINVAL)) || r == Ok(b.len() as _),
            "[{mode}] pwrite at 2^62: {r:?}"
        );
        if r.is_ok() {
            // Accepted into the cache although SOURCE (ext4: 16 TiB at most) cannot hold it:
            // the error must come at fsync at the latest, and must not wedge anything.
            let s = io_errno(f.sync_all());
            results.push(("fsync after pwrite at 2^62", s.map(|_| 0)));
            assert!(
                s.is_err(),
                "[{mode}] fsync of a byte at 2^62 on ext4 returned OK"
            );
            f.set_len(4).unwrap();
            f.sync_all()
                .expect("fsync after truncating the impossible tail away");
        }
        // pread near 2^63: EOF (0) or an error, never a crash
        let mut rb = [0u8; 64];
        for off in [i64::MAX - 10, i64::MAX, 1 << 62] {
            // SAFETY: pread writes at most 64 bytes into `rb`, which holds 64; `fd` belongs to `f`,
            // open for the whole test.
            let r = errno(unsafe { libc::pread(fd, rb.as_mut_ptr() as *mut _, 64, off) } as _);
            results.push(("pread near 2^63", r));
            assert!(
                matches!(r, Ok(0) | Err(libc::EINVAL) | Err(libc::EFBIG)),
                "[{mode}] pread at {off}: {r:?}"
            );
        }
        // SAFETY: pread writes at most 64 bytes into `rb`, which holds 64 (a negative offset is
        // refused: EINVAL); `fd` belongs to `f`.
        let r = errno(unsafe { libc::pread(fd, rb.as_mut_ptr() as *mut _, 64, -1) } as _);
        assert_eq!(r, Err(libc::EINVAL), "[{mode}] pread at -1");
        // fallocate with an overflowing end, every mode
        for mode_f in [
            0,
            libc::FALLOC_FL_KEEP_SIZE,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            libc::FALLOC_FL_ZERO_RANGE,
        ] {
            for (off, len) in [
                (i64::MAX - 10, 100),
                (1, i64::MAX),
                (i64::MAX / 2, i64::MAX / 2 + 10),
            ] {
                // SAFETY: fallocate takes no pointers; `fd` belongs to `f`, open for the whole
                // test.
                let r = errno(unsafe { libc::fallocate(fd, mode_f, off, len) } as _);
                results.push(("fallocate overflow", r));
                assert!(
                    matches!(
                        r,
                        Err(libc::EFBIG) | Err(libc::EINVAL) | Err(libc::EOPNOTSUPP)
                    ),
                    "[{mode}] fallocate(mode {mode_f:#x}, {off}, {len}): {r:?}"
                );
            }
        }
        // truncate beyond 2^63 (negative as off_t) and to the maximum
        for to in [i64::MAX, -1, i64::MIN] {
            // SAFETY: ftruncate takes no pointers; `fd` belongs to `f`, open for the whole test.
            let r = errno(unsafe { libc::ftruncate(fd, to) } as _);
            results.push(("ftruncate huge", r));
            assert!(
                matches!(r, Err(libc::EFBIG) | Err(libc::EINVAL)),
                "[{mode}] ftruncate({to}): {r:?}"
            );
        }
        let c = CString::new(m.path("f").as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated CString alive across the call.
        let r = errno(unsafe { libc::truncate(c.as_ptr(), i64::MAX) } as _);
        assert!(
            matches!(r, Err(libc::EFBIG) | Err(libc::EINVAL)),
            "[{mode}] truncate: {r:?}"
        );
        // lseek SEEK_DATA/HOLE far out
        for wh in [libc::SEEK_DATA, libc::SEEK_HOLE] {
            // SAFETY: lseek takes no pointers; `fd` belongs to `f`, open for the whole test.
            let r = unsafe { libc::lseek(fd, i64::MAX - 1, wh) };
            assert!(r < 0, "[{mode}] lseek far past EOF: {r}");
        }
        // copy_file_range to an overflowing offset
        let mut o = i64::MAX - 5;
        let mut i = 0i64;
        // SAFETY: `i` and `o` are live i64s the kernel reads and updates; `fd` belongs to `f`, open
        // for the whole test.
        let r = unsafe { libc::copy_file_range(fd, &mut i, fd, &mut o, 4, 0) };
        assert!(
            r <= 0,
            "[{mode}] copy_file_range to i64::MAX-5 returned {r}"
        );
        // Still alive, still consistent.
        assert!(vm_rss_kib(pid).is_some(), "[{mode}] daemon died");
        assert_eq!(
            read_at_full(&f, 0, 100),
            b"base",
            "[{mode}] file after the abuse"
        );
        std::fs::write(m.path("g"), b"works").unwrap();
        assert_eq!(std::fs::read(m.path("g")).unwrap(), b"works");
        // Names: 255 bytes fine, 256 ENAMETOOLONG, invalid UTF-8 kept as bytes.
        let n255 = "é".repeat(127) + "x"; // 255 bytes, multibyte
        assert_eq!(n255.len(), 255);
        std::fs::write(m.path(&n255), b"long").unwrap();
        assert!(m.src_path(&n255).exists());
        let n256 = "é".repeat(128);
        assert_eq!(
            std::fs::write(m.path(&n256), b"x")
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        let bad = OsStr::from_bytes(b"bad\xff\xfe\x80name");
        std::fs::write(m.mnt.join(bad), b"bytes").unwrap();
        assert!(
            m.src.join(bad).exists(),
            "[{mode}] SOURCE lacks the raw-bytes name"
        );
        assert_eq!(std::fs::read(m.mnt.join(bad)).unwrap(), b"bytes");
        std::fs::write(m.src.join(OsStr::from_bytes(b"from-src-\xc3\x28")), b"s").unwrap();
        let listed: Vec<Vec<u8>> = std::fs::read_dir(&m.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        assert!(
            listed.contains(&b"bad\xff\xfe\x80name".to_vec()),
            "{listed:?}"
        );
        assert!(
            listed.contains(&b"from-src-\xc3\x28".to_vec()),
            "{listed:?}"
        );
        std::fs::rename(m.mnt.join(bad), m.mnt.join(OsStr::from_bytes(b"\xfe"))).unwrap();
        drop(f);
        let mut m = m;
        let st = m.unmount();
        assert!(st.success(), "[{mode}] exit {st}");
        assert_eq!(
            std::fs::read(m.src.join(OsStr::from_bytes(b"\xfe"))).unwrap(),
            b"bytes"
        );
        assert_eq!(std::fs::read(m.src_path(&n255)).unwrap(), b"long");
        assert_eq!(std::fs::read(m.src_path("f")).unwrap(), b"base");
        eprintln!("[{mode}] hostile input: {results:?}");
    }
}

/// BUG (minimal reproduction): deleting a file through the mount does not free its space in
/// SOURCE when `unlink` returns: the daemon still holds an `O_PATH` descriptor of the
/// unlinked inode until the kernel's FORGET arrives, so SOURCE stays full for a moment and
/// an application that deletes a file to make room and retries gets ENOSPC again.
#[test]
fn unlink_through_mount_frees_source_space_promptly() {
    let mut guard = FsGuard::default();
    let m = Mount::with_source("cache_size=16M", |src| {
        guard.tmpfs(src, "16M");
        std::fs::write(src.join("big"), vec![1u8; (8 * MIB) as usize]).unwrap();
    });
    guard.remove_after(m.dir.path());
    let free_kib = |p: &Path| {
        let s = statvfs(p);
        s.f_bavail * s.f_frsize / KIB
    };
    let mut held = Vec::new();
    // The window is short: 20 rounds show it reliably on a 2-CPU machine.
    for round in 0..20 {
        let name = format!("big{round}");
        std::fs::write(m.src_path(&name), vec![1u8; (4 * MIB) as usize]).unwrap();
        // A lookup through the mount (no open): the daemon now has the inode in its table.
        assert_eq!(std::fs::metadata(m.path(&name)).unwrap().len(), 4 * MIB);
        let before = free_kib(&m.src);
        std::fs::remove_file(m.path(&name)).unwrap();
        // The daemon lets go of the SOURCE inode when the kernel forgets it, which the kernel
        // sends on its own schedule right after the unlink: allow it a moment.
        let t0 = std::time::Instant::now();
        let mut after = free_kib(&m.src);
        while after.saturating_sub(before) < 4 * KIB && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(5));
            after = free_kib(&m.src);
        }
        held.push(after.saturating_sub(before));
    }
    drop(m);
    drop(guard);
    assert!(
        held.iter().all(|&k| k >= 4 * KIB),
        "KiB freed in SOURCE within 2 s of each unlink of a 4 MiB file: {held:?}"
    );
}
