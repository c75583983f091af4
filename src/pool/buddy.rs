//! Single-region buddy allocator over page indices `0..pages` (region-local).
//!
//! Owns only bookkeeping, never memory: one hierarchical bitset of free block heads per order
//! (`free[o]` bit `i` set <=> block `[i << o, (i + 1) << o)` is a free block of order `o`), a
//! summary mask `avail` of non-empty orders, and an "allocated" bitmap with one bit per page.
//! Everything is sized once at construction; no operation allocates on the heap.
//!
//! Invariants (checked by `check_invariants` in tests):
//! * free blocks are aligned to their size, lie inside `0..pages` and are pairwise disjoint;
//! * no page of a free block is marked allocated, and every page not in a free block is;
//! * two buddies of the same order are never both free (they are always coalesced);
//! * `free_pages` equals the number of pages in free blocks.
//!
//! Placement policy: among the free blocks of the smallest order that fits, the LOWEST-addressed
//! block is taken (find-first-set in the hierarchical bitset, O(levels)); when a block is split,
//! the lower half is kept and the upper halves go to the free sets. Consequently successive
//! equal power-of-two allocations on a fresh region come out address-contiguous, and after
//! churn the allocator keeps refilling the lowest holes first.

/// Maximum number of levels of a hierarchical bitset (64^6 > 2^32 bits).
const MAX_LEVELS: usize = 6;

/// Hierarchical bitset: level 0 holds the bits, level `l + 1` has one bit per non-zero word of
/// level `l`; the top level is a single word.
pub(crate) struct HBitset {
    words: Vec<u64>,
    off: [u32; MAX_LEVELS],
    levels: usize,
}

impl HBitset {
    pub(crate) fn new(bits: usize) -> Self {
        let mut off = [0u32; MAX_LEVELS];
        let mut levels = 0;
        let mut total = 0usize;
        let mut n = bits.max(1);
        loop {
            let words = n.div_ceil(64);
            off[levels] = total as u32;
            total += words;
            levels += 1;
            if words == 1 {
                break;
            }
            n = words;
        }
        HBitset {
            words: vec![0; total],
            off,
            levels,
        }
    }

    #[inline]
    pub(crate) fn test(&self, i: usize) -> bool {
        self.words[i >> 6] & (1u64 << (i & 63)) != 0
    }

    #[inline]
    pub(crate) fn set(&mut self, mut i: usize) {
        for l in 0..self.levels {
            let w = &mut self.words[self.off[l] as usize + (i >> 6)];
            let was = *w;
            *w = was | (1u64 << (i & 63));
            if was != 0 {
                break;
            }
            i >>= 6;
        }
    }

