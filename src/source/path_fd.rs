//! The `O_PATH` descriptor by which the daemon holds one SOURCE inode, given back while the
//! inode is idle and reopened from SOURCE's file handle when it is needed again.
//!
//! The kernel keeps as many inodes as it likes (fsstress 4 x 100,000 ends with ~17,700), and
//! a descriptor for each would run the daemon into RLIMIT_NOFILE (20,000 here, and root cannot
//! raise it without CAP_SYS_RESOURCE). So once more than a budget of them are open (half the
//! limit, [`set_budget`]), a sweep gives back the descriptors of idle inodes
//! ([`PathFd::release`]) until a quarter of the budget is free, keeping each inode's file
//! handle instead (at most 136 bytes); [`PathFd::get`] reopens it with `open_by_handle_at`.
//! Sweeps run where descriptors are opened (a new inode, a reopen), one at a time, with no
//! other lock held.
//!
//! Invariants:
//! - a released inode had links (nlink > 0), no caller holding its descriptor and no file
//!   of it open for I/O (`io_users`), and `get` checks that a reopened descriptor is the same
//!   inode (st_dev, st_ino): a handle that now names another inode (or none) is ESTALE, never
//!   a different file;
//! - descriptors handed out by `get` are `Arc`s: a release never closes one in use;
//! - without a mount descriptor (SOURCE has no handles, or the daemon may not decode them)
//!   nothing is ever released;
//! - a handle is reopened through a descriptor of the mount it was taken on (the id
//!   `name_to_handle_at` gives with it): SOURCE's root mount, or a filesystem mounted inside
//!   SOURCE, whose descriptor ([`MountFd`]) every known directory on it keeps open
//!   ([`mount_of_dir`]); an inode on a mount with no such descriptor is never released;
//! - `OPEN` counts the descriptors held by the process's `PathFd`s (one mount per process);
//!   `REGISTRY` lists every live `PathFd` that may be released (weakly; dead entries are
//!   pruned as it grows).

use super::{self as source, SourceHandle};
use crate::cache::backing::IoDescriptors;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// `O_PATH` descriptors held by the process's `PathFd`s.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Open descriptors above which a sweep runs (usize::MAX: never).
static BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);
/// No sweep before this many are open (raised after a sweep that found too few idle ones,
/// so that a set of busy inodes is not scanned at every open).
static NEXT_SWEEP: AtomicUsize = AtomicUsize::new(usize::MAX);
static SWEEPING: AtomicBool = AtomicBool::new(false);
/// Every live `PathFd` that may be released, oldest first, and how many of them live.
static REGISTRY: Mutex<Vec<Weak<PathFd>>> = Mutex::new(Vec::new());
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The mounts inside SOURCE that known directories lie on, by mount id (see
/// [`mount_of_dir`]); dead entries are pruned when one is added.
static MOUNTS: Mutex<Vec<(i32, Weak<MountFd>)>> = Mutex::new(Vec::new());

/// A real (not `O_PATH`) descriptor of a directory on a mount, which `open_by_handle_at`
/// decodes handles through, and the mount's id.
#[derive(Debug)]
pub struct MountFd {
    pub fd: OwnedFd,
    pub id: i32,
}

impl MountFd {
    /// The mount that the directory `dir` lies on (opened for reading).
    pub fn of_dir(dir: BorrowedFd<'_>) -> io::Result<MountFd> {
        let (_, id) = source::handle_and_mount_of(dir)?;
        let fd = source::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(MountFd { fd, id })
    }
}

/// The descriptor of the mount that the directory `dir` (on a filesystem mounted inside
/// SOURCE) lies on, shared by every directory on it that holds the result: the inodes of that
/// mount are then given back like the others, and reopened through it. None where SOURCE's
/// filesystem there has no handles.
pub fn mount_of_dir(dir: BorrowedFd<'_>) -> Option<Arc<MountFd>> {
    let (_, id) = source::handle_and_mount_of(dir).ok()?;
    if let Some(m) = registered_mount(id) {
        return Some(m);
    }
    let m = match source::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(fd) => Arc::new(MountFd { fd, id }),
        Err(e) => {
            tracing::debug!("mount {id} inside SOURCE: no descriptor ({e}); its inodes are kept");
            return None;
        }
    };
    let mut mounts = lock(&MOUNTS);
    if let Some(other) = live_mount(&mounts, id) {
        return Some(other); // another thread registered it meanwhile
    }
    mounts.retain(|(_, w)| w.strong_count() > 0);
    mounts.push((id, Arc::downgrade(&m)));
    tracing::debug!("mount {id} inside SOURCE: its inodes are reopened through it");
    Some(m)
}

