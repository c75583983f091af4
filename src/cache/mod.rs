//! The cache as a whole: every file's [`InodeCache`], the shared [`PagePool`], and the data
//! paths that need more than one file (reclaim, throttling, writeback scheduling).
//!
//! `CacheContext` is the only entry point the FUSE layer uses for file data:
//! [`CacheContext::read`], [`CacheContext::write`], [`CacheContext::truncate`],
//! [`CacheContext::punch`], [`CacheContext::sync_file`]... Each takes the file's range lock in
//! its state tree, works on pool memory through `ExtentPtr`s, and never waits for memory or for
//! writeback while holding a range lock (it unlocks, reclaims or waits, and retries), so a
//! full pool cannot deadlock the writers against the writeback threads.

pub mod backing;
pub mod coherence;
#[cfg(test)]
mod error_paths;
pub mod evict;
pub mod inode_cache;
pub mod mapped;
pub mod report;
pub mod space;
pub mod validator;
pub mod writeback;

use crate::extent::state::Bits;
use crate::extent::ByteRange;
use crate::pool::PagePool;
use crate::stats::{self, Counters, OpCounters};
use backing::Backing;
use inode_cache::{
    ceil_page, floor_page, Again, InodeCache, InodeKey, RangeGuard, MAX_FILE_SIZE, P,
};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where a write comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// A write at an offset (write(2) under cache=pool, copy_file_range...).
    At,
    /// A write at the end of the file, wherever that is when the range is locked.
    Append,
    /// The kernel writing back a page of its page cache (a shared mapping under cache=pool).
    PageCache,
}

/// Tunables of the cache (from the mount options).
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Dirty bytes above which writers wait for writeback.
    pub dirty_limit: u64,
    pub dirty_expire: Duration,
    pub writeback_threads: usize,
    /// Bytes read ahead of a sequential reader.
    pub readahead: u64,
    /// Largest single write to SOURCE.
    pub max_writeback: u64,
    pub read_only: bool,
    /// Writes reserve SOURCE space (ENOSPC at write(), see [`space`]). Off under
    /// cache=kernel, where writes come from the kernel's page cache: a failed page writeback
    /// is not retried by the kernel, whereas data accepted into the pool is kept until it is
    /// written.
    pub reserve_space: bool,
}

impl CacheConfig {
    pub fn new(pool_bytes: u64, dirty_limit_share: f64) -> CacheConfig {
        CacheConfig {
            dirty_limit: ((pool_bytes as f64 * dirty_limit_share) as u64).max(4 << 20),
            dirty_expire: Duration::from_secs(5),
            writeback_threads: 2,
            readahead: (2u64 << 20).min(pool_bytes / 16),
            max_writeback: 16 << 20,
            read_only: false,
            reserve_space: true,
        }
    }
}

pub struct CacheContext {
    pub pool: Arc<PagePool>,
    pub cfg: CacheConfig,
    pub stats: Counters,
    pub ops: OpCounters,
    caches: Mutex<HashMap<InodeKey, Arc<InodeCache>>>,
    /// Sum of every file's DIRTY bytes, kept by the files' state trees themselves (see
    /// `ExtentStateTree::with_dirty_total`).
    dirty: Arc<AtomicU64>,
    /// SOURCE space reserved by dirty data, per SOURCE filesystem (see [`space`]).
    pub space: Arc<space::SpaceAccounts>,
    /// Bytes the files may keep for shared mappings (see [`mapped`]).
    bases: Arc<mapped::Budget>,
    /// Bumped whenever writeback or eviction makes progress; waiters sleep on `progress_cv`.
    progress: Mutex<Progress>,
    progress_cv: Condvar,
    /// errno of the most recent failed writeback anywhere (0 = none since the last success).
    last_wb_errno: AtomicU64,
    clock_hand: AtomicUsize,
    /// The flusher's latest pass was forced (`kick(true)`: a throttled writer, reclaim):
    /// background writeback goes on below the background threshold too.
    wb_forced: AtomicBool,
    /// When `prune` last checked that the files of forgotten caches still exist (ms).
    forgotten_checked_ms: AtomicU64,
    flusher: writeback::Flusher,
    started: Instant,
    pub shutting_down: AtomicBool,
}

/// The progress counter writers and reclaimers wait on.
#[derive(Default)]
struct Progress {
    generation: u64,
    waiters: usize,
}

