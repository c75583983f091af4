//! SOURCE space for dirty data: a write that SOURCE cannot hold fails with ENOSPC at
//! `write()`, as on a local filesystem, instead of at a later writeback (under cache=pool
//! and for `write()`s only: the kernel's page writeback is never refused, see
//! `CacheConfig::reserve_space`).
//!
//! A write reserves SOURCE space for the pages it dirties that will need new blocks in
//! SOURCE, marking them RESERVED in the file's state tree; the reservation is released when
//! writeback has written them (SOURCE has allocated them then), or when truncate, a punched
//! hole or deletion drops the data. What counts as needing new blocks is a conservative
//! approximation: every page at or past the file's *allocated prefix* (`alloc_end`), the part
//! of SOURCE's file before its first hole (found with one `lseek(SEEK_HOLE)` when the file is
//! first written, then lowered by truncate and punch and raised by writeback that lands right
//! after it). Overwrites inside the prefix need nothing; writes into holes further in, and
//! pages past SOURCE's size, are reserved even where SOURCE would not need a block (a partly
//! allocated sparse file, a preallocated tail), so near a full SOURCE such a write may get
//! ENOSPC although it would have fitted. Not covered: copy-on-write filesystems (btrfs), which
//! need new blocks for overwrites too, and metadata blocks.
//!
//! Free space per SOURCE filesystem (st_dev) is `f_bavail * f_frsize` from `fstatvfs`, minus
//! what writeback has written since that figure was read, minus what is reserved. The figure
//! is read again at most once a second, and on every reservation while less than
//! [`NEAR_FULL`] is left; someone else filling SOURCE meanwhile is seen late, and then the
//! error comes at writeback (reported by `fsync`/`close`, the data kept). The `fstatvfs`
//! (a network round trip over NFS or sshfs) runs outside the accounts' lock: the first writer to
//! find the figure a second old reads it while the others go on with the old one, and a figure
//! is only replaced by one whose read started later.

use super::inode_cache::{ceil_page, floor_page, InodeCache, P};
use super::CacheContext;
use crate::extent::state::Bits;
use crate::extent::ByteRange;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Below this much estimated free space, SOURCE's statvfs is read on every reservation.
pub const NEAR_FULL: u64 = 64 << 20;
const REFRESH: Duration = Duration::from_secs(1);
const UNKNOWN: u64 = u64::MAX;

/// One SOURCE filesystem's accounting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DevSpace {
    /// Bytes reserved by dirty pages not yet written.
    pub reserved: u64,
    /// `f_bavail * f_frsize` when last read.
    pub avail: u64,
    /// Reserved bytes written back (allocated in SOURCE) since `avail` was read.
    pub landed: u64,
}

impl DevSpace {
    /// What may still be reserved.
    pub fn free(&self) -> u64 {
        self.avail
            .saturating_sub(self.landed)
            .saturating_sub(self.reserved)
    }
}

#[derive(Debug, Default)]
struct DevEntry {
    reserved: u64,
    /// SOURCE's figure, and how many landed bytes there were when its read started.
    avail: u64,
    landed_at_figure: u64,
    /// Every reserved byte that ever landed.
    landed_total: u64,
    /// When the last read of the figure started (None: never).
    read_at: Option<Instant>,
    /// Reads started so far, and the number of the one `avail` came from.
    reads: u64,
    applied: u64,
}

/// A read of SOURCE's figure started under the lock and run outside it.
#[derive(Clone, Copy, Debug)]
struct FigureRead {
    number: u64,
    landed_total: u64,
}

impl DevEntry {
    fn space(&self) -> DevSpace {
        DevSpace {
            reserved: self.reserved,
            avail: self.avail,
            landed: self.landed_total - self.landed_at_figure,
        }
    }

    fn start_read(&mut self) -> FigureRead {
        self.reads += 1;
        self.read_at = Some(Instant::now());
        FigureRead {
            number: self.reads,
            landed_total: self.landed_total,
        }
    }

    /// Take `avail`, read by `read`, unless a read started later was taken already.
    fn apply(&mut self, read: FigureRead, avail: u64) {
        if read.number > self.applied {
            self.applied = read.number;
            self.avail = avail;
            self.landed_at_figure = read.landed_total;
        }
    }
}

/// One mount's accounting of every SOURCE filesystem it writes to, by st_dev. Shared by the
/// mount's `CacheContext` and each file's [`FileSpace`] (which gives its reservation back when
/// the file's cache is dropped).
#[derive(Debug, Default)]
pub struct SpaceAccounts {
    devs: Mutex<HashMap<u64, DevEntry>>,
}

