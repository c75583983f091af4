#!/usr/bin/env bash
# Run the cargo-fuzz targets in fuzz/ for a while each.
#
#   scripts/fuzz.sh [TARGET] [SECONDS] [-- LIBFUZZER_ARGS...]
#
# TARGET: options, extent_state or all (default all); SECONDS: per target (default 60).
# Installs cargo-fuzz if missing. cargo fuzz needs nightly-only flags (-Z sanitizer=...), so
# the stable toolchain is used with RUSTC_BOOTSTRAP=1. Corpora go to fuzz/corpus/TARGET,
# crashes to fuzz/artifacts/TARGET (both git-ignored). Exits non-zero if a target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:-all}"
seconds="${2:-60}"
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift

case "$target" in
    all) targets=(options extent_state) ;;
    options|extent_state) targets=("$target") ;;
    *) echo "usage: $0 [options|extent_state|all] [SECONDS] [-- LIBFUZZER_ARGS...]" >&2; exit 2 ;;
esac
case "$seconds" in
    ''|*[!0-9]*) echo "SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

status=0
for t in "${targets[@]}"; do
    echo "== cargo fuzz run $t (${seconds}s)"
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="$seconds" "$@"; then
        echo "== $t: FAILED (crash input in fuzz/artifacts/$t/)" >&2
        status=1
    fi
done
exit "$status"
