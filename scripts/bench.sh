#!/usr/bin/env bash
# Benchmark extentfs against native tmpfs and libfuse's passthrough_ll, all in one run, on the
# same backing and under the same CPU placements (see docs/benchmarks.md for how to read it).
#
#   scripts/bench.sh [--quick] [options]
#
#   --quick              256 MiB files, 3 s runs, 4 jobs, 1 repetition, pinned placements only
#                        (under 5 minutes). Default is the full mode (1 GiB files, 5 s runs, all
#                        jobs, 2 repetitions, pinned together / apart / unpinned, perf profile).
#   --jobs A,B,...       run only these jobs (names below); `--jobs +A,B` adds to the default set
#   --placements P,...   together (fio and daemon on cpu 0), apart (fio cpu 0, daemon cpu 1),
#                        unpinned
#   --reps N             repetitions of every (job, fs, placement)
#   --runtime S          measured seconds per run (plus --ramp S of warm-up, default 1)
#   --size SIZE          file size (e.g. 256M, 1G); extentfs cache_size is 2x, the "big file"
#                        mount's cache_size is SIZE/2
#   --results DIR        where to write (default /tmp/extentfs-bench-DATE)
#   --perf / --no-perf   profile the extentfs daemon during 4k randread --direct=1 (perf record)
#
#   EXTENTFS_BIN=path    binary to test (default: target/release/extentfs, built if missing)
#
# Jobs (fio job files in scripts/fio/):
#   seqread1m-buf  seqread1m-dio  randread4k-buf  randread4k-dio    reads of a pre-written,
#   seqwrite1m-buf seqwrite1m-dio randwrite4k-buf randwrite4k-dio   cached file / overwrites
#   randread4k-dio-2j randread4k-dio-4j    4k randread --direct=1 with numjobs 2 and 4
#   randrw4k-qd16          70/30 4k libaio iodepth 16 --direct=1
#   cold-randread4k-dio    backing on disk, backing file evicted from the kernel page cache
#                          before every run; extentfs has the file in its pool
#   coldall-randread4k-dio same, extentfs pool dropped too (first touch; extentfs only)
#   big-seqread1m-dio big-randread4k-dio   file 2x the pool (extentfs only; peers' figures come
#                          from the same-size file in seqread1m-dio / randread4k-dio)
#
# Filesystems: native (tmpfs, or the disk directory for cold jobs, no FUSE), pool (extentfs
# cache=pool), kernel (extentfs cache=kernel), ptnever / ptalways (passthrough_ll cache=never /
# cache=always). Output: RESULTS/results.json, RESULTS/results.md (printed), raw fio JSON in
# RESULTS/runs/, logs, perf reports, and RESULTS/ratios.png (a chart of the ratios to the peer;
# needs Debian's python3-matplotlib).
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "$0")/.." && pwd)
FIODIR=$REPO/scripts/fio
CMDLINE="$0 $*"

ALL_JOBS="seqread1m-buf seqread1m-dio randread4k-buf randread4k-dio seqwrite1m-buf seqwrite1m-dio randwrite4k-buf randwrite4k-dio randread4k-dio-2j randread4k-dio-4j randrw4k-qd16 cold-randread4k-dio coldall-randread4k-dio big-seqread1m-dio big-randread4k-dio"
QUICK_JOBS="randread4k-dio seqread1m-dio seqwrite1m-buf randwrite4k-buf"

mode=full
jobs_opt="" placements_opt="" reps_opt="" runtime_opt="" size_opt="" results_opt="" perf_opt=""
RAMP=1
while [ $# -gt 0 ]; do
    case $1 in
        --quick) mode=quick ;;
        --full) mode=full ;;
        --jobs) jobs_opt=$2; shift ;;
        --placements) placements_opt=$2; shift ;;
        --reps) reps_opt=$2; shift ;;
        --runtime) runtime_opt=$2; shift ;;
        --ramp) RAMP=$2; shift ;;
        --size) size_opt=$2; shift ;;
        --results) results_opt=$2; shift ;;
        --perf) perf_opt=1 ;;
        --no-perf) perf_opt=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ $mode = quick ]; then
    JOBS=$QUICK_JOBS; PLACEMENTS="together apart"; REPS=1; RUNTIME=3; SIZE=256M; PERF=0
