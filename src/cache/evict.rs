//! Eviction: when the pool runs short, clean extents go, chosen by CLOCK over extents.
//!
//! The hand walks files round-robin and, inside a file, extents in offset order. An extent
//! whose reference bit is set (it was read or written since the hand last passed) gets a second
//! chance; otherwise it is evicted if it is clean (no DIRTY or WRITEBACK byte), no range lock
//! overlaps it (taken with `try_lock_range`, never waiting), and nobody else holds its
//! `ExtentPtr`. Dirty data is never evicted: writers wait for writeback instead.

use super::inode_cache::{InodeCache, RangeGuard};
use super::CacheContext;
use crate::extent::state::Bits;
use crate::extent::ByteRange;
use crate::pool::PAGE_SIZE;
use crate::stats;
use std::sync::atomic::Ordering;

impl CacheContext {
    /// Evict clean extents until about `pages` pages were freed or two sweeps found nothing.
    /// Returns pages freed.
    pub fn evict(&self, pages: u64) -> u64 {
        let want = pages * PAGE_SIZE as u64;
        let mut freed = 0u64;
        let caches = self.all_caches();
        if caches.is_empty() {
            return 0;
        }
        let n = caches.len();
        // Two sweeps: the first may only clear reference bits.
        for _sweep in 0..2 {
            for _ in 0..n {
                let i = self.clock_hand.fetch_add(1, Ordering::Relaxed) % n;
                freed += self.evict_from(&caches[i], want - freed.min(want));
                if freed >= want {
                    return freed / PAGE_SIZE as u64;
                }
            }
        }
        freed / PAGE_SIZE as u64
    }

    /// Sweep one file's extents from its hand; returns bytes evicted.
    fn evict_from(&self, c: &InodeCache, want: u64) -> u64 {
        let extents = c.map.extents();
        if extents.is_empty() {
            return 0;
        }
        let hand = c.evict_hand.load(Ordering::Relaxed);
        let start = extents.partition_point(|e| e.start() < hand);
        let mut freed = 0;
        let mut last = hand;
        for k in 0..extents.len() {
            let e = extents[(start + k) % extents.len()];
            last = e.end();
            let Some(ptr) = c.map.get(e.start()) else {
                continue;
            };
            if ptr.start() != e.start() {
                continue;
            }
            let referenced = ptr.take_referenced();
            drop(ptr);
            if referenced {
                continue;
            }
            if let Some(n) = self.try_evict_extent(c, e) {
                freed += n;
                if freed >= want {
                    break;
                }
            }
        }
        c.evict_hand.store(last, Ordering::Relaxed);
        freed
    }

    /// Evict the extent covering exactly `e` if it is clean, unlocked and unreferenced.
    pub(crate) fn try_evict_extent(&self, c: &InodeCache, e: ByteRange) -> Option<u64> {
        let guard = RangeGuard::try_lock(&c.tree, e)?;
        let r = if c
            .tree
            .test_any(e, Bits::DIRTY | Bits::WRITEBACK | Bits::UNSTABLE)
        {
            None
        } else {
            c.map.remove_extent(e).inspect(|_| {
                c.tree.clear_bits(e, Bits::UPTODATE);
            })
        };
        drop(guard);
        if let Some(n) = r {
            stats::add(&self.stats.evicted_extents, 1);
            stats::add(&self.stats.evicted_bytes, n);
        }
        r
    }
}
