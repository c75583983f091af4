#!/usr/bin/env bash
# Benchmark extentfs against the FUSE transport floor (libfuse's `null` example), native tmpfs,
# libfuse's passthrough_ll, and over a network SOURCE (sshfs over loopback) against sshfs and
# rclone, all in one run and under the same CPU placements; ends with a PASS/FAIL table of
# every target (see docs/benchmarks.md for how to read it).
#
#   scripts/bench.sh [--quick] [options]
#
#   --quick              256 MiB files, 3 s runs, the jobs the targets name with only the file
#                        systems they compare (and cache=kernel in the 4k direct writes), 1 repetition, placement together (plus the
#                        unpinned runs the 2-job scale target needs), 10,000-file tree; under 5
#                        minutes. Default is the full mode (1 GiB files, 5 s runs, all jobs and
#                        file systems, 2 repetitions, together / apart / unpinned, perf profile).
#   --jobs A,B,...       run only these jobs (names below); `--jobs +A,B` adds to the default set
#   --placements P,...   together (fio and daemon on cpu 0), apart (fio cpu 0, daemon cpu 1),
#                        unpinned; the non-fio jobs run once, in the first placement given
#   --reps N             repetitions of every (job, fs, placement)
#   --runtime S          measured seconds per run (plus --ramp S of warm-up, default 1)
#   --size SIZE          file size (e.g. 256M, 1G); extentfs cache_size is 2x, the "big file"
#                        mount's cache_size is SIZE/2
#   --net-size SIZE      file size of the network jobs (default 256M)
#   --tree-files N       files in the tree-walk tree (default 50000; quick 10000)
#   --small-files N      files of the small-file job (default 5000)
#   --results DIR        where to write (default /tmp/extentfs-bench-DATE)
#   --perf / --no-perf   profile the extentfs daemon during 4k direct reads and writes (perf
#                        record), and count daemon CPU per request against null's (perf stat)
#
#   --baseline BIN       also mount a second extentfs binary (e.g. the previous release) as
#                        poolbase / kernelbase beside pool / kernel, interleaved with them in every
#                        fio job on the main file set; the report compares the two binaries job by
#                        job against their run-to-run spread (use --reps 2 or more for a spread)
#
#   EXTENTFS_BIN=path    binary to test (default: target/release/extentfs, built if missing)
#
# fio jobs (job files in scripts/fio/):
#   seqread1m-buf  seqread1m-dio  randread4k-buf  randread4k-dio    reads of a pre-written,
#   seqwrite1m-buf seqwrite1m-dio randwrite4k-buf randwrite4k-dio   cached file / overwrites
#   randread4k-dio-2j randread4k-dio-4j    4k randread --direct=1 with numjobs 2 and 4
#   randrw4k-qd16          70/30 4k libaio iodepth 16 --direct=1
#   cold-randread4k-dio    backing on disk, backing file evicted from the kernel page cache
#                          before every run; extentfs has the file in its pool
#   coldall-randread4k-dio same, extentfs pool dropped too (first touch; extentfs only)
#   big-seqread1m-dio big-randread4k-dio   file 2x the pool (extentfs only; compared with its
#                          own and the peers' runs of seqread1m-dio / randread4k-dio)
#   net-randread4k-dio net-randread4k-buf net-seqread1m-buf   the network scenario, warm: a
#                          private sshd on 127.0.0.1, sshfs to it as extentfs's SOURCE, against
#                          sshfs itself and rclone mount --vfs-cache-mode full (same SFTP server)
# Other jobs:
#   net-write       a 256 MiB file written (dd 1M, close included) through extentfs over the
#                   sshfs SOURCE vs through extentfs over a tmpfs SOURCE (and sshfs, rclone)
#   smallfiles      N x 4 KiB create+write+close then `extentfs sync`, vs passthrough_ll's
#                   create time (disk SOURCE; as scripts/smallfiles-bench.sh)
#   treewalk        find, ls -lR, du of a tree of --tree-files files (disk SOURCE): cold (fresh
#                   mount) vs passthrough_ll, warm (second walk) vs the native directory
#   mount8g         time of `extentfs SRC MNT -o cache_size=8G` until it returns (mount live)
#
# File systems: native (tmpfs, or the disk directory for cold jobs, no FUSE), pool (extentfs
# cache=pool), kernel (extentfs cache=kernel), ptnever / ptalways / ptwb (passthrough_ll
# cache=never / cache=always / cache=always,writeback), null (libfuse's null example, mounted on
# a regular file: reads are zeros, writes are discarded), netpool / netkernel (extentfs over
# sshfs), sshfs, rclone. Output: RESULTS/results.json, RESULTS/results.md (printed, the targets
# table last), raw fio JSON in RESULTS/runs/, RESULTS/extra.tsv (the non-fio jobs), logs, perf
# reports, and RESULTS/ratios.png (each target's ratio against its threshold; needs Debian's
# python3-matplotlib).
set -euo pipefail
export LC_ALL=C
# shellcheck source-path=SCRIPTDIR source=lib/bench-common.sh
. "$(dirname "$0")/lib/bench-common.sh"

REPO=$BC_REPO
FIODIR=$REPO/scripts/fio
CMDLINE="$0 $*"

FIO_JOBS="seqread1m-buf seqread1m-dio randread4k-buf randread4k-dio seqwrite1m-buf seqwrite1m-dio randwrite4k-buf randwrite4k-dio randread4k-dio-2j randread4k-dio-4j randrw4k-qd16 cold-randread4k-dio coldall-randread4k-dio big-seqread1m-dio big-randread4k-dio net-randread4k-dio net-randread4k-buf net-seqread1m-buf"
OTHER_JOBS="net-write smallfiles treewalk mount8g"
ALL_JOBS="$FIO_JOBS $OTHER_JOBS"
QUICK_JOBS="randread4k-dio seqread1m-dio randwrite4k-dio seqwrite1m-buf randread4k-dio-2j big-seqread1m-dio net-randread4k-dio net-randread4k-buf net-seqread1m-buf $OTHER_JOBS"

