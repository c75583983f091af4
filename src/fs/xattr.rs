//! Extended attributes: SOURCE's are passed through; `user.extentfs.*` are extentfs's own.
//!
//! - `user.extentfs.stats` / `user.extentfs.stats.json`: figures of the whole mount (on the
//!   mount root) or of one regular file, as `key=value` lines or one JSON object;
//! - `user.extentfs.extents`: a file's state tree, one `start end bits` line per range;
//! - `user.extentfs.pid` (mount root): the daemon's process id;
//! - `user.extentfs.unwritten` (mount root): files whose data is not all in SOURCE, one
//!   `BYTES<TAB>ERRNO<TAB>PATH` line each (see [`crate::cache::report::Unwritten`]);
//! - `user.extentfs.ctl`: write `sync` or `drop` (root or the mounting user only), or
//!   `report-exit FD`: at exit the daemon writes its outcome to the caller's descriptor FD
//!   (a pipe; `extentfs umount` waits on it).
//!
//! Our names are never listed, never stored in SOURCE, and cannot be set except `ctl`.

use super::{err, ExtentFs, R};
use crate::cache::inode_cache::InodeCache;
use crate::core::caller::{Caller, CAP_SYS_ADMIN};
use crate::core::inodes;
use crate::core::xattr::{ctime_stamp, AbsentXattrs};
use crate::source;
use crate::stats;
use fuser::{Errno, INodeNo, ReplyXattr, Request};
use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;

pub const NAMESPACE: &str = "user.extentfs.";
pub const STATS: &str = "user.extentfs.stats";
pub const STATS_JSON: &str = "user.extentfs.stats.json";
pub const EXTENTS: &str = "user.extentfs.extents";
pub const CTL: &str = "user.extentfs.ctl";
pub const PID: &str = "user.extentfs.pid";
pub const UNWRITTEN: &str = "user.extentfs.unwritten";

/// A figure in a stats rendering.
pub enum Figure {
    Int(u64),
    Real(f64),
    Text(String),
}

/// `key=value` lines.
pub fn render_text(figs: &[(String, Figure)]) -> String {
    let mut s = String::new();
    for (k, v) in figs {
        match v {
            Figure::Int(n) => writeln!(s, "{k}={n}"),
            Figure::Real(x) => writeln!(s, "{k}={x:.4}"),
            Figure::Text(t) => writeln!(s, "{k}={t}"),
        }
        .unwrap();
    }
    s
}

/// One flat JSON object.
pub fn render_json(figs: &[(String, Figure)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in figs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match v {
            Figure::Int(n) => write!(s, "\"{k}\":{n}"),
            Figure::Real(x) => write!(s, "\"{k}\":{x:.4}"),
            Figure::Text(t) => write!(
                s,
                "\"{k}\":\"{}\"",
                t.replace('\\', "\\\\").replace('"', "\\\"")
            ),
        }
        .unwrap();
    }
    s.push_str("}\n");
    s
}

pub fn reply_value(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if (size as usize) < v.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}

