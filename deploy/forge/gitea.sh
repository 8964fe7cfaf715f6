#!/usr/bin/env bash
# Builds Gitea, the real forge the forge-loop tests run against, once per
# version into ${ANSFLOW_CACHE:-$HOME/.cache/ansflow}/gitea-$GITEA_VERSION:
# the binary (SQLite, no web front-end assets: those need npm, and the tests
# use only Gitea's REST API, Git over HTTPS and its webhooks) with the
# templates/ and options/ folders of its source, which it reads from disk.
# Prints `export ANSFLOW_TEST_GITEA=DIR` on stdout; progress goes to stderr.
#   gitea.sh           build when missing (a no-op once cached)
#   gitea.sh --check   exit 0 when cached, 1 when a build is needed
set -euo pipefail
GITEA_VERSION="${GITEA_VERSION:-v1.27.3}"
dir="${ANSFLOW_CACHE:-$HOME/.cache/ansflow}/gitea-$GITEA_VERSION"
tags="sqlite sqlite_unlock_notify"
cached() { [[ -x "$dir/gitea" && -d "$dir/templates" && -d "$dir/options" && "$(cat "$dir/build.stamp" 2>/dev/null)" == "$GITEA_VERSION $tags" ]]; }
if [[ "${1:-}" == "--check" ]]; then cached; exit; fi
if ! cached; then
  start=$(date +%s)
  echo "building Gitea $GITEA_VERSION into $dir (cold: several minutes on 2 cores)" >&2
  src=$(GOFLAGS=-mod=mod go mod download -json "code.gitea.io/gitea@$GITEA_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -d "$src" ]] || { echo "go mod download code.gitea.io/gitea@$GITEA_VERSION failed" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -r "$src/." "$work/" && chmod -R u+w "$work"
  mkdir -p "$dir"
  (cd "$work" && CGO_ENABLED=1 go build -tags "$tags" \
    -ldflags "-s -w -X main.Version=${GITEA_VERSION#v}" -o "$dir/gitea.new" .)
  rm -rf "$dir/templates" "$dir/options"
  cp -r "$work/templates" "$work/options" "$dir/"
  mv "$dir/gitea.new" "$dir/gitea"
  echo "$GITEA_VERSION $tags" > "$dir/build.stamp"
  echo "built Gitea $GITEA_VERSION in $(( $(date +%s) - start ))s" >&2
fi
echo "export ANSFLOW_TEST_GITEA=$dir"
