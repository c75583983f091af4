#!/usr/bin/env bash
# Build the Debian package of extentfs: target/debian/extentfs_VERSION_ARCH.deb
#   scripts/package.sh [--bin PATH] [--out DIR]
# --bin packages an already built binary (default: cargo build --release); --out puts the
# .deb elsewhere. The package holds /usr/bin/extentfs, the man page extentfs(8), bash, zsh
# and fish completions, the systemd unit template extentfs@.service and an example
# instance file; it depends on fuse3.
#
# Built with dpkg-deb from a staged tree rather than cargo-deb: dpkg-deb ships with every
# Debian system, whereas cargo-deb would be compiled from source first (minutes on small
# CI machines) for what is a dozen lines of staging here.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=""
out=target/debian
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: scripts/package.sh [--bin PATH] [--out DIR]" >&2; exit 2 ;;
    esac
done
for tool in dpkg-deb gzip; do
    command -v "$tool" >/dev/null || { echo "package.sh: $tool is required" >&2; exit 1; }
done
if [ -z "$bin" ]; then
    echo "== cargo build --release"
    cargo build --release --quiet
    bin=target/release/extentfs
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
mkdir -p "$out"
stage=$(mktemp -d "${TMPDIR:-/tmp}/extentfs-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$bin" "$stage/usr/bin/extentfs"
if command -v strip >/dev/null; then
    strip --strip-unneeded "$stage/usr/bin/extentfs"
fi
gen="$stage/gen"
"$stage/usr/bin/extentfs" generate man "$gen" >/dev/null
"$stage/usr/bin/extentfs" generate completions "$gen" >/dev/null
install -d "$stage/usr/share/man/man8"
gzip -9n -c "$gen/extentfs.8" > "$stage/usr/share/man/man8/extentfs.8.gz"
chmod 0644 "$stage/usr/share/man/man8/extentfs.8.gz"
install -D -m 0644 "$gen/extentfs.bash" "$stage/usr/share/bash-completion/completions/extentfs"
install -D -m 0644 "$gen/_extentfs" "$stage/usr/share/zsh/vendor-completions/_extentfs"
install -D -m 0644 "$gen/extentfs.fish" "$stage/usr/share/fish/vendor_completions.d/extentfs.fish"
rm -rf "$gen"
install -D -m 0644 "packaging/extentfs@.service" "$stage/usr/lib/systemd/system/extentfs@.service"
install -D -m 0644 packaging/instance.conf "$stage/usr/share/doc/extentfs/examples/instance.conf"
install -d -m 0755 "$stage/etc/extentfs"
install -m 0644 README.md "$stage/usr/share/doc/extentfs/README.md"
install -m 0644 docs/usage.md docs/deployment.md docs/stats.md "$stage/usr/share/doc/extentfs/"
cat > "$stage/usr/share/doc/extentfs/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: extentfs
License: MIT or Apache-2.0
COPYRIGHT

# The newest glibc symbol version the binary needs.
glibc=$(objdump -T "$stage/usr/bin/extentfs" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1 || true)
depends="fuse3"
if [ -n "$glibc" ]; then
    depends="libc6 (>= $glibc), $depends"
fi
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
install -d "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: extentfs
Version: $version
Architecture: $arch
Maintainer: extentfs developers <extentfs@localhost>
Installed-Size: $size
Depends: $depends
Section: utils
Priority: optional
Description: FUSE filesystem with its own extent-mapped page cache
 extentfs mounts a directory (SOURCE) somewhere else and passes every byte of
 file data through a fixed-size, huge-page backed page pool with per-file
 extent trees, background writeback that coalesces dirty ranges into large
 writes, and eviction of clean extents when the pool fills. Mount it with
 mount -t fuse.extentfs, an fstab line, or the extentfs@.service template.
CONTROL

deb="$out/extentfs_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
