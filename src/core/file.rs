//! Open files: open and create, read and write through the cache, flush, release, fsync,
//! fallocate, copy_file_range and lseek.
//!
//! Invariants: every open or create that succeeds adds one to the file's `open_handles`, and
//! every release takes one away; the last release of a file with no name left drops its
//! cached data, and any release of a dirty file queues its writeback; a write, fallocate or
//! copy into a file first checks SOURCE's size limit, then drops the set-ID bits the kernel
//! would drop for the caller (`kill_setid_for`), then changes data; read and write add no
//! allocation and no lock over the cache's own (the bytes go straight from and to the pool).

use super::{errno, Core, Ctx, Result};
use crate::cache::inode_cache::InodeCache;
use crate::cache::WriteKind;
use crate::core::inodes::Inode;
use crate::options::CacheMode;
use crate::source;
use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How the kernel is to treat an open file (the adapter maps it to FOPEN_* flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenReply {
    /// Every read and write comes to the daemon (`cache=pool`).
    pub direct_io: bool,
    /// Direct writes to one file may run in parallel.
    pub parallel_direct_writes: bool,
    /// The kernel keeps the pages it cached of the file (it did not change in SOURCE).
    pub keep_cache: bool,
}

/// Where a write comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFrom {
    /// write(2) and friends, with the open file's flags (O_APPEND, O_DIRECT).
    Call { open_flags: i32 },
    /// The kernel writing back a page of its page cache (a mapping's, or any buffered write
    /// in writeback-cache mode; FUSE_WRITE_CACHE).
    PageCache,
}

impl Core {
    /// The flags of an open with open flags `flags`; `changed`: the file changed in SOURCE
    /// since the kernel cached its pages (cache=kernel then opens without keeping them, so
    /// the kernel drops them). Under cache=kernel an O_DIRECT open is a direct-I/O open too,
    /// as every open is under cache=pool: its reads and writes take the kernel's direct path
    /// straight to the pool instead of the page-cache file's O_DIRECT path (which costs more
    /// per request), and a mapping of it still works (`FUSE_DIRECT_IO_ALLOW_MMAP`).
    pub fn open_reply(&self, changed: bool, flags: i32) -> OpenReply {
        match self.cfg.cache {
            CacheMode::Pool => OpenReply {
                direct_io: true,
                parallel_direct_writes: true,
                keep_cache: false,
            },
            CacheMode::Kernel if flags & libc::O_DIRECT != 0 => OpenReply {
                direct_io: true,
                parallel_direct_writes: true,
                keep_cache: !changed,
            },
            CacheMode::Kernel => OpenReply {
                keep_cache: !changed,
                ..OpenReply::default()
            },
        }
    }

    /// Close-to-open at open: revalidate against SOURCE. A file whose last link went away
    /// in SOURCE (deleted, or replaced by a rename) and not through the mount answers ESTALE:
    /// the kernel then looks the name up again and opens what SOURCE has now. Returns
    /// whether the file changed.
    fn open_revalidate(&self, ino: u64, inode: &Inode, c: &InodeCache) -> Result<bool> {
        if !self.coherent() {
            return Ok(false);
        }
        let (st, changed) = self.revalidate(ino, c, false)?;
        if st.st_nlink == 0 && !inode.unlinked_via_mount.load(Ordering::Relaxed) {
            tracing::debug!("node {ino} was removed from SOURCE: ESTALE at open");
            return Err(errno(libc::ESTALE));
        }
        Ok(changed)
    }

    /// OPEN with the open(2) `flags`.
    pub fn open(&self, ino: u64, flags: i32) -> Result<OpenReply> {
        let inode = self.inode(ino)?;
        let wants_write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if wants_write {
            self.check_writable()?;
        }
        let c = self.cache_of(&inode)?;
        let append_only = self.check_open_flags(&inode, &c, flags)?;
        if wants_write && !c.file.writable() && !append_only {
            return Err(errno(libc::EACCES));
        }
        let changed = self.open_revalidate(ino, &inode, &c)?;
        if flags & libc::O_TRUNC != 0 {
            self.ctx.truncate(&c, 0)?;
        }
        c.opened();
        Ok(self.open_reply(changed, flags))
    }

