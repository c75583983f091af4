# shellcheck shell=bash
# Shared by scripts/bench.sh, scripts/smallfiles-bench.sh and scripts/coherence-bench.sh: the
# work directory, a registry of what a run mounted or started (so cleanup finds it also from
# subshells and on failure), mounting helpers, the libfuse examples and the small C helpers
# (scripts/lib/*.c), and a few figures helpers. Source it, then call bc_init.
#
#   bc_init NAME [BASE]    make the work directory BC_WORK (mktemp under BASE, default /tmp),
#                          install the EXIT/INT/TERM traps
#   bc_resolve_bin         EXTENTFS_BIN (default target/release/extentfs, built if missing)
#
# Cleanup never looks processes up by name: it stops what the registry names, by PID, and
# unmounts what the registry names plus whatever is still mounted under BC_WORK.

BC_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BC_REPO=$(cd "$BC_LIB/../.." && pwd)
BC_WORK=""
BC_NAME=bench
BC_CLEANUP_HOOK=""      # a function the caller wants run first at exit (optional)

bc_die() { echo "$BC_NAME: $*" >&2; exit 1; }

bc_init() {  # name [base]
    BC_NAME=$1
    BC_WORK=$(mktemp -d "${2:-/tmp}/extentfs-$1-XXXXXX")
    : > "$BC_WORK/.registry"
    trap bc_cleanup EXIT
    trap 'exit 130' INT TERM HUP
}

# ---------------------------------------------------------------- the registry
# One line per thing to undo, appended (so subshells can register too):
#   mount KIND PATH PID   KIND: extentfs (unmounted with `extentfs umount`), fuse, plain;
#                         PID (or -) is the daemon to wait for once unmounted
#   pid PID               a process to stop (TERM, then KILL), with its descendants
#   pidfile FILE          the same, for the PID a daemon wrote to FILE (sshd)
#   dir PATH              a directory to remove (outside BC_WORK)
bc_reg() { echo "$*" >> "$BC_WORK/.registry"; }
bc_reg_mount() { bc_reg mount "$1" "$2" "${3:--}"; }

bc_descendants() {  # pid -> its descendants, deepest last
    local p c
    for p in "$@"; do
        for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do
            echo "$c"
            bc_descendants "$c"
        done
    done
}

bc_stop_pid() {  # pid [wait_tenths]: wait for it to exit, then TERM, then KILL (with descendants)
    local p=$1 n=0 max=${2:-0} d
    [ -n "$p" ] && [ "$p" != - ] || return 0
    while kill -0 "$p" 2>/dev/null && [ $n -lt "$max" ]; do sleep 0.1; n=$((n+1)); done
    kill -0 "$p" 2>/dev/null || return 0
    d=$(bc_descendants "$p")
    # shellcheck disable=SC2086
    kill -TERM "$p" $d 2>/dev/null
    n=0
    while kill -0 "$p" 2>/dev/null && [ $n -lt 30 ]; do sleep 0.1; n=$((n+1)); done
    # shellcheck disable=SC2086
    kill -KILL "$p" $d 2>/dev/null
    return 0
}

bc_unmount() {  # kind path
    grep -qF " $2 " /proc/mounts || return 0
    case $1 in
        extentfs)
            timeout 120 "${EXTENTFS_BIN:-$BC_REPO/target/release/extentfs}" umount "$2" >/dev/null 2>&1 ||
                umount "$2" 2>/dev/null || umount -l "$2" 2>/dev/null ;;
        *) umount "$2" 2>/dev/null || umount -l "$2" 2>/dev/null ;;
    esac
    return 0
}

bc_cleanup() {
    local rc=$? kind a b c m
    set +e
    trap - EXIT
    [ -n "$BC_CLEANUP_HOOK" ] && "$BC_CLEANUP_HOOK"
    if [ -n "$BC_WORK" ] && [ -f "$BC_WORK/.registry" ]; then
        # newest first: an extentfs over an sshfs mount goes before the sshfs and its sshd
        while read -r kind a b c; do
            case $kind in
                mount) bc_unmount "$a" "$b"; bc_stop_pid "$c" 300 ;;
                pid) bc_stop_pid "$a" 0 ;;
                pidfile) [ -s "$a" ] && bc_stop_pid "$(cat "$a")" 0 ;;
                dir) rm -rf "$a" ;;
            esac
        done < <(tac "$BC_WORK/.registry")
        # anything still mounted under the work directory (deepest first)
        awk -v w="$BC_WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r |
            while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
        rm -rf "$BC_WORK"
    fi
    exit $rc
}

