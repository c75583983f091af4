//! Unit, stress and property tests for the page pool.

use super::*;
use std::collections::HashSet;
use std::sync::Arc;

const MIB: usize = 1 << 20;

fn pool(cap: usize, region: usize, policy: HugePagePolicy) -> PagePool {
    let mut cfg = PoolConfig::new(cap, policy);
    cfg.region_size = region;
    PagePool::new(&cfg).expect("pool")
}

fn off(cap: usize) -> PagePool {
    pool(cap, 1 << 30, HugePagePolicy::Off)
}

/// Tiny deterministic PRNG for tests.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

fn assert_full(p: &PagePool) {
    p.check_invariants();
    assert_eq!(p.free_pages(), p.capacity_pages());
    assert_eq!(p.used_pages(), 0);
}

#[test]
fn config_rounding_and_basics() {
    let p = off(1);
    assert_eq!(p.capacity_pages(), 512);
    assert_eq!(p.region_count(), 1);
    assert_eq!(p.max_run_pages(), 512);
    assert_eq!(p.backing(), Backing::Small);
    assert_eq!(p.backing().as_str(), "4k");
    assert!(p.metadata_bytes() > 0);
    assert_eq!(p.huge_bytes(), 0);
    let p = pool(10 * MIB, 3 * MIB, HugePagePolicy::Off); // region rounds up to 4 MiB
    assert_eq!(p.region_count(), 3);
    assert_eq!(p.region_pages(), 1024);
    assert!(PagePool::new(&PoolConfig::new(0, HugePagePolicy::Off)).is_err());
    let mut cfg = PoolConfig::new(MIB, HugePagePolicy::Off);
    cfg.region_size = 0;
    assert!(PagePool::new(&cfg).is_err());
    assert_eq!(Backing::Hugetlb.as_str(), "hugetlb");
    assert_eq!(Backing::Thp.as_str(), "thp");
    let r = Run { first: 2, pages: 3 };
    assert_eq!((r.bytes(), r.end()), (3 * PAGE_SIZE, 5));
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<PagePool>();
}

#[test]
fn alloc_free_exact_sizes() {
    let p = off(16 * MIB);
    let cap = p.capacity_pages();
    assert_eq!(p.max_run_pages(), 4096);
    for n in [1u32, 3, 256, 257, 512, p.max_run_pages()] {
        let r = p.alloc_run(n).unwrap_or_else(|| panic!("alloc {n}"));
        assert_eq!(r.pages, n);
        assert_eq!(p.free_pages(), cap - n as usize);
        assert_eq!(p.used_pages(), n as usize);
        p.check_invariants();
        p.free_run(r);
        assert_full(&p);
    }
    // All at once.
    let runs: Vec<Run> = [1u32, 3, 256, 257, 512]
        .iter()
        .map(|&n| p.alloc_run(n).unwrap())
        .collect();
    assert_eq!(p.used_pages(), 1 + 3 + 256 + 257 + 512);
    p.check_invariants();
    for r in runs {
        p.free_run(r);
    }
    assert_full(&p);
    assert_eq!(p.alloc_run(0), None);
    assert_eq!(p.alloc_run(p.max_run_pages() + 1), None);
}

#[test]
fn non_power_of_two_tail_is_returned() {
    let p = off(8 * MIB);
    let r3 = p.alloc_run(3).unwrap();
    assert_eq!(r3, Run { first: 0, pages: 3 });
    assert_eq!(p.used_pages(), 3);
    // The tail page of the 4-page block is free and is the lowest free page.
    assert_eq!(p.alloc_run(1).unwrap(), Run { first: 3, pages: 1 });
    let r257 = p.alloc_run(257).unwrap();
    assert_eq!(r257.first, 512);
    assert_eq!(p.used_pages(), 3 + 1 + 257);
    // The 255-page tail of the 512-page block is free: growing into it works exactly.
    let g = p.try_grow(r257, 255).unwrap();
    assert_eq!(
        g,
        Run {
            first: 512,
            pages: 512
        }
    );
    assert_eq!(p.try_grow(g, 1).map(|r| r.pages), Some(513));
    p.check_invariants();
}

