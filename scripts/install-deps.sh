#!/usr/bin/env bash
# Install what building, mounting and testing extentfs need on a Debian machine:
# fuse3 (mount.fuse3, fusermount3, /etc/fuse.conf), attr (getfattr/setfattr), util-linux
# (mount, setpriv), and the Rust toolchain check; more Debian packages may be named as
# arguments (the tests name sshfs and openssh-server). Idempotent; quiet when all is present.
set -euo pipefail

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v mount.fuse3 >/dev/null 2>&1 || need+=(fuse3)
command -v getfattr >/dev/null 2>&1 || need+=(attr)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
for extra in "$@"; do
    dpkg -s "$extra" >/dev/null 2>&1 || need+=("$extra")
done

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: need root to install: ${need[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Packages that ship a service (openssh-server: tests start their own sshd on a
    # private port) must not start it: a policy-rc.d that refuses, for the install only.
    policy=/usr/sbin/policy-rc.d
    own_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=true
    fi
    rc=0
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || rc=$?
    if $own_policy; then rm -f "$policy"; fi
    [ "$rc" -eq 0 ] || { echo "install-deps: apt-get install failed ($rc)" >&2; exit "$rc"; }
fi

if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
if [ ! -e /dev/fuse ]; then
    echo "install-deps: /dev/fuse is missing: this machine cannot run FUSE filesystems" >&2
    exit 1
fi
# allow_other for non-root users needs user_allow_other; harmless for root.
if [ -w /etc/fuse.conf ] && ! grep -q '^user_allow_other' /etc/fuse.conf; then
    echo user_allow_other >> /etc/fuse.conf
fi
command -v cargo >/dev/null || { echo "install-deps: cargo (Rust) is required" >&2; exit 1; }
