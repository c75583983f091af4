//! Extended attributes: SOURCE's are passed through (getxattr, setxattr, listxattr,
//! removexattr) with the POSIX policy a local filesystem applies (`trusted.*` only for
//! CAP_SYS_ADMIN, set-group-ID dropped by an access ACL set by a caller outside the group);
//! `user.extentfs.*` are extentfs's own ([`super::ctl`]) and never reach SOURCE.
//!
//! Invariants: a name is answered "absent" without asking SOURCE only while SOURCE's ctime of
//! the inode is the one the absence was seen under; any xattr or ACL change moves ctime, and
//! every change made through the mount forgets what was remembered. Our names are never
//! listed, never stored in SOURCE, and cannot be set except `ctl`.

use super::caller::{Caller, CAP_SYS_ADMIN};
use super::ctl::NAMESPACE;
use super::inodes::Inode;
use super::{errno, Core, Ctx, Result};
use crate::source;
use crate::stats;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Names asked of nearly every inode without anyone setting them: `ls -l` asks each entry
/// for its SELinux label and access ACL (and directories for their default ACL), the kernel
/// asks for file capabilities before writes. With FUSE the kernel keeps none of these answers
/// for long (it forgets cached ACLs whenever an entry is looked up again or listed by
/// READDIRPLUS, and caches no other xattr), so each walk asks again.
const REMEMBERED: [&[u8]; 4] = [
    b"security.capability",
    b"security.selinux",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
];

/// "No such attribute" for the [`REMEMBERED`] names of one inode, answered without asking
/// SOURCE again while SOURCE's ctime of the inode is the one the absence was seen under (any
/// xattr or ACL change moves ctime; every stat the daemon makes of the inode, at lookup,
/// getattr, readdirplus, after setattr, updates the ctime it knows). Lock-free: two atomics.
#[derive(Debug, Default)]
pub struct AbsentXattrs {
    /// The inode's ctime as last seen, as a [`ctime_stamp`].
    ctime: AtomicU64,
    /// `stamp << 4 | bits`: the names (bit i = `REMEMBERED[i]`) seen absent under `stamp`.
    absent: AtomicU64,
}

/// A ctime in ns, in 60 bits (two ctimes 2^60 ns, 36 years, apart compare equal).
pub fn ctime_stamp(sec: i64, nsec: i64) -> u64 {
    (sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(nsec as u64)
        & ((1 << 60) - 1)
}

impl AbsentXattrs {
    /// Which remembered name `name` is, if any.
    pub fn index(name: &[u8]) -> Option<u32> {
        REMEMBERED.iter().position(|n| *n == name).map(|i| i as u32)
    }

    /// A stat of the inode showed this ctime.
    pub fn note_ctime(&self, stamp: u64) {
        self.ctime.store(stamp, Ordering::Release);
    }

    /// The ctime known now; take it before asking SOURCE and pass it to `record_absent`.
    pub fn seen(&self) -> u64 {
        self.ctime.load(Ordering::Acquire)
    }

    pub fn is_absent(&self, bit: u32) -> bool {
        let v = self.absent.load(Ordering::Acquire);
        v >> 4 == self.seen() && v & (1 << bit) != 0
    }

    /// SOURCE said name `bit` is absent, asked when the known ctime was `seen_before`.
    pub fn record_absent(&self, bit: u32, seen_before: u64) {
        let _ = self
            .absent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(if v >> 4 == seen_before {
                    v | 1 << bit
                } else {
                    seen_before << 4 | 1 << bit
                })
            });
    }

    /// An xattr of the inode was set or removed through the mount.
    pub fn forget(&self) {
        self.absent.store(0, Ordering::Release);
    }
}

impl Core {
    /// GETXATTR by the caller: the value of `name`; with `size == 0` only its length matters
    /// (the caller replies with the size). An absent attribute (ENODATA) is counted as such.
    pub fn getxattr(&self, ctx: &Ctx, ino: u64, name: &OsStr, size: u32) -> Result<Vec<u8>> {
        let r = self.do_getxattr(ctx, ino, name, size);
        if matches!(&r, Err(e) if e.is(libc::ENODATA)) {
            stats::add(&self.ctx.stats.xattr_absent, 1);
        }
        r
    }