#[test]
fn coalesces_after_random_order_free() {
    let p = pool(12 * MIB, 4 * MIB, HugePagePolicy::Off);
    let mut rng = XorShift(0x1234_5678);
    for round in 0..5 {
        let mut runs = Vec::new();
        loop {
            let n = 1 + rng.below(300) as u32;
            match p.alloc_run(n) {
                Some(r) => runs.push(r),
                None => break,
            }
        }
        // Free some in pieces (sub-runs), the rest whole, all in random order.
        let mut pieces = Vec::new();
        for r in runs {
            if r.pages > 2 && rng.below(2) == 0 {
                let cut = 1 + rng.below(r.pages as u64 - 1) as u32;
                pieces.push(Run {
                    first: r.first,
                    pages: cut,
                });
                pieces.push(Run {
                    first: r.first + cut,
                    pages: r.pages - cut,
                });
            } else {
                pieces.push(r);
            }
        }
        rng.shuffle(&mut pieces);
        for (i, r) in pieces.iter().enumerate() {
            p.free_run(*r);
            if i % 64 == 0 {
                p.check_invariants();
            }
        }
        assert_full(&p);
        // Fully coalesced: every region is one block again.
        let big: Vec<Run> = (0..3)
            .map(|_| p.alloc_run(1024).expect("coalesced"))
            .collect();
        assert!(p.alloc_run(1).is_none(), "round {round}");
        for r in big {
            p.free_run(r);
        }
    }
}

#[test]
fn alloc_runs_checkerboard_and_all_or_nothing() {
    let p = off(4 * MIB);
    let singles: Vec<Run> = (0..1024).map(|_| p.alloc_run(1).unwrap()).collect();
    assert!(p.alloc_run(1).is_none());
    for r in singles.iter().step_by(2) {
        p.free_run(*r);
    }
    assert_eq!(p.free_pages(), 512);
    assert!(p.alloc_run(2).is_none());
    let sentinel = Run {
        first: 999_999,
        pages: 1,
    };
    // Failure: nothing allocated, out unchanged.
    let mut out = vec![sentinel];
    assert!(!p.alloc_runs(513, &mut out));
    assert_eq!(out, vec![sentinel]);
    assert_eq!(p.free_pages(), 512);
    p.check_invariants();
    // Success with 512 single-page runs.
    assert!(p.alloc_runs(512, &mut out));
    assert_eq!(out.len(), 513);
    assert_eq!(out[0], sentinel);
    assert!(out[1..].iter().all(|r| r.pages == 1));
    assert_eq!(p.free_pages(), 0);
    for r in out.drain(1..) {
        p.free_run(r);
    }
    // Mixed fragmentation: free a 64-page hole and some singles; largest goes first.
    for r in singles.iter().skip(1).step_by(2).take(100) {
        p.free_run(*r); // pages 1,3,..,199 -> coalesce with evens into [0,200)
    }
    p.check_invariants();
    let mut out = Vec::new();
    assert!(p.alloc_runs(300, &mut out));
    assert_eq!(out.iter().map(|r| r.pages).sum::<u32>(), 300);
    // [0,201) is free (odd pages 1..199 plus the even ones around them).
    assert_eq!(
        out[0],
        Run {
            first: 0,
            pages: 201
        },
        "{out:?}"
    );
    assert_eq!(out.len(), 1 + 99, "{out:?}");
    p.check_invariants();
    // Failure after partial progress rolls back.
    let before = p.free_pages();
    let mut out2 = Vec::new();
    assert!(!p.alloc_runs(before as u32 + 1, &mut out2));
    assert!(out2.is_empty());
    assert_eq!(p.free_pages(), before);
    p.check_invariants();
}

