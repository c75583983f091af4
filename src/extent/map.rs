//! `ExtentMap`: which pool memory holds which page-aligned range of one file.
//!
//! A sorted map from file offset to [`ExtentPtr`]. Invariants:
//! - extents never overlap; each is page aligned, at most `max_extent` bytes long and at most
//!   `MAX_RUNS` runs; an extent may contain holes (ranges with no memory), never at its ends;
//! - outside a range locked in the inode's state tree, a page is mapped here exactly when it is
//!   UPTODATE there (the cache keeps the two in step; this module only holds memory);
//! - the map's structure is guarded by a short mutex that is never held across I/O, while
//!   waiting for memory, or while waiting for another thread to drop an `ExtentPtr`;
//! - a new piece of memory is grown into its left neighbour in place when the pool pages
//!   allow, else appended to a neighbour less than `FUSE_GAP` away (with a hole in between)
//!   when nobody else holds that neighbour. So a sequentially filled file costs a handful of
//!   entries, and scattered 4 KiB blocks cost a run each, not an extent each.

use super::ptr::{ExtentBuf, ExtentPtr};
use super::range::ByteRange;
use crate::pool::{PagePool, Run, PAGE_SIZE};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const P: u64 = PAGE_SIZE as u64;

/// Upper bound on one extent's length: keeps eviction granular while a 1 GiB file still needs
/// only 16 entries.
pub const MAX_EXTENT: u64 = 64 << 20;
/// Upper bound on the runs of one extent (keeps shape changes cheap).
pub const MAX_RUNS: usize = 128;
/// Neighbours closer than this are joined into one extent with a hole between them.
pub const FUSE_GAP: u64 = 1 << 20;

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

type Map = BTreeMap<u64, ExtentPtr>;

/// The extent whose range contains `off` (mapped or in a hole).
fn containing(m: &Map, off: u64) -> Option<(u64, &ExtentPtr)> {
    let (&k, e) = m.range(..=off).next_back()?;
    (off < e.end()).then_some((k, e))
}

