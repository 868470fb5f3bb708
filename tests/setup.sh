#!/usr/bin/env bash
# Installs what baton's tests and demo need on a fresh Debian machine, and nothing when it is all
# there already. Called by the README's two commands (tests/run.sh, tests/demo.sh) and by CI.
#   Debian packages: the real-node tier (containerd, runc, CNI plugins, busybox, buildah,
#   iptables, util-linux's nsenter), the musl toolchain for the static image build, and
#   prometheus (the real server the alert-blocker and monitoring tests run, and its promtool).
#   Rust: rustfmt, clippy and the musl target.
set -euo pipefail

want=(ca-certificates git iproute2 iptables procps util-linux tzdata musl-tools buildah prometheus
  containerd runc busybox-static containernetworking-plugins)
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}" >&2
  sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || { echo "[setup] need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  # Packages must not start services here (prometheus and containerd ship one): deny it while
  # installing. Removed again even when the install fails (the trap), but only if added here.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod +x "$policy"
    trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v go >/dev/null || { echo "[setup] go is required to build the test control plane" >&2; exit 1; }
command -v cargo >/dev/null || { echo "[setup] cargo is required" >&2; exit 1; }
# The Dockerfile's static build; rustfmt and clippy for the checks.
installed=$(rustup target list --installed 2>/dev/null || true)
grep -qx x86_64-unknown-linux-musl <<<"$installed" || rustup target add x86_64-unknown-linux-musl >&2
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add rustfmt clippy >&2
exit 0
