//! The core's operations tested without a mount: a [`Core`] over a temporary SOURCE and a
//! small pool, called as the adapter calls it (node ids, names, a request context).
//!
//! Invariants: each test has its own SOURCE (a temporary directory removed on drop) and its
//! own cache context (no writeback threads: writeback happens when a test asks for it); no
//! test needs /dev/fuse; those needing the daemon's privileges skip without them.

use super::*;
use crate::cache::test_util;
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Mutex as StdMutex;
use std::time::UNIX_EPOCH;
use tempfile::TempDir;

const ROOT: u64 = inodes::ROOT_ID;

/// A caller that is not root, in no group but its own (pid 0: no /proc status, so exactly
/// uid and gid count).
const NOBODY: Ctx = Ctx {
    uid: 65534,
    gid: 65534,
    pid: 0,
};

fn config(cache: CacheMode, coherence: Coherence) -> Config {
    Config {
        cache,
        read_only: false,
        ttl: Duration::from_secs(1),
        owner_uid: 0,
        atime: source::AtimeMode::RelAtime,
        nodiratime: false,
        spin: crate::options::SpinMode::Off,
        coherence,
        request_threads: 2,
    }
}

/// A SOURCE directory (world-writable, so a non-root caller may create in it) and a core
/// over it.
struct Fixture {
    dir: TempDir,
    core: Core,
}

impl Fixture {
    fn with(cfg: Config) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let core = Core::new(dir.path(), test_util::context(), cfg).unwrap();
        Fixture { dir, core }
    }

    fn new() -> Fixture {
        Fixture::with(config(CacheMode::Pool, Coherence::Cto))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Create and open `name` in the root as root; its node id.
    fn create(&self, name: &str) -> u64 {
        let (e, _) = self
            .core
            .create(&Ctx::ROOT, ROOT, n(name), 0o644, 0, libc::O_RDWR)
            .unwrap();
        e.attr.ino
    }

    fn write(&self, ino: u64, off: u64, data: &[u8]) -> u32 {
        self.core
            .write(
                &Ctx::ROOT,
                ino,
                off,
                data,
                WriteFrom::Call {
                    open_flags: libc::O_RDWR,
                },
            )
            .unwrap()
    }

    fn read(&self, ino: u64, off: u64, size: u32) -> Vec<u8> {
        self.core
            .read(ino, off, size, false, |b| b.to_vec())
            .unwrap()
    }
}

