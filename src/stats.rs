//! Mount-wide counters: plain relaxed atomics, bumped on the hot path without any lock.
//!
//! Each counter only ever grows (except gauges computed on demand by whoever renders them).
//! Rendering them for the `user.extentfs.stats` xattr lives in the FUSE layer.

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
    write_requests,
    write_bytes,
    writeback_ops,
    writeback_bytes,
    writeback_errors,
    evicted_extents,
    evicted_bytes,
    backpressure_waits,
    fuse_requests,
    fuse_errors,
);

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
        assert!(s.iter().any(|(k, _)| *k == "fuse_errors"));
    }
}