mode=full
jobs_opt="" placements_opt="" reps_opt="" runtime_opt="" size_opt="" results_opt="" perf_opt=""
tree_opt="" NET_SIZE=256M SMALL_FILES=5000 BASE_BIN=""
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
        --net-size) NET_SIZE=$2; shift ;;
        --tree-files) tree_opt=$2; shift ;;
        --small-files) SMALL_FILES=$2; shift ;;
        --results) results_opt=$2; shift ;;
        --baseline) BASE_BIN=$2; shift ;;
        --perf) perf_opt=1 ;;
        --no-perf) perf_opt=0 ;;
        -h|--help) bc_help "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ $mode = quick ]; then
    JOBS=$QUICK_JOBS; PLACEMENTS="together"; REPS=1; RUNTIME=3; SIZE=256M; PERF=0; TREE_FILES=10000
else
    JOBS=$ALL_JOBS; PLACEMENTS="together apart unpinned"; REPS=2; RUNTIME=5; SIZE=1G; PERF=1; TREE_FILES=50000
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
[ -n "$tree_opt" ] && TREE_FILES=$tree_opt
if [ -n "$BASE_BIN" ]; then
    BASE_BIN=$(readlink -f "$BASE_BIN")
    [ -x "$BASE_BIN" ] || { echo "bench.sh: --baseline $BASE_BIN is not an executable" >&2; exit 2; }
fi
for j in $JOBS; do
    case " $ALL_JOBS " in *" $j "*) ;; *) echo "bench.sh: unknown job $j" >&2; exit 2 ;; esac
done
for p in $PLACEMENTS; do
    case $p in together|apart|unpinned) ;; *) echo "bench.sh: unknown placement $p" >&2; exit 2 ;; esac
done
FIRST_PL=${PLACEMENTS%% *}

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
NET_MB=$(size_mib "$NET_SIZE")
NET_FSIZE=${NET_MB}m
NET_CACHE_MB=$(( NET_MB * 2 < 256 ? 256 : NET_MB * 2 ))
WRITE_MB=256