fn live_mount(mounts: &[(i32, Weak<MountFd>)], id: i32) -> Option<Arc<MountFd>> {
    mounts
        .iter()
        .find(|(i, _)| *i == id)
        .and_then(|(_, w)| w.upgrade())
}

/// The registered descriptor of mount `id`, while a directory on it is known.
fn registered_mount(id: i32) -> Option<Arc<MountFd>> {
    live_mount(&lock(&MOUNTS), id)
}

/// I/O descriptors open for data (one per `DataFile` in use, see `note_io`).
static IO_OPEN: AtomicUsize = AtomicUsize::new(0);

/// How close the I/O descriptors open are to exhausting RLIMIT_NOFILE (the `O_PATH`
/// budget is half of it): `Low` past a quarter of the budget, `Short` past three quarters.
pub fn io_descriptors() -> IoDescriptors {
    io_descriptors_of(
        IO_OPEN.load(Ordering::Relaxed),
        BUDGET.load(Ordering::Relaxed),
    )
}

fn io_descriptors_of(open: usize, budget: usize) -> IoDescriptors {
    if open > budget / 4 * 3 {
        IoDescriptors::Short
    } else if open > budget / 4 {
        IoDescriptors::Low
    } else {
        IoDescriptors::Ample
    }
}

/// How many `O_PATH` descriptors are open now.
pub fn open_count() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// Half of RLIMIT_NOFILE for `O_PATH` descriptors: the rest is for files open for I/O,
/// directories being read and the daemon's own.
pub fn default_budget() -> usize {
    // No current limit: unlimited (capped as any other).
    let rl = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let limit = rl.current.unwrap_or(u64::MAX).min(1 << 30) as usize;
    (limit / 2).max(64)
}

/// Sweep once more than `n` descriptors are open.
pub fn set_budget(n: usize) {
    BUDGET.store(n, Ordering::Relaxed);
    NEXT_SWEEP.store(n, Ordering::Relaxed);
}

/// Over the budget: give back the descriptors of idle inodes until a quarter of the budget
/// is free (the registry lock is held only to copy the list). Called where descriptors are
/// opened, with no lock held: `get` and `offer` here, the inode table after adding inodes.
pub fn sweep_if_over_budget() {
    let open = open_count();
    let budget = BUDGET.load(Ordering::Relaxed);
    let next = NEXT_SWEEP.load(Ordering::Relaxed);
    if open <= next {
        if open < budget && next > budget {
            // Back under the budget since a sweep that fell short: sweep at it again.
            NEXT_SWEEP.store(budget, Ordering::Relaxed);
        }
        return;
    }
    if SWEEPING.swap(true, Ordering::Acquire) {
        return;
    }
    let target = budget - budget / 4;
    let all: Vec<Weak<PathFd>> = lock(&REGISTRY).clone();
    let mut released = 0usize;
    for p in all.iter().filter_map(Weak::upgrade) {
        if open_count() <= target {
            break;
        }
        if p.release() {
            released += 1;
        }
    }
    let now = open_count();
    NEXT_SWEEP.store(budget.max(now + budget / 8), Ordering::Relaxed);
    tracing::debug!(
        "descriptor sweep: {open} O_PATH descriptors open (budget {budget}), {released} given back, {now} left"
    );
    SWEEPING.store(false, Ordering::Release);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Slot {
    Open(Arc<OwnedFd>),
    /// Given back: the handle, and the mount it is decoded through.
    Released(SourceHandle, Arc<MountFd>),
}

pub struct PathFd {
    slot: Mutex<Slot>,
    /// SOURCE's root mount, for `open_by_handle_at`; None: never released.
    mount: Option<Arc<MountFd>>,
    /// A directory on a filesystem mounted inside SOURCE keeps that mount's descriptor open.
    _pin: Option<Arc<MountFd>>,
    /// (st_dev, st_ino) of the inode, checked after a reopen.
    key: (u64, u64),
    /// Descriptors open for I/O on the inode (by its `DataFile`): not idle while any are.
    io_users: AtomicUsize,
}

impl std::fmt::Debug for PathFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathFd")
            .field("key", &self.key)
            .field(
                "open",
                &self
                    .slot
                    .try_lock()
                    .map(|s| matches!(*s, Slot::Open(_)))
                    .ok(),
            )
            .finish()
    }
}

