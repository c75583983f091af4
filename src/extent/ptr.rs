//! `ExtentPtr`: a refcounted mapping of one page-aligned file range onto pool pages.
//!
//! This is the only way code touches cached bytes (like kmap/kunmap): it owns one or more
//! contiguous [`Run`]s of the [`PagePool`], in file order, that together hold exactly
//! `[start, start + len)` of the file. The pages go back to the pool when the last reference is
//! dropped (the extent map holds one reference; readers and writeback hold others briefly).
//!
//! Invariants:
//! - `start` and `len` are multiples of `PAGE_SIZE`; the runs' pages add up to `len`.
//! - It carries no dirty/lock/writeback state: that lives only in the inode's extent state tree.
//!   Who may read or write the bytes is decided there: a writer holds LOCKED over the bytes it
//!   changes; readers hold LOCKED, or WRITEBACK (which keeps writers out), over what they read.
//!   The `unsafe` accessors below state that contract.
//! - Its shape (start, len, runs) only changes while the map holds the sole reference
//!   (`Arc::get_mut`), so nobody can observe a shape change.

use crate::pool::{PagePool, Run, PAGE_SIZE};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The owned pages of one extent. Reached through [`ExtentPtr`].
pub struct ExtentBuf {
    pool: Arc<PagePool>,
    start: u64,
    len: u64,
    runs: Vec<Run>,
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
            self.pool.free_run(run);
        }
    }
}

impl ExtentBuf {
    /// A new extent over `runs` (taken over: they are freed when it drops).
    pub fn new(pool: Arc<PagePool>, start: u64, runs: Vec<Run>) -> ExtentBuf {
        debug_assert_eq!(start % PAGE_SIZE as u64, 0);
        let len = runs.iter().map(|r| r.bytes() as u64).sum();
        ExtentBuf {
            pool,
            start,
            len,
            runs,
            referenced: AtomicBool::new(true),
        }
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

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Grow by `extra_pages` at the end, in place in the pool if the pages after the last run
    /// are free. Only through `Arc::get_mut` (sole owner).
    pub(crate) fn try_grow_in_place(&mut self, extra_pages: u32) -> bool {
        let Some(last) = self.runs.last().copied() else {
            return false;
        };
        match self.pool.try_grow(last, extra_pages) {
            Some(grown) => {
                *self.runs.last_mut().unwrap() = grown;
                self.len += extra_pages as u64 * PAGE_SIZE as u64;
                true
            }
            None => false,
        }
    }

    /// Append another extent that starts where this one ends (taking its runs).
    /// Adjacent runs that are contiguous in the pool are fused.
    pub(crate) fn absorb(&mut self, mut next: ExtentBuf) {
        debug_assert_eq!(self.end(), next.start);
        let runs = std::mem::take(&mut next.runs);
        for r in runs {
            let fused = self
                .runs
                .last()
                .and_then(|last| self.pool.merge_runs(*last, r));
            match fused {
                Some(f) => *self.runs.last_mut().unwrap() = f,
                None => self.runs.push(r),
            }
        }
        self.len += next.len;
        next.len = 0;
    }

    /// Cut the extent at page-aligned file offset `at` (start < at < end): self keeps
    /// `[start, at)`, the returned buffer holds `[at, end)`.
    pub(crate) fn split_off(&mut self, at: u64) -> ExtentBuf {
        debug_assert!(at > self.start && at < self.end() && at.is_multiple_of(PAGE_SIZE as u64));
        let mut pages_left = ((at - self.start) / PAGE_SIZE as u64) as u32;
        let mut idx = 0;
        while pages_left >= self.runs[idx].pages {
            pages_left -= self.runs[idx].pages;
            idx += 1;
            if pages_left == 0 {
                break;
            }
        }
        let mut tail: Vec<Run> = Vec::with_capacity(self.runs.len() - idx + 1);
        if pages_left > 0 {
            let r = self.runs[idx];
            self.runs[idx] = Run {
                first: r.first,
                pages: pages_left,
            };
            tail.push(Run {
                first: r.first + pages_left,
                pages: r.pages - pages_left,
            });
            idx += 1;
        }
        tail.extend(self.runs.drain(idx..));
        let tail_len = self.end() - at;
        self.len = at - self.start;
        ExtentBuf {
            pool: self.pool.clone(),
            start: at,
            len: tail_len,
            runs: tail,
            referenced: AtomicBool::new(self.referenced.load(Ordering::Relaxed)),
        }
    }

    /// Heap bytes this extent costs (the Arc'd struct and its run list).
    pub fn metadata_bytes(&self) -> usize {
        std::mem::size_of::<ExtentBuf>() + 16 + self.runs.capacity() * std::mem::size_of::<Run>()
    }

    /// Where file offset `off` (inside the extent) lives: (run index, byte offset in the run).
    fn locate(&self, off: u64) -> (usize, usize) {
        debug_assert!(off >= self.start && off < self.end());
        let mut rel = (off - self.start) as usize;
        for (i, r) in self.runs.iter().enumerate() {
            if rel < r.bytes() {
                return (i, rel);
            }
            rel -= r.bytes();
        }
        unreachable!("offset inside the extent is inside one of its runs")
    }

    /// Visit the pieces of `[off, off+len)` run by run as (pointer, length).
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

    pub fn runs(&self) -> &[Run] {
        &self.0.runs
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
        if in_run + len > r.bytes() {
            return None;
        }
        Some(std::slice::from_raw_parts(
            self.0.pool.run_ptr(r).add(in_run),
            len,
        ))
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
        if in_run + len > r.bytes() {
            return None;
        }
        Some(std::slice::from_raw_parts_mut(
            self.0.pool.run_ptr(r).add(in_run),
            len,
        ))
    }

    /// Copy `src` into the file range starting at `off` (scatter over runs).
    ///
    /// # Safety
    /// The caller holds LOCKED over `[off, off + src.len())`.
    pub unsafe fn copy_in(&self, off: u64, src: &[u8]) {
        let mut done = 0;
        self.0.for_each_piece(off, src.len(), |p, n| {
            std::ptr::copy_nonoverlapping(src.as_ptr().add(done), p, n);
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
            std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(done), n);
            done += n;
        });
    }

