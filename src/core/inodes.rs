//! The inode table (the core's): node ids <-> SOURCE inodes held as `O_PATH` descriptors.
//!
//! Invariants:
//! - one entry per SOURCE inode (keyed by st_dev, st_ino), so hard links are one inode;
//! - the node id is the SOURCE inode number when that is unambiguous (same device as the
//!   SOURCE root, not 1, not taken), so inode numbers stay stable across remounts; otherwise a
//!   synthetic number from a high range; the root is always node 1 and never forgotten;
//! - `lookups` counts the kernel's references (each entry reply adds one, FORGET subtracts);
//!   at zero the entry and its descriptor go. Holding the descriptor keeps the SOURCE inode
//!   alive, so its number cannot be reused by another file while the kernel knows it.
//! - export (open_by_handle_at on the mount, NFS): the kernel's handle is (node id, generation)
//!   and it asks for node id "." once it has forgotten the inode. Where SOURCE's handles are
//!   `FILEID_INO32_GEN` (ext4 and most others) the node id is the inode number and the
//!   generation SOURCE's, so a handle can be decoded from the node id alone, also after a
//!   remount, and a reused inode number shows up as a generation mismatch (ESTALE). On other
//!   filesystems the generation is a counter and the SOURCE handles of forgotten inodes are
//!   kept (at most `MAX_FORGOTTEN`), so handles work for the life of the mount.
//! - descriptors: each inode's `O_PATH` descriptor is a [`PathFd`], given back while the inode
//!   is idle once half of RLIMIT_NOFILE are open (see `path_fd`) when SOURCE has handles.

use crate::cache::inode_cache::InodeCache;
use crate::source::path_fd::{self, MountFd, PathFd};
use crate::source::{self, SourceHandle, FILEID_INO32_GEN};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

pub const ROOT_ID: u64 = 1;
const SYNTHETIC_BASE: u64 = 1 << 56;
/// Forgotten inodes whose SOURCE handles are kept for export on non-INO32_GEN filesystems.
const MAX_FORGOTTEN: usize = 1 << 16;

/// How a node id is turned back into a SOURCE inode once the table has forgotten it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Export {
    /// SOURCE's handles are (ino32, generation): rebuilt from the node id.
    Ino32Gen,
    /// Kept in `Table::forgotten`.
    Kept,
    /// SOURCE has no file handles.
    Unsupported,
}

pub type InodeKey = (u64, u64);

pub struct Inode {
    pub id: u64,
    pub key: InodeKey,
    /// S_IFMT bits of the file type (fixed for an inode's life).
    pub kind: u32,
    fd: Arc<PathFd>,
    lookups: AtomicU64,
    /// The generation the kernel puts in file handles (see the module notes).
    pub generation: u64,
    /// The data cache of a regular file, once opened (also kept in the cache registry).
    pub cache: OnceLock<Arc<InodeCache>>,
    /// A name of it was removed through the mount (unlink, rename over): an open that finds
    /// it with no link left is not a sign that someone else replaced or deleted it.
    pub unlinked_via_mount: AtomicBool,
    /// xattr names known absent in SOURCE (see [`super::xattr::AbsentXattrs`]).
    pub xattr_absent: super::xattr::AbsentXattrs,
    /// SOURCE's immutable and append-only flags as last seen (`fileattr::restricting`): at
    /// an open for writing, a truncate, and a flag change through the mount.
    pub restrict: AtomicU32,
}

impl Inode {
    /// The inode's `O_PATH` descriptor (reopened if it was given back; ESTALE if the inode
    /// is gone). Hold it only for the system calls at hand.
    pub fn fd(&self) -> io::Result<Arc<OwnedFd>> {
        self.fd.get()
    }

    /// The descriptor's holder, for a [`source::DataFile`] to share.
    pub fn path_fd(&self) -> Arc<PathFd> {
        self.fd.clone()
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.kind == libc::S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }
}

