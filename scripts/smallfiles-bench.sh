#!/usr/bin/env bash
# Small files: N files of 4 KiB created and written (open, write, close) through extentfs and
# then made durable (`extentfs sync`), against the same creation through libfuse's
# passthrough_ll (the peer) and the native directory, same run, same disk SOURCE.
#
#   scripts/smallfiles-bench.sh [--files N] [--reps K] [--dir DIR] [--results DIR]
#
# --dir is where the SOURCE trees go (default: a temporary directory under /var/tmp, i.e.
# the disk, where an fsync per file costs what it costs on a real SOURCE). Each (fs, rep)
# starts from an empty directory after a `sync`; reported: the median of K reps, and the
# ratio of extentfs's create + sync time to passthrough_ll's create time (issue target:
# <= 1.2x). Daemons and the client run pinned to cpu 0. Also reported: the CPU time the
# daemon and the client spent (from /proc/PID/stat and the client's rusage), which a shared
# machine's load moves much less than the elapsed time.
#
#   EXTENTFS_BIN=path   binary to test (default: target/release/extentfs, built if missing)
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "$0")/.." && pwd)
FILES=5000 REPS=3 BASE="" RESULTS=""
while [ $# -gt 0 ]; do
    case $1 in
        --files) FILES=$2; shift ;;
        --reps) REPS=$2; shift ;;
        --dir) BASE=$2; shift ;;
        --results) RESULTS=$2; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "smallfiles-bench: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
BIN=${EXTENTFS_BIN:-$REPO/target/release/extentfs}
if [ -z "${EXTENTFS_BIN:-}" ]; then
    (cd "$REPO" && cargo build --release --quiet)
