//! Extended attributes, the POSIX side: what the core remembers of SOURCE's answers.
//!
//! Invariant: a name is answered "absent" without asking SOURCE only while SOURCE's ctime of
//! the inode is the one the absence was seen under; any xattr or ACL change moves ctime, and
//! every change made through the mount forgets what was remembered.

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

#[cfg(test)]
mod tests {
    use super::*;

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
