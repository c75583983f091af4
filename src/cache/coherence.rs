//! Coherence with a SOURCE that others also change (close-to-open, as NFS).
//!
//! Each file's [`Backing`](super::backing::Backing) records a validator of SOURCE's file
//! after extentfs's own changes. [`CacheContext::revalidate`] compares SOURCE's file with it
//! (one fstat); when someone else changed the file, [`CacheContext::adopt_source_change`]
//! makes the cache agree with SOURCE again:
//! - every cached page without a DIRTY byte is dropped (read again from SOURCE when needed);
//! - the clean bytes of pages that also hold DIRTY bytes are read again from SOURCE;
//! - DIRTY bytes stay: they were acknowledged, and they are written over SOURCE's bytes at
//!   writeback (last writer wins per byte range, as on NFS); such a conflict is counted and
//!   logged;
//! - the size becomes SOURCE's, or the end of the last DIRTY byte if that is further.
//!
//! All of it runs with the whole file LOCKED and no WRITEBACK in flight, so no reader sees a
//! half-adopted state. When and how often to revalidate is the filesystem's policy (open,
//! getattr, lookup, reads of a file held open, size-extending writes).

use super::backing::IoDescriptors;
use super::inode_cache::{InodeCache, RangeGuard};
use super::validator::Check;
use super::CacheContext;
use crate::extent::state::Bits;
use crate::extent::ByteRange;
use crate::stats;
use std::io;
use std::sync::atomic::Ordering;

/// The whole pages covering the `ranges` (sorted, disjoint), merged where they touch.
pub(crate) fn page_spans(ranges: &[ByteRange]) -> Vec<ByteRange> {
    let mut out: Vec<ByteRange> = Vec::new();
    for r in ranges.iter().filter(|r| !r.is_empty()) {
        let pages = r.page_aligned();
        match out.last_mut() {
            Some(last) if pages.start() <= last.end() => {
                *last = ByteRange::new(last.start(), last.end().max(pages.end()));
            }
            _ => out.push(pages),
        }
    }
    out
}

/// The gaps of `within` between the sorted, disjoint `spans`.
pub(crate) fn gaps_between(spans: &[ByteRange], within: ByteRange) -> Vec<ByteRange> {
    let mut out = Vec::new();
    let mut cur = within.start();
    for sp in spans {
        let s = sp.start().min(within.end());
        if cur < s {
            out.push(ByteRange::new(cur, s));
        }
        cur = cur.max(sp.end());
    }
    if cur < within.end() {
        out.push(ByteRange::new(cur, within.end()));
    }
    out
}

impl CacheContext {
    /// Compare SOURCE's file with what the cache last saw of it and, when someone else changed
    /// it, adopt the change. Returns SOURCE's stat and whether it had changed.
    pub fn revalidate(&self, c: &InodeCache) -> io::Result<(libc::stat, bool)> {
        self.revalidate_with(c, None)
    }

    /// As `revalidate`; `taken`: a stat of the file the caller took a moment ago, which
    /// saves the fstat when it shows what was recorded.
    pub fn revalidate_with(
        &self,
        c: &InodeCache,
        taken: Option<&libc::stat>,
    ) -> io::Result<(libc::stat, bool)> {
        stats::add(&self.stats.revalidations, 1);
        c.revalidated_ms.store(self.now_ms(), Ordering::Relaxed);
        let (check, st) = match taken {
            Some(st) => c.file.check_taken(st)?,
            None => c.file.check()?,
        };
        if check != Check::Changed {
            return Ok((st, false));
        }
        stats::add(&self.stats.source_changes, 1);
        tracing::debug!(
            "{} changed in SOURCE (now {})",
            super::report::file_name(c),
            c.file.validator()
        );
        self.adopt_source_change(c, &st, true)?;
        Ok((st, true))
    }

    /// Whether the last revalidation of `c` is at least `ms` milliseconds old.
    pub fn revalidation_due(&self, c: &InodeCache, ms: u64) -> bool {
        self.now_ms()
            .saturating_sub(c.revalidated_ms.load(Ordering::Relaxed))
            >= ms
    }