/// Caches of forgotten files kept with their data, at most (see [`CacheContext::cap_forgotten`]).
const MAX_FORGOTTEN_CACHES: usize = 65_536;

/// How often `prune` checks that the files of forgotten caches still exist in SOURCE.
const FORGOTTEN_CHECK_MS: u64 = 5_000;

/// Whether a cache may leave the registry: the kernel forgot its inode, no handle is open,
/// nobody else holds it, it is clean, and it holds no data, or SOURCE descriptors run low
/// (each kept cache holds its inode's), or `even_with_data`.
fn may_drop(c: &Arc<InodeCache>, even_with_data: bool) -> bool {
    c.forgotten.load(Ordering::Relaxed)
        && c.is_clean()
        && c.open_handles.load(Ordering::Relaxed) == 0
        && Arc::strong_count(c) == 1
        && (even_with_data
            || c.map.mapped_bytes() == 0
            || c.file.descriptors() != backing::IoDescriptors::Ample)
}

/// Whether the cache's file is gone from SOURCE: its last link was deleted, or its handle
/// names no file any more (ESTALE). Any other error (EIO, EMFILE...) says nothing.
fn file_gone(c: &InodeCache) -> bool {
    match c.file.stat() {
        Ok(st) => st.st_nlink == 0,
        Err(e) => matches!(e.raw_os_error(), Some(libc::ESTALE) | Some(libc::ENOENT)),
    }
}

impl CacheContext {
    pub fn new(pool: Arc<PagePool>, cfg: CacheConfig) -> Arc<CacheContext> {
        Arc::new(CacheContext {
            pool,
            cfg,
            stats: Counters::default(),
            ops: OpCounters::default(),
            caches: Mutex::new(HashMap::new()),
            dirty: Arc::new(AtomicU64::new(0)),
            space: Arc::default(),
            bases: Arc::new(mapped::Budget::new(mapped::BASES_LIMIT)),
            progress: Mutex::new(Progress::default()),
            progress_cv: Condvar::new(),
            last_wb_errno: AtomicU64::new(0),
            clock_hand: AtomicUsize::new(0),
            wb_forced: AtomicBool::new(false),
            forgotten_checked_ms: AtomicU64::new(0),
            flusher: writeback::Flusher::new(),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Milliseconds since the cache started, as a `dirty_since` stamp (monotonic): never 0
    /// (clean) nor [`writeback::WRITEBACK_NOW`].
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + writeback::WRITEBACK_NOW + 1
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.dirty.load(Ordering::Relaxed)
    }

    pub fn writeback_bytes(&self) -> u64 {
        self.all_caches()
            .iter()
            .map(|c| c.tree.writeback_bytes())
            .sum()
    }

    /// The cache of the SOURCE inode `key`, created (with `open_file`) on first use.
    /// The cache registry. A panic elsewhere while it was held (a bug, answered EIO by the
    /// FUSE layer) must not take the flusher down with it: the map itself is always valid.
    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<InodeKey, Arc<InodeCache>>> {
        self.caches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A cache the kernel forgot is found again by its key when the file is looked up again,
    /// with the data it kept (coherence revalidates it at the next open like any cached
    /// file). If its file is gone from SOURCE meanwhile (its descriptor says so: the inode
    /// number may since name another file), it is discarded and a new cache made.
    pub fn get_or_create<B: Backing + 'static>(
        &self,
        key: InodeKey,
        open_file: impl FnOnce() -> io::Result<B>,
    ) -> io::Result<Arc<InodeCache>> {
        let mut m = self.registry();
        if let Some(c) = m.get(&key).cloned() {
            if !c.forgotten.swap(false, Ordering::Relaxed) || !file_gone(&c) {
                return Ok(c);
            }
            drop(m);
            self.discard(&c);
            m = self.registry();
            if m.get(&key).is_some_and(|x| Arc::ptr_eq(x, &c)) {
                m.remove(&key);
            }
            drop(c);
            if let Some(c) = m.get(&key) {
                // Made by a racing lookup of the new file meanwhile.
                return Ok(c.clone());
            }
        }
        let c = Arc::new(InodeCache::new(
            key,
            self.pool.clone(),
            self.dirty.clone(),
            self.space.clone(),
            self.bases.clone(),
            Box::new(open_file()?),
        )?);
        m.insert(key, c.clone());
        Ok(c)
    }

    pub fn get(&self, key: InodeKey) -> Option<Arc<InodeCache>> {
        self.registry().get(&key).cloned()
    }

    pub fn all_caches(&self) -> Vec<Arc<InodeCache>> {
        self.registry().values().cloned().collect()
    }

    /// The kernel forgot the inode (it reclaims unused inodes whenever it likes, e.g. under
    /// memory pressure): the cache keeps the file's data, which pool eviction, not the
    /// kernel's inode cache, decides about; a cache holding nothing goes once it is clean.
    /// A deleted file's data is dropped at once, and with it the last descriptor on the
    /// SOURCE inode, so SOURCE frees the space.
    pub fn forget(&self, key: InodeKey) {
        let Some(c) = self.get(key) else { return };
        c.forgotten.store(true, Ordering::Relaxed);
        if c.open_handles.load(Ordering::Relaxed) == 0 {
            self.discard_if_deleted(&c);
        }
        drop(c);
        let mut m = self.registry();
        if m.get(&key).is_some_and(|c| may_drop(c, false)) {
            m.remove(&key);
        }
    }

    /// Drop every clean cache (and its SOURCE descriptor): the session is over.
    pub fn release_clean(&self) {
        self.registry().retain(|_, c| !c.is_clean());
    }

    /// Drop the caches of forgotten files that hold nothing (pool eviction took their data),
    /// or, while SOURCE descriptors run low, that are clean (their data goes with them: each
    /// holds its SOURCE inode's descriptor). Every few seconds, also those whose file was
    /// deleted in SOURCE, so that a kept cache does not keep a deleted file's space (called
    /// by the flusher).
    pub(crate) fn prune(&self) {
        let now = self.now_ms();
        let last = self.forgotten_checked_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= FORGOTTEN_CHECK_MS)
            && self
                .forgotten_checked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // Only those still holding their inode: without a descriptor SOURCE frees a
            // deleted file's space anyway, and the next lookup finds out (ESTALE).
            let kept: Vec<_> = self
                .all_caches()
                .into_iter()
                .filter(|c| {
                    c.forgotten.load(Ordering::Relaxed)
                        && c.open_handles.load(Ordering::Relaxed) == 0
                        && c.file.holds_inode()
                })
                .collect();
            for c in kept {
                if file_gone(&c) {
                    self.discard(&c);
                }
            }
        }
        self.registry().retain(|_, c| !may_drop(c, false));
        self.cap_forgotten(MAX_FORGOTTEN_CACHES);
    }

