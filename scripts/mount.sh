#!/usr/bin/env bash
# Build extentfs (release) and mount SOURCE at MOUNTPOINT: the one command a new user runs.
#   scripts/mount.sh SOURCE MOUNTPOINT [-o options]
# Installs what it needs first (fuse3, attr) and, as root, the binary as /usr/local/bin/extentfs.
# Unmount with: umount MOUNTPOINT
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: scripts/mount.sh SOURCE MOUNTPOINT [-o options]" >&2
    exit 2
fi
src=$1; mnt=$2; shift 2
# Fail before anything is built, installed or created.
if [ ! -d "$src" ]; then
    echo "mount.sh: SOURCE $src is not a directory" >&2
    exit 1
fi
scripts/install-deps.sh
echo "mount.sh: building extentfs (cargo build --release)"
cargo build --release --quiet
# On sh's default PATH, so `mount -t fuse.extentfs` and fstab lines find it (mount.fuse3 runs
# it through /bin/sh with a default PATH).
if [ "$(id -u)" -eq 0 ]; then
    echo "mount.sh: installing target/release/extentfs as /usr/local/bin/extentfs"
    install -m 0755 target/release/extentfs /usr/local/bin/extentfs
fi
if [ ! -d "$mnt" ]; then
    echo "mount.sh: creating MOUNTPOINT $mnt"
    mkdir -p "$mnt"
fi
./target/release/extentfs "$src" "$mnt" "$@"
echo "mount.sh: mounted $src at $mnt; unmount with: umount $mnt"