    /// Make the cache of `c` agree with SOURCE's file as `st` describes it (see the module
    /// doc). `foreign`: someone else changed the file (dirty data then is a conflict, counted
    /// and logged); false for `ctl drop` on a file. Returns the clean bytes dropped.
    pub fn adopt_source_change(
        &self,
        c: &InodeCache,
        st: &libc::stat,
        foreign: bool,
    ) -> io::Result<u64> {
        // Written-back bytes not yet durable are settled first: once durable they are clean
        // and can go; if the fsync fails they are DIRTY again and kept.
        if c.tree.find_first(0, Bits::UNSTABLE).is_some() {
            let _ = self.commit(c, true, false, false);
        }
        let guard = RangeGuard::lock(&c.tree, ByteRange::ALL, Bits::WRITEBACK);
        // Pages kept: those with DIRTY bytes, and those with bytes still awaiting SOURCE's
        // fsync (UNSTABLE: a concurrent writeback just wrote them; a failed fsync must still
        // find them to write them again).
        let mut dirty: Vec<ByteRange> = Vec::new();
        let mut held: Vec<ByteRange> = Vec::new();
        c.tree.for_each(ByteRange::ALL, |s| {
            if s.bits.contains(Bits::DIRTY) {
                dirty.push(s.range);
            }
            if s.bits.intersects(Bits::DIRTY | Bits::UNSTABLE) {
                held.push(s.range);
            }
        });
        let keep = page_spans(&held);
        let before = c.map.mapped_bytes();
        for gap in gaps_between(&keep, ByteRange::ALL) {
            c.map.unmap(gap);
            c.tree.clear_bits(gap, Bits::UPTODATE);
        }
        let dropped = before.saturating_sub(c.map.mapped_bytes());
        let mut result = Ok(());
        if !keep.is_empty() {
            // Clean bytes sharing a page with dirty ones: SOURCE's bytes now.
            let mut clean: Vec<ByteRange> = Vec::new();
            for &span in &keep {
                c.tree
                    .for_each_missing(span, Bits::DIRTY, |m| clean.push(m));
            }
            for m in clean {
                if let Err(e) = c.read_from_source(m) {
                    result = Err(e);
                    break;
                }
            }
        }
        if foreign && !dirty.is_empty() {
            stats::add(&self.stats.coherence_conflicts, 1);
            let dirty_bytes: u64 = dirty.iter().map(|r| r.len()).sum();
            tracing::warn!(
                "{} changed in SOURCE while {dirty_bytes} bytes written through the mount were \
                 not yet written back: they will be written over SOURCE's (last writer wins)",
                super::report::file_name(c)
            );
        }
        let old_size = c.size();
        let dirty_end = dirty.last().map_or(0, |r| r.end());
        let size = (st.st_size as u64).max(dirty_end);
        if size < old_size {
            if let Some(mut m) = c.mapped_pages() {
                m.truncate(size);
            }
        }
        c.set_size(size);
        if dirty.is_empty() {
            // SOURCE's mtime is the one to show now.
            c.set_pending_mtime(None);
        }
        c.note_mode(st.st_mode);
        drop(guard);
        if foreign {
            stats::add(&self.stats.coherence_dropped_bytes, dropped);
        }
        self.bump_progress();
        result.map(|()| dropped)
    }