# ---------------------------------------------------------------- binaries
bc_resolve_bin() {
    if [ -z "${EXTENTFS_BIN:-}" ]; then
        EXTENTFS_BIN=$BC_REPO/target/release/extentfs
        if [ ! -x "$EXTENTFS_BIN" ]; then
            echo "$BC_NAME: building $EXTENTFS_BIN" >&2
            (cd "$BC_REPO" && cargo build --release --quiet)
        fi
    fi
    EXTENTFS_BIN=$(readlink -f "$EXTENTFS_BIN")
    [ -x "$EXTENTFS_BIN" ] || bc_die "$EXTENTFS_BIN is not executable"
    export EXTENTFS_BIN
}

BC_EXAMPLES=/usr/share/doc/libfuse3-dev/examples
bc_build_example() {  # name outdir: build libfuse's example NAME.c into OUTDIR/NAME
    local f
    for f in "$1.c" passthrough_helpers.h; do
        if [ -f "$BC_EXAMPLES/$f" ]; then cp "$BC_EXAMPLES/$f" "$2/"
        elif [ -f "$BC_EXAMPLES/$f.gz" ]; then gzip -dc "$BC_EXAMPLES/$f.gz" > "$2/$f"
        else bc_die "$BC_EXAMPLES/$f not found (Debian's libfuse3-dev)"; fi
    done
    # shellcheck disable=SC2046
    gcc -O2 -Wall -o "$2/$1" "$2/$1.c" $(pkg-config fuse3 --cflags --libs) 2> "$2/$1-build.log" ||
        bc_die "building $1 failed: $(cat "$2/$1-build.log")"
}
bc_build_helper() {  # name outdir: scripts/lib/NAME.c -> OUTDIR/NAME
    gcc -O2 -Wall -o "$2/$1" "$BC_LIB/$1.c" || bc_die "building $1 failed"
}

# ---------------------------------------------------------------- mounts
bc_wait_mounted() {  # path pid
    local n=0
    until grep -qF " $1 " /proc/mounts; do
        if [ "${2:--}" != - ] && ! kill -0 "$2" 2>/dev/null; then
            echo "$BC_NAME: daemon for $1 exited" >&2; return 1
        fi
        n=$((n+1)); [ $n -gt 300 ] && { echo "$BC_NAME: $1 did not come up" >&2; return 1; }
        sleep 0.1
    done
}
bc_pid_of_mount() {  # binary mnt: the process running BINARY with MNT as an argument
    local p pid=""
    for p in /proc/[0-9]*; do
        if [ "$(tr '\0' '\n' 2>/dev/null < "$p/cmdline" | sed -n 1p)" = "$1" ] &&
           tr '\0' '\n' 2>/dev/null < "$p/cmdline" | grep -qxF -- "$2"; then
            pid=${p#/proc/}
        fi
    done
    echo "$pid"
}
# bc_mount_extentfs SRC MNT OPTS [PREFIX...]: mount (the CLI daemonizes and returns once the
# mount is live), register it; BC_PID = the daemon. PREFIX, e.g. `taskset -c 0`, runs the CLI.
bc_mount_extentfs() {
    local src=$1 mnt=$2 opts=$3
    shift 3
    mkdir -p "$mnt"
    "$@" "$EXTENTFS_BIN" "$src" "$mnt" -o "$opts" || return 1
    BC_PID=$(bc_pid_of_mount "$EXTENTFS_BIN" "$mnt")
    [ -n "$BC_PID" ] || { echo "$BC_NAME: no extentfs daemon found for $mnt" >&2; return 1; }
    bc_reg_mount extentfs "$mnt" "$BC_PID"
}
# bc_mount_fg MNT LOG CMD...: start a foreground FUSE daemon, register it, wait for the mount.
bc_mount_fg() {
    local mnt=$1 log=$2
    shift 2
    "$@" > "$log" 2>&1 &
    BC_PID=$!
    bc_reg_mount fuse "$mnt" "$BC_PID"
    bc_wait_mounted "$mnt" "$BC_PID"
}
bc_mount_tmpfs() {  # path size
    mkdir -p "$1"
    mount -t tmpfs -o "size=$2" "extentfs-$BC_NAME" "$1"
    bc_reg_mount plain "$1"
}

# ---------------------------------------------------------------- figures
bc_now() { date +%s%N; }
bc_secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.6f\n", (b - a) / 1e9}'; }
bc_median() { sort -g | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]}'; }
bc_help() {  # script: print the comment block at its top
    sed -n '2,/^set -euo/p' "$1" | sed '$d; s/^# \{0,1\}//'
}