#[test]
fn alloc_runs_prefers_single_run_and_spans_regions() {
    let p = pool(10 * MIB, 4 * MIB, HugePagePolicy::Off);
    let mut out = Vec::new();
    assert!(p.alloc_runs(1000, &mut out));
    assert_eq!(
        out,
        vec![Run {
            first: 0,
            pages: 1000
        }]
    );
    for r in out.drain(..) {
        p.free_run(r);
    }
    // More than one region: never merged across a region boundary.
    assert!(p.alloc_runs(2560, &mut out));
    assert_eq!(p.free_pages(), 0);
    for r in &out {
        assert_eq!(
            r.first / 1024,
            (r.end() - 1) / 1024,
            "{r:?} crosses a region"
        );
    }
    assert_eq!(out.len(), 3);
    for r in out.drain(..) {
        p.free_run(r);
    }
    assert_full(&p);
    assert!(p.alloc_runs(0, &mut out) && out.is_empty());
}

#[test]
fn try_grow_cases() {
    let p = pool(10 * MIB, 4 * MIB, HugePagePolicy::Off);
    let a = p.alloc_run(4).unwrap();
    let g = p.try_grow(a, 10).expect("free space after run");
    assert_eq!(
        g,
        Run {
            first: a.first,
            pages: 14
        }
    );
    assert_eq!(p.used_pages(), 14);
    assert_eq!(p.try_grow(g, 0), Some(g));
    // Neighbor used.
    let b = p.alloc_run(2).unwrap();
    assert_eq!(b.first, g.end());
    assert_eq!(p.try_grow(g, 1), None);
    assert_eq!(p.used_pages(), 16);
    // Partially free range after b, then a used page: fails, nothing changes.
    let c = p.alloc_run(1).unwrap();
    assert_eq!(c.first, b.end());
    let d = p.alloc_run(4).unwrap(); // [20,24)
    assert_eq!(d.first, 20);
    p.free_run(c); // [16,20) free, 20 used
    let before = p.free_pages();
    assert_eq!(p.try_grow(b, 10), None);
    assert_eq!(p.free_pages(), before);
    p.check_invariants();
    assert_eq!(
        p.try_grow(b, 2),
        Some(Run {
            first: b.first,
            pages: 4
        })
    );
    // Region end: a run ending exactly at the end of region 0 cannot grow into region 1.
    let tail = Run {
        first: 1020,
        pages: 4,
    };
    let mut out = Vec::new();
    // Carve pages up to 1020 by growing d.
    let d2 = p.try_grow(d, 1020 - d.end()).unwrap();
    assert_eq!(d2.end(), 1020);
    let t = p.try_grow(d2, 4).unwrap();
    assert_eq!(t.end(), 1024);
    assert_eq!(
        p.try_grow(t, 1),
        None,
        "must not grow across a region boundary"
    );
    assert!(p.region_pages() == 1024 && tail.end() == 1024);
    // Last (smaller) region end = pool end.
    assert!(p.alloc_runs(1024 + 512, &mut out));
    let last = *out.iter().max_by_key(|r| r.end()).unwrap();
    assert_eq!(last.end() as usize, p.capacity_pages());
    assert_eq!(p.try_grow(last, 1), None);
    p.check_invariants();
}

#[test]
fn runs_never_cross_regions() {
    let p = pool(10 * MIB, 4 * MIB, HugePagePolicy::Off);
    assert_eq!(p.region_count(), 3);
    assert_eq!(p.capacity_pages(), 2560);
    assert_eq!(p.max_run_pages(), 1024);
    assert!(p.alloc_run(1025).is_none());
    let mut rng = XorShift(99);
    let mut runs = Vec::new();
    for _ in 0..2000 {
        let n = 1 + rng.below(700) as u32;
        if let Some(r) = p.alloc_run(n) {
            assert_eq!(r.first / 1024, (r.end() - 1) / 1024, "{r:?}");
            runs.push(r);
        } else if !runs.is_empty() {
            let i = rng.below(runs.len() as u64) as usize;
            p.free_run(runs.swap_remove(i));
        }
    }
    p.check_invariants();
    // The small last region still yields its 512-page block.
    for r in runs.drain(..) {
        p.free_run(r);
    }
    let a = p.alloc_run(1024).unwrap();
    let b = p.alloc_run(1024).unwrap();
    let c = p.alloc_run(512).unwrap();
    assert_eq!((a.first, b.first, c.first), (0, 1024, 2048));
    assert!(p.alloc_run(1).is_none());
    // merge_runs helper refuses cross-region merges.
    assert_eq!(
        p.merge_runs(
            Run {
                first: 1000,
                pages: 24
            },
            Run {
                first: 1024,
                pages: 1
            }
        ),
        None
    );
    assert_eq!(
        p.merge_runs(
            Run {
                first: 10,
                pages: 2
            },
            Run {
                first: 12,
                pages: 3
            }
        ),
        Some(Run {
            first: 10,
            pages: 5
        })
    );
    // A caller-merged run spanning regions is still freed correctly (split at the boundary).
    p.free_run(Run {
        first: 1000,
        pages: 48,
    });
    assert_eq!(p.free_pages(), 48);
    p.check_invariants();
}

