#!/usr/bin/env bash
# Checks the release build the Dockerfile makes: the same command yields a static binary (printed
# with its size), and the image's final stage (built by tests/real-node/images.sh) runs it.
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

# The image the real-node tests run: the Dockerfile's final stage, built with buildah.
images=$(tests/real-node/images.sh "$bin")
work=$(mktemp -d)
export STORAGE_DRIVER=vfs
store=(--root "$work/storage" --runroot "$work/run")
trap 'buildah "${store[@]}" rm --all >/dev/null 2>&1; rm -rf "$work"' EXIT
c=$(buildah "${store[@]}" from -q "oci-archive:$images/baton.tar")
out=$(buildah "${store[@]}" run --isolation chroot "$c" -- /baton --version)
echo "image-check: image runs: $out"
entry=$(buildah "${store[@]}" inspect --format '{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$c")
echo "image-check: entrypoint and command: $entry"
echo "image-check: image size: $(stat -c %s "$images/baton.tar") bytes (archive)"
