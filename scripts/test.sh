#!/usr/bin/env bash
# Run every test: formatting and lints, unit and property tests, and the fs-tests that mount
# extentfs for real (root and /dev/fuse required). Installs what it needs first. The log is
# target/test.log; the daemon ERROR lines in it are listed, marked expected when a test
# provokes them on purpose; the last line is `N passed, N failed`; the exit status is
# non-zero if anything failed (a lint, a build, a test).
set -euo pipefail
cd "$(dirname "$0")/.."
# sshfs and a private sshd: the coherence tests' network SOURCE.
scripts/install-deps.sh sshfs openssh-server openssh-client
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
# Daemon ERROR lines in the log: the tests that fill SOURCE or pass its file size limit
# provoke them on purpose; any other one is marked for a look (it does not fail the run).
expected='No space left on device|File too large'
if grep -q ' ERROR ' "$log"; then
    echo "== daemon ERROR lines"
    grep ' ERROR ' "$log" | while IFS= read -r line; do
        if printf '%s\n' "$line" | grep -Eq "$expected"; then
            echo "  expected (provoked by a test): ${line#* ERROR }"
        else
            echo "  UNEXPECTED: ${line#* ERROR }"
        fi
    done
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
