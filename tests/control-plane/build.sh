#!/usr/bin/env bash
# Builds the real Kubernetes control plane used by baton's tests (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok; kubelet for the real-node tests; plus kubectl and
# helm for the install tests)
# from the Go module proxy, into a cache outside the clone keyed by version and by each
# component's recipe. Builds only what is missing.
#
# Usage: tests/control-plane/build.sh            build what is missing, print the assets dir last
#        tests/control-plane/build.sh --check    print the assets dir if complete, else exit 1
#
# Environment:
#   BATON_CACHE_DIR       cache root (default: ${XDG_CACHE_HOME:-~/.cache}/baton)
#   KUBEBUILDER_ASSETS    a dir with etcd and kube-apiserver (the envtest convention): used as is
#   BATON_K8S_BIN_DIR     a dir with any of the binaries above: each one found there is used as is
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${BATON_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}/control-plane
mkdir -p "$cache"
log=$cache/build.log

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
# The checksum database is not reachable from every machine; the proxy is.
export GOSUMDB=${GOSUMDB:-off}

k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
all_bins=(etcd "${k8s_bins[@]}" kwok helm)

say() { printf '[control-plane] %s\n' "$*" >&2; }

# Where a binary comes from: an override dir, else the cache.
override_for() {
  local bin=$1
  if [[ -n ${KUBEBUILDER_ASSETS:-} && -x $KUBEBUILDER_ASSETS/$bin ]]; then
    echo "$KUBEBUILDER_ASSETS/$bin"
  elif [[ -n ${BATON_K8S_BIN_DIR:-} && -x $BATON_K8S_BIN_DIR/$bin ]]; then
    echo "$BATON_K8S_BIN_DIR/$bin"
  fi
}

complete() {
  for b in "${all_bins[@]}"; do [[ -x $assets/$b ]] || return 1; done
  [[ -s $assets/kwok-stages.yaml ]]
}

missing() { # missing FILE...: whether any of the files is not there yet
  local f
  for f; do [[ -e $f ]] || return 0; done
  return 1
}

timed() { # timed NAME CMD...: run CMD with its output in the log, print the time taken
  local name=$1 start=$SECONDS
  shift
  say "building $name (log: $log)"
  # A subshell outside any `if`, so that `set -e` holds inside the build function.
  set +e
  (set -e; "$@") >>"$log" 2>&1
  local rc=$?
  set -e
  if ((rc != 0)); then
    say "FAILED building $name after $((SECONDS - start))s; last lines of $log:"
    tail -n 30 "$log" >&2
    exit 1
  fi
  say "built $name in $((SECONDS - start))s"
}

build_etcd() {
  local dir=$etcd_dir src=$cache/src/etcd-$ETCD_VERSION
  [[ -x $dir/etcd ]] && return 0
  mkdir -p "$src" "$dir"
  cd "$src"
  # etcd's server module has replace directives, so `go install pkg@v` refuses it: use a wrapper module.
  rm -f go.mod go.sum && go mod init local/etcd-bin
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go build -trimpath -ldflags='-s -w' -o "$dir/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$dir/etcd.tmp" "$dir/etcd"
}

