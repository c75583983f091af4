//! `ExtentPtr`: a refcounted mapping of one page-aligned file range onto pool pages.
//!
//! This is the only way code touches cached bytes (like kmap/kunmap): an [`ExtentBuf`] owns,
//! in file order, the [`Run`]s of the [`PagePool`] that hold `[start, start + len)` of the file.
//! A run may be a *hole* (`first == HOLE`): pages of the range that are not in memory. Holes
//! let one extent cover a sparsely cached stretch, so scattered 4 KiB blocks cost a run entry
//! each (8 + 4 bytes) instead of an extent each. The pages go back to the pool when the last
//! reference is dropped (the extent map holds one reference; readers and writeback hold others
//! briefly).
//!
//! Invariants:
//! - `start` and `len` are multiples of `PAGE_SIZE`; the runs' pages add up to `len`; `ends[i]`
//!   is the page count from `start` to the end of `runs[i]` (binary search by offset);
//! - the first and last runs are not holes, no two holes are adjacent, and adjacent memory
//!   runs that the pool can fuse are fused;
//! - it carries no dirty/lock/writeback state: that lives only in the inode's extent state
//!   tree. Who may read or write the bytes is decided there: a writer holds LOCKED over the
//!   bytes it changes; readers hold LOCKED, or WRITEBACK (which keeps writers out), over what
//!   they read. The `unsafe` accessors below state that contract;
//! - its shape (start, len, runs) only changes while the map holds the sole reference
//!   (`Arc::get_mut`), so nobody can observe a shape change.

use super::range::ByteRange;
use crate::pool::{PagePool, Run, PAGE_SIZE};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const P: u64 = PAGE_SIZE as u64;

/// `Run::first` of a hole: pages of the extent's range with no memory behind them.
pub const HOLE: u32 = u32::MAX;

fn hole(pages: u32) -> Run {
    Run { first: HOLE, pages }
}

fn is_hole(r: &Run) -> bool {
    r.first == HOLE
}

/// The owned pages of one extent. Reached through [`ExtentPtr`].
pub struct ExtentBuf {
    pool: Arc<PagePool>,
    start: u64,
    len: u64,
    runs: Vec<Run>,
    ends: Vec<u32>,
    mapped_pages: u32,
    /// CLOCK reference bit for eviction: set on access, cleared by the evictor's hand.
    referenced: AtomicBool,
}

/// A shared reference to an extent's pool pages.
#[derive(Clone)]
pub struct ExtentPtr(pub(crate) Arc<ExtentBuf>);

impl std::fmt::Debug for ExtentPtr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ExtentPtr[{:#x}+{:#x} in {} runs]",
            self.0.start,
            self.0.len,
            self.0.runs.len()
        )
    }
}

impl Drop for ExtentBuf {
    fn drop(&mut self) {
        for run in self.runs.drain(..) {
            if !is_hole(&run) {
                self.pool.free_run(run);
            }
        }
    }
}

