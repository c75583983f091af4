//! Attributes: what a node looks like (SOURCE's stat merged with the cache's view of size,
//! blocks and mtime), getattr, setattr (ownership, mode, truncate through the cache, times),
//! statfs and access.
//!
//! Invariants: a cached file's size is the cache's (its dirty data may extend SOURCE's), its
//! mtime the one its writes will stamp, its ctime never before that mtime; every stat taken
//! here updates the ctime the inode's remembered xattr absences are tied to.

use super::{errno, Core, Ctx, Result};
use crate::cache::inode_cache::InodeCache;
use crate::core::inodes::Inode;
use crate::core::xattr::ctime_stamp;
use crate::options::Coherence;
use crate::source;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A node's attributes, as the kernel is told them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// File type (S_IFMT) and permission bits (07777).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl Attr {
    /// The S_IFMT bits.
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// The permission bits, set-ID and sticky included.
    pub fn perm(&self) -> u16 {
        (self.mode & 0o7777) as u16
    }
}

/// A time a setattr sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(SystemTime),
}

/// What a setattr changes (`None`: left alone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<SystemTime>,
}

impl SetAttr {
    /// Nothing to change (what the kernel sends for `file_remove_privs` it left to us).
    pub fn is_empty(&self) -> bool {
        *self == SetAttr::default()
    }

    fn changes_something(&self) -> bool {
        self.mode.is_some()
            || self.uid.is_some()
            || self.gid.is_some()
            || self.size.is_some()
            || self.atime.is_some()
            || self.mtime.is_some()
    }
}

pub(crate) fn systime(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs((-sec) as u64) + Duration::from_nanos(nsec as u64)
    }
}

/// A setattr time as `utimensat` takes it (UTIME_OMIT, UTIME_NOW, or the time).
pub(crate) fn timespec_of(t: Option<TimeSet>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeSet::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeSet::At(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = -(d.subsec_nanos() as i64);
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                }
            }
        },
    }
}

/// UTIME_NOW as the current wall-clock time.
fn resolve_now(t: libc::timespec) -> libc::timespec {
    if t.tv_nsec != libc::UTIME_NOW {
        return t;
    }
    source::now_coarse()
}

impl Core {
    /// The attributes of an inode, with the cache's view of size and mtime when it has one.
    pub(crate) fn attr_of(&self, inode: &Inode, st: &libc::stat) -> Attr {
        let mut size = st.st_size as u64;
        let mut blocks = st.st_blocks as u64;
        let mut mtime = systime(st.st_mtime, st.st_mtime_nsec);
        let mut ctime = systime(st.st_ctime, st.st_ctime_nsec);
        inode
            .xattr_absent
            .note_ctime(ctime_stamp(st.st_ctime, st.st_ctime_nsec));
        if inode.is_file() {
            if let Some(c) = inode
                .cache
                .get()
                .cloned()
                .or_else(|| self.ctx.get(inode.key))
            {
                size = c.size();
                let dirty = c.dirty_bytes();
                if dirty > 0 {
                    blocks = blocks.max(size.div_ceil(512).min(blocks + dirty.div_ceil(512)));
                }
                if let Some(t) = c.mtime_override() {
                    mtime = systime(t.tv_sec, t.tv_nsec);
                    if mtime > ctime {
                        ctime = mtime;
                    }
                }
            }
        }
        Attr {
            ino: inode.id,
            size,
            blocks,
            atime: systime(st.st_atime, st.st_atime_nsec),
            mtime,
            ctime,
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: 4096,
        }
    }

    pub(crate) fn stat_attr(&self, inode: &Inode) -> Result<Attr> {
        self.stat_attr_via(inode, inode.fd()?.as_fd())
    }

    /// As `stat_attr`, through the inode's descriptor that the caller already holds.
    fn stat_attr_via(&self, inode: &Inode, fd: BorrowedFd<'_>) -> Result<Attr> {
        let st = source::fstat(fd)?;
        Ok(self.attr_of(inode, &st))
    }

