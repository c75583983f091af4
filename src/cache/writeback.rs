//! Writeback: DIRTY ranges go back to SOURCE, coalesced into large `pwritev` calls.
//!
//! One flusher thread decides *which* files to write back (dirty for longer than
//! `dirty_expire`, more than half the dirty limit in use, or a kick from a waiting writer) and
//! hands them to `writeback_threads` workers over a crossbeam channel. fsync and unmount write
//! back synchronously in the calling thread with the same code.
//!
//! Protocol for one range, in the file's state tree: lock it; turn its DIRTY bytes into
//! WRITEBACK; unlock (readers go on; writers of those bytes wait for WRITEBACK to clear, so the
//! bytes are stable while they are written); pwritev from pool memory; clear WRITEBACK. On
//! failure the bytes become DIRTY again (nothing is dropped, nothing is written twice by
//! design), the error is recorded for the file's next fsync/flush, and logged.

use super::inode_cache::{InodeCache, RangeGuard};
use super::report::file_name;
use super::{errno_of, CacheContext};
use crate::extent::state::Bits;
use crate::extent::ByteRange;
use crate::stats;
use crossbeam::channel::{self, Receiver, Sender};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Wakes the flusher thread.
pub(crate) struct Flusher {
    kicked: Mutex<(bool, bool)>, // (kicked, write everything)
    cv: Condvar,
}

impl Flusher {
    pub(crate) fn new() -> Flusher {
        Flusher {
            kicked: Mutex::new((false, false)),
            cv: Condvar::new(),
        }
    }

    /// Ask for a writeback pass now; `all` writes every dirty file regardless of age.
    pub(crate) fn kick(&self, all: bool) {
        let mut g = self.kicked.lock().unwrap();
        g.0 = true;
        g.1 |= all;
        self.cv.notify_one();
    }

    fn wait(&self, timeout: Duration) -> bool {
        let g = self.kicked.lock().unwrap();
        let (mut g, _) = self.cv.wait_timeout_while(g, timeout, |g| !g.0).unwrap();
        let all = g.1;
        *g = (false, false);
        all
    }
}

/// The running writeback threads.
pub struct WritebackThreads {
    handles: Vec<JoinHandle<()>>,
}

/// A `dirty_since` meaning "write back at the flusher's next pass" (close, `queue_writeback`).
pub(crate) const WRITEBACK_NOW: u64 = 1;

