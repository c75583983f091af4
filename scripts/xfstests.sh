#!/usr/bin/env bash
# Run xfstests (FSTYP=fuse) against extentfs and compare the failures with a list of known ones.
#
#   scripts/xfstests.sh [XFSTESTS_DIR] [CHECK_ARGS...]
#
#   XFSTESTS_DIR    a built xfstests checkout (or the XFSTESTS_DIR environment variable).
#                   xfstests is not part of this repo and this script does not build it; see its
#                   README ("BUILDING THE FSQA SUITE"): install the listed packages, then `make`.
#   CHECK_ARGS      what ./check runs: a group (-g generic/quick, the default), a list of tests
#                   (generic/001 generic/013), -x GROUP to exclude, ...
#
# Environment (all optional):
#   EXTENTFS_BIN    the binary (default: target/release/extentfs, built by `cargo build --release`
#                   when missing)
#   EXTENTFS_OPTS   extra extentfs mount options for every mount, e.g. "cache_size=256M,cache=kernel"
#                   (default: cache_size=256M)
#   TEST_TIMEOUT    seconds one test may run before the watchdog kills it (default 900)
#   RUN_TIMEOUT     seconds the whole run may take before it is stopped (default 3600)
#   EXPECTED        known failures, one "generic/NNN  reason" a line, '#' comments
#                   (default: fs-tests/xfstests-expected.txt)
#   WORK_DIR        where backing dirs, mount points, config, results and logs go (default: a new
#                   /tmp/extentfs-xfstests-XXXXXX; must not contain a '.', see below)
#   KEEP_BACKING=1  keep the backing directories (test-src, scratch-src) after the run
#
# Exit status: 0 when every failure is in EXPECTED; 1 when a test outside it failed or the run
# was stopped by RUN_TIMEOUT; 2 on a setup error.
#
# How the run is set up (the non-obvious parts):
# - Config: a generated HOST_OPTIONS file with FSTYP=fuse, TEST_DEV/SCRATCH_DEV = backing
#   directories, TEST_DIR/SCRATCH_MNT = mount points, FUSE_MOUNT_OPTIONS="-o allow_other,
#   default_permissions". Results go to WORK_DIR/results (RESULT_BASE), not into the checkout.
# - Finding the binary: xfstests mounts with `mount -t fuse$FUSE_SUBTYP SRC DIR`. We set
#   FUSE_SUBTYP=.WORK_DIR/bin/extentfs, so the type is `fuse./abs/path/extentfs`: mount(8) finds no
#   /sbin/mount.fuse.<that> and falls back to mount.fuse3, which runs the absolute path. Nothing is
#   installed system-wide. mount(8) strips the type at its LAST '.' when looking for a helper, so
#   the path must contain no '.' (hence the WORK_DIR rule). WORK_DIR/bin/extentfs is a two-line
#   wrapper adding EXTENTFS_OPTS and log_file=WORK_DIR/extentfs.log.
# - Remounts: `mount -o remount,ro` through mount.fuse3 would start a second daemon, so MOUNT_PROG
#   is a wrapper that adds -i (no helper: the kernel remounts) when the options say remount.
# - Unmounts: xfstests unmounts by device (`umount SRC`), and SRC is itself a directory, which
#   umount(8) takes for a mount point ("not mounted"); UMOUNT_PROG runs "umount -c" (no
#   canonicalisation), which looks SRC up as a source, and then waits for that mount's daemon
#   to exit: a FUSE umount returns before the daemon has let go of SOURCE.
# - The fs type: extentfs mounts with type `fuse.extentfs` (the usual fuse.SUBTYPE form, which
#   `mount -t fuse.extentfs`, findmnt and fstab users expect). xfstests derives the type of a
#   mounted device from `$DF_PROG` (df -T -P) in _fs_type() and, at startup, aborts unless it
#   equals $FSTYP ("fuse"); FUSE_SUBTYP is only used to build the mount command, and xfstests
#   (checked at kdave/xfstests 63a29724) maps only fuse.glusterfs and fuse.ceph-fuse back to
#   their FSTYP. So DF_PROG is a wrapper around df that rewrites `fuse.extentfs` to `fuse` in the
#   type column for sources under WORK_DIR only: the same mapping common/rc does for glusterfs,
#   scoped to this run's mounts, with no change to xfstests or to extentfs.
#   (The other type checks in common/rc, _is_dev_mounted/findmnt -t, are only used by fsck paths,
#   which FSTYP=fuse skips.)
# - Watchdog: a background loop kills a test (its whole process tree, by PID) that runs longer
#   than TEST_TIMEOUT; if its processes are still there 30 s later (stuck in the FUSE mount), it
#   kills this run's extentfs daemons, which aborts their connections; check then records the test
#   as failed and remounts for the next. At RUN_TIMEOUT it stops the current test and check.
# - Cleanup: unmounts every mount under WORK_DIR and kills the extentfs daemons whose command line
#   names WORK_DIR (PIDs read from /proc), nothing else.
# - Environment limits seen here: root cannot raise `ulimit -f` back (generic/394, 564 fail on
#   every fs). The script creates the fsgqa, fsgqa2 and 123456-fsgqa users xfstests asks for.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -gt 0 ] && [ -d "$1" ]; then
    XFSTESTS_DIR=$1
    shift