    /// GETATTR: a cached file is revalidated against SOURCE (close-to-open; the kernel asks
    /// again only once `attr_timeout` passed) with the same one fstat.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let inode = self.inode(ino)?;
        match inode.cache.get() {
            Some(c) if self.coherent() => {
                let (st, _) = self.revalidate(ino, c, true)?;
                Ok(self.attr_of(&inode, &st))
            }
            _ => self.stat_attr(&inode),
        }
    }

    /// SETATTR by the caller `ctx`.
    pub fn setattr(&self, ctx: &Ctx, ino: u64, set: &SetAttr) -> Result<Attr> {
        let inode = self.inode(ino)?;
        if set.is_empty() && inode.is_file() {
            // The kernel's file_remove_privs() before a buffered write (cache=kernel): its
            // FUSE setattr drops only set-user-ID and group-executable set-group-ID itself
            // and sends what is left, nothing, when its rule (setattr_should_drop_suidgid)
            // wanted more: set-group-ID of a file whose group the writer is not in. Decide it
            // here by the writer's groups.
            let c = self.cache_of(&inode)?;
            self.kill_setid_for(ctx, ino, &c)?;
        }
        self.do_setattr(&inode, set)
    }

    fn do_setattr(&self, inode: &Inode, set: &SetAttr) -> Result<Attr> {
        if set.changes_something() {
            self.check_writable()?;
        }
        // Taken once for the whole request (each take locks the PathFd).
        let fd = inode.fd()?;
        // Every change below is extentfs's own, not one to revalidate against.
        let cache: Option<std::sync::Arc<InodeCache>> = if set.size.is_some() {
            Some(self.cache_of(inode)?)
        } else {
            inode.cache.get().cloned()
        };
        if let (Some(c), Some(_)) = (&cache, set.size) {
            // Immutable and append-only files are never truncated (a truncate by path has
            // no open that would have learnt the flags).
            self.refuse_if_restricted(inode, c, true)?;
        }
        let _own = cache.as_ref().map(|c| c.file.own_change());
        if set.uid.is_some() || set.gid.is_some() {
            source::chown(
                fd.as_fd(),
                set.uid.unwrap_or(u32::MAX),
                set.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(m) = set.mode {
            if inode.is_symlink() {
                return Err(errno(libc::EOPNOTSUPP));
            }
            source::chmod(fd.as_fd(), m & 0o7777)?;
            if let Some(c) = inode.cache.get() {
                c.note_mode(m);
            }
        }
        if let Some(s) = set.size {
            let c = self.cache_of(inode)?;
            self.ctx.truncate(&c, s)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = [timespec_of(set.atime), timespec_of(set.mtime)];
            if let (Some(c), Some(_)) = (inode.cache.get(), set.mtime) {
                if c.mtime_override().is_some() {
                    // Writes not yet in SOURCE would otherwise stamp their own time later:
                    // the explicit mtime is what writeback stamps now.
                    c.set_pending_mtime(Some(resolve_now(times[1])));
                }
            }
            source::utimens(fd.as_fd(), &times, inode.is_symlink())?;
        }
        self.stat_attr_via(inode, fd.as_fd())
    }

    /// STATFS: SOURCE's figures (fstatvfs works on `O_PATH` descriptors: no need to open a
    /// device for real).
    pub fn statfs(&self, ino: u64) -> Result<libc::statvfs> {
        let inode = self.inode(ino)?;
        Ok(source::statvfs(inode.fd()?.as_fd())?)
    }

    /// ACCESS: permission checks are the kernel's (default_permissions is always on); the
    /// node must still be known.
    pub fn access(&self, ino: u64) -> Result<()> {
        self.inode(ino).map(drop)
    }

    /// Whether a file held open is due to revalidate on read: at most once per
    /// `attr_timeout` (every read with `coherence=strict`).
    #[inline]
    pub(crate) fn read_revalidate(&self, ino: u64, c: &InodeCache) -> Result<()> {
        let due = match self.cfg.coherence {
            Coherence::None => false,
            Coherence::Strict => true,
            Coherence::Cto => self
                .ctx
                .revalidation_due(c, self.cfg.ttl.as_millis() as u64),
        };
        if due {
            self.revalidate(ino, c, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_both_ways_around_the_epoch() {
        let t = timespec_of(Some(TimeSet::At(UNIX_EPOCH + Duration::new(5, 7))));
        assert_eq!((t.tv_sec, t.tv_nsec), (5, 7));
        let t = timespec_of(Some(TimeSet::At(
            UNIX_EPOCH - Duration::new(1, 250_000_000),
        )));
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        assert_eq!(
            systime(-2, 750_000_000),
            UNIX_EPOCH - Duration::new(1, 250_000_000)
        );
        assert_eq!(timespec_of(None).tv_nsec, libc::UTIME_OMIT);
        assert_eq!(timespec_of(Some(TimeSet::Now)).tv_nsec, libc::UTIME_NOW);
        assert_ne!(
            resolve_now(timespec_of(Some(TimeSet::Now))).tv_nsec,
            libc::UTIME_NOW
        );
        assert!(SetAttr::default().is_empty());
        assert!(!SetAttr {
            ctime: Some(UNIX_EPOCH),
            ..Default::default()
        }
        .is_empty());
    }
}
