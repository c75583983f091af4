//! Inode flags (`chattr`, `lsattr`) and what the immutable and append-only ones forbid.
//!
//! Since Linux 5.13 the kernel's FUSE turns the fileattr calls (FS_IOC_GETFLAGS/SETFLAGS,
//! FS_IOC_FSGETXATTR/FSSETXATTR) into FUSE_IOCTL requests on a file it opens read-only for
//! the purpose; they are passed to SOURCE's file. Every other ioctl answers ENOTTY.
//!
//! The daemon acts on SOURCE as root, so it applies a local filesystem's rules by the
//! caller: only the owner or a caller with CAP_FOWNER sets flags, and changing immutable or
//! append-only takes CAP_LINUX_IMMUTABLE (the kernel checks the same before asking).
//!
//! The kernel's FUSE inode never carries S_IMMUTABLE or S_APPEND, so the checks a local
//! filesystem gets from the VFS are made here, by the flags last seen in SOURCE (at each
//! open for writing, truncate, and flag change through the mount): a write, truncate,
//! fallocate or copy into an immutable file is EPERM at once, not a writeback failure later;
//! an append-only file opens for writing only with O_APPEND and without O_TRUNC, takes only
//! appends (written straight to SOURCE through an O_APPEND descriptor, the only way SOURCE
//! lets anyone write such a file), no truncate, and no fallocate but plain allocation with
//! KEEP_SIZE. Data written before a flag is set is written back first, while SOURCE still
//! takes it.

use super::caller::{Caller, CAP_FOWNER, CAP_LINUX_IMMUTABLE};
use super::inodes::Inode;
use super::{errno, Core, Ctx, Result};
use crate::cache::inode_cache::InodeCache;
use crate::source::{self, fileattr as fa};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

/// What a flag change asks for: FS_IOC_SETFLAGS's word or FSSETXATTR's struct.
enum NewFlags {
    Flags(u32),
    Fsx([u8; fa::FSXATTR_SIZE]),
}