has_job() { case " $JOBS " in *" $1 "*) return 0 ;; esac; return 1; }
# shellcheck disable=SC2254  # $1 is a glob on purpose
any_job() { local j; for j in $JOBS; do case $j in $1) return 0 ;; esac; done; return 1; }
has_pl() { case " $PLACEMENTS " in *" $1 "*) return 0 ;; esac; return 1; }

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
# The network scenario needs sshfs, an sshd and rclone: only then are they installed (through
# install-deps.sh, which keeps the sshd package from starting its service).
if any_job 'net-*'; then
    netneed=()
    command -v sshfs >/dev/null 2>&1 || netneed+=(sshfs)
    [ -x /usr/sbin/sshd ] || netneed+=(openssh-server)
    command -v ssh-keygen >/dev/null 2>&1 || netneed+=(openssh-client)
    command -v rclone >/dev/null 2>&1 || netneed+=(rclone)
    if [ ${#netneed[@]} -gt 0 ]; then "$REPO/scripts/install-deps.sh" "${netneed[@]}"; fi
fi
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

bc_resolve_bin

# ---------------------------------------------------------------- work area and cleanup
DATE=$(date -u +%Y%m%dT%H%M%SZ)
RES=${results_opt:-/tmp/extentfs-bench-$DATE}
mkdir -p "$RES/runs" "$RES/logs"
RES=$(readlink -f "$RES")
bc_init bench
WORK=$BC_WORK
DISK=""
declare -A DPID     # mount point -> daemon pid (pinned by set_placement)
PIN_TREES=()        # pids pinned together with their descendants (sshd, sshfs, rclone)

T_START=$(date +%s)
log() { echo "bench: [+$(( $(date +%s) - T_START ))s] $*" | tee -a "$RES/logs/bench.log" >&2; }
EXTRA=$RES/extra.tsv
printf 'job\tfs\tmetric\trep\tvalue\tnote\n' > "$EXTRA"
extra() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >> "$EXTRA"; }

# ---------------------------------------------------------------- machine info
cat /proc/loadavg > "$RES/loadavg-start"
{
    echo "{"
    echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
    echo "  \"command\": $(printf '%s' "$CMDLINE" | $PY -c 'import json,sys; print(json.dumps(sys.stdin.read()))'),"
    echo "  \"mode\": \"$mode\", \"size\": \"$FSIZE\", \"runtime_s\": $RUNTIME, \"ramp_s\": $RAMP, \"reps\": $REPS,"
    echo "  \"cache_size_mib\": $CACHE_MB, \"small_cache_size_mib\": $SMALL_CACHE_MB,"
    echo "  \"net_size\": \"$NET_FSIZE\", \"net_cache_size_mib\": $NET_CACHE_MB, \"write_mib\": $WRITE_MB,"
    echo "  \"tree_files\": $TREE_FILES, \"small_files\": $SMALL_FILES,"
    echo "  \"jobs\": \"$JOBS\", \"placements\": \"$PLACEMENTS\","
    echo "  \"nproc\": $(nproc), \"kernel\": \"$(uname -r)\","
    echo "  \"cpu_model\": \"$(grep -m1 '^model name' /proc/cpuinfo | sed 's/.*: //')\","
    echo "  \"mem_total\": \"$(grep MemTotal /proc/meminfo | awk '{print $2" kB"}')\","
    echo "  \"fio\": \"$(fio --version)\","
    echo "  \"libfuse\": \"$(pkg-config --modversion fuse3)\","
    echo "  \"sshfs\": \"$( (sshfs --version 2>&1 || true) | sed -n 's/^SSHFS version //p' | head -1)\","
    echo "  \"rclone\": \"$( (rclone version 2>/dev/null || true) | head -1)\","
    echo "  \"extentfs_bin\": \"$EXTENTFS_BIN\","
    echo "  \"extentfs_version\": \"$("$EXTENTFS_BIN" --version 2>/dev/null | head -1)\","
    echo "  \"extentfs_bin_mtime\": \"$(date -u -r "$EXTENTFS_BIN" +%Y-%m-%dT%H:%M:%SZ)\","
    if [ -n "$BASE_BIN" ]; then
        echo "  \"baseline_bin\": \"$BASE_BIN\","
        echo "  \"baseline_version\": \"$("$BASE_BIN" --version 2>/dev/null | head -1)\","
        echo "  \"baseline_bin_mtime\": \"$(date -u -r "$BASE_BIN" +%Y-%m-%dT%H:%M:%SZ)\","
    fi
    echo "  \"extentfs_commit\": \"$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')\","
    echo "  \"loadavg_start\": \"$(cat /proc/loadavg)\""
    echo "}"
} > "$RES/meta.json"
log "results in $RES; mode=$mode size=$FSIZE runtime=${RUNTIME}s reps=$REPS placements='$PLACEMENTS'"
log "jobs: $JOBS"
log "load average at start: $(cat /proc/loadavg)"

# ---------------------------------------------------------------- the peers: passthrough_ll, null
PTDIR=$WORK/pt
mkdir -p "$PTDIR"
bc_build_example passthrough_ll "$PTDIR"
bc_build_example null "$PTDIR"
bc_build_helper mkfiles "$PTDIR"
PT=$PTDIR/passthrough_ll
NULLFS=$PTDIR/null
BC_PT=$PT BC_MKFILES=$PTDIR/mkfiles
log "built passthrough_ll and null ($(pkg-config --modversion fuse3))"

# ---------------------------------------------------------------- mounts
mount_extentfs() {  # name src mnt opts
    local name=$1 src=$2 mnt=$3 opts=$4
    bc_mount_extentfs "$src" "$mnt" "$opts,log_file=$RES/logs/extentfs-$name.log" ||
        bc_die "cannot mount extentfs $name"
    DPID[$mnt]=$BC_PID
    log "mounted extentfs $name ($opts) at $mnt, pid $BC_PID"
}
mount_pt() {  # name src mnt opts
    local name=$1 src=$2 mnt=$3 opts=$4
    mkdir -p "$mnt"
    bc_mount_fg "$mnt" "$RES/logs/pt-$name.log" "$PT" -f -o "source=$src,$opts" "$mnt" ||
        bc_die "cannot mount passthrough_ll $name"
    DPID[$mnt]=$BC_PID
    log "mounted passthrough_ll $name ($opts) at $mnt, pid $BC_PID"
}
mount_null() {  # file
    : > "$1"
    bc_mount_fg "$1" "$RES/logs/null.log" "$NULLFS" -f "$1" || bc_die "cannot mount null"
    DPID[$1]=$BC_PID
    log "mounted null at $1 (a regular file), pid $BC_PID"
}

FS_MAIN="native pool kernel ptnever ptalways"
declare -A PATH_MAIN PATH_DISK PATH_BIG PATH_NET SRC_MAIN SRC_DISK SRC_BIG

need_main=0; need_disk=0; need_big=0; need_net=0; need_null=0; need_ptwb=0
for j in $JOBS; do
    case $j in
        cold*) need_disk=1 ;;
        big-*) need_big=1 ;;
        net-write) need_net=1 ;;
        net-*) need_net=1 ;;
        smallfiles|treewalk|mount8g) ;;
        *) need_main=1 ;;
    esac
    case $j in randread4k-dio|seqread1m-dio|randwrite4k-dio) need_null=1 ;; esac
    case $j in seqwrite1m-buf) need_ptwb=1 ;; esac
done
# the big-file jobs compare with the same-size runs of the plain jobs
[ $need_big = 1 ] && need_main=1

nfiles=0
[ $need_main = 1 ] && nfiles=6
[ $need_main = 1 ] && [ -n "$BASE_BIN" ] && nfiles=$((nfiles + 2))
[ $need_big = 1 ] && nfiles=$((nfiles + 2))
bmb=$(( nfiles * SIZE_MB + 256 ))
has_job net-write && bmb=$(( bmb + 3 * WRITE_MB ))
if [ $nfiles -gt 0 ] || has_job net-write; then
    bc_mount_tmpfs "$WORK/backing" "${bmb}m"
    log "backing tmpfs $WORK/backing ($bmb MiB)"
