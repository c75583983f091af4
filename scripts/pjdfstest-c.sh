#!/usr/bin/env bash
# Run the C pjdfstest suite (a checkout the user has built: autoreconf -ifs && ./configure &&
# make pjdfstest) from inside an extentfs mount, with prove(1).
#
#   scripts/pjdfstest-c.sh PJDFSTEST_DIR [prove args...]     (default args: -r PJDFSTEST_DIR/tests)
#
# Environment: EXTENTFS_BIN (default target/release/extentfs, built if missing),
# EXTENTFS_OPTS (default cache_size=64M; allow_other is always added: the suite switches users).
# Prints prove's summary; exit status is prove's.
set -euo pipefail
cd "$(dirname "$0")/.."
PJD=${1:-${PJDFSTEST_DIR:-}}
[ -n "$PJD" ] && [ -x "$PJD/pjdfstest" ] || {
    echo "pjdfstest-c.sh: give the path of a built C pjdfstest checkout" >&2
    exit 2
}
PJD=$(readlink -f "$PJD")
shift || true
BIN=${EXTENTFS_BIN:-target/release/extentfs}
[ -x "$BIN" ] || cargo build --release --quiet
BIN=$(readlink -f "$BIN")
command -v prove >/dev/null || { echo "pjdfstest-c.sh: prove (perl) is required" >&2; exit 2; }
WORK=$(mktemp -d /tmp/extentfs-pjdc-XXXXXX)
mkdir "$WORK/src" "$WORK/mnt"
chmod 755 "$WORK"
"$BIN" "$WORK/src" "$WORK/mnt" -f -o "${EXTENTFS_OPTS:-cache_size=64M},allow_other" \
    2> "$WORK/extentfs.log" &
DAEMON=$!
cleanup() {
    cd /
    mountpoint -q "$WORK/mnt" && umount "$WORK/mnt" || true
    wait "$DAEMON" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 200); do mountpoint -q "$WORK/mnt" && break; sleep 0.05; done
mountpoint -q "$WORK/mnt" || { cat "$WORK/extentfs.log"; exit 1; }
cd "$WORK/mnt"
if [ $# -eq 0 ]; then set -- -r "$PJD/tests"; fi
prove "$@"
