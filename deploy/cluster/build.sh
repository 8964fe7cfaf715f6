#!/usr/bin/env bash
# Builds the local control plane binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok) from ./builder into a version-keyed cache dir.
# Usage: build.sh [BIN_DIR]   (default: ${ANSFLOW_CACHE:-$HOME/.cache/ansflow}/k8s-v1.37.2/bin)
# Skips the build when every binary is already there. Called by up.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION="v1.37.2"
BIN_DIR="${1:-${ANSFLOW_CACHE:-$HOME/.cache/ansflow}/k8s-${K8S_VERSION}/bin}"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)

missing=()
for b in "${BINARIES[@]}"; do
  [[ -x "$BIN_DIR/$b" ]] || missing+=("$b")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }

major="${K8S_VERSION#v}"; major="${major%%.*}"
minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
  ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done

mkdir -p "$BIN_DIR"
tmp="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "build.sh: building ${missing[*]} ($K8S_VERSION) into $BIN_DIR (cold build: ~15 min on 2 cores)" >&2
start=$(date +%s)
# One 'go build' for all packages shares the compile work. GOWORK=off: the builder
# module must never be resolved together with the product's go.work.
(
  cd "$HERE/builder"
  GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    go.etcd.io/etcd/server/v3 \
    sigs.k8s.io/kwok/cmd/kwok
)
# go names the etcd main package (go.etcd.io/etcd/server/v3) "server".
mv "$tmp/server" "$tmp/etcd"
for b in "${BINARIES[@]}"; do
  mv -f "$tmp/$b" "$BIN_DIR/$b"
done
echo "build.sh: built in $(( $(date +%s) - start ))s" >&2