fi
if [ $need_main = 1 ]; then
    for fs in $FS_MAIN ptwb; do mkdir -p "$WORK/backing/$fs"; SRC_MAIN[$fs]=$WORK/backing/$fs; done
    PATH_MAIN[native]=$WORK/backing/native
    mount_extentfs pool "${SRC_MAIN[pool]}" "$WORK/mnt/pool" "cache_size=${CACHE_MB}M,cache=pool"
    PATH_MAIN[pool]=$WORK/mnt/pool
    mount_extentfs kernel "${SRC_MAIN[kernel]}" "$WORK/mnt/kernel" "cache_size=${CACHE_MB}M,cache=kernel"
    PATH_MAIN[kernel]=$WORK/mnt/kernel
    if [ -n "$BASE_BIN" ]; then
        for fs in pool kernel; do
            mkdir -p "$WORK/backing/${fs}base"; SRC_MAIN[${fs}base]=$WORK/backing/${fs}base
            EXTENTFS_BIN=$BASE_BIN mount_extentfs "${fs}base" "${SRC_MAIN[${fs}base]}" "$WORK/mnt/${fs}base" \
                "cache_size=${CACHE_MB}M,cache=$fs"
            PATH_MAIN[${fs}base]=$WORK/mnt/${fs}base
        done
    fi
    mount_pt ptnever "${SRC_MAIN[ptnever]}" "$WORK/mnt/ptnever" cache=never
    PATH_MAIN[ptnever]=$WORK/mnt/ptnever
    mount_pt ptalways "${SRC_MAIN[ptalways]}" "$WORK/mnt/ptalways" cache=always
    PATH_MAIN[ptalways]=$WORK/mnt/ptalways
    if [ $need_ptwb = 1 ]; then
        mount_pt ptwb "${SRC_MAIN[ptwb]}" "$WORK/mnt/ptwb" cache=always,writeback
        PATH_MAIN[ptwb]=$WORK/mnt/ptwb
    fi
    if [ $need_null = 1 ]; then
        mount_null "$WORK/null.file"
    fi
fi
if [ $need_big = 1 ]; then
    for fs in pool kernel; do mkdir -p "$WORK/backing/${fs}small"; SRC_BIG[$fs]=$WORK/backing/${fs}small; done
    mount_extentfs poolsmall "${SRC_BIG[pool]}" "$WORK/mnt/poolsmall" "cache_size=${SMALL_CACHE_MB}M,cache=pool"
    PATH_BIG[pool]=$WORK/mnt/poolsmall
    mount_extentfs kernelsmall "${SRC_BIG[kernel]}" "$WORK/mnt/kernelsmall" "cache_size=${SMALL_CACHE_MB}M,cache=kernel"
    PATH_BIG[kernel]=$WORK/mnt/kernelsmall
fi
if [ $need_disk = 1 ] || has_job smallfiles || has_job treewalk || has_job mount8g; then
    DISK=$(mktemp -d /var/tmp/extentfs-bench-disk.XXXXXX)
    bc_reg dir "$DISK"
    log "disk directory $DISK ($(findmnt -no FSTYPE,SOURCE -T "$DISK" | xargs))"
fi
if [ $need_disk = 1 ]; then
    for fs in $FS_MAIN; do mkdir -p "$DISK/$fs"; SRC_DISK[$fs]=$DISK/$fs; done
    PATH_DISK[native]=$DISK/native
    mount_extentfs pool-disk "${SRC_DISK[pool]}" "$WORK/mnt/pool-disk" "cache_size=${CACHE_MB}M,cache=pool"
    PATH_DISK[pool]=$WORK/mnt/pool-disk
    mount_extentfs kernel-disk "${SRC_DISK[kernel]}" "$WORK/mnt/kernel-disk" "cache_size=${CACHE_MB}M,cache=kernel"
    PATH_DISK[kernel]=$WORK/mnt/kernel-disk
    mount_pt ptnever-disk "${SRC_DISK[ptnever]}" "$WORK/mnt/ptnever-disk" cache=never
    PATH_DISK[ptnever]=$WORK/mnt/ptnever-disk
    mount_pt ptalways-disk "${SRC_DISK[ptalways]}" "$WORK/mnt/ptalways-disk" cache=always
    PATH_DISK[ptalways]=$WORK/mnt/ptalways-disk
fi

# ---------------------------------------------------------------- the network scenario
# A private sshd (own host key, port, authorized key, pid file) on 127.0.0.1 serving a tmpfs
# directory; sshfs to it is the SOURCE of two extentfs mounts (netpool, netkernel) and the peer
# `sshfs`; rclone mounts the same SFTP server with --vfs-cache-mode full.
NET=$WORK/net
SSH_PORT=""
if [ $need_net = 1 ]; then
    mkdir -p "$NET/keys" /run/sshd
    bc_mount_tmpfs "$NET/srv" "$(( 6 * NET_MB + 5 * WRITE_MB + 256 ))m"
    ssh-keygen -q -t ed25519 -N '' -f "$NET/keys/host" -C extentfs-bench-host
    ssh-keygen -q -t ed25519 -N '' -f "$NET/keys/client" -C extentfs-bench-client
    cp "$NET/keys/client.pub" "$NET/keys/authorized_keys"
    chmod 600 "$NET/keys/authorized_keys"
    # a free port: ask the kernel for one, then hand it to sshd (retry if taken in between)
    for _ in 1 2 3 4 5; do
        SSH_PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        taskset -c 0 /usr/sbin/sshd -f /dev/null -p "$SSH_PORT" -o ListenAddress=127.0.0.1 \
            -o HostKey="$NET/keys/host" -o AuthorizedKeysFile="$NET/keys/authorized_keys" \
            -o PidFile="$NET/sshd.pid" -o StrictModes=no -o PermitRootLogin=prohibit-password \
            -o PasswordAuthentication=no -o UsePAM=no -o Subsystem="sftp internal-sftp" \
            -E "$RES/logs/sshd.log" && break
        SSH_PORT=""
    done
    [ -n "$SSH_PORT" ] || bc_die "sshd did not start (see $RES/logs/sshd.log)"
    bc_reg pidfile "$NET/sshd.pid"
    for _ in $(seq 50); do [ -s "$NET/sshd.pid" ] && break; sleep 0.1; done
    PIN_TREES+=("$(cat "$NET/sshd.pid")")
    log "sshd on 127.0.0.1:$SSH_PORT, pid $(cat "$NET/sshd.pid")"
    for d in netpool netkernel sshfs rclone wnet wnet-none sshfs-w rclone-w; do mkdir -p "$NET/srv/$d"; done
    mkdir -p "$NET/sshfs"
    bc_mount_fg "$NET/sshfs" "$RES/logs/sshfs.log" taskset -c 0 sshfs -f -p "$SSH_PORT" \
        -o IdentityFile="$NET/keys/client",StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null \
        "root@127.0.0.1:$NET/srv" "$NET/sshfs" || bc_die "sshfs did not mount (see $RES/logs/sshfs.log)"
    PIN_TREES+=("$BC_PID")
    log "sshfs at $NET/sshfs, pid $BC_PID"
    mkdir -p "$NET/rclone" "$NET/rclone-cache"
    bc_mount_fg "$NET/rclone" "$RES/logs/rclone.log" taskset -c 0 rclone mount \
        ":sftp,host=127.0.0.1,port=$SSH_PORT,user=root,key_file=$NET/keys/client:$NET/srv" "$NET/rclone" \
        --vfs-cache-mode full --cache-dir "$NET/rclone-cache" --config /dev/null ||
        bc_die "rclone did not mount (see $RES/logs/rclone.log)"
    PIN_TREES+=("$BC_PID")
    log "rclone mount --vfs-cache-mode full at $NET/rclone, pid $BC_PID ($(rclone version | head -1))"
    if any_job 'net-*read*'; then
        mount_extentfs netpool "$NET/sshfs/netpool" "$NET/mnt-pool" "cache_size=${NET_CACHE_MB}M,cache=pool"
        PATH_NET[netpool]=$NET/mnt-pool
        mount_extentfs netkernel "$NET/sshfs/netkernel" "$NET/mnt-kernel" "cache_size=${NET_CACHE_MB}M,cache=kernel"
        PATH_NET[netkernel]=$NET/mnt-kernel
        PATH_NET[sshfs]=$NET/sshfs/sshfs
        PATH_NET[rclone]=$NET/rclone/rclone
    fi
