#!/usr/bin/env bash
# Long run of the randomized differential tester (fs-tests/reliability.rs): mount vs. an
# in-memory model, in both cache modes, with the given seed and number of operations per mode.
# Release build; root and /dev/fuse required.
#   scripts/difftest.sh SEED OPS         e.g. scripts/difftest.sh 7 200000
# A failure prints the seed, the step and the operation that diverged.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 SEED OPS" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
export EXTENTFS_DIFF_SEED="$1" EXTENTFS_DIFF_OPS="$2"
exec cargo test --release --test fs_tests reliability::differential_ -- --nocapture --test-threads=2