    /// Close under close-to-open: everything written through the mount is in SOURCE when the
    /// close returns (another client's next open sees it). SOURCE's fsync follows soon in
    /// the background (the flusher), so a close costs no fsync.
    pub fn write_back_for_close(&self, c: &InodeCache) -> io::Result<()> {
        if c.tree.dirty_bytes() == 0 && c.tree.writeback_bytes() == 0 {
            return Ok(());
        }
        self.writeback_pass(c, true)?;
        // The mtime of the writes is stamped now too, not after the close, when it could
        // land over a change someone else made in between.
        c.apply_pending_mtime();
        match c.file.descriptors() {
            // Its descriptor must not wait: so many files are being closed that descriptors
            // run out.
            IoDescriptors::Short => return self.commit(c, true, false, false),
            // The flusher's next pass (within a tick) makes it durable with the other files
            // closed meanwhile: one syncfs, not an fsync per close; sooner when descriptors
            // run low (each file awaiting its commit keeps one).
            IoDescriptors::Low => {
                c.commit_due.store(true, Ordering::Release);
                self.flusher.kick(false);
            }
            IoDescriptors::Ample => c.commit_due.store(true, Ordering::Release),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::inode_cache::P;
    use crate::cache::{test_util, WriteKind};
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// One cache over one real file in a temp dir; no mount, no writeback threads.
    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        ctx: Arc<CacheContext>,
        c: Arc<InodeCache>,
    }

    fn fixture(content: &[u8]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, content).unwrap();
        let ctx = test_util::context();
        let c = test_util::cache_of(&ctx, dir.path(), "f");
        Fixture {
            _dir: dir,
            path,
            ctx,
            c,
        }
    }

    impl Fixture {
        fn read(&self, off: u64, len: u32) -> Vec<u8> {
            self.ctx
                .read(&self.c, off, len, false, |b| b.to_vec())
                .unwrap()
        }

        /// Someone else writes SOURCE's file.
        fn foreign_write(&self, off: u64, data: &[u8]) {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .unwrap();
            f.write_all_at(data, off).unwrap();
        }

        fn counter(&self, v: &std::sync::atomic::AtomicU64) -> u64 {
            v.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn unchanged_file_keeps_its_cache() {
        let f = fixture(&[1u8; 8192]);
        assert_eq!(f.read(0, 8192), vec![1u8; 8192]);
        let (_, changed) = f.ctx.revalidate(&f.c).unwrap();
        assert!(!changed);
        assert_eq!(f.c.map.mapped_bytes(), 8192);
        assert_eq!(f.counter(&f.ctx.stats.revalidations), 1);
        assert_eq!(f.counter(&f.ctx.stats.source_changes), 0);
    }

    #[test]
    fn foreign_overwrite_drops_clean_pages() {
        let f = fixture(&[1u8; 8192]);
        assert_eq!(f.read(0, 8192), vec![1u8; 8192]);
        f.foreign_write(4096, &[2u8; 4096]);
        let (_, changed) = f.ctx.revalidate(&f.c).unwrap();
        assert!(changed);
        assert_eq!(f.c.map.mapped_bytes(), 0);
        assert_eq!(f.counter(&f.ctx.stats.coherence_dropped_bytes), 8192);
        let got = f.read(0, 8192);
        assert_eq!(&got[..4096], &[1u8; 4096][..]);
        assert_eq!(&got[4096..], &[2u8; 4096][..]);
        f.c.tree.check_invariants();
    }

    #[test]
    fn foreign_append_and_truncate_change_the_size() {
        let f = fixture(b"abc");
        assert_eq!(f.read(0, 100), b"abc");
        f.foreign_write(3, b"def");
        assert!(f.ctx.revalidate(&f.c).unwrap().1);
        assert_eq!(f.c.size(), 6);
        assert_eq!(f.read(0, 100), b"abcdef");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f.path)
            .unwrap()
            .set_len(2)
            .unwrap();
        assert!(f.ctx.revalidate(&f.c).unwrap().1);
        assert_eq!(f.c.size(), 2);
        assert_eq!(f.read(0, 100), b"ab");
    }

    #[test]
    fn own_writeback_is_not_a_foreign_change() {
        let f = fixture(&[0u8; 4096]);
        f.ctx.write(&f.c, 100, b"ours", WriteKind::At).unwrap();
        f.ctx.write(&f.c, 4096, b"grown", WriteKind::At).unwrap();
        f.ctx.sync_file(&f.c, false).unwrap();
        let (_, changed) = f.ctx.revalidate(&f.c).unwrap();
        assert!(!changed, "own writeback taken for a foreign change");
        assert_eq!(f.c.size(), 4101);
        assert_eq!(&f.read(100, 4)[..], b"ours");
    }