impl PathFd {
    /// Hold `fd`, the inode `key`; with `mount` (SOURCE's root mount), its descriptor may be
    /// given back in sweeps.
    pub fn new(fd: OwnedFd, key: (u64, u64), mount: Option<Arc<MountFd>>) -> Arc<PathFd> {
        PathFd::pinning(fd, key, mount, None)
    }

    /// As `new`, for a directory that keeps `pin`, the descriptor of the mount inside SOURCE
    /// that it lies on, open while it lives (see [`mount_of_dir`]).
    pub fn pinning(
        fd: OwnedFd,
        key: (u64, u64),
        mount: Option<Arc<MountFd>>,
        pin: Option<Arc<MountFd>>,
    ) -> Arc<PathFd> {
        OPEN.fetch_add(1, Ordering::Relaxed);
        let releasable = mount.is_some();
        let p = Arc::new(PathFd {
            slot: Mutex::new(Slot::Open(Arc::new(fd))),
            mount,
            _pin: pin,
            key,
            io_users: AtomicUsize::new(0),
        });
        if releasable {
            let live = LIVE.fetch_add(1, Ordering::Relaxed) + 1;
            let mut r = lock(&REGISTRY);
            if r.len() > 2 * live + 1024 {
                r.retain(|w| w.strong_count() > 0);
            }
            r.push(Arc::downgrade(&p));
        }
        p
    }

    /// Hold `fd` for good (never given back): for callers outside the inode table.
    pub fn fixed(fd: OwnedFd) -> io::Result<Arc<PathFd>> {
        let st = source::fstat(fd.as_fd())?;
        Ok(PathFd::new(fd, (st.st_dev, st.st_ino), None))
    }

