//! Mounting: checks on the mount point, the mount(2) call, and stale-mount cleanup.
//!
//! As root we call mount(2) ourselves with fstype `fuse.extentfs` and SOURCE as the source,
//! so /proc/mounts shows what users expect (fuser's own mount path would say plain `fuse`),
//! then hand the /dev/fuse descriptor to the fuser session. Without privilege we fall back to
//! fusermount3 through fuser.

use crate::options::MountConfig;
use crate::sys;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// What is at the mount point now.
#[derive(Debug, PartialEq, Eq)]
pub enum MountPointState {
    Ready,
    Missing,
    NotADirectory,
    NotEmpty,
    /// Already a mount point (of this or another filesystem).
    Busy(String),
    /// A FUSE mount whose daemon died (ENOTCONN).
    Stale,
}

/// The /proc/self/mountinfo line's mount point field unescaped (\040 etc.).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Find the mount whose mount point is `path` in /proc/self/mountinfo: (fstype, source).
pub fn mounted_at(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    let mut found = None;
    for line in info.lines() {
        let mut parts = line.split(" - ");
        let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
            continue;
        };
        let mp = a.split(' ').nth(4).map(unescape);
        if mp.as_deref() == Some(&*want) {
            let mut bf = b.split(' ');
            let fstype = bf.next().unwrap_or("").to_string();
            let src = bf.next().map(unescape).unwrap_or_default();
            found = Some((fstype, src)); // the last one is on top
        }
    }
    found
}

pub fn check_mount_point(path: &Path) -> MountPointState {
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return MountPointState::Stale,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return MountPointState::Missing,
        Err(_) => return MountPointState::Missing,
        Ok(m) if !m.is_dir() => return MountPointState::NotADirectory,
        Ok(_) => {}
    }
    if let Some((fstype, src)) = mounted_at(path) {
        return MountPointState::Busy(format!("{src} ({fstype})"));
    }
    match std::fs::read_dir(path) {
        Ok(mut d) => {
            if d.next().is_some() {
                MountPointState::NotEmpty
            } else {
                MountPointState::Ready
            }
        }
        Err(_) => MountPointState::Ready,
    }
}

/// Detach a dead FUSE mount left at `path` by a killed daemon.
pub fn clean_stale(path: &Path) -> io::Result<()> {
    sys::mount::unmount(path, true)
}

/// Mounting ourselves failed with `e`: should the setuid `fusermount3` mount instead? It
/// should for an unprivileged user, whom mount(2) answers EPERM and a `/dev/fuse` of mode
/// 0600 (as some distributions ship it) EACCES.
pub fn use_fusermount(e: &io::Error) -> bool {
    // Both map to PermissionDenied, which [`mount_fuse`]'s errors keep with their context.
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        || e.kind() == io::ErrorKind::PermissionDenied
}

/// A hint when `/dev/fuse` admits only its owner: fusermount3 opens it with the user's own
/// rights too, so no unprivileged mount can succeed (empty otherwise).
pub fn dev_fuse_hint() -> &'static str {
    use std::os::unix::fs::MetadataExt;
    let uid = sys::process::uid();
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if uid != m.uid() && m.mode() & 0o006 == 0 => {
            " (/dev/fuse does not let other users open it, and fusermount3 opens it with the \
             user's own rights: only its owner may mount FUSE filesystems here; most systems \
             make it mode 0666)"
        }
        _ => "",
    }
}

/// The helper that mounts for unprivileged users.
pub const FUSERMOUNT: &str = "fusermount3";

/// The `-o` options for fusermount3 (it adds `fd`, `rootmode`, `user_id`, `group_id`, and
/// `nosuid,nodev` for a user who is not root). A comma or backslash in SOURCE's name is
/// escaped with a backslash, as fusermount3 expects.
pub fn fusermount_options(source: &Path, cfg: &MountConfig) -> String {
    let mut fsname = String::new();
    for ch in source.to_string_lossy().chars() {
        if ch == ',' || ch == '\\' {
            fsname.push('\\');
        }
        fsname.push(ch);
    }
    let mut o = format!("fsname={fsname},subtype=extentfs,default_permissions");
    let pairs = [
        (cfg.allow_other, "allow_other"),
        (cfg.read_only, "ro"),
        (cfg.nosuid, "nosuid"),
        (cfg.nodev, "nodev"),
        (cfg.noexec, "noexec"),
        (cfg.noatime, "noatime"),
        (cfg.nodiratime, "nodiratime"),
        (cfg.sync, "sync"),
        (cfg.dirsync, "dirsync"),
        (cfg.relatime, "relatime"),
        (cfg.strictatime, "strictatime"),
    ];
    for (on, name) in pairs {
        if on {
            o.push(',');
            o.push_str(name);
        }
    }
    o
}