fn wait_for_release() {
    std::thread::sleep(std::time::Duration::from_micros(50));
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

    fn lock(&self) -> MutexGuard<'_, Map> {
        self.extents.lock().unwrap()
    }

    pub fn pool(&self) -> &Arc<PagePool> {
        &self.pool
    }

    /// Bytes of pool memory mapped by this file.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes.load(Ordering::Relaxed)
    }

    pub fn entries(&self) -> usize {
        self.lock().len()
    }

    /// Estimated heap bytes: BTreeMap entries (key + pointer, amortized node overhead) plus
    /// each extent's own bookkeeping (struct, Arc header, run list and index).
    pub fn metadata_bytes(&self) -> usize {
        self.lock().values().map(|e| e.metadata_bytes() + 24).sum()
    }

    /// The extent mapping the page that holds `off` (None in a hole or outside extents).
    pub fn get(&self, off: u64) -> Option<ExtentPtr> {
        let m = self.lock();
        let (_, e) = containing(&m, off)?;
        e.0.is_mapped_at(off).then(|| e.clone())
    }

    /// Visit the mapped sub-ranges of `r`, in order (pieces that touch may be reported
    /// separately).
    pub fn for_each_mapped(&self, r: ByteRange, mut f: impl FnMut(ByteRange)) {
        if r.is_empty() {
            return;
        }
        let m = self.lock();
        let first = containing(&m, r.start()).map_or(r.start(), |(k, _)| k);
        for (_, e) in m.range(first..r.end()) {
            e.0.for_each_mapped(r, &mut f);
        }
    }

    /// Visit the unmapped sub-ranges ("gaps") of page-aligned `r`, in order.
    pub fn for_each_gap(&self, r: ByteRange, mut f: impl FnMut(ByteRange)) {
        let mut cur = r.start();
        self.for_each_mapped(r, |piece| {
            if piece.start() > cur {
                f(ByteRange::new(cur, piece.start()));
            }
            cur = cur.max(piece.end());
        });
        if cur < r.end() {
            f(ByteRange::new(cur, r.end()));
        }
    }

    /// Map pool memory over the page-aligned gap `r` (which must be unmapped: either inside
    /// one extent's hole or outside all extents), without waiting for memory. All or nothing.
    pub fn map_gap(&self, r: ByteRange) -> Result<(), NoMemory> {
        let (start, end) = (r.start(), r.end());
        debug_assert!(start.is_multiple_of(P) && end.is_multiple_of(P) && start < end);
        let mut cur = start;
        while cur < end {
            let chunk_end = end.min(cur + self.max_extent);
            if let Err(e) = self.map_chunk(cur, chunk_end) {
                // All or nothing: give back what this call mapped.
                if cur > start {
                    self.unmap(ByteRange::new(start, cur));
                }
                return Err(e);
            }
            cur = chunk_end;
        }
        Ok(())
    }

    fn map_chunk(&self, start: u64, end: u64) -> Result<(), NoMemory> {
        let pages = ((end - start) / P) as u32;
        // 1. Sequential growth: the extent ending at `start` takes the pool pages right after
        //    its last run, with no allocation of a new run.
        {
            let mut m = self.lock();
            if let Some((_, left)) = m.range_mut(..start).next_back() {
                if left.end() == start && left.len() + (end - start) <= self.max_extent {
                    if let Some(buf) = Arc::get_mut(&mut left.0) {
                        if buf.try_grow_in_place(pages) {
                            self.mapped_bytes.fetch_add(end - start, Ordering::Relaxed);
                            return Ok(());
                        }
                    }
                }
            }
        }
        // 2. Memory first (no lock held), contiguous if possible.
        let mut runs = Vec::with_capacity(1);
        match self.pool.alloc_run(pages) {
            Some(r) => runs.push(r),
            None => {
                if !self.pool.alloc_runs(pages, &mut runs) {
                    return Err(NoMemory {
                        pages: pages as u64,
                    });
                }
            }
        }
        // 3. Place it. Shape changes need the sole reference: if another thread holds the
        //    extent (a reader replying, writeback writing), wait for it outside the lock.
        let mut runs = Some(runs);
        loop {
            let mut m = self.lock();
            if let Some((k, _)) = containing(&m, start) {
                let e = m.get_mut(&k).unwrap();
                match Arc::get_mut(&mut e.0) {
                    Some(buf) => {
                        buf.fill_hole(start, &runs.take().unwrap());
                        break;
                    }
                    None => {
                        drop(m);
                        wait_for_release();
                        continue;
                    }
                }
            }
            let new = ExtentBuf::new(self.pool.clone(), start, runs.take().unwrap());
            self.place_new(&mut m, new);
            break;
        }
        self.mapped_bytes.fetch_add(end - start, Ordering::Relaxed);
        Ok(())
    }

    /// Insert a new extent, appending it to a near left neighbour or taking in a near right
    /// one when nobody else holds them and the limits allow.
    fn place_new(&self, m: &mut Map, mut new: ExtentBuf) {
        let fits = |a: &ExtentBuf, b_end: u64, b_runs: usize| {
            b_end - a.start() <= self.max_extent && a.runs().len() + b_runs < MAX_RUNS
        };
        // Right neighbour into the new extent.
        let right_key = m
            .range(new.end()..)
            .next()
            .filter(|(_, r)| r.start() - new.end() < FUSE_GAP && r.is_unique())
            .map(|(&k, _)| k);
        if let Some(k) = right_key {
            let (r_end, r_runs) = {
                let r = &m[&k];
                (r.end(), r.runs().len())
            };
            if fits(&new, r_end, r_runs) {
                let r = m.remove(&k).unwrap();
                match Arc::try_unwrap(r.0) {
                    Ok(rbuf) => {
                        let gap = rbuf.start() - new.end();
                        new.append(gap, rbuf);
                    }
                    Err(arc) => {
                        m.insert(k, ExtentPtr(arc));
                    }
                }
            }
        }
        // The new extent into its left neighbour.
        if let Some((_, left)) = m.range_mut(..new.start()).next_back() {
            let gap = new.start() - left.end();
            if gap < FUSE_GAP && fits(&left.0, new.end(), new.runs().len()) {
                if let Some(lbuf) = Arc::get_mut(&mut left.0) {
                    lbuf.append(gap, new);
                    return;
                }
            }
        }
        m.insert(new.start(), ExtentPtr::new(new));
    }

    /// Drop the mapping of `r` (page aligned, or ending at `u64::MAX` for "to the end"):
    /// extents inside go, extents across an edge lose that part (a hole, or a shorter
    /// extent). Returns bytes unmapped; an empty range unmaps nothing.
    pub fn unmap(&self, r: ByteRange) -> u64 {
        let (start, end) = (r.start(), r.end());
        debug_assert!(start.is_multiple_of(P) && (end.is_multiple_of(P) || end == u64::MAX));
        if r.is_empty() {
            return 0;
        }
        let mut removed = 0;
        loop {
            let mut m = self.lock();
            let first = containing(&m, start).map(|(k, _)| k).unwrap_or(start);
            let keys: Vec<u64> = m.range(first..end).map(|(&k, _)| k).collect();
            let mut busy = false;
            for k in keys {
                let e = m.get_mut(&k).unwrap();
                if e.start() >= start && e.end() <= end {
                    let e = m.remove(&k).unwrap();
                    removed += e.0.mapped_bytes();
                    continue;
                }
                match Arc::get_mut(&mut e.0) {
                    Some(buf) => {
                        removed += buf.punch(r);
                        if buf.is_empty() {
                            m.remove(&k);
                        } else if buf.start() != k {
                            let e = m.remove(&k).unwrap();
                            m.insert(e.start(), e);
                        }
                    }
                    None => busy = true,
                }
            }
            if !busy {
                break;
            }
            // An extent across an edge is referenced elsewhere (a reader or writeback of a
            // neighbouring range): wait for it to be released, outside the lock.
            drop(m);
            wait_for_release();
        }
        self.mapped_bytes.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Remove the extent covering exactly `r` if there is one and nobody else references it
    /// (eviction). Returns the bytes of memory freed.
    pub fn remove_extent(&self, r: ByteRange) -> Option<u64> {
        let mut m = self.lock();
        let e = m.get(&r.start())?;
        if !e.is_unique() || e.end() != r.end() {
            return None;
        }
        let e = m.remove(&r.start()).unwrap();
        drop(m);
        let freed = e.0.mapped_bytes();
        drop(e);
        self.mapped_bytes.fetch_sub(freed, Ordering::Relaxed);
        Some(freed)
    }

    /// The range of every extent, in order (stats, eviction scans, tests).
    pub fn extents(&self) -> Vec<ByteRange> {
        self.lock().values().map(|e| e.range()).collect()
    }

    /// The pool runs of every extent (tests and the extents dump); holes have `first == HOLE`.
    pub fn runs(&self) -> Vec<(u64, Vec<Run>)> {
        self.lock()
            .values()
            .map(|e| (e.start(), e.runs().to_vec()))
            .collect()
    }
}

