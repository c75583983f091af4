//! Calendar time: localtime_r and gmtime_r (libc: the time zone is glibc's; rustix has no
//! calendar), for the syslog line and the recovery directory's stamp. Clocks are read through
//! rustix (`rustix::time::clock_gettime`) where they are needed.
//!
//! Invariants: both return a filled `tm`; a time libc cannot convert gives the all-zero one.

fn zeroed_tm() -> libc::tm {
    // SAFETY: libc::tm holds integers and the tm_zone pointer, for which null is valid, so
    // all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// The local calendar time of `unix_secs`.
pub fn localtime(unix_secs: i64) -> libc::tm {
    let mut tm = zeroed_tm();
    let t = unix_secs as libc::time_t;
    // SAFETY: localtime_r reads `t` and writes only into `tm`, both live for the call.
    unsafe { libc::localtime_r(&t, &mut tm) };
    tm
}

/// The UTC calendar time of `unix_secs`.
pub fn gmtime(unix_secs: i64) -> libc::tm {
    let mut tm = zeroed_tm();
    let t = unix_secs as libc::time_t;
    // SAFETY: gmtime_r reads `t` and writes only into `tm`, both live for the call.
    unsafe { libc::gmtime_r(&t, &mut tm) };
    tm
}
