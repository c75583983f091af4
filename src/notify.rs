//! Service manager readiness notification (the `sd_notify` protocol, without libsystemd):
//! one datagram of `KEY=VALUE` lines to the unix socket named by `$NOTIFY_SOCKET`, a path
//! (`/run/systemd/notify`) or, when it starts with `@`, an abstract socket name.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable systemd (and other service managers) set for `Type=notify`.
pub const ENV: &str = "NOTIFY_SOCKET";

/// The address `$NOTIFY_SOCKET` names.
pub fn socket_addr(name: &str) -> io::Result<SocketAddr> {
    if let Some(abs) = name.strip_prefix('@') {
        SocketAddr::from_abstract_name(abs.as_bytes())
    } else if name.starts_with('/') {
        SocketAddr::from_pathname(name)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{ENV}={name}: not a socket path or @abstract name"),
        ))
    }
}

/// Send `state` (e.g. `READY=1`) to `name`.
pub fn send_to(name: &str, state: &str) -> io::Result<()> {
    let addr = socket_addr(name)?;
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Send `state` to `$NOTIFY_SOCKET`; Ok(false) when it is not set (not run by a service
/// manager).
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var(ENV) {
        Ok(name) if !name.is_empty() => send_to(&name, state).map(|()| true),
        _ => Ok(false),
    }
}

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Tell the service manager the daemon is stopping: once per process, however many paths
/// (a signal, an external `umount`) lead there. Failures are logged, never fatal.
pub fn stopping() {
    if STOPPING.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Err(e) = notify("STOPPING=1") {
        tracing::warn!("cannot notify {ENV}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_abstract_sockets_receive_the_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");

        let name = format!("extentfs-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn bad_names_are_errors() {
        assert!(socket_addr("relative/path").is_err());
        assert!(send_to("/nonexistent-dir-extentfs/notify", "READY=1").is_err());
    }
}
