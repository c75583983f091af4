#!/usr/bin/env bash
# Run every test: formatting and lints, unit and property tests, and the fs-tests that mount
# extentfs for real (root and /dev/fuse required). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
# sshfs and a private sshd: the coherence tests' network SOURCE.
scripts/install-deps.sh sshfs openssh-server openssh-client
# pjdfstest (the Rust rewrite) runs from inside a mount in the fs-tests.
if ! command -v pjdfstest >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest" ]; then
    echo "== installing pjdfstest"
    cargo install pjdfstest --locked --quiet
fi
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test (unit, property and mount tests)"
cargo test --all-targets 2>&1 | tee /tmp/extentfs-test.log