    /// A descriptor for I/O on the inode was opened (`true`) or closed (`false`).
    pub fn note_io(&self, open: bool) {
        if open {
            self.io_users.fetch_add(1, Ordering::Relaxed);
            IO_OPEN.fetch_add(1, Ordering::Relaxed);
        } else {
            self.io_users.fetch_sub(1, Ordering::Relaxed);
            IO_OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The descriptor, reopened from the file handle if it was released. ESTALE when the
    /// inode is gone.
    pub fn get(&self) -> io::Result<Arc<OwnedFd>> {
        let r = self.get_or_reopen();
        match &r {
            Ok((_, true)) => sweep_if_over_budget(),
            Err(e) => tracing::debug!("inode {:?} not reopened by handle: {e}", self.key),
            _ => {}
        }
        r.map(|(fd, _)| fd)
    }

    /// The descriptor, and whether it was reopened.
    fn get_or_reopen(&self) -> io::Result<(Arc<OwnedFd>, bool)> {
        let mut slot = lock(&self.slot);
        let (handle, mount) = match &*slot {
            Slot::Open(fd) => return Ok((fd.clone(), false)),
            Slot::Released(h, m) => (*h, m.clone()),
        };
        let stale = || io::Error::from_raw_os_error(libc::ESTALE);
        let fd = source::open_by_handle(mount.fd.as_fd(), &handle)
            .map_err(source::stale_unless_shortage)?;
        let st = source::fstat(fd.as_fd())?;
        if (st.st_dev, st.st_ino) != self.key {
            return Err(stale());
        }
        let fd = Arc::new(fd);
        *slot = Slot::Open(fd.clone());
        OPEN.fetch_add(1, Ordering::Relaxed);
        Ok((fd, true))
    }

    /// Give the descriptor back, keeping the file handle, if the inode is idle (nobody holds
    /// the descriptor, no file of it is open for I/O), has links and lies on a mount it can
    /// be reopened through (SOURCE's root mount or a registered one); returns whether it did.
    /// Never blocks on a busy descriptor.
    pub fn release(&self) -> bool {
        let Some(root) = &self.mount else {
            return false;
        };
        if self.io_users.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let Ok(mut slot) = self.slot.try_lock() else {
            return false;
        };
        let Slot::Open(fd) = &*slot else {
            return false;
        };
        if Arc::strong_count(fd) != 1 {
            return false;
        }
        let Ok(st) = source::fstat(fd.as_fd()) else {
            return false;
        };
        if st.st_nlink == 0 {
            return false;
        }
        let Ok((h, id)) = source::handle_and_mount_of(fd.as_fd()) else {
            return false;
        };
        let via = if id == root.id {
            root.clone()
        } else if let Some(m) = registered_mount(id) {
            m
        } else {
            return false;
        };
        *slot = Slot::Released(h, via);
        OPEN.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// A fresh descriptor of the same inode (a lookup found it again): kept if this one was
    /// given back, which saves the reopen.
    pub fn offer(&self, fd: OwnedFd) {
        let Ok(mut slot) = self.slot.try_lock() else {
            return;
        };
        if let Slot::Released(..) = &*slot {
            *slot = Slot::Open(Arc::new(fd));
            OPEN.fetch_add(1, Ordering::Relaxed);
            drop(slot);
            sweep_if_over_budget();
        }
    }

    /// SOURCE's file handle of the inode.
    pub fn handle(&self) -> io::Result<SourceHandle> {
        match &*lock(&self.slot) {
            Slot::Open(fd) => source::handle_of(fd.as_fd()),
            Slot::Released(h, _) => Ok(*h),
        }
    }

    /// Whether the descriptor is open (for tests).
    pub fn is_open(&self) -> bool {
        matches!(*lock(&self.slot), Slot::Open(_))
    }
}

impl Drop for PathFd {
    fn drop(&mut self) {
        if let Slot::Open(_) = self.slot.get_mut().unwrap_or_else(|p| p.into_inner()) {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
        if self.mount.is_some() {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn io_descriptor_levels() {
        assert_eq!(io_descriptors_of(0, 1000), IoDescriptors::Ample);
        assert_eq!(io_descriptors_of(250, 1000), IoDescriptors::Ample);
        assert_eq!(io_descriptors_of(251, 1000), IoDescriptors::Low);
        assert_eq!(io_descriptors_of(751, 1000), IoDescriptors::Short);
        // No budget set (usize::MAX): never short.
        assert_eq!(io_descriptors_of(1 << 20, usize::MAX), IoDescriptors::Ample);
    }

    use super::*;

    fn setup() -> (tempfile::TempDir, Arc<MountFd>, OwnedFd, (u64, u64)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let root = source::open_root(dir.path()).unwrap();
        let mount = Arc::new(MountFd::of_dir(root.as_fd()).unwrap_or(MountFd {
            fd: source::reopen(root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).unwrap(),
            id: -1,
        }));
        let fd = source::open_path(root.as_fd(), c"f").unwrap();
        let st = source::fstat(fd.as_fd()).unwrap();
        (dir, mount, fd, (st.st_dev, st.st_ino))
    }

    #[test]
    fn released_and_reopened_as_the_same_inode() {
        if !source::running_as_root() {
            eprintln!("not root: skipped (open_by_handle_at needs CAP_DAC_READ_SEARCH)");
            return;
        }
        let (dir, mount, fd, key) = setup();
        if source::handle_of(mount.fd.as_fd()).is_err() {
            return; // the test directory's filesystem has no handles
        }
        let p = PathFd::new(fd, key, Some(mount));
        // Held by a caller: kept.
        let held = p.get().unwrap();
        assert!(!p.release());
        drop(held);
        // Open for I/O: kept.
        p.note_io(true);
        assert!(!p.release());
        p.note_io(false);
        assert!(p.release());
        assert!(!p.is_open());
        let fd = p.get().unwrap();
        let st = source::fstat(fd.as_fd()).unwrap();
        assert_eq!((st.st_dev, st.st_ino), key);
        assert!(p.is_open());
        drop(fd);
        // Released, then deleted: ESTALE, not another file.
        assert!(p.release());
        std::fs::remove_file(dir.path().join("f")).unwrap();
        std::fs::write(dir.path().join("g"), b"y").unwrap();
        assert_eq!(p.get().unwrap_err().raw_os_error(), Some(libc::ESTALE));
    }

    #[test]
    fn never_released_without_a_mount_or_links() {
        let (dir, mount, fd, key) = setup();
        let p = PathFd::new(fd, key, None);
        assert!(!p.release());
        assert!(p.is_open());
        let fd = source::open_path(mount.fd.as_fd(), c"f").unwrap();
        let q = PathFd::new(fd, key, Some(mount));
        std::fs::remove_file(dir.path().join("f")).unwrap();
        assert!(!q.release(), "an unlinked inode keeps its descriptor");
        assert!(q.is_open());
    }

    /// An inode on another mount than SOURCE's root (here /dev/shm, when it is a mount of
    /// its own with handles) is kept until a directory on that mount registered it, then
    /// given back and reopened through that mount as the same inode.
    #[test]
    fn other_mounts_reopen_through_their_own() {
        if !source::running_as_root() {
            eprintln!("not root: skipped (open_by_handle_at needs CAP_DAC_READ_SEARCH)");
            return;
        }
        let (_dir, mount, _fd, _) = setup();
        let shm = std::path::Path::new("/dev/shm");
        let Ok(other) = source::open_root(shm) else {
            return;
        };
        let Ok((_, other_id)) = source::handle_and_mount_of(other.as_fd()) else {
            return; // no handles there
        };
        if other_id == mount.id || mount.id < 0 {
            return; // not another mount
        }
        let d = tempfile::Builder::new()
            .prefix("posix2-pathfd-")
            .tempdir_in(shm)
            .unwrap();
        std::fs::write(d.path().join("g"), b"y").unwrap();
        let dfd = source::open_root(d.path()).unwrap();
        let fd = source::open_path(dfd.as_fd(), c"g").unwrap();
        let st = source::fstat(fd.as_fd()).unwrap();
        let key = (st.st_dev, st.st_ino);
        let p = PathFd::new(fd, key, Some(mount));
        assert!(!p.release(), "no descriptor of that mount yet: kept");
        assert!(p.is_open());
        let pin = mount_of_dir(dfd.as_fd()).expect("a descriptor of /dev/shm's mount");
        assert_eq!(pin.id, other_id);
        let again = mount_of_dir(dfd.as_fd()).unwrap();
        assert!(Arc::ptr_eq(&pin, &again), "one descriptor per mount");
        drop(again);
        assert!(p.release());
        let fd = p.get().unwrap();
        let st = source::fstat(fd.as_fd()).unwrap();
        assert_eq!((st.st_dev, st.st_ino), key);
        drop(fd);
        // Released while pinned, then the pin goes: the handle still holds the mount.
        assert!(p.release());
        drop(pin);
        assert!(p.get().is_ok());
    }
}