fn n(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The mount's counter `name`.
fn counter(core: &Core, name: &str) -> u64 {
    let snap = core.context().stats.snapshot();
    snap.iter().find(|(k, _)| *k == name).unwrap().1
}

fn errno_of<T: std::fmt::Debug>(r: Result<T>) -> i32 {
    r.unwrap_err().raw_errno()
}

/// Whether the daemon's privileges are there (chown, acting as another user, trusted.*);
/// tests of what needs them pass trivially without.
fn privileged() -> bool {
    let root = source::running_as_root();
    if !root {
        eprintln!("not root: skipped");
    }
    root
}

/// Records what the core tells the kernel's caches.
#[derive(Default)]
struct Recorder(StdMutex<Vec<(u64, i64, i64)>>);

impl KernelCache for Recorder {
    fn inval_inode(&self, ino: u64, off: i64, len: i64) -> io::Result<()> {
        self.0.lock().unwrap().push((ino, off, len));
        Ok(())
    }
}

#[test]
fn create_lookup_getattr_and_open_flags() {
    let f = Fixture::new();
    let (e, o) = f
        .core
        .create(&Ctx::ROOT, ROOT, n("f"), 0o640, 0o022, libc::O_RDWR)
        .unwrap();
    assert_eq!(e.attr.kind(), libc::S_IFREG);
    assert_eq!(e.attr.perm(), 0o640);
    assert_eq!(e.attr.size, 0);
    assert_eq!(
        o,
        OpenReply {
            direct_io: true,
            parallel_direct_writes: true,
            keep_cache: false
        },
        "cache=pool: direct I/O"
    );
    let l = f.core.lookup(ROOT, n("f")).unwrap();
    assert_eq!(l.attr.ino, e.attr.ino);
    assert_eq!(l.generation, e.generation);
    assert_eq!(f.core.getattr(e.attr.ino).unwrap().ino, e.attr.ino);
    assert!(f.path("f").is_file());
    // Exclusive create of an existing name; an open of it without O_EXCL truncates.
    assert_eq!(
        errno_of(
            f.core
                .create(&Ctx::ROOT, ROOT, n("f"), 0o644, 0, libc::O_EXCL)
        ),
        libc::EEXIST
    );
    f.write(e.attr.ino, 0, b"abc");
    assert_eq!(f.core.getattr(e.attr.ino).unwrap().size, 3);
    let (again, _) = f
        .core
        .create(
            &Ctx::ROOT,
            ROOT,
            n("f"),
            0o644,
            0,
            libc::O_TRUNC | libc::O_RDWR,
        )
        .unwrap();
    assert_eq!(again.attr.ino, e.attr.ino);
    assert_eq!(again.attr.size, 0, "O_TRUNC on an existing file");
}

#[test]
fn cache_kernel_keeps_the_page_cache_unless_changed() {
    let f = Fixture::with(config(CacheMode::Kernel, Coherence::Cto));
    assert_eq!(
        f.core.open_reply(false, 0),
        OpenReply {
            keep_cache: true,
            ..Default::default()
        }
    );
    assert_eq!(f.core.open_reply(true, 0), OpenReply::default());
    // An O_DIRECT open takes the direct path, as under cache=pool.
    let direct = f.core.open_reply(false, libc::O_DIRECT | libc::O_RDWR);
    assert!(direct.direct_io && direct.parallel_direct_writes && direct.keep_cache);
    assert!(f.core.open_reply(true, libc::O_DIRECT).direct_io);
    let p = Fixture::with(config(CacheMode::Pool, Coherence::Cto));
    assert_eq!(
        p.core.open_reply(false, 0),
        p.core.open_reply(false, libc::O_DIRECT)
    );
}

#[test]
fn mkdir_mknod_symlink_apply_the_umask() {
    let f = Fixture::new();
    let d = f
        .core
        .mkdir(&Ctx::ROOT, ROOT, n("d"), 0o777, 0o022)
        .unwrap();
    assert_eq!(d.attr.kind(), libc::S_IFDIR);
    assert_eq!(d.attr.perm(), 0o755);
    let p = f
        .core
        .mknod(
            &Ctx::ROOT,
            d.attr.ino,
            n("p"),
            libc::S_IFIFO | 0o666,
            0o002,
            0,
        )
        .unwrap();
    assert_eq!(p.attr.kind(), libc::S_IFIFO);
    assert_eq!(p.attr.perm(), 0o664);
    let s = f
        .core
        .symlink(&Ctx::ROOT, ROOT, n("s"), Path::new("d/p"))
        .unwrap();
    assert_eq!(s.attr.kind(), libc::S_IFLNK);
    assert_eq!(f.core.readlink(s.attr.ino).unwrap(), b"d/p");
    assert_eq!(std::fs::read_link(f.path("s")).unwrap(), Path::new("d/p"));
    // A mode change of a symlink is refused; opening a directory or a fifo for data is not
    // a regular file's.
    let chmod = SetAttr {
        mode: Some(0o700),
        ..Default::default()
    };
    assert_eq!(
        errno_of(f.core.setattr(&Ctx::ROOT, s.attr.ino, &chmod)),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno_of(f.core.open(d.attr.ino, libc::O_RDONLY)),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(f.core.open(p.attr.ino, libc::O_RDONLY)),
        libc::EINVAL
    );
    assert!(f.core.readlink(d.attr.ino).is_err(), "not a symlink");
}

#[test]
fn objects_created_for_a_caller_are_the_callers() {
    if !privileged() {
        return;
    }
    let f = Fixture::new();
    let d = f.core.mkdir(&NOBODY, ROOT, n("d"), 0o755, 0).unwrap();
    assert_eq!((d.attr.uid, d.attr.gid), (NOBODY.uid, NOBODY.gid));
    let (e, _) = f
        .core
        .create(&NOBODY, d.attr.ino, n("f"), 0o600, 0, libc::O_RDWR)
        .unwrap();
    assert_eq!((e.attr.uid, e.attr.gid), (NOBODY.uid, NOBODY.gid));
    let s = f
        .core
        .symlink(&NOBODY, ROOT, n("s"), Path::new("x"))
        .unwrap();
    assert_eq!(s.attr.uid, NOBODY.uid);
    let md = std::fs::symlink_metadata(f.path("d/f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (NOBODY.uid, NOBODY.gid));
    // Created as the caller: SOURCE's own permission checks apply to it.
    std::fs::set_permissions(f.path("d"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let root_dir = f.core.mkdir(&Ctx::ROOT, ROOT, n("r"), 0o755, 0).unwrap();
    assert_eq!(
        errno_of(f.core.mkdir(&NOBODY, root_dir.attr.ino, n("x"), 0o755, 0)),
        libc::EACCES
    );
}

#[test]
fn hard_links_are_one_inode() {
    let f = Fixture::new();
    let a = f.create("a");
    f.write(a, 0, b"shared");
    let l = f.core.link(a, ROOT, n("b")).unwrap();
    assert_eq!(l.attr.ino, a);
    assert_eq!(l.attr.nlink, 2);
    assert_eq!(f.core.lookup(ROOT, n("b")).unwrap().attr.ino, a);
    let b = f.core.lookup(ROOT, n("b")).unwrap().attr.ino;
    assert_eq!(f.read(b, 0, 100), b"shared", "one cache for both names");
    assert_eq!(errno_of(f.core.link(a, ROOT, n("b"))), libc::EEXIST);
}

#[test]
fn write_and_read_through_the_cache() {
    let f = Fixture::new();
    let ino = f.create("f");
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(f.write(ino, 0, &data), data.len() as u32);
    assert_eq!(f.read(ino, 0, 1 << 20), data, "read back, clipped at EOF");
    assert_eq!(
        f.read(ino, 4095, 3),
        &data[4095..4098],
        "across a page edge"
    );
    assert!(f.read(ino, 30_000, 10).is_empty(), "past EOF");
    // Still only in the pool: SOURCE has none of it until written back.
    assert_eq!(std::fs::metadata(f.path("f")).unwrap().len(), 0);
    assert_eq!(f.core.getattr(ino).unwrap().size, data.len() as u64);
    assert!(f.core.context().dirty_bytes() > 0);
    f.core.fsync(ino, false).unwrap();
    assert_eq!(std::fs::read(f.path("f")).unwrap(), data);
    assert_eq!(f.core.context().dirty_bytes(), 0);
    // A write at an offset past EOF leaves a hole of zeros.
    f.write(ino, 30_000, b"end");
    let tail = f.read(ino, 20_000, 10_003);
    assert!(tail[..10_000].iter().all(|&b| b == 0));
    assert_eq!(&tail[10_000..], b"end");
    f.core.release(ino);
}

#[test]
fn appends_go_to_the_end_and_close_to_open_writes_back_at_flush() {
    let f = Fixture::new();
    let ino = f.create("f");
    f.write(ino, 0, b"one ");
    let append = WriteFrom::Call {
        open_flags: libc::O_WRONLY | libc::O_APPEND,
    };
    assert_eq!(f.core.write(&Ctx::ROOT, ino, 0, b"two", append).unwrap(), 3);
    assert_eq!(f.read(ino, 0, 100), b"one two");
    // Close-to-open: what was written is in SOURCE when close (FLUSH) returns.
    f.core.flush(ino).unwrap();
    assert_eq!(std::fs::read(f.path("f")).unwrap(), b"one two");
    f.core.release(ino);
}

#[test]
fn unlink_of_an_open_file_keeps_it_readable_until_release() {
    let f = Fixture::new();
    let ino = f.create("f");
    f.write(ino, 0, b"still here");
    f.core.unlink(ROOT, n("f")).unwrap();
    assert!(!f.path("f").exists());
    assert_eq!(errno_of(f.core.lookup(ROOT, n("f"))), libc::ENOENT);
    // The victim was held: the open file is still there with no name.
    let a = f.core.getattr(ino).unwrap();
    assert_eq!(a.nlink, 0);
    assert_eq!(f.read(ino, 0, 100), b"still here");
    f.write(ino, 5, b"HERE");
    assert_eq!(f.read(ino, 0, 100), b"stillHEREe");
    // The last close of a file with no name drops its dirty data: nothing to write back.
    f.core.release(ino);
    assert_eq!(f.core.context().dirty_bytes(), 0);
    assert_eq!(errno_of(f.core.unlink(ROOT, n("f"))), libc::ENOENT);
}

#[test]
fn unlink_of_a_closed_dirty_file_discards_its_data() {
    let f = Fixture::new();
    let ino = f.create("f");
    f.write(ino, 0, &[7u8; 8192]);
    f.core.release(ino);
    assert!(f.core.context().dirty_bytes() > 0);
    f.core.unlink(ROOT, n("f")).unwrap();
    assert_eq!(
        f.core.context().dirty_bytes(),
        0,
        "nothing left to write back"
    );
}

#[test]
fn rmdir_with_an_open_handle() {
    let f = Fixture::new();
    let d = f
        .core
        .mkdir(&Ctx::ROOT, ROOT, n("d"), 0o755, 0)
        .unwrap()
        .attr
        .ino;
    f.core
        .mknod(&Ctx::ROOT, d, n("x"), libc::S_IFREG | 0o644, 0, 0)
        .unwrap();
    let fh = f.core.opendir(d).unwrap();
    assert_eq!(errno_of(f.core.rmdir(ROOT, n("d"))), libc::ENOTEMPTY);
    f.core.unlink(d, n("x")).unwrap();
    f.core.rmdir(ROOT, n("d")).unwrap();
    assert!(!f.path("d").exists());
    // The directory is held: its attributes say it is gone, its stream still reads.
    assert_eq!(f.core.getattr(d).unwrap().nlink, 0);
    let mut names = Vec::new();
    f.core
        .readdir(fh, 0, |e| {
            names.push(e.name.to_vec());
            false
        })
        .unwrap();
    assert!(!names.contains(&b"x".to_vec()));
    f.core.releasedir(fh);
    assert_eq!(errno_of(f.core.readdir(fh, 0, |_| false)), libc::EBADF);
    assert_eq!(errno_of(f.core.rmdir(ROOT, n("d"))), libc::ENOENT);
}

#[test]
fn rename_over_an_open_file() {
    let f = Fixture::new();
    let a = f.create("a");
    f.write(a, 0, b"new contents");
    let b = f.create("b");
    f.write(b, 0, b"old");
    f.core.flush(b).unwrap();
    f.core.rename(ROOT, n("a"), ROOT, n("b"), 0).unwrap();
    assert!(!f.path("a").exists());
    assert_eq!(f.core.lookup(ROOT, n("b")).unwrap().attr.ino, a);
    // The replaced file is still open and readable, with no name left.
    assert_eq!(f.read(b, 0, 100), b"old");
    assert_eq!(f.core.getattr(b).unwrap().nlink, 0);
    // The renamed file's dirty data follows it.
    f.core.fsync(a, false).unwrap();
    assert_eq!(std::fs::read(f.path("b")).unwrap(), b"new contents");
    // Opening the replaced file again is allowed: it went away through the mount.
    f.core.open(b, libc::O_RDONLY).unwrap();
    f.core.release(b);
    f.core.release(b);
    f.core.release(a);
}

#[test]
fn rename_flags() {
    let f = Fixture::new();
    let a = f.create("a");
    let b = f.create("b");
    assert_eq!(
        errno_of(
            f.core
                .rename(ROOT, n("a"), ROOT, n("b"), libc::RENAME_NOREPLACE)
        ),
        libc::EEXIST
    );
    f.core
        .rename(ROOT, n("a"), ROOT, n("b"), libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(f.core.lookup(ROOT, n("a")).unwrap().attr.ino, b);
    assert_eq!(f.core.lookup(ROOT, n("b")).unwrap().attr.ino, a);
    let d = f
        .core
        .mkdir(&Ctx::ROOT, ROOT, n("d"), 0o755, 0)
        .unwrap()
        .attr
        .ino;
    f.core.rename(ROOT, n("a"), d, n("moved"), 0).unwrap();
    assert_eq!(f.core.lookup(d, n("moved")).unwrap().attr.ino, b);
    assert_eq!(
        errno_of(f.core.rename(ROOT, n("nope"), ROOT, n("x"), 0)),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(f.core.rename(ROOT, n("b"), ROOT, n("d"), 0)),
        libc::EISDIR
    );
}

#[test]
fn setattr_truncate_goes_through_the_cache() {
    let f = Fixture::new();
    let ino = f.create("f");
    f.write(ino, 0, &[b'x'; 10_000]);
    let to = |size| SetAttr {
        size: Some(size),
        ..Default::default()
    };
    assert_eq!(f.core.setattr(&Ctx::ROOT, ino, &to(100)).unwrap().size, 100);
    assert_eq!(f.read(ino, 0, 1 << 20), vec![b'x'; 100]);
    assert_eq!(
        f.core.setattr(&Ctx::ROOT, ino, &to(5000)).unwrap().size,
        5000
    );
    let back = f.read(ino, 0, 1 << 20);
    assert_eq!(back.len(), 5000);
    assert_eq!(&back[..100], &[b'x'; 100][..]);
    assert!(back[100..].iter().all(|&b| b == 0), "extended with zeros");
    f.core.fsync(ino, false).unwrap();
    assert_eq!(std::fs::read(f.path("f")).unwrap(), back);
    f.core.release(ino);
}

#[test]
fn setattr_mode_owner_and_times() {
    if !privileged() {
        return;
    }
    let f = Fixture::new();
    let ino = f.create("f");
    let t = UNIX_EPOCH + Duration::new(1_000_000, 500);
    let set = SetAttr {
        mode: Some(0o4750),
        uid: Some(1000),
        gid: Some(1001),
        atime: Some(TimeSet::At(t)),
        mtime: Some(TimeSet::At(t)),
        ..Default::default()
    };
    let a = f.core.setattr(&Ctx::ROOT, ino, &set).unwrap();
    assert_eq!((a.uid, a.gid), (1000, 1001));
    assert_eq!(a.perm(), 0o4750);
    assert_eq!((a.atime, a.mtime), (t, t));
    let md = std::fs::metadata(f.path("f")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4750);
    assert_eq!((md.uid(), md.gid()), (1000, 1001));
    // Dirty data not yet in SOURCE: an explicit mtime is the one writeback stamps.
    f.write(ino, 0, b"data");
    let set = SetAttr {
        mtime: Some(TimeSet::At(t)),
        ..Default::default()
    };
    f.core.setattr(&Ctx::ROOT, ino, &set).unwrap();
    f.core.fsync(ino, false).unwrap();
    assert_eq!(std::fs::metadata(f.path("f")).unwrap().mtime(), 1_000_000);
    // Now: a time close to the clock's.
    let now = SetAttr {
        atime: Some(TimeSet::Now),
        ..Default::default()
    };
    let a = f.core.setattr(&Ctx::ROOT, ino, &now).unwrap();
    assert!(a.atime.elapsed().unwrap_or_default() < Duration::from_secs(60));
    f.core.release(ino);
}

/// A regular file `name` with mode `mode` and group `gid`, created as root.
fn setid_file(f: &Fixture, name: &str, mode: u32, gid: u32) -> u64 {
    let ino = f.create(name);
    let set = SetAttr {
        gid: Some(gid),
        ..Default::default()
    };
    f.core.setattr(&Ctx::ROOT, ino, &set).unwrap();
    let set = SetAttr {
        mode: Some(mode),
        ..Default::default()
    };
    f.core.setattr(&Ctx::ROOT, ino, &set).unwrap();
    ino
}

fn mode_of(f: &Fixture, name: &str) -> u32 {
    std::fs::metadata(f.path(name)).unwrap().mode() & 0o7777
}

#[test]
fn writes_drop_set_id_bits_by_the_kernels_rules() {
    if !privileged() {
        return;
    }
    let f = Fixture::new();
    let seen = Arc::new(Recorder::default());
    let _ = f.core.kernel_slot().set(seen.clone());
    let from = WriteFrom::Call {
        open_flags: libc::O_WRONLY,
    };
    // Set-user-ID always goes; set-group-ID too for a caller outside the file's group.
    let a = setid_file(&f, "a", 0o6666, 0);
    f.core.write(&NOBODY, a, 0, b"x", from).unwrap();
    assert_eq!(mode_of(&f, "a"), 0o666);
    assert!(
        seen.0.lock().unwrap().contains(&(a, -1, 0)),
        "the kernel's attributes of the file were dropped"
    );
    // In the group, without group-exec: set-group-ID stays (it marks mandatory locking).
    let b = setid_file(&f, "b", 0o2666, NOBODY.gid);
    f.core.write(&NOBODY, b, 0, b"x", from).unwrap();
    assert_eq!(mode_of(&f, "b"), 0o2666);
    // Group-executable: dropped even for a member.
    let c = setid_file(&f, "c", 0o2676, NOBODY.gid);
    f.core.write(&NOBODY, c, 0, b"x", from).unwrap();
    assert_eq!(mode_of(&f, "c"), 0o676);
    // A privileged caller (CAP_FSETID) keeps both.
    let d = setid_file(&f, "d", 0o6777, 0);
    f.core.write(&Ctx::ROOT, d, 0, b"x", from).unwrap();
    assert_eq!(mode_of(&f, "d"), 0o6777);
    // The empty setattr the kernel sends before a buffered write (file_remove_privs).
    let e = setid_file(&f, "e", 0o2666, 0);
    f.core.setattr(&NOBODY, e, &SetAttr::default()).unwrap();
    assert_eq!(mode_of(&f, "e"), 0o666);
    // fallocate and copy_file_range modify the file too.
    let g = setid_file(&f, "g", 0o6666, 0);
    f.core.fallocate(&NOBODY, g, 0, 4096, 0).unwrap();
    assert_eq!(mode_of(&f, "g"), 0o666);
    let h = setid_file(&f, "h", 0o4666, 0);
    f.core.copy_file_range(&NOBODY, a, 0, h, 0, 1).unwrap();
    assert_eq!(mode_of(&f, "h"), 0o666);
}

#[test]
fn a_read_only_mount_refuses_every_change() {
    let f = Fixture::new();
    let ino = f.create("f");
    f.core.release(ino);
    let mut cfg = config(CacheMode::Pool, Coherence::Cto);
    cfg.read_only = true;
    let ro = Core::new(f.dir.path(), test_util::context(), cfg).unwrap();
    let ino = ro.lookup(ROOT, n("f")).unwrap().attr.ino;
    let erofs = libc::EROFS;
    assert_eq!(
        errno_of(ro.create(&Ctx::ROOT, ROOT, n("g"), 0o644, 0, 0)),
        erofs
    );
    assert_eq!(
        errno_of(ro.mkdir(&Ctx::ROOT, ROOT, n("d"), 0o755, 0)),
        erofs
    );
    assert_eq!(errno_of(ro.unlink(ROOT, n("f"))), erofs);
    assert_eq!(errno_of(ro.rename(ROOT, n("f"), ROOT, n("g"), 0)), erofs);
    assert_eq!(errno_of(ro.open(ino, libc::O_RDWR)), erofs);
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    assert_eq!(errno_of(ro.setattr(&Ctx::ROOT, ino, &chmod)), erofs);
    assert_eq!(
        errno_of(ro.setxattr(&Ctx::ROOT, ino, n("user.a"), b"v", 0)),
        erofs
    );
    let w = WriteFrom::Call {
        open_flags: libc::O_RDONLY,
    };
    assert_eq!(errno_of(ro.write(&Ctx::ROOT, ino, 0, b"x", w)), erofs);
    assert_eq!(errno_of(ro.fallocate(&Ctx::ROOT, ino, 0, 1, 0)), erofs);
    // Reading is fine.
    ro.open(ino, libc::O_RDONLY).unwrap();
    assert!(ro.read(ino, 0, 10, false, |b| b.len()).unwrap() == 0);
    ro.getattr(ino).unwrap();
    ro.release(ino);
}

#[test]
fn user_xattrs_pass_through() {
    let f = Fixture::new();
    let ino = f.create("f");
    f.core
        .setxattr(&Ctx::ROOT, ino, n("user.color"), b"blue", 0)
        .unwrap();
    assert_eq!(
        f.core
            .getxattr(&Ctx::ROOT, ino, n("user.color"), 0)
            .unwrap()
            .len(),
        4,
        "size 0: the length"
    );
    assert_eq!(
        f.core
            .getxattr(&Ctx::ROOT, ino, n("user.color"), 64)
            .unwrap(),
        b"blue"
    );
    assert_eq!(
        errno_of(f.core.getxattr(&Ctx::ROOT, ino, n("user.color"), 2)),
        libc::ERANGE
    );
    assert_eq!(
        errno_of(
            f.core
                .setxattr(&Ctx::ROOT, ino, n("user.color"), b"red", libc::XATTR_CREATE)
        ),
        libc::EEXIST
    );
    let list = f.core.listxattr(&Ctx::ROOT, ino).unwrap();
    assert!(list.split(|&b| b == 0).any(|x| x == b"user.color"));
    assert!(!list.windows(14).any(|w| w == b"user.extentfs."));
    f.core.removexattr(ino, n("user.color")).unwrap();
    let absent = || counter(&f.core, "xattr_absent");
    let before = absent();
    assert_eq!(
        errno_of(f.core.getxattr(&Ctx::ROOT, ino, n("user.color"), 64)),
        libc::ENODATA
    );
    assert_eq!(
        absent(),
        before + 1,
        "an absent attribute is counted as such"
    );
    assert_eq!(
        errno_of(f.core.removexattr(ino, n("user.color"))),
        libc::ENODATA
    );
    f.core.release(ino);
}

#[test]
fn absent_acls_are_remembered_until_the_ctime_moves() {
    let f = Fixture::new();
    let ino = f.create("f");
    let acl = n("system.posix_acl_access");
    let remembered = || counter(&f.core, "xattr_absent_remembered");
    let r0 = remembered();
    assert_eq!(
        errno_of(f.core.getxattr(&Ctx::ROOT, ino, acl, 0)),
        libc::ENODATA
    );
    assert_eq!(
        errno_of(f.core.getxattr(&Ctx::ROOT, ino, acl, 0)),
        libc::ENODATA
    );
    assert_eq!(
        remembered(),
        r0 + 1,
        "the second answer came without SOURCE"
    );
    // A change through the mount forgets it.
    f.core
        .setxattr(&Ctx::ROOT, ino, n("user.x"), b"1", 0)
        .unwrap();
    assert_eq!(
        errno_of(f.core.getxattr(&Ctx::ROOT, ino, acl, 0)),
        libc::ENODATA
    );
    assert_eq!(remembered(), r0 + 1);
    f.core.release(ino);
}

/// An access ACL equivalent to `mode`'s permission bits (the kernel's xattr format: version
/// 2, then (tag, perm, id) entries for the owner, the group and others).
fn acl_of(mode: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [
        (1u16, (mode >> 6) & 7),
        (4, (mode >> 3) & 7),
        (0x20, mode & 7),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&(perm as u16).to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

#[test]
fn an_acl_set_by_a_caller_outside_the_group_drops_set_group_id() {
    if !privileged() {
        return;
    }
    let f = Fixture::new();
    let acl = n("system.posix_acl_access");
    let a = setid_file(&f, "a", 0o2770, 0);
    match f.core.setxattr(&NOBODY, a, acl, &acl_of(0o750), 0) {
        Err(e) if e.is(libc::EOPNOTSUPP) => return, // SOURCE without ACLs
        r => r.unwrap(),
    }
    assert_eq!(
        mode_of(&f, "a"),
        0o750,
        "the ACL set the mode, set-group-ID dropped"
    );
    // The ACL reads back (SOURCE may answer with the mode-equivalent ACL or none).
    match f.core.getxattr(&Ctx::ROOT, a, acl, 1024) {
        Ok(v) => assert_eq!(v[..4], 2u32.to_le_bytes()),
        Err(e) => assert!(e.is(libc::ENODATA)),
    }
    // Root (CAP_FSETID) keeps it.
    let b = setid_file(&f, "b", 0o2770, 0);
    f.core
        .setxattr(&Ctx::ROOT, b, acl, &acl_of(0o750), 0)
        .unwrap();
    assert_eq!(mode_of(&f, "b"), 0o2750);
}

#[test]
fn trusted_names_are_for_privileged_callers_only() {
    if !privileged() {
        return;
    }
    let f = Fixture::new();
    let ino = f.create("f");
    f.core
        .setxattr(&Ctx::ROOT, ino, n("trusted.secret"), b"s", 0)
        .unwrap();
    f.core
        .setxattr(&Ctx::ROOT, ino, n("user.plain"), b"p", 0)
        .unwrap();
    let names = |ctx: &Ctx| f.core.listxattr(ctx, ino).unwrap();
    assert!(names(&Ctx::ROOT)
        .windows(14)
        .any(|w| w == b"trusted.secret"));
    let theirs = names(&NOBODY);
    assert!(!theirs.windows(8).any(|w| w == b"trusted."));
    assert!(theirs.windows(10).any(|w| w == b"user.plain"));
    assert_eq!(
        errno_of(f.core.getxattr(&NOBODY, ino, n("trusted.secret"), 64)),
        libc::ENODATA
    );
    assert_eq!(
        f.core
            .getxattr(&Ctx::ROOT, ino, n("trusted.secret"), 64)
            .unwrap(),
        b"s"
    );
    f.core.release(ino);
}

#[test]
fn our_own_attributes_never_reach_source() {
    let f = Fixture::new();
    let ino = f.create("f");
    f.write(ino, 0, b"hello");
    let get = |ino, name| f.core.getxattr(&Ctx::ROOT, ino, n(name), 1 << 16);
    let mount = String::from_utf8(get(ROOT, ctl::STATS).unwrap()).unwrap();
    assert!(mount.contains("pool_capacity_bytes="), "{mount}");
    assert!(mount.contains("known_inodes=2"), "{mount}");
    let json = String::from_utf8(get(ROOT, ctl::STATS_JSON).unwrap()).unwrap();
    assert!(json.starts_with('{') && json.contains("\"dirty_bytes\":"));
    let file = String::from_utf8(get(ino, ctl::STATS).unwrap()).unwrap();
    assert!(file.contains("size=5\n"), "{file}");
    assert!(!get(ino, ctl::EXTENTS).unwrap().is_empty());
    assert_eq!(
        get(ROOT, ctl::PID).unwrap(),
        format!("{}\n", std::process::id()).into_bytes()
    );
    assert_eq!(
        errno_of(get(ino, ctl::PID)),
        libc::ENODATA,
        "the root's only"
    );
    assert_eq!(errno_of(get(ino, "user.extentfs.nope")), libc::ENODATA);
    // Only ctl can be set, by root or the owner, with a known command.
    let set = |ctx: &Ctx, name, v: &[u8]| f.core.setxattr(ctx, ROOT, n(name), v, 0);
    assert_eq!(errno_of(set(&Ctx::ROOT, ctl::STATS, b"1")), libc::EPERM);
    assert_eq!(errno_of(set(&NOBODY, ctl::CTL, b"sync")), libc::EPERM);
    assert_eq!(errno_of(set(&Ctx::ROOT, ctl::CTL, b"bogus")), libc::EINVAL);
    assert_eq!(errno_of(f.core.removexattr(ROOT, n(ctl::CTL))), libc::EPERM);
    assert!(f.core.context().dirty_bytes() > 0);
    set(&Ctx::ROOT, ctl::CTL, b"sync\n").unwrap();
    assert_eq!(f.core.context().dirty_bytes(), 0);
    assert_eq!(std::fs::read(f.path("f")).unwrap(), b"hello");
    set(&Ctx::ROOT, ctl::CTL, b"drop").unwrap();
    f.core
        .setxattr(&Ctx::ROOT, ino, n(ctl::CTL), b"drop", 0)
        .unwrap();
    assert_eq!(f.read(ino, 0, 100), b"hello", "read again from SOURCE");
    // Nothing of ours is in SOURCE, or listed.
    assert_eq!(xattr_names(&f.path("f")), Vec::<String>::new());
    f.core.release(ino);
}

fn xattr_names(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap();
    buf.truncate(n);
    buf.split(|&b| b == 0)
        .filter(|s| !s.is_empty() && s.starts_with(b"user."))
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[test]
fn fallocate_through_the_cache() {
    let f = Fixture::new();
    let ino = f.create("f");
    f.write(ino, 0, &[b'x'; 8192]);
    // Punch the first page (keeping the size): zeros there, in the cache and in SOURCE.
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    f.core.fallocate(&Ctx::ROOT, ino, 0, 4096, punch).unwrap();
    let back = f.read(ino, 0, 1 << 20);
    assert_eq!(back.len(), 8192);
    assert!(back[..4096].iter().all(|&b| b == 0));
    assert!(back[4096..].iter().all(|&b| b == b'x'));
    // Zero a range across the end without KEEP_SIZE: the file grows.
    f.core
        .fallocate(&Ctx::ROOT, ino, 6000, 4000, libc::FALLOC_FL_ZERO_RANGE)
        .unwrap();
    assert_eq!(f.core.getattr(ino).unwrap().size, 10_000);
    let back = f.read(ino, 0, 1 << 20);
    assert!(back[4096..6000].iter().all(|&b| b == b'x'));
    assert!(back[6000..].iter().all(|&b| b == 0));
    // Plain allocation past the end grows it too; KEEP_SIZE does not.
    f.core.fallocate(&Ctx::ROOT, ino, 0, 16_384, 0).unwrap();
    assert_eq!(f.core.getattr(ino).unwrap().size, 16_384);
    f.core
        .fallocate(&Ctx::ROOT, ino, 0, 65_536, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(f.core.getattr(ino).unwrap().size, 16_384);
    assert_eq!(
        errno_of(f.core.fallocate(&Ctx::ROOT, ino, 0, 0, 0)),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(f.core.fallocate(&Ctx::ROOT, ino, u64::MAX, 2, 0)),
        libc::EFBIG
    );
    f.core.fsync(ino, false).unwrap();
    let on_disk = std::fs::read(f.path("f")).unwrap();
    assert_eq!(on_disk, f.read(ino, 0, 1 << 20));
    f.core.release(ino);
}

#[test]
fn copy_file_range_through_the_cache() {
    let f = Fixture::new();
    let a = f.create("a");
    let b = f.create("b");
    f.write(a, 0, b"hello world");
    // Dirty in the pool, not yet in SOURCE: the copy reads the cache.
    assert_eq!(
        f.core.copy_file_range(&Ctx::ROOT, a, 6, b, 0, 100).unwrap(),
        5
    );
    assert_eq!(f.read(b, 0, 100), b"world");
    assert_eq!(
        f.core.copy_file_range(&Ctx::ROOT, a, 6, b, 5, 1).unwrap(),
        1
    );
    assert_eq!(f.read(b, 0, 100), b"worldw");
    assert_eq!(
        f.core
            .copy_file_range(&Ctx::ROOT, a, 100, b, 0, 10)
            .unwrap(),
        0
    );
    assert_eq!(
        errno_of(f.core.copy_file_range(&Ctx::ROOT, a, 0, b, u64::MAX, 1)),
        libc::EFBIG
    );
    let d = f
        .core
        .mkdir(&Ctx::ROOT, ROOT, n("d"), 0o755, 0)
        .unwrap()
        .attr
        .ino;
    assert_eq!(
        errno_of(f.core.copy_file_range(&Ctx::ROOT, a, 0, d, 0, 1)),
        libc::EISDIR
    );
    f.core.fsync(b, false).unwrap();
    assert_eq!(std::fs::read(f.path("b")).unwrap(), b"worldw");
}

#[test]
fn lseek_data_and_holes() {
    let f = Fixture::new();
    let ino = f.create("f");
    f.write(ino, 1 << 20, b"data");
    let end = (1 << 20) + 4;
    let data = f.core.lseek(ino, 0, libc::SEEK_DATA).unwrap();
    assert!(
        data <= 1 << 20,
        "the data is at 1 MiB (or SOURCE says all is data)"
    );
    assert_eq!(f.core.lseek(ino, 1 << 20, libc::SEEK_HOLE).unwrap(), end);
    assert_eq!(
        errno_of(f.core.lseek(ino, end, libc::SEEK_DATA)),
        libc::ENXIO
    );
    assert_eq!(errno_of(f.core.lseek(ino, 0, libc::SEEK_SET)), libc::EINVAL);
    let k = Fixture::with(config(CacheMode::Kernel, Coherence::Cto));
    let kino = k.create("f");
    assert_eq!(
        errno_of(k.core.lseek(kino, 0, libc::SEEK_DATA)),
        libc::ENOSYS
    );
}

#[test]
fn readdir_and_readdirplus() {
    let f = Fixture::new();
    for name in ["a", "b", "c"] {
        f.core
            .mknod(&Ctx::ROOT, ROOT, n(name), libc::S_IFREG | 0o644, 0, 0)
            .unwrap();
    }
    // Forget the references the creations took: readdirplus takes its own.
    for name in ["a", "b", "c"] {
        let ino = f.core.lookup(ROOT, n(name)).unwrap().attr.ino;
        f.core.forget(ino, 2);
    }
    assert_eq!(f.core.inodes.len(), 1, "only the root is known");
    let fh = f.core.opendir(ROOT).unwrap();
    let mut all = Vec::new();
    f.core
        .readdir(fh, 0, |e| {
            all.push((String::from_utf8_lossy(e.name).into_owned(), e.kind, e.next));
            false
        })
        .unwrap();
    let mut names: Vec<_> = all.iter().map(|x| x.0.as_str()).collect();
    names.sort();
    assert_eq!(names, [".", "..", "a", "b", "c"]);
    assert!(all.iter().any(|x| x.0 == "a" && x.1 == libc::DT_REG));
    // readdirplus: each entry looked up; one the caller cannot take gives its reference
    // back.
    let mut taken = Vec::new();
    f.core
        .readdirplus(ROOT, fh, 0, |e, plus| {
            let full = taken.len() == 3;
            if !full {
                match plus {
                    DirPlus::Dot => assert!(e.name == b"." || e.name == b".."),
                    DirPlus::Entry(entry) => {
                        assert_eq!(entry.attr.kind(), libc::S_IFREG);
                        assert_eq!(entry.attr.ino, e.ino, "node id = SOURCE inode");
                    }
                }
                taken.push((e.name.to_vec(), e.next, matches!(plus, DirPlus::Entry(_))));
            }
            full
        })
        .unwrap();
    let looked_up = taken.iter().filter(|t| t.2).count();
    assert_eq!(
        f.core.inodes.len(),
        1 + looked_up,
        "one reference per entry taken, none for the one refused"
    );
    // Resumed from the last offset taken: the rest comes.
    let mut rest = 0;
    f.core
        .readdirplus(ROOT, fh, taken[2].1, |_, _| {
            rest += 1;
            false
        })
        .unwrap();
    assert_eq!(rest, 2);
    f.core.fsyncdir(ROOT, false).unwrap();
    f.core.releasedir(fh);
    assert_eq!(errno_of(f.core.opendir(u64::MAX)), libc::ESTALE);
}

#[test]
fn statfs_access_and_unknown_nodes() {
    let f = Fixture::new();
    let s = f.core.statfs(ROOT).unwrap();
    assert!(s.f_bsize > 0 && s.f_namemax >= 255);
    f.core.access(ROOT).unwrap();
    // A node id the table does not know is stale, whatever the operation.
    let gone = 1 << 40;
    for e in [
        f.core.access(gone).map(drop).unwrap_err(),
        f.core.getattr(gone).map(drop).unwrap_err(),
        f.core.open(gone, 0).map(drop).unwrap_err(),
        f.core.lookup(gone, n("x")).map(drop).unwrap_err(),
        f.core.read(gone, 0, 1, false, |_| ()).unwrap_err(),
        f.core.flush(gone).unwrap_err(),
    ] {
        assert_eq!(e.raw_errno(), libc::ESTALE);
        assert_eq!(e.level(), tracing::Level::DEBUG);
    }
    // Names: no slash, not empty, at most 255 bytes.
    assert_eq!(errno_of(f.core.lookup(ROOT, n("a/b"))), libc::EINVAL);
    assert_eq!(errno_of(f.core.lookup(ROOT, n(""))), libc::EINVAL);
    let long = "x".repeat(256);
    assert_eq!(
        errno_of(f.core.mkdir(&Ctx::ROOT, ROOT, n(&long), 0o755, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno_of(f.core.lookup(ROOT, n("missing"))), libc::ENOENT);
    // The export lookups: "." of a known node is itself, ".." of the root the root.
    assert_eq!(f.core.lookup(ROOT, n(".")).unwrap().attr.ino, ROOT);
    assert_eq!(f.core.lookup(ROOT, n("..")).unwrap().attr.ino, ROOT);
    let d = f
        .core
        .mkdir(&Ctx::ROOT, ROOT, n("d"), 0o755, 0)
        .unwrap()
        .attr
        .ino;
    assert_eq!(f.core.lookup(d, n("..")).unwrap().attr.ino, ROOT);
    let file = f.create("f");
    assert_eq!(errno_of(f.core.lookup(file, n(".."))), libc::ENOTDIR);
}

#[test]
fn a_file_changed_in_source_is_seen_at_open() {
    let f = Fixture::new();
    let seen = Arc::new(Recorder::default());
    let _ = f.core.kernel_slot().set(seen.clone());
    let ino = f.create("f");
    f.write(ino, 0, b"ours");
    f.core.flush(ino).unwrap();
    f.core.release(ino);
    // Someone else rewrites it in SOURCE (a different size, so the change shows).
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(f.path("f"), b"theirs!").unwrap();
    let o = f.core.open(ino, libc::O_RDONLY).unwrap();
    assert!(o.direct_io);
    assert_eq!(f.read(ino, 0, 100), b"theirs!");
    assert_eq!(f.core.getattr(ino).unwrap().size, 7);
    assert!(
        seen.0.lock().unwrap().iter().any(|&(i, _, _)| i == ino),
        "the kernel was told"
    );
    // Deleted in SOURCE, not through the mount: ESTALE at open, so the kernel looks again.
    std::fs::remove_file(f.path("f")).unwrap();
    assert_eq!(errno_of(f.core.open(ino, libc::O_RDONLY)), libc::ESTALE);
    f.core.release(ino);
}
