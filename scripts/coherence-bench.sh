#!/usr/bin/env bash
# What close-to-open costs: extentfs with coherence=cto (the default) against coherence=none,
# same run, same tmpfs-backed SOURCE layout, both cache modes, fio-free.
#
#   scripts/coherence-bench.sh [--files N] [--rounds R] [--reps K] [--results DIR]
#
# Jobs, each on a tree of N files of 4 KiB (100 per directory) that was read once (cached):
#   open-read-close   every file opened, read whole and closed, R rounds (a small C loop,
#                     scripts/lib/orc.c built here with gcc, so no process start per file)
#   stat-walk         `find TREE -printf '%s'` (a stat of every entry), after the attribute
#                     timeout expired, so every stat asks the daemon
# Every (job, mode) is run K times; the median is reported. The daemons and the client run
# pinned to cpu 0 (docs/benchmarks.md: pinned-together ratios are the stable ones).
#
#   EXTENTFS_BIN=path   binary to test (default: target/release/extentfs, built if missing)
set -euo pipefail
export LC_ALL=C
# shellcheck source-path=SCRIPTDIR source=lib/bench-common.sh
. "$(dirname "$0")/lib/bench-common.sh"
FILES=2000 ROUNDS=5 REPS=5 RESULTS=""
while [ $# -gt 0 ]; do
    case $1 in
        --files) FILES=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        --reps) REPS=$2; shift ;;
        --results) RESULTS=$2; shift ;;
        -h|--help) bc_help "$0"; exit 0 ;;
        *) echo "coherence-bench: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
bc_resolve_bin
command -v gcc >/dev/null || bc_die "gcc is needed"
RESULTS=${RESULTS:-/tmp/extentfs-coherence-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
bc_init coherence
WORK=$BC_WORK
bc_build_helper orc "$WORK"

bc_mount_tmpfs "$WORK/tmpfs" 1g
bc_build_helper mkfiles "$WORK"
mkdir -p "$WORK/tmpfs/tree"
"$WORK/mkfiles" "$WORK/tmpfs/tree" "$FILES" >/dev/null

MODES="pool-cto pool-none kernel-cto kernel-none"
for m in $MODES; do
    bc_mount_extentfs "$WORK/tmpfs" "$WORK/mnt-$m" "cache_size=256M,cache=${m%-*},coherence=${m#*-}" taskset -c 0
done

echo "# coherence cost, $(date -u +%Y-%m-%dT%H:%MZ), $FILES files x 4 KiB, $ROUNDS rounds, median of $REPS" | tee "$RESULTS/results.txt"
echo "# $(uname -r), $(nproc) CPUs, binary $("$EXTENTFS_BIN" --version 2>/dev/null | head -1)" | tee -a "$RESULTS/results.txt"
declare -A T
for m in $MODES; do
    tree=$WORK/mnt-$m/tree
    find "$tree" -type f > "$WORK/list-$m"
    taskset -c 0 "$WORK/orc" 1 < "$WORK/list-$m" >/dev/null # cache every file
    for job in open-read-close stat-walk; do
        for ((k = 0; k < REPS; k++)); do
            if [ "$job" = open-read-close ]; then
                taskset -c 0 "$WORK/orc" "$ROUNDS" < "$WORK/list-$m"
            else
                sleep 1.1 # past the 1 s attribute timeout: every stat reaches the daemon
                s=$(bc_now)
                taskset -c 0 find "$tree" -printf '%s\n' > /dev/null
                e=$(bc_now)
                bc_secs "$s" "$e"
            fi
        done | bc_median > "$WORK/t"
        T[$job,$m]=$(cat "$WORK/t")
    done
done
printf '%-16s %-7s %12s %12s %8s\n' job cache "cto s" "none s" "cto/none" | tee -a "$RESULTS/results.txt"
for job in open-read-close stat-walk; do
    for c in pool kernel; do
        a=${T[$job,$c-cto]} b=${T[$job,$c-none]}
        printf '%-16s %-7s %12s %12s %8s\n' "$job" "$c" "$a" "$b" \
            "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", a / b}')" | tee -a "$RESULTS/results.txt"
    done
done
echo "results in $RESULTS/results.txt"
