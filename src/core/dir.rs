//! Directories: open directory streams (one [`source::dir::DirStream`] per handle), readdir,
//! readdirplus (each entry looked up, so it takes a kernel reference), releasedir, fsyncdir.
//!
//! Invariants: a handle number is never reused during the mount; a readdirplus entry the
//! caller could not take (its buffer was full) gives back the reference its lookup took, so
//! the kernel's count and the table's agree.

use super::{errno, Core, Entry, Result};
use crate::source;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// One entry of a directory stream.
#[derive(Clone, Copy, Debug)]
pub struct DirEntry<'a> {
    pub name: &'a [u8],
    /// SOURCE's inode number (what readdir shows; the node id comes with readdirplus).
    pub ino: u64,
    /// The `DT_*` type.
    pub kind: u8,
    /// The offset of the entry after this one (to resume from).
    pub next: u64,
}

/// What readdirplus hands over with an entry.
#[derive(Debug)]
pub enum DirPlus<'a> {
    /// "." or "..": no lookup, and nothing for the kernel to cache.
    Dot,
    /// Looked up: one kernel reference taken (given back if the entry is not taken).
    Entry(&'a Entry),
}

impl Core {
    /// OPENDIR: a new stream on the directory; returns its handle.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let inode = self.inode(ino)?;
        let dir = source::dir::DirStream::open(inode.fd()?.as_fd())?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap()
            .insert(fh, Arc::new(Mutex::new(dir)));
        Ok(fh)
    }

    fn dir_stream(&self, fh: u64) -> Result<Arc<Mutex<source::dir::DirStream>>> {
        self.dirs
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(errno(libc::EBADF))
    }

    /// READDIR of handle `fh` from `offset`: `add` takes each entry and returns true when it
    /// cannot take it (its buffer is full); that entry comes again from its offset.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let h = self.dir_stream(fh)?;
        let mut h = h.lock().unwrap();
        Ok(h.walk(offset, |name, ino, kind, next| {
            add(DirEntry {
                name,
                ino,
                kind,
                next,
            })
        })?)
    }

    /// READDIRPLUS of directory `ino`, handle `fh`, from `offset`: as `readdir`, with each
    /// entry but "." and ".." looked up (entries that vanished in between are skipped).
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirEntry<'_>, DirPlus<'_>) -> bool,
    ) -> Result<()> {
        let parent = self.inode(ino)?;
        self.readdir(fh, offset, |e| {
            if e.name == b"." || e.name == b".." {
                return add(e, DirPlus::Dot);
            }
            let Ok(cname) = CString::new(e.name) else {
                return false;
            };
            match self.do_lookup(&parent, &cname) {
                Ok(entry) => {
                    let full = add(e, DirPlus::Entry(&entry));
                    if full {
                        // The kernel never saw this entry: drop the reference we took.
                        self.forget(entry.attr.ino, 1);
                    }
                    full
                }
                // Vanished between readdir and lookup: skip it.
                Err(_) => false,
            }
        })
    }

    /// RELEASEDIR: the stream goes.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// FSYNCDIR.
    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<()> {
        let inode = self.inode(ino)?;
        Ok(source::fsync_dir(inode.fd()?.as_fd(), datasync)?)
    }
}
