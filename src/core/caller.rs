//! Who sent a request, as far as POSIX policy needs it: the calling thread's effective
//! capabilities and groups, read from `/proc/PID/status` (the request's pid is the thread's
//! id) only when a decision needs them. The daemon acts on SOURCE with its own privilege;
//! these answers let it refuse or undo what a local filesystem would not do for the caller.

use super::Ctx;

pub const CAP_FOWNER: u32 = 3;
pub const CAP_FSETID: u32 = 4;
pub const CAP_LINUX_IMMUTABLE: u32 = 9;
pub const CAP_SYS_ADMIN: u32 = 21;

/// The caller's credentials that matter here.
#[derive(Debug)]
pub struct Caller {
    uid: u32,
    gid: u32,
    /// CapEff, fsgid and supplementary groups, when the status could be read.
    status: Option<(u64, u32, Vec<u32>)>,
}

impl Caller {
    /// The caller of a request (one read of its /proc status).
    pub fn of(ctx: &Ctx) -> Caller {
        let text = std::fs::read_to_string(format!("/proc/{}/status", ctx.pid)).ok();
        Caller::parse(ctx.uid, ctx.gid, text.as_deref())
    }

    /// From a /proc/PID/status text; without one (the caller exited), only uid 0 counts as
    /// privileged and only the request's gid as its group.
    pub fn parse(uid: u32, gid: u32, status: Option<&str>) -> Caller {
        let status = status.and_then(|s| {
            let field = |key: &str| s.lines().find_map(|l| l.strip_prefix(key));
            let cap_eff = u64::from_str_radix(field("CapEff:")?.trim(), 16).ok()?;
            let fsgid = field("Gid:")?.split_whitespace().nth(3)?.parse().ok()?;
            let groups = field("Groups:")
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect();
            Some((cap_eff, fsgid, groups))
        });
        Caller { uid, gid, status }
    }

    /// The caller's supplementary groups (just its gid when its status could not be read).
    pub fn groups(&self) -> Vec<u32> {
        match &self.status {
            Some((_, _, groups)) => groups.clone(),
            None => vec![self.gid],
        }
    }

    /// The capability `cap` is in the caller's effective set.
    pub fn has_cap(&self, cap: u32) -> bool {
        match &self.status {
            Some((eff, _, _)) => eff & (1 << cap) != 0,
            None => self.uid == 0,
        }
    }

    /// The caller's fsgid or one of its supplementary groups is `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        match &self.status {
            Some((_, fsgid, groups)) => *fsgid == gid || groups.contains(&gid),
            None => self.gid == gid,
        }
    }

    /// The kernel's `in_group_or_capable` for CAP_FSETID.
    pub fn in_group_or_capable(&self, gid: u32) -> bool {
        self.in_group(gid) || self.has_cap(CAP_FSETID)
    }

    /// The set-ID bits of a regular file with `mode` and group `gid` that a write, fallocate
    /// or copy by this caller removes (see [`setid_bits_to_drop`]).
    pub fn setid_to_drop(&self, mode: u32, gid: u32) -> u32 {
        if mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return 0;
        }
        setid_bits_to_drop(mode, self.has_cap(CAP_FSETID), self.in_group(gid))
    }
}

/// The kernel's `setattr_should_drop_suidgid` (fs/attr.c) for a modification of a regular
/// file: nothing for a caller with CAP_FSETID; else set-user-ID always, and set-group-ID when
/// the file is group-executable or the caller is not in the file's group.
pub fn setid_bits_to_drop(mode: u32, has_fsetid: bool, in_group: bool) -> u32 {
    if has_fsetid || mode & libc::S_IFMT != libc::S_IFREG {
        return 0;
    }
    let mut kill = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group) {
        kill |= libc::S_ISGID;
    }
    kill
}

#[cfg(test)]
mod tests {
    use super::*;

    const ST: &str = "Name:\tx\nUid:\t65534\t65534\t65534\t65534\n\
                      Gid:\t100\t100\t100\t101\nGroups:\t5 7 \nCapEff:\t0000000000000000\n";

    #[test]
    fn groups_and_capabilities_from_proc_status() {
        let c = Caller::parse(65534, 100, Some(ST));
        assert!(c.in_group(101), "fsgid");
        assert!(!c.in_group(100), "only the fsgid counts");
        assert!(c.in_group(7), "supplementary");
        assert!(!c.in_group(8));
        assert!(!c.has_cap(CAP_FSETID) && !c.has_cap(CAP_SYS_ADMIN));
        assert!(!c.in_group_or_capable(8));
        let root = ST.replace("CapEff:\t0000000000000000", "CapEff:\t000001ffffffffff");
        let r = Caller::parse(0, 0, Some(&root));
        assert!(r.in_group_or_capable(8), "CAP_FSETID");
        assert!(r.has_cap(CAP_SYS_ADMIN));
        let admin_only = ST.replace("CapEff:\t0000000000000000", "CapEff:\t0000000000200000");
        let a = Caller::parse(0, 0, Some(&admin_only));
        assert!(
            a.has_cap(CAP_SYS_ADMIN) && !a.has_cap(CAP_FSETID),
            "uid 0 is not enough"
        );
        // The caller is gone: uid 0 and the request's gid decide.
        let gone = Caller::parse(0, 100, None);
        assert!(gone.has_cap(CAP_FSETID) && gone.in_group(100) && !gone.in_group(101));
        assert!(!Caller::parse(5, 5, Some("garbage")).has_cap(CAP_SYS_ADMIN));
    }

    #[test]
    fn setid_rules_are_the_kernels() {
        let reg = libc::S_IFREG;
        let (suid, sgid) = (libc::S_ISUID, libc::S_ISGID);
        // generic/683-685: set-group-ID without group-exec, caller outside the group.
        assert_eq!(setid_bits_to_drop(reg | sgid | 0o666, false, false), sgid);
        // ... inside the group: kept (it marks mandatory locking, not privilege).
        assert_eq!(setid_bits_to_drop(reg | sgid | 0o666, false, true), 0);
        // Group-executable: dropped even for a member.
        assert_eq!(setid_bits_to_drop(reg | sgid | 0o676, false, true), sgid);
        // Set-user-ID: always.
        assert_eq!(setid_bits_to_drop(reg | suid | 0o666, false, true), suid);
        assert_eq!(
            setid_bits_to_drop(reg | suid | sgid | 0o777, false, true),
            suid | sgid
        );
        // CAP_FSETID keeps everything; so does a non-regular file.
        assert_eq!(
            setid_bits_to_drop(reg | suid | sgid | 0o777, true, false),
            0
        );
        assert_eq!(
            setid_bits_to_drop(libc::S_IFDIR | sgid | 0o777, false, false),
            0
        );
        let c = Caller::parse(65534, 100, Some(ST));
        assert_eq!(c.setid_to_drop(reg | sgid | 0o666, 0), sgid);
        assert_eq!(c.setid_to_drop(reg | sgid | 0o666, 7), 0);
        assert_eq!(c.setid_to_drop(reg | 0o777, 0), 0);
    }
}
