//! `MappedPages`: what the kernel's page cache may hold of one file under `cache=pool`, and
//! the bytes that direct writes replaced on those pages since the kernel read them.
//!
//! Under `cache=pool` files are opened with FOPEN_DIRECT_IO, yet a shared mapping still reads
//! pages into the kernel's page cache (reads without a lock owner) and writes whole pages back
//! (writes with FUSE_WRITE_CACHE). After a direct write the kernel invalidates the pages it
//! covered, laundering a dirty page first: a page faulted in before the direct write reached
//! the daemon then carries the bytes the direct write replaced, and writing it back whole
//! would undo the direct write (xfstests generic/346). So for each direct write onto a page
//! the kernel read, the replaced bytes (the page's "base") are kept; a page-cache write skips
//! the bytes that equal their base — the mapping did not change them — and takes the rest.
//!
//! Invariants:
//! - `faulted` holds disjoint ranges (touching ones merged); `bases` holds disjoint ranges,
//!   each inside a faulted one;
//! - a byte's base is the value the kernel's copy of the page holds: saved by the first direct
//!   write after the page was read, dropped when the page is read again (the kernel only reads
//!   a page it does not hold);
//! - at most `MAX_SAVED` bytes of bases per file, and `BASES_LIMIT` in the whole mount
//!   (a [`Budget`] shared by its files, given back when bases are dropped); past either, nothing new is
//!   saved (a page writeback is then applied whole, as without this record) and a debug line
//!   says so, once per file.
//!
//! All offsets are file byte offsets; ranges are half open.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of bases kept per file at most.
pub const MAX_SAVED: usize = 1 << 20;

/// Bytes of bases kept by all files together.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

/// A mount's budget (see [`crate::cache::CacheContext`]).
pub const BASES_LIMIT: usize = 16 << 20;

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct MappedPages {
    /// start -> end of ranges the kernel read into its page cache (page aligned, merged).
    faulted: BTreeMap<u64, u64>,
    /// start -> bytes a direct write replaced, kept while the kernel may hold the old page.
    bases: BTreeMap<u64, Vec<u8>>,
    saved: usize,
    full_logged: bool,
    budget: Arc<Budget>,
}

#[cfg(test)]
impl Default for MappedPages {
    /// With a budget of its own.
    fn default() -> MappedPages {
        MappedPages::with_budget(Arc::new(Budget::new(BASES_LIMIT)))
    }
}

impl Drop for MappedPages {
    fn drop(&mut self) {
        self.budget.give(self.saved);
    }
}