    /// Keep at most `cap` caches of forgotten files (each costs its trees and a descriptor
    /// or a handle): past it, clean ones go, data and all, down to three quarters of `cap`.
    pub(crate) fn cap_forgotten(&self, cap: usize) {
        let mut m = self.registry();
        let forgotten = m
            .values()
            .filter(|c| c.forgotten.load(Ordering::Relaxed))
            .count();
        if forgotten <= cap {
            return;
        }
        let mut excess = forgotten - cap * 3 / 4;
        m.retain(|_, c| {
            if excess > 0 && may_drop(c, true) {
                excess -= 1;
                return false;
            }
            true
        });
    }

    pub(crate) fn bump_progress(&self) {
        let mut g = self.progress.lock().unwrap();
        g.generation += 1;
        // A notify is a system call even with nobody waiting: writeback bumps once per run.
        if g.waiters > 0 {
            self.progress_cv.notify_all();
        }
    }

    fn wait_progress(&self, timeout: Duration) {
        let mut g = self.progress.lock().unwrap();
        let gen = g.generation;
        g.waiters += 1;
        let (mut g, _) = self
            .progress_cv
            .wait_timeout_while(g, timeout, |g| g.generation == gen)
            .unwrap();
        g.waiters -= 1;
    }

    // ---- DIRTY: the trees count the bytes; these two also keep each file's dirty clock ----

    pub(crate) fn set_dirty(&self, c: &InodeCache, r: ByteRange) {
        let added = c.tree.set_bits(r, Bits::DIRTY);
        self.dirtied(c, added);
    }

