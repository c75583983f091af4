//! The fuser session: the filesystem built over SOURCE, mounted (mount(2) as root, else
//! fusermount3), and served by fuser's threads until it is unmounted.
//!
//! Invariants: the core has the session's notifier before the first request is served;
//! a session that could not start leaves nothing mounted.

use super::{mount, ExtentFs, FsConfig};
use crate::cache::CacheContext;
use crate::options::MountConfig;
use std::path::Path;
use std::sync::Arc;

/// A mounted filesystem, not yet serving.
pub struct Mounted {
    session: fuser::Session<ExtentFs>,
}

/// Open SOURCE, mount it at `mountpoint` and set up the session (`cfg.threads` threads, each
/// on its own clone of the /dev/fuse descriptor). The error is the one line the caller
/// reports.
pub fn mount(
    cfg: &MountConfig,
    source: &Path,
    mountpoint: &Path,
    ctx: Arc<CacheContext>,
    fscfg: FsConfig,
) -> Result<Mounted, String> {
    let fs = ExtentFs::new(source, ctx, fscfg)
        .map_err(|e| format!("cannot open SOURCE {}: {e}", source.display()))?;
    let mut fcfg = fuser::Config::default();
    fcfg.n_threads = Some(cfg.threads);
    fcfg.clone_fd = true;
    let acl = if cfg.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    fcfg.acl = acl;
    let install_notifier = fs.notifier_installer();
    let fd = match mount::mount_fuse(source, mountpoint, cfg) {
        Err(e) if mount::use_fusermount(&e) => {
            // Unprivileged (mount(2) refused, or /dev/fuse is 0600): the setuid helper
            // mounts for us and hands over the descriptor.
            tracing::debug!(
                "mounting directly failed ({e}); asking {}",
                mount::FUSERMOUNT
            );
            let opts = mount::fusermount_options(source, cfg);
            mount::mount_with_helper(mount::FUSERMOUNT, &opts, mountpoint).map_err(|e2| {
                std::io::Error::new(
                    e2.kind(),
                    format!("{e}, and through {e2}{}", mount::dev_fuse_hint()),
                )
            })
        }
        r => r,
    };
    let cannot_mount = |e: &dyn std::fmt::Display| {
        format!(
            "cannot mount {} at {}: {e}",
            source.display(),
            mountpoint.display()
        )
    };
    // Nothing was mounted on error: nothing to unmount.
    let fd = fd.map_err(|e| cannot_mount(&e))?;
    let session = match fuser::Session::from_fd(fs, fd, acl, fcfg) {
        Ok(s) => s,
        Err(e) => {
            let _ = mount::unmount(mountpoint);
            return Err(cannot_mount(&e));
        }
    };
    install_notifier(session.notifier());
    Ok(Mounted { session })
}

impl Mounted {
    /// Serve requests until the filesystem is unmounted.
    pub fn run(self) {
        if let Err(e) = self.session.run() {
            tracing::warn!("session ended: {e}");
        }
    }
}
