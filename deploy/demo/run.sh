#!/usr/bin/env bash
# The README's main job, on the embedded default (`ansflow run`):
#   1. examples/demo: build an image, run its tests inside it, push it to a
#      registry with authentication, pull it back, run the pulled image;
#   2. examples/seed: the original report's seven-step pipeline, as-is:
#      build, `npm test` in the image, push, deploy to Kubernetes, wait,
#      `python -m pytest` through k8s_exec, scale (branch main).
# It installs what a fresh go-docker machine lacks from Debian's packages,
# makes base images (the engine cannot pull), starts a registry with htpasswd
# auth on 127.0.0.1:5000 and the local Kubernetes control plane
# (deploy/cluster; its first build takes about 15 minutes).
# `deploy/demo/run.sh demo` runs only the first pipeline.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
state=${ANSFLOW_DEMO_DIR:-${TMPDIR:-/tmp}/ansflow-demo}
export ANSFLOW_DEMO_DIR=$state
mkdir -p "$state"
export PATH="/usr/local/go/bin:$PATH"
which=${1:-all}

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

missing=()
command -v busybox >/dev/null || missing+=(busybox-static)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
command -v git >/dev/null || missing+=(git)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/python ] || missing+=(python-is-python3)
/usr/bin/python3 -c 'import pytest' 2>/dev/null || missing+=(python3-pytest)
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

say "base images"
bash deploy/demo/base-images.sh node

registry_code() { curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5000/v2/ || true; }
if [ "$(registry_code)" = 401 ] && [ -f "$state/password" ]; then
	say "reusing the demo registry on 127.0.0.1:5000"
	ANSFLOW_DEMO_REGISTRY_PASSWORD=$(cat "$state/password")
else
	say "starting docker-registry with htpasswd auth on 127.0.0.1:5000"
	ANSFLOW_DEMO_REGISTRY_PASSWORD=demo-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
	htpasswd -Bbn demo "$ANSFLOW_DEMO_REGISTRY_PASSWORD" >"$state/htpasswd"
	cat >"$state/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $state/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:5000}
auth: {htpasswd: {realm: ansflow-demo, path: $state/htpasswd}}
YAML
	nohup docker-registry serve "$state/registry.yml" >"$state/registry.log" 2>&1 &
	echo $! >"$state/registry.pid"
	echo "$ANSFLOW_DEMO_REGISTRY_PASSWORD" >"$state/password"
	for _ in $(seq 100); do
		[ "$(registry_code)" = 401 ] && break
		sleep 0.1
	done
	[ "$(registry_code)" = 401 ] || { echo "registry did not start; see $state/registry.log" >&2; exit 1; }
fi
export ANSFLOW_DEMO_REGISTRY_PASSWORD

bin=${ANSFLOW_BIN:-$root/bin/ansflow}
[ -x "$bin" ] || go build -o "$bin" ./cmd/ansflow

say "1/2 examples/demo/pipeline.yaml: build, test, push, pull"
"$bin" run examples/demo/pipeline.yaml --config examples/demo/ansflow.yaml --branch main
[ "$which" = demo ] && exit 0

say "local Kubernetes control plane (first build: about 15 minutes)"
eval "$(bash deploy/cluster/up.sh)"
kubectl="${ANSFLOW_CACHE:-$HOME/.cache/ansflow}/k8s-v1.37.2/bin/kubectl"
"$kubectl" get namespace development >/dev/null 2>&1 || "$kubectl" create namespace development >/dev/null
# kwok runs k8s_exec commands on this host, in the cluster's exec directory:
# give it the application's integration tests, as a pod would have them.
exec_dir="${ANSFLOW_CLUSTER_EXEC_WORKDIR:-${ANSFLOW_CLUSTER_DIR:-$HOME/.local/state/ansflow-cluster}/exec}"
mkdir -p "$exec_dir"
cp -r examples/seed/package.json examples/seed/app.js examples/seed/tests "$exec_dir/"

say "2/2 examples/seed/pipeline.yaml: the original report's pipeline, as-is"
"$bin" run examples/seed/pipeline.yaml --config examples/seed/ansflow.yaml --branch main