else
    JOBS=$ALL_JOBS; PLACEMENTS="together apart unpinned"; REPS=2; RUNTIME=5; SIZE=1G; PERF=1
fi
case $jobs_opt in
    "") ;;
    +*) JOBS="$JOBS ${jobs_opt#+}" ;;
    *) JOBS=$jobs_opt ;;
esac
JOBS=$(echo "$JOBS" | tr ',' ' ' | xargs -n1 | awk '!seen[$0]++' | xargs)
[ -n "$placements_opt" ] && PLACEMENTS=$(echo "$placements_opt" | tr ',' ' ')
[ -n "$reps_opt" ] && REPS=$reps_opt
[ -n "$runtime_opt" ] && RUNTIME=$runtime_opt
[ -n "$size_opt" ] && SIZE=$size_opt
[ -n "$perf_opt" ] && PERF=$perf_opt
for j in $JOBS; do
    case " $ALL_JOBS " in *" $j "*) ;; *) echo "bench.sh: unknown job $j" >&2; exit 2 ;; esac
done
for p in $PLACEMENTS; do
    case $p in together|apart|unpinned) ;; *) echo "bench.sh: unknown placement $p" >&2; exit 2 ;; esac
done

size_mib() {  # 256M, 1G, 1g, 1024 (MiB) -> MiB
    local s=${1^^}
    case $s in
        *G|*GIB) s=${s%IB}; echo $(( ${s%G} * 1024 )) ;;
        *M|*MIB) s=${s%IB}; echo $(( ${s%M} )) ;;
        *) echo $(( s )) ;;
    esac
}
SIZE_MB=$(size_mib "$SIZE")
FSIZE=${SIZE_MB}m
CACHE_MB=$(( SIZE_MB * 2 ))
SMALL_CACHE_MB=$(( SIZE_MB / 2 < 16 ? 16 : SIZE_MB / 2 ))

has_job() { case " $JOBS " in *" $1 "*) return 0 ;; esac; return 1; }
any_job() { local j; for j in $JOBS; do case $j in $1) return 0 ;; esac; done; return 1; }

