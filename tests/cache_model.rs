//! Model test of the cache core (no FUSE): random sequences of cache operations on one real
//! file in a temp dir, checked against a `Vec<u8>` model after every step, and SOURCE checked
//! byte for byte after the final `sync_file`. The pool is small (16 MiB) and offsets reach
//! ~3x the pool, so eviction and reclaim (with the writeback threads running) are exercised.

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

use extentfs::cache::inode_cache::InodeCache;
use extentfs::cache::writeback::WritebackThreads;
use extentfs::cache::{CacheConfig, CacheContext, WriteKind};
use extentfs::extent::state::Bits;
use extentfs::extent::ByteRange;
use extentfs::pool::{HugePagePolicy, PagePool, PoolConfig};
use extentfs::source::path_fd::PathFd;
use extentfs::source::{self, DataFile};
use proptest::prelude::*;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const P: u64 = 4096;
const POOL: u64 = 16 << 20;
/// Offsets reach about 3x the pool.
const SPAN: u64 = 3 * POOL;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// splitmix64.
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
        self.next() % n.max(1)
    }
}

/// `len` pseudo-random bytes from `seed` (never all zero, so stale zeros are caught).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&(r.next() | 0x0101_0101_0101_0101).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The cache of the existing file `dir/name` in `ctx`.
fn open_cache(ctx: &CacheContext, dir: &tempfile::TempDir, name: &str) -> Arc<InodeCache> {
    let root = source::open_root(dir.path()).unwrap();
    let cname = CString::new(name).unwrap();
    let fd = source::open_path(root.as_fd(), &cname).unwrap();
    let st = source::fstat(fd.as_fd()).unwrap();
    let pfd = PathFd::fixed(fd).unwrap();
    ctx.get_or_create((st.st_dev, st.st_ino), || {
        DataFile::open(pfd.clone(), false)
    })
    .unwrap()
}

/// One cache over one SOURCE file; stops the writeback threads when dropped (also on panic, so
/// proptest's shrinking does not leak threads).
struct Fixture {
    dir: tempfile::TempDir,
    path: PathBuf,
    ctx: Arc<CacheContext>,
    c: Arc<InodeCache>,
    wb: Option<WritebackThreads>,
}

impl Fixture {
    fn new(pool_bytes: u64, writeback_threads: bool) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("extentfs-cache-model")
            .tempdir()
            .unwrap();
        let name = "f";
        let path = dir.path().join(name);
        std::fs::File::create(&path).unwrap();
        let pool =
            PagePool::new(&PoolConfig::new(pool_bytes as usize, HugePagePolicy::Off)).unwrap();
        let mut cfg = CacheConfig::new(pool_bytes, 0.5);
        cfg.dirty_expire = std::time::Duration::from_millis(200);
        let ctx = CacheContext::new(Arc::new(pool), cfg);
        let c = open_cache(&ctx, &dir, name);
        let wb = writeback_threads.then(|| ctx.start_writeback().unwrap());
        Fixture {
            dir,
            path,
            ctx,
            c,
            wb,
        }
    }

    /// Another file of the same SOURCE directory, holding `content`, in the same cache.
    fn other_file(&self, name: &str, content: &[u8]) -> Arc<InodeCache> {
        std::fs::write(self.dir.path().join(name), content).unwrap();
        open_cache(&self.ctx, &self.dir, name)
    }

    fn read(&self, off: u64, len: u32) -> Vec<u8> {
        self.ctx
            .read(&self.c, off, len, false, |b| b.to_vec())
            .unwrap()
    }

    /// Read `[0, len)` in 1 MiB requests (one request must fit in the pool).
    fn read_all(&self, len: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len as usize);
        let mut off = 0;
        while off < len {
            let got = self.read(off, (len - off).min(1 << 20) as u32);
            assert!(!got.is_empty(), "short read at {off}");
            off += got.len() as u64;
            v.extend_from_slice(&got);
        }
        v
    }

    fn punch(&self, off: u64, len: u64) {
        let file = &self.c.file;
        self.ctx
            .punch(&self.c, off, len, || {
                file.fallocate(
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    len,
                )
            })
            .unwrap();
    }

    /// Invariants that hold whenever none of our operations is in flight. The background
    /// writeback threads may still hold a range lock or be moving DIRTY to WRITEBACK for a
    /// moment, so those two checks are retried for up to a second.
    fn check_quiescent(&self) {
        let c = &self.c;
        c.tree.check_invariants();
        eventually("no range lock left", || c.tree.locked_bytes() == 0);
        eventually("context dirty count == file dirty count", || {
            self.ctx.dirty_bytes() == c.dirty_bytes()
        });
        assert_eq!(
            c.tree.uptodate_bytes(),
            c.map.mapped_bytes(),
            "UPTODATE bytes != mapped bytes; states {:?} extents {:?}",
            c.tree.states(),
            c.map.extents()
        );
        assert!(
            !c.tree
                .test_any(ByteRange::from_offset(c.size()), Bits::DIRTY),
            "DIRTY bytes at or past size {}",
            c.size()
        );
        assert!(c.map.mapped_bytes() <= (self.ctx.pool.capacity_pages() as u64) * P);
    }

    /// Write everything back and compare SOURCE with `model`.
    fn check_source(&self, model: &[u8]) {
        self.ctx.sync_file(&self.c, false).unwrap();
        assert_eq!(self.c.dirty_bytes(), 0);
        // Every SOURCE space reservation went with the data written back or dropped.
        assert_eq!(
            self.c.tree.find_first(0, Bits::RESERVED),
            None,
            "RESERVED left after a sync; states {:?}",
            self.c.tree.states()
        );
        let on_disk = std::fs::read(&self.path).unwrap();
        assert_eq!(on_disk.len(), model.len(), "SOURCE size != model size");
        if let Some(i) = on_disk.iter().zip(model).position(|(a, b)| a != b) {
            panic!(
                "SOURCE differs from the model at byte {i} (source {}, model {})",
                on_disk[i], model[i]
            );
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(wb) = self.wb.take() {
            wb.stop(&self.ctx);
        }
    }
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("still false after 1 s: {what}");
}

fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at +{i}: got {} want {}",
            got[i], want[i]
        );
    }
}

// ---------------------------------------------------------------------------------------
// Operations and the model
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Write {
        off: u64,
        len: usize,
        seed: u64,
        append: bool,
    },
    Read {
        off: u64,
        len: u32,
    },
    Truncate(u64),
    Punch {
        off: u64,
        len: u64,
    },
    Writeback,
    DropClean,
    Evict(u64),
    Sync,
    /// The last handle closed: SOURCE's I/O descriptor goes when clean, later I/O reopens it.
    Close,
}

fn apply(f: &Fixture, model: &mut Vec<u8>, op: &Op) {
    let (ctx, c) = (&f.ctx, &f.c);
    match *op {
        Op::Write {
            off,
            len,
            seed,
            append,
        } => {
            let data = bytes(seed, len);
            let kind = if append {
                WriteKind::Append
            } else {
                WriteKind::At
            };
            let (at, _) = ctx.write(c, off, &data, kind).unwrap();
            let want_at = if append { model.len() as u64 } else { off };
            assert_eq!(at, want_at, "write offset");
            let end = at as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[at as usize..end].copy_from_slice(&data);
        }
        Op::Read { off, len } => {
            let got = f.read(off, len);
            let s = (off as usize).min(model.len());
            let e = (off as usize).saturating_add(len as usize).min(model.len());
            assert_bytes_eq(&got, &model[s..e], &format!("read({off}, {len})"));
        }
        Op::Truncate(size) => {
            ctx.truncate(c, size).unwrap();
            model.resize(size as usize, 0);
        }
        Op::Punch { off, len } => {
            f.punch(off, len);
            let s = (off as usize).min(model.len());
            let e = (off as usize).saturating_add(len as usize).min(model.len());
            model[s..e].fill(0);
        }
        Op::Writeback => ctx.writeback_file(c, true).unwrap(),
        Op::DropClean => {
            ctx.drop_clean(c);
        }
        Op::Evict(pages) => {
            ctx.evict(pages);
        }
        Op::Sync => ctx.sync_file(c, false).unwrap(),
        Op::Close => c.close_file_if_idle(),
    }
    assert_eq!(c.size(), model.len() as u64, "size after {op:?}");
}

fn run_ops(ops: &[Op]) {
    let f = Fixture::new(POOL, true);
    let mut model = Vec::new();
    for op in ops {
        apply(&f, &mut model, op);
        f.check_quiescent();
    }
    f.check_source(&model);
    f.check_quiescent();
    // Everything clean now: all of it must read back, even after dropping the cache.
    f.ctx.drop_clean(&f.c);
    let all = f.read_all(model.len() as u64);
    assert_bytes_eq(&all, &model, "full read after drop_clean");
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0..SPAN,
        2 => 0..(64 * P),
        1 => (0..SPAN / P).prop_map(|p| p * P),
    ]
}

fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 1usize..(3 * P as usize),
        1 => 1usize..(1 << 20),
        1 => (1usize..64).prop_map(|p| p * P as usize),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (offset(), length(), any::<u64>(), prop::bool::weighted(0.1)).prop_map(
            |(off, len, seed, append)| Op::Write { off, len, seed, append }
        ),
        5 => (offset(), length()).prop_map(|(off, len)| Op::Read { off, len: len as u32 }),
        2 => offset().prop_map(Op::Truncate),
        2 => (offset(), length()).prop_map(|(off, len)| Op::Punch { off, len: len as u64 }),
        1 => Just(Op::Writeback),
        1 => Just(Op::DropClean),
        1 => (1u64..4096).prop_map(Op::Evict),
        1 => Just(Op::Sync),
        1 => Just(Op::Close),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("CACHE_MODEL_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(24),
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_ops_match_model(ops in prop::collection::vec(op(), 1..48)) {
        run_ops(&ops);
    }
}

// ---------------------------------------------------------------------------------------
// Deterministic scenarios
// ---------------------------------------------------------------------------------------

#[test]
fn unaligned_write_read_and_sparse_extension() {
    let f = Fixture::new(POOL, true);
    let mut m = Vec::new();
    for op in [
        Op::Write {
            off: 1000,
            len: 5000,
            seed: 1,
            append: false,
        },
        Op::Write {
            off: 3 * P + 17,
            len: 10,
            seed: 2,
            append: false,
        },
        // Sparse write far past EOF: the gap must read as zeros.
        Op::Write {
            off: 10 * P + 4095,
            len: 2,
            seed: 3,
            append: false,
        },
        Op::Write {
            off: 0,
            len: 7,
            seed: 4,
            append: true,
        },
        Op::Read {
            off: 0,
            len: 20 * P as u32,
        },
        Op::Read {
            off: 4 * P - 1,
            len: 3,
        },
        Op::Sync,
        Op::DropClean,
        Op::Read {
            off: 999,
            len: 5002,
        },
        Op::Read {
            off: 0,
            len: 20 * P as u32,
        },
    ] {
        apply(&f, &mut m, &op);
        f.check_quiescent();
    }
    f.check_source(&m);
}

#[test]
fn truncate_down_then_up_reads_zeros() {
    let f = Fixture::new(POOL, true);
    let mut m = Vec::new();
    for op in [
        Op::Write {
            off: 0,
            len: 5 * P as usize,
            seed: 9,
            append: false,
        },
        // Cached and dirty: cut inside a page, then grow again.
        Op::Truncate(2 * P + 100),
        Op::Truncate(6 * P),
        Op::Read {
            off: 0,
            len: 6 * P as u32,
        },
        // Same with clean (written back) data, then with nothing cached.
        Op::Write {
            off: 0,
            len: 5 * P as usize,
            seed: 10,
            append: false,
        },
        Op::Sync,
        Op::Truncate(P + 1),
        Op::Truncate(4 * P + 5),
        Op::Read {
            off: 0,
            len: 6 * P as u32,
        },
        Op::Sync,
        Op::DropClean,
        Op::Truncate(7),
        Op::Truncate(3 * P),
        Op::Read {
            off: 0,
            len: 6 * P as u32,
        },
    ] {
        apply(&f, &mut m, &op);
        f.check_quiescent();
    }
    f.check_source(&m);
}

#[test]
fn punch_inside_cached_dirty_data() {
    let f = Fixture::new(POOL, true);
    let mut m = Vec::new();
    for op in [
        Op::Write {
            off: 0,
            len: 8 * P as usize,
            seed: 5,
            append: false,
        },
        Op::Sync,
        Op::Write {
            off: 100,
            len: 6 * P as usize,
            seed: 6,
            append: false,
        },
        // Dirty, unaligned on both ends, spanning whole pages.
        Op::Punch {
            off: P + 300,
            len: 3 * P + 10,
        },
        Op::Read {
            off: 0,
            len: 8 * P as u32,
        },
        // Inside one page, and on clean data.
        Op::Punch {
            off: 7 * P + 1,
            len: 2,
        },
        Op::Read {
            off: 0,
            len: 8 * P as u32,
        },
        Op::Sync,
        Op::DropClean,
        Op::Read {
            off: 0,
            len: 8 * P as u32,
        },
    ] {
        apply(&f, &mut m, &op);
        f.check_quiescent();
    }
    f.check_source(&m);
}