# ---------------------------------------------------------------- small files (shared job)
# bc_smallfiles_run FS REP FILES DIR LOGDIR -> prints "CREATE_S TOTAL_S" (or "failed failed"):
# FILES files of 4 KiB created under a fresh SOURCE in DIR by BC_MKFILES pinned to cpu 0, FS
# one of native, passthrough_ll (BC_PT, default options), extentfs-COHERENCE (cache_size=1G;
# TOTAL includes `extentfs sync`). Daemons pinned to cpu 0; unmounted before it returns.
# With BC_FRESH_FS=1 each run gets a new ext4 filesystem (a loop-mounted image under the work
# directory, mkfs.ext4's defaults): on an ext4 without a journal, as some machines' disks are,
# ext4 does not reuse inodes freed in the last 60-300 s and scans past them (recently_deleted,
# 70% of the daemon's profile in a run after earlier trees were removed), so without it each
# filesystem in a round pays for the deletions of the ones before it.
bc_fresh_fs_default() {  # BC_FRESH_FS=1 when root can make the filesystems
    BC_FRESH_FS=0
    if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null 2>&1; then BC_FRESH_FS=1; fi
}
bc_smallfiles_run() {
    local fs=$1 src=$4/src-$1-$2 mnt=$4/mnt-$1-$2 files=$3 log=$5 t0 t2 c pid fresh=""
    if [ "${BC_FRESH_FS:-0}" = 1 ]; then
        fresh=$4/fresh-$1-$2
        truncate -s 2G "$fresh.img"
        mkfs.ext4 -q -F "$fresh.img" >&2
        mkdir -p "$fresh"
        mount -o loop "$fresh.img" "$fresh"
        bc_reg_mount plain "$fresh"
        src=$fresh/src
    fi
    mkdir -p "$src" "$mnt"
    sync
    case $fs in
        native)
            t0=$(bc_now); c=$(taskset -c 0 "$BC_MKFILES" "$src" "$files"); t2=$(bc_now)
            echo "$c $(bc_secs "$t0" "$t2")"; rm -rf "$src" "$mnt"; bc_smallfiles_unfresh "$fresh"
            return ;;
        passthrough_ll)
            bc_mount_fg "$mnt" "$log/smallfiles-pt.log" taskset -c 0 "$BC_PT" -f -o source="$src" "$mnt" >&2 ;;
        extentfs-*)
            bc_mount_extentfs "$src" "$mnt" "cache_size=1G,coherence=${fs#extentfs-}" taskset -c 0 >&2 ;;
    esac
    pid=$BC_PID
    t0=$(bc_now)
    # A filesystem that fails the creates (passthrough_ll runs out of descriptors past about
    # 20,000 inodes here) is reported as failed, and still unmounted.
    c=$(taskset -c 0 "$BC_MKFILES" "$mnt" "$files" 2>>"$log/smallfiles-errors.txt") || c=failed
    if [ "$c" != failed ] && [ "${fs%%-*}" = extentfs ]; then
        "$EXTENTFS_BIN" sync "$mnt" >/dev/null || c=failed
    fi
    t2=$(bc_now)
    bc_unmount "${fs%%-*}" "$mnt"
    bc_stop_pid "$pid" 300
    if [ "$c" = failed ]; then echo "failed failed"; else echo "$c $(bc_secs "$t0" "$t2")"; fi
    rm -rf "$src" "$mnt"
    bc_smallfiles_unfresh "$fresh"
}
bc_smallfiles_unfresh() {  # the fresh filesystem's mount point ("" = none)
    [ -n "$1" ] || return 0
    bc_unmount plain "$1"
    rm -rf "$1" "$1.img"
}
