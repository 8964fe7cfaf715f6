#!/bin/sh
# greet NAME: the demo application's one feature.
greet() { echo "hello, ${1:-world} (version ${APP_VERSION:-dev}, ${NODE_ENV:-development})"; }
if [ "${1:-}" != "--lib" ]; then greet "$@"; fi