[ "$(id -u)" -eq 0 ] || { echo "bench.sh: run as root (mounts tmpfs, pins daemons)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || echo "bench.sh: warning: fewer than 2 CPUs, 'apart' is meaningless" >&2

# ---------------------------------------------------------------- dependencies
need=()
command -v fio >/dev/null 2>&1 || need+=(fio)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v setfattr >/dev/null 2>&1 || need+=(attr)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v python3 >/dev/null 2>&1 || need+=(python3)
dpkg -s libfuse3-dev >/dev/null 2>&1 || need+=(libfuse3-dev)
if [ "$PERF" = 1 ] && ! command -v perf >/dev/null 2>&1; then need+=(linux-perf); fi
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

if [ -z "${EXTENTFS_BIN:-}" ]; then
    EXTENTFS_BIN=$REPO/target/release/extentfs
    if [ ! -x "$EXTENTFS_BIN" ]; then
        echo "bench: building $EXTENTFS_BIN"
        (cd "$REPO" && cargo build --release --quiet)
    fi
fi
EXTENTFS_BIN=$(readlink -f "$EXTENTFS_BIN")
[ -x "$EXTENTFS_BIN" ] || { echo "bench.sh: $EXTENTFS_BIN is not executable" >&2; exit 1; }

# ---------------------------------------------------------------- work area and cleanup
DATE=$(date -u +%Y%m%dT%H%M%SZ)
RES=${results_opt:-/tmp/extentfs-bench-$DATE}
mkdir -p "$RES/runs" "$RES/logs"
RES=$(readlink -f "$RES")
WORK=$(mktemp -d /tmp/extentfs-bench-work.XXXXXX)
DISK=""
MOUNTED=()          # mount points we mounted, in order
declare -A DPID     # mount point -> daemon pid
BACKING_MOUNTED=0

cleanup() {
    local rc=$? i m p n
    set +e
    for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do
        m=${MOUNTED[i]}
        if mountpoint -q "$m"; then umount "$m" 2>/dev/null || umount -l "$m"; fi
    done
    for m in "${!DPID[@]}"; do
        p=${DPID[$m]}
        n=0
        while kill -0 "$p" 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
        if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null; sleep 1; kill -KILL "$p" 2>/dev/null; fi
    done
    if [ $BACKING_MOUNTED = 1 ] && mountpoint -q "$WORK/backing"; then umount "$WORK/backing"; fi
    [ -n "$DISK" ] && rm -rf "$DISK"
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

log() { echo "bench: $*" | tee -a "$RES/logs/bench.log" >&2; }

# ---------------------------------------------------------------- machine info
cat /proc/loadavg > "$RES/loadavg-start"
{
    echo "{"
    echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
    echo "  \"command\": $(printf '%s' "$CMDLINE" | $PY -c 'import json,sys; print(json.dumps(sys.stdin.read()))'),"
    echo "  \"mode\": \"$mode\", \"size\": \"$FSIZE\", \"runtime_s\": $RUNTIME, \"ramp_s\": $RAMP, \"reps\": $REPS,"
    echo "  \"cache_size_mib\": $CACHE_MB, \"small_cache_size_mib\": $SMALL_CACHE_MB,"
    echo "  \"jobs\": \"$JOBS\", \"placements\": \"$PLACEMENTS\","
    echo "  \"nproc\": $(nproc), \"kernel\": \"$(uname -r)\","
    echo "  \"cpu_model\": \"$(grep -m1 '^model name' /proc/cpuinfo | sed 's/.*: //')\","
    echo "  \"mem_total\": \"$(grep MemTotal /proc/meminfo | awk '{print $2" kB"}')\","
    echo "  \"fio\": \"$(fio --version)\","
    echo "  \"extentfs_bin\": \"$EXTENTFS_BIN\","
    echo "  \"extentfs_bin_mtime\": \"$(date -u -r "$EXTENTFS_BIN" +%Y-%m-%dT%H:%M:%SZ)\","
    echo "  \"extentfs_commit\": \"$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')\","
    echo "  \"loadavg_start\": \"$(cat /proc/loadavg)\""
    echo "}"
} > "$RES/meta.json"
log "results in $RES; mode=$mode size=$FSIZE runtime=${RUNTIME}s reps=$REPS placements='$PLACEMENTS'"
log "jobs: $JOBS"
log "load average at start: $(cat /proc/loadavg)"

# ---------------------------------------------------------------- the peer: passthrough_ll
PTDIR=$WORK/pt
mkdir -p "$PTDIR"
EX=/usr/share/doc/libfuse3-dev/examples
for f in passthrough_ll.c passthrough_helpers.h; do
    if [ -f "$EX/$f" ]; then cp "$EX/$f" "$PTDIR/"
    elif [ -f "$EX/$f.gz" ]; then gzip -dc "$EX/$f.gz" > "$PTDIR/$f"
    else echo "bench.sh: $EX/$f not found (libfuse3-dev examples)" >&2; exit 1; fi
done
gcc -O2 -Wall -o "$PTDIR/passthrough_ll" "$PTDIR/passthrough_ll.c" $(pkg-config fuse3 --cflags --libs) \
    2> "$RES/logs/passthrough_ll-build.log"
PT=$PTDIR/passthrough_ll
log "built passthrough_ll ($(pkg-config --modversion fuse3))"

# ---------------------------------------------------------------- mounts
wait_mounted() {  # mnt pid
    local n=0
    until mountpoint -q "$1"; do
        if ! kill -0 "$2" 2>/dev/null; then echo "bench.sh: daemon for $1 exited" >&2; return 1; fi
        n=$((n+1)); [ $n -gt 100 ] && { echo "bench.sh: $1 did not come up" >&2; return 1; }
        sleep 0.1
    done
}
mount_extentfs() {  # name src mnt opts
    local name=$1 src=$2 mnt=$3 opts=$4 p pid=""
    mkdir -p "$mnt"
    "$EXTENTFS_BIN" "$src" "$mnt" -o "$opts,log_file=$RES/logs/extentfs-$name.log"
    MOUNTED+=("$mnt")
    # extentfs daemonizes: find the daemon by its command line (binary + this mount point)
    for p in /proc/[0-9]*; do
        if [ "$(tr '\0' '\n' 2>/dev/null < "$p/cmdline" | sed -n 1p)" = "$EXTENTFS_BIN" ] &&
           tr '\0' '\n' 2>/dev/null < "$p/cmdline" | grep -qxF -- "$mnt"; then
            pid=${p#/proc/}
        fi
    done
    [ -n "$pid" ] || { echo "bench.sh: no extentfs daemon found for $mnt" >&2; exit 1; }
    DPID[$mnt]=$pid
    log "mounted extentfs $name ($opts) at $mnt, pid $pid"
}
mount_pt() {  # name src mnt cache
    local name=$1 src=$2 mnt=$3 cache=$4 pid
    mkdir -p "$mnt"
    "$PT" -f -o "source=$src,cache=$cache" "$mnt" > "$RES/logs/pt-$name.log" 2>&1 &
    pid=$!
    MOUNTED+=("$mnt")
    DPID[$mnt]=$pid
    wait_mounted "$mnt" "$pid"
    log "mounted passthrough_ll $name (cache=$cache) at $mnt, pid $pid"
}

FS_MAIN="native pool kernel ptnever ptalways"
declare -A PATH_MAIN PATH_DISK PATH_BIG SRC_MAIN SRC_DISK SRC_BIG

need_main=0; need_disk=0; need_big=0
for j in $JOBS; do
    case $j in cold*) need_disk=1 ;; big-*) need_big=1 ;; *) need_main=1 ;; esac