#[test]
fn run_ptr_writes_visible_and_distinct() {
    let p = pool(10 * MIB, 4 * MIB, HugePagePolicy::Off);
    let base = p.run_ptr(Run { first: 0, pages: 1 }) as usize;
    let mut runs = Vec::new();
    for (i, n) in [1u32, 3, 17, 256, 1000, 512].iter().enumerate() {
        let r = p.alloc_run(*n).unwrap();
        let ptr = p.run_ptr(r);
        assert_eq!(ptr as usize - base, (r.first as usize) << PAGE_SHIFT);
        // SAFETY: run_ptr checked `r` lies inside the pool's mapping, so `ptr` is valid for
        // r.bytes() bytes; the run was just allocated to this test, so nothing else uses them.
        unsafe { std::ptr::write_bytes(ptr, i as u8 + 1, r.bytes()) };
        runs.push((r, i as u8 + 1));
    }
    for (r, v) in &runs {
        // SAFETY: `r` is still allocated to this test and inside the mapping (run_ptr checks),
        // its bytes were initialized above, and no one writes them while `s` lives.
        let s = unsafe { std::slice::from_raw_parts(p.run_ptr(*r), r.bytes()) };
        assert!(s.iter().all(|b| b == v), "run {r:?} overwritten");
    }
    let set: HashSet<u32> = runs.iter().flat_map(|(r, _)| r.first..r.end()).collect();
    assert_eq!(set.len(), runs.iter().map(|(r, _)| r.pages as usize).sum());
}

#[test]
fn sequential_equal_allocations_are_contiguous() {
    for n in [1u32, 4, 16, 256] {
        let p = off(16 * MIB);
        let mut prev = p.alloc_run(n).unwrap();
        assert_eq!(prev.first, 0);
        for _ in 0..(4096 / n - 1).min(200) {
            let r = p.alloc_run(n).unwrap();
            assert_eq!(r.first, prev.end(), "size {n}");
            prev = r;
        }
    }
    // Write-append pattern: alloc then repeatedly grow: stays one run.
    let p = off(16 * MIB);
    let other = p.alloc_run(8).unwrap();
    let mut r = p.alloc_run(8).unwrap();
    for _ in 0..100 {
        r = p.try_grow(r, 8).unwrap();
    }
    assert_eq!(
        r,
        Run {
            first: other.end(),
            pages: 808
        }
    );
    p.check_invariants();
}