fi

# ---------------------------------------------------------------- helpers
set_placement() {  # pin every daemon for this placement
    local cpus m p q
    case $1 in together) cpus=0 ;; apart) cpus=1 ;; unpinned) cpus=0-$(( $(nproc) - 1 )) ;; esac
    for m in "${!DPID[@]}"; do taskset -a -p -c "$cpus" "${DPID[$m]}" >/dev/null; done
    for p in "${PIN_TREES[@]}"; do
        for q in $p $(bc_descendants "$p"); do taskset -a -p -c "$cpus" "$q" >/dev/null 2>&1 || true; done
    done
}
fio_prefix() { case $1 in together|apart) echo "taskset -c 0" ;; *) echo "" ;; esac; }
evict() {  # drop a backing file from the kernel page cache (after writing it back)
    $PY -c 'import os,sys
fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$1"
}
resident() { fincore -nb -o RES "$1" 2>/dev/null | xargs || echo "?"; }
readpass() {  # read a file through once, direct then buffered (fills the pool / page cache)
    dd if="$1" of=/dev/null bs=1M iflag=direct status=none || true
    dd if="$1" of=/dev/null bs=1M status=none
}
ctl() { setfattr -n user.extentfs.ctl -v "$2" "$1"; }
stats_json() { "$EXTENTFS_BIN" stats "$1" --json 2>/dev/null || echo '{}'; }

# job -> fio file, DIRECT, NUMJOBS, which filesystems, which file set
job_spec() {
    local j=$1
    FS_LIST=$FS_MAIN; SET=main; NUMJOBS=1
    case $j in
        seqread1m-*|big-seqread1m-*|net-seqread1m-*) JOBFILE=seq-read.fio ;;
        seqwrite1m-*) JOBFILE=seq-write.fio ;;
        randwrite4k-*) JOBFILE=rand-write.fio ;;
        randrw4k-qd16) JOBFILE=randrw.fio ;;
        *randread4k*) JOBFILE=rand-read.fio ;;
    esac
    case $j in *-buf) DIRECT=0 ;; *) DIRECT=1 ;; esac
    case $j in *-2j) NUMJOBS=2 ;; *-4j) NUMJOBS=4 ;; esac
    case $j in
        randread4k-dio|seqread1m-dio|randwrite4k-dio) FS_LIST="$FS_MAIN null" ;;
        seqwrite1m-buf) FS_LIST="$FS_MAIN ptwb" ;;
        big-*) SET=big; FS_LIST="pool kernel" ;;
        coldall-*) SET=disk; FS_LIST="pool kernel" ;;
        cold-*) SET=disk ;;
        net-*) SET=net; FS_LIST="netpool netkernel sshfs rclone" ;;
    esac
    if [ $mode = quick ]; then  # only what the targets compare
        case $j in
            randread4k-dio) FS_LIST="pool kernel null ptnever" ;;
            seqread1m-dio) FS_LIST="pool null ptnever" ;;
            randwrite4k-dio) FS_LIST="pool kernel null ptnever" ;;
            seqwrite1m-buf) FS_LIST="pool ptnever kernel ptwb" ;;
            randread4k-dio-2j|big-*) FS_LIST="pool" ;;
        esac
    fi
    # the baseline binary runs each main-set job right after the binary under test
    if [ -n "$BASE_BIN" ] && [ $SET = main ]; then
        FS_LIST=$(echo "$FS_LIST" | xargs -n1 | sed -e 's/^pool$/pool poolbase/' -e 's/^kernel$/kernel kernelbase/' | xargs)
    fi
}
file_of() {  # fs set
    if [ "$1" = null ]; then echo "$WORK/null.file"; return; fi
    case $2 in
        main) echo "${PATH_MAIN[$1]}/bench.dat" ;;
        big) echo "${PATH_BIG[$1]}/bench.dat" ;;
        disk) echo "${PATH_DISK[$1]}/bench.dat" ;;
        net) echo "${PATH_NET[$1]}/bench.dat" ;;
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
size_of_set() { if [ "$1" = net ]; then echo "$NET_FSIZE"; else echo "$FSIZE"; fi; }

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
    # shellcheck disable=SC2046
    FILENAME=$f SIZE=$(size_of_set "$set") RUNTIME=$RUNTIME RAMP=$RAMP DIRECT=$DIRECT NUMJOBS=$NUMJOBS \
        $(fio_prefix "$pl") fio --output-format=json --output="$out" "$FIODIR/$JOBFILE" \
        2> "$RES/logs/fio-stderr.tmp" || { log "fio failed: $fs $job $pl r$rep: $(cat "$RES/logs/fio-stderr.tmp")"; note="$note;fio_failed"; }
    la=$(cut -d' ' -f1-3 /proc/loadavg)
    # writes: push the data down before the next run (not timed)
    case $job in *write*|randrw*) [ "$fs" = null ] || sync "$f" || true ;; esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$fs" "$job" "$pl" "$rep" "runs/${out##*/}" "$lb" "$la" "$note" >> "$INDEX"
}

