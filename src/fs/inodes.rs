//! The inode table: FUSE node ids <-> SOURCE inodes held as `O_PATH` descriptors.
//!
//! Invariants:
//! - one entry per SOURCE inode (keyed by st_dev, st_ino), so hard links are one inode;
//! - the node id is the SOURCE inode number when that is unambiguous (same device as the
//!   SOURCE root, not 1, not taken), so inode numbers stay stable across remounts; otherwise a
//!   synthetic number from a high range; the root is always node 1 and never forgotten;
//! - `lookups` counts the kernel's references (each entry reply adds one, FORGET subtracts);
//!   at zero the entry and its descriptor go. Holding the descriptor keeps the SOURCE inode
//!   alive, so its number cannot be reused by another file while the kernel knows it.

use crate::cache::inode_cache::InodeCache;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

pub const ROOT_ID: u64 = 1;
const SYNTHETIC_BASE: u64 = 1 << 56;

pub type InodeKey = (u64, u64);

pub struct Inode {
    pub id: u64,
    pub key: InodeKey,
    /// S_IFMT bits of the file type (fixed for an inode's life).
    pub kind: u32,
    fd: OwnedFd,
    lookups: AtomicU64,
    /// The data cache of a regular file, once opened (also kept in the cache registry).
    pub cache: OnceLock<Arc<InodeCache>>,
}

impl Inode {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
}

pub struct InodeTable {
    root_dev: u64,
    t: RwLock<Table>,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root_st: &libc::stat) -> InodeTable {
        let key = (root_st.st_dev, root_st.st_ino);
        let root = Arc::new(Inode {
            id: ROOT_ID,
            key,
            kind: libc::S_IFDIR,
            fd: root_fd,
            lookups: AtomicU64::new(1),
            cache: OnceLock::new(),
        });
        let mut by_id = HashMap::new();
        by_id.insert(ROOT_ID, root);
        let mut by_key = HashMap::new();
        by_key.insert(key, ROOT_ID);
        InodeTable {
            root_dev: root_st.st_dev,
            t: RwLock::new(Table {
                by_id,
                by_key,
                next_synthetic: SYNTHETIC_BASE,
            }),
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<Inode>> {
        self.t.read().unwrap().by_id.get(&id).cloned()
    }

    /// The inode for `st` (found through `fd`), adding one kernel reference.
    pub fn lookup(&self, fd: OwnedFd, st: &libc::stat) -> Arc<Inode> {
        let key = (st.st_dev, st.st_ino);
        let mut t = self.t.write().unwrap();
        if let Some(id) = t.by_key.get(&key).copied() {
            let ino = t.by_id[&id].clone();
            ino.lookups.fetch_add(1, Ordering::Relaxed);
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
        let ino = Arc::new(Inode {
            id,
            key,
            kind: st.st_mode & libc::S_IFMT,
            fd,
            lookups: AtomicU64::new(1),
            cache: OnceLock::new(),
        });
        t.by_id.insert(id, ino.clone());
        t.by_key.insert(key, id);
        ino
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
            t.by_id.remove(&id);
            t.by_key.remove(&key);
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
