#!/usr/bin/env bash
# baton's local demo: builds the control plane if it is missing, then rolls a reboot through
# a local cluster of kwok nodes with one real baton agent per node. `tests/demo.sh --nodes 5`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tests/setup.sh"
assets=$("$root/tests/control-plane/build.sh" | tail -n 1)
export BATON_CONTROL_PLANE_ASSETS=$assets
cd "$root"
cargo build --locked -q -p baton -p baton-tests --bin baton --bin baton-demo
target=${CARGO_TARGET_DIR:-$root/target}/debug
BATON_BIN=$target/baton exec "$target/baton-demo" "$@"
