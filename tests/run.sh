#!/usr/bin/env bash
# baton's test command: builds the local control plane if it is missing (cached outside the
# clone), then runs every unit and end-to-end test of the workspace. Extra arguments go to
# `cargo test` (e.g. `tests/run.sh -p baton` for the unit tests alone).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
assets=$("$root/tests/control-plane/build.sh" | tail -n 1)
export BATON_CONTROL_PLANE_ASSETS=$assets
cd "$root"
# The end-to-end tests run the real agent binary, one process per simulated node.
cargo build --locked -p baton
export BATON_BIN=${CARGO_TARGET_DIR:-$root/target}/debug/baton
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
# One closing line over all test binaries.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$out"
exit "$rc"