done
# the big-file jobs compare with the peers' same-size runs of the plain jobs
[ $need_big = 1 ] && need_main=1

nfiles=0
[ $need_main = 1 ] && nfiles=5
[ $need_big = 1 ] && nfiles=$((nfiles + 2))
if [ $nfiles -gt 0 ]; then
    mkdir -p "$WORK/backing"
    mount -t tmpfs -o size=$(( nfiles * SIZE_MB + 256 ))m extentfs-bench "$WORK/backing"
    BACKING_MOUNTED=1
    log "backing tmpfs $WORK/backing ($(( nfiles * SIZE_MB + 256 )) MiB)"
fi
if [ $need_main = 1 ]; then
    for fs in $FS_MAIN; do mkdir -p "$WORK/backing/$fs"; SRC_MAIN[$fs]=$WORK/backing/$fs; done
    PATH_MAIN[native]=$WORK/backing/native
    mount_extentfs pool "${SRC_MAIN[pool]}" "$WORK/mnt/pool" "cache_size=${CACHE_MB}M,cache=pool"
    PATH_MAIN[pool]=$WORK/mnt/pool
    mount_extentfs kernel "${SRC_MAIN[kernel]}" "$WORK/mnt/kernel" "cache_size=${CACHE_MB}M,cache=kernel"
    PATH_MAIN[kernel]=$WORK/mnt/kernel
    mount_pt ptnever "${SRC_MAIN[ptnever]}" "$WORK/mnt/ptnever" never
    PATH_MAIN[ptnever]=$WORK/mnt/ptnever
    mount_pt ptalways "${SRC_MAIN[ptalways]}" "$WORK/mnt/ptalways" always
    PATH_MAIN[ptalways]=$WORK/mnt/ptalways
