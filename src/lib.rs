//! extentfs: a FUSE filesystem over a SOURCE directory whose file data all passes through its
//! own extent-mapped page cache.
//!
//! - [`pool`]: the page pool (huge-page backed mmap regions, contiguous run allocator).
//! - [`extent`]: per-file extent state tree, extent map, and `ExtentPtr`.
//! - [`cache`]: per-inode caches, the read/write paths, writeback and eviction.
//! - [`core`]: the filesystem core (every operation, POSIX and cache policy; no FUSE types).
//! - [`fs`]: the FUSE adapter (decode, call the core, reply; session set-up).
//! - [`source`]: all access to SOURCE (the only module making system calls on it).
//! - [`sys`]: the system calls rustix does not cover, each a safe function with a SAFETY note.
//! - [`options`], [`stats`]: mount options and counters.
//! - [`cli`], [`control`]: the `stats`/`extents` and `sync`/`umount` commands.
//! - [`report`]: the figures' catalogue and their renderings (summary, OpenMetrics, cache map).
//! - [`notify`]: readiness notification to a service manager (`$NOTIFY_SOCKET`).

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

pub mod cache;
pub mod cli;
pub mod control;
pub mod core;
pub mod extent;
pub mod fs;
pub mod logging;
pub mod notify;
pub mod options;
pub mod pool;
pub mod report;
pub mod source;
pub mod stats;
pub mod sys;