    /// Zero `[off, off+len)`.
    ///
    /// # Safety
    /// The caller holds LOCKED over the range.
    pub unsafe fn zero(&self, off: u64, len: usize) {
        self.0
            .for_each_piece(off, len, |p, n| std::ptr::write_bytes(p, 0, n));
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

    const P: u64 = PAGE_SIZE as u64;

    #[test]
    fn copy_across_runs_and_slices() {
        let pool = pool();
        let a = pool.alloc_run(2).unwrap();
        let _gap = pool.alloc_run(1).unwrap();
        let b = pool.alloc_run(3).unwrap();
        let ptr = ExtentPtr::new(ExtentBuf::new(pool.clone(), 10 * P, vec![a, b]));
        assert_eq!(ptr.len(), 5 * P);
        let data: Vec<u8> = (0..5 * P).map(|i| (i % 251) as u8).collect();
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
    fn split_and_absorb() {
        let pool = pool();
        let free0 = pool.free_pages();
        let a = pool.alloc_run(3).unwrap();
        let b = pool.alloc_run(2).unwrap();
        let mut buf = ExtentBuf::new(pool.clone(), 0, vec![a, b]);
        // Split inside run a.
        let tail = buf.split_off(P);
        assert_eq!((buf.start(), buf.len(), buf.runs().len()), (0, P, 1));
        assert_eq!((tail.start(), tail.len(), tail.runs().len()), (P, 4 * P, 2));
        // Split exactly at the run boundary.
        let mut tail = tail;
        let tail2 = tail.split_off(3 * P);
        assert_eq!(
            tail.runs(),
            &[Run {
                first: a.first + 1,
                pages: 2
            }]
        );
        assert_eq!(tail2.runs(), &[b]);
        // Re-absorb: contiguous runs fuse back into one.
        buf.absorb(tail);
        assert_eq!(buf.runs(), &[a]);
        buf.absorb(tail2);
        assert_eq!(buf.len(), 5 * P);
        drop(buf);
        assert_eq!(pool.free_pages(), free0);
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