impl CacheContext {
    /// Start the flusher and the workers.
    pub fn start_writeback(self: &Arc<Self>) -> io::Result<WritebackThreads> {
        let (tx, rx): (Sender<Arc<InodeCache>>, Receiver<Arc<InodeCache>>) = channel::bounded(1024);
        let mut handles = Vec::new();
        for i in 0..self.cfg.writeback_threads.max(1) {
            let ctx = self.clone();
            let rx = rx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("writeback-{i}"))
                    .spawn(move || {
                        for c in rx.iter() {
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                // Written now, made durable by the flusher's next pass
                                // together with every other file (one syncfs per SOURCE
                                // filesystem, not an fsync per file).
                                if let Err(e) = ctx.writeback_pass(&c, false) {
                                    tracing::warn!(
                                        "background writeback of {}: {e}",
                                        file_name(&c)
                                    );
                                }
                                c.apply_pending_mtime();
                                if c.tree.find_first(0, Bits::UNSTABLE).is_some() {
                                    c.commit_due.store(true, Ordering::Release);
                                }
                            }));
                            if r.is_err() {
                                tracing::error!("bug: writeback of {} panicked", file_name(&c));
                            }
                            c.wb_queued.store(false, Ordering::Release);
                            ctx.bump_progress();
                        }
                    })?,
            );
        }
        let ctx = self.clone();
        handles.push(
            std::thread::Builder::new()
                .name("flusher".into())
                .spawn(move || ctx.flusher_loop(tx))?,
        );
        Ok(WritebackThreads { handles })
    }

    fn flusher_loop(&self, tx: Sender<Arc<InodeCache>>) {
        let tick = (self.cfg.dirty_expire / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(500));
        let mut idle = IdleRelease::new(self.pool.free_pages(), Instant::now());
        while !self.shutting_down.load(Ordering::Relaxed) {
            let all = self.flusher.wait(tick);
            if idle.due(self.pool.free_pages(), Instant::now()) {
                let given = self.pool.release_free();
                tracing::debug!("page pool idle: {given} free bytes given back to the kernel");
            }
            // A bug in one pass must not end writeback for good (writers would then wait on
            // the dirty limit forever): log it and go on with the next pass.
            let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.flusher_pass(&tx, all)
            }));
            match pass {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => tracing::error!("bug: a flusher pass panicked; continuing"),
            }
        }
    }

    /// Account a failed writeback or fsync of `c`: reported to its next fsync/close, counted,
    /// and remembered for writers throttled on the dirty limit.
    fn writeback_failed(&self, c: &InodeCache, errno: i32) {
        c.record_wb_error(errno);
        stats::add(&self.stats.writeback_errors, 1);
        self.last_wb_errno.store(errno as u64, Ordering::Relaxed);
    }

    /// One pass of the flusher: queue what is due. False when the workers are gone.
    fn flusher_pass(&self, tx: &Sender<Arc<InodeCache>>, all: bool) -> bool {
        let now = self.now_ms();
        let expire = self.cfg.dirty_expire.as_millis() as u64;
        let pressure = all || self.over_background_threshold();
        self.wb_forced.store(all, Ordering::Relaxed);
        let mut to_commit: Vec<Arc<InodeCache>> = Vec::new();
        for c in self.all_caches() {
            if c.tree.dirty_bytes() == 0 {
                // Written back at close, awaiting SOURCE's fsync: committed together below.
                if c.commit_due.swap(false, Ordering::AcqRel) {
                    to_commit.push(c);
                }
                continue;
            }
            let mut since = c.dirty_since.load(Ordering::Relaxed);
            if since == 0 {
                // Dirtied while a writeback was marking the file clean: start its clock.
                since = now;
                c.dirty_since.store(now, Ordering::Relaxed);
            }
            // A file whose writeback failed is retried, but not in a tight loop.
            if c.peek_wb_error().is_some() && !all && now.saturating_sub(since) < expire * 2 {
                continue;
            }
            if (pressure || self.writeback_due(since, now))
                && !c.wb_queued.swap(true, Ordering::AcqRel)
                && tx.send(c.clone()).is_err()
            {
                return false;
            }
        }
        for (c, e) in self.commit_many(&to_commit, false) {
            tracing::warn!(
                "making {} durable in SOURCE failed: {e}; its data is dirty again",
                super::report::file_name(&c)
            );
        }
        self.prune();
        true
    }

    /// Make the written-back (UNSTABLE) data of `files` durable with one syncfs per SOURCE
    /// filesystem instead of one fsync per file. Where a syncfs fails, each of its files is
    /// fsynced on its own, so that an error lands on the file it belongs to (and its data is
    /// dirty again, as after any failed commit). With `always`, files with nothing unstable
    /// take part too (as fsync(2), which also covers metadata). Returns the files whose
    /// commit failed.
    pub(crate) fn commit_many(
        &self,
        files: &[Arc<InodeCache>],
        always: bool,
    ) -> Vec<(Arc<InodeCache>, io::Error)> {
        let mut failed = Vec::new();
        let mut by_dev: std::collections::BTreeMap<u64, Vec<&Arc<InodeCache>>> =
            std::collections::BTreeMap::new();
        for c in files {
            if c.file.writable() && (always || c.tree.find_first(0, Bits::UNSTABLE).is_some()) {
                by_dev.entry(c.key.0).or_default().push(c);
            }
        }
        for group in by_dev.values() {
            if group.len() > 1 && self.commit_group(group) {
                continue;
            }
            for c in group {
                if let Err(e) = self.commit(c, true, always, false) {
                    failed.push(((*c).clone(), e));
                }
            }
        }
        failed
    }

    /// One syncfs for files of one filesystem; true when it settled them all.
    fn commit_group(&self, group: &[&Arc<InodeCache>]) -> bool {
        // Each file's commit lock, so that no fsync of one of them runs meanwhile and the
        // ranges noted now are exactly those the syncfs covers.
        let locks: Vec<_> = group
            .iter()
            .map(|c| c.commit_lock.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let noted: Vec<Vec<ByteRange>> = group
            .iter()
            .map(|c| c.tree.ranges_with(ByteRange::ALL, Bits::UNSTABLE))
            .collect();
        let r = group[0].file.syncfs();
        if r.is_ok() {
            for (c, ranges) in group.iter().zip(&noted) {
                for &u in ranges {
                    c.tree.clear_bits(u, Bits::UNSTABLE);
                }
            }
            stats::add(&self.stats.commit_syncfs, 1);
        }
        drop(locks);
        if let Err(e) = &r {
            tracing::debug!(
                "syncfs for {} files failed ({e}): fsyncing each",
                group.len()
            );
            return false;
        }
        for c in group {
            c.close_file_if_idle();
        }
        true
    }

    /// Write back all DIRTY data of `c` and make it durable in SOURCE (fdatasync when anything
    /// was written). With `wait`, also waits for ranges another thread is writing or locking,
    /// so that on return everything dirty before the call is in SOURCE (or the error is
    /// returned).
    pub fn writeback_file(&self, c: &InodeCache, wait: bool) -> io::Result<()> {
        let r = self.writeback_pass(c, wait);
        let committed = self.commit(c, true, false, false);
        r.and(committed)
    }

    /// `writeback_file` without the fsync (callers that fsync anyway).
    pub(crate) fn writeback_pass(&self, c: &InodeCache, wait: bool) -> io::Result<()> {
        let mut from = 0u64;
        let mut result = Ok(());
        while let Some(run) = c
            .tree
            .find_contiguous(from, Bits::DIRTY, self.cfg.max_writeback)
        {
            if !wait && !self.background_goes_on(c) {
                break;
            }
            // A run is never empty, so this always moves on.
            from = run.end();
            let guard = if wait {
                RangeGuard::lock(&c.tree, run, Bits::NONE)
            } else {
                match RangeGuard::try_lock(&c.tree, run) {
                    Some(g) => g,
                    None => continue,
                }
            };
            let ranges = self.dirty_to_writeback(c, run);
            drop(guard);
            for &r in &ranges {
                if let Err(err) = self.write_range(c, r) {
                    result = Err(err);
                }
            }
            self.bump_progress();
            if result.is_err() {
                break;
            }
        }
        if wait && result.is_ok() {
            // Ranges that other threads had under WRITEBACK when we looked.
            c.tree.wait_clear(ByteRange::ALL, Bits::WRITEBACK);
            if let Some(errno) = c.peek_wb_error() {
                if c.tree.dirty_bytes() > 0 {
                    result = Err(io::Error::from_raw_os_error(errno));
                }
            }
            if result.is_ok() && c.tree.dirty_bytes() > 0 {
                // Dirtied again meanwhile, or re-dirtied by a failed concurrent writeback:
                // one more pass picks it up.
                return self.write_back_all(c, false);
            }
        }
        result
    }

    /// Whether a file dirty since `since` (a `dirty_since` stamp, not 0) is due for
    /// writeback at `now`: asked for at close, or dirty for `dirty_expire`.
    fn writeback_due(&self, since: u64, now: u64) -> bool {
        since == WRITEBACK_NOW
            || now.saturating_sub(since) >= self.cfg.dirty_expire.as_millis() as u64
    }

    /// Whether a background pass over `c` goes on with its next run: while the file is due
    /// (dirty for `dirty_expire`, or asked for at close), while a forced pass (a throttled
    /// writer, reclaim) runs, or while more than half the dirty limit is dirty. Below that,
    /// what is left waits for its expiry, so pages rewritten meanwhile are written once, not
    /// at every pass.
    fn background_goes_on(&self, c: &InodeCache) -> bool {
        let since = c.dirty_since.load(Ordering::Relaxed);
        (since != 0 && self.writeback_due(since, self.now_ms()))
            || self.wb_forced.load(Ordering::Relaxed)
            || self.over_background_threshold()
    }

    /// More than half the dirty limit is dirty: background writeback runs whatever is due.
    fn over_background_threshold(&self) -> bool {
        self.dirty_bytes() > self.cfg.dirty_limit / 2
    }

    /// Write back everything dirty, range by range: locking each range, or, with
    /// `whole_file_locked`, under the caller's lock over the whole file. Then wait for other
    /// threads' WRITEBACK to end.
    fn write_back_all(&self, c: &InodeCache, whole_file_locked: bool) -> io::Result<()> {
        let mut from = 0;
        while let Some(run) = c
            .tree
            .find_contiguous(from, Bits::DIRTY, self.cfg.max_writeback)
        {
            let guard = (!whole_file_locked).then(|| RangeGuard::lock(&c.tree, run, Bits::NONE));
            let r = self.writeback_locked_range(c, run);
            drop(guard);
            r?;
            from = run.end();
        }
        if !whole_file_locked {
            c.tree.wait_clear(ByteRange::ALL, Bits::WRITEBACK);
        }
        Ok(())
    }

    /// Write back everything dirty while the caller holds LOCKED over the whole file.
    pub(crate) fn writeback_locked_all(&self, c: &InodeCache) -> io::Result<()> {
        self.write_back_all(c, true)
    }

    fn writeback_locked_range(&self, c: &InodeCache, run: ByteRange) -> io::Result<()> {
        for r in c.tree.ranges_with(run, Bits::DIRTY) {
            self.clear_dirty(c, r, Bits::WRITEBACK);
            self.write_range(c, r)?;
        }
        Ok(())
    }

    /// Under the caller's lock over `run`: what in it is still DIRTY becomes WRITEBACK.
    /// Returns those ranges, for the caller to write (`write_range`) once it unlocked.
    pub(crate) fn dirty_to_writeback(&self, c: &InodeCache, run: ByteRange) -> Vec<ByteRange> {
        let ranges = c.tree.ranges_with(run, Bits::DIRTY);
        for &r in &ranges {
            self.clear_dirty(c, r, Bits::WRITEBACK);
        }
        ranges
    }

    /// pwritev `r` (under WRITEBACK) from pool memory, then clear WRITEBACK.
    pub(crate) fn write_range(&self, c: &InodeCache, r: ByteRange) -> io::Result<()> {
        // Bytes past EOF are never dirty (truncate clears them under the lock), but clip anyway.
        let written = r.intersect(ByteRange::new(0, c.size()));
        let s = written.start();
        let res = if written.is_empty() {
            Ok(())
        } else {
            c.with_iovecs(written, |iov| c.file.write_all(iov, s))
        };
        match res {
            Ok(()) => {
                // In SOURCE's page cache, not yet durable: UNSTABLE until SOURCE's fsync.
                c.tree.set_clear_bits(r, Bits::UNSTABLE, Bits::WRITEBACK);
                self.space_landed(c, written);
                stats::add(&self.stats.writeback_ops, 1);
                stats::add(&self.stats.writeback_bytes, written.len());
                self.last_wb_errno.store(0, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                let errno = errno_of(&err);
                tracing::error!(
                    "writeback of {} bytes at {s} of {} failed: {err}; data kept dirty",
                    written.len(),
                    file_name(c)
                );
                // Back to DIRTY: the data stays in the cache for a later attempt.
                self.set_dirty(c, r);
                c.tree.clear_bits(r, Bits::WRITEBACK);
                self.writeback_failed(c, errno);
                Err(err)
            }
        }
    }
}

impl CacheContext {
    /// fsync SOURCE's file and settle its UNSTABLE bytes: durable now (clear the bit), or, if
    /// the fsync failed, DIRTY again so they are written once more (a failed fsync may have
    /// dropped them from SOURCE's page cache). With `always`, fsync even when nothing is
    /// unstable (fsync(2) also covers metadata). `locked`: the caller holds LOCKED over the
    /// whole file.
    pub(crate) fn commit(
        &self,
        c: &InodeCache,
        datasync: bool,
        always: bool,
        locked: bool,
    ) -> io::Result<()> {
        let unstable_now = || c.tree.ranges_with(ByteRange::ALL, Bits::UNSTABLE);
        let _serial = c.commit_lock.lock().unwrap();
        let unstable = unstable_now();
        if unstable.is_empty() && !always {
            return Ok(());
        }
        if !c.file.writable() {
            return Ok(());
        }
        match c.file.sync(datasync) {
            Ok(()) => {
                for &u in &unstable {
                    c.tree.clear_bits(u, Bits::UNSTABLE);
                }
                c.close_file_if_idle();
                Ok(())
            }
            Err(err) => {
                let errno = errno_of(&err);
                tracing::error!(
                    "fsync of {} in SOURCE failed: {err}; its written-back data is dirty again",
                    file_name(c)
                );
                // Everything unstable now, including what became so during the fsync.
                for &u in &unstable_now() {
                    let _guard = (!locked).then(|| RangeGuard::lock(&c.tree, u, Bits::NONE));
                    // Only what is still unstable and inside the file.
                    let in_file = ByteRange::new(0, c.size());
                    let mut redo: Vec<ByteRange> = Vec::new();
                    c.tree.for_each(u, |st| {
                        let r = st.range.intersect(in_file);
                        if st.bits.contains(Bits::UNSTABLE) && !r.is_empty() {
                            redo.push(r);
                        }
                    });
                    for r in redo {
                        self.set_dirty(c, r);
                    }
                    c.tree.clear_bits(u, Bits::UNSTABLE);
                }
                self.writeback_failed(c, errno);
                Err(err)
            }
        }
    }
}

impl WritebackThreads {
    /// Stop the threads (after the final sync). Dropping the context's sender ends the workers.
    pub fn stop(self, ctx: &CacheContext) {
        ctx.shutting_down.store(true, Ordering::Relaxed);
        ctx.flusher.kick(false);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// How long the pool's free page count must stay the same before its free memory is given
/// back to the kernel.
pub const POOL_IDLE_RELEASE: Duration = Duration::from_secs(30);

/// Decides when the flusher gives free pool memory back: once per idle spell, when the free
/// page count has not changed for [`POOL_IDLE_RELEASE`] (no allocation or free in between,
/// as far as the count shows).
#[derive(Debug)]
pub(crate) struct IdleRelease {
    free: usize,
    since: Instant,
    done: bool,
}

impl IdleRelease {
    pub(crate) fn new(free: usize, now: Instant) -> IdleRelease {
        IdleRelease {
            free,
            since: now,
            done: false,
        }
    }

    /// The pool has `free` pages at `now`: true once when it has been idle long enough.
    pub(crate) fn due(&mut self, free: usize, now: Instant) -> bool {
        if free != self.free {
            *self = IdleRelease::new(free, now);
            return false;
        }
        if self.done || now.duration_since(self.since) < POOL_IDLE_RELEASE {
            return false;
        }
        self.done = true;
        true
    }
}

#[cfg(test)]
mod idle_tests {
    use super::*;

    #[test]
    fn idle_release_once_per_idle_spell() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut i = IdleRelease::new(100, t0);
        assert!(!i.due(100, at(1)));
        assert!(!i.due(100, at(29)));
        assert!(i.due(100, at(30)), "idle for 30 s");
        assert!(!i.due(100, at(31)), "once");
        assert!(!i.due(100, at(300)));
        // Activity starts a new spell.
        assert!(!i.due(90, at(301)));
        assert!(!i.due(90, at(330)));
        assert!(i.due(90, at(331)));
        assert!(!i.due(95, at(400)));
        assert!(!i.due(95, at(429)));
        assert!(i.due(95, at(430)));
    }
}

#[cfg(test)]
mod commit_tests {
    use super::*;
    use crate::cache::{test_util, WriteKind};

    #[test]
    fn one_syncfs_settles_every_file_of_a_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = test_util::context();
        let mut files = Vec::new();
        for i in 0..3 {
            let name = format!("f{i}");
            std::fs::write(dir.path().join(&name), b"").unwrap();
            let c = test_util::cache_of(&ctx, dir.path(), &name);
            ctx.write(&c, 0, &[i as u8 + 1; 5000], WriteKind::At)
                .unwrap();
            ctx.writeback_pass(&c, true).unwrap();
            assert!(c.tree.find_first(0, Bits::UNSTABLE).is_some());
            files.push(c);
        }
        assert!(ctx.commit_many(&files, false).is_empty());
        for (i, c) in files.iter().enumerate() {
            assert!(c.tree.find_first(0, Bits::UNSTABLE).is_none(), "file {i}");
            assert!(c.is_clean());
            assert_eq!(
                std::fs::read(dir.path().join(format!("f{i}"))).unwrap(),
                vec![i as u8 + 1; 5000]
            );
        }
        assert_eq!(ctx.stats.commit_syncfs.load(Ordering::Relaxed), 1);
        // Nothing unstable: nothing to do, unless asked for fsync's metadata too.
        assert!(ctx.commit_many(&files, false).is_empty());
        assert_eq!(ctx.stats.commit_syncfs.load(Ordering::Relaxed), 1);
        assert!(ctx.commit_many(&files, true).is_empty());
        assert_eq!(ctx.stats.commit_syncfs.load(Ordering::Relaxed), 2);
    }
}

#[cfg(test)]
mod background_tests {
    use super::*;
    use crate::cache::backing::mem::MemBacking;
    use crate::cache::{test_util, WriteKind};

    const MIB: u64 = 1 << 20;

    fn file(ctx: &CacheContext, dev: u64) -> Arc<InodeCache> {
        let b = MemBacking::new(b"");
        ctx.get_or_create((dev, 2), || Ok(b)).unwrap()
    }

    #[test]
    fn a_background_pass_under_the_threshold_leaves_data_to_its_expiry() {
        let ctx = test_util::context();
        let c = file(&ctx, 1 << 41);
        ctx.write(&c, 0, &vec![7; MIB as usize], WriteKind::At)
            .unwrap();
        assert!(MIB <= ctx.cfg.dirty_limit / 2);
        ctx.writeback_pass(&c, false).unwrap();
        assert_eq!(
            c.dirty_bytes(),
            MIB,
            "not due, under the threshold: left to coalesce"
        );
        // A close asks for it: written now.
        ctx.queue_writeback(&c);
        ctx.writeback_pass(&c, false).unwrap();
        assert_eq!(c.dirty_bytes(), 0);
        // A forced pass (a throttled writer, reclaim) writes everything too.
        ctx.write(&c, 0, &vec![8; MIB as usize], WriteKind::At)
            .unwrap();
        ctx.wb_forced.store(true, Ordering::Relaxed);
        ctx.writeback_pass(&c, false).unwrap();
        assert_eq!(c.dirty_bytes(), 0);
        // And fsync's pass (wait) whatever the threshold.
        ctx.wb_forced.store(false, Ordering::Relaxed);
        ctx.write(&c, 0, &vec![9; MIB as usize], WriteKind::At)
            .unwrap();
        ctx.writeback_pass(&c, true).unwrap();
        assert_eq!(c.dirty_bytes(), 0);
    }

    #[test]
    fn a_background_pass_over_the_threshold_writes_back_down_to_it() {
        let ctx = test_util::context();
        let c = file(&ctx, (1 << 41) + 1);
        let half = ctx.cfg.dirty_limit / 2;
        assert_eq!(half % MIB, 0);
        // Separate 1 MiB runs (a hole between each), more than the threshold in all.
        let runs = half / MIB + 2;
        for i in 0..runs {
            ctx.write(&c, i * 2 * MIB, &vec![5; MIB as usize], WriteKind::At)
                .unwrap();
        }
        assert!(ctx.dirty_bytes() > half);
        ctx.writeback_pass(&c, false).unwrap();
        assert_eq!(
            ctx.dirty_bytes(),
            half,
            "written back run by run until at the threshold"
        );
    }
}
