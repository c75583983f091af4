//! `InodeCache`: the cached data of one SOURCE file (one per inode, shared by all its handles).
//!
//! It owns the file's [`ExtentStateTree`] (what is UPTODATE, DIRTY, LOCKED, under WRITEBACK)
//! and [`ExtentMap`] (which pool pages hold which range), the open SOURCE file, and the file's
//! logical size. The operations here never wait for memory: when the pool is short they return
//! [`Again::NoMemory`] after undoing nothing that is visible, and the caller
//! ([`super::CacheContext`]) releases its range lock, reclaims, and retries.
//!
//! Invariants (outside a LOCKED range):
//! - a page is mapped in the map exactly when it is UPTODATE in the tree;
//! - DIRTY bytes are UPTODATE; bytes under WRITEBACK are not DIRTY (a write in between waits);
//! - bytes at or past `size` are never DIRTY, and cached bytes past `size` in the last page
//!   are zero;
//! - SOURCE's size never exceeds `size` (truncation reaches SOURCE at once; extension reaches
//!   it by writeback).

use super::backing::Backing;
use super::mapped::MappedPages;
use crate::extent::map::{ExtentMap, NoMemory};
use crate::extent::ptr::ExtentPtr;
use crate::extent::state::{Bits, ExtentStateTree};
use crate::extent::ByteRange;
use crate::pool::{PagePool, PAGE_SIZE};
use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) const P: u64 = PAGE_SIZE as u64;

/// The largest file offset we accept (the kernel's own limit for FUSE files).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

pub(crate) fn floor_page(x: u64) -> u64 {
    x & !(P - 1)
}

/// Round up to a page; saturates at the last page boundary below 2^64.
pub(crate) fn ceil_page(x: u64) -> u64 {
    x.checked_add(P - 1).map(floor_page).unwrap_or(!(P - 1))
}

/// Why an operation must be retried after the caller released its lock.
#[derive(Debug)]
pub enum Again {
    NoMemory(u64),
    Io(io::Error),
}

impl From<NoMemory> for Again {
    fn from(n: NoMemory) -> Again {
        Again::NoMemory(n.pages)
    }
}

impl From<io::Error> for Again {
    fn from(e: io::Error) -> Again {
        Again::Io(e)
    }
}