/// Have `helper` (fusermount3, setuid root) mount at `mountpoint` with `-o opts` and hand
/// back the /dev/fuse descriptor over the `_FUSE_COMMFD` socket, as libfuse does. The error
/// says what the helper printed.
pub fn mount_with_helper(helper: &str, opts: &str, mountpoint: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::net::UnixStream;
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(helper);
    cmd.arg("-o")
        .arg(opts)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs_fd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // The helper inherits its end of the socket.
    sys::fdpass::inherit_in_child(&mut cmd, theirs_fd);
    let child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {helper}: {e}")))?;
    drop(theirs);
    let received = receive_fd(&ours);
    drop(ours);
    let out = child.wait_with_output()?;
    match received {
        Ok(fd) if out.status.success() => Ok(fd),
        Ok(_) | Err(_) => {
            let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let why = match (&received, said.is_empty()) {
                (_, false) => said,
                (Err(e), true) => format!("{e} ({})", out.status),
                (Ok(_), true) => out.status.to_string(),
            };
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{helper}: {why}"),
            ))
        }
    }
}

/// One descriptor sent as SCM_RIGHTS over `sock` (with at least one byte of data).
fn receive_fd(sock: &std::os::unix::net::UnixStream) -> io::Result<OwnedFd> {
    sys::fdpass::recv_fd(sock.as_fd())?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no descriptor received from the mount helper",
        )
    })
}

/// Open /dev/fuse and mount it at `mountpoint` with type `fuse.extentfs`. Returns the fd.
/// Errors say which step failed and keep their kind (see [`use_fusermount`]).
pub fn mount_fuse(source: &Path, mountpoint: &Path, cfg: &MountConfig) -> io::Result<OwnedFd> {
    let fd = sys::mount::open_dev_fuse()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/fuse: {e}")))?;
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        fd.as_raw_fd(),
        sys::process::uid(),
        sys::process::gid(),
    );
    if cfg.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags: libc::c_ulong = 0;
    let pairs = [
        (cfg.read_only, libc::MS_RDONLY),
        (cfg.nosuid, libc::MS_NOSUID),
        (cfg.nodev, libc::MS_NODEV),
        (cfg.noexec, libc::MS_NOEXEC),
        (cfg.noatime, libc::MS_NOATIME),
        (cfg.nodiratime, libc::MS_NODIRATIME),
        (cfg.sync, libc::MS_SYNCHRONOUS),
        (cfg.dirsync, libc::MS_DIRSYNC),
        (cfg.relatime, libc::MS_RELATIME),
        (cfg.strictatime, libc::MS_STRICTATIME),
    ];
    for (on, f) in pairs {
        if on {
            flags |= f;
        }
    }
    let cdata = std::ffi::CString::new(data).unwrap();
    sys::mount::mount(source, mountpoint, c"fuse.extentfs", flags, &cdata)
        .map_err(|e| io::Error::new(e.kind(), format!("mount(2): {e}")))?;
    Ok(fd)
}

