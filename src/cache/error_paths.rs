//! The cache's error paths, driven through a backing that fails on request
//! ([`MemBacking`]): no mount, no SOURCE directory. What is checked is the write-back
//! contract: a failed write or fsync of SOURCE is reported and the data stays in the cache
//! until it is written; nothing reported written is lost; a slow SOURCE does not hold up
//! readers of cached data.

use super::backing::mem::MemBacking;
use super::backing::Backing;
use super::inode_cache::{InodeCache, InodeKey};
use super::{test_util, CacheContext, WriteKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Each test's own device number: space accounting is kept per SOURCE device.
static NEXT_DEV: AtomicU64 = AtomicU64::new(1 << 40);

fn setup(content: &[u8]) -> (Arc<CacheContext>, Arc<InodeCache>, Arc<MemBacking>) {
    let ctx = test_util::context();
    let b = MemBacking::new(content);
    let dev = NEXT_DEV.fetch_add(1, Ordering::Relaxed);
    let c = ctx.get_or_create((dev, 2), || Ok(b.clone())).unwrap();
    (ctx, c, b)
}

fn errno(r: std::io::Result<()>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(0))
}

fn read(ctx: &CacheContext, c: &InodeCache, off: u64, len: u32) -> std::io::Result<Vec<u8>> {
    ctx.read(c, off, len, false, |b| b.to_vec())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Run `f` in a thread and wait for it; a hang (a lock held across the backing's I/O) fails
/// the test instead of stalling the suite. Not a timing assertion: the bound is generous.
fn finishes<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("blocked behind the backing's held write")
}

/// Start an fsync of `c` in a thread with SOURCE's writes held, and wait until its write is
/// stuck there (`b.release_writes()` lets it go on).
fn sync_held_in_source(
    ctx: &Arc<CacheContext>,
    c: &Arc<InodeCache>,
    b: &MemBacking,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    b.faults(|f| f.hold_writes = true);
    let syncer = {
        let (ctx, c) = (ctx.clone(), c.clone());
        std::thread::spawn(move || ctx.sync_file(&c, false))
    };
    while b.writes_waiting() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    syncer
}

#[test]
fn enospc_at_writeback_keeps_the_data_dirty_until_written() {
    let (ctx, c, b) = setup(b"");
    let data = pattern(8192, 1);
    ctx.write(&c, 0, &data, WriteKind::At).unwrap();
    b.faults(|f| {
        f.write_errno = libc::ENOSPC;
        f.write_fails = u32::MAX;
    });
    assert_eq!(errno(ctx.sync_file(&c, false)), Some(libc::ENOSPC));
    assert_eq!(
        c.dirty_bytes(),
        8192,
        "failed writeback must leave the data dirty"
    );
    assert_eq!(
        read(&ctx, &c, 0, 8192).unwrap(),
        data,
        "the cache still serves it"
    );
    // SOURCE has room again: the next sync writes it, and reports no stale error.
    b.faults(|f| f.write_fails = 0);
    ctx.sync_file(&c, false).unwrap();
    assert_eq!(c.dirty_bytes(), 0);
    assert_eq!(b.contents(), data);
    assert_eq!(b.durable(), data);
    ctx.sync_file(&c, false).unwrap();
}

#[test]
fn a_short_write_is_written_again_in_full() {
    let (ctx, c, b) = setup(&pattern(16384, 9));
    let data = pattern(12288, 2);
    ctx.write(&c, 2048, &data, WriteKind::At).unwrap();
    b.faults(|f| {
        f.write_errno = libc::EIO;
        f.write_fails = 1;
        f.write_prefix = 1000;
    });
    assert_eq!(errno(ctx.sync_file(&c, false)), Some(libc::EIO));
    assert!(c.dirty_bytes() > 0);
    ctx.sync_file(&c, false).unwrap();
    let mut want = pattern(16384, 9);
    want[2048..2048 + 12288].copy_from_slice(&data);
    assert_eq!(b.contents(), want);
    assert_eq!(c.dirty_bytes(), 0);
}

#[test]
fn a_failed_fsync_makes_the_written_data_dirty_again() {
    let (ctx, c, b) = setup(b"");
    let data = pattern(4096 * 3, 3);
    ctx.write(&c, 0, &data, WriteKind::At).unwrap();
    b.faults(|f| {
        f.sync_errno = libc::EIO;
        f.sync_fails = 1;
    });
    assert_eq!(errno(ctx.sync_file(&c, false)), Some(libc::EIO));
    // Written but not durable: SOURCE may have dropped it, so it is written once more.
    assert_eq!(b.durable(), b"");
    assert_eq!(c.dirty_bytes(), data.len() as u64);
    let writes = b.writes.load(Ordering::Relaxed);
    ctx.sync_file(&c, false).unwrap();
    assert!(b.writes.load(Ordering::Relaxed) > writes, "written again");
    assert_eq!(b.durable(), data);
    // The error was reported once.
    ctx.sync_file(&c, false).unwrap();
}

#[test]
fn written_back_data_is_durable_only_after_the_commit() {
    let (ctx, c, b) = setup(b"old");
    ctx.write(&c, 0, b"new data", WriteKind::At).unwrap();
    ctx.writeback_pass(&c, true).unwrap();
    assert_eq!(b.contents(), b"new data");
    assert_eq!(
        b.durable(),
        b"old",
        "no fsync yet: a crash would keep the old bytes"
    );
    assert_eq!(c.dirty_bytes(), 0);
    ctx.commit(&c, false, false, false).unwrap();
    assert_eq!(b.durable(), b"new data");
    // Nothing unstable is left: a second commit needs no fsync.
    let syncs = b.syncs.load(Ordering::Relaxed);
    ctx.commit(&c, false, false, false).unwrap();
    assert_eq!(b.syncs.load(Ordering::Relaxed), syncs);
}

#[test]
fn a_read_error_is_returned_and_caches_nothing() {
    let content = pattern(20000, 4);
    let (ctx, c, b) = setup(&content);
    b.faults(|f| {
        f.read_errno = libc::EIO;
        f.read_fails = 1;
    });
    let e = read(&ctx, &c, 0, 8192).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    // The failed range was not marked up to date with garbage: read again from SOURCE.
    assert_eq!(read(&ctx, &c, 0, 20000).unwrap(), content);
}

#[test]
fn a_failed_truncate_changes_nothing() {
    let (ctx, c, b) = setup(&pattern(10000, 5));
    assert_eq!(read(&ctx, &c, 0, 10000).unwrap(), pattern(10000, 5));
    b.faults(|f| f.set_len_errno = libc::EIO);
    assert_eq!(errno(ctx.truncate(&c, 100)), Some(libc::EIO));
    assert_eq!(c.size(), 10000);
    assert_eq!(read(&ctx, &c, 0, 10000).unwrap(), pattern(10000, 5));
    b.faults(|f| f.set_len_errno = 0);
    ctx.truncate(&c, 100).unwrap();
    assert_eq!(c.size(), 100);
    assert_eq!(b.contents(), pattern(10000, 5)[..100]);
}

#[test]
fn a_write_that_source_has_no_room_for_fails_at_write() {
    let (ctx, c, b) = setup(b"");
    b.faults(|f| f.free_bytes = Some(64 << 10));
    let e = ctx
        .write(&c, 0, &pattern(1 << 20, 6), WriteKind::At)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(c.dirty_bytes(), 0, "nothing half-accepted");
    // What fits is accepted and written.
    let small = pattern(16 << 10, 7);
    ctx.write(&c, 0, &small, WriteKind::At).unwrap();
    ctx.sync_file(&c, false).unwrap();
    assert_eq!(b.contents(), small);
}

#[test]
fn a_slow_source_does_not_hold_up_reads_of_cached_data() {
    let content = pattern(64 << 10, 8);
    let (ctx, c, b) = setup(&content);
    assert_eq!(read(&ctx, &c, 0, 64 << 10).unwrap(), content);
    ctx.write(&c, 0, &pattern(4096, 9), WriteKind::At).unwrap();
    let syncer = sync_held_in_source(&ctx, &c, &b);
    // The writeback is stuck in SOURCE; cached data elsewhere in the file is still served.
    let got = {
        let (ctx, c) = (ctx.clone(), c.clone());
        finishes(move || read(&ctx, &c, 32 << 10, 4096).unwrap())
    };
    assert_eq!(got, content[32 << 10..(32 << 10) + 4096]);
    b.release_writes();
    syncer.join().unwrap().unwrap();
    assert_eq!(b.contents()[..4096], pattern(4096, 9));
}

#[test]
fn a_write_during_writeback_of_the_same_range_is_not_lost() {
    let (ctx, c, b) = setup(b"");
    ctx.write(&c, 0, &pattern(8192, 10), WriteKind::At).unwrap();
    let syncer = sync_held_in_source(&ctx, &c, &b);
    let newer = pattern(8192, 11);
    let writer = {
        let (ctx, c, newer) = (ctx.clone(), c.clone(), newer.clone());
        std::thread::spawn(move || ctx.write(&c, 0, &newer, WriteKind::At).map(drop))
    };
    b.release_writes();
    syncer.join().unwrap().unwrap();
    writer.join().unwrap().unwrap();
    ctx.sync_file(&c, false).unwrap();
    assert_eq!(b.contents(), newer);
    assert_eq!(b.durable(), newer);
}

#[test]
fn a_foreign_change_is_seen_and_own_changes_are_not() {
    let (ctx, c, b) = setup(&pattern(8192, 12));
    assert_eq!(read(&ctx, &c, 0, 8192).unwrap(), pattern(8192, 12));
    // Our own writeback is not a foreign change.
    ctx.write(&c, 100, b"own", WriteKind::At).unwrap();
    ctx.sync_file(&c, false).unwrap();
    assert!(!ctx.revalidate(&c).unwrap().1);
    // Someone else's write is, and the cache serves their bytes afterwards.
    b.foreign_write(4096, b"theirs");
    assert!(ctx.revalidate(&c).unwrap().1);
    assert_eq!(read(&ctx, &c, 4096, 6).unwrap(), b"theirs");
    assert_eq!(read(&ctx, &c, 100, 3).unwrap(), b"own");
    assert_eq!(ctx.stats.source_changes.load(Ordering::Relaxed), 1);
}

#[test]
fn a_check_during_an_own_change_answers_busy() {
    let (_ctx, c, b) = setup(b"abc");
    let own = c.file.own_change();
    b.foreign_write(0, b"x"); // made while ours is in flight: cannot be told apart
    assert_eq!(
        b.check().unwrap().0,
        crate::cache::validator::Check::Busy,
        "a check during an own change must not decide"
    );
    // What changed inside the bracket is recorded as ours (the documented limit: a foreign
    // change can hide only inside one own change).
    drop(own);
    assert_eq!(
        b.check().unwrap().0,
        crate::cache::validator::Check::Unchanged
    );
}

#[test]
fn a_forgotten_file_keeps_its_cached_data_and_is_found_again_with_it() {
    let content = pattern(64 << 10, 3);
    let (ctx, c, b) = setup(&content);
    let key = c.key;
    assert_eq!(read(&ctx, &c, 0, 64 << 10).unwrap(), content);
    let reads = ctx.stats.source_read_ops.load(Ordering::Relaxed);
    drop(c);
    // The kernel reclaims the inode (memory pressure, drop_caches): the data stays.
    ctx.forget(key);
    ctx.prune();
    let c = ctx.get_or_create(key, || Ok(b.clone())).unwrap();
    assert_eq!(c.map.mapped_bytes(), 64 << 10);
    assert_eq!(read(&ctx, &c, 0, 64 << 10).unwrap(), content);
    assert_eq!(
        ctx.stats.source_read_ops.load(Ordering::Relaxed),
        reads,
        "served from the pool"
    );
}

/// A file read into the cache, then forgotten by the kernel (nobody holds its cache).
fn cached_then_forgotten(content: &[u8]) -> (Arc<CacheContext>, InodeKey, Arc<MemBacking>) {
    let (ctx, c, b) = setup(content);
    let key = c.key;
    read(&ctx, &c, 0, content.len() as u32).unwrap();
    drop(c);
    ctx.forget(key);
    (ctx, key, b)
}

#[test]
fn a_forgotten_cache_goes_once_it_holds_nothing() {
    let (ctx, key, b) = cached_then_forgotten(&pattern(8192, 4));
    assert!(ctx.get(key).is_some(), "kept while it holds data");
    ctx.evict(1 << 20);
    ctx.evict(1 << 20);
    assert_eq!(ctx.get(key).unwrap().map.mapped_bytes(), 0);
    ctx.prune();
    assert!(ctx.get(key).is_none(), "nothing cached: the cache goes");
    drop(b);
}

#[test]
fn a_forgotten_file_deleted_in_source_is_not_served_again() {
    let (ctx, key, b) = cached_then_forgotten(&pattern(8192, 5));
    // Deleted behind extentfs's back while forgotten; the inode number is then found again
    // (another file, or a stale handle): nothing of the old file's data may be served.
    b.faults(|f| f.unlinked = true);
    let fresh = MemBacking::new(b"new file");
    let c = ctx.get_or_create(key, || Ok(fresh.clone())).unwrap();
    assert_eq!(c.map.mapped_bytes(), 0);
    assert_eq!(read(&ctx, &c, 0, 64).unwrap(), b"new file");
}

#[test]
fn prune_drops_the_data_of_a_forgotten_file_deleted_in_source() {
    let (ctx, key, b) = cached_then_forgotten(&pattern(8192, 6));
    b.faults(|f| f.unlinked = true);
    ctx.prune();
    assert!(ctx.get(key).is_none(), "its space is SOURCE's again");
}

#[test]
fn forgotten_caches_are_capped() {
    let ctx = test_util::context();
    let dev = NEXT_DEV.fetch_add(1, Ordering::Relaxed);
    for ino in 0..8 {
        let b = MemBacking::new(&pattern(4096, ino as u8));
        let c = ctx.get_or_create((dev, ino), || Ok(b)).unwrap();
        read(&ctx, &c, 0, 4096).unwrap();
        drop(c);
        ctx.forget((dev, ino));
    }
    ctx.cap_forgotten(8);
    assert_eq!(ctx.all_caches().len(), 8, "at the cap: all kept");
    ctx.cap_forgotten(4);
    assert_eq!(ctx.all_caches().len(), 3, "past it: down to three quarters");
}