impl SpaceAccounts {
    fn with_devs<T>(&self, f: impl FnOnce(&mut HashMap<u64, DevEntry>) -> T) -> T {
        let mut g = self
            .devs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// Reserve `need` bytes on `dev`; `statvfs` reads SOURCE's free bytes. ENOSPC when they do
    /// not fit.
    fn reserve(
        &self,
        dev: u64,
        need: u64,
        statvfs: impl Fn() -> io::Result<u64>,
    ) -> io::Result<()> {
        // A figure this call read (outside the lock), to take on the next pass.
        let mut got: Option<(FigureRead, u64)> = None;
        loop {
            let read = self.with_devs(|devs| {
                let e = devs.entry(dev).or_default();
                let fresh = got
                    .take()
                    .map(|(read, avail)| e.apply(read, avail))
                    .is_some();
                let stale = e.read_at.is_none_or(|t| t.elapsed() >= REFRESH);
                let free = e.space().free();
                // Near full (or short): decide on a figure read for this reservation.
                if !fresh && (stale || free < NEAR_FULL.saturating_add(need)) {
                    return Ok(Some(e.start_read()));
                }
                if need > free {
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
                e.reserved += need;
                Ok(None)
            })?;
            let Some(read) = read else {
                return Ok(());
            };
            got = Some((read, statvfs()?));
        }
    }

    /// Adjust `dev`'s reservation by `delta` without checking (the state tree decided).
    fn adjust(&self, dev: u64, delta: i64, landed: bool) {
        if delta == 0 {
            return;
        }
        self.with_devs(|devs| {
            if let Some(e) = devs.get_mut(&dev) {
                if delta > 0 {
                    e.reserved += delta as u64;
                } else {
                    let d = delta.unsigned_abs().min(e.reserved);
                    e.reserved -= d;
                    if landed {
                        e.landed_total += d;
                    }
                }
            }
        })
    }

    /// The accounting of `dev` (stats and tests).
    pub fn dev_space(&self, dev: u64) -> Option<DevSpace> {
        self.with_devs(|devs| devs.get(&dev).map(DevEntry::space))
    }

    /// Bytes reserved on every SOURCE filesystem.
    pub fn reserved_total(&self) -> u64 {
        self.with_devs(|devs| devs.values().map(|e| e.reserved).sum())
    }
}

/// One file's part: its allocated prefix and the bytes its RESERVED pages hold (given back
/// when the cache is dropped, whatever happened before).
#[derive(Debug)]
pub struct FileSpace {
    alloc_end: AtomicU64,
    reserved: AtomicU64,
    dev: AtomicU64,
    /// Serializes finding `alloc_end` in SOURCE with lowering it (truncate, punch).
    find: Mutex<()>,
    accounts: Arc<SpaceAccounts>,
}

impl Drop for FileSpace {
    fn drop(&mut self) {
        let r = *self.reserved.get_mut();
        if r > 0 {
            self.accounts
                .adjust(*self.dev.get_mut(), -(r as i64), false);
        }
    }
}

impl FileSpace {
    pub fn new(accounts: Arc<SpaceAccounts>) -> FileSpace {
        FileSpace {
            alloc_end: AtomicU64::new(UNKNOWN),
            reserved: AtomicU64::new(0),
            dev: AtomicU64::new(0),
            find: Mutex::new(()),
            accounts,
        }
    }

    fn lock_find(&self) -> std::sync::MutexGuard<'_, ()> {
        self.find
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The allocated prefix, found in SOURCE on first use.
    fn alloc_end(&self, c: &InodeCache) -> u64 {
        let v = self.alloc_end.load(Ordering::Acquire);
        if v != UNKNOWN {
            return v;
        }
        let _g = self.lock_find();
        let v = self.alloc_end.load(Ordering::Acquire);
        if v != UNKNOWN {
            return v;
        }
        // ENXIO (an empty file) or any failure: nothing counts as allocated.
        let hole = c
            .file
            .lseek(0, libc::SEEK_HOLE)
            .map(|h| floor_page(h.max(0) as u64))
            .unwrap_or(0);
        self.alloc_end.store(hole, Ordering::Release);
        hole
    }

    /// SOURCE lost blocks from `at` on (truncate, punched hole).
    fn lower(&self, at: u64) {
        let _g = self.lock_find();
        let _ = self
            .alloc_end
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v != UNKNOWN && v > at).then_some(floor_page(at))
            });
    }

    /// SOURCE now has blocks for `[s, end)`.
    fn raise(&self, s: u64, end: u64) {
        let _ = self
            .alloc_end
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v != UNKNOWN && floor_page(s) <= v && ceil_page(end) > v).then_some(ceil_page(end))
            });
    }

    /// SOURCE's layout changed in ways not tracked (collapse/insert range): find it again.
    fn forget(&self) {
        let _g = self.lock_find();
        self.alloc_end.store(UNKNOWN, Ordering::Release);
    }

    /// Count `delta` bytes of RESERVED pages for this file and its filesystem.
    fn account(&self, dev: u64, delta: i64, landed: bool) {
        self.dev.store(dev, Ordering::Relaxed);
        if delta >= 0 {
            self.reserved.fetch_add(delta as u64, Ordering::AcqRel);
        } else {
            self.reserved
                .fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
        }
        self.accounts.adjust(dev, delta, landed);
    }
}

