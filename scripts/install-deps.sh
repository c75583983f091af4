#!/usr/bin/env bash
# Install what building, mounting and testing extentfs need on a Debian machine:
# fuse3 (mount.fuse3, fusermount3, /etc/fuse.conf), attr (getfattr/setfattr), util-linux
# (mount, setpriv), and the Rust toolchain check; more Debian packages may be named as
# arguments (the tests name sshfs and openssh-server). Idempotent; quiet when all is present.
set -euo pipefail

need=()
# Add a package to install once, however many missing commands it provides.
want() {
    local p
    for p in "${need[@]}"; do
        [ "$p" = "$1" ] && return 0
    done
    need+=("$1")
}
command -v fusermount3 >/dev/null 2>&1 || want fuse3
command -v mount.fuse3 >/dev/null 2>&1 || want fuse3
command -v getfattr >/dev/null 2>&1 || want attr
command -v setpriv >/dev/null 2>&1 || want util-linux
# Packaging and its tests: dpkg-deb, man -l (man-db, groff-base), strip/objdump (binutils),
# script(1) for the pseudo-terminal test (bsdutils).
command -v dpkg-deb >/dev/null 2>&1 || want dpkg
command -v man >/dev/null 2>&1 || want man-db
command -v groff >/dev/null 2>&1 || want groff-base
command -v objdump >/dev/null 2>&1 || want binutils
command -v python3 >/dev/null 2>&1 || want python3
for extra in "$@"; do
    dpkg -s "$extra" >/dev/null 2>&1 || want "$extra"
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

# The OpenMetrics parser the stats tests check `extentfs stats --prometheus` with.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "install-deps: installing the Python prometheus_client"
    python3 -m pip install --quiet prometheus_client 2>/dev/null ||
        { [ "$(id -u)" -eq 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-prometheus-client >/dev/null; } ||
        { echo "install-deps: cannot install prometheus_client (pip or python3-prometheus-client)" >&2; exit 1; }
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
    echo "install-deps: adding user_allow_other to /etc/fuse.conf (lets users mount with allow_other)"
    echo user_allow_other >> /etc/fuse.conf
fi
command -v cargo >/dev/null || { echo "install-deps: cargo (Rust) is required" >&2; exit 1; }
