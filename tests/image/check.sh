#!/usr/bin/env bash
# Checks the release build the Dockerfile makes: the same command yields a static binary (printed
# with its size), and, where buildah is installed, the image's final stage builds and runs it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
target=x86_64-unknown-linux-musl
# The Dockerfile's build command.
cargo build --release --locked -p baton --target "$target"
bin=${CARGO_TARGET_DIR:-$root/target}/$target/release/baton
if ldd "$bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
  echo "image-check: static binary: yes"
else
  echo "image-check: FAILED: $bin is dynamically linked:" >&2
  ldd "$bin" >&2
  exit 1
fi
size=$(stat -c %s "$bin")
echo "image-check: binary size: $size bytes ($((size / 1024)) KiB)"
"$bin" --version

if ! command -v buildah >/dev/null; then
  echo "image-check: buildah not installed; skipping the image build"
  exit 0
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/baton"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
cp -r /usr/share/zoneinfo "$ctx/zoneinfo"
export STORAGE_DRIVER=vfs
buildah bud --isolation chroot -q -t localhost/baton:check -f tests/image/Containerfile "$ctx" >/dev/null
c=$(buildah from localhost/baton:check)
out=$(buildah run --isolation chroot "$c" -- /baton --version)
buildah rm "$c" >/dev/null
echo "image-check: image runs: $out"
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' localhost/baton:check
buildah rmi localhost/baton:check >/dev/null