impl CacheContext {
    /// A write of the page range `pages`, locked by the caller: reserve SOURCE space for the
    /// pages past the file's allocated prefix that are not reserved yet, or fail with ENOSPC
    /// (nothing changed).
    pub(crate) fn reserve_space(&self, c: &InodeCache, pages: ByteRange) -> io::Result<()> {
        let past_alloc = pages.intersect(ByteRange::from_offset(c.space.alloc_end(c)));
        if past_alloc.is_empty() {
            return Ok(());
        }
        let mut need = 0;
        c.tree
            .for_each_missing(past_alloc, Bits::RESERVED, |m| need += m.len());
        if need == 0 {
            return Ok(());
        }
        let dev = c.key.0;
        self.space.reserve(dev, need, || {
            let st = c.file.statvfs()?;
            Ok(st.f_bavail.saturating_mul(st.f_frsize))
        })?;
        // Under the caller's lock the tree says exactly what became RESERVED (a writeback
        // may have released an edge page in between): account that.
        let set = c.tree.set_bits(past_alloc, Bits::RESERVED);
        self.space.adjust(dev, set as i64 - need as i64, false);
        c.space.dev.store(dev, Ordering::Relaxed);
        c.space.reserved.fetch_add(set, Ordering::AcqRel);
        Ok(())
    }

    /// The write of the page range `pages` failed after `reserve_space`: give back the pages
    /// holding no dirty byte.
    pub(crate) fn unreserve_clean(&self, c: &InodeCache, pages: ByteRange) {
        let mut p = pages.start();
        while p < pages.end() {
            let page = ByteRange::at(p, P);
            if !c.tree.test_any(page, Bits::DIRTY) {
                let n = c.tree.clear_bits(page, Bits::RESERVED);
                c.space.account(c.key.0, -(n as i64), false);
            }
            p += P;
        }
    }

    /// Writeback wrote `written`: SOURCE has blocks for its pages now.
    pub(crate) fn space_landed(&self, c: &InodeCache, written: ByteRange) {
        if written.is_empty() {
            return;
        }
        c.space.raise(written.start(), written.end());
        let n = c.tree.clear_bits(written.page_aligned(), Bits::RESERVED);
        c.space.account(c.key.0, -(n as i64), true);
    }

    /// The data from `from` on is gone (truncate, deletion) and SOURCE's blocks there with it.
    pub(crate) fn space_dropped_from(&self, c: &InodeCache, from: u64) {
        c.space.lower(from);
        let whole_pages = ByteRange::from_offset(ceil_page(from));
        let n = c.tree.clear_bits(whole_pages, Bits::RESERVED);
        c.space.account(c.key.0, -(n as i64), false);
        if !from.is_multiple_of(P) {
            self.unreserve_clean(c, ByteRange::at(floor_page(from), P));
        }
    }

    /// A hole was punched over `hole` (not empty).
    pub(crate) fn space_punched(&self, c: &InodeCache, hole: ByteRange) {
        c.space.lower(hole.start());
        if let Some(inner) = hole.inner_pages() {
            let n = c.tree.clear_bits(inner, Bits::RESERVED);
            c.space.account(c.key.0, -(n as i64), false);
        }
        // The edge pages, where no dirty byte is left on them.
        let pages = hole.page_aligned();
        let first = ByteRange::at(pages.start(), P);
        let last = ByteRange::new(pages.end() - P, pages.end());
        self.unreserve_clean(c, first);
        if last != first {
            self.unreserve_clean(c, last);
        }
    }

