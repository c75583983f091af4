//! Per-thread filesystem credentials and fs attributes: setfsuid/setfsgid as raw system calls
//! (glibc's wrappers change every thread of the process; rustix has no fsuid calls), and
//! unshare(CLONE_FS) (rustix's `unshare_unsafe` is `unsafe` for flags that share descriptor
//! tables; CLONE_FS alone only copies this thread's cwd, root and umask).
//!
//! Invariants: each call changes only the calling thread. The supplementary groups go through
//! rustix (`process::getgroups`, `thread::set_thread_groups`), which makes the raw, per-thread
//! system calls too.

/// Set this thread's fsuid (`gid` false) or fsgid to `id`; returns whether it now is `id`.
pub fn set_fs_id(id: u32, gid: bool) -> bool {
    let nr = if gid {
        libc::SYS_setfsgid
    } else {
        libc::SYS_setfsuid
    };
    // SAFETY: setfsuid/setfsgid take an id by value and change only this thread's
    // credentials; asking with -1 (an invalid id) changes nothing and returns the current one.
    unsafe {
        libc::syscall(nr, id as libc::c_long);
        libc::syscall(nr, -1 as libc::c_long) as u32 == id
    }
}

/// This thread's fsuid (`gid` false) or fsgid.
pub fn fs_id(gid: bool) -> u32 {
    let nr = if gid {
        libc::SYS_setfsgid
    } else {
        libc::SYS_setfsuid
    };
    // SAFETY: setfsuid/setfsgid(-1) change nothing and return the thread's current id; they
    // take no pointer.
    unsafe { libc::syscall(nr, -1 as libc::c_long) as u32 }
}

/// unshare(CLONE_FS): give this thread its own cwd, root and umask. Whether it worked.
pub fn unshare_fs() -> bool {
    // SAFETY: unshare(CLONE_FS) takes no pointers; it only gives this thread its own copy of the
    // cwd, root and umask, which nothing in the crate relies on being shared.
    unsafe { libc::unshare(libc::CLONE_FS) == 0 }
}
