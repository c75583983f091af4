//! The cache's only way to SOURCE: [`Backing`], one file of the backing store as the cache
//! needs it (vectored reads and writes, fsync and syncfs, size, attributes, space, and the
//! validators of [`super::validator`] that tell extentfs's own changes from anyone else's).
//!
//! `source::DataFile` implements it over a real SOURCE file; the cache's unit tests use
//! [`mem::MemBacking`], a file in memory that fails on request (ENOSPC, EIO, short writes,
//! a write that blocks until released), to drive the cache's error paths without a mount.
//!
//! Contract (what the cache relies on):
//! - `write_all` writes every byte of its iovecs or returns an error; bytes before the error
//!   may have reached the file (a short write), so the range stays DIRTY and is written again;
//! - `sync` returning Ok means everything written through this file before the call is
//!   durable; an error may concern any of it;
//! - every method that changes the file brackets the change as an own change
//!   ([`Backing::begin_own`] / [`Backing::end_own`]), so a `check` afterwards answers
//!   `Unchanged` unless someone else changed the file too.

use super::validator::{Check, Validator};
use std::io;

/// How close the descriptors a backing keeps open are to running out: `Ample`, `Low`
/// (settle what keeps descriptors soon) or `Short` (settle it now).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDescriptors {
    Ample,
    Low,
    Short,
}

/// One file of the backing store. See the module documentation for the contract.
pub trait Backing: Send + Sync + std::fmt::Debug {
    /// Read into `iov` at `off` until it is full or EOF; returns bytes read.
    fn read_full(&self, iov: &mut [libc::iovec], off: u64) -> io::Result<usize>;
    /// Write all of `iov` at `off`.
    fn write_all(&self, iov: &mut [libc::iovec], off: u64) -> io::Result<()>;
    /// fsync (or fdatasync) of the file.
    fn sync(&self, datasync: bool) -> io::Result<()>;
    /// Make everything written to the file's filesystem durable (one call for many files).
    fn syncfs(&self) -> io::Result<()>;
    fn set_len(&self, size: u64) -> io::Result<()>;
    fn fallocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()>;
    fn lseek(&self, off: i64, whence: i32) -> io::Result<i64>;
    fn stat(&self) -> io::Result<libc::stat>;
    /// statvfs of the filesystem holding the file (space reservations).
    fn statvfs(&self) -> io::Result<libc::statvfs>;
    fn chmod(&self, mode: u32) -> io::Result<()>;
    /// Set mtime, atime left alone.
    fn set_mtime(&self, mtime: libc::timespec) -> io::Result<()>;
    /// The file's mtime in SOURCE as recorded after extentfs's own last change to it (no
    /// system call), if known.
    fn recorded_mtime(&self) -> Option<libc::timespec>;
    /// Let the backing record a read access (reads are served from the pool).
    fn touch_atime(&self) -> io::Result<()>;
    /// Whether writes can reach the file at all (follows the last open of the I/O
    /// descriptor: SOURCE refuses writing an immutable or append-only file, even to root).
    fn writable(&self) -> bool;
    /// The file's inode flags in the backing (FS_IOC_GETFLAGS: immutable, append-only, ...).
    fn inode_flags(&self) -> io::Result<u32>;
    /// Open the I/O descriptor again, read-write when the backing allows it now (after the
    /// file's immutable or append-only flag changed). The caller wrote back what was dirty.
    fn reopen_io(&self) -> io::Result<()>;
    /// Append `data` at the backing file's end, straight through (an append-only file);
    /// returns the offset it landed at.
    fn append(&self, data: &[u8]) -> io::Result<u64>;
    /// The largest size the backing allows the file (EFBIG past it).
    fn max_size(&self) -> u64;
    /// The file's path relative to SOURCE, for messages.
    fn name(&self) -> Option<Vec<u8>>;
    /// Give back the descriptor kept for I/O unless it is in use or `idle()` says no.
    fn close_io(&self, idle: &dyn Fn() -> bool);
    /// Whether a descriptor for I/O is held (tests and stats).
    fn io_open(&self) -> bool;
    /// Whether a descriptor holding the file's inode is open (while none is, SOURCE frees a
    /// deleted file's space; a `stat` would open one again).
    fn holds_inode(&self) -> bool;
    /// How close the backing's descriptors are to running out.
    fn descriptors(&self) -> IoDescriptors;
    /// An own change of the file starts (see [`super::validator::Seen`]).
    fn begin_own(&self);
    /// The own change started last ends: SOURCE's new state is recorded as extentfs's own.
    fn end_own(&self);
    /// Compare the file with what was recorded; waits for an own change in flight.
    fn check(&self) -> io::Result<(Check, libc::stat)>;
    /// As `check`, given a stat of the file taken a moment ago.
    fn check_taken(&self, st: &libc::stat) -> io::Result<(Check, libc::stat)>;
    /// The validator last recorded (stats).
    fn validator(&self) -> Validator;
}

