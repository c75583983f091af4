//! Validators: what SOURCE said of a cached file, to tell a change made by someone else from
//! extentfs's own.
//!
//! A [`Validator`] is the part of a file's stat that moves whenever anyone changes the file:
//! its identity (device, inode), size, mtime and ctime to the nanosecond. ctime catches what
//! the others miss: a same-size rewrite that restores the old mtime (`cp -p`, rsync, tar)
//! still moves ctime, and nobody can set ctime back.
//!
//! [`Seen`] holds the validator recorded after extentfs's own last change to the file
//! (writeback, truncate, chmod, times, ...). Own changes are bracketed by `begin_own` and
//! `end_own`: before the first of a burst the file is checked, so that a foreign change made
//! before it is remembered rather than absorbed; after the last one the new validator is
//! recorded. While own changes are in flight a check cannot tell whose a change is and answers
//! [`Check::Busy`]. Invariant: `foreign` is set exactly when a foreign change was seen and not
//! yet reported by [`Seen::check`].

/// The fields of a stat that any change of the file moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Validator {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Validator {
    pub fn of(st: &libc::stat) -> Validator {
        Validator {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

impl std::fmt::Display for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dev={} ino={} size={} mtime={}.{:09} ctime={}.{:09}",
            self.dev, self.ino, self.size, self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1
        )
    }
}

/// What a check of the file against the recorded validator found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Nobody else changed the file since extentfs last looked.
    Unchanged,
    /// extentfs is changing the file right now: whose change it is cannot be told.
    Busy,
    /// Someone else changed the file (now recorded as seen).
    Changed,
}

/// The validator last recorded and the own changes in flight.
#[derive(Debug, Default)]
pub struct Seen {
    recorded: Validator,
    in_flight: u32,
    foreign: bool,
    /// Checks waiting for the own changes in flight to end (the owner's condvar is
    /// notified only when there are some: a notify is a system call).
    pub waiters: u32,
}

impl Seen {
    pub fn new(v: Validator) -> Seen {
        Seen {
            recorded: v,
            ..Seen::default()
        }
    }

    pub fn recorded(&self) -> Validator {
        self.recorded
    }

    /// Whether `begin_own` wants the file's validator now (no own change is in flight).
    pub fn wants_pre_check(&self) -> bool {
        self.in_flight == 0
    }

    /// An own change starts; `now` is SOURCE's validator when `wants_pre_check` said so.
    pub fn begin_own(&mut self, now: Option<Validator>) {
        if let Some(v) = now {
            if v != self.recorded {
                self.foreign = true;
            }
        }
        self.in_flight += 1;
    }

    /// A stat taken earlier, outside the lock, settles the check only when it shows exactly
    /// what was recorded (no change up to when it was taken; an own change since would have
    /// recorded something newer) and no foreign change is pending: then `Unchanged`. Any
    /// other case needs a fresh stat under the lock: None.
    pub fn unchanged_per(&self, earlier: Validator) -> bool {
        self.in_flight == 0 && !self.foreign && earlier == self.recorded
    }

    /// An own change ended; true when it was the last in flight (the caller then records
    /// SOURCE's validator with `record`).
    pub fn end_own(&mut self) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.in_flight == 0
    }

    /// SOURCE's validator after the last own change of a burst.
    pub fn record(&mut self, v: Validator) {
        self.recorded = v;
    }

    /// Compare SOURCE's validator `now` with the recorded one.
    pub fn check(&mut self, now: Validator) -> Check {
        if self.in_flight > 0 {
            return Check::Busy;
        }
        if now != self.recorded || self.foreign {
            self.recorded = now;
            self.foreign = false;
            return Check::Changed;
        }
        Check::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(size: u64, mtime: i64, ctime_ns: i64) -> Validator {
        Validator {
            dev: 1,
            ino: 2,
            size,
            mtime: (mtime, 0),
            ctime: (mtime, ctime_ns),
        }
    }

    #[test]
    fn unchanged_until_any_field_moves() {
        let mut s = Seen::new(v(10, 100, 0));
        assert_eq!(s.check(v(10, 100, 0)), Check::Unchanged);
        // Same size and mtime, ctime moved (a rewrite that restored mtime).
        assert_eq!(s.check(v(10, 100, 5)), Check::Changed);
        // Reported once: the new state is what was seen.
        assert_eq!(s.check(v(10, 100, 5)), Check::Unchanged);
        assert_eq!(s.check(v(11, 100, 5)), Check::Changed);
        let mut other_inode = v(11, 100, 5);
        other_inode.ino = 3;
        assert_eq!(s.check(other_inode), Check::Changed);
    }

    #[test]
    fn own_changes_are_not_foreign() {
        let mut s = Seen::new(v(10, 100, 0));
        assert!(s.wants_pre_check());
        s.begin_own(Some(v(10, 100, 0)));
        // While writing back, a check cannot tell.
        assert_eq!(s.check(v(20, 101, 0)), Check::Busy);
        assert!(s.end_own());
        s.record(v(20, 101, 0));
        assert_eq!(s.check(v(20, 101, 0)), Check::Unchanged);
    }

    #[test]
    fn foreign_change_before_own_change_is_not_absorbed() {
        let mut s = Seen::new(v(10, 100, 0));
        // Someone appended; then extentfs writes back and records the result.
        s.begin_own(Some(v(15, 100, 9)));
        assert!(s.end_own());
        s.record(v(20, 101, 0));
        assert_eq!(s.check(v(20, 101, 0)), Check::Changed);
        assert_eq!(s.check(v(20, 101, 0)), Check::Unchanged);
    }

    #[test]
    fn nested_own_changes_check_once_and_record_once() {
        let mut s = Seen::new(v(10, 100, 0));
        s.begin_own(Some(v(10, 100, 0)));
        assert!(!s.wants_pre_check());
        s.begin_own(None);
        assert!(!s.end_own());
        assert_eq!(s.check(v(12, 100, 1)), Check::Busy);
        assert!(s.end_own());
        s.record(v(12, 100, 1));
        assert_eq!(s.check(v(12, 100, 1)), Check::Unchanged);
        // An unbalanced end does not underflow.
        assert!(s.end_own());
    }

    #[test]
    fn an_earlier_stat_settles_only_what_was_recorded() {
        let mut s = Seen::new(v(10, 100, 0));
        assert!(s.unchanged_per(v(10, 100, 0)));
        // Taken, then an own change runs and is recorded: the earlier stat no longer matches.
        s.begin_own(Some(v(10, 100, 0)));
        assert!(!s.unchanged_per(v(10, 100, 0)), "in flight");
        assert!(s.end_own());
        s.record(v(20, 101, 0));
        assert!(!s.unchanged_per(v(10, 100, 0)));
        assert!(s.unchanged_per(v(20, 101, 0)));
        // A foreign change seen before an own change is still pending.
        s.begin_own(Some(v(30, 102, 0)));
        assert!(s.end_own());
        s.record(v(31, 103, 0));
        assert!(!s.unchanged_per(v(31, 103, 0)));
    }

    #[test]
    fn of_reads_nanoseconds() {
        let mut st = crate::sys::stat::zeroed_stat();
        st.st_size = 7;
        st.st_mtime = 1;
        st.st_mtime_nsec = 2;
        st.st_ctime = 3;
        st.st_ctime_nsec = 4;
        let a = Validator::of(&st);
        assert_eq!((a.size, a.mtime, a.ctime), (7, (1, 2), (3, 4)));
        st.st_ctime_nsec = 5;
        assert_ne!(Validator::of(&st), a);
    }
}