/// Lazily unmount `mountpoint` (SIGTERM path): new accesses fail, the session ends once the
/// kernel lets go of the connection.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let Err(e) = sys::mount::unmount(mountpoint, true) else {
        return Ok(());
    };
    // Not root: ask fusermount3.
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status();
    match st {
        Ok(s) if s.success() => Ok(()),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprivileged_errors_go_to_fusermount() {
        // mount(2) as a user: EPERM; open of a /dev/fuse with mode 0600: EACCES.
        for e in [libc::EPERM, libc::EACCES] {
            assert!(use_fusermount(&io::Error::from_raw_os_error(e)), "{e}");
        }
        for e in [libc::ENOENT, libc::ENODEV, libc::EBUSY, libc::EINVAL] {
            assert!(!use_fusermount(&io::Error::from_raw_os_error(e)), "{e}");
        }
        assert!(!use_fusermount(&io::Error::other("x")));
        let opened = io::Error::from_raw_os_error(libc::EACCES);
        let with_context =
            io::Error::new(opened.kind(), format!("cannot open /dev/fuse: {opened}"));
        assert!(use_fusermount(&with_context));
        let busy = io::Error::from_raw_os_error(libc::EBUSY);
        assert!(!use_fusermount(&io::Error::new(
            busy.kind(),
            "mount(2): busy"
        )));
    }

    #[test]
    fn fusermount_options_escape_the_source() {
        let mut cfg = MountConfig::defaults(1 << 30, 1);
        assert_eq!(
            fusermount_options(Path::new("/srv/a,b\\c"), &cfg),
            "fsname=/srv/a\\,b\\\\c,subtype=extentfs,default_permissions"
        );
        cfg.allow_other = true;
        cfg.read_only = true;
        cfg.noatime = true;
        assert_eq!(
            fusermount_options(Path::new("/s"), &cfg),
            "fsname=/s,subtype=extentfs,default_permissions,allow_other,ro,noatime"
        );
    }

    /// Run as the fake helper by `helper_hands_over_the_descriptor` (the test binary started
    /// again through a script): send /dev/null over `_FUSE_COMMFD` as fusermount3 sends
    /// /dev/fuse, write the arguments it got next to the script, and exit.
    #[test]
    #[ignore = "the helper process of helper_hands_over_the_descriptor, not a test"]
    fn fake_fusermount_child() {
        let out = std::env::var("EXTENTFS_FAKE_FUSERMOUNT_ARGS").unwrap();
        let fd: i32 = std::env::var("_FUSE_COMMFD").unwrap().parse().unwrap();
        let args = std::env::var("EXTENTFS_FAKE_FUSERMOUNT_GOT").unwrap_or_default();
        std::fs::write(out, args).unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: the test harness hands this process the descriptor number in _FUSE_COMMFD,
        // open and not owned by anything else here, for the rest of the process.
        let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        assert_eq!(sys::fdpass::send_fd(sock, null.as_fd()).unwrap(), 1);
        std::process::exit(0);
    }

    #[test]
    fn helper_hands_over_the_descriptor() {
        let d = tempfile::Builder::new()
            .prefix("posix-helper")
            .tempdir()
            .unwrap();
        let got = d.path().join("args");
        let script = d.path().join("fusermount3");
        let exe = std::env::current_exe().unwrap();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nEXTENTFS_FAKE_FUSERMOUNT_ARGS='{}' EXTENTFS_FAKE_FUSERMOUNT_GOT=\"$*\" \
                 exec '{}' --exact fs::mount::tests::fake_fusermount_child --ignored --quiet \
                 --test-threads=1 >/dev/null\n",
                got.display(),
                exe.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let helper = script.to_str().unwrap();
        let fd =
            mount_with_helper(helper, "fsname=/s,subtype=extentfs", Path::new("/mnt/x")).unwrap();
        // What came back is the helper's descriptor (here /dev/null), close-on-exec.
        let st = sys::stat::fstat(fd.as_fd()).unwrap();
        let null = std::fs::metadata("/dev/null").unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(st.st_rdev, null.rdev());
        let flags = rustix::io::fcntl_getfd(&fd).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        assert_eq!(
            std::fs::read_to_string(&got).unwrap(),
            "-o fsname=/s,subtype=extentfs -- /mnt/x"
        );

        // A helper that fails says why; a missing one says so.
        let failing = d.path().join("failing");
        std::fs::write(
            &failing,
            "#!/bin/sh\necho 'fusermount3: mount failed: Operation not permitted' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = mount_with_helper(failing.to_str().unwrap(), "x", Path::new("/mnt/x")).unwrap_err();
        assert!(
            e.to_string()
                .contains("mount failed: Operation not permitted"),
            "{e}"
        );
        let e =
            mount_with_helper("/nonexistent/fusermount3", "x", Path::new("/mnt/x")).unwrap_err();
        assert!(e.to_string().contains("cannot run"), "{e}");
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\"), "/x\\");
    }

    #[test]
    fn mount_point_states() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(check_mount_point(d.path()), MountPointState::Ready);
        assert_eq!(
            check_mount_point(&d.path().join("nope")),
            MountPointState::Missing
        );
        std::fs::write(d.path().join("f"), b"x").unwrap();
        assert_eq!(check_mount_point(d.path()), MountPointState::NotEmpty);
        assert_eq!(
            check_mount_point(&d.path().join("f")),
            MountPointState::NotADirectory
        );
        assert!(matches!(
            check_mount_point(Path::new("/proc")),
            MountPointState::Busy(_)
        ));
    }
}
