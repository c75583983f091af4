//! Passing a descriptor to and from a helper process (fusermount3's `_FUSE_COMMFD`): one
//! SCM_RIGHTS message over a Unix socket (rustix's typed `sendmsg`/`recvmsg`), and a
//! descriptor kept open across the helper's exec (fcntl in the forked child: libc, as the
//! child has only the raw number, which rustix would take through an `unsafe` borrow).
//!
//! Invariants: a received descriptor is close-on-exec (MSG_CMSG_CLOEXEC) and owned by the
//! caller alone; extra descriptors in the message are closed.

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

/// Receive one byte and the first descriptor sent with it as SCM_RIGHTS over `sock`. None when
/// the peer closed the socket or sent no descriptor.
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    Ok(fd.filter(|_| got.bytes > 0))
}

/// Send one byte and `fd` as SCM_RIGHTS over `sock` (what fusermount3 does); bytes sent.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    Ok(rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&[0u8])],
        &mut control,
        SendFlags::empty(),
    )?)
}

/// Make the child `cmd` starts inherit descriptor `fd` (clear its close-on-exec flag in the
/// forked child, before exec); the parent's copy keeps its flag.
pub fn inherit_in_child(cmd: &mut std::process::Command, fd: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl on a
    // descriptor number, which is async-signal-safe and touches no memory; it allocates
    // nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
