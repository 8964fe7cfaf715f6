# Shared settings for up.sh, down.sh and build.sh. Sourced, not executed.
# shellcheck shell=bash disable=SC2034

K8S_VERSION="v1.37.2"
CLUSTER_NAME="ansflow-local"

CLUSTER_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${ANSFLOW_CACHE:-$HOME/.cache/ansflow}"
VERSION_DIR="$CACHE_ROOT/k8s-$K8S_VERSION"
BIN_DIR="$VERSION_DIR/bin"
# kwok's stage manifests and CRDs, copied out of its Go module by build.sh.
KWOK_ASSETS="$VERSION_DIR/kwok"

STATE_DIR="${ANSFLOW_CLUSTER_DIR:-$HOME/.local/state/ansflow-cluster}"
RUN_DIR="$STATE_DIR/run"        # <component>.pid files: "PID BINARY"
LOG_DIR="$STATE_DIR/logs"       # <component>.log
PKI_DIR="$STATE_DIR/pki"
KUBECONFIG_PATH="$STATE_DIR/kubeconfig"
PORTS_FILE="$STATE_DIR/ports.env"

# Start order; down.sh stops in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# lock_state: serialise up.sh/down.sh runs on one state dir (fd 9, closed for daemons).
lock_state() {
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.lock"
  flock 9
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# pid_of COMPONENT: prints the pid if the recorded process is alive and still
# runs the recorded binary (guards against pid reuse); fails otherwise.
pid_of() {
  local f="$RUN_DIR/$1.pid" pid bin exe
  [[ -f "$f" ]] || return 1
  read -r pid bin <"$f" || return 1
  [[ -n "$pid" ]] && alive "$pid" || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  exe="${exe% (deleted)}"
  [[ "$exe" == "$bin" ]] || return 1
  echo "$pid"
}

# stop_all: SIGTERM every recorded component (reverse start order), wait, then SIGKILL.
stop_all() {
  local i c pid waited
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c="${COMPONENTS[$i]}"
    if pid="$(pid_of "$c")"; then
      log "stopping $c (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      waited=0
      while alive "$pid" && ((waited < 150)); do
        sleep 0.1
        waited=$((waited + 1))
      done
      if alive "$pid"; then
        log "$c (pid $pid) did not stop in 15s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    rm -f "$RUN_DIR/$c.pid"
  done
}
