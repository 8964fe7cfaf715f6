#!/usr/bin/env bash
# Smoke test of a running local cluster (start it with up.sh first):
# Deployment rollout + scale, exec on the host through kwok, logs from a per-pod
# Logs object, deletion, and ProgressDeadlineExceeded for a "never-ready*" image.
# Uses $KUBECONFIG (default: the one up.sh writes). Leaves nothing behind.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}"
K="$BIN_DIR/kubectl"
NS="ansflow-smoke-$$"
WORK="$(mktemp -d)"
passed=0 failed=0

check() { # NAME CMD...
  local name="$1" t0=$SECONDS
  shift
  if "$@" >"$WORK/out" 2>&1; then
    passed=$((passed + 1))
    echo "ok   $name ($((SECONDS - t0))s)"
  else
    failed=$((failed + 1))
    echo "FAIL $name ($((SECONDS - t0))s):"
    sed 's/^/     /' "$WORK/out"
  fi
}
cleanup() {
  "$K" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

pod() { "$K" -n "$NS" get pods -l app=web -o jsonpath="{.items[$1].metadata.name}"; }

check "create namespace" "$K" create namespace "$NS"
check "deployment of 2 busybox replicas becomes Available" bash -c "
  '$K' -n '$NS' create deployment web --image=busybox --replicas=2 -- sleep 3600 &&
  '$K' -n '$NS' wait --for=condition=Available deployment/web --timeout=60s"
check "scale to 5 and roll out" bash -c "
  '$K' -n '$NS' scale deployment web --replicas=5 &&
  '$K' -n '$NS' rollout status deployment/web --timeout=60s &&
  test \"\$('$K' -n '$NS' get deployment web -o jsonpath='{.status.readyReplicas}')\" = 5"

exec_hi() { [[ "$("$K" -n "$NS" exec "$(pod 0)" -- echo hi)" == hi ]]; }
check "kubectl exec runs on the host" exec_hi

logs_file() {
  local p f
  p="$(pod 1)"
  f="$WORK/$p.log"
  printf '%s stdout F %s\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" "hello from $p" >"$f"
  "$K" -n "$NS" apply -f - <<EOF || return 1
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Logs
metadata:
  name: $p
  namespace: $NS
spec:
  logs:
  - logsFile: $f
    follow: true
EOF
  local i
  for i in $(seq 20); do
    [[ "$("$K" -n "$NS" logs "$p" 2>/dev/null)" == "hello from $p" ]] && return 0
    sleep 0.5
  done
  "$K" -n "$NS" logs "$p"
  return 1
}
check "kubectl logs serves the pod's Logs file" logs_file

check "delete the deployment and its pods" bash -c "
  '$K' -n '$NS' delete deployment web --wait=true --timeout=60s &&
  for i in \$(seq 60); do
    test -z \"\$('$K' -n '$NS' get pods -l app=web -o name)\" && exit 0; sleep 0.5
  done; exit 1"

check "never-ready image hits ProgressDeadlineExceeded" bash -c "
  '$K' -n '$NS' apply -f - <<EOF &&
apiVersion: apps/v1
kind: Deployment
metadata:
  name: stuck
spec:
  replicas: 1
  progressDeadlineSeconds: 5
  selector:
    matchLabels: {app: stuck}
  template:
    metadata:
      labels: {app: stuck}
    spec:
      containers:
      - name: app
        image: never-ready:latest
EOF
  '$K' -n '$NS' wait deployment/stuck --timeout=60s \
    --for=jsonpath='{.status.conditions[?(@.type==\"Progressing\")].reason}'=ProgressDeadlineExceeded"

echo "$passed passed, $failed failed"
((failed == 0))
