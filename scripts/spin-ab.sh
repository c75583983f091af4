#!/usr/bin/env bash
# A/B of extentfs's idle polling (`-o spin=`): 4 KiB random direct reads of a cached 256 MiB
# file, extentfs with each given option set against passthrough_ll cache=never, in one run,
# under one placement (see docs/benchmarks.md, "What changed since the previous run").
#
#   scripts/spin-ab.sh [apart|together|unpinned] [OPTS...]
#
#   OPTS   extra extentfs options per round, e.g. "spin=0" "spin=2ms" "" (default: spin=0 and
#          the default options)
#   EXTENTFS_BIN  binary (default target/release/extentfs); PASSTHROUGH_LL  a built
#          passthrough_ll (default: built from /usr/share/doc/libfuse3-dev/examples into a
#          temporary directory, as bench.sh does)
#
# Prints one line per round: IOPS of extentfs and of the peer, and their ratio. Run as root;
# everything mounted or started is unmounted/stopped on exit (by PID).
set -euo pipefail
placement=${1:-apart}
shift || true
[ $# -eq 0 ] && set -- "spin=0" ""
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${EXTENTFS_BIN:-$repo/target/release/extentfs}
[ -x "$bin" ] || { echo "spin-ab.sh: $bin missing (cargo build --release)" >&2; exit 2; }
W=$(mktemp -d /tmp/extentfs-spin-ab.XXXXXX)
pids=()
cleanup() {
    for m in "$W/me" "$W/mp"; do mountpoint -q "$m" && umount "$m" 2>/dev/null; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
    mountpoint -q "$W/back" && umount "$W/back"
    rm -rf "$W"
}
trap cleanup EXIT
pt=${PASSTHROUGH_LL:-}
if [ -z "$pt" ]; then
    pt=$W/passthrough_ll
    gcc -O2 -o "$pt" /usr/share/doc/libfuse3-dev/examples/passthrough_ll.c \
        $(pkg-config fuse3 --cflags --libs)
fi
mkdir -p "$W/back" "$W/me" "$W/mp"
mount -t tmpfs -o size=700M none "$W/back"
mkdir -p "$W/back/e" "$W/back/p"
pin() { # pin every thread of daemon $1 for $placement
    case $placement in
        apart) taskset -a -p -c 1 "$1" >/dev/null ;;
        together) taskset -a -p -c 0 "$1" >/dev/null ;;
    esac
}
fio_pin=(); [ "$placement" = unpinned ] || fio_pin=(taskset -c 0)
iops() {
    "${fio_pin[@]}" fio --name=r --filename="$1" --rw=randread --bs=4k --direct=1 \
        --ioengine=psync --size=256M --time_based --runtime=3 --ramp_time=1 --invalidate=0 \
        --output-format=json |
        python3 -c "import json,sys; print(int(json.load(sys.stdin)['jobs'][0]['read']['iops']))"
}
"$pt" -o source="$W/back/p",cache=never "$W/mp"
ptpid=$(pgrep -f -- "-o source=$W/back/p" | head -1)
pids+=("$ptpid")
pin "$ptpid"
dd if=/dev/urandom of="$W/mp/f" bs=1M count=256 status=none
for opts in "$@"; do
    "$bin" "$W/back/e" "$W/me" -o "cache_size=600M${opts:+,$opts}"
    epid=$(pgrep -f -- "$bin $W/back/e " | head -1)
    pids+=("$epid")
    pin "$epid"
    [ -f "$W/me/f" ] || dd if=/dev/urandom of="$W/me/f" bs=1M count=256 status=none
    dd if="$W/me/f" of=/dev/null bs=1M iflag=direct status=none
    sleep 1 # spin=auto looks at the CPU affinity once a second
    e=$(iops "$W/me/f")
    p=$(iops "$W/mp/f")
    echo "$placement opts='${opts:-default}': extentfs $e IOPS, passthrough_ll $p IOPS, ratio $(python3 -c "print(round($e/$p, 2))")"
    umount "$W/me"
    for _ in $(seq 100); do kill -0 "$epid" 2>/dev/null || break; sleep 0.1; done
done