# ---------------------------------------------------------------- lay out and warm the files
prep_set() {  # set fs...
    local set=$1 fs f; shift
    for fs in "$@"; do
        [ "$fs" = null ] && continue
        f=$(file_of "$fs" "$set")
        FILENAME=$f SIZE=$(size_of_set "$set") fio --output-format=terse "$FIODIR/prep.fio" > /dev/null
        case $fs in netpool|netkernel) "$EXTENTFS_BIN" sync "$(dirname "$f")" >/dev/null ;; *) sync "$f" ;; esac
        readpass "$f"
    done
    log "laid out and warmed $(size_of_set "$set") files ($set): $*"
}
set_placement unpinned
main_fs=""
for j in $JOBS; do
    case " $FIO_JOBS " in *" $j "*) ;; *) continue ;; esac
    job_spec "$j"
    [ "$SET" = main ] && main_fs="$main_fs $FS_LIST"
done
main_fs=$(echo "$main_fs" | xargs -n1 2>/dev/null | awk '!seen[$0]++' | xargs)
# shellcheck disable=SC2086  # lists of names
[ $need_main = 1 ] && [ -n "$main_fs" ] && prep_set main $main_fs
# shellcheck disable=SC2086
if [ $need_big = 1 ]; then job_spec big-seqread1m-dio; prep_set big $FS_LIST; fi
# shellcheck disable=SC2086
[ $need_disk = 1 ] && prep_set disk $FS_MAIN
if any_job 'net-*read*'; then
    prep_set net netpool netkernel sshfs rclone
    # rclone uploads in the background (--vfs-write-back 5s): let it finish before measuring
    sleep 6
fi
if [ $need_main = 1 ]; then
    stats_json "${PATH_MAIN[pool]}" > "$RES/logs/stats-pool-after-warm.json"
fi

# ---------------------------------------------------------------- the fio runs
nruns=0
for j in $JOBS; do
    case " $FIO_JOBS " in *" $j "*) ;; *) continue ;; esac
    job_spec "$j"; for _ in $FS_LIST; do nruns=$((nruns+1)); done
done
total=$(( nruns * REPS * $(echo "$PLACEMENTS" | wc -w) ))
# The scale target (2 jobs vs 1, judged unpinned) needs unpinned runs of pool even when the
# placements do not include it.
SCALE_EXTRA=0
if has_job randread4k-dio-2j && ! has_pl unpinned && [ $need_main = 1 ]; then
    SCALE_EXTRA=1; total=$(( total + 2 * REPS ))
fi
log "$total fio runs of ${RUNTIME}s (+${RAMP}s ramp)"
t0=$(date +%s)
i=0
for pl in $PLACEMENTS; do
    set_placement "$pl"
    for (( r=1; r<=REPS; r++ )); do
        for j in $JOBS; do
            case " $FIO_JOBS " in *" $j "*) ;; *) continue ;; esac
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
if [ $SCALE_EXTRA = 1 ]; then
    set_placement unpinned
    for (( r=1; r<=REPS; r++ )); do
        for j in randread4k-dio randread4k-dio-2j; do
            job_spec "$j"; i=$((i+1))
            run_fio pool "$j" unpinned "$r" main
        done
    done
    log "[$i/$total] unpinned scale runs done ($(( $(date +%s) - t0 ))s)"
fi
rm -f "$RES/logs/fio-stderr.tmp"

# ---------------------------------------------------------------- the other jobs
set_placement "$FIRST_PL"
cpu_prefix() { case $FIRST_PL in together|apart) echo "taskset -c 0" ;; *) echo "" ;; esac; }

