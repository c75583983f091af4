//! Scheduling of the adapter's idle poller: SCHED_IDLE (sched_setscheduler, which rustix does
//! not have), CPU affinities and thread ids (rustix), the number of CPUs online (sysconf).
//!
//! Invariants: every call concerns the calling thread or a thread id given, never the
//! process as a whole.

pub use rustix::thread::CpuSet;
use std::io;

/// Run the calling thread at SCHED_IDLE.
pub fn set_idle_scheduling() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live sched_param the kernel only reads; pid 0 is this thread.
    super::cvt(unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) }).map(drop)
}

/// The CPUs thread `tid` may run on (0: this thread); None for a thread that is gone.
pub fn affinity(tid: u32) -> Option<CpuSet> {
    let pid = rustix::process::Pid::from_raw(tid as i32);
    rustix::thread::sched_getaffinity(pid).ok()
}

/// Pin the calling thread to `set`.
pub fn set_affinity(set: &CpuSet) -> io::Result<()> {
    Ok(rustix::thread::sched_setaffinity(None, set)?)
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// CPUs online (sysconf(_SC_NPROCESSORS_ONLN)); -1 when unknown.
pub fn online_cpus() -> libc::c_long {
    // SAFETY: sysconf takes an integer name, touches no memory, and returns -1 on error.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}