impl Core {
    /// A FUSE_IOCTL request: the reply's data (`out_size` bytes at most) or an error.
    pub fn ioctl(
        &self,
        ctx: &Ctx,
        ino: u64,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
    ) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if !inode.is_dir() && !inode.is_file() {
            return Err(errno(libc::ENOTTY));
        }
        let out = out_size as usize;
        match cmd {
            fa::FS_IOC_GETFLAGS | fa::FS_IOC32_GETFLAGS => {
                let fd = fa::open_for_flags(inode.fd()?.as_fd(), inode.is_dir())?;
                let flags = fa::get_flags(fd.as_fd())?;
                inode
                    .restrict
                    .store(fa::restricting(flags), Ordering::Relaxed);
                let b = flags.to_ne_bytes();
                Ok(b[..out.min(b.len())].to_vec())
            }
            fa::FS_IOC_FSGETXATTR => {
                let fd = fa::open_for_flags(inode.fd()?.as_fd(), inode.is_dir())?;
                let fsx = fa::get_fsxattr(fd.as_fd())?;
                let r = fa::restricting_xflags(fa::xflags_of(&fsx));
                inode.restrict.store(r, Ordering::Relaxed);
                Ok(fsx[..out.min(fsx.len())].to_vec())
            }
            fa::FS_IOC_SETFLAGS | fa::FS_IOC32_SETFLAGS => {
                let b: [u8; 4] = in_data
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(errno(libc::EINVAL))?;
                self.set_flags(ctx, ino, &inode, NewFlags::Flags(u32::from_ne_bytes(b)))?;
                Ok(Vec::new())
            }
            fa::FS_IOC_FSSETXATTR => {
                let b: [u8; fa::FSXATTR_SIZE] = in_data
                    .get(..fa::FSXATTR_SIZE)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(errno(libc::EINVAL))?;
                self.set_flags(ctx, ino, &inode, NewFlags::Fsx(b))?;
                Ok(Vec::new())
            }
            _ => Err(errno(libc::ENOTTY)),
        }
    }

    /// FS_IOC_SETFLAGS or FS_IOC_FSSETXATTR by the caller `ctx`.
    fn set_flags(&self, ctx: &Ctx, ino: u64, inode: &Inode, new: NewFlags) -> Result<()> {
        self.check_writable()?;
        let fd = fa::open_for_flags(inode.fd()?.as_fd(), inode.is_dir())?;
        let st = source::fstat(fd.as_fd())?;
        let caller = Caller::of(ctx);
        // inode_owner_or_capable, then fileattr_set_prepare's rule for the two flags.
        if st.st_uid != ctx.uid && !caller.has_cap(CAP_FOWNER) {
            return Err(errno(libc::EPERM));
        }
        let (old, want) = match &new {
            NewFlags::Flags(f) => {
                let old = fa::get_flags(fd.as_fd())?;
                (fa::restricting(old), fa::restricting(*f))
            }
            NewFlags::Fsx(x) => {
                let old = fa::get_fsxattr(fd.as_fd())?;
                (
                    fa::restricting_xflags(fa::xflags_of(&old)),
                    fa::restricting_xflags(fa::xflags_of(x)),
                )
            }
        };
        if old != want && !caller.has_cap(CAP_LINUX_IMMUTABLE) {
            return Err(errno(libc::EPERM));
        }
        let cache = inode.cache.get().cloned();
        if want & !old != 0 {
            if let Some(c) = &cache {
                // What was written before the flag is the file's: it must reach SOURCE
                // while SOURCE still takes it.
                self.ctx.writeback_file(c, true)?;
            }
        }
        {
            let _own = cache.as_ref().map(|c| c.file.own_change());
            match &new {
                NewFlags::Flags(f) => fa::set_flags(fd.as_fd(), *f),
                NewFlags::Fsx(x) => fa::set_fsxattr(fd.as_fd(), x),
            }?;
        }
        inode.restrict.store(want, Ordering::Relaxed);
        if let (Some(c), true) = (&cache, old != want) {
            // SOURCE now opens the file for writing, or no longer does.
            if let Err(e) = c.file.reopen_io() {
                tracing::debug!("node {}: reopening after a flag change: {e}", ino);
            }
        }
        // The change moved ctime, which the kernel caches.
        self.tell_kernel_changed(ino, false);
        Ok(())
    }

    /// Learn SOURCE's immutable and append-only flags of a regular file (one ioctl on its
    /// I/O descriptor); a filesystem without flags has none.
    pub(super) fn learn_restrict(&self, inode: &Inode, c: &InodeCache) -> u32 {
        let r = c.file.inode_flags().map(fa::restricting).unwrap_or(0);
        inode.restrict.store(r, Ordering::Relaxed);
        r
    }

    /// An open with `flags` (O_ACCMODE, O_APPEND, O_TRUNC) of a regular file: EPERM where
    /// the flags forbid it (as `may_open` for a local file). When SOURCE's descriptor is
    /// read-only although the flags allow writing now (they were cleared behind the mount's
    /// back), it is opened again. Returns whether the file is append-only (its writes then
    /// need no writable descriptor).
    pub(super) fn check_open_flags(
        &self,
        inode: &Inode,
        c: &InodeCache,
        flags: i32,
    ) -> Result<bool> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let trunc = flags & libc::O_TRUNC != 0;
        if !write && !trunc {
            return Ok(false);
        }
        let r = self.learn_restrict(inode, c);
        if r & fa::IMMUTABLE_FL != 0 {
            return Err(errno(libc::EPERM));
        }
        if r & fa::APPEND_FL != 0 {
            if trunc || (write && flags & libc::O_APPEND == 0) {
                return Err(errno(libc::EPERM));
            }
            return Ok(true);
        }
        if write && !c.file.writable() {
            let _ = c.file.reopen_io();
        }
        Ok(false)
    }

    /// A truncate, punch, zero range or copy into the file: EPERM when it is immutable or
    /// append-only. `learn`: ask SOURCE first (a truncate by path has no open behind it).
    pub(super) fn refuse_if_restricted(
        &self,
        inode: &Inode,
        c: &InodeCache,
        learn: bool,
    ) -> Result<()> {
        let r = if learn {
            self.learn_restrict(inode, c)
        } else {
            inode.restrict.load(Ordering::Relaxed)
        };
        if r != 0 {
            return Err(errno(libc::EPERM));
        }
        Ok(())
    }

    /// fallocate on a file with flags: immutable refuses every mode, append-only all but a
    /// plain allocation (`vfs_fallocate`).
    pub(super) fn check_fallocate_flags(&self, inode: &Inode, mode: i32) -> Result<()> {
        let r = inode.restrict.load(Ordering::Relaxed);
        if r & fa::IMMUTABLE_FL != 0
            || (r & fa::APPEND_FL != 0 && mode & !libc::FALLOC_FL_KEEP_SIZE != 0)
        {
            return Err(errno(libc::EPERM));
        }
        Ok(())
    }

    /// A write to a file whose flags restrict it: `None` when they do not (the ordinary
    /// write path goes on). Immutable: EPERM. Append-only: only a write from an O_APPEND
    /// descriptor, which goes to SOURCE at once through an O_APPEND descriptor of its own
    /// (with the file's cache written back before and dropped after, so the cache never
    /// holds data SOURCE could not take). Returns (offset written at, bytes).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn restricted_write(
        &self,
        ctx: &Ctx,
        ino: u64,
        inode: &Inode,
        c: &InodeCache,
        data: &[u8],
        open_flags: i32,
        page_cache: bool,
    ) -> Option<Result<(u64, usize)>> {
        let r = inode.restrict.load(Ordering::Relaxed);
        if r == 0 {
            return None;
        }
        if r & fa::IMMUTABLE_FL != 0 || page_cache || open_flags & libc::O_APPEND == 0 {
            return Some(Err(errno(libc::EPERM)));
        }
        Some((|| {
            // SOURCE refuses a chmod of an append-only file (a local filesystem's own
            // set-ID removal is not refused): the write goes on with the bits kept.
            if let Err(e) = self.kill_setid_for(ctx, ino, c) {
                tracing::debug!(
                    "node {}: set-ID bits of an append-only file kept: {e:?}",
                    ino
                );
            }
            self.ctx.invalidate(c)?;
            let at = c.file.append(data)?;
            c.source_stamped();
            self.ctx.invalidate(c)?;
            self.ctx.refresh_size(c)?;
            Ok((at, data.len()))
        })())
    }
}