if has_job net-write; then
    # extentfs over the sshfs SOURCE vs extentfs over a tmpfs SOURCE, default options and the
    # same cache_size; coherence=none beside it (no write-back at close); sshfs and rclone too.
    # Each rep writes a new file (dd 1M, the close included), then `extentfs sync` (untimed).
    head -c $(( WRITE_MB * 1048576 )) /dev/urandom > "$WORK/backing/write.src"
    mkdir -p "$WORK/backing/wtmp" "$WORK/backing/wtmp-none"
    wopts="cache_size=$(( WRITE_MB * 4 ))M"
    mount_extentfs wtmp "$WORK/backing/wtmp" "$WORK/mnt/wtmp" "$wopts"
    mount_extentfs wtmp-none "$WORK/backing/wtmp-none" "$WORK/mnt/wtmp-none" "$wopts,coherence=none"
    mount_extentfs wnet "$NET/sshfs/wnet" "$NET/mnt-wnet" "$wopts"
    mount_extentfs wnet-none "$NET/sshfs/wnet-none" "$NET/mnt-wnet-none" "$wopts,coherence=none"
    set_placement "$FIRST_PL"
    declare -A WDIR=([wtmp]=$WORK/mnt/wtmp [wtmp-none]=$WORK/mnt/wtmp-none [wnet]=$NET/mnt-wnet
                     [wnet-none]=$NET/mnt-wnet-none [sshfs]=$NET/sshfs/sshfs-w [rclone]=$NET/rclone/rclone-w)
    nw=$(( REPS < 3 ? 3 : REPS )); [ $mode = quick ] && nw=2
    # Repetition 0 is a warm-up, not recorded: each file system's memory (the pool, tmpfs
    # pages, rclone's cache) is touched once before the timed writes. On a KVM guest whose free
    # memory the host takes back (free page reporting), a first touch of it costs about 3.5 ms
    # per MiB, which made the first repetition up to 5x slower than the next.
    # record NAME START END: a figure of repetition $r on $fs (none for the warm-up)
    record() { [ "$r" = 0 ] || extra net-write "$fs" "$1" "$r" "$(bc_secs "$2" "$3")"; }
    for (( r=0; r<=nw; r++ )); do
        for fs in wtmp wnet wtmp-none wnet-none sshfs rclone; do
            d=${WDIR[$fs]}
            s=$(bc_now)
            # shellcheck disable=SC2046
            $(cpu_prefix) dd if="$WORK/backing/write.src" of="$d/w$r.dat" bs=1M status=none
            e=$(bc_now)
            record seconds "$s" "$e"
            case $fs in
                w*) s=$(bc_now); "$EXTENTFS_BIN" sync "$d" >/dev/null || log "sync $d failed"; e=$(bc_now)
                    record sync_seconds "$s" "$e" ;;
                *) sync "$d/w$r.dat" || true ;;
            esac
            rm -f "$d/w$r.dat"
        done
    done
    for fs in wtmp wnet; do stats_json "${WDIR[$fs]}" > "$RES/logs/stats-$fs-end.json"; done
    log "net-write: $nw reps of a $WRITE_MB MiB write"
fi

if has_job smallfiles; then
    mkdir -p "$DISK/sf"
    # A new ext4 filesystem per run, as scripts/smallfiles-bench.sh does (see bc_smallfiles_run).
    bc_fresh_fs_default
    nsf=$(( REPS < 3 ? 3 : REPS )) sffs="passthrough_ll extentfs-cto extentfs-none native"
    [ $mode = quick ] && nsf=1 sffs="passthrough_ll extentfs-cto"
    for (( r=1; r<=nsf; r++ )); do
        for fs in $sffs; do
            read -r c t < <(bc_smallfiles_run "$fs" "$r" "$SMALL_FILES" "$DISK/sf" "$RES/logs")
            extra smallfiles "$fs" create_seconds "$r" "$c"
            extra smallfiles "$fs" total_seconds "$r" "$t"
        done
    done
    log "smallfiles: $SMALL_FILES files done"
fi

if has_job treewalk; then
    # One tree, created natively on the disk; each rep mounts passthrough_ll (default options)
    # and extentfs (default options) afresh on it: walk 1 is cold for the FUSE mount, walk 2
    # is the warm second walk. The native directory is walked twice too.
    tsrc=$DISK/tree
    mkdir -p "$tsrc"
    "$BC_MKFILES" "$tsrc" "$TREE_FILES" > /dev/null
    sync
    walk() {  # dir -> seconds of find + ls -lR + du (and per tool), or "failed TOOL"
        local s a b e
        s=$(bc_now)
        $(cpu_prefix) find "$1" > /dev/null 2>> "$RES/logs/treewalk-errors.txt" || { echo "failed find"; return 0; }
        a=$(bc_now)
        $(cpu_prefix) ls -lR "$1" > /dev/null 2>> "$RES/logs/treewalk-errors.txt" || { echo "failed ls"; return 0; }
        b=$(bc_now)
        $(cpu_prefix) du -s "$1" > /dev/null 2>> "$RES/logs/treewalk-errors.txt" || { echo "failed du"; return 0; }
        e=$(bc_now)
        echo "$(bc_secs "$s" "$e") find=$(bc_secs "$s" "$a");ls=$(bc_secs "$a" "$b");du=$(bc_secs "$b" "$e")"
    }
    for (( r=1; r<=REPS; r++ )); do
        for fs in passthrough_ll extentfs native; do
            m=$WORK/tree-$fs-$r
            case $fs in
                passthrough_ll)
                    mkdir -p "$m"
                    bc_mount_fg "$m" "$RES/logs/pt-tree.log" "$PT" -f -o "source=$tsrc" "$m" || bc_die "tree pt"
                    DPID[$m]=$BC_PID ;;
                extentfs) mount_extentfs tree "$tsrc" "$m" "cache_size=1G" ;;
                native) m=$tsrc ;;
            esac
            set_placement "$FIRST_PL"
            [ $fs = extentfs ] && stats_json "$m" > "$RES/logs/stats-tree-r$r-0.json"
            for w in cold warm; do
                read -r t c < <(walk "$m")
                # a failed walk (passthrough_ll holds a descriptor per inode and runs out past
                # RLIMIT_NOFILE) is recorded as failed, with the tool that failed
                [ "$t" = failed ] && log "treewalk: $fs $w walk: $c failed ($(tail -1 "$RES/logs/treewalk-errors.txt"))"
                extra treewalk "$fs" "${w}_seconds" "$r" "$t" "$c"
                [ $fs = extentfs ] && stats_json "$m" > "$RES/logs/stats-tree-r$r-$w.json"
            done
            if [ $fs != native ]; then
                p=${DPID[$m]}; unset "DPID[$m]"
                bc_unmount "${fs%%_*}" "$m"; bc_stop_pid "$p" 300
            fi
        done
    done
    log "treewalk: $TREE_FILES files done"
