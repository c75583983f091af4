//! `ExtentMap`: which pool memory holds which page-aligned range of one file.
//!
//! A sorted map from file offset to [`ExtentPtr`]. Invariants:
//! - extents never overlap; each is page aligned and at most `max_extent` bytes long;
//! - outside a range locked in the inode's state tree, a page is mapped here exactly when it is
//!   UPTODATE there (the cache keeps the two in step; this module only holds memory);
//! - the map's structure is guarded by a short mutex that is never held across I/O or while
//!   waiting for memory;
//! - extents are grown in place or fused with their left neighbour when the pool pages are
//!   contiguous and nobody else holds a reference, so a sequentially filled file costs a
//!   handful of entries, not one per block.

use super::ptr::{ExtentBuf, ExtentPtr};
use crate::pool::{PagePool, Run, PAGE_SIZE};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const P: u64 = PAGE_SIZE as u64;

/// Upper bound on one extent's length: keeps eviction granular while a 1 GiB file still needs
/// only 16 entries.
pub const MAX_EXTENT: u64 = 64 << 20;

pub struct ExtentMap {
    pool: Arc<PagePool>,
    max_extent: u64,
    extents: Mutex<BTreeMap<u64, ExtentPtr>>,
    mapped_bytes: AtomicU64,
}

/// Allocation failed: the pool has no free pages for this request.
#[derive(Debug, PartialEq, Eq)]
pub struct NoMemory {
    pub pages: u64,
}

impl ExtentMap {
    pub fn new(pool: Arc<PagePool>) -> ExtentMap {
        let cap = (pool.capacity_pages() as u64 * P / 8).clamp(P, MAX_EXTENT) & !(P - 1);
        ExtentMap {
            pool,
            max_extent: cap,
            extents: Mutex::new(BTreeMap::new()),
            mapped_bytes: AtomicU64::new(0),
        }
    }

    pub fn pool(&self) -> &Arc<PagePool> {
        &self.pool
    }

