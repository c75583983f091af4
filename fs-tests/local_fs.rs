//! Behaviour a local filesystem has and a passthrough daemon, running with its own privilege,
//! easily lacks: privileged xattr names, SOURCE's maximum file size, set-ID clearing by every
//! kind of write, the cost of absent xattrs, giving pool memory back.

use crate::harness::*;
use crate::posix::{as_nobody, child_errno, cpath, getxattr_raw, listxattr, open_up};
use std::ffi::CString;
use std::path::Path;

/// lsetxattr in SOURCE (behind the mount).
fn set_in_source(p: &Path, name: &str, value: &[u8]) {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const _,
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

#[test]
fn trusted_names_hidden_from_unprivileged_callers() {
    // SOURCE is the test's temporary directory (tmpfs or ext4: both keep trusted.* names).
    let m = Mount::with_source("cache_size=16M,allow_other", |src| {
        std::fs::write(src.join("f"), b"x").unwrap();
        set_in_source(&src.join("f"), "trusted.hidden", b"secret");
        set_in_source(&src.join("f"), "user.visible", b"v");
    });
    open_up(&m);
    let f = m.path("f");
    // Root (CAP_SYS_ADMIN) sees both, as on a local filesystem.
    let mut names = listxattr(&f);
    names.sort();
    assert_eq!(
        names,
        vec![b"trusted.hidden".to_vec(), b"user.visible".to_vec()]
    );
    assert_eq!(getxattr_raw(&f, "trusted.hidden").unwrap(), b"secret");

    // uid 65534 without capabilities: only the user name, and its size probe agrees.
    let path = cpath(&f);
    let want: &[u8] = b"user.visible\0";
    let mut buf = [0u8; 256];
    let r = as_nobody(|| unsafe {
        let n = libc::listxattr(path.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len());
        if n < 0 {
            return child_errno(-1);
        }
        if n as usize != want.len() || buf[..want.len()] != *want {
            return 200;
        }
        let probe = libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0);
        if probe != n {
            return 201;
        }
        0
    });
    assert_eq!(
        r, 0,
        "listxattr as nobody (200: trusted name listed; else errno)"
    );
    let name = c"trusted.hidden";
    let r = as_nobody(|| unsafe {
        let n = libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut _,
            buf.len(),
        );
        if n >= 0 {
            return 202;
        }
        child_errno(-1)
    });
    assert_eq!(r, libc::ENODATA, "getxattr of a trusted name as nobody");
    // Root's answers are unchanged afterwards (nothing is remembered per caller).
    assert_eq!(listxattr(&f).len(), 2);
}