    fn do_getxattr(&self, ctx: &Ctx, ino: u64, name: &OsStr, size: u32) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        let n = name.as_bytes();
        if n.starts_with(NAMESPACE.as_bytes()) {
            return self.ctl_getxattr(&inode, n);
        }
        if n.starts_with(TRUSTED) && !may_see_trusted(ctx) {
            // The kernel refuses this before asking us (xattr_permission); kept here so the
            // daemon's privilege is never lent to a caller should that change.
            return Err(errno(libc::ENODATA));
        }
        let remembered = AbsentXattrs::index(n);
        if let Some(bit) = remembered {
            if inode.xattr_absent.is_absent(bit) {
                stats::add(&self.ctx.stats.xattr_absent_remembered, 1);
                return Err(errno(libc::ENODATA));
            }
        }
        let seen = inode.xattr_absent.seen();
        let cname = CString::new(n).map_err(|_| errno(libc::EINVAL))?;
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
                Err(e.into())
            }
        }
    }

    /// SETXATTR by the caller (`user.extentfs.ctl`: a command, see [`super::ctl`]).
    pub fn setxattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        let inode = self.inode(ino)?;
        let n = name.as_bytes();
        if n.starts_with(NAMESPACE.as_bytes()) {
            return self.ctl_setxattr(ctx, &inode, n, value);
        }
        self.check_writable()?;
        let cname = CString::new(n).map_err(|_| errno(libc::EINVAL))?;
        let fd = inode.fd()?;
        let cache = inode.cache.get();
        // Held to the end: the ACL case below may chmod too.
        let _own = cache.map(|c| c.file.own_change());
        let r = source::setxattr(fd.as_fd(), &cname, value, flags);
        self.xattrs_changed(&inode, fd.as_fd());
        r?;
        if n == b"system.posix_acl_access" {
            // SOURCE applied the ACL as the daemon, which may keep S_ISGID; the kernel would
            // drop it for a caller outside the file's group without CAP_FSETID (fuser cannot
            // receive the kernel's FUSE_SETXATTR_ACL_KILL_SGID, so we decide it here).
            let st = source::fstat(fd.as_fd())?;
            if st.st_mode & libc::S_ISGID != 0 && !Caller::of(ctx).in_group_or_capable(st.st_gid) {
                source::chmod(fd.as_fd(), st.st_mode & 0o7777 & !libc::S_ISGID)?;
            }
        }
        Ok(())
    }

    /// LISTXATTR by the caller: SOURCE's names the caller may see.
    pub fn listxattr(&self, ctx: &Ctx, ino: u64) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        // Read the whole list (our names must be filtered out before sizing the reply).
        let fd = inode.fd()?;
        let mut buf = vec![0u8; 4096];
        let got = loop {
            match source::listxattr(fd.as_fd(), &mut buf) {
                Ok(n) => break n,
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < (1 << 20) => {
                    let want = source::listxattr(fd.as_fd(), &mut [])?;
                    buf.resize(want.max(buf.len() * 2), 0);
                }
                Err(e) => return Err(e.into()),
            }
        };
        buf.truncate(got);
        // Hide our namespace, should SOURCE ever carry such names, and trusted names from a
        // caller without CAP_SYS_ADMIN (the daemon reads them with its own privilege; a
        // local filesystem lists them only to such callers). The caller's capabilities are
        // read only when there is a trusted name to hide.
        let has_trusted = buf.split(|&b| b == 0).any(|name| name.starts_with(TRUSTED));
        Ok(visible_names(&buf, has_trusted && may_see_trusted(ctx)))
    }

    /// REMOVEXATTR.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let inode = self.inode(ino)?;
        let n = name.as_bytes();
        if n.starts_with(NAMESPACE.as_bytes()) {
            return Err(errno(libc::EPERM));
        }
        self.check_writable()?;
        let cname = CString::new(n).map_err(|_| errno(libc::EINVAL))?;
        let fd = inode.fd()?;
        let own = inode.cache.get().map(|c| c.file.own_change());
        let r = source::removexattr(fd.as_fd(), &cname);
        drop(own);
        self.xattrs_changed(&inode, fd.as_fd());
        Ok(r?)
    }

    /// After a setxattr or removexattr through the mount (even a failed one: it may have
    /// raced with a change): what was remembered absent is no longer known to be, and a
    /// getxattr that asked SOURCE before the change must not record its answer as current,
    /// so the new ctime is taken now.
    fn xattrs_changed(&self, inode: &Inode, fd: BorrowedFd<'_>) {
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
fn may_see_trusted(ctx: &Ctx) -> bool {
    Caller::of(ctx).has_cap(CAP_SYS_ADMIN)
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
    fn absence_is_remembered_while_ctime_holds() {
        let a = AbsentXattrs::default();
        let acl = AbsentXattrs::index(b"system.posix_acl_access").unwrap();
        let cap = AbsentXattrs::index(b"security.capability").unwrap();
        assert_eq!(AbsentXattrs::index(b"user.x"), None);
        let t1 = ctime_stamp(100, 5);
        a.note_ctime(t1);
        assert!(!a.is_absent(acl));
        a.record_absent(acl, a.seen());
        a.record_absent(cap, a.seen());
        assert!(a.is_absent(acl) && a.is_absent(cap));
        // ctime moved (seen by a stat): nothing is known any more.
        a.note_ctime(ctime_stamp(100, 6));
        assert!(!a.is_absent(acl) && !a.is_absent(cap));
        // An answer asked under the old ctime does not count under the new one.
        a.record_absent(acl, t1);
        assert!(!a.is_absent(acl));
        a.record_absent(cap, a.seen());
        assert!(
            a.is_absent(cap) && !a.is_absent(acl),
            "a new stamp starts afresh"
        );
        a.forget();
        assert!(!a.is_absent(cap));
        assert_ne!(ctime_stamp(1, 0), ctime_stamp(0, 999_999_999));
        assert_eq!(ctime_stamp(-1, 0) >> 60, 0);
    }
}
