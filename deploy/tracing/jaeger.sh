#!/usr/bin/env bash
# Builds Jaeger, the trace store the tracing test (cmd/ansflow
# TestTracingAcrossServices) exports to, once per version into
# ${ANSFLOW_CACHE:-$HOME/.cache/ansflow}/jaeger-$JAEGER_VERSION: the
# all-in-one `cmd/jaeger` program (Jaeger v2: an OpenTelemetry Collector
# distribution configured by YAML), built from the Go module proxy in a
# throwaway module. Prints `export ANSFLOW_TEST_JAEGER=BINARY` on stdout;
# progress goes to stderr.
#   jaeger.sh           build when missing (a no-op once cached)
#   jaeger.sh --check   exit 0 when cached, 1 when a build is needed
set -euo pipefail
JAEGER_VERSION="${JAEGER_VERSION:-v1.76.0}"
dir="${ANSFLOW_CACHE:-$HOME/.cache/ansflow}/jaeger-$JAEGER_VERSION"
cached() { [[ -x "$dir/jaeger" && "$(cat "$dir/build.stamp" 2>/dev/null)" == "$JAEGER_VERSION" ]]; }
if [[ "${1:-}" == "--check" ]]; then cached; exit; fi
if ! cached; then
  start=$(date +%s)
  echo "building Jaeger $JAEGER_VERSION into $dir (cold: about 15 minutes on 2 cores)" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$dir"
  (
    cd "$work"
    export GOFLAGS=-mod=mod GOWORK=off
    go mod init ansflow.local/jaeger-build >/dev/null 2>&1
    go get "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" >&2
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/jaeger.new" github.com/jaegertracing/jaeger/cmd/jaeger
  )
  mv "$dir/jaeger.new" "$dir/jaeger"
  echo "$JAEGER_VERSION" > "$dir/build.stamp"
  echo "built Jaeger $JAEGER_VERSION in $(( $(date +%s) - start ))s" >&2
fi
echo "export ANSFLOW_TEST_JAEGER=$dir/jaeger"