thread_local! {
    static IOVECS: RefCell<Vec<libc::iovec>> = const { RefCell::new(Vec::new()) };
    static HELD: RefCell<Vec<ExtentPtr>> = const { RefCell::new(Vec::new()) };
    static BOUNCE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The first `len` bytes of a per-thread buffer, grown (never shrunk, never cleared: callers
/// overwrite what they use) to hold them.
fn bounce_slice(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// LOCKED over a range of a state tree, released on drop (also when a bug unwinds through
/// the holder, so a panic cannot leave a range locked forever).
pub(crate) struct RangeGuard<'a> {
    tree: &'a ExtentStateTree,
    range: ByteRange,
}

impl<'a> RangeGuard<'a> {
    /// Wait until `range` has no LOCKED byte (nor any of `also_wait_for`), lock it.
    pub(crate) fn lock(
        tree: &'a ExtentStateTree,
        range: ByteRange,
        also_wait_for: Bits,
    ) -> RangeGuard<'a> {
        tree.lock_range_waiting(range, also_wait_for);
        RangeGuard { tree, range }
    }

    /// Lock without waiting, or None.
    pub(crate) fn try_lock(tree: &'a ExtentStateTree, range: ByteRange) -> Option<RangeGuard<'a>> {
        // Not `then_some`: that would build (and drop, i.e. unlock) a guard on failure.
        tree.try_lock_range(range)
            .then(|| RangeGuard { tree, range })
    }
}

impl RangeGuard<'_> {
    /// Unlock, setting `set` in the same step; returns the change in DIRTY bytes.
    pub(crate) fn unlock_setting(self, set: Bits) -> i64 {
        let delta = self.tree.unlock_range_with(self.range, set, Bits::NONE);
        std::mem::forget(self);
        delta
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.tree.unlock_range(self.range);
    }
}

/// Identity of a SOURCE inode.
pub type InodeKey = (u64, u64);

/// How long after a write SOURCE's own stamp of its writeback may stand for the write's
/// mtime: longer than a step of the coarse clock writes are timed with (a timer tick, 1 to
/// 10 ms), far shorter than any time a user compares.
pub const SOURCE_STAMP_WINDOW_NS: i128 = 50_000_000;

/// The mtime the cache knows better than SOURCE.
///
/// A write's time is stamped on SOURCE (utimensat) once its data is there, since the
/// writeback may come long after the write. When the writeback came within
/// [`SOURCE_STAMP_WINDOW_NS`] of it (close-to-open writes back at close) and nobody was shown
/// the recorded time, SOURCE's own stamp of the writeback stands instead: it is the write's
/// time to within the window and is ordered with every other timestamp of SOURCE by SOURCE's
/// kernel (the coarse clock a write is timed with can run behind a fine-grained timestamp
/// SOURCE gave an object changed just before), and it needs no system call. Kept once
/// stamped: a getattr that read SOURCE between a writeback's pwrite and the stamp would
/// otherwise show the pwrite's time.
#[derive(Clone, Copy, Debug)]
struct PendingMtime {
    time: libc::timespec,
    /// In SOURCE already.
    stamped: bool,
    /// Recorded by a write and not yet shown (getattr): SOURCE's stamp may replace it.
    replaceable: bool,
}

/// Whether `source` is `t` or later by at most the window.
fn within_stamp_window(t: libc::timespec, source: libc::timespec) -> bool {
    let ns = |x: libc::timespec| x.tv_sec as i128 * 1_000_000_000 + x.tv_nsec as i128;
    (0..=SOURCE_STAMP_WINDOW_NS).contains(&(ns(source) - ns(t)))
}

pub struct InodeCache {
    pub key: InodeKey,
    pub tree: ExtentStateTree,
    pub map: ExtentMap,
    /// SOURCE's file, the only way to it.
    pub file: Box<dyn Backing>,
    size: AtomicU64,
    /// Monotonic ms when the file last went from clean to dirty (0 = clean).
    pub(crate) dirty_since: AtomicU64,
    /// errno of the last failed writeback not yet reported to fsync/flush.
    wb_error: Mutex<Option<i32>>,
    /// errno of the last failed writeback ever (stats).
    pub last_wb_error: AtomicU64,
    /// mtime of the last write or utimens not yet (or just) in SOURCE; see [`PendingMtime`].
    pending_mtime: Mutex<Option<PendingMtime>>,
    pub(crate) wb_queued: AtomicBool,
    /// The file's mode may carry set-user-ID or set-group-ID (checked before writes).
    pub(crate) may_have_setid: AtomicBool,
    /// Serializes fsyncs of SOURCE's file: an fsync error is reported to one caller only, so
    /// two concurrent commits could otherwise both settle the same unstable bytes.
    pub(crate) commit_lock: Mutex<()>,
    /// The kernel forgot the inode: drop the cache once clean.
    pub(crate) forgotten: AtomicBool,
    pub(crate) open_handles: AtomicU64,
    last_read_end: AtomicU64,
    pub hit_bytes: AtomicU64,
    pub miss_bytes: AtomicU64,
    /// Where the evictor's hand stands in this file.
    pub(crate) evict_hand: AtomicU64,
    /// SOURCE space reserved for this file's dirty pages (see [`super::space`]).
    pub(crate) space: super::space::FileSpace,
    /// Monotonic second (+1) of the last `touch_atime` (0 = never).
    atime_touched: AtomicU64,
    /// What a shared mapping may hold of the file in the kernel's page cache (cache=pool),
    /// and the bytes direct writes replaced there; taken under a range lock, after it.
    mapped: Mutex<MappedPages>,
    /// `mapped` is not empty: the data paths look at it only then.
    mapped_any: AtomicBool,
    /// `CacheContext::now_ms` of the last revalidation against SOURCE (0 = never).
    pub(crate) revalidated_ms: AtomicU64,
    /// Written back at close and awaiting SOURCE's fsync: the flusher commits it soon.
    pub(crate) commit_due: AtomicBool,
}

impl InodeCache {
    /// `dirty_total`: the mount's count of DIRTY bytes, which this file's tree keeps.
    pub fn new(
        key: InodeKey,
        pool: Arc<PagePool>,
        dirty_total: Arc<AtomicU64>,
        space: Arc<super::space::SpaceAccounts>,
        bases: Arc<super::mapped::Budget>,
        file: Box<dyn Backing>,
    ) -> io::Result<InodeCache> {
        let st = file.stat()?;
        Ok(InodeCache {
            key,
            tree: ExtentStateTree::with_dirty_total(dirty_total),
            map: ExtentMap::new(pool),
            file,
            size: AtomicU64::new(st.st_size as u64),
            dirty_since: AtomicU64::new(0),
            wb_error: Mutex::new(None),
            last_wb_error: AtomicU64::new(0),
            pending_mtime: Mutex::new(None),
            wb_queued: AtomicBool::new(false),
            may_have_setid: AtomicBool::new(st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0),
            commit_lock: Mutex::new(()),
            forgotten: AtomicBool::new(false),
            open_handles: AtomicU64::new(0),
            last_read_end: AtomicU64::new(u64::MAX),
            hit_bytes: AtomicU64::new(0),
            miss_bytes: AtomicU64::new(0),
            evict_hand: AtomicU64::new(0),
            space: super::space::FileSpace::new(space),
            atime_touched: AtomicU64::new(0),
            mapped: Mutex::new(MappedPages::with_budget(bases)),
            mapped_any: AtomicBool::new(false),
            revalidated_ms: AtomicU64::new(0),
            commit_due: AtomicBool::new(false),
        })
    }

    /// An open file (handle) of this inode starts.
    pub fn opened(&self) {
        self.open_handles.fetch_add(1, Ordering::Relaxed);
    }

    /// An open file of this inode ends; true when it was the last.
    pub fn closed(&self) -> bool {
        self.open_handles
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            == Ok(1)
    }

    /// Whether any open file of this inode is left.
    pub fn is_open(&self) -> bool {
        self.open_handles.load(Ordering::Relaxed) > 0
    }

    /// SOURCE's file mode was set to `mode` through the mount: whether set-ID bits may need
    /// dropping at the next write follows it.
    pub fn note_mode(&self, mode: u32) {
        self.may_have_setid.store(
            mode & (libc::S_ISUID | libc::S_ISGID) != 0,
            Ordering::Relaxed,
        );
    }

    /// Whether the file may have set-ID bits (a write by a caller without CAP_FSETID then
    /// drops them).
    pub fn may_have_setid(&self) -> bool {
        self.may_have_setid.load(Ordering::Relaxed)
    }

    /// The logical file size (what the kernel is told).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub(crate) fn set_size(&self, s: u64) {
        self.size.store(s, Ordering::Release);
    }

    pub(crate) fn extend_size(&self, end: u64) {
        self.size.fetch_max(end, Ordering::AcqRel);
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.tree.dirty_bytes()
    }

    /// Nothing to write back and nothing waiting for SOURCE's fsync.
    pub fn is_clean(&self) -> bool {
        self.tree.dirty_bytes() == 0 && self.nothing_awaits_fsync()
    }

    /// No writeback in flight and nothing written to SOURCE that awaits its fsync.
    fn nothing_awaits_fsync(&self) -> bool {
        self.tree.writeback_bytes() == 0 && self.tree.find_first(0, Bits::UNSTABLE).is_none()
    }

    /// A read was served: let SOURCE record the access, at most once a second per file (the
    /// mount's atime options then decide, see `DataFile::touch_atime`).
    pub fn touch_atime(&self) {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
        let now = ts.tv_sec as u64 + 1;
        let last = self.atime_touched.load(Ordering::Relaxed);
        if last != now
            && self
                .atime_touched
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if let Err(e) = self.file.touch_atime() {
                tracing::debug!("atime of inode {:?} not recorded: {e}", self.key);
            }
        }
    }

    /// Give SOURCE's I/O descriptor back when no handle is open and nothing written through
    /// it awaits an fsync (the next fill or writeback reopens it). Dirty data may remain: it
    /// lives in the pool and needs no descriptor until its writeback, so a tree of freshly
    /// written files holds no descriptor per file while the writeback catches up.
    pub fn close_file_if_idle(&self) {
        self.file.close_io(&|| {
            self.open_handles.load(Ordering::Relaxed) == 0 && self.nothing_awaits_fsync()
        });
    }

    /// Trees' heap use: state tree plus extent map.
    pub fn metadata_bytes(&self) -> usize {
        self.tree.metadata_bytes() + self.map.metadata_bytes()
    }

    /// The mtime the cache knows better than SOURCE (from writes or an explicit utimens), as
    /// shown to a getattr: from now on it is the one SOURCE gets.
    pub fn mtime_override(&self) -> Option<libc::timespec> {
        let mut g = self.pending_mtime.lock().unwrap();
        g.as_mut().map(|p| {
            p.replaceable = false;
            p.time
        })
    }

    /// An explicit mtime (utimens) writeback must stamp, or None.
    pub(crate) fn set_pending_mtime(&self, t: Option<libc::timespec>) {
        *self.pending_mtime.lock().unwrap() = t.map(|time| PendingMtime {
            time,
            stamped: false,
            replaceable: false,
        });
    }

    /// SOURCE stamped its own mtime (fallocate, punch): it is the one to show, unless writes
    /// are still waiting to stamp theirs.
    pub fn source_stamped(&self) {
        let mut g = self.pending_mtime.lock().unwrap();
        if g.is_some_and(|p| p.stamped) {
            *g = None;
        }
    }

    /// Stamp "modified now" with the coarse clock, as the kernel stamps files (SOURCE's own
    /// mtimes then never run behind ours for objects changed later; see [`PendingMtime`] for
    /// when SOURCE's stamp of the writeback stands instead).
    pub(crate) fn record_write_time(&self) {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        let ts = libc::timespec {
            tv_sec: ts.tv_sec,
            tv_nsec: ts.tv_nsec,
        };
        *self.pending_mtime.lock().unwrap() = Some(PendingMtime {
            time: ts,
            stamped: false,
            replaceable: true,
        });
    }

    /// Once all written data is in SOURCE (nothing dirty or under writeback; it may still
    /// await its fsync, which then covers the stamp too): stamp the recorded mtime on SOURCE.
    pub(crate) fn apply_pending_mtime(&self) {
        let mut g = self.pending_mtime.lock().unwrap();
        let Some(p) = *g else { return };
        if p.stamped || self.tree.dirty_bytes() > 0 || self.tree.writeback_bytes() > 0 {
            return;
        }
        let by_source = self
            .file
            .recorded_mtime()
            .filter(|&m| p.replaceable && within_stamp_window(p.time, m));
        let time = match by_source {
            Some(m) => m,
            None if self.file.set_mtime(p.time).is_ok() => p.time,
            None => return,
        };
        *g = Some(PendingMtime {
            time,
            stamped: true,
            replaceable: false,
        });
    }

    pub(crate) fn record_wb_error(&self, errno: i32) {
        *self.wb_error.lock().unwrap() = Some(errno);
        self.last_wb_error.store(errno as u64, Ordering::Relaxed);
    }

    /// Report (and forget) a writeback error, like the kernel's errseq for fsync/close.
    pub fn take_wb_error(&self) -> Option<i32> {
        self.wb_error.lock().unwrap().take()
    }

    pub fn peek_wb_error(&self) -> Option<i32> {
        *self.wb_error.lock().unwrap()
    }

    /// Drop the set-ID bits that `to_drop(st_mode, st_gid)` names (the caller's rule, asked
    /// only when SOURCE's file has one) from SOURCE's file: a modification by a caller without
    /// CAP_FSETID. True if the mode changed.
    pub fn kill_setid(&self, to_drop: impl FnOnce(u32, u32) -> u32) -> io::Result<bool> {
        let st = self.file.stat()?;
        let mode = st.st_mode & 0o7777;
        let setid = libc::S_ISUID | libc::S_ISGID;
        let kill = if mode & setid != 0 {
            to_drop(st.st_mode, st.st_gid) & setid
        } else {
            0
        };
        if kill != 0 {
            self.file.chmod(mode & !kill)?;
        }
        self.note_mode(mode & !kill);
        Ok(kill != 0)
    }

    /// Is `off` where the previous read ended (a sequential reader)?
    pub(crate) fn is_sequential(&self, off: u64) -> bool {
        off == 0 || self.last_read_end.load(Ordering::Relaxed) == off
    }

    pub(crate) fn note_read_end(&self, end: u64) {
        self.last_read_end.store(end, Ordering::Relaxed);
    }

    // ---- operations under a range lock held by the caller ----

    /// Make the page-aligned `pages` UPTODATE: map memory over the missing pieces and read
    /// them from SOURCE in as few large reads as possible. Returns bytes read from SOURCE.
    /// Caller holds LOCKED over `pages`.
    pub(crate) fn fill(&self, pages: ByteRange) -> Result<u64, Again> {
        if self.tree.test_range(pages, Bits::UPTODATE) {
            return Ok(0);
        }
        let mut missing: Vec<ByteRange> = Vec::new();
        self.tree
            .for_each_missing(pages, Bits::UPTODATE, |m| missing.push(m));
        let mut read = 0;
        for m in missing {
            self.map_range(m)?;
            read += self.read_from_source(m)?;
            self.tree.set_bits(m, Bits::UPTODATE);
        }
        Ok(read)
    }

    /// Map memory over every unmapped page of page-aligned `r`.
    pub(crate) fn map_range(&self, r: ByteRange) -> Result<(), NoMemory> {
        let mut gaps = [ByteRange::default(); 8];
        loop {
            let mut n = 0;
            let mut more = false;
            self.map.for_each_gap(r, |g| {
                if n < gaps.len() {
                    gaps[n] = g;
                    n += 1;
                } else {
                    more = true;
                }
            });
            for &g in &gaps[..n] {
                self.map.map_gap(g)?;
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Read `r` of SOURCE into the mapped pool pages; zero what lies past SOURCE's EOF.
    /// Caller holds LOCKED over `r`.
    pub(crate) fn read_from_source(&self, r: ByteRange) -> io::Result<u64> {
        let n = self.with_iovecs(r, |iov| self.file.read_full(iov, r.start()))?;
        if (n as u64) < r.len() {
            self.zero_range(ByteRange::new(r.start() + n as u64, r.end()));
        }
        Ok(n as u64)
    }

    /// Run `f` over iovecs covering the mapped range `r`, holding its extents alive.
    pub(crate) fn with_iovecs<R>(
        &self,
        r: ByteRange,
        f: impl FnOnce(&mut [libc::iovec]) -> io::Result<R>,
    ) -> io::Result<R> {
        let (s, e) = (r.start(), r.end());
        IOVECS.with(|iov_cell| {
            HELD.with(|held_cell| {
                let mut iov = iov_cell.borrow_mut();
                let mut held = held_cell.borrow_mut();
                iov.clear();
                held.clear();
                let mut cur = s;
                while cur < e {
                    let Some(ptr) = self.map.get(cur) else {
                        held.clear();
                        return Err(io::Error::other(format!(
                            "extentfs bug: no pool memory mapped at {cur:#x}"
                        )));
                    };
                    let t = ptr.piece_end(cur).min(e);
                    // SAFETY: this fn's caller holds LOCKED (a read from SOURCE into the pages)
                    // or WRITEBACK (a write of them) over [s, e), which covers [cur, t); `ptr` is
                    // pushed to `held` below, so it outlives `f`'s use of the iovecs.
                    unsafe { ptr.iovecs(cur, (t - cur) as usize, &mut iov) };
                    ptr.mark_referenced();
                    held.push(ptr);
                    cur = t;
                }
                let r = f(&mut iov);
                held.clear();
                iov.clear();
                r
            })
        })
    }

    /// Zero whatever of `r` is mapped. Caller holds LOCKED over `r`.
    pub(crate) fn zero_range(&self, r: ByteRange) {
        let mut pieces: Vec<ByteRange> = Vec::new();
        self.map.for_each_mapped(r, |piece| pieces.push(piece));
        for piece in pieces {
            let mut cur = piece.start();
            while cur < piece.end() {
                let Some(ptr) = self.map.get(cur) else { break };
                let t = ptr.piece_end(cur).min(piece.end());
                // SAFETY: this fn's caller holds LOCKED over `r` (its contract), which covers
                // [cur, t); `ptr` is held in this loop iteration and t <= piece_end(cur), so the
                // range is mapped memory of `ptr`.
                unsafe { ptr.zero(cur, (t - cur) as usize) };
                cur = t;
            }
        }
    }

    /// Copy `data` into the mapped range starting at `off`. Caller holds LOCKED.
    pub(crate) fn copy_in(&self, off: u64, data: &[u8]) {
        let mut cur = off;
        let mut done = 0usize;
        while done < data.len() {
            let ptr = self.map.get(cur).expect("write range is mapped");
            let n = ((ptr.piece_end(cur) - cur) as usize).min(data.len() - done);
            // SAFETY: this fn's caller holds LOCKED over [off, off + data.len()), which covers
            // [cur, cur + n); n stops at piece_end(cur), so the range is mapped memory of `ptr`,
            // held here.
            unsafe { ptr.copy_in(cur, &data[done..done + n]) };
            ptr.mark_referenced();
            done += n;
            cur += n as u64;
        }
    }

    /// Copy the bytes at `off` into `out`. Caller holds LOCKED.
    pub(crate) fn copy_out(&self, off: u64, out: &mut [u8]) {
        self.with_bytes(off, out.len(), |b| out.copy_from_slice(b))
    }

    fn lock_mapped(&self) -> std::sync::MutexGuard<'_, MappedPages> {
        self.mapped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mapped-pages record, when a mapping ever read the file.
    pub(crate) fn mapped_pages(&self) -> Option<std::sync::MutexGuard<'_, MappedPages>> {
        self.mapped_any
            .load(Ordering::Acquire)
            .then(|| self.lock_mapped())
    }

    /// The kernel read `[a, b)` into its page cache (a mapping's fault). Caller holds LOCKED,
    /// so that no direct write to those pages comes in between the read and this record.
    pub(crate) fn note_page_cache_read(&self, a: u64, b: u64) {
        self.lock_mapped().note_page_cache_read(a, b);
        self.mapped_any.store(true, Ordering::Release);
    }

    /// Read `[off, off+len)` of SOURCE into this thread's buffer, past the pool, and call `f`
    /// with it; what lies past SOURCE's EOF reads as zeros (as [`Self::fill`] gives). Caller
    /// holds LOCKED over the range and has checked that none of it is cached, so SOURCE holds
    /// its bytes.
    pub(crate) fn read_around<R>(
        &self,
        off: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        BOUNCE.with(|cell| {
            let mut buf = cell.borrow_mut();
            let b = bounce_slice(&mut buf, len);
            let mut iov = [libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: len,
            }];
            let n = self.file.read_full(&mut iov, off)?.min(len);
            b[n..].fill(0);
            Ok(f(b))
        })
    }

    /// Call `f` with the bytes `[off, off+len)`, straight from pool memory when they lie in one
    /// contiguous run, else gathered into a per-thread buffer. Caller holds LOCKED.
    pub(crate) fn with_bytes<R>(&self, off: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        if len == 0 {
            return f(&[]);
        }
        let first = self.map.get(off).expect("read range is mapped");
        first.mark_referenced();
        if off + len as u64 <= first.end() {
            // SAFETY: this fn's caller holds LOCKED over [off, off + len), which keeps writers
            // out while `f` reads the slice; `first` outlives it.
            if let Some(s) = unsafe { first.slice(off, len) } {
                return f(s);
            }
        }
        BOUNCE.with(|cell| {
            let mut buf = cell.borrow_mut();
            let buf = bounce_slice(&mut buf, len);
            let mut cur = off;
            let mut done = 0usize;
            while done < len {
                let ptr = self.map.get(cur).expect("read range is mapped");
                let n = ((ptr.piece_end(cur) - cur) as usize).min(len - done);
                // SAFETY: this fn's caller holds LOCKED over [off, off + len), which covers [cur,
                // cur + n); n stops at piece_end(cur) so the range is mapped memory of `ptr`, and
                // `buf` is a unique borrow of this thread's bounce buffer.
                unsafe { ptr.copy_out(cur, &mut buf[done..done + n]) };
                done += n;
                cur += n as u64;
            }
            f(buf)
        })
    }

    /// Prepare the page-aligned `pages` for a write of `w` (which they hold): map memory over
    /// pages that are not UPTODATE, and read from SOURCE the edge pages the write covers only
    /// in part. Caller holds LOCKED and waited for WRITEBACK over `pages`.
    pub(crate) fn prepare_write(&self, pages: ByteRange, w: ByteRange) -> Result<u64, Again> {
        if self.tree.test_range(pages, Bits::UPTODATE) {
            return Ok(0);
        }
        let mut missing = [ByteRange::default(); 4];
        let mut n = 0;
        let mut overflow = false;
        self.tree.for_each_missing(pages, Bits::UPTODATE, |m| {
            if n < missing.len() {
                missing[n] = m;
                n += 1;
            } else {
                overflow = true;
            }
        });
        if overflow {
            // Many holes: make everything UPTODATE the simple way.
            return self.fill(pages);
        }
        let (off, end) = (w.start(), w.end());
        // The first and the last page of the write (the same page for a small one).
        let edges = w.page_aligned();
        let (head, tail) = (edges.start(), edges.end() - P);
        let mut read = 0;
        for &m in &missing[..n] {
            self.map_range(m)?;
            // Edge pages the write does not cover fully must hold the old bytes.
            if off > head && m.contains(head) {
                read += self.read_from_source(ByteRange::at(head, P))?;
            }
            if end < tail + P && m.contains(tail) && (tail != head || off == head) {
                read += self.read_from_source(ByteRange::at(tail, P))?;
            }
            // Pages past the old EOF that the write will not cover are zero (fresh memory
            // from the pool may hold old data).
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(tv_sec: i64, tv_nsec: i64) -> libc::timespec {
        libc::timespec { tv_sec, tv_nsec }
    }

    #[test]
    fn source_stamps_stand_for_a_write_only_just_after_it() {
        let t = ts(100, 999_000_000);
        assert!(within_stamp_window(t, t));
        assert!(
            within_stamp_window(t, ts(101, 40_000_000)),
            "41 ms later, across a second"
        );
        assert!(within_stamp_window(t, ts(101, 49_000_000)));
        assert!(!within_stamp_window(t, ts(101, 49_000_001)), "past 50 ms");
        assert!(
            !within_stamp_window(t, ts(100, 998_999_999)),
            "before the write"
        );
        assert!(!within_stamp_window(t, ts(99, 999_000_000)));
    }
}