/// More data than the pool holds, written and read back: writers must make progress through
/// reclaim (eviction of written-back data, kicks to the writeback threads).
#[test]
fn working_set_three_times_the_pool() {
    let f = Fixture::new(POOL, true);
    let mut m = Vec::new();
    let chunk = 512 * 1024;
    let mut off = 0;
    while off < SPAN {
        apply(
            &f,
            &mut m,
            &Op::Write {
                off: off + 7,
                len: chunk,
                seed: off,
                append: false,
            },
        );
        off += chunk as u64;
    }
    f.check_quiescent();
    let mut r = Rng(77);
    for _ in 0..64 {
        let o = r.below(m.len() as u64);
        let l = 1 + r.below(300_000) as u32;
        apply(&f, &mut m, &Op::Read { off: o, len: l });
    }
    f.check_source(&m);
}

/// `f`'s file made `len` bytes long in 1 MiB writes, written back, and dropped from the pool.
fn written_back_file(f: &Fixture, m: &mut Vec<u8>, len: u64) {
    let chunk = 1 << 20;
    for off in (0..len).step_by(chunk) {
        let write = Op::Write {
            off,
            len: chunk,
            seed: off + 1,
            append: false,
        };
        apply(f, m, &write);
    }
    apply(f, m, &Op::Sync);
    apply(f, m, &Op::DropClean);
}

/// A file 3x the pool read round and round in 1 MiB requests (a scan): every pass reads what
/// was written; once the file holds half the pool the scan reads the rest past the pool instead
/// of evicting, so later passes hit the head it kept, and a small file read between passes
/// stays cached.
#[test]
fn a_scan_of_a_file_larger_than_the_pool_keeps_what_the_pool_holds() {
    let f = Fixture::new(POOL, true);
    let mut m = Vec::new();
    written_back_file(&f, &mut m, SPAN);
    let small_data = bytes(5, 2 << 20);
    let small = f.other_file("small", &small_data);
    let read_small = || {
        f.ctx
            .read(&small, 0, small_data.len() as u32, false, |b| b.to_vec())
            .unwrap()
    };
    assert_bytes_eq(&read_small(), &small_data, "the small file");
    for pass in 0..3 {
        let hits = f.c.hit_bytes.load(Ordering::Relaxed);
        assert_bytes_eq(&f.read_all(SPAN), &m, &format!("pass {pass}"));
        let hit = f.c.hit_bytes.load(Ordering::Relaxed) - hits;
        if pass > 0 {
            assert!(hit >= POOL / 4, "pass {pass} hit only {hit} bytes");
        }
        let misses = small.miss_bytes.load(Ordering::Relaxed);
        assert_bytes_eq(&read_small(), &small_data, "the small file");
        assert_eq!(
            small.miss_bytes.load(Ordering::Relaxed),
            misses,
            "pass {pass} pushed the small file out of the pool"
        );
        f.check_quiescent();
    }
    assert!(f.ctx.stats.read_around_bytes.load(Ordering::Relaxed) >= SPAN);
}