    /// CREATE (and open) `name` in `parent` as the caller; an existing file is opened unless
    /// `O_EXCL`, and truncated with `O_TRUNC`.
    pub fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(super::Entry, OpenReply)> {
        self.check_writable()?;
        let parent = self.inode(parent)?;
        let cname = source::name_cstr(name)?;
        let excl = flags & libc::O_EXCL;
        let dir = parent.fd()?;
        let (made, chown) = self.create_as_caller(ctx, || {
            source::with_umask(mode & 0o7777, umask, |m| {
                source::openat(
                    std::os::fd::AsFd::as_fd(&*dir),
                    &cname,
                    libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY,
                    m,
                )
            })
        });
        let created = match made {
            Ok(fd) => {
                drop(fd);
                true
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && excl == 0 => false,
            Err(e) => return Err(e.into()),
        };
        if created && chown {
            self.chown_new(ctx, &parent, &cname, mode & !umask)?;
        }
        let entry = self.do_lookup(&parent, &cname)?;
        let inode = self.inodes.get(entry.attr.ino).ok_or(errno(libc::ESTALE))?;
        let c = match self.cache_of(&inode) {
            Ok(c) => c,
            Err(e) => {
                self.forget(entry.attr.ino, 1);
                return Err(e);
            }
        };
        if !created {
            self.check_open_flags(&inode, &c, flags)?;
        }
        if !created && flags & libc::O_TRUNC != 0 {
            self.ctx.truncate(&c, 0)?;
        }
        c.opened();
        let attr = self.stat_attr(&inode)?;
        Ok((
            super::Entry {
                attr,
                generation: entry.generation,
            },
            self.open_reply(false, flags),
        ))
    }

    /// The cache of regular file `ino`.
    fn file_cache(&self, ino: u64) -> Result<Arc<InodeCache>> {
        self.inode(ino).and_then(|i| self.cache_of(&i))
    }

    /// READ `[offset, offset + size)` of `ino`, handing the bytes (clipped at EOF) to `out`
    /// straight from pool memory while the range is locked. `from_mapping`: the read came
    /// without a lock owner, i.e. from a shared mapping faulting pages in (under
    /// `cache=pool` the kernel then keeps these pages).
    pub fn read<R>(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        from_mapping: bool,
        out: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let c = self.file_cache(ino)?;
        self.read_revalidate(ino, &c)?;
        let into_page_cache = self.cfg.cache == CacheMode::Pool && from_mapping;
        let touch = self.cfg.atime != source::AtimeMode::NoAtime;
        Ok(self.ctx.read(&c, offset, size, into_page_cache, |bytes| {
            if touch {
                c.touch_atime();
            }
            out(bytes)
        })?)
    }

    /// WRITE `data` at `offset` of `ino` by the caller; returns the bytes written.
    pub fn write(
        &self,
        ctx: &Ctx,
        ino: u64,
        offset: u64,
        data: &[u8],
        from: WriteFrom,
    ) -> Result<u32> {
        self.check_writable()?;
        let inode = self.inode(ino)?;
        let c = self.cache_of(&inode)?;
        let pool = self.cfg.cache == CacheMode::Pool;
        let flags = match from {
            WriteFrom::Call { open_flags } => open_flags,
            WriteFrom::PageCache => 0,
        };
        let page_cache = from == WriteFrom::PageCache;
        if let Some(r) = self.restricted_write(ctx, ino, &inode, &c, data, flags, page_cache) {
            let (at, n) = r?;
            if at != offset && !pool {
                self.tell_kernel_changed(ino, true);
            }
            return Ok(n as u32);
        }
        let append = flags & libc::O_APPEND != 0;
        // A page-cache writeback: the kernel drops a page whose writeback failed, so such
        // writes take no SOURCE space reservation.
        let kind = if from == WriteFrom::PageCache {
            WriteKind::PageCache
        } else if append && (pool || self.coherent()) {
            // Under cache=kernel the kernel picked the offset from the size it caches; with
            // other writers, the end of the file is SOURCE's.
            WriteKind::Append
        } else {
            WriteKind::At
        };
        // A foreign append must not be overwritten: writes that extend the file first learn
        // SOURCE's size.
        let extends = offset.saturating_add(data.len() as u64) > c.size();
        if self.coherent() && kind != WriteKind::PageCache && (append || extends) {
            self.revalidate(ino, &c, true)?;
        }
        // The size limit is checked before the write changes anything, set-ID bits included
        // (as generic_write_checks comes before file_remove_privs).
        let max = c.file.max_size();
        let at = if kind == WriteKind::Append {
            c.size()
        } else {
            offset
        };
        let end = at.saturating_add(data.len() as u64);
        if !data.is_empty() && (at >= max || (!pool && end > max)) {
            // Past SOURCE's limit. Under cache=kernel a write crossing it is refused whole:
            // the kernel knows only its own limit (2^63 - 1), and its asynchronous direct I/O
            // turns a short write into EIO (under cache=pool it is cut short at the limit,
            // as on SOURCE).
            return Err(errno(libc::EFBIG));
        }
        self.kill_setid_for(ctx, ino, &c)?;
        let (at, n) = self.ctx.write(&c, offset, data, kind)?;
        if at != offset && !pool {
            // The kernel's pages hold the data where it thought the end was.
            self.tell_kernel_changed(ino, true);
        } else if !pool && flags & libc::O_DIRECT != 0 && from != WriteFrom::PageCache {
            // An O_DIRECT write to a page-cached file: the kernel dropped its pages of the
            // range before sending it, but a buffered read meanwhile may have cached the old
            // bytes again, and after an asynchronous one (AIO) it does not drop them
            // (xfstests generic/451).
            self.invalidate_written(ino, at, n as u64);
        }
        Ok(n as u32)
    }

    /// FLUSH (each close of a descriptor): report a writeback error; under close-to-open,
    /// what was written is in SOURCE when close returns. The writeback itself starts at
    /// release: FLUSH also comes for every copy of the descriptor a forked child closes.
    pub fn flush(&self, ino: u64) -> Result<()> {
        let inode = self.inode(ino)?;
        if let Some(c) = self.ctx.get(inode.key) {
            if let Some(e) = c.take_wb_error() {
                return Err(errno(e));
            }
            if self.coherent() {
                self.ctx.write_back_for_close(&c)?;
            }
        }
        Ok(())
    }

    /// RELEASE (the last close of an open file): the last one of a deleted file drops its
    /// data and closes SOURCE's descriptor when idle; dirty data starts writing back.
    pub fn release(&self, ino: u64) {
        if let Some(inode) = self.inodes.get(ino) {
            if let Some(c) = inode.cache.get() {
                if c.closed() {
                    self.ctx.discard_if_deleted(c);
                    c.close_file_if_idle();
                }
                if c.dirty_bytes() > 0 {
                    self.ctx.queue_writeback(c);
                }
            }
        }
    }

    /// FSYNC: the file's dirty data written back and SOURCE's file synced.
    pub fn fsync(&self, ino: u64, datasync: bool) -> Result<()> {
        let c = self.file_cache(ino)?;
        Ok(self.ctx.sync_file(&c, datasync)?)
    }

    /// FALLOCATE by the caller, any mode: plain allocation, KEEP_SIZE, PUNCH_HOLE and
    /// ZERO_RANGE through the cache; collapse and insert range in SOURCE after writing back
    /// and dropping the cache.
    pub fn fallocate(
        &self,
        ctx: &Ctx,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        let inode = self.inode(ino)?;
        self.check_writable()?;
        let c = self.cache_of(&inode)?;
        self.check_fallocate_flags(&inode, mode)?;
        if length == 0 {
            return Err(errno(libc::EINVAL));
        }
        // As vfs_fallocate checks against SOURCE's limit, whatever the mode.
        let end = offset.checked_add(length).ok_or(errno(libc::EFBIG))?;
        if end > c.file.max_size() {
            return Err(errno(libc::EFBIG));
        }
        // Every mode modifies the file (file_modified() in a local filesystem's fallocate).
        self.kill_setid_for(ctx, inode.id, &c)?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            // Collapse/insert range move data in SOURCE: write back and drop the cache first.
            self.ctx.invalidate(&c)?;
            c.file.fallocate(mode, offset, length)?;
            c.source_stamped();
            let st = c.file.stat()?;
            self.ctx.truncate_cache_to(&c, st.st_size as u64);
            return Ok(());
        }
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            // Before the hole reaches SOURCE, dirty data that extends the file past SOURCE's
            // size must be there, or a KEEP_SIZE punch would act on a shorter file.
            let size = c.size();
            if c.file.stat()?.st_size as u64 != size {
                self.ctx.writeback_file(&c, true)?;
            }
            let file = &c.file;
            self.ctx
                .punch(&c, offset, length, || file.fallocate(mode, offset, length))?;
            c.source_stamped();
            if !keep && end > c.size() {
                self.ctx.refresh_size(&c)?;
            }
            return Ok(());
        }
        // Plain allocation (mode 0 or KEEP_SIZE): SOURCE reserves blocks; the size may grow.
        c.file.fallocate(mode, offset, length)?;
        c.source_stamped();
        if !keep && end > c.size() {
            self.ctx.refresh_size(&c)?;
        }
        Ok(())
    }

    /// LSEEK with SEEK_DATA or SEEK_HOLE (the kernel answers the others itself).
    pub fn lseek(&self, ino: u64, offset: i64, whence: i32) -> Result<i64> {
        let c = self.file_cache(ino)?;
        if self.cfg.cache == CacheMode::Kernel {
            // The kernel holds dirty pages we have not seen yet: let it answer (everything
            // below EOF is data) rather than answer from SOURCE.
            return Err(errno(libc::ENOSYS));
        }
        if whence == libc::SEEK_DATA || whence == libc::SEEK_HOLE {
            if offset < 0 || offset as u64 >= c.size() {
                return Err(errno(libc::ENXIO));
            }
            return Ok(self.ctx.seek(&c, offset, whence)?);
        }
        Err(errno(libc::EINVAL))
    }

    /// COPY_FILE_RANGE by the caller: through the cache (read from `ino_in`'s, written into
    /// `ino_out`'s), the destination modified as by write(2). Returns the bytes copied.
    pub fn copy_file_range(
        &self,
        ctx: &Ctx,
        ino_in: u64,
        offset_in: u64,
        ino_out: u64,
        offset_out: u64,
        len: u64,
    ) -> Result<u64> {
        let a = self.file_cache(ino_in)?;
        let out = self.inode(ino_out)?;
        let b = self.cache_of(&out)?;
        self.refuse_if_restricted(&out, &b, false)?;
        // The destination is modified as by write(2) (file_modified() on it, after the size
        // checks).
        if offset_out >= b.file.max_size() {
            return Err(errno(libc::EFBIG));
        }
        self.kill_setid_for(ctx, ino_out, &b)?;
        self.do_copy_range(&a, offset_in, &b, offset_out, len)
    }

    fn do_copy_range(
        &self,
        src: &InodeCache,
        mut off_in: u64,
        dst: &InodeCache,
        mut off_out: u64,
        len: u64,
    ) -> Result<u64> {
        self.check_writable()?;
        // Only what the source file holds is copied, and only up to the destination's size
        // limit on SOURCE; starting at or past that limit is EFBIG (generic_copy_file_checks).
        let max = dst.file.max_size();
        if off_out >= max {
            return Err(errno(libc::EFBIG));
        }
        let len = len
            .min(src.size().saturating_sub(off_in))
            .min(max - off_out);
        let mut done = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        while done < len {
            let chunk = (len - done).min(1 << 20) as u32;
            buf.clear();
            self.ctx
                .read(src, off_in, chunk, false, |b| buf.extend_from_slice(b))?;
            if buf.is_empty() {
                break;
            }
            let (_, n) = self.ctx.write(dst, off_out, &buf, WriteKind::At)?;
            done += n as u64;
            off_in += n as u64;
            off_out += n as u64;
            if n < buf.len() {
                break;
            }
        }
        Ok(done)
    }
}
