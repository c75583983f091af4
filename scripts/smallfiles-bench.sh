#!/usr/bin/env bash
# Small files: N files of 4 KiB created and written (open, write, close) through extentfs and
# then made durable (`extentfs sync`), against the same creation through libfuse's
# passthrough_ll (the peer) and the native directory, same run, same disk SOURCE.
#
#   scripts/smallfiles-bench.sh [--files N] [--reps K] [--dir DIR] [--results DIR] [--reuse-fs]
#
# --dir is where the SOURCE trees go (default: a temporary directory under /var/tmp, i.e.
# the disk, where an fsync per file costs what it costs on a real SOURCE). As root each
# (fs, rep) gets a new ext4 filesystem there (a 2 GiB loop-mounted image), so the
# allocator state (ext4 without a journal skips inodes freed minutes ago) is the same for
# every run; --reuse-fs
# puts every tree in DIR's own filesystem instead. Each run starts after a `sync`; reported: the median of K reps, and the
# ratio of extentfs's create + sync time to passthrough_ll's create time (issue target:
# <= 1.2x). Daemons and the client run pinned to cpu 0. scripts/bench.sh runs the same
# measurement as its `smallfiles` job.
#
#   EXTENTFS_BIN=path   binary to test (default: target/release/extentfs, built if missing)
set -euo pipefail
export LC_ALL=C
# shellcheck source-path=SCRIPTDIR source=lib/bench-common.sh
. "$(dirname "$0")/lib/bench-common.sh"
# A new ext4 filesystem per run (see bc_smallfiles_run) when root can make one.
bc_fresh_fs_default
FILES=5000 REPS=3 BASE="" RESULTS=""
while [ $# -gt 0 ]; do
    case $1 in
        --files) FILES=$2; shift ;;
        --reps) REPS=$2; shift ;;
        --dir) BASE=$2; shift ;;
        --results) RESULTS=$2; shift ;;
        --reuse-fs) BC_FRESH_FS=0 ;;
        -h|--help) bc_help "$0"; exit 0 ;;
        *) echo "smallfiles-bench: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
bc_resolve_bin
[ -f "$BC_EXAMPLES/passthrough_ll.c" ] || bc_die "needs libfuse3-dev (passthrough_ll.c)"
RESULTS=${RESULTS:-/tmp/extentfs-smallfiles-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
bc_init smallfiles "${BASE:-/var/tmp}"
WORK=$BC_WORK
bc_build_helper mkfiles "$WORK"
bc_build_example passthrough_ll "$WORK"
BC_MKFILES=$WORK/mkfiles BC_PT=$WORK/passthrough_ll

FSS="native passthrough_ll extentfs-cto extentfs-none"
{
    echo "# small files, $(date -u +%Y-%m-%dT%H:%MZ): $FILES x 4 KiB, median of $REPS, SOURCE on $(df -T "$WORK" | awk 'NR==2{print $2}')$([ "$BC_FRESH_FS" = 1 ] && echo ", a new ext4 image per run")"
    echo "# $(uname -r), $(nproc) CPUs, $("$EXTENTFS_BIN" --version 2>/dev/null | head -1)"
} | tee "$RESULTS/results.txt"
declare -A C T
# Rounds interleave the filesystems, so a noisy moment of a shared machine falls on all of them.
for ((k = 0; k < REPS; k++)); do
    for fs in $FSS; do
        read -r c t < <(bc_smallfiles_run "$fs" "$k" "$FILES" "$WORK" "$RESULTS")
        echo "$c" >> "$WORK/c-$fs"; echo "$t" >> "$WORK/t-$fs"
    done
done
for fs in $FSS; do
    if grep -q failed "$WORK/c-$fs"; then C[$fs]=failed; T[$fs]=failed; continue; fi
    C[$fs]=$(bc_median < "$WORK/c-$fs"); T[$fs]=$(bc_median < "$WORK/t-$fs")
done
printf '%-16s %12s %18s %14s\n' fs "create s" "create+sync s" "/pt create" | tee -a "$RESULTS/results.txt"
for fs in $FSS; do
    r=-
    if [ "${T[$fs]}" != failed ] && [ "${C[passthrough_ll]}" != failed ]; then
        r=$(awk -v a="${T[$fs]}" -v b="${C[passthrough_ll]}" 'BEGIN {printf "%.3f", a / b}')
    fi
    printf '%-16s %12s %18s %14s\n' "$fs" "${C[$fs]}" "${T[$fs]}" "$r" | tee -a "$RESULTS/results.txt"
done
echo "results in $RESULTS/results.txt"