/// The scan of a file larger than the pool with pages rewritten between passes, some still
/// dirty and some under writeback when it passes: it never serves SOURCE's older bytes.
#[test]
fn a_scan_past_the_pool_reads_what_was_written_since() {
    let f = Fixture::new(POOL, true);
    let mut m = Vec::new();
    written_back_file(&f, &mut m, SPAN);
    let mut r = Rng(11);
    for pass in 0..4 {
        for k in 0..6 {
            let write = Op::Write {
                off: r.below(SPAN),
                len: 1 + r.below(3 * P) as usize,
                seed: 100 * pass + k,
                append: false,
            };
            apply(&f, &mut m, &write);
        }
        if pass == 2 {
            apply(&f, &mut m, &Op::Writeback);
        }
        assert_bytes_eq(&f.read_all(m.len() as u64), &m, &format!("pass {pass}"));
    }
    assert!(f.ctx.stats.read_around_bytes.load(Ordering::Relaxed) > 0);
    apply(&f, &mut m, &Op::Sync);
    f.check_quiescent();
    f.check_source(&m);
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

/// 4 threads write and read their own disjoint 8 MiB region of one file (together 2x the
/// pool), one thread truncates at random sizes beyond all regions, one thread writes back,
/// drops clean data and evicts. Each region thread checks its reads against its own model;
/// at the end SOURCE must match the regions, zeros after them, and the last truncate's size.
#[test]
fn concurrent_regions_with_truncates() {
    const REGION: u64 = 8 << 20;
    const THREADS: u64 = 4;
    const OPS: usize = 150;
    let f = Fixture::new(POOL, true);
    let top = THREADS * REGION;
    f.ctx.truncate(&f.c, top + 12345).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (models, last_size) = std::thread::scope(|s| {
        let f = &f;
        let stop = &stop;
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let base = t * REGION;
                    let mut model = vec![0u8; REGION as usize];
                    let mut r = Rng(1000 + t);
                    for i in 0..OPS {
                        let off = r.below(REGION - 1);
                        let max = (REGION - off).min(if r.below(8) == 0 { 1 << 20 } else { 3 * P });
                        let len = 1 + r.below(max) as usize;
                        if r.below(3) == 0 {
                            let got = f.read(base + off, len as u32);
                            let want = &model[off as usize..off as usize + len];
                            assert_bytes_eq(&got, want, &format!("thread {t} op {i} read"));
                        } else {
                            let data = bytes(r.next(), len);
                            f.ctx.write(&f.c, base + off, &data, WriteKind::At).unwrap();
                            model[off as usize..off as usize + len].copy_from_slice(&data);
                        }
                    }
                    model
                })
            })
            .collect();
        let truncater = s.spawn(move || {
            let mut r = Rng(4242);
            let mut last = top + 12345;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                last = top + r.below(3 << 20);
                f.ctx.truncate(&f.c, last).unwrap();
                assert!(f.c.size() >= top);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            last
        });
        let janitor = s.spawn(move || {
            let mut r = Rng(99);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match r.below(3) {
                    0 => f.ctx.writeback_file(&f.c, true).unwrap(),
                    1 => {
                        f.ctx.drop_clean(&f.c);
                    }
                    _ => {
                        f.ctx.evict(1 + r.below(2048));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
        });
        let models: Vec<Vec<u8>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        janitor.join().unwrap();
        (models, truncater.join().unwrap())
    });
    assert_eq!(f.c.size(), last_size);
    f.check_quiescent();
    let mut whole = Vec::with_capacity(last_size as usize);
    for m in &models {
        whole.extend_from_slice(m);
    }
    whole.resize(last_size as usize, 0);
    f.check_source(&whole);
    let all = f.read_all(last_size);
    assert_bytes_eq(&all, &whole, "full read after the threads");
}

/// Punching the dirty tail of a file that SOURCE does not cover yet (the size was extended
/// only in the cache) must still leave SOURCE at the cached size after writeback.
///
/// (Regression test: `CacheContext::punch` used to clear the dirty tail and leave SOURCE
/// short, so the size shrank once the cache was dropped.)
#[test]
fn punch_dirty_tail_past_source_eof() {
    let f = Fixture::new(POOL, false);
    let mut m = Vec::new();
    for op in [
        Op::Write {
            off: 0,
            len: 100,
            seed: 1,
            append: false,
        },
        Op::Punch { off: 50, len: 50 },
        Op::Read { off: 0, len: 200 },
    ] {
        apply(&f, &mut m, &op);
        f.check_quiescent();
    }
    f.check_source(&m);
}

#[test]
fn writes_stop_at_sources_maximum_file_size() {
    // SOURCE is the temp dir's filesystem; whatever its limit, the cache holds to it.
    let f = Fixture::new(POOL, false);
    let max = f.c.file.max_size();
    let data = bytes(7, 3 * P as usize);
    let err = |r: std::io::Result<(u64, usize)>| r.unwrap_err().raw_os_error();
    assert_eq!(
        err(f.ctx.write(&f.c, max, &data, WriteKind::At)),
        Some(libc::EFBIG)
    );
    assert_eq!(
        err(f.ctx.write(&f.c, u64::MAX - 10, &data, WriteKind::At)),
        Some(libc::EFBIG)
    );
    assert_eq!(f.c.size(), 0);
    assert_eq!(
        f.ctx.truncate(&f.c, max + 1).unwrap_err().raw_os_error(),
        Some(libc::EFBIG)
    );
    // Crossing the limit: cut short there.
    let (at, n) = f.ctx.write(&f.c, max - 100, &data, WriteKind::At).unwrap();
    assert_eq!((at, n), (max - 100, 100));
    assert_eq!(f.c.size(), max);
    assert_eq!(f.read(max - 100, 4096), data[..100].to_vec());
    // At the limit, even appending is refused.
    assert_eq!(
        err(f.ctx.write(&f.c, 0, &data, WriteKind::Append)),
        Some(libc::EFBIG)
    );
    f.ctx.truncate(&f.c, 0).unwrap();
    f.check_quiescent();
}
