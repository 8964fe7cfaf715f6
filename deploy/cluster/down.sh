#!/usr/bin/env bash
# Stops the local cluster started by up.sh (by the pids it recorded), removes its
# etcd data and pid files, keeps the logs and certificates in the state dir and the
# binary cache. Safe to run when nothing is running.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ! -d "$STATE_DIR" ]]; then
  log "no cluster state in $STATE_DIR: nothing to stop"
  exit 0
fi
lock_state
if [[ ! -d "$RUN_DIR" ]]; then
  log "no cluster state in $STATE_DIR: nothing to stop"
  exit 0
fi
stop_all
rm -rf "$RUN_DIR" "$STATE_DIR/etcd" "$STATE_DIR/kubeconfig"
log "cluster $CLUSTER_NAME stopped (logs kept in $LOG_DIR; binaries kept in $BIN_DIR)"
