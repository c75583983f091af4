//! The filesystem core: every operation of the filesystem, with no FUSE types. Operations
//! take a request context ([`Ctx`]) and plain Rust types (node ids, names, attributes) and
//! return [`Result`]s with a typed [`Error`] (errno, message, log level). The POSIX policy
//! (ownership of what is created, set-ID clearing, rename and unlink of open files, ACLs)
//! and the cache policy (write back before a punch, discard at unlink, release) live here;
//! the FUSE adapter (`crate::fs`) only decodes, calls, replies and counts.
//!
//! Invariants: nothing here names `fuser` or `crate::fs`; SOURCE is reached only through
//! [`crate::source`] and file data only through [`crate::cache`].

pub mod caller;
pub mod error;
pub mod inodes;
pub mod xattr;

pub use error::{Error, Result};

/// Who sent a request: what the kernel tells of the calling thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    /// The calling thread's id (its `/proc/PID/status` has its groups and capabilities).
    pub pid: u32,
}

impl Ctx {
    /// The daemon acting for itself (root), e.g. in tests.
    pub const ROOT: Ctx = Ctx {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}