impl ExtentFs {
    pub(crate) fn mount_figures(&self) -> Vec<(String, Figure)> {
        use Figure::*;
        let ctx = &self.ctx;
        let pool = &ctx.pool;
        let page = crate::pool::PAGE_SIZE as u64;
        let caches = ctx.all_caches();
        let (mut entries, mut extents, mut meta, mut wb) = (0u64, 0u64, 0u64, 0u64);
        for c in &caches {
            entries += c.tree.entries() as u64;
            extents += c.map.entries() as u64;
            meta += c.metadata_bytes() as u64;
            wb += c.tree.writeback_bytes();
        }
        let mut f: Vec<(String, Figure)> = vec![
            (
                "pool_capacity_bytes".into(),
                Int(pool.capacity_pages() as u64 * page),
            ),
            (
                "pool_used_bytes".into(),
                Int(pool.used_pages() as u64 * page),
            ),
            (
                "pool_free_bytes".into(),
                Int(pool.free_pages() as u64 * page),
            ),
            ("dirty_bytes".into(), Int(ctx.dirty_bytes())),
            ("writeback_bytes".into(), Int(wb)),
            ("pool_resident_bytes".into(), Int(pool.resident_bytes())),
            ("pool_released_bytes".into(), Int(pool.released_bytes())),
            (
                "source_reserved_bytes".into(),
                Int(crate::cache::space::reserved_total()),
            ),
            ("pool_backing".into(), Text(pool.backing().as_str().into())),
            ("huge_page_bytes".into(), Int(pool.huge_bytes())),
        ];
        let snap = ctx.stats.snapshot();
        let get = |k: &str| snap.iter().find(|(n, _)| *n == k).map(|x| x.1).unwrap_or(0);
        for (k, v) in &snap {
            let key = match *k {
                "writeback_bytes" => "writeback_bytes_total",
                other => other,
            };
            f.push((key.to_string(), Int(*v)));
        }
        let rb = get("read_bytes");
        f.push((
            "read_hit_ratio".into(),
            Real(if rb == 0 {
                0.0
            } else {
                get("read_hit_bytes") as f64 / rb as f64
            }),
        ));
        let ops = get("writeback_ops");
        f.push((
            "writeback_mean_bytes".into(),
            Int(get("writeback_bytes").checked_div(ops).unwrap_or(0)),
        ));
        f.push(("state_tree_entries".into(), Int(entries)));
        f.push(("extent_map_extents".into(), Int(extents)));
        f.push(("metadata_bytes".into(), Int(meta)));
        f.push((
            "pool_metadata_bytes".into(),
            Int(pool.metadata_bytes() as u64),
        ));
        f.push(("cached_inodes".into(), Int(caches.len() as u64)));
        f.push(("known_inodes".into(), Int(self.inodes.len() as u64)));
        let (reqs, errs) = ctx.ops.totals();
        f.push(("fuse_requests".into(), Int(reqs)));
        f.push(("fuse_errors".into(), Int(errs)));
        for (name, r, e) in ctx.ops.snapshot() {
            f.push((format!("fuse_{name}_requests"), Int(r)));
            f.push((format!("fuse_{name}_errors"), Int(e)));
        }
        f.push(("uptime_seconds".into(), Real(ctx.uptime().as_secs_f64())));
        f
    }

    pub(crate) fn file_figures(&self, c: &InodeCache) -> Vec<(String, Figure)> {
        use Figure::*;
        let hit = c.hit_bytes.load(Ordering::Relaxed);
        let miss = c.miss_bytes.load(Ordering::Relaxed);
        let err = c.last_wb_error.load(Ordering::Relaxed);
        vec![
            ("size".into(), Int(c.size())),
            ("cached_bytes".into(), Int(c.map.mapped_bytes())),
            ("uptodate_bytes".into(), Int(c.tree.uptodate_bytes())),
            ("dirty_bytes".into(), Int(c.tree.dirty_bytes())),
            ("writeback_bytes".into(), Int(c.tree.writeback_bytes())),
            ("state_tree_entries".into(), Int(c.tree.entries() as u64)),
            ("extent_map_extents".into(), Int(c.map.entries() as u64)),
            ("metadata_bytes".into(), Int(c.metadata_bytes() as u64)),
            ("read_hit_bytes".into(), Int(hit)),
            ("read_miss_bytes".into(), Int(miss)),
            ("validator".into(), Text(c.file.validator().to_string())),
            (
                "last_writeback_error".into(),
                Text(if err == 0 {
                    "none".into()
                } else {
                    std::io::Error::from_raw_os_error(err as i32).to_string()
                }),
            ),
        ]
    }

    fn extents_dump(c: &InodeCache) -> String {
        let mut s = String::new();
        for st in c.tree.states() {
            writeln!(s, "{} {} {}", st.start, st.end, st.bits).unwrap();
        }
        s
    }