fi
if [ $need_big = 1 ]; then
    for fs in pool kernel; do mkdir -p "$WORK/backing/${fs}small"; SRC_BIG[$fs]=$WORK/backing/${fs}small; done
    mount_extentfs poolsmall "${SRC_BIG[pool]}" "$WORK/mnt/poolsmall" "cache_size=${SMALL_CACHE_MB}M,cache=pool"
    PATH_BIG[pool]=$WORK/mnt/poolsmall
    mount_extentfs kernelsmall "${SRC_BIG[kernel]}" "$WORK/mnt/kernelsmall" "cache_size=${SMALL_CACHE_MB}M,cache=kernel"
    PATH_BIG[kernel]=$WORK/mnt/kernelsmall
fi
if [ $need_disk = 1 ]; then
    DISK=$(mktemp -d /var/tmp/extentfs-bench-disk.XXXXXX)
    log "disk backing $DISK ($(findmnt -no FSTYPE,SOURCE -T "$DISK" | xargs))"
    for fs in $FS_MAIN; do mkdir -p "$DISK/$fs"; SRC_DISK[$fs]=$DISK/$fs; done
    PATH_DISK[native]=$DISK/native
    mount_extentfs pool-disk "${SRC_DISK[pool]}" "$WORK/mnt/pool-disk" "cache_size=${CACHE_MB}M,cache=pool"
    PATH_DISK[pool]=$WORK/mnt/pool-disk
    mount_extentfs kernel-disk "${SRC_DISK[kernel]}" "$WORK/mnt/kernel-disk" "cache_size=${CACHE_MB}M,cache=kernel"
    PATH_DISK[kernel]=$WORK/mnt/kernel-disk
    mount_pt ptnever-disk "${SRC_DISK[ptnever]}" "$WORK/mnt/ptnever-disk" never
    PATH_DISK[ptnever]=$WORK/mnt/ptnever-disk
    mount_pt ptalways-disk "${SRC_DISK[ptalways]}" "$WORK/mnt/ptalways-disk" always
    PATH_DISK[ptalways]=$WORK/mnt/ptalways-disk
fi

# ---------------------------------------------------------------- helpers
set_placement() {  # pin every daemon for this placement
    local cpus m
    case $1 in together) cpus=0 ;; apart) cpus=1 ;; unpinned) cpus=0-$(( $(nproc) - 1 )) ;; esac
    for m in "${!DPID[@]}"; do taskset -a -p -c "$cpus" "${DPID[$m]}" >/dev/null; done
}
fio_prefix() { case $1 in together|apart) echo "taskset -c 0" ;; *) echo "" ;; esac; }
evict() {  # drop a backing file from the kernel page cache (after writing it back)
    $PY -c 'import os,sys
fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$1"
}
resident() { fincore -nb -o RES "$1" 2>/dev/null | xargs || echo "?"; }
readpass() {  # read a file through once, direct then buffered (fills the pool / page cache)
    dd if="$1" of=/dev/null bs=1M iflag=direct status=none
    dd if="$1" of=/dev/null bs=1M status=none
}
ctl() { setfattr -n user.extentfs.ctl -v "$2" "$1"; }