fi
: "${XFSTESTS_DIR:=}"
check_args=("$@")
[ ${#check_args[@]} -eq 0 ] && check_args=(-g generic/quick)

EXTENTFS_OPTS=${EXTENTFS_OPTS-cache_size=256M}
TEST_TIMEOUT=${TEST_TIMEOUT:-900}
RUN_TIMEOUT=${RUN_TIMEOUT:-3600}
EXPECTED=${EXPECTED:-$repo/fs-tests/xfstests-expected.txt}

die() { echo "xfstests.sh: $*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "xfstests must run as root"
[ -n "$XFSTESTS_DIR" ] || die "usage: $0 [XFSTESTS_DIR] [CHECK_ARGS...] (or set XFSTESTS_DIR)"
XFSTESTS_DIR=$(cd "$XFSTESTS_DIR" && pwd) || die "XFSTESTS_DIR: no such directory"
[ -x "$XFSTESTS_DIR/check" ] || die "$XFSTESTS_DIR/check not found: not an xfstests checkout"
[ -x "$XFSTESTS_DIR/ltp/fsx" ] || die "$XFSTESTS_DIR is not built (no ltp/fsx): run make there"
command -v mount.fuse3 >/dev/null 2>&1 || die "mount.fuse3 missing: apt-get install fuse3"

if [ -z "${EXTENTFS_BIN:-}" ]; then
    EXTENTFS_BIN=$repo/target/release/extentfs
    if [ ! -x "$EXTENTFS_BIN" ]; then
        echo "== cargo build --release"
        (cd "$repo" && env -u CARGO_TARGET_DIR cargo build --release --quiet) || die "build failed"
    fi
fi
[ -x "$EXTENTFS_BIN" ] || die "EXTENTFS_BIN=$EXTENTFS_BIN is not executable"
EXTENTFS_BIN=$(readlink -f "$EXTENTFS_BIN")

if [ -n "${WORK_DIR:-}" ]; then
    mkdir -p "$WORK_DIR" || die "cannot create WORK_DIR=$WORK_DIR"
    W=$(cd "$WORK_DIR" && pwd -P)
else
    W=$(mktemp -d /tmp/extentfs-xfstests-XXXXXX) || die "mktemp failed"
    W=$(cd "$W" && pwd -P)
fi
# Tests run commands as other users (fsgqa, ids mapped from a user namespace: generic/318):
# they must be able to reach the mount points, as under /mnt on a test machine.
chmod 0755 "$W" || die "cannot chmod $W"
case "$W" in *.*) die "WORK_DIR=$W contains a '.', which mount(8) would cut the fuse type at";; esac
for d in test-src scratch-src test scratch; do
    if grep -q " $W/$d " /proc/self/mountinfo; then die "$W/$d is already a mount point"; fi
done
rm -rf "$W/test-src" "$W/scratch-src" "$W/results"
mkdir -p "$W/test-src" "$W/scratch-src" "$W/test" "$W/scratch" "$W/bin" "$W/results" ||
    die "cannot prepare $W"
[ -z "$(ls -A "$W/test")" ] && [ -z "$(ls -A "$W/scratch")" ] || die "mount points under $W are not empty"
# The users xfstests runs commands as (its README: fsgqa, fsgqa2 and 123456-fsgqa, with home
# directories); without them about 24 tests are "not run". Created once and kept, as on any
# machine set up for xfstests.
for u in fsgqa fsgqa2 123456-fsgqa; do
    if ! id "$u" >/dev/null 2>&1; then
        useradd --badname -m "$u" >/dev/null 2>&1 || echo "xfstests.sh: could not create user $u" >&2
    fi
done

# --- wrappers -------------------------------------------------------------------------------
opts="log_file=$W/extentfs.log"
[ -n "$EXTENTFS_OPTS" ] && opts="$EXTENTFS_OPTS,$opts"
cat >"$W/bin/extentfs" <<EOF
#!/bin/sh
# Started by mount.fuse3 as: extentfs SRC DIR -o OPTS. Adds this run's options.
exec '$EXTENTFS_BIN' "\$@" -o '$opts'
EOF
mount_bin=$(type -P mount)
umount_bin=$(type -P umount)
df_bin=$(type -P df)
cat >"$W/bin/mount" <<EOF
#!/bin/bash
# MOUNT_PROG: a remount goes straight to the kernel (-i); through mount.fuse3 it would start a
# second daemon on the mounted directory.
for a in "\$@"; do
    case "\$a" in *remount*) exec '$mount_bin' -i "\$@" ;; esac
done
exec '$mount_bin' "\$@"
EOF
cat >"$W/bin/df" <<EOF
#!/bin/bash
# DF_PROG: show this run's extentfs mounts (type fuse.extentfs) with the type xfstests expects
# for FSTYP=fuse, as common/rc's _fs_type does for fuse.glusterfs.
set -o pipefail
'$df_bin' "\$@" | awk -v w='$W/' '\$2 == "fuse.extentfs" && index(\$1, w) == 1 { \$2 = "fuse" } { print }'
EOF
cat >"$W/bin/umount" <<EOF
#!/bin/bash
# UMOUNT_PROG: umount -c, then wait (up to 60 s) for the daemon of that mount to exit. A FUSE
# umount returns before the daemon has closed its SOURCE descriptors; xfstests, written for
# block devices, reuses or refills SOURCE at once (generic/105 after 103 saw ENOSPC).
# The daemon is looked up with pgrep (fast: generic/604 mounts again 10 ms after starting an
# unmount), before the unmount, so that a daemon started by that next mount is not waited for.
pids=()
for a in "\$@"; do
    case "\$a" in -*) continue ;; esac
    pids+=(\$(pgrep -f -- "^$EXTENTFS_BIN \${a%/} |^$EXTENTFS_BIN [^ ]* \${a%/} "))