    #[inline]
    pub(crate) fn clear(&mut self, mut i: usize) {
        for l in 0..self.levels {
            let w = &mut self.words[self.off[l] as usize + (i >> 6)];
            *w &= !(1u64 << (i & 63));
            if *w != 0 {
                break;
            }
            i >>= 6;
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.words[self.off[self.levels - 1] as usize] == 0
    }

    /// Lowest set bit.
    #[inline]
    pub(crate) fn first(&self) -> Option<usize> {
        let mut idx = 0usize;
        for l in (0..self.levels).rev() {
            let w = self.words[self.off[l] as usize + idx];
            if w == 0 {
                return None;
            }
            idx = (idx << 6) | w.trailing_zeros() as usize;
        }
        Some(idx)
    }

    /// Lowest set bit at or after `i`, by a scan of the bottom level (meant for the sparse
    /// sets of high orders, e.g. 2 MiB blocks: 512 bits per GiB).
    pub(crate) fn next_from(&self, i: usize) -> Option<usize> {
        let level0 = if self.levels > 1 {
            self.off[1] as usize
        } else {
            self.words.len()
        };
        let mut w = i >> 6;
        if w >= level0 {
            return None;
        }
        let mut bits = self.words[w] & (u64::MAX << (i & 63));
        loop {
            if bits != 0 {
                return Some((w << 6) | bits.trailing_zeros() as usize);
            }
            w += 1;
            if w >= level0 {
                return None;
            }
            bits = self.words[w];
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// floor(log2(n)), n >= 1.
#[inline]
pub(crate) fn floor_log2(n: u32) -> u32 {
    31 - n.leading_zeros()
}

/// ceil(log2(n)), n >= 1.
#[inline]
pub(crate) fn ceil_log2(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

pub(crate) struct Buddy {
    pages: u32,
    max_order: u32,
    free: Vec<HBitset>,
    /// Bit `o` set <=> `free[o]` is non-empty.
    avail: u32,
    /// One bit per page: set <=> allocated.
    alloc: Vec<u64>,
    free_pages: u32,
}

impl Buddy {
    /// A region of `pages` pages (1..=2^31), all free, seeded as aligned power-of-two blocks.
    pub(crate) fn new(pages: u32) -> Self {
        assert!((1..=1 << 31).contains(&pages));
        let max_order = floor_log2(pages);
        let free = (0..=max_order)
            .map(|o| HBitset::new((pages as usize).div_ceil(1 << o)))
            .collect();
        let mut b = Buddy {
            pages,
            max_order,
            free,
            avail: 0,
            alloc: vec![0; (pages as usize).div_ceil(64)],
            free_pages: 0,
        };
        b.free_range(0, pages);
        b.free_pages = pages;
        b
    }

    #[cfg(test)]
    pub(crate) fn free_pages(&self) -> u32 {
        self.free_pages
    }

    pub(crate) fn avail(&self) -> u32 {
        self.avail
    }

    pub(crate) fn max_order(&self) -> u32 {
        self.max_order
    }

    pub(crate) fn metadata_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.free.iter().map(HBitset::bytes).sum::<usize>()
            + self.free.len() * std::mem::size_of::<HBitset>()
            + self.alloc.len() * 8
    }

    #[inline]
    fn is_free_block(&self, h: u32, o: u32) -> bool {
        self.avail & (1 << o) != 0 && self.free[o as usize].test((h >> o) as usize)
    }

    #[inline]
    fn insert(&mut self, h: u32, o: u32) {
        self.free[o as usize].set((h >> o) as usize);
        self.avail |= 1 << o;
    }

    #[inline]
    fn remove(&mut self, h: u32, o: u32) {
        let s = &mut self.free[o as usize];
        s.clear((h >> o) as usize);
        if s.is_empty() {
            self.avail &= !(1 << o);
        }
    }

    /// Insert the block `(h, o)` into the free sets, coalescing with free buddies.
    fn free_block(&mut self, mut h: u32, mut o: u32) {
        while o < self.max_order {
            let b = h ^ (1 << o);
            if b as u64 + (1u64 << o) > self.pages as u64 || !self.is_free_block(b, o) {
                break;
            }
            self.remove(b, o);
            h &= !(1 << o);
            o += 1;
        }
        self.insert(h, o);
    }

    /// Insert `[a, b)` into the free sets as maximal aligned blocks (does not touch the
    /// allocated bitmap or the counter).
    fn free_range(&mut self, a: u32, b: u32) {
        let mut p = a;
        while p < b {
            let align = if p == 0 { 31 } else { p.trailing_zeros() };
            let o = align.min(floor_log2(b - p));
            self.free_block(p, o);
            p += 1 << o;
        }
    }

    /// The free block containing page `q`, if any.
    #[inline]
    fn containing_free(&self, q: u32) -> Option<(u32, u32)> {
        let mut m = self.avail;
        while m != 0 {
            let o = m.trailing_zeros();
            m &= m - 1;
            if self.free[o as usize].test((q >> o) as usize) {
                return Some((q >> o << o, o));
            }
        }
        None
    }

    fn set_alloc(&mut self, a: u32, b: u32, on: bool) {
        let (a, b) = (a as usize, b as usize);
        let mut p = a;
        while p < b {
            let w = p >> 6;
            let lo = p & 63;
            let hi = ((w + 1) << 6).min(b) - (w << 6); // exclusive, 1..=64
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            if on {
                self.alloc[w] |= mask;
            } else {
                self.alloc[w] &= !mask;
            }
            p = (w + 1) << 6;
        }
    }

    /// True if every page of `[a, b)` is marked allocated.
    pub(crate) fn all_allocated(&self, a: u32, b: u32) -> bool {
        let (a, b) = (a as usize, b as usize);
        let mut p = a;
        while p < b {
            let w = p >> 6;
            let lo = p & 63;
            let hi = ((w + 1) << 6).min(b) - (w << 6);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            if self.alloc[w] & mask != mask {
                return false;
            }
            p = (w + 1) << 6;
        }
        true
    }

    /// Allocate exactly `n` contiguous pages; returns the region-local first page.
    pub(crate) fn alloc(&mut self, n: u32) -> Option<u32> {
        debug_assert!(n >= 1);
        let k = ceil_log2(n);
        if k > self.max_order {
            return None;
        }
        let m = self.avail >> k;
        if m == 0 {
            return None;
        }
        let mut o = k + m.trailing_zeros();
        let h = (self.free[o as usize]
            .first()
            .expect("avail bit without block") as u32)
            << o;
        self.remove(h, o);
        while o > k {
            o -= 1;
            self.insert(h + (1 << o), o);
        }
        if n < 1 << k {
            self.free_range(h + n, h + (1 << k));
        }
        self.set_alloc(h, h + n, true);
        self.free_pages -= n;
        Some(h)
    }

    /// Free `[a, b)`. Returns false (and changes nothing) unless every page is allocated.
    pub(crate) fn free(&mut self, a: u32, b: u32) -> bool {
        if a >= b || b > self.pages || !self.all_allocated(a, b) {
            return false;
        }
        self.set_alloc(a, b, false);
        self.free_range(a, b);
        self.free_pages += b - a;
        true
    }

    /// Allocate exactly the pages `[a, b)` if all of them are free (splitting the free blocks
    /// that contain them). Returns false and changes nothing otherwise.
    pub(crate) fn carve(&mut self, a: u32, b: u32) -> bool {
        if a >= b || b > self.pages {
            return false;
        }
        // Verification pass (no mutation).
        let mut q = a;
        while q < b {
            match self.containing_free(q) {
                Some((h, o)) => q = h + (1 << o),
                None => return false,
            }
        }
        // Carving pass.
        let mut q = a;
        while q < b {
            let (h, o) = self.containing_free(q).expect("verified above");
            let end = h + (1 << o);
            self.remove(h, o);
            if h < q {
                self.free_range(h, q);
            }
            if b < end {
                self.free_range(b, end);
            }
            q = end;
        }
        self.set_alloc(a, b, true);
        self.free_pages -= b - a;
        true
    }

    /// The lowest-addressed free block of order `min_order` or more that ends after page
    /// `from`, as (first page, order); it may start before `from`.
    pub(crate) fn next_free_block(&self, from: u32, min_order: u32) -> Option<(u32, u32)> {
        let mut best: Option<(u32, u32)> = None;
        for o in min_order..=self.max_order {
            if self.avail & (1 << o) == 0 {
                continue;
            }
            if let Some(i) = self.free[o as usize].next_from((from >> o) as usize) {
                let h = (i as u32) << o;
                if best.is_none_or(|(bh, _)| h < bh) {
                    best = Some((h, o));
                }
            }
        }
        best
    }

    /// Full consistency check, O(pages). Panics on violation.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut covered = vec![false; self.pages as usize];
        let mut total = 0u32;
        for o in 0..=self.max_order {
            let s = &self.free[o as usize];
            assert_eq!(
                s.is_empty(),
                self.avail & (1 << o) == 0,
                "avail mask order {o}"
            );
            for i in 0..(self.pages as usize).div_ceil(1 << o) {
                if !s.test(i) {
                    continue;
                }
                let h = (i << o) as u32;
                let end = h + (1 << o);
                assert!(end <= self.pages, "block ({h},{o}) past end");
                for p in h..end {
                    assert!(!covered[p as usize], "page {p} in two free blocks");
                    covered[p as usize] = true;
                }
                total += 1 << o;
                if o < self.max_order {
                    let bd = h ^ (1 << o);
                    if bd + (1 << o) <= self.pages {
                        assert!(!s.test((bd >> o) as usize), "uncoalesced buddies ({h},{o})");
                    }
                }
            }
        }
        assert_eq!(total, self.free_pages, "free page count");
        for (p, &c) in covered.iter().enumerate() {
            let allocated = self.alloc[p >> 6] & (1 << (p & 63)) != 0;
            assert_eq!(
                allocated, !c,
                "page {p}: allocated={allocated} free-block={c}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hbitset_basic() {
        for bits in [3usize, 63, 64, 65, 4096, 4097, 262144, 300000] {
            let mut s = HBitset::new(bits);
            assert!(s.is_empty());
            assert_eq!(s.first(), None);
            for &i in &[bits - 1, bits / 2, 0] {
                s.set(i);
                assert!(s.test(i));
                assert_eq!(s.first(), Some(i));
            }
            s.clear(0);
            assert_eq!(s.first(), Some(bits / 2));
            s.clear(bits / 2);
            assert_eq!(s.first(), Some(bits - 1));
            s.clear(bits - 1);
            assert!(s.is_empty());
        }
    }

    #[test]
    fn logs() {
        assert_eq!(ceil_log2(1), 0);
        assert_eq!(ceil_log2(2), 1);
        assert_eq!(ceil_log2(3), 2);
        assert_eq!(ceil_log2(257), 9);
        assert_eq!(floor_log2(768), 9);
    }

    #[test]
    fn non_power_of_two_region_seeding() {
        let b = Buddy::new(768);
        b.check_invariants();
        assert!(b.is_free_block(0, 9));
        assert!(b.is_free_block(512, 8));
        let b = Buddy::new(7);
        b.check_invariants();
        assert!(b.is_free_block(0, 2) && b.is_free_block(4, 1) && b.is_free_block(6, 0));
    }

    #[test]
    fn free_blocks_found_from_a_cursor() {
        let mut b = Buddy::new(4096);
        assert_eq!(b.next_free_block(0, 9), Some((0, 12)));
        let h = b.alloc(1).unwrap();
        assert_eq!(h, 0);
        // Splitting the 4096 block left 512-page blocks at 512 and up (and smaller below).
        assert_eq!(b.next_free_block(0, 9), Some((512, 9)));
        assert_eq!(
            b.next_free_block(600, 9),
            Some((512, 9)),
            "the block holding 600"
        );
        assert_eq!(b.next_free_block(1024, 9), Some((1024, 10)));
        assert_eq!(b.next_free_block(2048, 9), Some((2048, 11)));
        assert_eq!(b.next_free_block(4096, 9), None);
        assert_eq!(b.next_free_block(0, 12), None);
        assert!(b.carve(512, 4096));
        assert_eq!(b.next_free_block(0, 9), None);
        let mut s = HBitset::new(300);
        for i in [3, 64, 299] {
            s.set(i);
        }
        assert_eq!(s.next_from(0), Some(3));
        assert_eq!(s.next_from(4), Some(64));
        assert_eq!(s.next_from(65), Some(299));
        assert_eq!(s.next_from(300), None);
    }

    #[test]
    fn carve_and_free_ranges() {
        let mut b = Buddy::new(1024);
        assert!(b.carve(5, 300));
        b.check_invariants();
        assert!(!b.carve(299, 301));
        assert!(b.carve(300, 301));
        assert!(!b.free(0, 6));
        assert!(b.free(5, 301));
        b.check_invariants();
        assert_eq!(b.free_pages(), 1024);
        assert!(b.is_free_block(0, 10));
    }
}