    /// The value of `name`; with `size == 0` only its length matters (the caller replies with
    /// the size).
    pub(crate) fn do_getxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
    ) -> R<Vec<u8>> {
        let inode = self.inode(ino)?;
        let n = name.as_bytes();
        if n.starts_with(NAMESPACE.as_bytes()) {
            let is_root = inode.id == inodes::ROOT_ID;
            let cache = if inode.is_file() {
                Some(self.cache_of(&inode)?)
            } else {
                None
            };
            let figs = |json: bool| -> R<Vec<u8>> {
                let f = match (&cache, is_root) {
                    (_, true) => self.mount_figures(),
                    (Some(c), _) => self.file_figures(c),
                    _ => return Err(Errno::NO_XATTR),
                };
                Ok(if json {
                    render_json(&f)
                } else {
                    render_text(&f)
                }
                .into_bytes())
            };
            return match n {
                x if x == STATS.as_bytes() => figs(false),
                x if x == STATS_JSON.as_bytes() => figs(true),
                x if x == PID.as_bytes() && is_root => {
                    Ok(format!("{}\n", std::process::id()).into_bytes())
                }
                x if x == UNWRITTEN.as_bytes() && is_root => Ok(self
                    .ctx
                    .unwritten()
                    .iter()
                    .map(|u| u.line())
                    .collect::<String>()
                    .into_bytes()),
                x if x == EXTENTS.as_bytes() => match &cache {
                    Some(c) => Ok(Self::extents_dump(c).into_bytes()),
                    None => Err(Errno::NO_XATTR),
                },
                _ => Err(Errno::NO_XATTR),
            };
        }
        if n.starts_with(TRUSTED) && !may_see_trusted(req) {
            // The kernel refuses this before asking us (xattr_permission); kept here so the
            // daemon's privilege is never lent to a caller should that change.
            return Err(Errno::NO_XATTR);
        }
        let remembered = AbsentXattrs::index(n);
        if let Some(bit) = remembered {
            if inode.xattr_absent.is_absent(bit) {
                stats::add(&self.ctx.stats.xattr_absent_remembered, 1);
                return Err(Errno::NO_XATTR);
            }
        }
        let seen = inode.xattr_absent.seen();
        let cname = CString::new(n).map_err(|_| Errno::EINVAL)?;
        // Ask SOURCE with the caller's size, so a value that changes in between yields
        // ERANGE (as on a local filesystem) rather than a failed second read.
        let mut buf = vec![0u8; size as usize];
        match source::getxattr(inode.fd()?.as_fd(), &cname, &mut buf) {
            Ok(got) if size == 0 => Ok(vec![0u8; got]),
            Ok(got) => {
                buf.truncate(got);
                Ok(buf)
            }
            Err(e) => {
                if let (Some(bit), Some(libc::ENODATA)) = (remembered, e.raw_os_error()) {
                    inode.xattr_absent.record_absent(bit, seen);
                }
                Err(err(e))
            }
        }
    }

    pub(crate) fn do_setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> R<()> {
        let inode = self.inode(ino)?;
        let n = name.as_bytes();
        if n.starts_with(NAMESPACE.as_bytes()) {
            if n != CTL.as_bytes() {
                return Err(Errno::EPERM);
            }
            if req.uid() != 0 && req.uid() != self.cfg.owner_uid {
                return Err(Errno::EPERM);
            }
            let cmd = std::str::from_utf8(value)
                .map_err(|_| Errno::EINVAL)?
                .trim_end_matches(['\n', '\0']);
            if let Some(fd) = cmd.strip_prefix("report-exit ") {
                if inode.id != inodes::ROOT_ID {
                    return Err(Errno::EINVAL);
                }
                let fd = fd.trim().parse::<u32>().map_err(|_| Errno::EINVAL)?;
                return crate::cache::report::add_exit_listener(req.pid(), fd).map_err(err);
            }
            let caches = if inode.id == inodes::ROOT_ID {
                self.ctx.all_caches()
            } else if inode.is_file() {
                vec![self.cache_of(&inode)?]
            } else {
                return Err(Errno::EINVAL);
            };
            return match cmd {
                "sync" => {
                    // Every file, also past one that fails; the first error is the answer.
                    // Durable with one syncfs per SOURCE filesystem, not an fsync per file.
                    self.ctx.sync_files(&caches).map_err(err)
                }
                "drop" if inode.is_file() => {
                    // One file: drop its clean data and take SOURCE's size and attributes
                    // (as a change made there would).
                    for c in &caches {
                        let st = c.file.stat().map_err(err)?;
                        self.ctx.adopt_source_change(c, &st, false).map_err(err)?;
                    }
                    self.tell_kernel_changed(
                        ino,
                        self.cfg.cache == crate::options::CacheMode::Kernel,
                    );
                    Ok(())
                }
                "drop" => {
                    for c in &caches {
                        self.ctx.drop_clean(c);
                    }
                    // What is free now need not stay resident.
                    let given = self.ctx.pool.release_free();
                    tracing::debug!("ctl drop: {given} bytes of the pool given back");
                    Ok(())
                }
                _ => Err(Errno::EINVAL),
            };
        }
        self.check_writable()?;
        let cname = CString::new(n).map_err(|_| Errno::EINVAL)?;
        let fd = inode.fd()?;
        let cache = inode.cache.get();
        // Held to the end: the ACL case below may chmod too.
        let _own = cache.map(|c| c.file.own_change());
        let r = source::setxattr(fd.as_fd(), &cname, value, flags);
        self.xattrs_changed(&inode, fd.as_fd());
        r.map_err(err)?;
        if n == b"system.posix_acl_access" {
            // SOURCE applied the ACL as the daemon, which may keep S_ISGID; the kernel would
            // drop it for a caller outside the file's group without CAP_FSETID (fuser cannot
            // receive the kernel's FUSE_SETXATTR_ACL_KILL_SGID, so we decide it here).
            let st = source::fstat(fd.as_fd()).map_err(err)?;
            if st.st_mode & libc::S_ISGID != 0
                && !Caller::of(&super::ctx_of(req)).in_group_or_capable(st.st_gid)
            {
                source::chmod(fd.as_fd(), st.st_mode & 0o7777 & !libc::S_ISGID).map_err(err)?;
            }
        }
        Ok(())
    }

    pub(crate) fn do_listxattr(&self, req: &Request, ino: INodeNo) -> R<Vec<u8>> {
        let inode = self.inode(ino)?;
        // Read the whole list (our names must be filtered out before sizing the reply).
        let fd = inode.fd()?;
        let mut buf = vec![0u8; 4096];
        let got = loop {
            match source::listxattr(fd.as_fd(), &mut buf) {
                Ok(n) => break n,
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < (1 << 20) => {
                    let want = source::listxattr(fd.as_fd(), &mut []).map_err(err)?;
                    buf.resize(want.max(buf.len() * 2), 0);
                }
                Err(e) => return Err(err(e)),
            }
        };
        buf.truncate(got);
        // Hide our namespace, should SOURCE ever carry such names, and trusted names from a
        // caller without CAP_SYS_ADMIN (the daemon reads them with its own privilege; a
        // local filesystem lists them only to such callers). The caller's capabilities are
        // read only when there is a trusted name to hide.
        let has_trusted = buf.split(|&b| b == 0).any(|name| name.starts_with(TRUSTED));
        Ok(visible_names(&buf, has_trusted && may_see_trusted(req)))
    }

    pub(crate) fn do_removexattr(&self, ino: INodeNo, name: &OsStr) -> R<()> {
        let inode = self.inode(ino)?;
        let n = name.as_bytes();
        if n.starts_with(NAMESPACE.as_bytes()) {
            return Err(Errno::EPERM);
        }
        self.check_writable()?;
        let cname = CString::new(n).map_err(|_| Errno::EINVAL)?;
        let fd = inode.fd()?;
        let own = inode.cache.get().map(|c| c.file.own_change());
        let r = source::removexattr(fd.as_fd(), &cname);
        drop(own);
        self.xattrs_changed(&inode, fd.as_fd());
        r.map_err(err)
    }

    /// After a setxattr or removexattr through the mount (even a failed one: it may have
    /// raced with a change): what was remembered absent is no longer known to be, and a
    /// getxattr that asked SOURCE before the change must not record its answer as current,
    /// so the new ctime is taken now.
    fn xattrs_changed(&self, inode: &inodes::Inode, fd: std::os::fd::BorrowedFd<'_>) {
        if let Ok(st) = source::fstat(fd) {
            inode
                .xattr_absent
                .note_ctime(ctime_stamp(st.st_ctime, st.st_ctime_nsec));
        }
        inode.xattr_absent.forget();
    }
}