    /// Bytes of pool memory mapped by this file.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes.load(Ordering::Relaxed)
    }

    pub fn entries(&self) -> usize {
        self.extents.lock().unwrap().len()
    }

    /// Estimated heap bytes: BTreeMap entries (key + pointer, amortized node overhead) plus
    /// each extent's own bookkeeping.
    pub fn metadata_bytes(&self) -> usize {
        let m = self.extents.lock().unwrap();
        m.values().map(|e| e.metadata_bytes() + 24).sum()
    }

    /// The extent containing file offset `off`.
    pub fn get(&self, off: u64) -> Option<ExtentPtr> {
        let m = self.extents.lock().unwrap();
        let (_, e) = m.range(..=off).next_back()?;
        (off < e.end()).then(|| e.clone())
    }

    /// The first extent that ends after `off` (contains it or starts after it).
    pub fn next_from(&self, off: u64) -> Option<ExtentPtr> {
        let m = self.extents.lock().unwrap();
        if let Some((_, e)) = m.range(..=off).next_back() {
            if off < e.end() {
                return Some(e.clone());
            }
        }
        m.range(off.saturating_add(1)..)
            .next()
            .map(|(_, e)| e.clone())
    }

    /// Visit mapped sub-ranges of `[start, end)` as (start, end) in order.
    pub fn for_each_mapped(&self, start: u64, end: u64, mut f: impl FnMut(u64, u64)) {
        let m = self.extents.lock().unwrap();
        let first = match m.range(..=start).next_back() {
            Some((&k, e)) if e.end() > start => k,
            _ => start,
        };
        for (_, e) in m.range(first..end) {
            let s = e.start().max(start);
            let t = e.end().min(end);
            if s < t {
                f(s, t);
            }
        }
    }

    /// Visit unmapped sub-ranges ("gaps") of page-aligned `[start, end)`, in order.
    pub fn for_each_gap(&self, start: u64, end: u64, mut f: impl FnMut(u64, u64)) {
        let mut cur = start;
        self.for_each_mapped(start, end, |s, t| {
            if s > cur {
                f(cur, s);
            }
            cur = t;
        });
        if cur < end {
            f(cur, end);
        }
    }

    /// Map pool memory over the page-aligned gap `[start, end)` (which must be unmapped),
    /// without waiting: grow the left neighbour in place when its pages are followed by free
    /// pool pages, else allocate runs (contiguous if possible) for new extents. All or nothing.
    pub fn map_gap(&self, start: u64, end: u64) -> Result<(), NoMemory> {
        debug_assert!(start.is_multiple_of(P) && end.is_multiple_of(P) && start < end);
        let mut m = self.extents.lock().unwrap();
        let mut cur = start;
        // 1. Grow the extent ending at `start` in place, up to the extent cap.
        if let Some((_, left)) = m.range_mut(..start).next_back() {
            if left.end() == start && left.len() < self.max_extent {
                let grow = (end - start).min(self.max_extent - left.len());
                if let Some(buf) = Arc::get_mut(&mut left.0) {
                    if buf.try_grow_in_place((grow / P) as u32) {
                        cur += grow;
                    }
                }
            }
        }
        // 2. New extents for the rest, at most max_extent each.
        let mut added: Vec<ExtentPtr> = Vec::new();
        while cur < end {
            let len = (end - cur).min(self.max_extent);
            let pages = (len / P) as u32;
            let mut runs = Vec::with_capacity(1);
            let ok = match self.pool.alloc_run(pages) {
                Some(r) => {
                    runs.push(r);
                    true
                }
                None => self.pool.alloc_runs(pages, &mut runs),
            };
            if !ok {
                // Undo: drop what this call added (its pages return to the pool).
                let grown = cur - start - added.iter().map(|e| e.len()).sum::<u64>();
                drop(added);
                if grown > 0 {
                    if let Some((_, left)) = m.range_mut(..start).next_back() {
                        if let Some(buf) = Arc::get_mut(&mut left.0) {
                            let keep = buf.end() - grown;
                            drop(buf.split_off(keep));
                        }
                    }
                }
                return Err(NoMemory {
                    pages: (end - start) / P,
                });
            }
            added.push(ExtentPtr::new(ExtentBuf::new(self.pool.clone(), cur, runs)));
            cur += len;
        }
        for e in added {
            m.insert(e.start(), e);
        }
        self.mapped_bytes.fetch_add(end - start, Ordering::Relaxed);
        // 3. Fuse the new extents with their left neighbours where pool pages are contiguous.
        Self::fuse_around(&mut m, start, end, self.max_extent);
        Ok(())
    }

    fn fuse_around(m: &mut BTreeMap<u64, ExtentPtr>, start: u64, end: u64, cap: u64) {
        let keys: Vec<u64> = m.range(start..end).map(|(&k, _)| k).collect::<Vec<_>>();
        for k in keys {
            let Some(right) = m.get(&k) else { continue };
            let Some((&lk, left)) = m.range(..k).next_back() else {
                continue;
            };
            if left.end() != k
                || left.len() + right.len() > cap
                || !left.is_unique()
                || !right.is_unique()
            {
                continue;
            }
            let contiguous = match (left.runs().last(), right.runs().first()) {
                (Some(a), Some(b)) => a.end() == b.first,
                _ => false,
            };
            if !contiguous {
                continue;
            }
            let right = m.remove(&k).unwrap();
            let right_buf = match Arc::try_unwrap(right.0) {
                Ok(b) => b,
                Err(arc) => {
                    m.insert(k, ExtentPtr(arc));
                    continue;
                }
            };
            let left = m.get_mut(&lk).unwrap();
            Arc::get_mut(&mut left.0)
                .expect("unique checked under the map lock")
                .absorb(right_buf);
        }
    }

    /// Drop the mapping of page-aligned `[start, end)` (end may be u64::MAX rounded down),
    /// splitting extents that straddle the edges. Pages of extents that someone else still
    /// references are released when that reference drops. Returns bytes unmapped.
    pub fn unmap(&self, start: u64, end: u64) -> u64 {
        debug_assert!(start.is_multiple_of(P));
        let mut removed = 0;
        loop {
            let mut m = self.extents.lock().unwrap();
            match Self::unmap_locked(&mut m, start, end, &mut removed) {
                Ok(()) => break,
                Err(()) => {
                    // An extent straddling an edge is referenced elsewhere (a reader or
                    // writeback of a neighbouring range): wait for it to be released.
                    drop(m);
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
        }
        self.mapped_bytes.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    fn unmap_locked(
        m: &mut BTreeMap<u64, ExtentPtr>,
        start: u64,
        end: u64,
        removed: &mut u64,
    ) -> Result<(), ()> {
        // Split the extent straddling `start`.
        if let Some((_, e)) = m.range_mut(..start).next_back() {
            if e.end() > start {
                let buf = Arc::get_mut(&mut e.0).ok_or(())?;
                let mut tail = buf.split_off(start);
                if tail.end() > end {
                    let rest = tail.split_off(end);
                    m.insert(end, ExtentPtr::new(rest));
                }
                *removed += tail.len();
                drop(tail);
            }
        }
        // Split the extent straddling `end`.
        if let Some((&k, e)) = m.range_mut(start..end).next_back() {
            if e.end() > end {
                let buf = Arc::get_mut(&mut e.0).ok_or(())?;
                let rest = buf.split_off(end);
                m.insert(end, ExtentPtr::new(rest));
                let _ = k;
            }
        }
        // Everything now inside [start, end) goes.
        let keys: Vec<u64> = m.range(start..end).map(|(&k, _)| k).collect();
        for k in keys {
            let e = m.remove(&k).unwrap();
            *removed += e.len();
        }
        Ok(())
    }

    /// Remove exactly the extent starting at `start` if `ok(extent)` allows and nobody else
    /// references it (eviction). Returns its length.
    pub fn remove_extent_if(&self, start: u64, ok: impl FnOnce(&ExtentPtr) -> bool) -> Option<u64> {
        let mut m = self.extents.lock().unwrap();
        let e = m.get(&start)?;
        if !e.is_unique() || !ok(e) {
            return None;
        }
        let e = m.remove(&start).unwrap();
        let len = e.len();
        drop(m);
        drop(e);
        self.mapped_bytes.fetch_sub(len, Ordering::Relaxed);
        Some(len)
    }

    /// (start, end) of every extent, in order (stats, eviction scans, tests).
    pub fn extents(&self) -> Vec<(u64, u64)> {
        let m = self.extents.lock().unwrap();
        m.values().map(|e| (e.start(), e.end())).collect()
    }

    /// The pool runs of every extent (tests and the extents dump).
    pub fn runs(&self) -> Vec<(u64, Vec<Run>)> {
        let m = self.extents.lock().unwrap();
        m.values().map(|e| (e.start(), e.runs().to_vec())).collect()
    }
}

impl Drop for ExtentMap {
    fn drop(&mut self) {
        let m = self.extents.get_mut().unwrap();
        m.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{HugePagePolicy, PoolConfig};

    fn pool(mb: usize) -> Arc<PagePool> {
        Arc::new(PagePool::new(&PoolConfig::new(mb << 20, HugePagePolicy::Off)).unwrap())
    }

    #[test]
    fn sequential_fill_is_one_extent() {
        let pool = pool(64);
        let map = ExtentMap::new(pool.clone());
        for i in 0..64u64 {
            map.map_gap(i * 16 * P, (i + 1) * 16 * P).unwrap();
        }
        assert_eq!(map.entries(), 1, "{:?}", map.extents());
        assert_eq!(map.runs()[0].1.len(), 1);
        assert_eq!(map.mapped_bytes(), 4 << 20);
    }

    #[test]
    fn extents_are_capped() {
        let pool = pool(64);
        let map = ExtentMap::new(pool.clone());
        map.map_gap(0, 32 << 20).unwrap();
        // cap = capacity / 8 = 8 MiB
        assert_eq!(map.entries(), 4);
        assert!(map.extents().iter().all(|(s, e)| e - s == 8 << 20));
    }

    #[test]
    fn gaps_and_mapped() {
        let pool = pool(16);
        let map = ExtentMap::new(pool.clone());
        map.map_gap(2 * P, 4 * P).unwrap();
        map.map_gap(8 * P, 9 * P).unwrap();
        let mut gaps = vec![];
        map.for_each_gap(0, 10 * P, |s, e| gaps.push((s / P, e / P)));
        assert_eq!(gaps, vec![(0, 2), (4, 8), (9, 10)]);
        assert!(map.get(3 * P + 7).is_some());
        assert!(map.get(4 * P).is_none());
        assert_eq!(map.next_from(4 * P).unwrap().start(), 8 * P);
    }

    #[test]
    fn unmap_splits_both_edges_and_frees() {
        let pool = pool(16);
        let free0 = pool.free_pages();
        let map = ExtentMap::new(pool.clone());
        map.map_gap(0, 10 * P).unwrap();
        assert_eq!(map.unmap(3 * P, 5 * P), 2 * P);
        assert_eq!(map.extents(), vec![(0, 3 * P), (5 * P, 10 * P)]);
        assert_eq!(pool.free_pages(), free0 - 8);
        // Unmap to the top of the range.
        assert_eq!(map.unmap(7 * P, !(P - 1)), 3 * P);
        assert_eq!(map.extents(), vec![(0, 3 * P), (5 * P, 7 * P)]);
        assert_eq!(map.mapped_bytes(), 5 * P);
        drop(map);
        assert_eq!(pool.free_pages(), free0);
    }

    #[test]
    fn unmap_inside_one_extent() {
        let pool = pool(16);
        let map = ExtentMap::new(pool.clone());
        map.map_gap(0, 10 * P).unwrap();
        map.unmap(4 * P, 6 * P);
        assert_eq!(map.extents(), vec![(0, 4 * P), (6 * P, 10 * P)]);
    }

    #[test]
    fn all_or_nothing_when_full() {
        let pool = pool(16);
        let free0 = pool.free_pages();
        let map = ExtentMap::new(pool.clone());
        map.map_gap(0, 8 * P).unwrap();
        let err = map.map_gap(8 * P, 8 * P + (64 << 20)).unwrap_err();
        assert!(err.pages > 0);
        assert_eq!(map.extents(), vec![(0, 8 * P)]);
        assert_eq!(pool.free_pages(), free0 - 8);
    }

    #[test]
    fn evict_only_unreferenced() {
        let pool = pool(16);
        let map = ExtentMap::new(pool.clone());
        map.map_gap(0, 4 * P).unwrap();
        let held = map.get(0).unwrap();
        assert_eq!(map.remove_extent_if(0, |_| true), None);
        drop(held);
        assert_eq!(map.remove_extent_if(0, |_| true), Some(4 * P));
        assert_eq!(map.entries(), 0);
    }
}
