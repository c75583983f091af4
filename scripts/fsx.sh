#!/usr/bin/env bash
# Run fsx and fsstress (from a built xfstests checkout, in its ltp/ directory) against
# extentfs mounts, in cache=pool and cache=kernel, with a pool small enough that eviction and
# writeback run all the time.
#
#   XFSTESTS_DIR=/path/to/xfstests scripts/fsx.sh [--ops N | --duration SECS] [--stress-ops N]
#
# Defaults: fsx 1,000,000 operations per mode; fsstress 4 processes x 100,000 operations.
# Environment: EXTENTFS_BIN (default target/release/extentfs, built if missing),
# EXTENTFS_OPTS (extra -o options, default cache_size=16M,dirty_expire=100ms),
# MODES (default "pool kernel"). Exit status: 0 when every run passed.
set -euo pipefail
cd "$(dirname "$0")/.."
XFSTESTS_DIR=${XFSTESTS_DIR:-${1:-}}
[ -n "$XFSTESTS_DIR" ] && [ -x "$XFSTESTS_DIR/ltp/fsx" ] || {
    echo "fsx.sh: set XFSTESTS_DIR to a built xfstests checkout (ltp/fsx, ltp/fsstress)" >&2
    exit 2
}
[ $# -gt 0 ] && [ "$1" = "$XFSTESTS_DIR" ] && shift
OPS=1000000; DURATION=""; STRESS_OPS=100000; STRESS_PROCS=4
while [ $# -gt 0 ]; do
    case "$1" in
        --ops) OPS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --stress-ops) STRESS_OPS=$2; shift 2 ;;
        --stress-procs) STRESS_PROCS=$2; shift 2 ;;
        *) echo "fsx.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
BIN=${EXTENTFS_BIN:-target/release/extentfs}
[ -x "$BIN" ] || cargo build --release --quiet
BIN=$(readlink -f "$BIN")
OPTS=${EXTENTFS_OPTS:-cache_size=16M,dirty_expire=100ms}
MODES=${MODES:-pool kernel}
WORK=$(mktemp -d /tmp/extentfs-fsx-XXXXXX)
PIDS=()
cleanup() {
    for m in "$WORK"/*/mnt; do
        mountpoint -q "$m" 2>/dev/null && umount "$m" 2>/dev/null || true
    done
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

status=0
summary=()
run_mount() { # mode name -> starts a foreground daemon, sets MNT
    local mode=$1 name=$2
    mkdir -p "$WORK/$name/src" "$WORK/$name/mnt"
    "$BIN" "$WORK/$name/src" "$WORK/$name/mnt" -f -o "$OPTS,cache=$mode" \
        2> "$WORK/$name.log" &
    PIDS+=($!)
    DAEMON=$!
    for _ in $(seq 200); do mountpoint -q "$WORK/$name/mnt" && break; sleep 0.05; done
    mountpoint -q "$WORK/$name/mnt" || { echo "fsx.sh: mount failed"; cat "$WORK/$name.log"; exit 1; }
    MNT="$WORK/$name/mnt"
}
# Peak number of descriptors the daemon held, sampled every second while a run goes on.
watch_fds() { # pid outfile
    local peak=0 n
    while kill -0 "$1" 2>/dev/null; do
        n=$(ls "/proc/$1/fd" 2>/dev/null | wc -l)
        [ "$n" -gt "$peak" ] && { peak=$n; echo "$peak" > "$2"; }
        sleep 1
    done
}
stop_mount() { # sets UNMOUNT to what happened
    UNMOUNT="clean unmount"
    umount "$MNT" || { UNMOUNT="UNMOUNT FAILED"; status=1; }
    local rc=0
    wait "$DAEMON" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "fsx.sh: daemon exited with $rc"
        UNMOUNT="daemon exited with $rc"
        status=1
    fi
}
# What the daemon's log says about the run just stopped: error lines, and opens that failed
# for lack of descriptors inside the daemon (a failure of the run).
daemon_report() { # name
    local errors emfile
    errors=$(grep -c ' ERROR ' "$WORK/$1.log" || true)
    emfile=$(grep -c 'Too many open files' "$WORK/$1.log" || true)
    if [ "$emfile" -gt 0 ]; then
        status=1
        echo "fsx.sh: the daemon ran out of descriptors $emfile times in $1"
    fi
    echo "daemon: $errors error lines, $emfile EMFILE"
}

for mode in $MODES; do
    # fsx: mmap reads/writes, fallocate, punch hole, zero range, copy range, collapse/insert
    # range (all that the kernel passes to FUSE) are on by default; -N ops, -S seed.
    run_mount "$mode" "fsx-$mode"
    args=(-q -S 1 -l 2097152 -o 131072 -P "$WORK")
    if [ -n "$DURATION" ]; then args+=(--duration="$DURATION"); else args+=(-N "$OPS"); fi
    t0=$(date +%s)
    if "$XFSTESTS_DIR/ltp/fsx" "${args[@]}" "$MNT/fsx.file" > "$WORK/fsx-$mode.out" 2>&1; then
        r=PASS
    else
        r=FAIL; status=1; tail -30 "$WORK/fsx-$mode.out"
    fi
    summary+=("fsx cache=$mode: $r ($(grep -c . "$WORK/fsx-$mode.out" || true) output lines, $(( $(date +%s) - t0 )) s, ${DURATION:+${DURATION}s}${DURATION:-$OPS ops})")
    # The same with O_DIRECT (aligned I/O, no mmap).
    t0=$(date +%s)
    dargs=(-q -S 2 -Z -R -W -r 4096 -w 4096 -t 4096 -l 2097152 -o 131072 -P "$WORK")
    if [ -n "$DURATION" ]; then dargs+=(--duration="$DURATION"); else dargs+=(-N $((OPS / 4))); fi
    if "$XFSTESTS_DIR/ltp/fsx" "${dargs[@]}" "$MNT/fsx.direct" > "$WORK/fsxd-$mode.out" 2>&1; then
        r=PASS
    else
        r=FAIL; status=1; tail -30 "$WORK/fsxd-$mode.out"
    fi
    summary+=("fsx O_DIRECT cache=$mode: $r ($(( $(date +%s) - t0 )) s)")
    stop_mount
    summary+=("  fsx mount cache=$mode: $UNMOUNT; $(daemon_report "fsx-$mode")")

    run_mount "$mode" "stress-$mode"
    watch_fds "$DAEMON" "$WORK/stress-$mode.fds" &
    t0=$(date +%s)
    if "$XFSTESTS_DIR/ltp/fsstress" -d "$MNT/stress" -p "$STRESS_PROCS" -n "$STRESS_OPS" -s 1 \
        > "$WORK/stress-$mode.out" 2>&1; then
        r=PASS
    else
        r=FAIL; status=1; tail -30 "$WORK/stress-$mode.out"
    fi
    t=$(( $(date +%s) - t0 ))
    stop_mount
    summary+=("fsstress cache=$mode: $r ($STRESS_PROCS x $STRESS_OPS ops, $t s, $UNMOUNT; $(daemon_report "stress-$mode"), peak $(cat "$WORK/stress-$mode.fds" 2>/dev/null || echo '?') descriptors)")
done
printf '%s\n' "${summary[@]}"
exit $status