impl MappedPages {
    pub fn with_budget(budget: Arc<Budget>) -> MappedPages {
        MappedPages {
            faulted: BTreeMap::new(),
            bases: BTreeMap::new(),
            saved: 0,
            full_logged: false,
            budget,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.faulted.is_empty()
    }

    /// The kernel read `[a, b)` into its page cache: it holds what the daemon holds now, so
    /// no base applies there any more.
    pub fn note_page_cache_read(&mut self, a: u64, b: u64) {
        if a >= b {
            return;
        }
        self.remove_bases(a, b);
        let (mut s, mut e) = (a, b);
        // Merge with every range that overlaps or touches [a, b).
        let touching: Vec<(u64, u64)> = self
            .faulted
            .range(..=b)
            .rev()
            .take_while(|&(_, &re)| re >= a)
            .map(|(&rs, &re)| (rs, re))
            .collect();
        for (rs, re) in touching {
            self.faulted.remove(&rs);
            s = s.min(rs);
            e = e.max(re);
        }
        self.faulted.insert(s, e);
    }

    /// Does `[off, end)` touch a page the kernel read?
    pub fn overlaps_faulted(&self, off: u64, end: u64) -> bool {
        self.faulted
            .range(..end)
            .next_back()
            .is_some_and(|(_, &re)| re > off)
    }

    /// A direct write is about to replace `[off, end)`: save, from `current`, the bytes of that
    /// range that lie on pages the kernel read and have no base yet.
    pub fn save_bases(&mut self, off: u64, end: u64, mut current: impl FnMut(u64, &mut [u8])) {
        let mut todo: Vec<(u64, u64)> = Vec::new();
        for (&fs, &fe) in self.faulted.range(..end).rev() {
            if fe <= off {
                break;
            }
            let (s, e) = (fs.max(off), fe.min(end));
            self.for_each_unsaved(s, e, |gs, ge| todo.push((gs, ge)));
        }
        for (s, e) in todo {
            let len = (e - s) as usize;
            if self.saved + len > MAX_SAVED || !self.budget.take(len) {
                if !self.full_logged {
                    tracing::debug!(
                        "mapped pages: {} bytes of direct-write bases kept; saving no more",
                        self.saved
                    );
                    self.full_logged = true;
                }
                return;
            }
            let mut bytes = vec![0u8; len];
            current(s, &mut bytes);
            self.saved += len;
            self.bases.insert(s, bytes);
        }
    }

    /// Call `f` for each gap of `[s, e)` not covered by a saved base.
    fn for_each_unsaved(&self, s: u64, e: u64, mut f: impl FnMut(u64, u64)) {
        let mut cur = s;
        for (&bs, b) in self.bases.range(self.bases_from(s)..e) {
            let be = bs + b.len() as u64;
            if bs > cur {
                f(cur, bs.min(e));
            }
            cur = cur.max(be);
            if cur >= e {
                return;
            }
        }
        if cur < e {
            f(cur, e);
        }
    }

    /// A page-cache write brings `data` for `[off, off + data.len())`: call `keep` with each
    /// run of it that must be applied (everything but the bytes equal to their base).
    pub fn apply_runs(&self, off: u64, data: &[u8], mut keep: impl FnMut(u64, &[u8])) {
        let end = off + data.len() as u64;
        let mut cur = off; // start of the run not yet handed to `keep`
        for (&bs, base) in self.bases.range(self.bases_from(off)..end) {
            let s = bs.max(off);
            let e = (bs + base.len() as u64).min(end);
            let mut i = s;
            while i < e {
                let equal = data[(i - off) as usize] == base[(i - bs) as usize];
                if equal {
                    if i > cur {
                        keep(cur, &data[(cur - off) as usize..(i - off) as usize]);
                    }
                    cur = i + 1;
                }
                i += 1;
            }
        }
        if cur < end {
            keep(cur, &data[(cur - off) as usize..]);
        }
    }

    /// The file is now `size` bytes: forget pages and bases past it.
    pub fn truncate(&mut self, size: u64) {
        let page_end = size.next_multiple_of(crate::pool::PAGE_SIZE as u64);
        self.remove_bases(size, u64::MAX);
        let beyond: Vec<u64> = self.faulted.range(page_end..).map(|(&s, _)| s).collect();
        for s in beyond {
            self.faulted.remove(&s);
        }
        if let Some((_, e)) = self.faulted.range_mut(..page_end).next_back() {
            *e = (*e).min(page_end);
        }
    }

    /// Where to start iterating `bases` to meet every base holding bytes at or after `x`: the
    /// start of the base that holds `x`, else `x`.
    fn bases_from(&self, x: u64) -> u64 {
        match self.bases.range(..=x).next_back() {
            Some((&bs, b)) if bs + b.len() as u64 > x => bs,
            _ => x,
        }
    }

    /// Drop the parts of bases that lie in `[a, b)`.
    fn remove_bases(&mut self, a: u64, b: u64) {
        let hit: Vec<u64> = self
            .bases
            .range((
                Included(self.bases_from(a)),
                if b == u64::MAX {
                    Unbounded
                } else {
                    Excluded(b)
                },
            ))
            .map(|(&s, _)| s)
            .collect();
        let before = self.saved;
        for s in hit {
            let mut v = self.bases.remove(&s).expect("listed");
            self.saved -= v.len();
            let e = s + v.len() as u64;
            if e > b {
                let tail = v.split_off((b - s) as usize);
                self.saved += tail.len();
                self.bases.insert(b, tail);
            }
            if s < a {
                v.truncate((a - s) as usize);
                v.shrink_to_fit();
                self.saved += v.len();
                self.bases.insert(s, v);
            }
        }
        self.budget.give(before - self.saved);
    }

    pub fn saved_bytes(&self) -> usize {
        self.saved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(m: &MappedPages, off: u64, data: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut v = Vec::new();
        m.apply_runs(off, data, |o, d| v.push((o, d.to_vec())));
        v
    }

    /// A model file: `current` returns bytes of the daemon's copy.
    fn save(m: &mut MappedPages, file: &[u8], off: u64, end: u64) {
        m.save_bases(off, end, |s, out| {
            out.copy_from_slice(&file[s as usize..s as usize + out.len()])
        });
    }

    #[test]
    fn nothing_saved_for_pages_the_kernel_never_read() {
        let mut m = MappedPages::default();
        let file = vec![0u8; 16384];
        save(&mut m, &file, 1024, 1032);
        assert_eq!(m.saved_bytes(), 0);
        assert_eq!(runs(&m, 0, &[7; 4096]), vec![(0, vec![7; 4096])]);
    }

    #[test]
    fn a_laundered_page_keeps_the_direct_write_and_takes_the_mapping_store() {
        // The kernel reads page 0 (all zero); a direct write puts 1s at 1024..1032; the
        // mapping stores 2s at 3072..3080 and the kernel writes its page back whole.
        let mut m = MappedPages::default();
        let mut file = vec![0u8; 4096];
        m.note_page_cache_read(0, 4096);
        save(&mut m, &file, 1024, 1032);
        file[1024..1032].fill(1);
        let mut page = vec![0u8; 4096];
        page[3072..3080].fill(2);
        for (o, d) in runs(&m, 0, &page) {
            file[o as usize..o as usize + d.len()].copy_from_slice(&d);
        }
        assert_eq!(&file[1024..1032], &[1; 8]);
        assert_eq!(&file[3072..3080], &[2; 8]);
        assert!(file[..1024].iter().all(|&b| b == 0));
        // The mapping also wrote where the direct write did, with a new value: it wins.
        page[1024] = 9;
        let r = runs(&m, 0, &page);
        assert_eq!(r[0], (0, page[..1025].to_vec()));
        assert_eq!(r[1], (1032, page[1032..].to_vec()));
    }

    #[test]
    fn the_first_base_counts_and_a_new_read_drops_it() {
        let mut m = MappedPages::default();
        let mut file = vec![0u8; 8192];
        m.note_page_cache_read(0, 8192);
        save(&mut m, &file, 100, 200);
        file[100..200].fill(1);
        save(&mut m, &file, 150, 300); // 150..200 already saved (zeros): only 200..300 added
        assert_eq!(m.saved_bytes(), 200);
        file[150..300].fill(3);
        let r = runs(&m, 0, &vec![0u8; 4096]);
        assert_eq!(r, vec![(0, vec![0; 100]), (300, vec![0; 3796])]);
        m.note_page_cache_read(0, 4096);
        assert_eq!(m.saved_bytes(), 0);
        assert_eq!(runs(&m, 0, &[5; 10]), vec![(0, vec![5; 10])]);
    }

    #[test]
    fn reads_merge_and_truncate_forgets() {
        let mut m = MappedPages::default();
        m.note_page_cache_read(8192, 12288);
        m.note_page_cache_read(0, 4096);
        m.note_page_cache_read(4096, 8192);
        assert_eq!(m.faulted.len(), 1);
        assert!(m.overlaps_faulted(12287, 12290));
        assert!(!m.overlaps_faulted(12288, 20000));
        let file = vec![0u8; 12288];
        save(&mut m, &file, 5000, 10000);
        m.truncate(6000);
        assert_eq!(m.saved_bytes(), 1000);
        assert!(!m.overlaps_faulted(8192, 8193));
        assert!(m.overlaps_faulted(6000, 6001));
        m.truncate(0);
        assert!(m.is_empty());
        assert_eq!(m.saved_bytes(), 0);
    }

    #[test]
    fn bases_split_when_a_read_covers_part_of_them() {
        let mut m = MappedPages::default();
        m.note_page_cache_read(0, 8192);
        let file = vec![4u8; 8192];
        save(&mut m, &file, 4000, 4200);
        m.note_page_cache_read(4096, 8192);
        assert_eq!(m.saved_bytes(), 96);
        // Only 4000..4096 is still skipped where equal.
        let r = runs(&m, 3990, &[4u8; 200]);
        assert_eq!(r, vec![(3990, vec![4; 10]), (4096, vec![4; 94])]);
    }

    #[test]
    fn the_daemon_budget_is_shared_and_given_back() {
        let small = Arc::new(Budget::new(10_000));
        let file = vec![1u8; 16384];
        let mut a = MappedPages::with_budget(small.clone());
        let mut b = MappedPages::with_budget(small.clone());
        a.note_page_cache_read(0, 16384);
        b.note_page_cache_read(0, 16384);
        save(&mut a, &file, 0, 8000);
        save(&mut b, &file, 0, 4000); // over the shared limit: nothing saved
        assert_eq!((a.saved_bytes(), b.saved_bytes()), (8000, 0));
        a.note_page_cache_read(4096, 8192); // drops 3,904 of a's bytes
        assert_eq!(small.used.load(Ordering::Relaxed), 4096);
        save(&mut b, &file, 0, 4000);
        assert_eq!(b.saved_bytes(), 4000);
        drop(a);
        b.truncate(1000);
        assert_eq!(small.used.load(Ordering::Relaxed), 1000);
        drop(b);
        assert_eq!(small.used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn saving_stops_at_the_cap() {
        let mut m = MappedPages::default();
        let size = MAX_SAVED as u64 + 8192;
        m.note_page_cache_read(0, size);
        let file = vec![0u8; size as usize];
        save(&mut m, &file, 0, MAX_SAVED as u64);
        save(&mut m, &file, MAX_SAVED as u64, size);
        assert_eq!(m.saved_bytes(), MAX_SAVED);
    }
}