    /// SOURCE's file was rearranged behind the cache (collapse/insert range).
    pub(crate) fn space_relayout(&self, c: &InodeCache) {
        c.space.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_in_what_statvfs_says() {
        let a = SpaceAccounts::default();
        let dev = 0xdead_0001;
        let avail = 100 << 20;
        a.reserve(dev, 60 << 20, || Ok(avail)).unwrap();
        let e = a.reserve(dev, 50 << 20, || Ok(avail)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(
            a.dev_space(dev).unwrap().reserved,
            60 << 20,
            "nothing taken"
        );
        a.reserve(dev, 40 << 20, || Ok(avail)).unwrap();
        assert_eq!(a.dev_space(dev).unwrap().free(), 0);
        // 30 MiB written back: SOURCE's figure drops by as much as the reservation.
        a.adjust(dev, -(30 << 20), true);
        let s = a.dev_space(dev).unwrap();
        assert_eq!((s.reserved, s.landed, s.free()), (70 << 20, 30 << 20, 0));
        // Read again (near full): SOURCE says 30 MiB left, all of it reserved.
        let e = a.reserve(dev, 1, || Ok(30 << 20)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        // Dropped data gives its reservation back without landing anywhere.
        a.adjust(dev, -(70 << 20), false);
        a.reserve(dev, 30 << 20, || Ok(30 << 20)).unwrap();
    }

    #[test]
    fn a_statvfs_error_fails_the_reservation() {
        let a = SpaceAccounts::default();
        let dev = 0xdead_0002;
        let e = a
            .reserve(dev, 4096, || Err(io::Error::from_raw_os_error(libc::EIO)))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(a.dev_space(dev).unwrap().reserved, 0);
    }

    #[test]
    fn statvfs_runs_outside_the_lock_and_others_go_on_with_the_old_figure() {
        let a = Arc::new(SpaceAccounts::default());
        let dev = 0xdead_0004;
        a.reserve(dev, 4096, || Ok(1 << 30)).unwrap();
        // Make the figure a second old, then have one writer's read of it hang.
        a.with_devs(|d| d.get_mut(&dev).unwrap().read_at = Some(Instant::now() - REFRESH));
        let (entered, wait_entered) = std::sync::mpsc::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let slow = {
            let a = a.clone();
            std::thread::spawn(move || {
                a.reserve(dev, 4096, || {
                    // The accounts are not locked while SOURCE is asked.
                    let reserved = a.dev_space(dev).unwrap().reserved;
                    entered.send(reserved).unwrap();
                    held.recv().unwrap();
                    Ok(1 << 29)
                })
            })
        };
        assert_eq!(wait_entered.recv().unwrap(), 4096);
        // Another writer reserves meanwhile, on the figure already there.
        a.reserve(dev, 8192, || panic!("read again while a read is under way"))
            .unwrap();
        release.send(()).unwrap();
        slow.join().unwrap().unwrap();
        let s = a.dev_space(dev).unwrap();
        assert_eq!((s.reserved, s.avail), (16384, 1 << 29));
    }

    #[test]
    fn an_older_figure_does_not_replace_a_newer_one() {
        let mut e = DevEntry::default();
        let first = e.start_read();
        e.landed_total += 4096;
        let second = e.start_read();
        e.apply(second, 100 << 20);
        e.apply(first, 200 << 20);
        assert_eq!(e.space().avail, 100 << 20);
        // The second figure was read after the 4 KiB landed: it counts them already.
        assert_eq!(e.space().landed, 0);
    }

    #[test]
    fn a_dropped_file_gives_its_reservation_back() {
        let a = Arc::new(SpaceAccounts::default());
        let dev = 0xdead_0003;
        a.reserve(dev, 0, || Ok(1 << 30)).unwrap();
        let f = FileSpace::new(a.clone());
        f.account(dev, 8192, false);
        assert_eq!(a.dev_space(dev).unwrap().reserved, 8192);
        drop(f);
        assert_eq!(a.dev_space(dev).unwrap().reserved, 0);
    }

    #[test]
    fn the_allocated_prefix_moves() {
        let f = FileSpace::new(Default::default());
        f.alloc_end.store(8 * P, Ordering::Relaxed);
        f.raise(8 * P, 8 * P + 10);
        assert_eq!(
            f.alloc_end.load(Ordering::Relaxed),
            9 * P,
            "contiguous: raised"
        );
        f.raise(20 * P, 21 * P);
        assert_eq!(
            f.alloc_end.load(Ordering::Relaxed),
            9 * P,
            "past a hole: not"
        );
        f.lower(4 * P + 100);
        assert_eq!(f.alloc_end.load(Ordering::Relaxed), 4 * P);
        f.forget();
        f.raise(0, P);
        assert_eq!(
            f.alloc_end.load(Ordering::Relaxed),
            UNKNOWN,
            "unknown stays unknown"
        );
    }
}