struct Table {
    by_id: HashMap<u64, Arc<Inode>>,
    by_key: HashMap<InodeKey, u64>,
    next_synthetic: u64,
    next_generation: u64,
    /// Export::Kept: node id -> (SOURCE handle, key, generation, serial) of forgotten inodes;
    /// `forgotten_order` holds (id, serial) oldest first, stale pairs skipped.
    forgotten: HashMap<u64, (SourceHandle, InodeKey, u64, u64)>,
    forgotten_order: VecDeque<(u64, u64)>,
    forgotten_serial: u64,
}

pub struct InodeTable {
    root_dev: u64,
    root_key: InodeKey,
    export: Export,
    /// The SOURCE root opened for real: open_by_handle_at takes no O_PATH descriptor.
    mount_fd: Option<Arc<MountFd>>,
    t: RwLock<Table>,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root_st: &libc::stat) -> InodeTable {
        let key = (root_st.st_dev, root_st.st_ino);
        let mount_fd = MountFd::of_dir(root_fd.as_fd()).ok().map(Arc::new);
        let export = match (source::handle_of(root_fd.as_fd()), &mount_fd) {
            (Ok(h), Some(_)) if is_ino32_gen(&h, root_st.st_ino) => Export::Ino32Gen,
            (Ok(_), Some(_)) => Export::Kept,
            _ => Export::Unsupported,
        };
        // The root's descriptor is never given back (no mount descriptor for it).
        let root = Arc::new(Inode {
            id: ROOT_ID,
            key,
            kind: libc::S_IFDIR,
            fd: PathFd::new(root_fd, key, None),
            lookups: AtomicU64::new(1),
            generation: 0,
            cache: OnceLock::new(),
            unlinked_via_mount: AtomicBool::new(false),
            xattr_absent: Default::default(),
            restrict: AtomicU32::new(0),
        });
        path_fd::set_budget(path_fd::default_budget());
        let mut by_id = HashMap::new();
        by_id.insert(ROOT_ID, root);
        let mut by_key = HashMap::new();
        by_key.insert(key, ROOT_ID);
        InodeTable {
            root_dev: root_st.st_dev,
            root_key: key,
            mount_fd: (export != Export::Unsupported)
                .then_some(mount_fd)
                .flatten(),
            export,
            t: RwLock::new(Table {
                by_id,
                by_key,
                next_synthetic: SYNTHETIC_BASE,
                next_generation: 1,
                forgotten: HashMap::new(),
                forgotten_order: VecDeque::new(),
                forgotten_serial: 0,
            }),
        }
    }

    /// Whether the kernel may decode file handles (FUSE_EXPORT_SUPPORT).
    pub fn exportable(&self) -> bool {
        self.export != Export::Unsupported
    }

    pub fn get(&self, id: u64) -> Option<Arc<Inode>> {
        self.t.read().unwrap().by_id.get(&id).cloned()
    }

    /// The inode of SOURCE's `key` if the kernel knows it (no reference added).
    pub fn get_by_key(&self, key: InodeKey) -> Option<Arc<Inode>> {
        let t = self.t.read().unwrap();
        t.by_id.get(t.by_key.get(&key)?).cloned()
    }

    /// The inode for `st` (found through `fd`), adding one kernel reference.
    pub fn lookup(&self, fd: OwnedFd, st: &libc::stat) -> Arc<Inode> {
        let key = (st.st_dev, st.st_ino);
        if let Some(ino) = self.acquire_key(key) {
            ino.fd.offer(fd);
            return ino;
        }
        // SOURCE's generation, read before taking the lock (one system call).
        let source_gen = match self.export {
            Export::Ino32Gen if key.0 == self.root_dev => ino32_generation(fd.as_fd(), st.st_ino),
            _ => None,
        };
        let pin = self.mount_pin(fd.as_fd(), st);
        let mut t = self.t.write().unwrap();
        if let Some(id) = t.by_key.get(&key).copied() {
            let ino = t.by_id[&id].clone();
            ino.lookups.fetch_add(1, Ordering::Relaxed);
            drop(t);
            ino.fd.offer(fd);
            return ino;
        }
        let id = if st.st_dev == self.root_dev
            && st.st_ino != ROOT_ID
            && st.st_ino < SYNTHETIC_BASE
            && !t.by_id.contains_key(&st.st_ino)
        {
            st.st_ino
        } else {
            t.next_synthetic += 1;
            t.next_synthetic
        };
        let generation = match (source_gen, t.forgotten.remove(&id)) {
            (Some(g), _) if id == st.st_ino => g,
            // The same inode again: the handles the kernel gave out stay valid.
            (_, Some((_, k, g, _))) if k == key => g,
            _ => {
                t.next_generation += 1;
                t.next_generation
            }
        };
        let ino = insert(&mut t, id, key, st, self.path_fd(fd, st, pin), generation);
        drop(t);
        path_fd::sweep_if_over_budget();
        ino
    }

    /// Node id `id` with one more kernel reference: from the table, or, once forgotten, from
    /// SOURCE by file handle (the kernel decoding an export handle). ESTALE when the inode is
    /// gone, is another file now, or lies outside SOURCE.
    pub fn revive(&self, id: u64) -> io::Result<Arc<Inode>> {
        let stale = || io::Error::from_raw_os_error(libc::ESTALE);
        if let Some(ino) = self.get(id) {
            ino.lookups.fetch_add(1, Ordering::Relaxed);
            return Ok(ino);
        }
        let (handle, kept) = match self.export {
            Export::Ino32Gen if id <= u32::MAX as u64 => {
                // Generation 0: SOURCE does not check it; the kernel compares ours.
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&(id as u32).to_ne_bytes());
                (SourceHandle::new(FILEID_INO32_GEN, &b), None)
            }
            Export::Kept => match self.t.read().unwrap().forgotten.get(&id) {
                Some(&(h, k, g, _)) => (h, Some((k, g))),
                None => return Err(stale()),
            },
            _ => return Err(stale()),
        };
        let mount_fd = self.mount_fd.as_ref().ok_or_else(stale)?;
        let fd = source::open_by_handle(mount_fd.fd.as_fd(), &handle)
            .map_err(source::stale_unless_shortage)?;
        let st = source::fstat(fd.as_fd())?;
        let key = (st.st_dev, st.st_ino);
        let expected = match kept {
            Some((k, _)) => k == key,
            None => key == (self.root_dev, id),
        };
        if !expected || st.st_nlink == 0 {
            return Err(stale());
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR && !self.under_root(fd.as_fd())? {
            return Err(stale());
        }
        let generation = match kept {
            Some((_, g)) => g,
            None => ino32_generation(fd.as_fd(), st.st_ino).ok_or_else(stale)?,
        };
        let pin = self.mount_pin(fd.as_fd(), &st);
        let mut t = self.t.write().unwrap();
        match t.by_key.get(&key).copied() {
            Some(other) if other != id => return Err(stale()),
            Some(_) => {
                let ino = t.by_id[&id].clone();
                ino.lookups.fetch_add(1, Ordering::Relaxed);
                return Ok(ino);
            }
            None if t.by_id.contains_key(&id) => return Err(stale()),
            None => {}
        }
        t.forgotten.remove(&id);
        let ino = insert(&mut t, id, key, &st, self.path_fd(fd, &st, pin), generation);
        drop(t);
        path_fd::sweep_if_over_budget();
        Ok(ino)
    }

    /// What a directory `st` on another filesystem than SOURCE's root (one mounted inside
    /// SOURCE) keeps open: a descriptor of that mount, so that its inodes can be given back
    /// and reopened through it (see `path_fd::mount_of_dir`). Found before taking the table's
    /// lock: it costs a system call or two.
    fn mount_pin(&self, fd: BorrowedFd<'_>, st: &libc::stat) -> Option<Arc<MountFd>> {
        (self.mount_fd.is_some()
            && st.st_dev != self.root_dev
            && st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .then(|| path_fd::mount_of_dir(fd))
            .flatten()
    }

    /// The holder of `fd`, the inode `st`, keeping `pin` (see `mount_pin`).
    fn path_fd(&self, fd: OwnedFd, st: &libc::stat, pin: Option<Arc<MountFd>>) -> Arc<PathFd> {
        PathFd::pinning(fd, (st.st_dev, st.st_ino), self.mount_fd.clone(), pin)
    }

    /// Whether the directory `fd` lies inside SOURCE (its ".." chain reaches the root).
    fn under_root(&self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        let mut cur = source::open_path(fd, c".")?;
        for _ in 0..4096 {
            let st = source::fstat(cur.as_fd())?;
            if (st.st_dev, st.st_ino) == self.root_key {
                return Ok(true);
            }
            let up = source::open_path(cur.as_fd(), c"..")?;
            let ust = source::fstat(up.as_fd())?;
            if (ust.st_dev, ust.st_ino) == (st.st_dev, st.st_ino) {
                return Ok(false);
            }
            cur = up;
        }
        Ok(false)
    }

    fn acquire_key(&self, key: InodeKey) -> Option<Arc<Inode>> {
        let t = self.t.read().unwrap();
        let ino = t.by_id.get(t.by_key.get(&key)?)?.clone();
        ino.lookups.fetch_add(1, Ordering::Relaxed);
        Some(ino)
    }

    /// Drop `n` kernel references; returns the key when the inode left the table.
    pub fn forget(&self, id: u64, n: u64) -> Option<InodeKey> {
        if id == ROOT_ID {
            return None;
        }
        let mut t = self.t.write().unwrap();
        let ino = t.by_id.get(&id)?;
        let prev = ino.lookups.fetch_sub(
            n.min(ino.lookups.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if prev <= n {
            let key = ino.key;
            let gone = t.by_id.remove(&id).unwrap();
            t.by_key.remove(&key);
            if self.export == Export::Kept {
                if let Ok(h) = gone.fd.handle() {
                    keep_forgotten(&mut t, id, (h, key, gone.generation));
                }
            }
            return Some(key);
        }
        None
    }

    pub fn len(&self) -> usize {
        self.t.read().unwrap().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SOURCE's generation of inode `ino` held by `fd`, from its FILEID_INO32_GEN handle.
fn ino32_generation(fd: BorrowedFd<'_>, ino: u64) -> Option<u64> {
    let h = source::handle_of(fd)
        .ok()
        .filter(|h| is_ino32_gen(h, ino))?;
    Some(u32::from_ne_bytes(h.bytes()[4..8].try_into().unwrap()) as u64)
}

/// Whether `h` is a FILEID_INO32_GEN handle of inode `ino`.
fn is_ino32_gen(h: &SourceHandle, ino: u64) -> bool {
    h.kind == FILEID_INO32_GEN
        && h.bytes().len() == 8
        && ino <= u32::MAX as u64
        && h.bytes()[..4] == (ino as u32).to_ne_bytes()
}

fn insert(
    t: &mut Table,
    id: u64,
    key: InodeKey,
    st: &libc::stat,
    fd: Arc<PathFd>,
    generation: u64,
) -> Arc<Inode> {
    let ino = Arc::new(Inode {
        id,
        key,
        kind: st.st_mode & libc::S_IFMT,
        fd,
        lookups: AtomicU64::new(1),
        generation,
        cache: OnceLock::new(),
        unlinked_via_mount: AtomicBool::new(false),
        xattr_absent: Default::default(),
        restrict: AtomicU32::new(0),
    });
    t.by_id.insert(id, ino.clone());
    t.by_key.insert(key, id);
    ino
}

/// Remember a forgotten inode's handle, dropping the oldest beyond `MAX_FORGOTTEN`.
fn keep_forgotten(t: &mut Table, id: u64, (h, key, generation): (SourceHandle, InodeKey, u64)) {
    let Table {
        forgotten,
        forgotten_order,
        forgotten_serial,
        ..
    } = t;
    *forgotten_serial += 1;
    forgotten.insert(id, (h, key, generation, *forgotten_serial));
    forgotten_order.push_back((id, *forgotten_serial));
    let live = |forgotten: &HashMap<u64, (SourceHandle, InodeKey, u64, u64)>, (id, serial)| {
        forgotten.get(&id).is_some_and(|e| e.3 == serial)
    };
    if forgotten_order.len() > 2 * MAX_FORGOTTEN {
        forgotten_order.retain(|&p| live(forgotten, p));
    }
    while forgotten.len() > MAX_FORGOTTEN {
        if let Some(p) = forgotten_order.pop_front() {
            if live(forgotten, p) {
                forgotten.remove(&p.0);
            }
        }
    }
}