#[test]
fn threaded_stress_no_overlap() {
    let p = Arc::new(pool(32 * MIB, 8 * MIB, HugePagePolicy::Off));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                let mut rng = XorShift(0x9E37_79B9 ^ ((t + 1) * 0x1000_0001));
                let mut held: Vec<(Run, u64)> = Vec::new();
                let check = |r: &Run, tag: u64| {
                    for pg in 0..r.pages as usize {
                        // SAFETY: pg < r.pages, so the 8 bytes at page `pg` lie inside the
                        // run (page-aligned, so aligned for u64); this thread allocated it and
                        // wrote them, and no other thread touches them until it frees the run.
                        let v =
                            unsafe { (p.run_ptr(*r).add(pg << PAGE_SHIFT) as *const u64).read() };
                        assert_eq!(v, tag, "page {} of {r:?} clobbered", pg);
                    }
                };
                for i in 0..20_000u64 {
                    let tag = (t << 48) | i;
                    let op = rng.below(10);
                    let mut got = Vec::new();
                    if op < 4 {
                        if let Some(r) = p.alloc_run(1 + rng.below(64) as u32) {
                            got.push(r);
                        }
                    } else if op < 5 {
                        let mut out = Vec::new();
                        if p.alloc_runs(1 + rng.below(200) as u32, &mut out) {
                            got.extend(out);
                        }
                    } else if op < 6 && !held.is_empty() {
                        let j = rng.below(held.len() as u64) as usize;
                        let (r, old) = held[j];
                        check(&r, old);
                        if let Some(g) = p.try_grow(r, 1 + rng.below(8) as u32) {
                            held.swap_remove(j);
                            got.push(g);
                        }
                    } else if !held.is_empty() {
                        let j = rng.below(held.len() as u64) as usize;
                        let (r, old) = held.swap_remove(j);
                        check(&r, old);
                        p.free_run(r);
                    }
                    for r in got {
                        for pg in 0..r.pages as usize {
                            // SAFETY: pg < r.pages, so the page-aligned 8 bytes lie inside the
                            // run, just allocated to this thread; nobody else touches them.
                            unsafe { (p.run_ptr(r).add(pg << PAGE_SHIFT) as *mut u64).write(tag) };
                        }
                        held.push((r, tag));
                    }
                }
                for (r, tag) in held {
                    check(&r, tag);
                    p.free_run(r);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_full(&p);
}

#[test]
fn thp_policy() {
    let p = pool(8 * MIB, 4 * MIB, HugePagePolicy::Thp);
    if thp_enabled_never() {
        assert_eq!(p.backing(), Backing::Small);
        return;
    }
    assert_eq!(p.backing(), Backing::Thp);
    assert_eq!(p.run_ptr(Run { first: 0, pages: 1 }) as usize % HUGE_2M, 0);
    let r = p.alloc_run(1024).unwrap();
    // SAFETY: run_ptr checked `r` lies inside the mapping, so it is valid for r.bytes()
    // bytes; the run was just allocated to this test and nothing else uses it.
    unsafe { std::ptr::write_bytes(p.run_ptr(r), 7, r.bytes()) };
    let hb = p.huge_bytes();
    eprintln!("thp: huge_bytes after touching 4 MiB = {hb}");
    assert!(hb <= (8 * MIB) as u64);
    assert_eq!(hb % HUGE_2M as u64, 0);
    p.free_run(r);
}

#[test]
fn hugetlb_policy_errors_or_works_and_auto_falls_back() {
    match PagePool::new(&PoolConfig::new(4 * MIB, HugePagePolicy::Hugetlb)) {
        Ok(p) => {
            assert_eq!(p.backing(), Backing::Hugetlb);
            assert_eq!(p.huge_bytes(), (4 * MIB) as u64);
        }
        Err(e) => eprintln!("hugetlb unavailable (expected with nr_hugepages=0): {e}"),
    }
    let p = PagePool::new(&PoolConfig::new(4 * MIB, HugePagePolicy::Auto)).expect("auto");
    let nr: u64 = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if nr == 0 {
        assert_ne!(p.backing(), Backing::Hugetlb);
    }
    let r = p.alloc_run(3).unwrap();
    p.free_run(r);
    assert_full(&p);
}

/// Fill the run with `byte` (a test owns its runs).
fn fill(p: &PagePool, r: Run, byte: u8) {
    // SAFETY: run_ptr checked `r` lies inside the mapping, valid for r.bytes() bytes; callers
    // pass runs allocated to their test, which no other thread touches meanwhile.
    unsafe { std::ptr::write_bytes(p.run_ptr(r), byte, r.bytes()) };
}

fn all_bytes(p: &PagePool, r: Run, byte: u8) -> bool {
    // SAFETY: as in `fill`, `r` is inside the mapping and used by this test alone; pool
    // memory is always initialized (anonymous mmap is zero-filled), and the slice is dropped
    // before anything writes the run.
    unsafe { std::slice::from_raw_parts(p.run_ptr(r), r.bytes()) }
        .iter()
        .all(|&b| b == byte)
}

#[test]
fn release_free_gives_back_whole_free_2m_blocks_only() {
    for policy in [HugePagePolicy::Off, HugePagePolicy::Thp] {
        let p = pool(32 * MIB, 16 * MIB, policy);
        let pages = |bytes: usize| (bytes >> PAGE_SHIFT) as u32;
        // Touch everything: 32 MiB resident.
        let all = [
            p.alloc_run(pages(16 * MIB)).unwrap(),
            p.alloc_run(pages(16 * MIB)).unwrap(),
        ];
        for r in all {
            fill(&p, r, 0xaa);
        }
        let before = p.resident_bytes();
        assert!(before >= 32 * MIB as u64, "{policy:?}: resident {before}");
        for r in all {
            p.free_run(r);
        }
        // Keep one page in use: its 2 MiB block stays resident (never split a huge page).
        let kept = p.alloc_run(1).unwrap();
        assert_eq!(kept.first, 0);
        fill(&p, kept, 0x55);
        let released = p.release_free();
        assert_eq!(released, 30 * MIB as u64, "{policy:?}");
        assert_eq!(p.released_bytes(), released);
        assert_eq!(p.free_pages(), p.capacity_pages() - 1);
        p.check_invariants();
        let after = p.resident_bytes();
        assert!(
            after <= 2 * MIB as u64 && after < before,
            "{policy:?}: resident {before} -> {after}"
        );
        assert!(all_bytes(&p, kept, 0x55), "the page in use keeps its bytes");
        // The rest of the kept page's block was not given back: its old bytes are there.
        let neighbour = p.alloc_run(1).unwrap();
        assert_eq!(neighbour.first, 1);
        assert!(all_bytes(&p, neighbour, 0xaa));
        // Given-back memory reads as zero and is usable again.
        let again = p.alloc_run(pages(16 * MIB)).unwrap();
        assert!(all_bytes(&p, again, 0));
        fill(&p, again, 0x11);
        assert!(all_bytes(&p, again, 0x11));
        // Nothing free in whole 2 MiB blocks but the last 14 MiB: exactly that goes back.
        assert_eq!(p.release_free(), 14 * MIB as u64);
        p.check_invariants();
    }
}

#[test]
fn smaps_parser() {
    let s = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Size:               4096 kB
AnonHugePages:      2048 kB
7f0000400000-7f0000600000 rw-p 00000000 00:00 0
AnonHugePages:      2048 kB
7f1000000000-7f1000200000 rw-p 00000000 00:00 0 [heap]
AnonHugePages:      2048 kB
";
    assert_eq!(
        smaps_bytes(s, (0x7f00_0000_0000, 0x60_0000), "AnonHugePages:"),
        4 << 20
    );
    assert_eq!(
        smaps_bytes(s, (0x7f00_0040_0000, 0x10_0000), "AnonHugePages:"),
        2 << 20
    );
    assert_eq!(
        smaps_bytes(s, (0x7e00_0000_0000, 0x1000), "AnonHugePages:"),
        0
    );
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "double free")]
fn double_free_asserts_in_debug() {
    let p = off(2 * MIB);
    let r = p.alloc_run(4).unwrap();
    p.free_run(r);
    p.free_run(r);
}

