//! Core micro-benchmarks and metadata measurements of the extent cache.
//!
//! Run with `cargo run --release --example core_bench`. Prints markdown tables:
//! 1. `ExtentStateTree` set/clear/test/lock+unlock ns/op on a ~10,000-state tree and on a
//!    1-state tree;
//! 2. `PagePool` alloc_run + free_run ns/op (1 MiB and 4 KiB) on a 1 GiB pool;
//! 3. metadata bytes per cached GiB, measured through the real cache (`CacheContext::write`
//!    over a file in a temp dir, no writeback threads), before and after `sync_file`.
//!
//! 4. heap allocations per request on the data path (`CacheContext::read`/`write` and the
//!    writeback of what they dirtied): counted calls into the allocator, not times, so a
//!    loaded machine does not move them.
//!
//! Targets checked at the end: sequential 1 GiB fill <= 4 KiB of metadata; random 4 KiB
//! worst case <= 104 B per cached block (a buffer-head design); 1 MiB alloc+free < 1 µs.

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

use extentfs::cache::inode_cache::InodeCache;
use extentfs::cache::{CacheConfig, CacheContext, WriteKind};
use extentfs::extent::state::{Bits, ExtentStateTree};
use extentfs::extent::ByteRange;
use extentfs::pool::{HugePagePolicy, PagePool, PoolConfig};
use extentfs::source::path_fd::PathFd;
use extentfs::source::{self, DataFile};
use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CString;
use std::hint::black_box;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Counts live heap bytes: requested sizes, and sizes as glibc malloc rounds them (8 B header,
/// 16 B granularity, 32 B minimum chunk), to check `metadata_bytes()` against reality.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
/// Calls to alloc and realloc (section 4).
static ALLOCS: AtomicI64 = AtomicI64::new(0);
static LIVE_MALLOC: AtomicI64 = AtomicI64::new(0);

fn chunk(size: usize) -> i64 {
    ((size + 8).next_multiple_of(16)).max(32) as i64
}

// SAFETY: every method forwards to System with the very arguments it got, so the allocations
// returned, their layouts and their lifetimes are System's, which upholds GlobalAlloc's contract;
// the counting touches only atomics, never allocates and cannot unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        LIVE_MALLOC.fetch_add(chunk(l.size()), Ordering::Relaxed);
        // SAFETY: `l` is the non-zero-size layout our caller passes under GlobalAlloc::alloc's
        // contract, handed on unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        LIVE_MALLOC.fetch_sub(chunk(l.size()), Ordering::Relaxed);
        // SAFETY: `p` was allocated by this allocator, that is by System (alloc/realloc forward to
        // it), with layout `l`, as dealloc's caller guarantees.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        LIVE_MALLOC.fetch_add(chunk(new) - chunk(l.size()), Ordering::Relaxed);
        // SAFETY: `p` was allocated by System (through this allocator) with layout `l`, and `new`
        // is non-zero and does not overflow isize when rounded to l.align(), as realloc's caller
        // guarantees; all passed on unchanged.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> (i64, i64) {
    (
        LIVE.load(Ordering::Relaxed),
        LIVE_MALLOC.load(Ordering::Relaxed),
    )
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const BLOCK: u64 = 4 * KIB;
/// Per-4-KiB-block cost of a buffer-head style design (bytes).
const PER_BLOCK_BYTES: u64 = 104;

/// splitmix64: small, deterministic, good enough for shuffles and random picks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
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

fn ns_per(start: Instant, ops: u64) -> f64 {
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// Cost of one `Instant::now()` pair, subtracted from per-op timings.
fn instant_overhead() -> f64 {
    let n = 200_000u64;
    let t = Instant::now();
    let mut acc = 0u128;
    for _ in 0..n {
        let a = Instant::now();
        acc += a.elapsed().as_nanos();
    }
    black_box(acc);
    ns_per(t, n)
}

// ---------------------------------------------------------------------------------------
// 1. State tree
// ---------------------------------------------------------------------------------------

struct TreeRow {
    name: String,
    states: usize,
    set: f64,
    clear: f64,
    test: f64,
    lock_unlock: f64,
}

/// States of `STRIDE/2` bytes UPTODATE separated by holes of `STRIDE/2`.
const STRIDE: u64 = 32 * KIB;

fn many_state_tree(n: u64) -> ExtentStateTree {
    let t = ExtentStateTree::new();
    for i in 0..n {
        t.set_bits(ByteRange::at(i * STRIDE, STRIDE / 2), Bits::UPTODATE);
    }
    assert_eq!(t.entries() as u64, n);
    t
}

/// Ops on whole states of a tree with `n` states (no split, no merge): set DIRTY on each state
/// (random order), clear it again, test UPTODATE, lock + unlock.
fn bench_tree_whole(n: u64, rounds: usize, rng: &mut Rng) -> TreeRow {
    let t = many_state_tree(n);
    let mut order: Vec<u64> = (0..n).collect();
    let (mut set_ns, mut clear_ns, mut test_ns, mut lock_ns) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..rounds {
        rng.shuffle(&mut order);
        let s = Instant::now();
        for &i in &order {
            black_box(t.set_bits(ByteRange::at(i * STRIDE, STRIDE / 2), Bits::DIRTY));
        }
        set_ns += ns_per(s, n);
        rng.shuffle(&mut order);
        let s = Instant::now();
        for &i in &order {
            black_box(t.clear_bits(ByteRange::at(i * STRIDE, STRIDE / 2), Bits::DIRTY));
        }
        clear_ns += ns_per(s, n);
        rng.shuffle(&mut order);
        let s = Instant::now();
        for &i in &order {
            black_box(t.test_range(ByteRange::at(i * STRIDE, STRIDE / 2), Bits::UPTODATE));
        }
        test_ns += ns_per(s, n);
        rng.shuffle(&mut order);
        let s = Instant::now();
        for &i in &order {
            t.lock_range(ByteRange::at(i * STRIDE, STRIDE / 2));
            t.unlock_range(ByteRange::at(i * STRIDE, STRIDE / 2));
        }
        lock_ns += ns_per(s, n);
    }
    t.check_invariants();
    assert_eq!(t.entries() as u64, n);
    let r = rounds as f64;
    TreeRow {
        name: format!("{n} states, whole-state ranges"),
        states: t.entries(),
        set: set_ns / r,
        clear: clear_ns / r,
        test: test_ns / r,
        lock_unlock: lock_ns / r,
    }
}

/// Ops on one 4 KiB page inside a state of a tree with `n` states: set DIRTY splits the state
/// in three, clear merges it back. Batches of `batch` distinct states so the tree stays within
/// n..n + 2 * batch states.
fn bench_tree_split(n: u64, batch: usize, rounds: usize, rng: &mut Rng) -> TreeRow {
    let t = many_state_tree(n);
    let mut order: Vec<u64> = (0..n).collect();
    let (mut set_ns, mut clear_ns, mut test_ns, mut lock_ns) = (0.0, 0.0, 0.0, 0.0);
    let mut ops = 0u64;
    let pages_per_state = STRIDE / 2 / BLOCK;
    let mut peak = 0;
    for _ in 0..rounds {
        rng.shuffle(&mut order);
        for chunk in order.chunks(batch) {
            let offs: Vec<u64> = chunk
                .iter()
                .map(|&i| i * STRIDE + (1 + rng.below(pages_per_state - 2)) * BLOCK)
                .collect();
            let s = Instant::now();
            for &o in &offs {
                black_box(t.set_bits(ByteRange::at(o, BLOCK), Bits::DIRTY));
            }
            set_ns += s.elapsed().as_nanos() as f64;
            peak = peak.max(t.entries());
            let s = Instant::now();
            for &o in offs.iter().rev() {
                black_box(t.test_range(ByteRange::at(o, BLOCK), Bits::UPTODATE));
            }
            test_ns += s.elapsed().as_nanos() as f64;
            let s = Instant::now();
            for &o in &offs {
                t.lock_range(ByteRange::at(o, BLOCK));
                t.unlock_range(ByteRange::at(o, BLOCK));
            }
            lock_ns += s.elapsed().as_nanos() as f64;
            let s = Instant::now();
            for &o in offs.iter().rev() {
                black_box(t.clear_bits(ByteRange::at(o, BLOCK), Bits::DIRTY));
            }
            clear_ns += s.elapsed().as_nanos() as f64;
            ops += offs.len() as u64;
        }
    }
    t.check_invariants();
    assert_eq!(t.entries() as u64, n);
    let o = ops as f64;
    TreeRow {
        name: format!("{n} states, 4 KiB inside a state (split/merge)"),
        states: peak,
        set: set_ns / o,
        clear: clear_ns / o,
        test: test_ns / o,
        lock_unlock: lock_ns / o,
    }
}

/// A tree with one state `[0, 1 GiB)` UPTODATE; each op works on a random 4 KiB page inside it
/// (set splits into 3 states, clear merges back to 1). Timed per op, minus the timer's cost.
/// With `whole`, each op covers the whole state instead (no split, no merge).
fn bench_tree_one(iters: u64, whole: bool, overhead: f64, rng: &mut Rng) -> TreeRow {
    let t = ExtentStateTree::new();
    t.set_bits(ByteRange::new(0, GIB), Bits::UPTODATE);
    let (mut set_ns, mut clear_ns, mut test_ns, mut lock_ns) = (0u128, 0u128, 0u128, 0u128);
    for _ in 0..iters {
        let (o, len) = if whole {
            (0, GIB)
        } else {
            (rng.below(GIB / BLOCK) * BLOCK, BLOCK)
        };
        let s = Instant::now();
        black_box(t.set_bits(ByteRange::at(o, len), Bits::DIRTY));
        set_ns += s.elapsed().as_nanos();
        let s = Instant::now();
        black_box(t.clear_bits(ByteRange::at(o, len), Bits::DIRTY));
        clear_ns += s.elapsed().as_nanos();
        let s = Instant::now();
        black_box(t.test_range(ByteRange::at(o, len), Bits::UPTODATE));
        test_ns += s.elapsed().as_nanos();
        let s = Instant::now();
        t.lock_range(ByteRange::at(o, len));
        t.unlock_range(ByteRange::at(o, len));
        lock_ns += s.elapsed().as_nanos();
    }
    t.check_invariants();
    assert_eq!(t.entries(), 1);
    let f = |ns: u128| (ns as f64 / iters as f64 - overhead).max(0.0);
    TreeRow {
        name: if whole {
            "1 state (1 GiB), whole-state range".into()
        } else {
            "1 state (1 GiB), 4 KiB inside it (split/merge)".into()
        },
        states: 1,
        set: f(set_ns),
        clear: f(clear_ns),
        test: f(test_ns),
        lock_unlock: f(lock_ns),
    }
}

// ---------------------------------------------------------------------------------------
// 2. Page pool
// ---------------------------------------------------------------------------------------

fn bench_pool(pool: &PagePool, pages: u32, iters: u64) -> f64 {
    // Warm up (page in the buddy metadata).
    for _ in 0..1000 {
        let r = pool.alloc_run(pages).unwrap();
        pool.free_run(r);
    }
    let s = Instant::now();
    for _ in 0..iters {
        let r = pool.alloc_run(black_box(pages)).unwrap();
        pool.free_run(black_box(r));
    }
    ns_per(s, iters)
}

// ---------------------------------------------------------------------------------------
// 3. Metadata through the real cache
// ---------------------------------------------------------------------------------------

struct MetaRow {
    name: &'static str,
    cached: u64,
    secs: f64,
    tree: usize,
    extents: usize,
    tree_bytes: usize,
    total_bytes: usize,
    /// Live heap bytes allocated since the file's cache was created (requested, malloc-rounded).
    heap: (i64, i64),
}

impl MetaRow {
    fn take(name: &'static str, c: &InodeCache, secs: f64, base: (i64, i64)) -> MetaRow {
        let now = live();
        MetaRow {
            heap: (now.0 - base.0, now.1 - base.1),
            name,
            cached: c.map.mapped_bytes(),
            secs,
            tree: c.tree.entries(),
            extents: c.map.entries(),
            tree_bytes: c.tree.metadata_bytes(),
            total_bytes: c.metadata_bytes(),
        }
    }
}

fn open_cache(ctx: &CacheContext, dir: &Path, name: &str) -> Arc<InodeCache> {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap();
    let root = source::open_root(dir).unwrap();
    let cname = CString::new(name).unwrap();
    let fd = source::open_path(root.as_fd(), &cname).unwrap();
    let st = source::fstat(fd.as_fd()).unwrap();
    let pfd = PathFd::fixed(fd).unwrap();
    ctx.get_or_create((st.st_dev, st.st_ino), || DataFile::open(pfd, false))
        .unwrap()
}

fn new_ctx() -> (Arc<CacheContext>, &'static str) {
    let cap = 3 * GIB as usize / 2;
    let (pool, policy) = match PagePool::new(&PoolConfig::new(cap, HugePagePolicy::Auto)) {
        Ok(p) => (p, "auto"),
        Err(_) => (
            PagePool::new(&PoolConfig::new(cap, HugePagePolicy::Off)).unwrap(),
            "off",
        ),
    };
    let backing = pool.backing().as_str();
    let mut cfg = CacheConfig::new(cap as u64, 0.5);
    // No writeback threads run: never throttle writers.
    cfg.dirty_limit = u64::MAX;
    let ctx = CacheContext::new(Arc::new(pool), cfg);
    let _ = policy;
    (ctx, backing)
}

/// Which blocks of the 1 GiB file to write, and in which order, and with what size.
enum Fill {
    Sequential1M,
    RandomAll,
    RandomEveryOther,
}

fn measure_fill(dir: &Path, fill: Fill, rng: &mut Rng) -> (MetaRow, MetaRow, &'static str) {
    let (ctx, backing) = new_ctx();
    let (name, label, label_sync) = match fill {
        Fill::Sequential1M => (
            "seq",
            "sequential 1 GiB, 1 MiB writes (dirty)",
            "sequential 1 GiB, after sync_file",
        ),
        Fill::RandomAll => (
            "rand",
            "random 4 KiB, all 262,144 blocks (dirty)",
            "random 4 KiB, all blocks, after sync_file",
        ),
        Fill::RandomEveryOther => (
            "half",
            "random 4 KiB, every other block (dirty)",
            "random 4 KiB, every other block, after sync_file",
        ),
    };
    let c = open_cache(&ctx, dir, name);
    let mut blocks: Vec<u64> = match fill {
        Fill::Sequential1M => Vec::new(),
        Fill::RandomAll => (0..GIB / BLOCK).collect(),
        Fill::RandomEveryOther => (0..GIB / BLOCK).step_by(2).collect(),
    };
    rng.shuffle(&mut blocks);
    let mut buf = vec![0xa5u8; MIB as usize];
    // Warm up the per-thread buffers of the write path outside the measurement.
    ctx.write(&c, 0, &buf[..1], WriteKind::At).unwrap();
    ctx.truncate(&c, 0).unwrap();
    let base = live();
    let start = Instant::now();
    match fill {
        Fill::Sequential1M => {
            for i in 0..GIB / MIB {
                ctx.write(&c, i * MIB, &buf, WriteKind::At).unwrap();
            }
        }
        Fill::RandomAll | Fill::RandomEveryOther => {
            for &b in &blocks {
                buf[..8].copy_from_slice(&b.to_le_bytes());
                ctx.write(&c, b * BLOCK, &buf[..BLOCK as usize], WriteKind::At)
                    .unwrap();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    c.tree.check_invariants();
    let dirty = MetaRow::take(label, &c, secs, base);
    let start = Instant::now();
    ctx.sync_file(&c, false).unwrap();
    let synced = MetaRow::take(label_sync, &c, start.elapsed().as_secs_f64(), base);
    assert_eq!(c.dirty_bytes(), 0);
    drop(c);
    drop(ctx);
    let _ = std::fs::remove_file(dir.join(name));
    (dirty, synced, backing)
}

/// Allocator calls per operation of `op`, run `n` times after `warm` unmeasured runs.
fn allocs_per(n: u64, warm: u64, mut op: impl FnMut(u64)) -> f64 {
    for i in 0..warm {
        op(i);
    }
    let a0 = ALLOCS.load(Ordering::Relaxed);
    for i in 0..n {
        op(warm + i);
    }
    (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / n as f64
}

/// Section 4: allocator calls per 4 KiB request on a 128 MiB cached file.
fn data_path_allocs(dir: &Path, rng: &mut Rng) -> Vec<(&'static str, f64)> {
    let (ctx, _) = new_ctx();
    let c = open_cache(&ctx, dir, "allocs");
    let size = 128 * MIB;
    let buf = vec![7u8; BLOCK as usize];
    let fill = vec![1u8; MIB as usize];
    let mut off = 0;
    while off < size {
        ctx.write(&c, off, &fill, WriteKind::At).unwrap();
        off += MIB;
    }
    ctx.sync_file(&c, false).unwrap();
    let blocks = size / BLOCK;
    // Distinct blocks in random order (Fisher-Yates), so each "clean" write dirties a block
    // no earlier write touched.
    let mut pick: Vec<u64> = (0..blocks).map(|b| b * BLOCK).collect();
    for i in (1..pick.len()).rev() {
        pick.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut rows = Vec::new();
    rows.push((
        "4 KiB read, cached",
        allocs_per(10_000, 1_000, |i| {
            let at = pick[i as usize % pick.len()];
            ctx.read(&c, at, BLOCK as u32, false, |b| black_box(b.len()))
                .unwrap();
        }),
    ));
    rows.push((
        "4 KiB write into clean cached data (a new DIRTY range)",
        allocs_per(10_000, 1_000, |i| {
            let at = pick[i as usize % pick.len()];
            ctx.write(&c, at, &buf, WriteKind::At).unwrap();
        }),
    ));
    // The same blocks again, dirty now.
    rows.push((
        "4 KiB rewrite of DIRTY data",
        allocs_per(10_000, 1_000, |i| {
            let at = pick[i as usize % pick.len()];
            ctx.write(&c, at, &buf, WriteKind::At).unwrap();
        }),
    ));
    // Writeback of scattered 4 KiB dirty ranges, per range written.
    let dirty_ranges = c.tree.ranges_with(ByteRange::ALL, Bits::DIRTY).len().max(1);
    let a0 = ALLOCS.load(Ordering::Relaxed);
    ctx.sync_file(&c, false).unwrap();
    rows.push((
        "writeback + commit, per scattered 4 KiB dirty range",
        (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / dirty_ranges as f64,
    ));
    rows
}

fn main() {
    let mut rng = Rng(0x5eed_1234);
    let overhead = instant_overhead();

    // ---- 1. state tree ----
    let rows = vec![
        bench_tree_whole(10_000, 20, &mut rng),
        bench_tree_split(10_000, 1_000, 20, &mut rng),
        bench_tree_one(200_000, true, overhead, &mut rng),
        bench_tree_one(200_000, false, overhead, &mut rng),
    ];
    println!("## ExtentStateTree (ns/op)\n");
    println!("| tree | states | set_bits | clear_bits | test_range | lock+unlock |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.name, r.states, r.set, r.clear, r.test, r.lock_unlock
        );
    }
    println!(
        "\n(\"states\" for split/merge rows is the peak during the run; the 1-state rows are timed \
         per op minus {overhead:.0} ns timer cost; the 10,000-state rows in batches.)\n"
    );

    // ---- 2. page pool ----
    let pool = PagePool::new(&PoolConfig::new(GIB as usize, HugePagePolicy::Off)).unwrap();
    let mib_ns = bench_pool(&pool, 256, 2_000_000);
    let kib_ns = bench_pool(&pool, 1, 2_000_000);
    // Same with the pool's lowest 512 MiB fragmented into 4 KiB holes (every other page used).
    let mut held = Vec::new();
    for _ in 0..(256 * MIB / BLOCK) {
        held.push(pool.alloc_run(1).unwrap());
        held.push(pool.alloc_run(1).unwrap());
    }
    for (i, r) in held.iter().enumerate() {
        if i % 2 == 0 {
            pool.free_run(*r);
        }
    }
    let frag_mib_ns = bench_pool(&pool, 256, 1_000_000);
    let frag_kib_ns = bench_pool(&pool, 1, 1_000_000);
    for (i, r) in held.iter().enumerate() {
        if i % 2 == 1 {
            pool.free_run(*r);
        }
    }
    assert_eq!(pool.free_pages(), pool.capacity_pages());
    println!("## PagePool alloc_run + free_run (1 GiB pool, policy Off; ns/op)\n");
    println!("| run | fresh pool | 512 MiB fragmented (every other page used) |");
    println!("| --- | ---: | ---: |");
    println!("| 1 MiB (256 pages) | {mib_ns:.0} | {frag_mib_ns:.0} |");
    println!("| 4 KiB (1 page) | {kib_ns:.0} | {frag_kib_ns:.0} |");
    println!();
    drop(pool);

    // ---- 3. metadata through the cache ----
    let dir = tempfile::Builder::new()
        .prefix("extentfs-core-bench")
        .tempdir()
        .unwrap();
    let mut meta = Vec::new();
    let mut backing = "";
    for fill in [Fill::Sequential1M, Fill::RandomAll, Fill::RandomEveryOther] {
        let (a, b, bk) = measure_fill(dir.path(), fill, &mut rng);
        backing = bk;
        meta.push(a);
        meta.push(b);
    }
    println!(
        "## Metadata per cached GiB (CacheContext::write into a 1.5 GiB pool, backing {backing}, \
         no writeback threads)\n"
    );
    println!(
        "| case | cached | time s | state-tree entries | map extents | state tree B | \
         metadata_bytes() (tree+map) | B per cached GiB | B per cached 4 KiB block | \
         measured heap B (requested / malloc-rounded) | measured heap B/block | \
         per-block design (104 B/block) per cached GiB |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for m in &meta {
        let blocks = (m.cached / BLOCK).max(1);
        let per_gib = m.total_bytes as f64 * GIB as f64 / m.cached.max(1) as f64;
        println!(
            "| {} | {} MiB | {:.2} | {} | {} | {} | {} | {:.0} | {:.1} | {} / {} | {:.1} / {:.1} | {} |",
            m.name,
            m.cached / MIB,
            m.secs,
            m.tree,
            m.extents,
            m.tree_bytes,
            m.total_bytes,
            per_gib,
            m.total_bytes as f64 / blocks as f64,
            m.heap.0,
            m.heap.1,
            m.heap.0 as f64 / blocks as f64,
            m.heap.1 as f64 / blocks as f64,
            PER_BLOCK_BYTES * (GIB / BLOCK),
        );
    }
    println!();

    // ---- 4. allocations on the data path ----
    println!("## Heap allocations per request (CacheContext, 128 MiB cached file, no writeback threads)\n");
    println!("| request | allocator calls per request |");
    println!("| --- | ---: |");
    for (name, n) in data_path_allocs(dir.path(), &mut rng) {
        println!("| {name} | {n:.2} |");
    }
    println!();

    // ---- targets ----
    let seq = &meta[0];
    let worst = meta
        .iter()
        .map(|m| m.total_bytes as f64 / (m.cached / BLOCK).max(1) as f64)
        .fold(0.0, f64::max);
    let check = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!("## Targets\n");
    println!("| target | measured | result |");
    println!("| --- | ---: | --- |");
    println!(
        "| sequential 1 GiB fill <= 4 KiB metadata (tree+map) | {} B (state tree alone {} B) | {} |",
        seq.total_bytes,
        seq.tree_bytes,
        check(seq.total_bytes <= 4096)
    );
    println!(
        "| random 4 KiB worst case <= 104 B/block | {worst:.1} B/block | {} |",
        check(worst <= PER_BLOCK_BYTES as f64)
    );
    println!(
        "| 1 MiB alloc_run+free_run < 1 µs | {mib_ns:.0} ns | {} |",
        check(mib_ns < 1000.0)
    );
}
