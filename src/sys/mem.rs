//! Memory of the machine: physical RAM (sysconf(_SC_PHYS_PAGES): rustix has no sysconf), for
//! the default cache size. The pool maps and advises its own memory through memmap2 and
//! rustix (`pool/`).
//!
//! Invariants: an unknown figure is 0, never an error.

/// Physical RAM in bytes (0 when unknown).
pub fn total_ram() -> u64 {
    // SAFETY: sysconf takes an integer name and touches no memory; an error (-1) is clamped to 0
    // below.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    (pages.max(0) as u64) * rustix::param::page_size() as u64
}