/// In release builds a double free is logged and ignored without corrupting anything.
#[cfg(not(debug_assertions))]
#[test]
fn double_free_ignored_in_release() {
    let p = off(2 * MIB);
    let r = p.alloc_run(4).unwrap();
    let keep = p.alloc_run(4).unwrap();
    p.free_run(r);
    p.free_run(r);
    p.free_run(Run { first: 0, pages: 8 }); // half allocated
    assert_eq!(p.free_pages(), 512 - 4);
    p.check_invariants();
    p.free_run(keep);
    assert_full(&p);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(u32),
        AllocRuns(u32),
        Grow(usize, u32),
        /// Free a piece of held run `idx`: [cut_a, cut_b) scaled into the run.
        Free(usize, u32, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u32..600).prop_map(Op::Alloc),
            1 => (1u32..1500).prop_map(Op::AllocRuns),
            2 => (any::<usize>(), 1u32..64).prop_map(|(i, e)| Op::Grow(i, e)),
            3 => (any::<usize>(), any::<u32>(), any::<u32>()).prop_map(|(i, a, b)| Op::Free(i, a, b)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn random_ops_match_model(ops in proptest::collection::vec(op(), 1..120)) {
            // 6 MiB, 4 MiB regions -> regions of 1024 and 512 pages.
            let p = pool(6 * MIB, 4 * MIB, HugePagePolicy::Off);
            let rp = p.region_pages();
            let mut model = vec![false; p.capacity_pages()];
            let mut held: Vec<Run> = Vec::new();
            let take = |model: &mut Vec<bool>, r: Run| {
                prop_assert!(r.pages >= 1);
                prop_assert_eq!(r.first / rp, (r.end() - 1) / rp, "crosses region");
                for pg in r.first..r.end() {
                    prop_assert!(!model[pg as usize], "overlap at page {}", pg);
                    model[pg as usize] = true;
                }
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Alloc(n) => {
                        if let Some(r) = p.alloc_run(n) {
                            prop_assert_eq!(r.pages, n);
                            take(&mut model, r)?;
                            held.push(r);
                        }
                    }
                    Op::AllocRuns(n) => {
                        let free = model.iter().filter(|u| !**u).count();
                        let mut out = vec![Run { first: 7, pages: 7 }];
                        let ok = p.alloc_runs(n, &mut out);
                        prop_assert_eq!(ok, n as usize <= free);
                        prop_assert_eq!(out[0], Run { first: 7, pages: 7 });
                        if ok {
                            prop_assert_eq!(out[1..].iter().map(|r| r.pages).sum::<u32>(), n);
                            for r in &out[1..] {
                                take(&mut model, *r)?;
                                held.push(*r);
                            }
                        } else {
                            prop_assert_eq!(out.len(), 1);
                        }
                    }
                    Op::Grow(i, extra) => {
                        if held.is_empty() { continue; }
                        let i = i % held.len();
                        let r = held[i];
                        let end = r.end() as usize + extra as usize;
                        let expect = r.first / rp == (end as u32 - 1) / rp
                            && end <= model.len()
                            && model[r.end() as usize..end].iter().all(|u| !u);
                        let got = p.try_grow(r, extra);
                        prop_assert_eq!(got.is_some(), expect, "grow {:?} by {}", r, extra);
                        if let Some(g) = got {
                            prop_assert_eq!(g, Run { first: r.first, pages: r.pages + extra });
                            take(&mut model, Run { first: r.end(), pages: extra })?;
                            held[i] = g;
                        }
                    }
                    Op::Free(i, a, b) => {
                        if held.is_empty() { continue; }
                        let i = i % held.len();
                        let r = held.swap_remove(i);
                        let (mut a, mut b) = (a % r.pages, b % (r.pages + 1));
                        if a > b { std::mem::swap(&mut a, &mut b); }
                        if a == b { a = 0; b = r.pages; }
                        let piece = Run { first: r.first + a, pages: b - a };
                        p.free_run(piece);
                        for pg in piece.first..piece.end() { model[pg as usize] = false; }
                        if a > 0 { held.push(Run { first: r.first, pages: a }); }
                        if b < r.pages { held.push(Run { first: r.first + b, pages: r.pages - b }); }
                    }
                }
                prop_assert_eq!(p.free_pages(), model.iter().filter(|u| !**u).count());
            }
            p.check_invariants();
            for r in held { p.free_run(r); }
            assert_full(&p);
            prop_assert!(p.alloc_run(1024).is_some());
            prop_assert!(p.alloc_run(512).is_some());
        }
    }
}
