//! Telling people what happened to their data: files named by their path in SOURCE (never by
//! inode numbers), the list of files whose data is not in SOURCE yet, the daemon's last
//! writeback at exit, and the recovery directory that keeps what could not be written.
//!
//! At exit ([`CacheContext::finish`]) every dirty range is tried once more, each on its own
//! (one failing range does not stop the others), and SOURCE's files are fsynced. What is still
//! dirty then is copied into a new directory under `recovery_dir`: per file one `N.data`
//! holding exactly its unwritten byte ranges back to back, a `MANIFEST` saying which range of
//! which file each stretch is, and `restore.sh` that writes them back into SOURCE with `dd`.
//! Callers of `extentfs umount` learn the outcome through a pipe they handed the daemon
//! ([`add_exit_listener`]).

use super::inode_cache::{InodeCache, RangeGuard};
use super::CacheContext;
use crate::extent::state::Bits;
use crate::extent::ByteRange;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file's path relative to SOURCE for a message, or its inode when the kernel cannot name
/// it (resolved now: one readlink, only when something is reported).
pub fn file_name(c: &InodeCache) -> String {
    match c.file.name() {
        Some(n) => crate::logging::display_name(&n),
        None => format!("inode {}:{} (path unknown)", c.key.0, c.key.1),
    }
}

/// A file whose data is not (all) in SOURCE.
#[derive(Debug, Clone)]
pub struct Unwritten {
    /// Path relative to SOURCE, for people (see [`file_name`]).
    pub name: String,
    pub dirty_bytes: u64,
    /// errno of its last failed writeback, if any.
    pub errno: Option<i32>,
}

impl Unwritten {
    /// One line: `BYTES<TAB>ERRNO<TAB>PATH` (errno 0: none). Paths carry no tab or newline
    /// ([`crate::logging::display_name`] escapes control characters).
    pub fn line(&self) -> String {
        format!(
            "{}\t{}\t{}\n",
            self.dirty_bytes,
            self.errno.unwrap_or(0),
            self.name
        )
    }
}

/// Parse [`Unwritten::line`]s (the CLI's side).
pub fn parse_unwritten(text: &str) -> Vec<(u64, i32, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            let bytes = f.next()?.parse().ok()?;
            let errno = f.next()?.parse().ok()?;
            Some((bytes, errno, f.next()?.to_string()))
        })
        .collect()
}