    #[test]
    fn dirty_bytes_survive_and_clean_bytes_of_their_page_are_refreshed() {
        let f = fixture(&[b'.'; 16384]);
        assert_eq!(f.read(0, 16384), vec![b'.'; 16384]);
        // Dirty: bytes 10..14 of page 0 and all of page 2.
        f.ctx.write(&f.c, 10, b"MMMM", WriteKind::At).unwrap();
        f.ctx
            .write(&f.c, 8192, &[b'M'; 4096], WriteKind::At)
            .unwrap();
        // Someone else writes bytes 100..104 of page 0 and all of page 1, and appends.
        f.foreign_write(100, b"SSSS");
        f.foreign_write(4096, &[b'S'; 4096]);
        f.foreign_write(16384, b"tail");
        assert!(f.ctx.revalidate(&f.c).unwrap().1);
        assert_eq!(f.counter(&f.ctx.stats.coherence_conflicts), 1);
        // Pages 1 and 3 (clean) dropped; 0 and 2 kept.
        assert_eq!(f.c.map.mapped_bytes(), 8192);
        assert_eq!(f.c.size(), 16388);
        let mut want = vec![b'.'; 16388];
        want[10..14].copy_from_slice(b"MMMM");
        want[100..104].copy_from_slice(b"SSSS");
        want[4096..8192].fill(b'S');
        want[8192..12288].fill(b'M');
        want[16384..].copy_from_slice(b"tail");
        assert_eq!(f.read(0, 20000), want);
        // The dirty bytes reach SOURCE over its own; the rest of SOURCE is kept.
        f.ctx.sync_file(&f.c, false).unwrap();
        assert_eq!(std::fs::read(&f.path).unwrap(), want);
        f.c.tree.check_invariants();
    }

    #[test]
    fn dirty_data_past_a_foreign_truncate_keeps_the_size() {
        let f = fixture(&[b'x'; 8192]);
        f.ctx.write(&f.c, 6000, b"end", WriteKind::At).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f.path)
            .unwrap()
            .set_len(100)
            .unwrap();
        assert!(f.ctx.revalidate(&f.c).unwrap().1);
        // The size ends with the last dirty byte; what SOURCE cut reads as zero.
        assert_eq!(f.c.size(), 6003);
        let got = f.read(0, 9000);
        assert_eq!(got.len(), 6003);
        assert_eq!(&got[..100], &[b'x'; 100][..]);
        assert!(got[100..6000].iter().all(|&b| b == 0));
        assert_eq!(&got[6000..6003], b"end");
    }

    fn rs(v: &[(u64, u64)]) -> Vec<ByteRange> {
        v.iter().map(|&(s, e)| ByteRange::new(s, e)).collect()
    }

    #[test]
    fn spans_cover_partial_pages_and_merge() {
        assert_eq!(page_spans(&[]), vec![]);
        assert_eq!(page_spans(&rs(&[(10, 20)])), rs(&[(0, P)]));
        // Ranges in neighbouring pages merge into one span.
        assert_eq!(
            page_spans(&rs(&[(10, 20), (P + 1, P + 2)])),
            rs(&[(0, 2 * P)])
        );
        assert_eq!(
            page_spans(&rs(&[(0, P), (3 * P, 3 * P + 1)])),
            rs(&[(0, P), (3 * P, 4 * P)])
        );
        // Empty ranges are ignored.
        assert_eq!(page_spans(&rs(&[(5, 5)])), vec![]);
    }

    #[test]
    fn gaps_are_the_complement() {
        let within = ByteRange::new(0, 100);
        assert_eq!(gaps_between(&[], within), rs(&[(0, 100)]));
        assert_eq!(gaps_between(&rs(&[(0, 10)]), within), rs(&[(10, 100)]));
        assert_eq!(
            gaps_between(&rs(&[(10, 20), (30, 40)]), within),
            rs(&[(0, 10), (20, 30), (40, 100)])
        );
        assert_eq!(gaps_between(&rs(&[(10, 100)]), within), rs(&[(0, 10)]));
        assert_eq!(gaps_between(&rs(&[(0, 200)]), within), vec![]);
        assert_eq!(
            gaps_between(&rs(&[(10, 20)]), ByteRange::new(15, 30)),
            rs(&[(20, 30)])
        );
    }
}
