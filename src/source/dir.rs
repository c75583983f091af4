//! Directory streams of SOURCE: a directory reopened for reading and walked with glibc's
//! `readdir`, resumable at any `telldir` cookie the stream gave out (what FUSE readdir offsets
//! are).
//!
//! Invariants: the `DIR*` is non-null for the stream's life and closed once, on drop (which
//! also closes the descriptor it took over); the stream is `Send` but not `Sync`, and every
//! use takes `&mut self`, so no two threads use it at once; `offset` is the cookie of the next
//! entry the stream will return.

use super::reopen;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// An open directory stream and the position it is at.
pub struct DirStream {
    dir: *mut libc::DIR,
    /// Position the stream is at (telldir cookie of the next entry).
    offset: u64,
}

// SAFETY: a glibc DIR stream is not tied to the thread that opened it; it may be used from
// another thread as long as no two use it at once. DirStream is only Send, not Sync, and
// every use (readdir, seekdir) takes `&mut self`, closedir runs on drop, so uses are
// serialized by whoever owns it (a Mutex in the core's table of open directories).
unsafe impl Send for DirStream {}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: `self.dir` is the non-null stream fdopendir returned in `open` and is closed
        // only here, once, when the stream is dropped; closedir also closes the descriptor the
        // stream took over.
        unsafe { libc::closedir(self.dir) };
    }
}

impl DirStream {
    /// Open the directory held by `fd` (any descriptor of it, `O_PATH` included) for reading.
    pub fn open(fd: BorrowedFd<'_>) -> io::Result<DirStream> {
        let fd: OwnedFd = reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let raw = fd.as_raw_fd();
        // SAFETY: `raw` is an open directory descriptor owned by `fd`; on success the stream
        // takes it over (hence the forget below), on failure it is left to `fd`, which closes
        // it.
        let dir = unsafe { libc::fdopendir(raw) };
        if dir.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(fd); // owned by the DIR stream now
        Ok(DirStream { dir, offset: 0 })
    }

    /// Walk the stream from `offset`, calling `add(name, d_ino, d_type, next_offset)` until
    /// it returns true (the caller's buffer is full: that entry is returned again next time)
    /// or the directory ends.
    pub fn walk(
        &mut self,
        offset: u64,
        mut add: impl FnMut(&[u8], u64, u8, u64) -> bool,
    ) -> io::Result<()> {
        if offset != self.offset {
            // SAFETY: `self.dir` is a live stream (closed only on drop) and `&mut self` makes
            // this the only user; any offset is accepted (a bad one makes readdir fail or end).
            unsafe { libc::seekdir(self.dir, offset as libc::c_long) };
            self.offset = offset;
        }
        loop {
            // SAFETY: __errno_location returns this thread's errno, valid for the thread's
            // life; it is cleared to tell readdir's end from its error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `self.dir` is a live stream and `&mut self` makes this the only user.
            let ent = unsafe { libc::readdir(self.dir) };
            if ent.is_null() {
                // SAFETY: __errno_location returns this thread's errno, valid for the thread's
                // life.
                let e = unsafe { *libc::__errno_location() };
                if e != 0 {
                    return Err(io::Error::from_raw_os_error(e));
                }
                return Ok(());
            }
            // SAFETY: readdir returned non-null: a dirent inside the stream's buffer, valid
            // until the next readdir/seekdir/closedir on `self.dir`, none of which runs while
            // `ent` is in use (`&mut self` is held).
            let ent = unsafe { &*ent };
            // SAFETY: glibc NUL-terminates d_name inside the dirent, and `name` is used only
            // before the next readdir or seekdir on the stream.
            let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes();
            let next = ent.d_off as u64;
            if add(name, ent.d_ino, ent.d_type, next) {
                // SAFETY: `self.dir` is a live stream, `&mut self` is held, and `self.offset`
                // is a telldir cookie from the same stream (0 or an earlier d_off).
                unsafe { libc::seekdir(self.dir, self.offset as libc::c_long) };
                return Ok(());
            }
            self.offset = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn walks_resumes_and_stops_when_full() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["a", "b", "c"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let root = super::super::open_root(dir.path()).unwrap();
        let mut s = DirStream::open(root.as_fd()).unwrap();
        let mut all = Vec::new();
        s.walk(0, |name, _, _, next| {
            all.push((name.to_vec(), next));
            false
        })
        .unwrap();
        let mut names: Vec<_> = all.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        assert_eq!(names, [&b"."[..], b"..", b"a", b"b", b"c"]);
        // Full after the first entry: the next walk from its cookie starts at the second.
        let mut first = None;
        s.walk(0, |name, _, _, _| {
            first = Some(name.to_vec());
            true
        })
        .unwrap();
        assert_eq!(
            first.as_deref(),
            Some(&all[0].0[..]),
            "a full buffer sees it again"
        );
        let mut rest = Vec::new();
        s.walk(all[0].1, |name, _, _, _| {
            rest.push(name.to_vec());
            false
        })
        .unwrap();
        assert_eq!(rest.len(), all.len() - 1);
        assert_eq!(rest[0], all[1].0);
    }
}