    /// `added` bytes became DIRTY in `c`: start its dirty clock if it was clean.
    fn dirtied(&self, c: &InodeCache, added: u64) {
        if added > 0 {
            let _ = c.dirty_since.compare_exchange(
                0,
                self.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Clear DIRTY over `r` and set `set` there (e.g. WRITEBACK), in one step.
    pub(crate) fn clear_dirty(&self, c: &InodeCache, r: ByteRange, set: Bits) {
        c.tree.set_clear_bits(r, set, Bits::DIRTY);
        if c.tree.dirty_bytes() == 0 {
            c.dirty_since.store(0, Ordering::Relaxed);
        }
    }

    // ---- reads ----

    /// Read `[off, off+size)` (clipped at EOF) and hand the bytes to `out` straight from pool
    /// memory while the range is locked. `into_page_cache`: the kernel keeps these pages in
    /// its page cache (a mapping's read under cache=pool; see [`mapped`]).
    pub fn read<R>(
        &self,
        c: &InodeCache,
        off: u64,
        size: u32,
        into_page_cache: bool,
        out: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        stats::add(&self.stats.read_requests, 1);
        let fsize = c.size();
        if off >= fsize || size == 0 {
            return Ok(out(&[]));
        }
        let want_end = off.saturating_add(size as u64).min(fsize);
        let wanted = ByteRange::new(off, want_end).page_aligned();
        let mut pages = wanted;
        let sequential = c.is_sequential(off);
        // Sequential reader: read ahead while we are at it.
        let mut ra = 0;
        if self.cfg.readahead > 0 && sequential && !c.tree.test_range(pages, Bits::UPTODATE) {
            let nb = ceil_page(fsize).min(pages.end().saturating_add(self.cfg.readahead));
            ra = nb - pages.end();
            pages = ByteRange::new(pages.start(), nb);
        }
        // The fill found no room (with no read-ahead to give up): the read must evict.
        let mut must_evict = false;
        loop {
            let guard = RangeGuard::lock(&c.tree, pages, Bits::NONE);
            let len = (want_end.min(c.size()).max(off) - off) as usize;
            if sequential && self.reads_around(c, wanted, must_evict) {
                // Noted before the reply goes out: the reader's next request may come first.
                c.note_read_end(off + len as u64);
                let r = c.read_around(off, len, out);
                if into_page_cache && r.is_ok() {
                    c.note_page_cache_read(pages.start(), ceil_page(off + len as u64));
                }
                drop(guard);
                let r = r?;
                self.count_read(c, len as u64, len as u64, 0);
                stats::add(&self.stats.read_around_bytes, len as u64);
                return Ok(r);
            }
            match c.fill(pages) {
                Ok(read) => {
                    self.count_read(c, len as u64, read, ra);
                    if into_page_cache {
                        c.note_page_cache_read(pages.start(), ceil_page(off + len as u64));
                    }
                    // Noted before the reply goes out: the reader's next request may come first.
                    c.note_read_end(off + len as u64);
                    let r = c.with_bytes(off, len, out);
                    drop(guard);
                    return Ok(r);
                }
                Err(Again::NoMemory(short)) => {
                    drop(guard);
                    if ra > 0 {
                        // Under memory pressure, give up the read-ahead first.
                        pages = wanted;
                        ra = 0;
                        continue;
                    }
                    if sequential && !must_evict {
                        // Before evicting for it, see whether a scan should read past the pool.
                        must_evict = true;
                        continue;
                    }
                    self.reclaim(short)?;
                    must_evict = false;
                }
                Err(Again::Io(e)) => return Err(e),
            }
        }
    }

    /// Count a read of `len` bytes for which `read` bytes came from SOURCE, up to `ra` of
    /// them read ahead.
    fn count_read(&self, c: &InodeCache, len: u64, read: u64, ra: u64) {
        let hit = len.saturating_sub(read.min(len));
        stats::add(&self.stats.read_bytes, len);
        stats::add(&self.stats.read_hit_bytes, hit);
        stats::add(&c.hit_bytes, hit);
        if read > 0 {
            stats::add(&self.stats.source_read_ops, 1);
            let miss = read.min(len);
            stats::add(&self.stats.read_miss_bytes, miss);
            stats::add(&c.miss_bytes, miss);
            stats::add(
                &self.stats.readahead_bytes,
                read.saturating_sub(miss).min(ra),
            );
        }
    }

    /// Should this sequential read of `wanted` (page-aligned, range locked) go past the pool?
    /// See [`reads_around`]; the read must evict when `must_evict` (a fill found no room) or
    /// the pool has less free than `wanted`, and the range must hold nothing cached (so SOURCE
    /// has its bytes).
    fn reads_around(&self, c: &InodeCache, wanted: ByteRange, must_evict: bool) -> bool {
        let capacity = self.pool.capacity_pages() as u64 * P;
        let must_evict = must_evict || (self.pool.free_pages() as u64 * P) < wanted.len();
        reads_around(c.size(), capacity, c.map.mapped_bytes(), must_evict)
            && !c
                .tree
                .test_any(wanted, Bits::UPTODATE | Bits::DIRTY | Bits::WRITEBACK)
    }

    // ---- writes ----

    /// Write `data` at `off` (at EOF for [`WriteKind::Append`]) into the pool; mark it DIRTY.
    /// Returns the offset written at and the bytes written: as on SOURCE, a write starting at
    /// or past SOURCE's maximum file size fails with EFBIG and one crossing it is cut short
    /// there. SOURCE is not touched except to read partial edge pages.
    pub fn write(
        &self,
        c: &InodeCache,
        off: u64,
        data: &[u8],
        kind: WriteKind,
    ) -> io::Result<(u64, usize)> {
        let append = kind == WriteKind::Append;
        stats::add(&self.stats.write_requests, 1);
        if self.cfg.read_only || !c.file.writable() {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if data.is_empty() {
            return Ok((off, 0));
        }
        self.throttle()?;
        let max = c.file.max_size();
        let all = data;
        loop {
            let off = if append { c.size() } else { off };
            if off >= max {
                return Err(io::Error::from_raw_os_error(libc::EFBIG));
            }
            let data = &all[..(all.len() as u64).min(max - off) as usize];
            let w = ByteRange::at(off, data.len() as u64);
            let end = w.end();
            let pages = w.page_aligned();
            let guard = RangeGuard::lock(&c.tree, pages, Bits::WRITEBACK);
            if append && c.size() != off {
                continue;
            }
            // ENOSPC here, at write(), rather than at writeback. Not for the kernel's page
            // writeback (a mapping's pages): it would drop the page on an error.
            if self.cfg.reserve_space && kind != WriteKind::PageCache {
                if let Err(e) = self.reserve_space(c, pages) {
                    drop(guard);
                    return Err(e);
                }
            }
            // A direct write onto pages a mapping read keeps the bytes it replaces (see
            // [`mapped`]), so it needs them all, not just the edge pages. (Our range is
            // locked: whether it was faulted cannot change until we unlock.)
            let save = kind != WriteKind::PageCache
                && c.mapped_pages()
                    .is_some_and(|m| m.overlaps_faulted(off, end));
            let ready = if save {
                c.fill(pages)
            } else {
                c.prepare_write(pages, w)
            };
            match ready {
                Ok(_) => {}
                Err(Again::NoMemory(pages)) => {
                    drop(guard);
                    self.reclaim(pages)?;
                    continue;
                }
                Err(Again::Io(e)) => {
                    if self.cfg.reserve_space {
                        self.unreserve_clean(c, pages);
                    }
                    return Err(e);
                }
            }
            match c.mapped_pages() {
                Some(mut m) if save => {
                    m.save_bases(off, end, |s, out| c.copy_out(s, out));
                    drop(m);
                    c.copy_in(off, data);
                }
                Some(m) if kind == WriteKind::PageCache => {
                    m.apply_runs(off, data, |o, d| c.copy_in(o, d));
                }
                _ => c.copy_in(off, data),
            }
            c.extend_size(end);
            c.record_write_time();
            if pages == w {
                // Whole pages (the common case): UPTODATE and DIRTY in the unlocking step.
                let added = guard.unlock_setting(Bits::UPTODATE | Bits::DIRTY);
                self.dirtied(c, added.max(0) as u64);
            } else {
                c.tree.set_bits(pages, Bits::UPTODATE);
                self.set_dirty(c, w);
                drop(guard);
            }
            stats::add(&self.stats.write_bytes, data.len() as u64);
            return Ok((off, data.len()));
        }
    }

    /// Writers wait here while more than `dirty_limit` bytes are dirty.
    fn throttle(&self) -> io::Result<()> {
        if self.dirty_bytes() <= self.cfg.dirty_limit {
            return Ok(());
        }
        stats::add(&self.stats.backpressure_waits, 1);
        let mut last = self.dirty_bytes();
        let mut stalled = 0;
        while self.dirty_bytes() > self.cfg.dirty_limit {
            self.flusher.kick(true);
            self.wait_progress(Duration::from_millis(100));
            let now = self.dirty_bytes();
            if now < last {
                stalled = 0;
            } else {
                stalled += 1;
            }
            last = now;
            let errno = self.last_wb_errno.load(Ordering::Relaxed);
            // Writeback keeps failing and nothing drains: fail the write rather than hang.
            if errno != 0 && stalled >= 50 {
                return Err(io::Error::from_raw_os_error(errno as i32));
            }
        }
        Ok(())
    }

    /// Free at least `pages` pool pages: evict clean extents, else wait for writeback.
    pub fn reclaim(&self, pages: u64) -> io::Result<()> {
        let slack = (self.pool.capacity_pages() as u64 / 64).max(256);
        let mut waited = 0;
        loop {
            if self.pool.free_pages() as u64 >= pages {
                return Ok(());
            }
            self.evict(pages + slack);
            if self.pool.free_pages() as u64 >= pages {
                return Ok(());
            }
            // Nothing clean to evict: everything cached is dirty, locked or in use.
            stats::add(&self.stats.backpressure_waits, 1);
            self.flusher.kick(true);
            self.wait_progress(Duration::from_millis(20));
            waited += 1;
            let errno = self.last_wb_errno.load(Ordering::Relaxed);
            if errno != 0 && waited > 500 {
                return Err(io::Error::from_raw_os_error(errno as i32));
            }
            if pages > self.pool.capacity_pages() as u64 {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
        }
    }

    // ---- size changes and holes ----

    /// Set the file size to `new_size`, in the cache and in SOURCE.
    pub fn truncate(&self, c: &InodeCache, new_size: u64) -> io::Result<()> {
        if new_size > c.file.max_size() {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        let a = floor_page(new_size);
        let guard = RangeGuard::lock(&c.tree, ByteRange::from_offset(a), Bits::WRITEBACK);
        let r = (|| {
            c.file.set_len(new_size)?;
            if let Some(mut m) = c.mapped_pages() {
                m.truncate(new_size);
            }
            let tail = ceil_page(new_size);
            if !new_size.is_multiple_of(P) && c.tree.test_range(ByteRange::at(a, P), Bits::UPTODATE)
            {
                c.zero_range(ByteRange::new(new_size, tail));
            }
            let gone = ByteRange::from_offset(new_size);
            self.clear_dirty(c, gone, Bits::NONE);
            c.tree.clear_bits(gone, Bits::UNSTABLE);
            self.space_dropped_from(c, new_size);
            let whole_pages_gone = ByteRange::from_offset(tail);
            c.map.unmap(whole_pages_gone);
            c.tree.clear_bits(whole_pages_gone, Bits::UPTODATE);
            c.set_size(new_size);
            c.record_write_time();
            Ok(())
        })();
        drop(guard);
        self.bump_progress();
        r
    }

    /// Make `[off, off+len)` read as zero in the cache, dropping whole pages and zeroing the
    /// partial ones at the edges, then run `on_source` (the fallocate on SOURCE) under the lock.
    pub fn punch(
        &self,
        c: &InodeCache,
        off: u64,
        len: u64,
        on_source: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let end = off.saturating_add(len).min(MAX_FILE_SIZE);
        if end <= off {
            return on_source();
        }
        let hole = ByteRange::new(off, end);
        let guard = RangeGuard::lock(&c.tree, hole.page_aligned(), Bits::WRITEBACK);
        let r = (|| {
            on_source()?;
            let inner_a = ceil_page(off);
            let inner_b = floor_page(end);
            // Partial edge pages: zero the punched bytes where cached.
            for (s, e) in [(off, end.min(inner_a)), (inner_b.max(off), end)] {
                if s < e
                    && c.tree
                        .test_range(ByteRange::at(floor_page(s), P), Bits::UPTODATE)
                {
                    c.zero_range(ByteRange::new(s, e));
                }
            }
            self.clear_dirty(c, hole, Bits::NONE);
            c.tree.clear_bits(hole, Bits::UNSTABLE);
            self.space_punched(c, hole);
            // Dirty bytes past SOURCE's end were what would have extended SOURCE to the
            // file's size; the hole punched over them must not shorten the file.
            let keep = end.min(c.size());
            if (c.file.stat()?.st_size as u64) < keep {
                c.file.set_len(keep)?;
            }
            if let Some(inner) = hole.inner_pages() {
                c.map.unmap(inner);
                c.tree.clear_bits(inner, Bits::UPTODATE);
            }
            c.record_write_time();
            Ok(())
        })();
        drop(guard);
        self.bump_progress();
        r
    }

    /// Write back everything and drop every cached page of the file (before operations that
    /// move data around in SOURCE, e.g. collapse/insert range).
    pub fn invalidate(&self, c: &InodeCache) -> io::Result<()> {
        self.writeback_file(c, true)?;
        let guard = RangeGuard::lock(&c.tree, ByteRange::ALL, Bits::WRITEBACK);
        // Anything dirtied in between is written now, under the lock. If that fails, the
        // cache keeps everything (dirty data is never dropped).
        self.writeback_locked_all(c)?;
        self.commit(c, true, false, true)?;
        c.map.unmap(ByteRange::ALL);
        c.tree.clear_bits(ByteRange::ALL, Bits::UPTODATE);
        drop(guard);
        self.bump_progress();
        Ok(())
    }

    /// Ask the flusher to write this file back soon (close).
    pub fn queue_writeback(&self, c: &InodeCache) {
        c.dirty_since
            .store(writeback::WRITEBACK_NOW, Ordering::Relaxed);
        self.flusher.kick(false);
    }

    /// After SOURCE's size changed under an invalidated (empty) cache: adopt it.
    pub fn truncate_cache_to(&self, c: &InodeCache, size: u64) {
        self.space_relayout(c);
        c.set_size(size);
    }

    /// The file was deleted and its last handle closed: its data can never be read again, so
    /// drop it, dirty or not, instead of writing it back to an unlinked inode.
    pub fn discard_if_deleted(&self, c: &InodeCache) {
        if c.file.stat().is_ok_and(|st| st.st_nlink == 0) {
            self.discard(c);
        }
    }

    /// Drop everything cached of a file that is gone from SOURCE, dirty data too: it has
    /// nowhere to go.
    fn discard(&self, c: &InodeCache) {
        let guard = RangeGuard::lock(&c.tree, ByteRange::ALL, Bits::WRITEBACK);
        self.clear_dirty(c, ByteRange::ALL, Bits::NONE);
        c.map.unmap(ByteRange::ALL);
        c.tree
            .clear_bits(ByteRange::ALL, Bits::UPTODATE | Bits::UNSTABLE);
        self.space_dropped_from(c, 0);
        c.set_pending_mtime(None);
        let _ = c.take_wb_error();
        drop(guard);
        self.bump_progress();
    }

    /// Re-read the size from SOURCE after an operation that changed it there.
    pub fn refresh_size(&self, c: &InodeCache) -> io::Result<()> {
        let st = c.file.stat()?;
        c.extend_size(st.st_size as u64);
        Ok(())
    }

    /// Drop the clean cached data of one file (ctl `drop`). Returns bytes dropped.
    pub fn drop_clean(&self, c: &InodeCache) -> u64 {
        let mut dropped = 0;
        for e in c.map.extents() {
            dropped += self.try_evict_extent(c, e).unwrap_or(0);
        }
        self.bump_progress();
        dropped
    }

    /// fsync: write back the file's dirty data and make it durable in SOURCE.
    pub fn sync_file(&self, c: &InodeCache, datasync: bool) -> io::Result<()> {
        let r = self.writeback_pass(c, true).and_then(|_| {
            c.apply_pending_mtime();
            self.commit(c, datasync, true, false)
        });
        // An error of this call, or of a background writeback since the last report, is
        // reported once (like the kernel's errseq for fsync).
        let earlier = c.take_wb_error();
        r?;
        match earlier {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }

    /// As `sync_file` for each of `files` (ctl sync): write each back, make them durable
    /// together (one syncfs per SOURCE filesystem), and report each file's error, or one of
    /// a background writeback since its last report, once. Goes on past a failing file;
    /// returns the first error.
    pub fn sync_files(&self, files: &[Arc<InodeCache>]) -> io::Result<()> {
        let mut first: Option<io::Error> = None;
        let mut written = Vec::new();
        for c in files {
            match self.writeback_pass(c, true) {
                Ok(()) => {
                    c.apply_pending_mtime();
                    written.push(c.clone());
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        for (_, e) in self.commit_many(&written, true) {
            first.get_or_insert(e);
        }
        for c in files {
            if let Some(errno) = c.take_wb_error() {
                first.get_or_insert(io::Error::from_raw_os_error(errno));
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Write back every file and make it durable (unmount, SIGTERM, ctl sync). Returns the
    /// first error.
    pub fn sync_all(&self) -> io::Result<()> {
        let mut first: Option<io::Error> = None;
        let mut written = Vec::new();
        for c in self.all_caches() {
            match self.writeback_pass(&c, true) {
                Ok(()) => {
                    c.apply_pending_mtime();
                    written.push(c);
                }
                Err(e) => {
                    tracing::error!(
                        "writeback of {} failed: {e}; its dirty data stays in the cache",
                        report::file_name(&c)
                    );
                    first.get_or_insert(e);
                }
            }
        }
        // Durable with one syncfs per SOURCE filesystem (only files with data written back
        // and not yet durable take part: background writeback made the rest durable).
        for (c, e) in self.commit_many(&written, false) {
            tracing::error!(
                "fsync of {} failed: {e}; its written-back data is dirty again",
                report::file_name(&c)
            );
            first.get_or_insert(e);
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// SEEK_DATA/SEEK_HOLE: answered by SOURCE once the file's dirty data is written back.
    pub fn seek(&self, c: &InodeCache, off: i64, whence: i32) -> io::Result<i64> {
        self.writeback_file(c, true)?;
        c.file.lseek(off, whence)
    }
}

/// The scan rule: a sequential reader of a file larger than the pool reads past the pool
/// (from SOURCE, caching nothing) when its read would have to evict and the file already holds
/// half the pool. Evicting would only make room for bytes the scan itself evicts before they are
/// read again (CLOCK, like LRU, keeps nothing of a file read round and round that does not
/// fit), and would push every other file out. So the pool keeps what it holds of the file
/// (the first pass's head) and other files keep the rest. A file that fits is always cached.
pub(crate) fn reads_around(
    file_size: u64,
    pool_capacity: u64,
    file_resident: u64,
    must_evict: bool,
) -> bool {
    must_evict && file_size > pool_capacity && file_resident >= pool_capacity / 2
}

pub(crate) fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// For the cache's unit tests (no mount): a context over a small pool, and the cache of a file
/// in a directory, opened as the FUSE layer opens it.
#[cfg(test)]
mod tests {
    use super::reads_around;

    const MIB: u64 = 1 << 20;

    #[test]
    fn only_a_scan_of_a_file_larger_than_the_pool_reads_past_it() {
        // A 256 MiB file over a full 128 MiB pool of which it holds 100 MiB: past the pool.
        assert!(reads_around(256 * MIB, 128 * MIB, 100 * MIB, true));
        // A file that fits is cached, whatever else the pool holds.
        assert!(!reads_around(128 * MIB, 128 * MIB, 10 * MIB, true));
        // Room for the read: no eviction, so it is cached.
        assert!(!reads_around(256 * MIB, 128 * MIB, 100 * MIB, false));
        // The file holds less than half the pool: it may still evict to grow to half.
        assert!(!reads_around(256 * MIB, 128 * MIB, 64 * MIB - 4096, true));
        assert!(reads_around(256 * MIB, 128 * MIB, 64 * MIB, true));
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::{CacheConfig, CacheContext, InodeCache};
    use crate::pool::{HugePagePolicy, PagePool, PoolConfig};
    use crate::source::path_fd::PathFd;
    use crate::source::{self, DataFile};
    use std::ffi::CString;
    use std::os::fd::AsFd;
    use std::path::Path;
    use std::sync::Arc;

    /// A context over a 16 MiB pool of 4 KiB pages, no writeback threads.
    pub(crate) fn context() -> Arc<CacheContext> {
        let pool = PagePool::new(&PoolConfig::new(16 << 20, HugePagePolicy::Off)).unwrap();
        CacheContext::new(Arc::new(pool), CacheConfig::new(16 << 20, 0.5))
    }

    /// The cache of the existing file `dir/name` in `ctx`.
    pub(crate) fn cache_of(ctx: &CacheContext, dir: &Path, name: &str) -> Arc<InodeCache> {
        let root = source::open_root(dir).unwrap();
        let fd = source::open_path(root.as_fd(), &CString::new(name).unwrap()).unwrap();
        let st = source::fstat(fd.as_fd()).unwrap();
        let pfd = PathFd::fixed(fd).unwrap();
        ctx.get_or_create((st.st_dev, st.st_ino), || {
            DataFile::open(pfd.clone(), false)
        })
        .unwrap()
    }
}
