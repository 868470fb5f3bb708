#!/usr/bin/env bash
# baton's test command. On a fresh machine it installs what the tests need (tests/setup.sh),
# builds the local control plane and kubelet (cached outside the clone), the static release
# binary and the images the real nodes run, then runs every unit and end-to-end test of the
# workspace and, without arguments, the model checker's full check, and prints one closing
# line. Extra arguments go to `cargo test` (e.g. `tests/run.sh -p baton` for the unit tests
# alone, `tests/run.sh --test real_node` for the real-node tests).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tests/setup.sh"
assets=$("$root/tests/control-plane/build.sh" | tail -n 1)
export BATON_CONTROL_PLANE_ASSETS=$assets
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
# The image the real nodes run: the Dockerfile's build command, then its final stage.
cargo build --locked --release -p baton --target x86_64-unknown-linux-musl
BATON_IMAGES=$(tests/real-node/images.sh "$target/x86_64-unknown-linux-musl/release/baton" | tail -n 1)
export BATON_IMAGES
# The end-to-end tests on kwok nodes run the agent binary itself, one process per node.
cargo build --locked -p baton
export BATON_BIN=$target/debug/baton
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
# The model checker's full check (README, "The model checker"; `cargo test` runs its quick set):
# every configuration, about 5 minutes, in the dev profile (the model crate is optimised there
# too, and nothing more is built). Only when the whole suite runs, not a subset.
model_rc=0
if [ "$#" -eq 0 ]; then
  cargo run --locked -q -p baton-model || model_rc=$?
fi
# One closing line over all test binaries.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$out"
if [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
exit "$model_rc"