impl ExtentBuf {
    /// A new extent over `runs` (memory, no holes; taken over: freed when it drops).
    pub fn new(pool: Arc<PagePool>, start: u64, runs: Vec<Run>) -> ExtentBuf {
        debug_assert!(start.is_multiple_of(P));
        debug_assert!(!runs.is_empty() && runs.iter().all(|r| !is_hole(r)));
        let mut b = ExtentBuf {
            pool,
            start,
            len: 0,
            runs,
            ends: Vec::new(),
            mapped_pages: 0,
            referenced: AtomicBool::new(true),
        };
        b.normalize();
        b
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Exclusive end (file offsets are below 2^63, so this cannot overflow).
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// The file range the extent covers, holes included.
    pub fn range(&self) -> ByteRange {
        ByteRange::new(self.start, self.end())
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Bytes backed by memory (the extent's length less its holes).
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_pages as u64 * P
    }

    /// Fuse adjacent holes and poolwise-contiguous runs, drop holes at both ends, and
    /// recompute `ends`, `len` and `mapped_pages`.
    fn normalize(&mut self) {
        // Compact in place: no allocation on the write path.
        let mut w = 0usize;
        for i in 0..self.runs.len() {
            let r = self.runs[i];
            if r.pages == 0 {
                continue;
            }
            if w > 0 {
                let last = self.runs[w - 1];
                if is_hole(&last) && is_hole(&r) {
                    self.runs[w - 1].pages += r.pages;
                    continue;
                }
                if !is_hole(&last) && !is_hole(&r) {
                    if let Some(f) = self.pool.merge_runs(last, r) {
                        self.runs[w - 1] = f;
                        continue;
                    }
                }
            }
            self.runs[w] = r;
            w += 1;
        }
        self.runs.truncate(w);
        let lead = self.runs.iter().take_while(|r| is_hole(r)).count();
        if lead > 0 {
            for h in self.runs.drain(..lead) {
                self.start += h.pages as u64 * P;
            }
        }
        while self.runs.last().is_some_and(is_hole) {
            self.runs.pop();
        }
        self.ends.clear();
        let mut acc = 0u32;
        let mut mapped = 0u32;
        for r in &self.runs {
            acc += r.pages;
            if !is_hole(r) {
                mapped += r.pages;
            }
            self.ends.push(acc);
        }
        self.len = acc as u64 * P;
        self.mapped_pages = mapped;
    }

    /// Replace pages `[ps, pe)` (relative to `start`) with `with`; returns the pieces that
    /// were there (memory ones are the caller's to free or keep).
    fn replace(&mut self, ps: u32, pe: u32, with: &[Run]) -> Vec<Run> {
        // Runs [i0, i1) overlap [ps, pe); splice the replacement in their place.
        let i0 = self.ends.partition_point(|&e| e <= ps);
        let i1 = self.ends.partition_point(|&e| e < pe) + 1;
        let i1 = i1.min(self.runs.len());
        let mut repl: Vec<Run> = Vec::with_capacity(with.len() + 2);
        let mut removed = Vec::with_capacity(i1 - i0);
        for i in i0..i1 {
            let r = self.runs[i];
            let r0 = if i == 0 { 0 } else { self.ends[i - 1] };
            let r1 = self.ends[i];
            let slice = |a: u32, b: u32| Run {
                first: if is_hole(&r) {
                    HOLE
                } else {
                    r.first + (a - r0)
                },
                pages: b - a,
            };
            if r0 < ps {
                repl.push(slice(r0, ps));
            }
            removed.push(slice(r0.max(ps), r1.min(pe)));
            if i == i1 - 1 {
                repl.extend_from_slice(with);
            }
            if r1 > pe {
                repl.push(slice(pe, r1));
            }
        }
        self.runs.splice(i0..i1, repl);
        self.normalize();
        removed
    }

    fn rel_pages(&self, off: u64) -> u32 {
        ((off - self.start) / P) as u32
    }

    /// Free the memory of page-aligned `r` where it overlaps the extent, leaving a hole; the
    /// extent shrinks when the hole reaches an end. Returns bytes freed. Sole owner only.
    pub(crate) fn punch(&mut self, r: ByteRange) -> u64 {
        let r = r.intersect(self.range());
        if r.is_empty() {
            return 0;
        }
        let (s, e) = (r.start(), r.end());
        let (ps, pe) = (self.rel_pages(s), self.rel_pages(e));
        let removed = self.replace(ps, pe, &[hole(pe - ps)]);
        let mut freed = 0;
        for r in removed {
            if !is_hole(&r) {
                freed += r.pages as u64 * P;
                self.pool.free_run(r);
            }
        }
        freed
    }

    /// Put `runs` (memory) into the hole `[s, s + pages)` inside the extent. Sole owner only.
    pub(crate) fn fill_hole(&mut self, s: u64, runs: &[Run]) {
        let pages: u32 = runs.iter().map(|r| r.pages).sum();
        let ps = self.rel_pages(s);
        let removed = self.replace(ps, ps + pages, runs);
        debug_assert!(removed.iter().all(is_hole), "fill_hole over memory");
    }

    /// Append a hole of `gap` bytes and then `next` (which starts at `end() + gap`).
    pub(crate) fn append(&mut self, gap: u64, mut next: ExtentBuf) {
        debug_assert_eq!(self.end() + gap, next.start);
        if gap > 0 {
            self.runs.push(hole((gap / P) as u32));
        }
        self.runs.append(&mut next.runs);
        next.len = 0;
        self.normalize();
    }

    /// Grow by `extra_pages` at the end, in place in the pool if the pages after the last run
    /// are free. Sole owner only.
    pub(crate) fn try_grow_in_place(&mut self, extra_pages: u32) -> bool {
        let Some(last) = self.runs.last().copied() else {
            return false;
        };
        match self.pool.try_grow(last, extra_pages) {
            Some(grown) => {
                *self.runs.last_mut().unwrap() = grown;
                self.normalize();
                true
            }
            None => false,
        }
    }

    /// Heap bytes this extent costs: the Arc'd struct and its run and index lists.
    pub fn metadata_bytes(&self) -> usize {
        std::mem::size_of::<ExtentBuf>()
            + 16
            + self.runs.capacity() * std::mem::size_of::<Run>()
            + self.ends.capacity() * std::mem::size_of::<u32>()
    }

    /// Where file offset `off` (inside the extent) lives: (run index, byte offset in the run).
    fn locate(&self, off: u64) -> (usize, usize) {
        debug_assert!(off >= self.start && off < self.end());
        let page = self.rel_pages(off);
        let idx = self.ends.partition_point(|&e| e <= page);
        let run_start = if idx == 0 { 0 } else { self.ends[idx - 1] };
        let in_run = (off - self.start - run_start as u64 * P) as usize;
        (idx, in_run)
    }

    /// Is the page holding `off` in memory?
    pub fn is_mapped_at(&self, off: u64) -> bool {
        off >= self.start && off < self.end() && !is_hole(&self.runs[self.locate(off).0])
    }

    /// End of the stretch of memory runs that contains `off` (`off` must be mapped).
    pub fn piece_end(&self, off: u64) -> u64 {
        let (mut idx, _) = self.locate(off);
        while idx + 1 < self.runs.len() && !is_hole(&self.runs[idx + 1]) {
            idx += 1;
        }
        self.start + self.ends[idx] as u64 * P
    }

    /// Visit the memory stretches of the extent within `r`, in order.
    pub fn for_each_mapped(&self, r: ByteRange, mut f: impl FnMut(ByteRange)) {
        let r = r.intersect(self.range());
        if r.is_empty() {
            return;
        }
        let (s, e) = (r.start(), r.end());
        let (mut idx, _) = self.locate(s);
        let mut pos = self.start
            + if idx == 0 {
                0
            } else {
                self.ends[idx - 1] as u64 * P
            };
        while idx < self.runs.len() && pos < e {
            let r = self.runs[idx];
            let r_end = pos + r.pages as u64 * P;
            if !is_hole(&r) {
                f(ByteRange::new(pos.max(s), r_end.min(e)));
            }
            pos = r_end;
            idx += 1;
        }
    }

    /// Visit the pieces of `[off, off+len)` run by run as (pointer, length). Panics on a hole:
    /// callers only touch ranges that are UPTODATE, hence mapped.
    fn for_each_piece(&self, off: u64, len: usize, mut f: impl FnMut(*mut u8, usize)) {
        assert!(
            off >= self.start && off + len as u64 <= self.end(),
            "range outside the extent"
        );
        if len == 0 {
            return;
        }
        let (mut idx, mut in_run) = self.locate(off);
        let mut left = len;
        while left > 0 {
            let r = self.runs[idx];
            assert!(!is_hole(&r), "access to an unmapped page of an extent");
            let n = (r.bytes() - in_run).min(left);
            // SAFETY: in_run + n <= r.bytes(), so the pointer stays inside the run.
            let p = unsafe { self.pool.run_ptr(r).add(in_run) };
            f(p, n);
            left -= n;
            idx += 1;
            in_run = 0;
        }
    }
}

impl ExtentPtr {
    pub fn new(buf: ExtentBuf) -> ExtentPtr {
        ExtentPtr(Arc::new(buf))
    }

    pub fn start(&self) -> u64 {
        self.0.start
    }

    pub fn len(&self) -> u64 {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    pub fn end(&self) -> u64 {
        self.0.end()
    }

    /// The file range the extent covers, holes included.
    pub fn range(&self) -> ByteRange {
        self.0.range()
    }

    pub fn runs(&self) -> &[Run] {
        &self.0.runs
    }

    /// End of the memory stretch containing `off` (reads and writes stop there).
    pub fn piece_end(&self, off: u64) -> u64 {
        self.0.piece_end(off)
    }

    /// True if only the holder of this pointer references the extent.
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    pub fn mark_referenced(&self) {
        if !self.0.referenced.load(Ordering::Relaxed) {
            self.0.referenced.store(true, Ordering::Relaxed);
        }
    }

    /// CLOCK: return the reference bit and clear it.
    pub fn take_referenced(&self) -> bool {
        self.0.referenced.swap(false, Ordering::Relaxed)
    }

    /// `[off, off+len)` as one slice, if it lies inside one contiguous run.
    ///
    /// # Safety
    /// The caller must keep writers out of the range for the slice's lifetime: hold LOCKED or
    /// WRITEBACK over it in the inode's extent state tree.
    pub unsafe fn slice(&self, off: u64, len: usize) -> Option<&[u8]> {
        if len == 0 {
            return Some(&[]);
        }
        let (idx, in_run) = self.0.locate(off);
        let r = self.0.runs[idx];
        if is_hole(&r) || in_run + len > r.bytes() {
            return None;
        }
        // SAFETY: `r` is a memory run (not a hole) and in_run + len <= r.bytes(), so the `len`
        // bytes from run_ptr(r) + in_run lie inside one run of the pool's mapping, which the Arc
        // in `self.0` keeps mapped for as long as `&self` (hence the slice) lives. Pool pages are
        // always initialized (anonymous mmap is zero-filled). No writer changes them meanwhile:
        // that is the caller's LOCKED/WRITEBACK promise.
        Some(unsafe { std::slice::from_raw_parts(self.0.pool.run_ptr(r).add(in_run), len) })
    }

    /// `[off, off+len)` as one mutable slice, if it lies inside one contiguous run.
    ///
    /// # Safety
    /// The caller must hold LOCKED over the range, and not also hold another view of it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, off: u64, len: usize) -> Option<&mut [u8]> {
        if len == 0 {
            return Some(&mut []);
        }
        let (idx, in_run) = self.0.locate(off);
        let r = self.0.runs[idx];
        if is_hole(&r) || in_run + len > r.bytes() {
            return None;
        }
        // SAFETY: as in `slice`, the bytes lie inside one run of the mapping, which outlives the
        // borrow of `self`; that nobody else reads or writes them while the slice lives is the
        // caller's LOCKED (and no other view) promise.
        Some(unsafe { std::slice::from_raw_parts_mut(self.0.pool.run_ptr(r).add(in_run), len) })
    }

    /// Copy `src` into the file range starting at `off` (scatter over runs).
    ///
    /// # Safety
    /// The caller holds LOCKED over `[off, off + src.len())`.
    pub unsafe fn copy_in(&self, off: u64, src: &[u8]) {
        let mut done = 0;
        self.0.for_each_piece(off, src.len(), |p, n| {
            // SAFETY: for_each_piece checked the range is inside the extent and hands out `p`
            // valid for `n` bytes of one run; the pieces add up to src.len(), so done + n <=
            // src.len(). Pool memory and `src` cannot overlap (`src` is a borrowed slice and the
            // caller's LOCKED keeps every other view of these pool bytes away).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(done), p, n) };
            done += n;
        });
    }

    /// Copy the file range starting at `off` into `dst` (gather over runs).
    ///
    /// # Safety
    /// The caller holds LOCKED or WRITEBACK over `[off, off + dst.len())`.
    pub unsafe fn copy_out(&self, off: u64, dst: &mut [u8]) {
        let mut done = 0;
        self.0.for_each_piece(off, dst.len(), |p, n| {
            // SAFETY: `p` is valid for `n` bytes of one run (for_each_piece checked the range)
            // and the pieces add up to dst.len(), so done + n <= dst.len(); `dst` is a unique
            // borrow, so it does not overlap the pool bytes, which no writer changes meanwhile
            // (the caller's LOCKED or WRITEBACK).
            unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(done), n) };
            done += n;
        });
    }

