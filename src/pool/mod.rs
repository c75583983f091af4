//! Page pool: one large anonymous mapping of fixed capacity, handed out in 4 KiB pages as
//! contiguous [`Run`]s identified by global page index.
//!
//! Owns the mapping (hugetlb, THP-advised or plain 4 KiB, chosen once at construction and
//! never unmapped or returned piecemeal until the pool is dropped) and the allocator state.
//! The capacity (a multiple of 2 MiB) is split into regions of `region_size` bytes (the last
//! may be smaller); each region has its own buddy allocator ([`buddy`]) behind a `Mutex`, so a
//! run never crosses a region boundary. Regions lie back to back in ONE virtual mapping, so
//! `run_ptr(first) + bytes` is valid even for a caller-merged run spanning two regions.
//! Placement: regions are tried lowest first and each buddy takes the lowest-addressed free
//! block of the smallest fitting order, keeping lower halves on split, so equal power-of-two
//! allocations on a fresh pool are address-contiguous and holes are refilled lowest first.
//! Invariants: `free` (atomic) == sum of the regions' free pages whenever no call is in flight;
//! each region's `avail` atomic mirrors its buddy's non-empty-order mask (written under lock,
//! read lock-free only as a hint); the pool never dereferences page memory.

mod buddy;

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use buddy::{ceil_log2, Buddy};

pub const PAGE_SIZE: usize = 4096;
pub const PAGE_SHIFT: u32 = 12;

const HUGE_2M: usize = 2 << 20;
const DEFAULT_REGION_SIZE: usize = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePagePolicy {
    /// hugetlb, else THP, else 4k.
    Auto,
    /// hugetlb or error.
    Hugetlb,
    /// THP (madvise), falling back to 4k if THP is unavailable.
    Thp,
    /// Plain 4 KiB pages.
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    Hugetlb,
    Thp,
    Small,
}

impl Backing {
    pub fn as_str(&self) -> &'static str {
        match self {
            Backing::Hugetlb => "hugetlb",
            Backing::Thp => "thp",
            Backing::Small => "4k",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Bytes; rounded up to a multiple of 2 MiB.
    pub capacity: usize,
    pub policy: HugePagePolicy,
    /// Bytes per region; rounded up to a multiple of 2 MiB.
    pub region_size: usize,
}

impl PoolConfig {
    pub fn new(capacity: usize, policy: HugePagePolicy) -> Self {
        PoolConfig {
            capacity,
            policy,
            region_size: DEFAULT_REGION_SIZE,
        }
    }
}

/// A contiguous run of pool pages, by global page index. Never crosses a region boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Run {
    pub first: u32,
    pub pages: u32,
}

impl Run {
    pub fn bytes(&self) -> usize {
        (self.pages as usize) << PAGE_SHIFT
    }
    pub fn end(&self) -> u32 {
        self.first + self.pages
    }
}

struct Region {
    /// Global index of the region's first page.
    base: u32,
    pages: u32,
    /// Lock-free hint: mirror of `buddy.avail()`.
    avail: AtomicU32,
    buddy: Mutex<Buddy>,
}

impl Region {
    fn lock(&self) -> MutexGuard<'_, Buddy> {
        // A panic while holding the lock (only possible via debug assertions in callers after
        // the lock is released, or a bug) leaves the buddy consistent: every mutation is
        // completed before any check can fail.
        self.buddy.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct PagePool {
    /// Keeps the mapping alive; never touched after construction.
    _map: memmap2::MmapMut,
    /// First byte of page 0 (2 MiB aligned for hugetlb/THP).
    base: NonNull<u8>,
    /// Start and length of the whole mapping (for smaps matching).
    map_range: (usize, usize),
    backing: Backing,
    capacity_pages: usize,
    region_pages: u32,
    regions: Vec<Region>,
    free: AtomicUsize,
    max_run_pages: u32,
    metadata_bytes: usize,
    /// Bytes given back to the kernel by [`PagePool::release_free`], in total.
    released: AtomicU64,
}

// SAFETY: `base` points into the mapping owned by `_map`, which lives as long as the pool. The
// pool itself never reads or writes page memory; all allocator state is behind Mutexes and
// atomics. Synchronizing access to the memory of an allocated run is the owner's job.
unsafe impl Send for PagePool {}
// SAFETY: the same reasons make `&PagePool` safe to share: every `&self` method touches only Mutex-
// or atomic-guarded allocator state and `base`/`capacity_pages`, which never change after new();
// run_ptr only computes an address.
unsafe impl Sync for PagePool {}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn map_hugetlb(len: usize) -> io::Result<memmap2::MmapMut> {
    memmap2::MmapOptions::new()
        .len(len)
        .huge(Some(21))
        .map_anon()
}

/// THP is usable unless sysfs says "[never]" (a missing file means we just try madvise).
fn thp_enabled_never() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map(|s| s.contains("[never]"))
        .unwrap_or(false)
}