fi
EX=/usr/share/doc/libfuse3-dev/examples
[ -f "$EX/passthrough_ll.c" ] || { echo "smallfiles-bench: needs libfuse3-dev (passthrough_ll.c)" >&2; exit 2; }
RESULTS=${RESULTS:-/tmp/extentfs-smallfiles-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
WORK=$(mktemp -d "${BASE:-/var/tmp}/extentfs-sfbench-XXXXXX")
cleanup() {
    # Every mount under WORK (run_one runs in a subshell, so no variable can name them), then
    # the daemons whose command line names WORK, by PID.
    local m p
    for m in $(awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    for p in $(pgrep -f -- "$WORK/" || true); do
        [ "$p" = $$ ] || kill "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/mk.c" <<'EOF'
/* Create DIR/dK/fI (100 per directory) with 4 KiB each: open, write, close. Prints seconds. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    char buf[4096], p[4096];
    for (int i = 0; i < 4096; i++) buf[i] = (char)(i * 7);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        if (i % 100 == 0) {
            snprintf(p, sizeof p, "%s/d%d", argv[1], i / 100);
            if (mkdir(p, 0755) && access(p, F_OK)) { perror(p); return 1; }
        }
        snprintf(p, sizeof p, "%s/d%d/f%d", argv[1], i / 100, i);
        int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0 || write(fd, buf, sizeof buf) != sizeof buf || close(fd)) { perror(p); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
EOF
gcc -O2 -o "$WORK/mk" "$WORK/mk.c"
cp "$EX/passthrough_ll.c" "$EX/passthrough_helpers.h" "$WORK/"
gcc -O2 -o "$WORK/passthrough_ll" "$WORK/passthrough_ll.c" $(pkg-config fuse3 --cflags --libs) 2>/dev/null

now() { date +%s%N; }
secs() { echo "scale=6; ($2 - $1) / 1000000000" | bc; }
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of PID, in clock ticks
HZ=$(getconf CLK_TCK)
client() { # DIR: run the client pinned; prints its elapsed seconds, leaves its CPU seconds in $WORK/ccpu
    /usr/bin/time -f '%U %S' -o "$WORK/rusage" taskset -c 0 "$WORK/mk" "$1" "$FILES" || return 1
    awk '{print $1 + $2}' "$WORK/rusage" > "$WORK/ccpu"
}

run_one() { # fs rep -> prints "create total cpu"
    local fs=$1 src=$WORK/src-$1-$2 mnt=$WORK/mnt-$1-$2 t0 t1 t2 c d0 d1
    mkdir -p "$src" "$mnt"
    sync
    case $fs in
        native)
            t0=$(now); c=$(client "$src"); t2=$(now)
            echo "$c $(secs "$t0" "$t2") $(cat "$WORK/ccpu")"; rm -rf "$src" "$mnt"; return ;;
        passthrough_ll)
            taskset -c 0 "$WORK/passthrough_ll" -o source="$src" "$mnt"
            PID=$(pgrep -f -n "passthrough_ll -o source=$src ") ;;
        extentfs-*)
            taskset -c 0 "$BIN" "$src" "$mnt" -o "cache_size=1G,coherence=${fs#extentfs-}"
            PID=$(pgrep -f -n "^$BIN $src $mnt ") ;;
    esac
    d0=$(ticks "$PID")
    t0=$(now)
    # A filesystem that fails the creates (passthrough_ll runs out of descriptors past about
    # 20,000 inodes here) is reported as failed, and still unmounted.
    c=$(client "$mnt" 2>>"$RESULTS/errors.txt") || c=failed
    if [ "$c" != failed ] && [ "${fs%%-*}" = extentfs ]; then
        "$BIN" sync "$mnt" >/dev/null || c=failed
    fi
    t2=$(now)
    d1=$(ticks "$PID")
    umount "$mnt" 2>/dev/null || umount -l "$mnt"
    for _ in $(seq 300); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    if [ "$c" = failed ]; then
        echo "failed failed failed"
    else
        echo "$c $(secs "$t0" "$t2") $(echo "scale=3; $(cat "$WORK/ccpu") + ($d1 - $d0) / $HZ" | bc)"
    fi
    rm -rf "$src" "$mnt"
}

FSS="native passthrough_ll extentfs-cto extentfs-none"
{
    echo "# small files, $(date -u +%Y-%m-%dT%H:%MZ): $FILES x 4 KiB, median of $REPS, SOURCE on $(df -T "$WORK" | awk 'NR==2{print $2}')"
    echo "# $(uname -r), $(nproc) CPUs, $("$BIN" --version 2>/dev/null | head -1)"
} | tee "$RESULTS/results.txt"
declare -A C T U
# Rounds interleave the filesystems, so a noisy moment of a shared machine falls on all of them.
for ((k = 0; k < REPS; k++)); do
    for fs in $FSS; do
        read -r c t u < <(run_one "$fs" "$k")
        echo "$c" >> "$WORK/c-$fs"; echo "$t" >> "$WORK/t-$fs"; echo "$u" >> "$WORK/u-$fs"
    done
done
for fs in $FSS; do
    if grep -q failed "$WORK/c-$fs"; then C[$fs]=failed; T[$fs]=failed; U[$fs]=failed; continue; fi
    C[$fs]=$(median < "$WORK/c-$fs"); T[$fs]=$(median < "$WORK/t-$fs"); U[$fs]=$(median < "$WORK/u-$fs")
done
printf '%-16s %12s %18s %14s %10s %10s\n' fs "create s" "create+sync s" "/pt create" "cpu s" "cpu /pt" | tee -a "$RESULTS/results.txt"
for fs in $FSS; do
    r=- ru=-
    if [ "${T[$fs]}" != failed ] && [ "${C[passthrough_ll]}" != failed ]; then
        r=$(echo "scale=3; ${T[$fs]} / ${C[passthrough_ll]}" | bc)
        ru=$(echo "scale=3; ${U[$fs]} / ${U[passthrough_ll]}" | bc)
    fi
    printf '%-16s %12s %18s %14s %10s %10s\n' "$fs" "${C[$fs]}" "${T[$fs]}" "$r" "${U[$fs]}" "$ru" | tee -a "$RESULTS/results.txt"
done
echo "results in $RESULTS/results.txt"
