#!/usr/bin/env bash
# Run every test: formatting and lints, unit and property tests, and the fs-tests that mount
# extentfs for real (root and /dev/fuse required). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test (unit, property and mount tests)"
cargo test --all-targets 2>&1 | tee /tmp/extentfs-test.log