    /// Zero `[off, off+len)`.
    ///
    /// # Safety
    /// The caller holds LOCKED over the range.
    pub unsafe fn zero(&self, off: u64, len: usize) {
        // SAFETY: for_each_piece checked the range is inside the extent and hands out `p` valid
        // for `n` bytes of one run; the caller's LOCKED makes this the only access to them.
        self.0
            .for_each_piece(off, len, |p, n| unsafe { std::ptr::write_bytes(p, 0, n) });
    }

    /// Append iovecs covering `[off, off+len)` to `out` (for preadv/pwritev).
    ///
    /// # Safety
    /// The iovecs are used under the same contract as `copy_in` (preadv into them) or
    /// `copy_out` (pwritev from them), and only while this pointer is alive.
    pub unsafe fn iovecs(&self, off: u64, len: usize, out: &mut Vec<libc::iovec>) {
        self.0.for_each_piece(off, len, |p, n| {
            out.push(libc::iovec {
                iov_base: p as *mut libc::c_void,
                iov_len: n,
            })
        });
    }

    pub fn metadata_bytes(&self) -> usize {
        self.0.metadata_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{HugePagePolicy, PoolConfig};

    fn pool() -> Arc<PagePool> {
        let mut cfg = PoolConfig::new(8 << 20, HugePagePolicy::Off);
        cfg.region_size = 4 << 20;
        Arc::new(PagePool::new(&cfg).unwrap())
    }

    #[test]
    fn copy_across_runs_and_slices() {
        let pool = pool();
        let a = pool.alloc_run(2).unwrap();
        let _gap = pool.alloc_run(1).unwrap();
        let b = pool.alloc_run(3).unwrap();
        let ptr = ExtentPtr::new(ExtentBuf::new(pool.clone(), 10 * P, vec![a, b]));
        assert_eq!(ptr.len(), 5 * P);
        let data: Vec<u8> = (0..5 * P).map(|i| (i % 251) as u8).collect();
        // SAFETY: `ptr` was just built here and no state tree or other thread knows it, so this
        // test is the only reader and writer of its bytes, which is all the accessors' contracts
        // ask; the slices are dropped before the next write.
        unsafe {
            ptr.copy_in(10 * P, &data);
            let mut back = vec![0u8; data.len()];
            ptr.copy_out(10 * P, &mut back);
            assert_eq!(back, data);
            // Inside run a: one slice; straddling a/b: none.
            assert_eq!(ptr.slice(10 * P + 5, 100).unwrap(), &data[5..105]);
            assert!(ptr.slice(11 * P, 2 * P as usize).is_none());
            assert_eq!(
                ptr.slice(12 * P, 3 * P as usize).unwrap(),
                &data[2 * P as usize..]
            );
            let mut iov = Vec::new();
            ptr.iovecs(11 * P, 2 * P as usize, &mut iov);
            assert_eq!(iov.len(), 2);
            ptr.zero(10 * P + 1, 10);
            let mut z = vec![1u8; 10];
            ptr.copy_out(10 * P + 1, &mut z);
            assert_eq!(z, vec![0u8; 10]);
        }
    }

    #[test]
    fn pages_return_to_pool_on_last_drop() {
        let pool = pool();
        let free0 = pool.free_pages();
        let r = pool.alloc_run(4).unwrap();
        let ptr = ExtentPtr::new(ExtentBuf::new(pool.clone(), 0, vec![r]));
        let other = ptr.clone();
        assert!(!ptr.is_unique());
        drop(ptr);
        assert_eq!(pool.free_pages(), free0 - 4);
        drop(other);
        assert_eq!(pool.free_pages(), free0);
    }

    #[test]
    fn punch_fill_and_trim() {
        let pool = pool();
        let free0 = pool.free_pages();
        let r = pool.alloc_run(8).unwrap();
        let mut buf = ExtentBuf::new(pool.clone(), 0, vec![r]);
        // A hole in the middle: three runs, pages freed.
        assert_eq!(buf.punch(ByteRange::new(2 * P, 4 * P)), 2 * P);
        assert_eq!(buf.runs().len(), 3);
        assert_eq!(buf.mapped_bytes(), 6 * P);
        assert!(buf.is_mapped_at(P) && !buf.is_mapped_at(3 * P) && buf.is_mapped_at(4 * P));
        assert_eq!(buf.piece_end(0), 2 * P);
        let mut seen = vec![];
        buf.for_each_mapped(ByteRange::new(0, 8 * P), |m| {
            seen.push((m.start() / P, m.end() / P))
        });
        assert_eq!(seen, vec![(0, 2), (4, 8)]);
        // Fill it again with other memory.
        let f = pool.alloc_run(2).unwrap();
        buf.fill_hole(2 * P, &[f]);
        assert_eq!(buf.mapped_bytes(), 8 * P);
        assert_eq!(buf.piece_end(0), 8 * P);
        // Punching at the ends trims the extent.
        buf.punch(ByteRange::new(0, P));
        assert_eq!((buf.start(), buf.len()), (P, 7 * P));
        buf.punch(ByteRange::new(6 * P, 8 * P));
        assert_eq!((buf.start(), buf.end()), (P, 6 * P));
        drop(buf);
        assert_eq!(pool.free_pages(), free0);
    }

    #[test]
    fn append_with_a_gap() {
        let pool = pool();
        let a = pool.alloc_run(1).unwrap();
        let b = pool.alloc_run(1).unwrap();
        let mut left = ExtentBuf::new(pool.clone(), 0, vec![a]);
        let right = ExtentBuf::new(pool.clone(), 3 * P, vec![b]);
        left.append(2 * P, right);
        assert_eq!(
            (left.start(), left.len(), left.mapped_bytes()),
            (0, 4 * P, 2 * P)
        );
        assert!(!left.is_mapped_at(P) && left.is_mapped_at(3 * P));
    }

    #[test]
    fn grow_in_place() {
        let pool = pool();
        let r = pool.alloc_run(2).unwrap();
        let mut buf = ExtentBuf::new(pool.clone(), 0, vec![r]);
        assert!(buf.try_grow_in_place(3));
        assert_eq!(buf.runs().len(), 1);
        assert_eq!(buf.len(), 5 * P);
    }
}
