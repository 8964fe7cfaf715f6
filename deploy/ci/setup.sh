#!/usr/bin/env bash
# Installs and starts what the tests need, idempotently, and prints the
# environment that points the tests at it (`make test` sources it):
#   - Debian packages: busybox-static (test base images), docker-registry and
#     apache2-utils (authenticated registries), git (sources), curl,
#     python3-pytest and python-is-python3 (the seed pipeline's k8s_exec),
#     chromium and fonts-liberation (the web UI's browser tests);
#   - PostgreSQL for the audit store (services/audit/ci/postgres.sh);
#   - the local Kubernetes control plane (deploy/cluster/up.sh; its first
#     build takes 15-30 minutes on 2 cores, then it is cached by version);
#   - Gitea, the forge of the forge-loop tests (deploy/forge/gitea.sh; built
#     once per version from the Go module proxy, then cached);
#   - Jaeger, the trace store of the tracing test (deploy/tracing/jaeger.sh;
#     built once per version from the Go module proxy, then cached).
# Progress goes to stderr; stdout carries only `export` lines.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec 3>&1 1>&2

missing=()
command -v busybox >/dev/null || missing+=(busybox-static)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
command -v git >/dev/null || missing+=(git)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/python ] || missing+=(python-is-python3) # the seed pipeline's k8s_exec runs `python -m pytest`
/usr/bin/python3 -c 'import pytest' 2>/dev/null || missing+=(python3-pytest)
command -v chromium >/dev/null || missing+=(chromium fonts-liberation) # services/pipeline/ui's TestBrowser
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

docker version --format 'Docker Engine {{.Server.Version}}' || { echo "the Docker Engine is not reachable" >&2; exit 1; }

echo "== PostgreSQL"
bash services/audit/ci/postgres.sh >&3

echo "== local Kubernetes control plane"
out=$(bash deploy/cluster/up.sh) || { echo "cluster failed to start" >&2; exit 1; }
echo "$out" | tail -n 1 >&3

echo "== Gitea (the forge-loop tests' forge)"
bash deploy/forge/gitea.sh >&3

echo "== Jaeger (the tracing test's trace store)"
bash deploy/tracing/jaeger.sh >&3