/// An own change of a file in progress (see [`Backing::begin_own`]); ends on drop.
pub struct OwnChange<'a>(&'a dyn Backing);

impl<'a> OwnChange<'a> {
    pub fn begin(b: &'a dyn Backing) -> OwnChange<'a> {
        b.begin_own();
        OwnChange(b)
    }
}

impl Drop for OwnChange<'_> {
    fn drop(&mut self) {
        self.0.end_own();
    }
}

impl dyn Backing + '_ {
    /// Bracket a change extentfs makes to the file through another way than this backing
    /// (a chmod, rename, xattr... of the same inode): until the guard drops, checks answer
    /// `Busy`; then the file's new state is recorded as extentfs's own.
    pub fn own_change(&self) -> OwnChange<'_> {
        OwnChange::begin(self)
    }
}

/// A file in memory for the cache's unit tests, failing on request.
#[cfg(test)]
pub(crate) mod mem {
    use super::*;
    use crate::cache::validator::Seen;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex};

    /// What the next calls do wrong. Each count is of calls still to fail (u32::MAX: all).
    #[derive(Debug, Default)]
    pub(crate) struct Faults {
        /// `write_all` fails with this errno...
        pub write_errno: i32,
        pub write_fails: u32,
        /// ...after writing this many bytes of the call (a short write).
        pub write_prefix: usize,
        pub sync_errno: i32,
        pub sync_fails: u32,
        pub read_errno: i32,
        pub read_fails: u32,
        pub set_len_errno: i32,
        /// Free bytes statvfs reports (None: 1 TiB).
        pub free_bytes: Option<u64>,
        /// `write_all` waits until `release_writes` (a slow backing).
        pub hold_writes: bool,
        /// The file's last link is gone (stat says nlink 0), as after a delete in SOURCE.
        pub unlinked: bool,
    }

    #[derive(Debug, Default)]
    struct State {
        data: Vec<u8>,
        /// Bytes as of the last successful sync: what survives a crash.
        durable: Vec<u8>,
        mtime: (i64, i64),
        ctime: (i64, i64),
        mode: u32,
        faults: Faults,
        writes_waiting: u32,
    }

    /// See the module documentation. Its own changes move ctime like a real file, and a
    /// "foreign" change ([`MemBacking::foreign_write`]) too, so validators work as on SOURCE.
    #[derive(Debug)]
    pub(crate) struct MemBacking {
        st: Mutex<State>,
        released: Condvar,
        seen: Mutex<Seen>,
        clock: AtomicU64,
        pub writes: AtomicU64,
        pub syncs: AtomicU64,
    }

    fn fail(count: &mut u32, errno: i32) -> Option<io::Error> {
        if *count == 0 || errno == 0 {
            return None;
        }
        if *count != u32::MAX {
            *count -= 1;
        }
        Some(io::Error::from_raw_os_error(errno))
    }

    fn iov_len(iov: &[libc::iovec]) -> usize {
        iov.iter().map(|v| v.iov_len).sum()
    }

    impl MemBacking {
        /// A file holding `content`; the cache takes a clone of the `Arc` (the test keeps one
        /// to set faults and look at the bytes).
        pub(crate) fn new(content: &[u8]) -> Arc<MemBacking> {
            let b = Arc::new(MemBacking {
                st: Mutex::new(State {
                    data: content.to_vec(),
                    durable: content.to_vec(),
                    mode: 0o100644,
                    ..State::default()
                }),
                released: Condvar::new(),
                seen: Mutex::new(Seen::default()),
                clock: AtomicU64::new(1),
                writes: AtomicU64::new(0),
                syncs: AtomicU64::new(0),
            });
            let v = Validator::of(&b.stat().unwrap());
            *b.seen.lock().unwrap() = Seen::new(v);
            b
        }

        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.st.lock().unwrap_or_else(|p| p.into_inner())
        }

        fn tick(&self, s: &mut State, data: bool) {
            let t = self.clock.fetch_add(1, Ordering::Relaxed) as i64;
            s.ctime = (t, 0);
            if data {
                s.mtime = (t, 0);
            }
        }

        /// Change what fails next.
        pub(crate) fn faults(&self, f: impl FnOnce(&mut Faults)) {
            f(&mut self.state().faults);
            self.released.notify_all();
        }

        /// Let writes held by `hold_writes` go on (and new ones pass).
        pub(crate) fn release_writes(&self) {
            self.faults(|f| f.hold_writes = false);
        }

        /// How many writes wait in `hold_writes`.
        pub(crate) fn writes_waiting(&self) -> u32 {
            self.state().writes_waiting
        }

        pub(crate) fn contents(&self) -> Vec<u8> {
            self.state().data.clone()
        }

        /// What a crash would leave: the bytes as of the last successful sync.
        pub(crate) fn durable(&self) -> Vec<u8> {
            self.state().durable.clone()
        }

        /// Someone else writes the file (not an own change).
        pub(crate) fn foreign_write(&self, off: usize, bytes: &[u8]) {
            let mut s = self.state();
            if s.data.len() < off + bytes.len() {
                s.data.resize(off + bytes.len(), 0);
            }
            s.data[off..off + bytes.len()].copy_from_slice(bytes);
            self.tick(&mut s, true);
        }
    }

    impl Backing for Arc<MemBacking> {
        fn read_full(&self, iov: &mut [libc::iovec], off: u64) -> io::Result<usize> {
            let mut s = self.state();
            let f = &mut s.faults;
            let (n, e) = (&mut f.read_fails, f.read_errno);
            if let Some(e) = fail(n, e) {
                return Err(e);
            }
            let mut at = off as usize;
            let mut done = 0;
            for v in iov.iter() {
                let n = v.iov_len.min(s.data.len().saturating_sub(at));
                // SAFETY: the cache hands iovecs over pool memory it holds LOCKED for this
                // call, valid for iov_len bytes; `n` is at most that, and `at..at + n` is
                // inside `data`.
                unsafe {
                    std::ptr::copy_nonoverlapping(s.data[at..].as_ptr(), v.iov_base as *mut u8, n)
                };
                at += n;
                done += n;
                if n < v.iov_len {
                    break;
                }
            }
            Ok(done)
        }

        fn write_all(&self, iov: &mut [libc::iovec], off: u64) -> io::Result<()> {
            let _own = OwnChange::begin(self);
            let mut s = self.state();
            s.writes_waiting += 1;
            while s.faults.hold_writes {
                s = self.released.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.writes_waiting -= 1;
            self.writes.fetch_add(1, Ordering::Relaxed);
            let f = &mut s.faults;
            let (n, e) = (&mut f.write_fails, f.write_errno);
            let err = fail(n, e);
            let len = match err {
                Some(_) => s.faults.write_prefix.min(iov_len(iov)),
                None => iov_len(iov),
            };
            let mut at = off as usize;
            let mut left = len;
            for v in iov.iter() {
                let n = v.iov_len.min(left);
                if s.data.len() < at + n {
                    s.data.resize(at + n, 0);
                }
                // SAFETY: as in read_full: the iovec names `iov_len` readable bytes held by
                // the caller (WRITEBACK) for this call; `n` is at most that.
                let src = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, n) };
                s.data[at..at + n].copy_from_slice(src);
                at += n;
                left -= n;
            }
            if len > 0 {
                self.tick(&mut s, true);
            }
            err.map_or(Ok(()), Err)
        }

        fn sync(&self, _datasync: bool) -> io::Result<()> {
            let mut s = self.state();
            self.syncs.fetch_add(1, Ordering::Relaxed);
            let f = &mut s.faults;
            let (n, e) = (&mut f.sync_fails, f.sync_errno);
            if let Some(e) = fail(n, e) {
                return Err(e);
            }
            s.durable = s.data.clone();
            Ok(())
        }

        fn syncfs(&self) -> io::Result<()> {
            self.sync(false)
        }

        fn set_len(&self, size: u64) -> io::Result<()> {
            let _own = OwnChange::begin(self);
            let mut s = self.state();
            if s.faults.set_len_errno != 0 {
                return Err(io::Error::from_raw_os_error(s.faults.set_len_errno));
            }
            s.data.resize(size as usize, 0);
            self.tick(&mut s, true);
            Ok(())
        }

        fn fallocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
            let _own = OwnChange::begin(self);
            let mut s = self.state();
            let end = (off + len) as usize;
            if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
                let e = end.min(s.data.len());
                let o = (off as usize).min(e);
                s.data[o..e].fill(0);
            } else if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && s.data.len() < end {
                s.data.resize(end, 0);
            }
            self.tick(&mut s, true);
            Ok(())
        }

        fn lseek(&self, off: i64, whence: i32) -> io::Result<i64> {
            let len = self.state().data.len() as i64;
            match whence {
                libc::SEEK_DATA if off < len => Ok(off),
                libc::SEEK_HOLE if off < len => Ok(len),
                _ => Err(io::Error::from_raw_os_error(libc::ENXIO)),
            }
        }

        fn stat(&self) -> io::Result<libc::stat> {
            let s = self.state();
            let mut st = crate::sys::stat::zeroed_stat();
            st.st_dev = 1;
            st.st_ino = 2;
            st.st_nlink = if s.faults.unlinked { 0 } else { 1 };
            st.st_mode = s.mode;
            st.st_size = s.data.len() as i64;
            st.st_blocks = s.data.len().div_ceil(512) as i64;
            st.st_blksize = 4096;
            (st.st_mtime, st.st_mtime_nsec) = s.mtime;
            (st.st_ctime, st.st_ctime_nsec) = s.ctime;
            Ok(st)
        }

        fn statvfs(&self) -> io::Result<libc::statvfs> {
            let free = self.state().faults.free_bytes.unwrap_or(1 << 40);
            let mut v = crate::sys::stat::zeroed_statvfs();
            v.f_bsize = 4096;
            v.f_frsize = 4096;
            v.f_blocks = (1u64 << 40) / 4096;
            v.f_bfree = free / 4096;
            v.f_bavail = free / 4096;
            Ok(v)
        }

        fn chmod(&self, mode: u32) -> io::Result<()> {
            let _own = OwnChange::begin(self);
            let mut s = self.state();
            s.mode = (s.mode & libc::S_IFMT) | (mode & 0o7777);
            self.tick(&mut s, false);
            Ok(())
        }

        fn recorded_mtime(&self) -> Option<libc::timespec> {
            let (s, ns) = self.state().mtime;
            Some(libc::timespec {
                tv_sec: s,
                tv_nsec: ns,
            })
        }

        fn set_mtime(&self, mtime: libc::timespec) -> io::Result<()> {
            let _own = OwnChange::begin(self);
            let mut s = self.state();
            self.tick(&mut s, false);
            s.mtime = (mtime.tv_sec, mtime.tv_nsec);
            Ok(())
        }

        fn touch_atime(&self) -> io::Result<()> {
            Ok(())
        }

        fn writable(&self) -> bool {
            true
        }

        fn inode_flags(&self) -> io::Result<u32> {
            Ok(0)
        }

        fn reopen_io(&self) -> io::Result<()> {
            Ok(())
        }

        fn append(&self, data: &[u8]) -> io::Result<u64> {
            let _own = OwnChange::begin(self);
            let mut s = self.state();
            let at = s.data.len() as u64;
            s.data.extend_from_slice(data);
            self.tick(&mut s, true);
            Ok(at)
        }

        fn max_size(&self) -> u64 {
            i64::MAX as u64
        }

        fn name(&self) -> Option<Vec<u8>> {
            Some(b"mem".to_vec())
        }

        fn close_io(&self, _idle: &dyn Fn() -> bool) {}

        fn io_open(&self) -> bool {
            true
        }

        fn holds_inode(&self) -> bool {
            true
        }

        fn descriptors(&self) -> IoDescriptors {
            IoDescriptors::Ample
        }

        fn begin_own(&self) {
            let mut seen = self.seen.lock().unwrap();
            let now = seen
                .wants_pre_check()
                .then(|| Validator::of(&self.stat().unwrap()));
            seen.begin_own(now);
        }

        fn end_own(&self) {
            let mut seen = self.seen.lock().unwrap();
            if seen.end_own() {
                seen.record(Validator::of(&self.stat().unwrap()));
            }
        }

        fn check(&self) -> io::Result<(Check, libc::stat)> {
            let mut seen = self.seen.lock().unwrap();
            let st = self.stat()?;
            Ok((seen.check(Validator::of(&st)), st))
        }

        fn check_taken(&self, st: &libc::stat) -> io::Result<(Check, libc::stat)> {
            if self.seen.lock().unwrap().unchanged_per(Validator::of(st)) {
                return Ok((Check::Unchanged, *st));
            }
            self.check()
        }

        fn validator(&self) -> Validator {
            self.seen.lock().unwrap().recorded()
        }
    }
}