impl PagePool {
    pub fn new(cfg: &PoolConfig) -> io::Result<PagePool> {
        if cfg.capacity == 0 {
            return Err(invalid("page pool capacity must be > 0"));
        }
        if cfg.region_size == 0 {
            return Err(invalid("page pool region_size must be > 0"));
        }
        let capacity = cfg
            .capacity
            .checked_next_multiple_of(HUGE_2M)
            .ok_or_else(|| invalid("page pool capacity too large"))?;
        let region_size = cfg
            .region_size
            .checked_next_multiple_of(HUGE_2M)
            .ok_or_else(|| invalid("page pool region_size too large"))?
            .min(capacity);
        let capacity_pages = capacity >> PAGE_SHIFT;
        if capacity_pages > u32::MAX as usize {
            return Err(invalid("page pool capacity exceeds 2^32 pages"));
        }
        let region_pages_usize = region_size >> PAGE_SHIFT;
        if region_pages_usize > 1 << 31 {
            return Err(invalid("page pool region_size exceeds 2^31 pages"));
        }
        let region_pages = region_pages_usize as u32;

        // Choose and create the backing.
        let mut hugetlb_err = None;
        let mut mapped = None;
        if matches!(cfg.policy, HugePagePolicy::Auto | HugePagePolicy::Hugetlb) {
            match map_hugetlb(capacity) {
                Ok(mut m) => {
                    let p = m.as_mut_ptr();
                    let start = p as usize;
                    mapped = Some((m, p, (start, capacity), Backing::Hugetlb));
                }
                Err(e) => {
                    if cfg.policy == HugePagePolicy::Hugetlb {
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "hugetlb mapping of {} MiB failed: {e} \
                                 (are enough pages reserved in /proc/sys/vm/nr_hugepages?)",
                                capacity >> 20
                            ),
                        ));
                    }
                    hugetlb_err = Some(e);
                }
            }
        }
        let (map, base, map_range, backing) = match mapped {
            Some(m) => m,
            None => {
                let want_thp = matches!(cfg.policy, HugePagePolicy::Auto | HugePagePolicy::Thp);
                // For THP, over-map by 2 MiB and start at the first 2 MiB boundary so that
                // every 2 MiB of the pool can be a huge page. The slack is never touched.
                let len = if want_thp {
                    capacity + HUGE_2M
                } else {
                    capacity
                };
                let mut m = memmap2::MmapOptions::new().len(len).map_anon()?;
                let p = m.as_mut_ptr();
                let start = p as usize;
                let mut backing = Backing::Small;
                if want_thp {
                    if thp_enabled_never() {
                        tracing::warn!("page pool: transparent hugepages disabled; using 4k");
                    } else {
                        // Must precede the first touch of the memory; never populate.
                        match m.advise(memmap2::Advice::HugePage) {
                            Ok(()) => backing = Backing::Thp,
                            Err(e) => tracing::warn!("page pool: madvise(HUGEPAGE): {e}; using 4k"),
                        }
                    }
                }
                let base = if backing == Backing::Thp {
                    let skip = start.next_multiple_of(HUGE_2M) - start;
                    // SAFETY: skip < 2 MiB and the mapping is capacity + 2 MiB long.
                    unsafe { p.add(skip) }
                } else {
                    p
                };
                (m, base, (start, len), backing)
            }
        };
        let base = NonNull::new(base).expect("mmap returned null");

        let mut regions = Vec::new();
        let mut max_run_pages = 0u32;
        let mut metadata_bytes = std::mem::size_of::<PagePool>();
        let mut first = 0usize;
        while first < capacity_pages {
            let pages = region_pages.min((capacity_pages - first) as u32);
            let b = Buddy::new(pages);
            max_run_pages = max_run_pages.max(1 << b.max_order());
            metadata_bytes += b.metadata_bytes() + std::mem::size_of::<Region>();
            regions.push(Region {
                base: first as u32,
                pages,
                avail: AtomicU32::new(b.avail()),
                buddy: Mutex::new(b),
            });
            first += pages as usize;
        }

        match hugetlb_err {
            Some(e) => tracing::debug!(
                "page pool: {} MiB in {} region(s), backing {} (hugetlb unavailable: {e})",
                capacity >> 20,
                regions.len(),
                backing.as_str()
            ),
            None => tracing::debug!(
                "page pool: {} MiB in {} region(s), backing {}",
                capacity >> 20,
                regions.len(),
                backing.as_str()
            ),
        }

        Ok(PagePool {
            _map: map,
            base,
            map_range,
            backing,
            capacity_pages,
            region_pages,
            regions,
            free: AtomicUsize::new(capacity_pages),
            max_run_pages,
            metadata_bytes,
            released: AtomicU64::new(0),
        })
    }

    /// Give the memory of whole free 2 MiB blocks back to the kernel (`MADV_DONTNEED`), e.g.
    /// after `ctl drop` or once the pool has been idle: the pool's resident size falls to
    /// what is allocated, except partly used 2 MiB blocks, which are kept whole so that no
    /// huge page is ever split. Each piece (at most 16 MiB) is claimed from its region's
    /// allocator for the length of its madvise, so no lock is held across the system call
    /// (an allocation meanwhile may find less free memory than there is). Given-back pages
    /// read as zero and are allocated as before; THP and hugetlb fault in huge pages again.
    /// Returns the bytes given back by this call.
    pub fn release_free(&self) -> u64 {
        const ORDER_2M: u32 = (HUGE_2M >> PAGE_SHIFT).trailing_zeros();
        const PIECE: u32 = (16 << 20) >> PAGE_SHIFT;
        let mut released = 0u64;
        for r in &self.regions {
            // Region bases and free blocks of order >= 9 are 2 MiB aligned (in page index
            // and, for THP and hugetlb, in memory), so every piece is too.
            let mut cursor = 0u32;
            loop {
                let mut b = r.lock();
                let Some((h, o)) = b.next_free_block(cursor, ORDER_2M) else {
                    break;
                };
                let a = h.max(cursor);
                let end = (h + (1 << o)).min(a + PIECE);
                if !b.carve(a, end) {
                    debug_assert!(false, "free block {h}+2^{o} not carvable");
                    break;
                }
                self.publish(r, &b);
                drop(b);
                let piece = Run {
                    first: r.base + a,
                    pages: end - a,
                };
                self.free.fetch_sub(piece.pages as usize, Ordering::Relaxed);
                // SAFETY: the piece lies inside our mapping (run_ptr checks) and is claimed
                // from the allocator right now, so no ExtentPtr or caller holds or touches
                // it; MADV_DONTNEED on private anonymous (or hugetlb, 2 MiB aligned) memory
                // only drops its contents, the mapping stays valid.
                let rc = unsafe {
                    rustix::mm::madvise(
                        self.run_ptr(piece).cast(),
                        piece.bytes(),
                        rustix::mm::Advice::LinuxDontNeed,
                    )
                };
                match rc {
                    Ok(()) => released += piece.bytes() as u64,
                    Err(e) => tracing::debug!(
                        "page pool: madvise(DONTNEED) of {piece:?}: {}",
                        io::Error::from(e)
                    ),
                }
                let mut b = r.lock();
                let ok = b.free(a, end);
                self.publish(r, &b);
                drop(b);
                debug_assert!(ok);
                self.free.fetch_add(piece.pages as usize, Ordering::Relaxed);
                cursor = end;
            }
        }
        self.released.fetch_add(released, Ordering::Relaxed);
        released
    }

    /// Bytes given back to the kernel so far (by every [`PagePool::release_free`]).
    pub fn released_bytes(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }

    /// Bytes of the pool's mapping resident in memory now (`Rss` of its VMAs in
    /// /proc/self/smaps). Reads and parses smaps: for stats and tests only.
    pub fn resident_bytes(&self) -> u64 {
        match std::fs::read_to_string("/proc/self/smaps") {
            Ok(s) => smaps_bytes(&s, self.map_range, "Rss:"),
            Err(_) => 0,
        }
    }

    pub fn backing(&self) -> Backing {
        self.backing
    }

    pub fn capacity_pages(&self) -> usize {
        self.capacity_pages
    }

    pub fn free_pages(&self) -> usize {
        self.free.load(Ordering::Relaxed)
    }

    pub fn used_pages(&self) -> usize {
        self.capacity_pages - self.free_pages()
    }

    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// Largest run `alloc_run` can ever return: the largest power-of-two block of any region
    /// (`region_size / 4096` rounded down to a power of two).
    pub fn max_run_pages(&self) -> u32 {
        self.max_run_pages
    }

    /// Pages per region (the last region may have fewer). Extra helper, not in the brief.
    pub fn region_pages(&self) -> u32 {
        self.region_pages
    }

    /// `Some(a ∪ b)` if `b` starts where `a` ends and both lie in the same region (so the
    /// result is a valid `Run` for every pool call); None otherwise. Extra helper.
    pub fn merge_runs(&self, a: Run, b: Run) -> Option<Run> {
        if a.end() == b.first
            && a.pages > 0
            && b.pages > 0
            && a.first / self.region_pages == (b.end() - 1) / self.region_pages
        {
            Some(Run {
                first: a.first,
                pages: a.pages + b.pages,
            })
        } else {
            None
        }
    }

    #[inline]
    fn region_of(&self, page: u32) -> usize {
        (page / self.region_pages) as usize
    }

    #[inline]
    fn publish(&self, r: &Region, b: &Buddy) {
        r.avail.store(b.avail(), Ordering::Relaxed);
    }

    /// Exactly `pages` contiguous pages (pages >= 1), or None if no free block is large enough.
    /// Regions are tried lowest first, so allocation is lowest-address-first pool-wide.
    pub fn alloc_run(&self, pages: u32) -> Option<Run> {
        if pages == 0 || pages > self.max_run_pages {
            return None;
        }
        let k = ceil_log2(pages);
        for r in &self.regions {
            if r.avail.load(Ordering::Relaxed) >> k == 0 {
                continue;
            }
            let mut b = r.lock();
            if let Some(h) = b.alloc(pages) {
                self.publish(r, &b);
                drop(b);
                self.free.fetch_sub(pages as usize, Ordering::Relaxed);
                return Some(Run {
                    first: r.base + h,
                    pages,
                });
            }
        }
        None
    }

    /// `pages` pages as one or more runs, fewest/largest first, appended to `out`; all or
    /// nothing (on failure nothing stays allocated and `out` is unchanged).
    ///
    /// Greedy: a single run if possible, else repeatedly the largest free block anywhere (or
    /// the remainder, if smaller). Address-adjacent pieces from the same region are merged.
    /// Single-threaded, this succeeds iff `pages <= free_pages()`.
    pub fn alloc_runs(&self, pages: u32, out: &mut Vec<Run>) -> bool {
        if pages == 0 {
            return true;
        }
        if pages as usize > self.free_pages() {
            return false;
        }
        if let Some(run) = self.alloc_run(pages) {
            out.push(run);
            return true;
        }
        let start = out.len();
        let mut remaining = pages;
        while remaining > 0 {
            // Region with the largest free block (lock-free hint).
            let mut best: Option<(usize, u32)> = None;
            for (i, r) in self.regions.iter().enumerate() {
                let a = r.avail.load(Ordering::Relaxed);
                if a != 0 {
                    let o = 31 - a.leading_zeros();
                    if best.is_none_or(|(_, bo)| o > bo) {
                        best = Some((i, o));
                    }
                }
            }
            let Some((ri, _)) = best else {
                // Out of memory (or raced away): roll back.
                for run in out.drain(start..) {
                    self.free_run(run);
                }
                return false;
            };
            let r = &self.regions[ri];
            let mut b = r.lock();
            let a = b.avail();
            if a == 0 {
                self.publish(r, &b);
                continue;
            }
            let take = remaining.min(1 << (31 - a.leading_zeros()));
            let h = b.alloc(take).expect("block of this order is available");
            self.publish(r, &b);
            drop(b);
            self.free.fetch_sub(take as usize, Ordering::Relaxed);
            remaining -= take;
            let run = Run {
                first: r.base + h,
                pages: take,
            };
            let n = out.len();
            if n > start && out[n - 1].end() == run.first && run.first != r.base {
                out[n - 1].pages += take;
            } else {
                out.push(run);
            }
        }
        true
    }

    /// Extend `run` in place by `extra` pages if the pages right after it are free and in the
    /// same region: returns the grown run (first unchanged). Otherwise None and nothing changes.
    pub fn try_grow(&self, run: Run, extra: u32) -> Option<Run> {
        if run.pages == 0 || run.first as u64 + run.pages as u64 > self.capacity_pages as u64 {
            tracing::error!("page pool: try_grow of invalid run {run:?}");
            debug_assert!(false, "try_grow of invalid run {run:?}");
            return None;
        }
        if extra == 0 {
            return Some(run);
        }
        let ri = self.region_of(run.end() - 1);
        let r = &self.regions[ri];
        let (a, new_end) = (
            run.end() - r.base,
            run.end() as u64 - r.base as u64 + extra as u64,
        );
        if new_end > r.pages as u64 {
            return None;
        }
        let mut b = r.lock();
        if !b.all_allocated(a - 1, a) {
            drop(b);
            tracing::error!("page pool: try_grow of unallocated run {run:?}");
            debug_assert!(false, "try_grow of unallocated run {run:?}");
            return None;
        }
        if !b.carve(a, new_end as u32) {
            return None;
        }
        self.publish(r, &b);
        drop(b);
        self.free.fetch_sub(extra as usize, Ordering::Relaxed);
        Some(Run {
            first: run.first,
            pages: run.pages + extra,
        })
    }

    /// Return a run (or any sub-run of an allocated run: callers may free pieces separately).
    /// A run spanning regions is split at the boundaries. Freeing pages that are not allocated
    /// is a bug: it is logged, asserts in debug builds, and in release the offending per-region
    /// piece is ignored (nothing is corrupted).
    pub fn free_run(&self, run: Run) {
        if run.pages == 0 {
            return;
        }
        if run.first as u64 + run.pages as u64 > self.capacity_pages as u64 {
            tracing::error!("page pool: free_run of out-of-range run {run:?}");
            debug_assert!(false, "free_run of out-of-range run {run:?}");
            return;
        }
        let mut p = run.first;
        let end = run.end();
        while p < end {
            let r = &self.regions[self.region_of(p)];
            let piece_end = end.min(r.base + r.pages);
            let mut b = r.lock();
            let ok = b.free(p - r.base, piece_end - r.base);
            if ok {
                self.publish(r, &b);
            }
            drop(b);
            if ok {
                self.free
                    .fetch_add((piece_end - p) as usize, Ordering::Relaxed);
            } else {
                tracing::error!(
                    "page pool: free_run {run:?}: pages {p}..{piece_end} not all allocated \
                     (double free?); ignored"
                );
                debug_assert!(false, "double free / free of unallocated pages in {run:?}");
            }
            p = piece_end;
        }
    }

    /// Raw pointer to the first byte of the run. Valid while the pool lives.
    /// Panics if the run lies outside the pool.
    pub fn run_ptr(&self, run: Run) -> *mut u8 {
        assert!(
            run.first as u64 + run.pages as u64 <= self.capacity_pages as u64,
            "run_ptr: {run:?} outside pool"
        );
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.base.as_ptr().add((run.first as usize) << PAGE_SHIFT) }
    }

    /// Bytes of the pool actually backed by huge pages right now: hugetlb -> capacity;
    /// thp -> sum of AnonHugePages of the VMAs overlapping our mapping in /proc/self/smaps
    /// (capped at capacity; a VMA merged with a foreign neighbour could overcount slightly);
    /// 4k -> 0. Reads and parses smaps: for stats only.
    pub fn huge_bytes(&self) -> u64 {
        let cap = (self.capacity_pages as u64) << PAGE_SHIFT;
        match self.backing {
            Backing::Hugetlb => cap,
            Backing::Small => 0,
            Backing::Thp => match std::fs::read_to_string("/proc/self/smaps") {
                Ok(s) => smaps_bytes(&s, self.map_range, "AnonHugePages:").min(cap),
                Err(e) => {
                    tracing::warn!("page pool: reading /proc/self/smaps: {e}");
                    0
                }
            },
        }
    }

    /// Fixed bookkeeping memory of the allocator in bytes.
    pub fn metadata_bytes(&self) -> usize {
        self.metadata_bytes
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        let mut free = 0;
        for r in &self.regions {
            let b = r.lock();
            b.check_invariants();
            assert_eq!(r.avail.load(Ordering::Relaxed), b.avail());
            free += b.free_pages() as usize;
        }
        assert_eq!(free, self.free_pages());
    }
}

/// Sum of the `field` (e.g. `AnonHugePages:`, in kB) of smaps entries overlapping
/// `[start, start + len)`, in bytes.
fn smaps_bytes(smaps: &str, (start, len): (usize, usize), field: &str) -> u64 {
    let end = start + len;
    let mut inside = false;
    let mut total = 0u64;
    for line in smaps.lines() {
        let first = line.split_ascii_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a < end && b > start;
                continue;
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix(field) {
                let kb: u64 = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                total += kb * 1024;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests;
