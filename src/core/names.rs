//! Names: lookup (also of "." and ".." for export handles), the creation of nodes (mknod,
//! mkdir, symlink, link) as the caller, unlink, rmdir and rename, readlink.
//!
//! Invariants: every successful entry answer took one kernel reference on its inode (the
//! table's `lookups`), to be given back by FORGET; an object created through the mount is the
//! caller's (created as the caller, or chowned right after when switching was refused); the
//! inode losing a name (unlink, rmdir, rename over) is held open across the removal so a
//! process still holding it finds it with nlink 0, and the removal is bracketed as an own
//! change of its cached file; a file's cached data dies with its last name only when no one
//! has it open.

use super::{errno, Core, Ctx, Entry, Result};
use crate::core::inodes::{Inode, ROOT_ID};
use crate::source;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

impl Core {
    /// LOOKUP of `name` in `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry> {
        if let d @ (b"." | b"..") = name.as_bytes() {
            let r = self.export_lookup(parent, d == b"..");
            tracing::debug!("export lookup of {name:?} in node {parent}: {r:?}");
            return r;
        }
        let parent = self.inode(parent)?;
        let cname = source::name_cstr(name)?;
        self.do_lookup(&parent, &cname)
    }

    /// Look `name` up in `parent` and take a kernel reference on the result.
    pub(crate) fn do_lookup(&self, parent: &Inode, name: &CStr) -> Result<Entry> {
        let fd = source::open_path(parent.fd()?.as_fd(), name)?;
        let st = source::fstat(fd.as_fd())?;
        let inode = self.inodes.lookup(fd, &st);
        if let Some(c) = inode.cache.get().filter(|_| self.coherent()) {
            self.revalidate_with(inode.id, c, true, Some(&st))?;
        }
        Ok(Entry {
            attr: self.attr_of(&inode, &st),
            generation: inode.generation,
        })
    }

    /// LOOKUP of "." and "..": the kernel decoding an export handle asks for node `parent`
    /// itself, or for a directory's parent. Both take a reference.
    fn export_lookup(&self, parent: u64, dotdot: bool) -> Result<Entry> {
        let inode = if !dotdot {
            self.inodes.revive(parent)?
        } else if parent == ROOT_ID {
            self.inodes.revive(ROOT_ID)?
        } else {
            let dir = self.inode(parent)?;
            if !dir.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            return self.do_lookup(&dir, c"..");
        };
        match source::fstat(inode.fd()?.as_fd()) {
            Ok(st) => Ok(Entry {
                attr: self.attr_of(&inode, &st),
                generation: inode.generation,
            }),
            Err(e) => {
                self.forget(inode.id, 1);
                Err(e.into())
            }
        }
    }

    /// READLINK.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        Ok(source::readlink(inode.fd()?.as_fd())?)
    }

    /// Create `name` in `parent` with `make(parent_fd, name)` as the caller, and look it up
    /// (mknod, mkdir, symlink). `mode` is what was asked for, after the umask.
    fn make_node(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        make: impl FnOnce(BorrowedFd<'_>, &CStr) -> io::Result<()>,
    ) -> Result<Entry> {
        self.check_writable()?;
        let parent = self.inode(parent)?;
        let cname = source::name_cstr(name)?;
        let dir = parent.fd()?;
        let (made, chown) = self.create_as_caller(ctx, || make(dir.as_fd(), &cname));
        made?;
        if chown {
            self.chown_new(ctx, &parent, &cname, mode)?;
        }
        self.do_lookup(&parent, &cname)
    }

    /// MKNOD: `mode` with the file type, `umask` the caller's (SOURCE applies it, or the
    /// parent's default ACL).
    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<Entry> {
        self.make_node(ctx, parent, name, mode & !umask, |dir, cname| {
            source::with_umask(mode, umask, |m| source::mknodat(dir, cname, m, rdev as u64))
        })
    }

    /// MKDIR.
    pub fn mkdir(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Result<Entry> {
        self.make_node(ctx, parent, name, mode & !umask, |dir, cname| {
            source::with_umask(mode & 0o7777, umask, |m| source::mkdirat(dir, cname, m))
        })
    }

    /// SYMLINK `name` in `parent` pointing to `target`.
    pub fn symlink(&self, ctx: &Ctx, parent: u64, name: &OsStr, target: &Path) -> Result<Entry> {
        let ctarget =
            CString::new(target.as_os_str().as_bytes()).map_err(|_| errno(libc::EINVAL))?;
        self.make_node(ctx, parent, name, 0o777, |dir, cname| {
            source::symlinkat(&ctarget, dir, cname)
        })
    }

    /// LINK node `ino` as `newname` in `newparent`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Entry> {
        self.check_writable()?;
        let inode = self.inode(ino)?;
        let np = self.inode(newparent)?;
        let b = source::name_cstr(newname)?;
        let own = inode.cache.get().map(|c| c.file.own_change());
        source::linkat_fd(inode.fd()?.as_fd(), np.fd()?.as_fd(), &b)?;
        drop(own);
        self.do_lookup(&np, &b)
    }

    /// UNLINK: the victim is held across the removal; the last name of a file nobody has
    /// open takes its cached data with it.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let parent = self.inode(parent)?;
        let cname = source::name_cstr(name)?;
        let dir = parent.fd()?;
        let (victim, _held, vc) = self.hold_victim(dir.as_fd(), &cname);
        let own = vc.as_ref().map(|c| c.file.own_change());
        source::unlinkat(dir.as_fd(), &cname, 0)?;
        drop(own);
        if let Some(st) = victim.filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG) {
            if let Some(c) = self.ctx.get((st.st_dev, st.st_ino)) {
                if !c.is_open() {
                    self.ctx.discard_if_deleted(&c);
                }
            }
        }
        Ok(())
    }

    /// RMDIR: the victim is held across the removal (a process may have it as its cwd).
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let parent = self.inode(parent)?;
        let cname = source::name_cstr(name)?;
        let dir = parent.fd()?;
        let _held = self.hold_victim(dir.as_fd(), &cname);
        Ok(source::unlinkat(dir.as_fd(), &cname, libc::AT_REMOVEDIR)?)
    }

    /// RENAME with renameat2's `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE, ...): the file
    /// replaced is held across it, and both files' ctime changes are own changes.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.check_writable()?;
        let p = self.inode(parent)?;
        let np = self.inode(newparent)?;
        let a = source::name_cstr(name)?;
        let b = source::name_cstr(newname)?;
        let to = np.fd()?;
        // The file a rename replaces loses its name.
        let (_, _held, vc) = self.hold_victim(to.as_fd(), &b);
        let _own_victim = vc.as_ref().map(|c| c.file.own_change());
        // The renamed file's ctime moves too.
        let moved = self
            .moved_cache(p.fd()?.as_fd(), &a)
            .filter(|m| vc.as_ref().is_none_or(|v| !Arc::ptr_eq(m, v)));
        let _own_moved = moved.as_ref().map(|c| c.file.own_change());
        Ok(source::renameat2(
            p.fd()?.as_fd(),
            &a,
            to.as_fd(),
            &b,
            flags,
        )?)
    }
}
