#!/usr/bin/env bash
# Builds the container images the real-node tests run, with buildah (no daemon, no registry) into
# OCI archives that each node's containerd imports:
#   baton.tar  the Dockerfile's final stage, fed with the static musl binary its build stage makes
#              (the stage is cut out of the Dockerfile, not copied), tagged as the manifests name it;
#   pause.tar  the pod sandbox (pause.c, static);
#   web.tar    busybox (static): a shell and an HTTP server for the zero-downtime scenario.
# Archives are cached outside the clone, keyed by a hash of every input; only what changed is
# rebuilt. Prints the directory holding the three archives last.
#
# Usage: tests/real-node/images.sh BATON_BINARY
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:?usage: images.sh BATON_BINARY (the static musl build)}
cache=${BATON_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}/images
mkdir -p "$cache"
say() { printf '[images] %s\n' "$*" >&2; }

# The image name the manifests use: `baton:<crate version>` (a test checks both agree).
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
baton_ref=docker.io/library/baton:$version
pause_ref=localhost/baton-test/pause:1
web_ref=localhost/baton-test/web:1

# The Dockerfile's final stage: from its last FROM to the end, reading from the context instead of
# the build stage.
final_stage() {
  awk '/^FROM /{n=NR} {l[NR]=$0} END{for(i=n;i<=NR;i++) print l[i]}' "$root/Dockerfile" |
    sed 's/^COPY --from=[^ ]* /COPY /'
}

key=$( {
  sha256sum "$bin" "$here/pause.c" /bin/busybox "$here/images.sh" /etc/ssl/certs/ca-certificates.crt
  final_stage
  echo "$baton_ref $pause_ref $web_ref"
} | sha256sum | cut -c1-16)
out=$cache/$key
if [[ -s $out/baton.tar && -s $out/pause.tar && -s $out/web.tar ]]; then
  echo "$out"
  exit 0
fi

work=$(mktemp -d)
export STORAGE_DRIVER=vfs
store=(--root "$work/storage" --runroot "$work/run")
cleanup() {
  buildah "${store[@]}" rm --all >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

build() { # build NAME REF CONTEXT CONTAINERFILE
  local name=$1 ref=$2 ctx=$3 file=$4 t=$SECONDS
  buildah "${store[@]}" bud --isolation chroot -q --layers=false -t "$ref" -f "$file" "$ctx" >/dev/null
  buildah "${store[@]}" push -q "$ref" "oci-archive:$out.tmp/$name.tar:$ref"
  say "built $name ($ref) in $((SECONDS - t))s"
}
rm -rf "$out.tmp" && mkdir -p "$out.tmp"

# baton: the context holds what the build stage would have produced, at the same paths.
ctx=$work/baton
mkdir -p "$ctx/etc/ssl/certs" "$ctx/usr/share"
cp "$bin" "$ctx/baton"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/etc/ssl/certs/"
cp -r /usr/share/zoneinfo "$ctx/usr/share/zoneinfo"
final_stage >"$work/baton.Containerfile"
build baton "$baton_ref" "$ctx" "$work/baton.Containerfile"

ctx=$work/pause
mkdir -p "$ctx"
cc=$(command -v musl-gcc || command -v gcc)
"$cc" -static -Os -s -o "$ctx/pause" "$here/pause.c"
printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >"$work/pause.Containerfile"
build pause "$pause_ref" "$ctx" "$work/pause.Containerfile"

ctx=$work/web
mkdir -p "$ctx/bin"
cp /bin/busybox "$ctx/bin/busybox"
for applet in sh sleep date echo cat mkdir httpd kill; do ln -s busybox "$ctx/bin/$applet"; done
printf 'FROM scratch\nCOPY bin /bin\nENTRYPOINT ["/bin/sh"]\n' >"$work/web.Containerfile"
build web "$web_ref" "$ctx" "$work/web.Containerfile"

rm -rf "$out" && mv "$out.tmp" "$out"
# Keep only the newest few builds.
ls -1dt "$cache"/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
echo "$out"
