#!/usr/bin/env bash
# Run every test: formatting and lints, unit and property tests, and the fs-tests that mount
# extentfs for real (root and /dev/fuse required). Installs what it needs first. The log is
# target/test.log; the last line is `N passed, N failed`; the exit status is non-zero if
# anything failed (a lint, a build, a test).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# pjdfstest (the Rust rewrite) runs from inside a mount in the fs-tests.
if ! command -v pjdfstest >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest" ]; then
    echo "== installing pjdfstest"
    cargo install pjdfstest --locked --quiet
fi
mkdir -p target
log=target/test.log
: > "$log"
status=0
step() {
    echo "== $*" | tee -a "$log"
    if ! "$@" 2>&1 | tee -a "$log"; then
        echo "== FAILED: $*" | tee -a "$log"
        status=1
        return 1
    fi
}
if step cargo fmt --check && step cargo clippy --all-targets --quiet -- -D warnings; then
    step cargo test --all-targets || true
fi
# Sum the `test result:` lines of every test binary.
read -r passed failed < <(awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) p += $(i - 1)
            if ($(i) ~ /^failed;?$/) f += $(i - 1)
        }
    } END { print p + 0, f + 0 }' "$log")
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    # A lint or a build failed before any test could: count it as one failure.
    failed=1
fi
echo "$passed passed, $failed failed"
exit "$status"
