#!/usr/bin/env bash
# The README's main job on the embedded default: installs what a fresh
# go-docker machine lacks (Debian's busybox-static and docker-registry),
# makes a base image (the engine cannot pull), starts a registry with
# authentication on 127.0.0.1:5000, and runs examples/demo/pipeline.yaml:
# build an image, run its tests inside it, push it, pull it back.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
state=${ANSFLOW_DEMO_DIR:-${TMPDIR:-/tmp}/ansflow-demo}
mkdir -p "$state"
export PATH="/usr/local/go/bin:$PATH"

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

missing=()
command -v busybox >/dev/null || missing+=(busybox-static)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
command -v git >/dev/null || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

base=ansflow-demo/busybox:latest
if ! docker image inspect "$base" >/dev/null 2>&1; then
	say "making base image $base from Debian's busybox-static"
	rootfs="$state/rootfs"
	rm -rf "$rootfs" && mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root"
	cp "$(command -v busybox)" "$rootfs/bin/busybox"
	for applet in $("$rootfs/bin/busybox" --list); do
		[ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
	tar -C "$rootfs" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$base" >/dev/null
fi

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
say "running examples/demo/pipeline.yaml on the embedded AnsFlow"
exec "$bin" run examples/demo/pipeline.yaml --config examples/demo/ansflow.yaml --branch main "$@"
