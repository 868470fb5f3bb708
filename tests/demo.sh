#!/usr/bin/env bash
# baton's local demo. On a fresh machine it installs what it needs (tests/setup.sh) and builds the
# control plane if it is missing, then rolls a reboot through a local cluster:
#   tests/demo.sh                  3 kwok nodes, one real baton agent process per node
#   tests/demo.sh --nodes 5        more nodes
#   tests/demo.sh --real-nodes     2 real nodes (containerd + kubelet, rebooting for real), baton
#                                  installed from manifests/ as shipped, real web containers and
#                                  a client counting failed requests (needs root)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tests/setup.sh"
assets=$("$root/tests/control-plane/build.sh" | tail -n 1)
export BATON_CONTROL_PLANE_ASSETS=$assets
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
if [[ " $* " == *" --real-nodes "* ]]; then
  # The image the real nodes run: the Dockerfile's build command, then its final stage.
  cargo build --locked -q --release -p baton --target x86_64-unknown-linux-musl
  BATON_IMAGES=$(tests/real-node/images.sh "$target/x86_64-unknown-linux-musl/release/baton" | tail -n 1)
  export BATON_IMAGES
fi
cargo build --locked -q -p baton -p baton-tests --bin baton --bin baton-demo --bin baton-node-init
BATON_BIN=$target/debug/baton exec "$target/debug/baton-demo" "$@"