/// Whether the caller may see `trusted.*` names: it holds CAP_SYS_ADMIN in its effective set
/// (what a local filesystem asks of listxattr and getxattr).
fn may_see_trusted(req: &Request) -> bool {
    Caller::of(&super::ctx_of(req)).has_cap(CAP_SYS_ADMIN)
}

const TRUSTED: &[u8] = b"trusted.";

/// Keep the names of a listxattr result (NUL-terminated names) that the caller may see: never
/// ours, and `trusted.*` only when `trusted` says so.
fn visible_names(list: &[u8], trusted: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        if name.starts_with(NAMESPACE.as_bytes()) || (!trusted && name.starts_with(TRUSTED)) {
            continue;
        }
        out.extend_from_slice(name);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_names_filtered() {
        let list = b"user.a\0trusted.hidden\0user.extentfs.stats\0security.selinux\0";
        assert_eq!(
            visible_names(list, true),
            b"user.a\0trusted.hidden\0security.selinux\0"
        );
        assert_eq!(visible_names(list, false), b"user.a\0security.selinux\0");
        assert_eq!(visible_names(b"", false), b"");
    }

    #[test]
    fn renderings() {
        let f = vec![
            ("a".to_string(), Figure::Int(1)),
            ("b".to_string(), Figure::Real(0.5)),
            ("c".to_string(), Figure::Text("x\"y".into())),
        ];
        assert_eq!(render_text(&f), "a=1\nb=0.5000\nc=x\"y\n");
        assert_eq!(render_json(&f), "{\"a\":1,\"b\":0.5000,\"c\":\"x\\\"y\"}\n");
    }
}