# job -> fio file, DIRECT, NUMJOBS, which filesystems, which file set
job_spec() {
    local j=$1
    FS_LIST=$FS_MAIN; SET=main; NUMJOBS=1
    case $j in
        seqread1m-*|big-seqread1m-*) JOBFILE=seq-read.fio ;;
        seqwrite1m-*) JOBFILE=seq-write.fio ;;
        randwrite4k-*) JOBFILE=rand-write.fio ;;
        randrw4k-qd16) JOBFILE=randrw.fio ;;
        *randread4k*) JOBFILE=rand-read.fio ;;
    esac
    case $j in *-buf) DIRECT=0 ;; *) DIRECT=1 ;; esac
    case $j in *-2j) NUMJOBS=2 ;; *-4j) NUMJOBS=4 ;; esac
    case $j in
        big-*) SET=big; FS_LIST="pool kernel" ;;
        coldall-*) SET=disk; FS_LIST="pool kernel" ;;
        cold-*) SET=disk ;;
    esac
}
file_of() {  # fs set
    case $2 in
        main) echo "${PATH_MAIN[$1]}/bench.dat" ;;
        big) echo "${PATH_BIG[$1]}/bench.dat" ;;
        disk) echo "${PATH_DISK[$1]}/bench.dat" ;;
    esac
}
backing_of() {  # fs set -> the file on the backing file system
    case $2 in
        main) echo "${SRC_MAIN[$1]}/bench.dat" ;;
        big) echo "${SRC_BIG[$1]}/bench.dat" ;;
        disk) echo "${SRC_DISK[$1]}/bench.dat" ;;
    esac
}
mnt_of() { dirname "$(file_of "$1" "$2")"; }

INDEX=$RES/runs/index.tsv
printf 'fs\tjob\tplacement\trep\tfile\tload_before\tload_after\tnote\n' > "$INDEX"

run_fio() {  # fs job placement rep set
    local fs=$1 job=$2 pl=$3 rep=$4 set=$5 f out lb la note=""
    f=$(file_of "$fs" "$set")
    out=$RES/runs/$fs.$job.$pl.r$rep.json
    # pre-run state
    case $job in
        cold-*)
            if [ "$fs" = pool ] || [ "$fs" = kernel ]; then
                dd if="$f" of=/dev/null bs=1M iflag=direct status=none   # make sure the pool holds it
            fi
            evict "$(backing_of "$fs" "$set")"
            note="backing_resident_before=$(resident "$(backing_of "$fs" "$set")")" ;;
        coldall-*)
            ctl "$(mnt_of "$fs" "$set")" sync
            ctl "$(mnt_of "$fs" "$set")" drop
            evict "$(backing_of "$fs" "$set")"
            note="pool_dropped;backing_resident_before=$(resident "$(backing_of "$fs" "$set")")" ;;
    esac
    lb=$(cut -d' ' -f1-3 /proc/loadavg)
    FILENAME=$f SIZE=$FSIZE RUNTIME=$RUNTIME RAMP=$RAMP DIRECT=$DIRECT NUMJOBS=$NUMJOBS \
        $(fio_prefix "$pl") fio --output-format=json --output="$out" "$FIODIR/$JOBFILE" \
        2> "$RES/logs/fio-stderr.tmp" || { log "fio failed: $fs $job $pl r$rep: $(cat "$RES/logs/fio-stderr.tmp")"; note="$note;fio_failed"; }
    la=$(cut -d' ' -f1-3 /proc/loadavg)
    # writes: push the data down before the next run (not timed)
    case $job in *write*|randrw*) sync "$f" ;; esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$fs" "$job" "$pl" "$rep" "runs/${out##*/}" "$lb" "$la" "$note" >> "$INDEX"
}

# ---------------------------------------------------------------- lay out and warm the files
prep_set() {  # set fs...
    local set=$1 fs f; shift
    for fs in "$@"; do
        f=$(file_of "$fs" "$set")
        FILENAME=$f SIZE=$FSIZE fio --output-format=terse "$FIODIR/prep.fio" > /dev/null
        sync "$f"
        readpass "$f"
    done
    log "laid out and warmed $FSIZE files ($set): $*"
}
set_placement unpinned
[ $need_main = 1 ] && prep_set main $FS_MAIN
[ $need_big = 1 ] && prep_set big pool kernel
[ $need_disk = 1 ] && prep_set disk $FS_MAIN
if [ $need_main = 1 ]; then
    getfattr --only-values -n user.extentfs.stats "${PATH_MAIN[pool]}" > "$RES/logs/stats-pool-after-warm.txt" 2>/dev/null || true
