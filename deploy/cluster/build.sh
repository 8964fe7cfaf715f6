#!/usr/bin/env bash
# Builds the local control plane binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok) from ./builder into the version-keyed cache
# ${ANSFLOW_CACHE:-$HOME/.cache/ansflow}/k8s-v1.37.2/{bin,kwok}, and copies kwok's
# stage manifests and CRDs out of its Go module next to them. Called by up.sh.
#   build.sh           build what is missing or stale (no-op when up to date)
#   build.sh --check   exit 0 if up to date, 1 if a build is needed
#   build.sh --force   rebuild everything
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)
STAGES=(
  node/fast/node-initialize
  node/heartbeat-with-lease/node-heartbeat-with-lease
  pod/fast/pod-ready
  pod/fast/pod-complete
  pod/fast/pod-delete
)
CRDS=(logs execs)
STAMP="$VERSION_DIR/build.stamp"

major="${K8S_VERSION#v}"; major="${major%%.*}"
minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
ldflags="-s -w"
# The same variables Kubernetes' hack/lib/version.sh sets; clients parse gitVersion.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
  ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done

# The cache is keyed by the Kubernetes version (directory name) and by the exact
# dependency set and build flags, so changing builder/go.mod or go.sum rebuilds.
want_stamp="$({ cat "$CLUSTER_HERE/builder/go.mod" "$CLUSTER_HERE/builder/go.sum"
  echo "$ldflags ${BINARIES[*]} ${STAGES[*]} ${CRDS[*]}"; } | sha256sum | cut -d' ' -f1)"

up_to_date() {
  local b f
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] || return 1
  for b in "${BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
  for f in "${STAGES[@]}"; do [[ -f "$KWOK_ASSETS/stages/${f##*/}.yaml" ]] || return 1; done
  for f in "${CRDS[@]}"; do [[ -f "$KWOK_ASSETS/crd/kwok.x-k8s.io_$f.yaml" ]] || return 1; done
}

case "${1:-}" in
--check) up_to_date && exit 0 || exit 1 ;;
--force) rm -f "$STAMP" ;;
"") ;;
*) echo "usage: $0 [--check|--force]" >&2; exit 2 ;;
esac
up_to_date && exit 0

command -v go >/dev/null || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }


# GOWORK=off: the builder module must never be resolved together with the product's
# go.work. GOFLAGS=-mod=readonly: go.mod/go.sum are committed and complete.
export GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0

mkdir -p "$BIN_DIR" "$KWOK_ASSETS/stages" "$KWOK_ASSETS/crd"
tmp="$(mktemp -d "$VERSION_DIR/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "build.sh: building ${BINARIES[*]} ($K8S_VERSION) into $BIN_DIR with nice -n 19" >&2
start=$SECONDS
cd "$CLUSTER_HERE/builder"
# One 'go build' for all packages shares the compile work between them.
nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl \
  go.etcd.io/etcd/server/v3 \
  sigs.k8s.io/kwok/cmd/kwok
# go names the binary of go.etcd.io/etcd/server/v3 "server".
mv "$tmp/server" "$tmp/etcd"

kwok_dir="$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
for f in "${STAGES[@]}"; do
  cp "$kwok_dir/kustomize/stage/$f.yaml" "$tmp/${f##*/}.yaml"
done
for f in "${CRDS[@]}"; do
  cp "$kwok_dir/kustomize/crd/bases/kwok.x-k8s.io_$f.yaml" "$tmp/"
done
chmod u+w "$tmp"/*.yaml

for b in "${BINARIES[@]}"; do mv -f "$tmp/$b" "$BIN_DIR/$b"; done
for f in "${STAGES[@]}"; do mv -f "$tmp/${f##*/}.yaml" "$KWOK_ASSETS/stages/"; done
for f in "${CRDS[@]}"; do mv -f "$tmp/kwok.x-k8s.io_$f.yaml" "$KWOK_ASSETS/crd/"; done
echo "$want_stamp" >"$STAMP"
echo "build.sh: built in $((SECONDS - start))s" >&2
