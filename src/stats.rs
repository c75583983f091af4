//! Mount-wide counters: plain relaxed atomics, bumped on the hot path without any lock.
//!
//! Each counter only ever grows (except gauges computed on demand by whoever renders them).
//! Rendering them for the `user.extentfs.stats` xattr lives in the core (`core::ctl`).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Monotonic counters of one mount.
        #[derive(Default, Debug)]
        pub struct Counters {
            $(pub $name: AtomicU64,)*
        }

        impl Counters {
            /// (name, value) of every counter, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters!(
    read_requests,
    read_bytes,
    read_hit_bytes,
    read_miss_bytes,
    source_read_ops,
    readahead_bytes,
    read_around_bytes,
    write_requests,
    write_bytes,
    writeback_ops,
    writeback_bytes,
    writeback_errors,
    evicted_extents,
    evicted_bytes,
    backpressure_waits,
    revalidations,
    source_changes,
    coherence_dropped_bytes,
    coherence_conflicts,
    commit_syncfs,
    xattr_absent,
    xattr_absent_remembered,
);

macro_rules! ops {
    ($($name:ident => $text:literal),* $(,)?) => {
        /// FUSE operations, counted per opcode.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Op { $($name,)* }

        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$name,)*];
            pub fn name(self) -> &'static str {
                match self { $(Op::$name => $text,)* }
            }
        }
    };
}

ops!(
    Lookup => "lookup", Forget => "forget", Getattr => "getattr", Setattr => "setattr",
    Readlink => "readlink", Mknod => "mknod", Mkdir => "mkdir", Unlink => "unlink",
    Rmdir => "rmdir", Symlink => "symlink", Rename => "rename", Link => "link", Open => "open",
    Read => "read", Write => "write", Flush => "flush", Release => "release", Fsync => "fsync",
    Opendir => "opendir", Readdir => "readdir", Readdirplus => "readdirplus",
    Releasedir => "releasedir", Fsyncdir => "fsyncdir", Statfs => "statfs",
    Setxattr => "setxattr", Getxattr => "getxattr", Listxattr => "listxattr",
    Removexattr => "removexattr", Access => "access", Create => "create",
    Fallocate => "fallocate", Lseek => "lseek", CopyFileRange => "copy_file_range",
    Ioctl => "ioctl",
);

/// Requests and errors per FUSE opcode.
#[derive(Debug)]
pub struct OpCounters {
    requests: Vec<AtomicU64>,
    errors: Vec<AtomicU64>,
}

impl Default for OpCounters {
    fn default() -> Self {
        OpCounters {
            requests: (0..Op::ALL.len()).map(|_| AtomicU64::new(0)).collect(),
            errors: (0..Op::ALL.len()).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl OpCounters {
    #[inline]
    pub fn request(&self, op: Op) {
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn error(&self, op: Op) {
        self.errors[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// (opcode, requests, errors) for every opcode seen at least once.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, u64)> {
        Op::ALL
            .iter()
            .map(|&op| {
                (
                    op.name(),
                    self.requests[op as usize].load(Ordering::Relaxed),
                    self.errors[op as usize].load(Ordering::Relaxed),
                )
            })
            .filter(|&(_, r, _)| r > 0)
            .collect()
    }

    pub fn totals(&self) -> (u64, u64) {
        let r = self
            .requests
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum();
        let e = self.errors.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        (r, e)
    }
}

/// Add `n` to a counter.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_lists_every_counter() {
        let c = Counters::default();
        add(&c.read_bytes, 5);
        let s = c.snapshot();
        assert!(s.contains(&("read_bytes", 5)));
        assert!(s.iter().any(|(k, _)| *k == "backpressure_waits"));
        let ops = OpCounters::default();
        ops.request(Op::Read);
        ops.request(Op::Read);
        ops.error(Op::Read);
        assert_eq!(ops.snapshot(), vec![("read", 2, 1)]);
        assert_eq!(ops.totals(), (2, 1));
    }
}