impl CacheContext {
    /// Files with dirty data, or with a writeback error not yet reported.
    pub fn unwritten(&self) -> Vec<Unwritten> {
        let mut v: Vec<Unwritten> = self
            .all_caches()
            .iter()
            .filter(|c| c.tree.dirty_bytes() + c.tree.writeback_bytes() > 0)
            .map(|c| Unwritten {
                name: file_name(c),
                dirty_bytes: c.tree.dirty_bytes() + c.tree.writeback_bytes(),
                errno: c.peek_wb_error().or_else(|| {
                    let e = c.last_wb_error.load(std::sync::atomic::Ordering::Relaxed);
                    (e != 0).then_some(e as i32)
                }),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The last writeback, at exit (no request threads, no writeback threads left): every
    /// dirty range of every file is written, each on its own, then SOURCE's file is fsynced
    /// (a failed fsync makes its bytes dirty again, and they get one more try). Returns the
    /// files still dirty afterwards.
    pub fn final_writeback(&self) -> Vec<Arc<InodeCache>> {
        let mut left = Vec::new();
        for c in self.all_caches() {
            self.write_each_range(&c);
            c.apply_pending_mtime();
            if self.commit(&c, false, false, false).is_err() {
                // The fsync failed: what it covered is dirty again; write it once more.
                self.write_each_range(&c);
                let _ = self.commit(&c, false, false, false);
            }
            if c.tree.dirty_bytes() > 0 {
                // A file deleted while open (SIGTERM with the file still open): nobody can
                // reach its data again, so there is nothing to save.
                if matches!(c.file.stat(), Ok(st) if st.st_nlink == 0) {
                    tracing::info!(
                        "{}: deleted, {} unwritten bytes dropped",
                        file_name(&c),
                        c.tree.dirty_bytes()
                    );
                    continue;
                }
                left.push(c);
            }
        }
        left
    }

    /// Write back every DIRTY range of `c`, going on past ranges that fail (they stay dirty).
    fn write_each_range(&self, c: &InodeCache) {
        let mut from = 0u64;
        while let Some(run) = c
            .tree
            .find_contiguous(from, Bits::DIRTY, self.cfg.max_writeback)
        {
            let guard = RangeGuard::lock(&c.tree, run, Bits::WRITEBACK);
            let ranges = self.dirty_to_writeback(c, run);
            drop(guard);
            for &r in &ranges {
                // A failure is logged with the path, and the range is DIRTY again.
                let _ = self.write_range(c, r);
            }
            self.bump_progress();
            from = run.end();
        }
    }

    /// Everything at exit: the last writeback, then what is left saved under
    /// `recovery_dir` (see the module notes). The outcome goes to the log and to every
    /// listener ([`add_exit_listener`]); Err when any byte is not in SOURCE.
    pub fn finish(&self, recovery_dir: &Path, source: &Path) -> Result<(), String> {
        let left = self.final_writeback();
        let mut report = String::new();
        let result = if left.is_empty() {
            report.push_str("ok\n");
            Ok(())
        } else {
            let mut lost: Vec<Lost> = left.iter().map(|c| Lost::of(c)).collect();
            let total: u64 = lost.iter().map(|l| l.bytes()).sum();
            let saved = save_recovery(recovery_dir, source, &left, &mut lost);
            for l in &lost {
                let errno = l.errno.unwrap_or(0);
                let err = io::Error::from_raw_os_error(if errno == 0 { libc::EIO } else { errno });
                let whereto = match &saved {
                    Ok(dir) => format!("saved to {}", dir.join(&l.data_file).display()),
                    Err(e) => format!("NOT SAVED ({e})"),
                };
                tracing::error!(
                    "{}: {} bytes in {} ranges could not be written to SOURCE ({err}); {whereto}",
                    l.name,
                    l.bytes(),
                    l.ranges.len()
                );
                let _ = writeln!(
                    report,
                    "lost\t{}\t{errno}\t{}\t{whereto}",
                    l.bytes(),
                    l.name
                );
            }
            // The caller logs this one as the daemon's exit error.
            Err(format!(
                "{total} bytes of {} files could not be written to SOURCE{}",
                lost.len(),
                match &saved {
                    Ok(dir) => format!("; saved in {} (MANIFEST, restore.sh)", dir.display()),
                    Err(e) => format!("; they could not be saved either: {e}"),
                }
            ))
        };
        tell_listeners(&report);
        result
    }
}

/// One file's unwritten ranges, as saved.
struct Lost {
    name: String,
    raw_name: Vec<u8>,
    /// (offset, length), ascending.
    ranges: Vec<(u64, u64)>,
    errno: Option<i32>,
    data_file: String,
}

impl Lost {
    fn of(c: &InodeCache) -> Lost {
        let mut ranges = Vec::new();
        c.tree.for_each(ByteRange::ALL, |st| {
            if st.bits.contains(Bits::DIRTY) {
                ranges.push((st.range.start(), st.range.len()));
            }
        });
        let raw_name = c
            .file
            .name()
            .unwrap_or_else(|| format!(".extentfs-lost-inode-{}-{}", c.key.0, c.key.1).into());
        Lost {
            name: file_name(c),
            raw_name,
            ranges,
            errno: c.peek_wb_error().or_else(|| {
                let e = c.last_wb_error.load(std::sync::atomic::Ordering::Relaxed);
                (e != 0).then_some(e as i32)
            }),
            data_file: String::new(),
        }
    }

    fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }
}

/// `\\`, tab, newline, other control bytes and bytes that are not UTF-8 as `\xNN`: one
/// manifest field per path, whatever its bytes.
pub fn escape_path(name: &[u8]) -> String {
    let mut out = String::new();
    for chunk in name.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut b = [0u8; 4];
                    for byte in c.encode_utf8(&mut b).bytes() {
                        let _ = write!(out, "\\x{byte:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// A byte string as one single-quoted shell word.
fn shell_quote(b: &[u8]) -> Vec<u8> {
    let mut v = vec![b'\''];
    for &c in b {
        if c == b'\'' {
            v.extend_from_slice(b"'\\''");
        } else {
            v.push(c);
        }
    }
    v.push(b'\'');
    v
}

/// A new directory `recovery_dir/<UTC time>-<pid>` holding `N.data`, `MANIFEST` and
/// `restore.sh`, all fsynced. Fills in each `Lost::data_file`.
fn save_recovery(
    recovery_dir: &Path,
    source: &Path,
    caches: &[Arc<InodeCache>],
    lost: &mut [Lost],
) -> Result<PathBuf, String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(recovery_dir)
        .map_err(|e| format!("cannot create {}: {e}", recovery_dir.display()))?;
    if let (Ok(a), Ok(b)) = (std::fs::metadata(recovery_dir), std::fs::metadata(source)) {
        use std::os::unix::fs::MetadataExt;
        if a.dev() == b.dev() {
            tracing::warn!(
                "recovery_dir {} is on SOURCE's filesystem: it may be as full as SOURCE",
                recovery_dir.display()
            );
        }
    }
    let dir = recovery_dir.join(format!("{}-{}", utc_stamp(), std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut manifest = format!(
        "# extentfs recovery: data that could not be written to SOURCE\n\
         # source\t{}\n\
         # saved\t{}\tpid {}\n\
         # One line per byte range: the bytes at DATA_OFFSET..+LENGTH of DATA_FILE belong at\n\
         # FILE_OFFSET..+LENGTH of PATH (relative to SOURCE; \\\\ and \\xNN escapes).\n\
         # restore.sh [SOURCE] writes them back.\n\
         # data_file\tdata_offset\tfile_offset\tlength\tpath\n",
        escape_path(source.as_os_str().as_bytes()),
        utc_stamp(),
        std::process::id()
    );
    let mut script: Vec<u8> = b"#!/bin/sh\n# Writes the saved bytes back into SOURCE (default: the one they came from).\n\
        # Run it once SOURCE has room again; files are extended where needed, never truncated.\n\
        set -e\ncd \"$(dirname \"$0\")\"\nSRC=${1:-"
        .to_vec();
    script.extend_from_slice(&shell_quote(source.as_os_str().as_bytes()));
    script.extend_from_slice(b"}\n");
    let mut buf = vec![0u8; 1 << 20];
    for (i, (c, l)) in caches.iter().zip(lost.iter_mut()).enumerate() {
        l.data_file = format!("{}.data", i + 1);
        let path = dir.join(&l.data_file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut data_off = 0u64;
        for &(off, len) in &l.ranges {
            let _guard = RangeGuard::lock(&c.tree, ByteRange::at(off, len), Bits::NONE);
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                c.copy_out(off + done, &mut buf[..n]);
                f.write_all(&buf[..n])
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                done += n as u64;
            }
            let _ = writeln!(
                manifest,
                "{}\t{data_off}\t{off}\t{len}\t{}",
                l.data_file,
                escape_path(&l.raw_name)
            );
            script.extend_from_slice(
                format!(
                    "dd if={} bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc \
                     status=none skip={data_off} seek={off} count={len} of=\"$SRC\"/",
                    l.data_file
                )
                .as_bytes(),
            );
            script.extend_from_slice(&shell_quote(&l.raw_name));
            script.push(b'\n');
            data_off += len;
        }
        f.sync_all()
            .map_err(|e| format!("cannot fsync {}: {e}", path.display()))?;
    }
    let write_file = |name: &str, bytes: &[u8], mode: u32| -> Result<(), String> {
        let p = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)
            .map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    write_file("MANIFEST", manifest.as_bytes(), 0o600)?;
    write_file("restore.sh", &script, 0o700)?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot fsync {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `20261201T101112Z`.
fn utc_stamp() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let tm = crate::sys::time::gmtime(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Pipes of `extentfs umount` callers waiting for the daemon's outcome.
static LISTENERS: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Hand the outcome at exit to the caller `pid` through its descriptor `fd` (the write end
/// of a pipe it reads until EOF, which comes when this process exits).
pub fn add_exit_listener(pid: u32, fd: u32) -> io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))?;
    use std::os::unix::fs::FileTypeExt;
    if !f.metadata()?.file_type().is_fifo() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    LISTENERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(f);
    Ok(())
}

/// Write the outcome to every listener. Their pipes stay open until the process exits, so
/// their EOF says the daemon is gone.
fn tell_listeners(report: &str) {
    let g = LISTENERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for mut f in g.iter() {
        // Non-blocking: a caller that went away (or a full pipe) cannot hold up the exit.
        let _ = f.write_all(report.as_bytes());
    }
    // Kept (not closed) on purpose: see above.
    std::mem::forget(g);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_escaped_into_one_field() {
        assert_eq!(escape_path(b"dir/file.txt"), "dir/file.txt");
        assert_eq!(escape_path("é/ü".as_bytes()), "é/ü");
        assert_eq!(escape_path(b"a\tb\nc"), "a\\x09b\\x0ac");
        assert_eq!(escape_path(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape_path(b"bad\xff\xfe"), "bad\\xff\\xfe");
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote(b"a b"), b"'a b'");
        assert_eq!(shell_quote(b"it's"), b"'it'\\''s'");
    }

    #[test]
    fn unwritten_lines_round_trip() {
        let u = Unwritten {
            name: "d/f x".into(),
            dirty_bytes: 4096,
            errno: Some(libc::ENOSPC),
        };
        let v = parse_unwritten(&(u.line() + "garbage\n"));
        assert_eq!(v, vec![(4096, libc::ENOSPC, "d/f x".to_string())]);
    }

    #[test]
    fn stamp_shape() {
        let s = utc_stamp();
        assert_eq!(s.len(), 16, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[8] == b'T', "{s}");
    }
}
