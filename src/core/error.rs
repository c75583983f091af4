//! The core's error: what a failed operation answers (an errno), why (a message for the log),
//! and how loud the log line is (a level: an ordinary outcome such as ENOENT on a lookup is
//! DEBUG, a failure of SOURCE or of the machine is WARN, a bug is ERROR). The FUSE adapter
//! replies with the errno and logs the message at the level (after mountpoint-s3's error type
//! and its `fuse_error!`).
//!
//! Invariant: building an `Error` from an errno or an `io::Error` carrying one allocates
//! nothing (the message is a static string or empty); the strerror text is added only when
//! the error is displayed.

use std::borrow::Cow;
use std::fmt;
use std::io;
use tracing::Level;

/// A failed operation of the core.
#[derive(Debug)]
pub struct Error {
    errno: i32,
    level: Level,
    message: Cow<'static, str>,
}

pub type Result<T> = std::result::Result<T, Error>;

/// How loud a failure with `errno` is by default: the outcomes callers provoke every day
/// (no such name, exists, not empty, no such attribute, permission, a read-only mount, bad
/// arguments, a file past its size limit, ...) are DEBUG; what says SOURCE or the machine is
/// in trouble (I/O errors, no space, no memory, out of descriptors) is WARN.
pub const fn default_level(errno: i32) -> Level {
    match errno {
        libc::EIO | libc::ENOSPC | libc::EDQUOT | libc::ENOMEM | libc::EMFILE | libc::ENFILE => {
            Level::WARN
        }
        _ => Level::DEBUG,
    }
}

impl Error {
    /// `errno` with no message beyond its strerror text, at its default level.
    pub const fn errno(errno: i32) -> Error {
        Error {
            errno,
            level: default_level(errno),
            message: Cow::Borrowed(""),
        }
    }

    /// `errno` with a message, at the default level.
    pub fn new(errno: i32, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            message: message.into(),
            ..Error::errno(errno)
        }
    }

    /// The same error logged at `level`.
    pub fn at(mut self, level: Level) -> Error {
        self.level = level;
        self
    }

    /// The errno the request is answered with.
    pub fn raw_errno(&self) -> i32 {
        self.errno
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether this is `errno`.
    pub fn is(&self, errno: i32) -> bool {
        self.errno == errno
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(n) => Error::errno(n),
            // An error of our own making (no errno): EIO, with what it said.
            None => Error::new(libc::EIO, e.to_string()),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::from_raw_os_error(e.errno)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = io::Error::from_raw_os_error(self.errno);
        if self.message.is_empty() {
            write!(f, "{text}")
        } else {
            write!(f, "{}: {text}", self.message)
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_and_io_errors_map_without_a_message() {
        let e = Error::from(io::Error::from_raw_os_error(libc::ENOENT));
        assert!(e.is(libc::ENOENT));
        assert_eq!(e.raw_errno(), libc::ENOENT);
        assert_eq!(e.message(), "");
        assert_eq!(e.level(), Level::DEBUG);
        assert_eq!(
            e.to_string(),
            io::Error::from_raw_os_error(libc::ENOENT).to_string()
        );
        // No errno: EIO, and what the error said is kept.
        let e = Error::from(io::Error::other("torn"));
        assert_eq!(e.raw_errno(), libc::EIO);
        assert!(e.to_string().starts_with("torn: "), "{e}");
        // Back to io::Error: the errno survives.
        let back: io::Error = Error::errno(libc::EXDEV).into();
        assert_eq!(back.raw_os_error(), Some(libc::EXDEV));
    }

    #[test]
    fn levels_follow_the_errno_and_can_be_raised() {
        for n in [
            libc::EIO,
            libc::ENOSPC,
            libc::EDQUOT,
            libc::ENOMEM,
            libc::EMFILE,
        ] {
            assert_eq!(Error::errno(n).level(), Level::WARN, "errno {n}");
        }
        for n in [
            libc::ENOENT,
            libc::EEXIST,
            libc::ENOTEMPTY,
            libc::ENODATA,
            libc::EROFS,
            libc::EFBIG,
            libc::ESTALE,
            libc::EPERM,
        ] {
            assert_eq!(Error::errno(n).level(), Level::DEBUG, "errno {n}");
        }
        let e = Error::new(libc::EINVAL, "bad ctl command").at(Level::ERROR);
        assert_eq!(e.level(), Level::ERROR);
        assert!(e.to_string().starts_with("bad ctl command: "));
    }
}
