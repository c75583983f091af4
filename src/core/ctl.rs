//! extentfs's own extended attributes, `user.extentfs.*`: figures and commands, answered by
//! the core and never stored in SOURCE.
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
//! Invariant: no name here is listed or can be removed; only `ctl` can be set.

use super::inodes::{Inode, ROOT_ID};
use super::{errno, Core, Ctx, Result};
use crate::cache::inode_cache::InodeCache;
use std::fmt::Write as _;
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

impl Core {
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
                Int(ctx.space.reserved_total()),
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
        // Inclusive ends, as documented for `extentfs extents` (and parsed by its `--map`).
        for st in c.tree.states() {
            writeln!(s, "{} {} {}", st.range.start(), st.last(), st.bits).unwrap();
        }
        s
    }

    /// GETXATTR of one of our names `n` on `inode`.
    pub(crate) fn ctl_getxattr(&self, inode: &Inode, n: &[u8]) -> Result<Vec<u8>> {
        let is_root = inode.id == ROOT_ID;
        let cache = if inode.is_file() {
            Some(self.cache_of(inode)?)
        } else {
            None
        };
        let figs = |json: bool| -> Result<Vec<u8>> {
            let f = match (&cache, is_root) {
                (_, true) => self.mount_figures(),
                (Some(c), _) => self.file_figures(c),
                _ => return Err(errno(libc::ENODATA)),
            };
            Ok(if json {
                render_json(&f)
            } else {
                render_text(&f)
            }
            .into_bytes())
        };
        match n {
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
                None => Err(errno(libc::ENODATA)),
            },
            _ => Err(errno(libc::ENODATA)),
        }
    }

    /// SETXATTR of one of our names `n` on `inode` by the caller: only `ctl`, by root or the
    /// mounting user.
    pub(crate) fn ctl_setxattr(
        &self,
        ctx: &Ctx,
        inode: &Inode,
        n: &[u8],
        value: &[u8],
    ) -> Result<()> {
        if n != CTL.as_bytes() {
            return Err(errno(libc::EPERM));
        }
        if ctx.uid != 0 && ctx.uid != self.cfg.owner_uid {
            return Err(errno(libc::EPERM));
        }
        let cmd = std::str::from_utf8(value)
            .map_err(|_| errno(libc::EINVAL))?
            .trim_end_matches(['\n', '\0']);
        if let Some(fd) = cmd.strip_prefix("report-exit ") {
            if inode.id != ROOT_ID {
                return Err(errno(libc::EINVAL));
            }
            let fd = fd.trim().parse::<u32>().map_err(|_| errno(libc::EINVAL))?;
            return Ok(crate::cache::report::add_exit_listener(ctx.pid, fd)?);
        }
        let caches = if inode.id == ROOT_ID {
            self.ctx.all_caches()
        } else if inode.is_file() {
            vec![self.cache_of(inode)?]
        } else {
            return Err(errno(libc::EINVAL));
        };
        match cmd {
            "sync" => {
                // Every file, also past one that fails; the first error is the answer.
                // Durable with one syncfs per SOURCE filesystem, not an fsync per file.
                Ok(self.ctx.sync_files(&caches)?)
            }
            "drop" if inode.is_file() => {
                // One file: drop its clean data and take SOURCE's size and attributes
                // (as a change made there would).
                for c in &caches {
                    let st = c.file.stat()?;
                    self.ctx.adopt_source_change(c, &st, false)?;
                }
                self.tell_kernel_changed(
                    inode.id,
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
            _ => Err(errno(libc::EINVAL)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