impl Drop for ExtentMap {
    fn drop(&mut self) {
        self.extents.get_mut().unwrap().clear();
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
            map.map_gap(ByteRange::new(i * 16 * P, (i + 1) * 16 * P))
                .unwrap();
        }
        assert_eq!(map.entries(), 1, "{:?}", map.extents());
        assert_eq!(map.runs()[0].1.len(), 1);
        assert_eq!(map.mapped_bytes(), 4 << 20);
    }

    #[test]
    fn extents_are_capped() {
        let pool = pool(64);
        let map = ExtentMap::new(pool.clone());
        map.map_gap(ByteRange::new(0, 32 << 20)).unwrap();
        // cap = capacity / 8 = 8 MiB
        assert_eq!(map.entries(), 4);
        assert!(map.extents().iter().all(|e| e.len() == 8 << 20));
    }

    #[test]
    fn scattered_blocks_share_an_extent() {
        let pool = pool(64);
        let map = ExtentMap::new(pool.clone());
        // Every other page, backwards (so no in-place growth): one extent with holes.
        for i in (0..64u64).rev() {
            map.map_gap(ByteRange::new(2 * i * P, (2 * i + 1) * P))
                .unwrap();
        }
        assert_eq!(map.entries(), 1, "{:?}", map.extents());
        assert_eq!(map.mapped_bytes(), 64 * P);
        let mut gaps = 0;
        map.for_each_gap(ByteRange::new(0, 128 * P), |_| gaps += 1);
        assert_eq!(gaps, 64);
        // Filling the holes keeps one extent.
        for i in 0..64u64 {
            map.map_gap(ByteRange::new((2 * i + 1) * P, (2 * i + 2) * P))
                .unwrap();
        }
        assert_eq!(map.entries(), 1);
        let mut gaps = 0;
        map.for_each_gap(ByteRange::new(0, 128 * P), |_| gaps += 1);
        assert_eq!(gaps, 0);
    }

    #[test]
    fn gaps_and_mapped() {
        let pool = pool(16);
        let map = ExtentMap::new(pool.clone());
        map.map_gap(ByteRange::new(2 * P, 4 * P)).unwrap();
        map.map_gap(ByteRange::new(8 * P, 9 * P)).unwrap();
        let mut gaps = vec![];
        map.for_each_gap(ByteRange::new(0, 10 * P), |g| {
            gaps.push((g.start() / P, g.end() / P))
        });
        assert_eq!(gaps, vec![(0, 2), (4, 8), (9, 10)]);
        assert!(map.get(3 * P + 7).is_some());
        assert!(map.get(4 * P).is_none());
        assert!(map.get(8 * P).is_some());
    }

    #[test]
    fn unmap_both_edges_and_frees() {
        let pool = pool(16);
        let free0 = pool.free_pages();
        let map = ExtentMap::new(pool.clone());
        map.map_gap(ByteRange::new(0, 10 * P)).unwrap();
        assert_eq!(map.unmap(ByteRange::new(3 * P, 5 * P)), 2 * P);
        assert!(map.get(2 * P).is_some() && map.get(3 * P).is_none() && map.get(5 * P).is_some());
        assert_eq!(pool.free_pages(), free0 - 8);
        // Unmap to the end: the extent shrinks.
        assert_eq!(map.unmap(ByteRange::from_offset(7 * P)), 3 * P);
        assert_eq!(map.extents(), vec![ByteRange::new(0, 7 * P)]);
        assert_eq!(map.mapped_bytes(), 5 * P);
        assert_eq!(map.unmap(ByteRange::new(0, 3 * P)), 3 * P);
        assert_eq!(map.extents(), vec![ByteRange::new(5 * P, 7 * P)]);
        drop(map);
        assert_eq!(pool.free_pages(), free0);
    }

    #[test]
    fn all_or_nothing_when_full() {
        let pool = pool(16);
        let free0 = pool.free_pages();
        let map = ExtentMap::new(pool.clone());
        map.map_gap(ByteRange::new(0, 8 * P)).unwrap();
        let err = map
            .map_gap(ByteRange::new(8 * P, 8 * P + (64 << 20)))
            .unwrap_err();
        assert!(err.pages > 0);
        assert_eq!(map.extents(), vec![ByteRange::new(0, 8 * P)]);
        assert_eq!(pool.free_pages(), free0 - 8);
    }

    #[test]
    fn evict_only_unreferenced() {
        let pool = pool(16);
        let map = ExtentMap::new(pool.clone());
        map.map_gap(ByteRange::new(0, 4 * P)).unwrap();
        let held = map.get(0).unwrap();
        assert_eq!(map.remove_extent(ByteRange::new(0, 4 * P)), None);
        drop(held);
        // Not exactly the extent: kept.
        assert_eq!(map.remove_extent(ByteRange::new(0, 2 * P)), None);
        assert_eq!(map.remove_extent(ByteRange::new(0, 4 * P)), Some(4 * P));
        assert_eq!(map.entries(), 0);
    }
}
