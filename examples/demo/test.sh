#!/bin/sh
# The demo's unit tests, run inside the built image by the docker_run step.
. /app/app.sh --lib
fail=0
check() { if [ "$2" = "$3" ]; then echo "ok   - $1"; else echo "FAIL - $1: got '$2', want '$3'" >&2; fail=1; fi; }
check "greets by name" "$(greet ansflow | cut -d' ' -f1-2)" "hello, ansflow"
check "greets the world by default" "$(greet | cut -d' ' -f1-2)" "hello, world"
check "built for production" "$NODE_ENV" "production"
[ "${CI:-}" = "true" ] && echo "running in CI"
echo "tests passed" ; exit $fail
