#!/usr/bin/env bash
# What close-to-open costs: extentfs with coherence=cto (the default) against coherence=none,
# same run, same tmpfs-backed SOURCE layout, both cache modes, fio-free.
#
#   scripts/coherence-bench.sh [--files N] [--rounds R] [--reps K] [--results DIR]
#
# Jobs, each on a tree of N files of 4 KiB (100 per directory) that was read once (cached):
#   open-read-close   every file opened, read whole and closed, R rounds (a small C loop,
#                     built here with gcc, so no process start per file)
#   stat-walk         `find TREE -printf '%s'` (a stat of every entry), after the attribute
#                     timeout expired, so every stat asks the daemon
# Every (job, mode) is run K times; the median is reported. The daemons and the client run
# pinned to cpu 0 (docs/benchmarks.md: pinned-together ratios are the stable ones).
#
#   EXTENTFS_BIN=path   binary to test (default: target/release/extentfs, built if missing)
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "$0")/.." && pwd)
FILES=2000 ROUNDS=5 REPS=5 RESULTS=""
while [ $# -gt 0 ]; do
    case $1 in
        --files) FILES=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        --reps) REPS=$2; shift ;;
        --results) RESULTS=$2; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "coherence-bench: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
BIN=${EXTENTFS_BIN:-$REPO/target/release/extentfs}
if [ -z "${EXTENTFS_BIN:-}" ]; then
    (cd "$REPO" && cargo build --release --quiet)
fi
[ -x "$BIN" ] || { echo "coherence-bench: $BIN is not executable" >&2; exit 2; }
command -v gcc >/dev/null || { echo "coherence-bench: gcc is needed" >&2; exit 2; }
RESULTS=${RESULTS:-/tmp/extentfs-coherence-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
WORK=$(mktemp -d /tmp/extentfs-cbench-XXXXXX)
MOUNTS=()
PIDS=()
cleanup() {
    for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill "$p" 2>/dev/null || true
    done
    umount "$WORK/tmpfs" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/orc.c" <<'EOF'
/* open, read whole, close every path named on stdin, ROUNDS times; prints seconds. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 1;
    static char paths[100000][256];
    int n = 0;
    while (n < 100000 && fgets(paths[n], sizeof paths[n], stdin)) {
        paths[n][strcspn(paths[n], "\n")] = 0;
        n++;
    }
    char buf[65536];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < n; i++) {
            int fd = open(paths[i], O_RDONLY);
            if (fd < 0) { perror(paths[i]); return 1; }
            while (read(fd, buf, sizeof buf) > 0) {}
            close(fd);
        }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
EOF
gcc -O2 -o "$WORK/orc" "$WORK/orc.c"

mkdir -p "$WORK/tmpfs"
mount -t tmpfs -o size=1g tmpfs "$WORK/tmpfs"
mkdir -p "$WORK/tmpfs/tree"
for ((d = 0; d < (FILES + 99) / 100; d++)); do
    mkdir -p "$WORK/tmpfs/tree/d$d"
    for ((f = 0; f < 100 && d * 100 + f < FILES; f++)); do
        head -c 4096 /dev/zero > "$WORK/tmpfs/tree/d$d/f$f"
    done
done

mount_one() { # name cache coherence
    local mnt=$WORK/mnt-$1
    mkdir -p "$mnt"
    taskset -c 0 "$BIN" "$WORK/tmpfs" "$mnt" -o "cache_size=256M,cache=$2,coherence=$3"
    MOUNTS+=("$mnt")
    PIDS+=("$(pgrep -f -n "^$BIN $WORK/tmpfs $mnt ")")
}
MODES="pool-cto pool-none kernel-cto kernel-none"
for m in $MODES; do mount_one "$m" "${m%-*}" "${m#*-}"; done

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "# coherence cost, $(date -u +%Y-%m-%dT%H:%MZ), $FILES files x 4 KiB, $ROUNDS rounds, median of $REPS" | tee "$RESULTS/results.txt"
echo "# $(uname -r), $(nproc) CPUs, binary $("$BIN" --version 2>/dev/null | head -1)" | tee -a "$RESULTS/results.txt"
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
                s=$(date +%s%N)
                taskset -c 0 find "$tree" -printf '%s\n' > /dev/null
                e=$(date +%s%N)
                echo "scale=6; ($e - $s) / 1000000000" | bc
            fi
        done | median > "$WORK/t"
        T[$job,$m]=$(cat "$WORK/t")
    done
done
printf '%-16s %-7s %12s %12s %8s\n' job cache "cto s" "none s" "cto/none" | tee -a "$RESULTS/results.txt"
for job in open-read-close stat-walk; do
    for c in pool kernel; do
        a=${T[$job,$c-cto]} b=${T[$job,$c-none]}
        printf '%-16s %-7s %12s %12s %8s\n' "$job" "$c" "$a" "$b" \
            "$(echo "scale=3; $a / $b" | bc)" | tee -a "$RESULTS/results.txt"
    done
done
echo "results in $RESULTS/results.txt"