done
'$umount_bin' -c "\$@" || exit
for p in "\${pids[@]}"; do
    for _ in \$(seq 600); do kill -0 "\$p" 2>/dev/null || break; sleep 0.1; done
done
EOF
chmod +x "$W/bin/extentfs" "$W/bin/mount" "$W/bin/df" "$W/bin/umount"

cat >"$W/local.config" <<EOF
# Generated by extentfs scripts/xfstests.sh
export FSTYP=fuse
export FUSE_SUBTYP=.$W/bin/extentfs
export TEST_DEV=$W/test-src
export TEST_DIR=$W/test
export SCRATCH_DEV=$W/scratch-src
export SCRATCH_MNT=$W/scratch
export FUSE_MOUNT_OPTIONS="-o allow_other,default_permissions"
export MOUNT_PROG=$W/bin/mount
export UMOUNT_PROG=$W/bin/umount
export DF_PROG="$W/bin/df -T -P"
export RESULT_BASE=$W/results
EOF

# --- cleanup: only this run's mounts and daemons -----------------------------------------------
our_mounts() { # mount points under $W, deepest first
    awk -v w="$W/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
our_daemons() { # extentfs daemons whose command line names $W
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$EXTENTFS_BIN" ] || continue
        { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF "$W/" && echo "${p#/proc/}"
    done
}
marker="EXTENTFS_XFSTESTS_RUN=$W"
marked_procs() { # processes started under check (they inherit the marker)
    local p
    for p in /proc/[0-9]*; do
        { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "$marker" && echo "${p#/proc/}"
    done
}
descendants() { # all descendants of $1
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { kids[$2] = kids[$2] " " $1 }
        END { n = split(kids[root], q); while (n > 0) { p = q[n--]; print p
              m = split(kids[p], k); for (i = 1; i <= m; i++) q[++n] = k[i] } }'
}

check_pid=
watch_pid=
tail_pid=
cleanup() {
    trap - EXIT INT TERM
    [ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null
    if [ -n "$check_pid" ] && kill -0 "$check_pid" 2>/dev/null; then
        kill -TERM "$check_pid" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$check_pid" 2>/dev/null || break; sleep 1; done
        kill -KILL "$check_pid" 2>/dev/null
    fi
    local p
    for p in $(marked_procs); do
        [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$EXTENTFS_BIN" ] || kill -KILL "$p" 2>/dev/null
    done
    for m in $(our_mounts); do
        "$umount_bin" "$m" 2>/dev/null || "$umount_bin" -l "$m" 2>/dev/null
    done
    local pids
    pids=$(our_daemons)
    if [ -n "$pids" ]; then
        kill -TERM $pids 2>/dev/null
        for _ in $(seq 20); do [ -z "$(our_daemons)" ] && break; sleep 0.5; done
        pids=$(our_daemons)
        [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    fi
    [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
    if [ "${KEEP_BACKING:-0}" != 1 ] && [ -z "$(our_mounts)" ]; then
        rm -rf "$W/test-src" "$W/scratch-src"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- watchdog ----------------------------------------------------------------------------------
watchdog() {
    local start=$SECONDS p t cmd victims
    local -A killed=()
    while kill -0 "$check_pid" 2>/dev/null; do
        sleep 5
        for p in $(pgrep -f '^(/usr)?(/bin/)?bash [^ ]*tests/[^/ ]+/[0-9]+'); do
            { tr '\0' '\n' <"/proc/$p/environ"; } 2>/dev/null | grep -qxF "$marker" || continue
            cmd=$({ tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null) || continue
            [[ "$cmd" =~ ^(/usr)?(/bin/)?bash\ [^\ ]*tests/([^/\ ]+/[0-9]+) ]] || continue
            t=$(ps -o etimes= -p "$p" 2>/dev/null | tr -d ' ') || continue
            [ -n "$t" ] || continue
            if [ "$t" -gt "$TEST_TIMEOUT" ] || [ $((SECONDS - start)) -gt "$RUN_TIMEOUT" ]; then
                [ -n "${killed[$p]:-}" ] && continue
                killed[$p]=1
                echo "${BASH_REMATCH[3]} ${t}s" >>"$W/watchdog-killed"
                echo "watchdog: killing ${BASH_REMATCH[3]} after ${t}s" >&2
                victims="$(descendants "$p") $p"
                kill -KILL $victims 2>/dev/null
                ( sleep 30
                  for v in $victims; do
                      if kill -0 "$v" 2>/dev/null; then
                          echo "watchdog: processes stuck after kill; killing this run's daemons" >&2
                          kill -KILL $(our_daemons) 2>/dev/null
                          break
                      fi
                  done ) &
            fi
        done
        if [ $((SECONDS - start)) -gt "$RUN_TIMEOUT" ] && [ ! -e "$W/run-capped" ]; then
            echo "watchdog: RUN_TIMEOUT=${RUN_TIMEOUT}s reached; stopping check" >&2
            touch "$W/run-capped"
            kill -TERM "$check_pid" 2>/dev/null
        fi
        if [ -e "$W/run-capped" ] && [ $((SECONDS - start)) -gt $((RUN_TIMEOUT + 120)) ]; then
            kill -KILL "$check_pid" 2>/dev/null
        fi
    done
}

# --- run ---------------------------------------------------------------------------------------
echo "== xfstests: $XFSTESTS_DIR, ./check ${check_args[*]}"
echo "== extentfs: $EXTENTFS_BIN -o $opts"
echo "== work dir: $W (config: $W/local.config, results: $W/results)"
rm -f "$W/watchdog-killed" "$W/run-capped"
: >"$W/check.out"
t0=$SECONDS
(cd "$XFSTESTS_DIR" && exec env "$marker" HOST_OPTIONS="$W/local.config" ./check "${check_args[@]}") \
    >"$W/check.out" 2>&1 </dev/null &
check_pid=$!
watchdog &
watch_pid=$!
tail -n +1 -f --pid="$check_pid" "$W/check.out" &
tail_pid=$!
wait "$check_pid"
check_rc=$?
wait "$tail_pid" 2>/dev/null
tail_pid=
kill "$watch_pid" 2>/dev/null
wait "$watch_pid" 2>/dev/null
watch_pid=
elapsed=$((SECONDS - t0))

# --- results -----------------------------------------------------------------------------------
out=$W/check.out
list_of() { grep "^$1" "$out" | tail -1 | sed "s/^$1 *//" | tr ' ' '\n' | sed '/^$/d' | sort -u; }
if grep -q '^Ran:' "$out"; then
    ran=$(list_of 'Ran:')
    notrun=$(list_of 'Not run:')
    failed=$(list_of 'Failures:')
else # no summary (check killed): read the per-test lines
    ids='^[a-z0-9_-]+/[0-9]+'
    ran=$(grep -E "$ids" "$out" | grep -v '\[expunged\]' | awk '{print $1}' | sort -u)
    notrun=$(grep -E "$ids" "$out" | grep '\[not run\]' | awk '{print $1}' | sort -u)
    failed=$(grep -E "$ids" "$out" | grep -E '\[failed|output mismatch|_check_' | awk '{print $1}' | sort -u)
fi
count() { [ -z "$1" ] && echo 0 || echo "$1" | wc -l; }
passed=$(comm -23 <(comm -23 <(echo "$ran") <(echo "$notrun")) <(echo "$failed") | sed '/^$/d')
n_pass=$(count "$passed")
n_fail=$(count "$failed")
n_notrun=$(count "$notrun")

expected=
# A line whose reason says "cache=kernel only" counts only when this run uses cache=kernel.
only_kernel() { case ",$EXTENTFS_OPTS," in *,cache=kernel,*) cat ;; *) grep -v 'cache=kernel only' ;; esac; }
[ -f "$EXPECTED" ] && expected=$(sed -e 's/#.*//' "$EXPECTED" | only_kernel | awk 'NF { print $1 }' | sort -u)
unexpected=$(comm -23 <(echo "$failed") <(echo "$expected") | sed '/^$/d')
now_passing=$(comm -12 <(echo "$passed") <(echo "$expected") | sed '/^$/d')
if [ -n "$now_passing" ]; then # a flaky one passing proves nothing
    flaky=$(sed -e 's/#.*//' "$EXPECTED" | awk '/intermittent/ { print $1 }' | sort -u)
    now_passing=$(comm -23 <(echo "$now_passing") <(echo "$flaky") | sed '/^$/d')
fi

echo
echo "== extentfs xfstests summary (${elapsed}s, ./check ${check_args[*]}, check exit $check_rc)"
echo "passed: $n_pass   failed: $n_fail   not run: $n_notrun"
if [ -n "$failed" ]; then
    echo "failures:"
    for t in $failed; do
        reason=
        [ -f "$EXPECTED" ] && reason=$(awk -v t="$t" '$1 == t { $1 = ""; sub(/^ +/, ""); print; exit }' "$EXPECTED")
        note=
        [ -f "$W/watchdog-killed" ] && grep -q "^$t " "$W/watchdog-killed" && note=" (killed by watchdog)"
        if [ -n "$reason" ]; then
            printf '  %-14s expected: %s%s\n' "$t" "$reason" "$note"
        else
            printf '  %-14s UNEXPECTED%s  (%s/results/%s.out.bad, .full)\n' "$t" "$note" "$W" "$t"
        fi
    done
fi
[ -n "$now_passing" ] && echo "expected to fail but passed (remove from $EXPECTED):" $now_passing
echo "logs: $W/check.out, $W/results/, $W/extentfs.log"
# The daemons' own complaints (e.g. writeback errors) can reveal bugs a passing test hides.
if [ -s "$W/extentfs.log" ] && grep -q ' ERROR ' "$W/extentfs.log"; then
    echo "extentfs.log has $(grep -c ' ERROR ' "$W/extentfs.log") ERROR lines; first ones:"
    grep ' ERROR ' "$W/extentfs.log" | head -3 | cut -c1-200 | sed 's/^/  /'
fi
status=0
if [ -e "$W/run-capped" ]; then
    echo "RUN STOPPED at RUN_TIMEOUT=${RUN_TIMEOUT}s: the test list was not completed"
    status=1
fi
if [ -n "$unexpected" ]; then
    echo "UNEXPECTED FAILURES:" $unexpected
    status=1
elif [ -z "$ran" ]; then
    echo "no test ran (see $W/check.out)"
    status=1
fi
exit $status