build_kubernetes() {
  local dir=$k8s_dir src=$cache/src/kubernetes-$KUBERNETES_VERSION
  local missing=0
  for b in "${k8s_bins[@]}"; do [[ -x $dir/$b ]] || missing=1; done
  ((missing)) || return 0
  mkdir -p "$src" "$dir"
  cd "$src"
  rm -f go.mod go.sum && go mod init local/k8s-bins
  local ver=${KUBERNETES_VERSION#v} major minor patch gomod
  IFS=. read -r major minor patch <<<"$ver"
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [[ -f $gomod ]] || { echo "no go.mod for k8s.io/kubernetes@$KUBERNETES_VERSION" >&2; return 1; }
  # k8s.io/kubernetes points its ~30 staging modules at ./staging; use their published twins instead.
  local staging
  staging=$(sed -n 's/^[[:space:]]*\(k8s\.io\/[A-Za-z0-9._-]*\) => \.\/staging\/.*/\1/p' "$gomod" | sort -u)
  [[ -n $staging ]] || { echo "found no staging replaces in $gomod" >&2; return 1; }
  local args=()
  for m in $staging; do args+=("-replace=$m=$m@v0.$minor.$patch"); done
  go mod edit "${args[@]}" "-require=k8s.io/kubernetes@$KUBERNETES_VERSION"
  local pkgs=()
  for b in "${k8s_bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  local at=()
  for p in "${pkgs[@]}"; do at+=("$p@$KUBERNETES_VERSION"); done
  go get "${at[@]}"
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  # One command for all three so they share the compile work.
  mkdir -p "$dir/tmp"
  go build -trimpath -ldflags="$ld" -o "$dir/tmp/" "${pkgs[@]}"
  for b in "${k8s_bins[@]}"; do mv "$dir/tmp/$b" "$dir/$b"; done
  rmdir "$dir/tmp"
}

build_kwok() {
  local dir=$kwok_dir
  [[ -x $dir/kwok ]] && return 0
  mkdir -p "$dir"
  GOBIN=$dir go install -trimpath -ldflags='-s -w' "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_helm() {
  local dir=$helm_dir
  [[ -x $dir/helm ]] && return 0
  mkdir -p "$dir"
  # Helm's module has no replace directives: a plain `go install` works.
  GOBIN=$dir go install -trimpath -ldflags='-s -w' "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_kwok_stages() {
  local dir=$kwok_dir
  [[ -s $dir/kwok-stages.yaml ]] && return 0
  mkdir -p "$dir"
  (cd "$cache" && go mod download "sigs.k8s.io/kwok@$KWOK_VERSION")
  # v0.8.0 has no built-in stages: assemble the ones it ships in its module.
  local stage_dir
  stage_dir=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
  local out=$dir/kwok-stages.yaml.tmp f
  : >"$out"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    node/chaos/node-not-ready.yaml pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml \
    pod/fast/pod-delete.yaml; do
    [[ -f $stage_dir/$f ]] || { echo "kwok stage $f not found under $stage_dir" >&2; return 1; }
    { echo "---"; cat "$stage_dir/$f"; } >>"$out"
  done
  mv "$out" "$dir/kwok-stages.yaml"
}

# Each component's cache key is its version plus a hash of its own recipe (the function that
# builds it and the shared settings), so changing one recipe rebuilds only that component.
settings="$GOTOOLCHAIN $CGO_ENABLED $GOFLAGS $(go env GOVERSION)"
key() { printf '%s\n' "$settings" "$(declare -f "$@")" | sha256sum | cut -c1-12; }
etcd_dir=$cache/etcd-$ETCD_VERSION-$(key build_etcd)
k8s_dir=$cache/kubernetes-$KUBERNETES_VERSION-$(key build_kubernetes)-$(printf '%s\n' "${k8s_bins[@]}" | sha256sum | cut -c1-6)
kwok_dir=$cache/kwok-$KWOK_VERSION-$(key build_kwok build_kwok_stages)
helm_dir=$cache/helm-$HELM_VERSION-$(key build_helm)
assets=$cache/assets-$(printf '%s\n' "$etcd_dir" "$k8s_dir" "$kwok_dir" "$helm_dir" "${KUBEBUILDER_ASSETS:-}" \
  "${BATON_K8S_BIN_DIR:-}" | sha256sum | cut -c1-12)

if [[ ${1:-} == --check ]]; then
  complete && { echo "$assets"; exit 0; }
  say "not built yet: run tests/control-plane/build.sh"
  exit 1
fi

total=$SECONDS
echo "=== build $(date -u +%FT%TZ) into $assets ===" >>"$log"
rm -rf "$assets.tmp" && mkdir -p "$assets.tmp"
link() { ln -sf "$1" "$assets.tmp/$(basename "$1")"; }

if [[ -n $(override_for etcd) ]]; then link "$(override_for etcd)"; say "etcd: using $(override_for etcd)"
else missing "$etcd_dir/etcd" && timed "etcd $ETCD_VERSION" build_etcd; link "$etcd_dir/etcd"; fi

need_k8s=0
for b in "${k8s_bins[@]}"; do [[ -n $(override_for "$b") ]] || need_k8s=1; done
((need_k8s)) && missing "${k8s_bins[@]/#/$k8s_dir/}" && timed "kubernetes $KUBERNETES_VERSION" build_kubernetes
for b in "${k8s_bins[@]}"; do
  if [[ -n $(override_for "$b") ]]; then link "$(override_for "$b")"; say "$b: using $(override_for "$b")"
  else link "$k8s_dir/$b"; fi
done

if [[ -n $(override_for kwok) ]]; then link "$(override_for kwok)"; say "kwok: using $(override_for kwok)"
else missing "$kwok_dir/kwok" && timed "kwok $KWOK_VERSION" build_kwok; link "$kwok_dir/kwok"; fi
missing "$kwok_dir/kwok-stages.yaml" && timed "kwok $KWOK_VERSION stages" build_kwok_stages

if [[ -n $(override_for helm) ]]; then link "$(override_for helm)"; say "helm: using $(override_for helm)"
else missing "$helm_dir/helm" && timed "helm $HELM_VERSION" build_helm; link "$helm_dir/helm"; fi
link "$kwok_dir/kwok-stages.yaml"

for b in "${all_bins[@]}"; do
  [[ -x $assets.tmp/$b ]] || { say "FAILED: $b is missing after the build"; exit 1; }
done
rm -rf "$assets" && mv "$assets.tmp" "$assets"
say "control plane ready in $((SECONDS - total))s: $assets"
echo "$assets"