fi

if has_job mount8g; then
    mkdir -p "$DISK/m8"
    for (( r=1; r<=(REPS < 3 ? 3 : REPS); r++ )); do
        m=$WORK/m8-$r
        mkdir -p "$m"
        s=$(bc_now)
        "$EXTENTFS_BIN" "$DISK/m8" "$m" -o "cache_size=8G,log_file=$RES/logs/extentfs-m8.log"
        e=$(bc_now)
        p=$(bc_pid_of_mount "$EXTENTFS_BIN" "$m")
        bc_reg_mount extentfs "$m" "$p"
        extra mount8g extentfs seconds "$r" "$(bc_secs "$s" "$e")" "$(grep -o 'pool backed by [a-z0-9]*' <("$EXTENTFS_BIN" stats "$m") || true)"
        bc_unmount extentfs "$m"; bc_stop_pid "$p" 300
    done
    log "mount8g done"
fi

# ---------------------------------------------------------------- perf profile of the daemon
if [ "$PERF" = 1 ] && [ $need_main = 1 ] && [ $need_null = 1 ] && command -v perf >/dev/null 2>&1; then
    set_placement together
    for j in randread4k-dio randwrite4k-dio; do
        job_spec "$j"
        prof=$(( RUNTIME + 3 ))
        # daemon CPU per request, extentfs against null, pinned together (perf stat)
        for fs in pool kernel null; do
            f=$(file_of "$fs" main)
            if [ $fs = null ]; then pid=${DPID[$WORK/null.file]}; else pid=${DPID[$(mnt_of "$fs" main)]}; fi
            FILENAME=$f SIZE=$FSIZE RUNTIME=$prof RAMP=0 DIRECT=1 NUMJOBS=1 \
                taskset -c 0 fio --output-format=json --output="$RES/runs/perfstat.$fs.$j.json" \
                "$FIODIR/$JOBFILE" &
            fpid=$!
            sleep 1
            perf stat -x, -e task-clock,context-switches,cpu-migrations -p "$pid" \
                -o "$RES/perfstat-$fs-$j.csv" -- sleep $(( prof - 2 )) > /dev/null 2>&1 || true
            wait $fpid || true
            echo "window_s,$(( prof - 2 ))" >> "$RES/perfstat-$fs-$j.csv"
        done
    done
    # where extentfs's daemon spends it (perf record): the jobs of the targets not met so far
    prof_list="pool:main:randread4k-dio pool:main:randwrite4k-dio"
    [ $need_big = 1 ] && prof_list="$prof_list pool:big:big-seqread1m-dio"
    any_job 'net-*read*' && prof_list="$prof_list netpool:net:net-seqread1m-buf"
    for spec in $prof_list; do
        IFS=: read -r fs set j <<< "$spec"
        job_spec "$j"
        f=$(file_of "$fs" "$set")
        pid=${DPID[$(mnt_of "$fs" "$set")]}
        prof=$(( RUNTIME + 3 ))
        FILENAME=$f SIZE=$(size_of_set "$set") RUNTIME=$prof RAMP=0 DIRECT=$DIRECT NUMJOBS=1 \
            taskset -c 0 fio --output-format=json --output="$RES/runs/perf.$fs.$j.together.json" \
            "$FIODIR/$JOBFILE" &
        fpid=$!
        sleep 1
        perf record -q -g -F 2999 -p "$pid" -o "$RES/perf-$j.data" -- sleep $(( prof - 2 )) \
            > "$RES/logs/perf-record-$j.log" 2>&1 || true
        wait $fpid || true
        perf report -i "$RES/perf-$j.data" --stdio --no-children --sort symbol --percent-limit 0.7 \
            2>/dev/null | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' \
            | head -40 > "$RES/perf-$j-self.txt" || true
        perf report -i "$RES/perf-$j.data" --stdio --children --sort symbol --percent-limit 3 -g none \
            2>/dev/null | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' \
            | head -40 > "$RES/perf-$j-children.txt" || true
        perf report -i "$RES/perf-$j.data" --stdio --no-children --sort dso \
            2>/dev/null | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]]+$//' > "$RES/perf-$j-dso.txt" || true
        rm -f "$RES/perf-$j.data.old"
        log "perf profile ($j, together): $RES/perf-$j-self.txt"
    done
fi

# ---------------------------------------------------------------- wrap up
if [ $need_main = 1 ]; then
    stats_json "${PATH_MAIN[pool]}" > "$RES/logs/stats-pool-end.json"
    stats_json "${PATH_MAIN[kernel]}" > "$RES/logs/stats-kernel-end.json"
fi
if [ $need_disk = 1 ]; then
    stats_json "${PATH_DISK[pool]}" > "$RES/logs/stats-pool-disk-end.json"
fi
if any_job 'net-*read*'; then
    stats_json "${PATH_NET[netpool]}" > "$RES/logs/stats-netpool-end.json"
    stats_json "${PATH_NET[netkernel]}" > "$RES/logs/stats-netkernel-end.json"
fi
cat /proc/loadavg > "$RES/loadavg-end"
log "load average at end: $(cat /proc/loadavg); $(( $(date +%s) - t0 ))s after the set-up"
$PY "$REPO/scripts/bench-report.py" "$RES"
