//! The process as a whole: fork (libc: rustix offers fork only as an `unsafe` runtime call),
//! blocking and waiting for signals (sigset_t, pthread_sigmask, sigwait: not in rustix's
//! stable API), and the real user and group ids for the mount options (rustix).
//!
//! Invariants: [`fork`] runs only while the process has a single thread, so the child is a
//! whole copy with no lock held by a thread that is gone.

use std::io;

/// Which side of a [`fork`] this is.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    Child,
    Parent(i32),
}

/// The threads of this process, from /proc/self/status.
fn thread_count() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// fork(2). Refused (an error, nothing forked) unless the process has exactly one thread.
pub fn fork() -> io::Result<Forked> {
    match thread_count() {
        Some(1) => {}
        n => {
            return Err(io::Error::other(format!(
                "refused with {} threads running",
                n.map_or("an unknown number of".to_string(), |n| n.to_string())
            )))
        }
    }
    // SAFETY: the process has one thread (checked just above; only this thread could start
    // another meanwhile), so the child is a full copy with no lock held by a thread that is
    // gone, and may go on running anything. fork takes no pointers.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// A set of signals blocked in the thread that made it (and the threads it starts from then
/// on), for one thread to wait on.
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    /// Block `signals` in the calling thread.
    pub fn block(signals: &[libc::c_int]) -> SignalSet {
        // SAFETY: every pointer is to `set`, a live local sigset_t (an integer array: all-zero is
        // valid, and sigemptyset initializes it anyway) or null for the old mask pthread_sigmask
        // may skip; sigaddset refuses an invalid number with EINVAL and nothing else.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            SignalSet(set)
        }
    }

    /// Wait for one of the signals (blocked, see [`SignalSet::block`]): its number.
    pub fn wait(&self) -> io::Result<libc::c_int> {
        let mut sig = 0;
        // SAFETY: `self.0` is an initialized sigset_t and `sig` a live int sigwait writes.
        match unsafe { libc::sigwait(&self.0, &mut sig) } {
            0 => Ok(sig),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The real user id.
pub fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The real group id.
pub fn gid() -> u32 {
    rustix::process::getgid().as_raw()
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_its_threads() {
        let n = super::thread_count().unwrap();
        assert!(n >= 1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv().ok());
        assert!(super::thread_count().unwrap() > 1);
        // With another thread running, no fork.
        assert!(super::fork().is_err());
        drop(tx);
        t.join().unwrap();
    }
}
