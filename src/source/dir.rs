//! Directory streams of SOURCE: a directory reopened for reading and walked with rustix's
//! `Dir` (getdents64 into its own buffer), resumable at any `d_off` cookie the stream gave
//! out (what FUSE readdir offsets are).
//!
//! Invariants: the stream owns its descriptor and closes it on drop; every use takes
//! `&mut self`, so no two threads use it at once (the core keeps each in a Mutex); `offset`
//! is the cookie of the next entry the stream will return.

use super::reopen;
use rustix::fs::{Dir, FileType};
use std::io;
use std::os::fd::BorrowedFd;

/// An open directory stream and the position it is at.
pub struct DirStream {
    dir: Dir,
    /// Position the stream is at (cookie of the next entry).
    offset: u64,
}

/// The `d_type` of a directory entry (`DT_*`: the file type bits of its mode, shifted).
fn d_type(t: FileType) -> u8 {
    match t {
        FileType::Unknown => libc::DT_UNKNOWN,
        t => (t.as_raw_mode() >> 12) as u8,
    }
}

impl DirStream {
    /// Open the directory held by `fd` (any descriptor of it, `O_PATH` included) for reading.
    pub fn open(fd: BorrowedFd<'_>) -> io::Result<DirStream> {
        let fd = reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(DirStream {
            dir: Dir::new(fd)?,
            offset: 0,
        })
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
            self.dir.seek(offset as i64)?;
            self.offset = offset;
        }
        while let Some(ent) = self.dir.read() {
            let ent = ent?;
            let next = ent.offset() as u64;
            if add(
                ent.file_name().to_bytes(),
                ent.ino(),
                d_type(ent.file_type()),
                next,
            ) {
                // Seen again next time: back to where this entry starts.
                self.dir.seek(self.offset as i64)?;
                return Ok(());
            }
            self.offset = next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn entry_types_are_dirent_types() {
        assert_eq!(d_type(FileType::RegularFile), libc::DT_REG);
        assert_eq!(d_type(FileType::Directory), libc::DT_DIR);
        assert_eq!(d_type(FileType::Symlink), libc::DT_LNK);
        assert_eq!(d_type(FileType::Fifo), libc::DT_FIFO);
        assert_eq!(d_type(FileType::Socket), libc::DT_SOCK);
        assert_eq!(d_type(FileType::CharacterDevice), libc::DT_CHR);
        assert_eq!(d_type(FileType::BlockDevice), libc::DT_BLK);
        assert_eq!(d_type(FileType::Unknown), libc::DT_UNKNOWN);
    }

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
