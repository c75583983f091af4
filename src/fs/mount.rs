//! Mounting: checks on the mount point, the mount(2) call, and stale-mount cleanup.
//!
//! As root we call mount(2) ourselves with fstype `fuse.extentfs` and SOURCE as the source,
//! so /proc/mounts shows what users expect (fuser's own mount path would say plain `fuse`),
//! then hand the /dev/fuse descriptor to the fuser session. Without privilege we fall back to
//! fusermount3 through fuser.

use crate::options::MountConfig;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

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
    let c = cstr(path)?;
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    Err(io::Error::last_os_error())
}

/// Open /dev/fuse and mount it at `mountpoint` with type `fuse.extentfs`. Returns the fd.
pub fn mount_fuse(source: &Path, mountpoint: &Path, cfg: &MountConfig) -> io::Result<OwnedFd> {
    let dev = CString::new("/dev/fuse").unwrap();
    let fd = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot open /dev/fuse: {e}"),
        ));
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        fd.as_raw_fd(),
        unsafe { libc::getuid() },
        unsafe { libc::getgid() },
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
    let src = cstr(source)?;
    let mp = cstr(mountpoint)?;
    let fstype = CString::new("fuse.extentfs").unwrap();
    let cdata = CString::new(data).unwrap();
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            mp.as_ptr(),
            fstype.as_ptr(),
            flags,
            cdata.as_ptr() as *const libc::c_void,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Lazily unmount `mountpoint` (SIGTERM path): new accesses fail, the session ends once the
/// kernel lets go of the connection.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let c = cstr(mountpoint)?;
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
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