fi

# ---------------------------------------------------------------- the runs
nruns=0
for j in $JOBS; do job_spec "$j"; for fs in $FS_LIST; do nruns=$((nruns+1)); done; done
total=$(( nruns * REPS * $(echo $PLACEMENTS | wc -w) ))
log "$total runs of ${RUNTIME}s (+${RAMP}s ramp)"
t0=$(date +%s)
i=0
for pl in $PLACEMENTS; do
    set_placement "$pl"
    for (( r=1; r<=REPS; r++ )); do
        for j in $JOBS; do
            job_spec "$j"
            # interleave the filesystems inside one job so drifting background load hits all alike
            for fs in $FS_LIST; do
                i=$((i+1))
                run_fio "$fs" "$j" "$pl" "$r" "$SET"
            done
            log "[$i/$total] $pl r$r $j done ($(( $(date +%s) - t0 ))s, load $(cut -d' ' -f1 /proc/loadavg))"
        done
    done
done
rm -f "$RES/logs/fio-stderr.tmp"

# ---------------------------------------------------------------- perf profile of the daemon
if [ "$PERF" = 1 ] && [ $need_main = 1 ] && command -v perf >/dev/null 2>&1; then
    job_spec randread4k-dio
    f=$(file_of pool main)
    pid=${DPID[${PATH_MAIN[pool]}]}
    for pl in together apart; do
        set_placement "$pl"
        prof=$(( RUNTIME + 3 ))
        FILENAME=$f SIZE=$FSIZE RUNTIME=$prof RAMP=0 DIRECT=1 NUMJOBS=1 \
            taskset -c 0 fio --output-format=json --output="$RES/runs/perf.pool.randread4k-dio.$pl.json" \
            "$FIODIR/rand-read.fio" &
        fpid=$!
        sleep 1
        perf record -q -g -F 2999 -p "$pid" -o "$RES/perf-$pl.data" -- sleep $(( prof - 2 )) \
            > "$RES/logs/perf-record-$pl.log" 2>&1 || true
        wait $fpid || true
        perf report -i "$RES/perf-$pl.data" --stdio --no-children --sort symbol --percent-limit 0.7 \
            2>/dev/null | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' \
            | head -40 > "$RES/perf-$pl-self.txt" || true
        perf report -i "$RES/perf-$pl.data" --stdio --children --sort symbol --percent-limit 3 -g none \
            2>/dev/null | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' \
            | head -40 > "$RES/perf-$pl-children.txt" || true
        perf report -i "$RES/perf-$pl.data" --stdio --no-children --sort dso \
            2>/dev/null | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]]+$//' > "$RES/perf-$pl-dso.txt" || true
        rm -f "$RES/perf-$pl.data.old"
        log "perf profile ($pl): $RES/perf-$pl-self.txt"
    done
fi

# ---------------------------------------------------------------- wrap up
if [ $need_main = 1 ]; then
    getfattr --only-values -n user.extentfs.stats "${PATH_MAIN[pool]}" > "$RES/logs/stats-pool-end.txt" 2>/dev/null || true
    getfattr --only-values -n user.extentfs.stats "${PATH_MAIN[kernel]}" > "$RES/logs/stats-kernel-end.txt" 2>/dev/null || true
fi
if [ $need_disk = 1 ]; then
    getfattr --only-values -n user.extentfs.stats "${PATH_DISK[pool]}" > "$RES/logs/stats-pool-disk-end.txt" 2>/dev/null || true
fi
cat /proc/loadavg > "$RES/loadavg-end"
log "load average at end: $(cat /proc/loadavg); $(( $(date +%s) - t0 ))s of runs"
$PY "$REPO/scripts/bench-report.py" "$RES"
