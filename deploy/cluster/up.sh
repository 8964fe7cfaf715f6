#!/usr/bin/env bash
# Starts a local, real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) with kwok-simulated nodes, all on 127.0.0.1.
# Progress goes to stderr; the LAST line on stdout is `export KUBECONFIG=<path>`, so
#   out="$(deploy/cluster/up.sh)" && eval "$out"
# works (a bare eval "$(...)" would swallow a failure). Reuses a healthy running
# cluster. See README.md beside this file.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODE_COUNT="${ANSFLOW_CLUSTER_NODES:-3}"
EXEC_WORKDIR="${ANSFLOW_CLUSTER_EXEC_WORKDIR:-$STATE_DIR/exec}"

STARTED=0 # set to 1 once we start processes: on failure they are stopped again

fail() {
  log "ERROR: $*"
  if ((STARTED)); then
    log "stopping the components started so far (logs kept in $LOG_DIR)"
    stop_all
  fi
  exit 1
}

# ---------- helpers ----------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port WANTED: WANTED if free, else the next free port above it.
pick_port() {
  local p="$1" n
  for ((n = 0; n < 200; n++)); do
    if ! port_in_use "$p"; then
      echo "$p"
      return 0
    fi
    p=$((p + 1))
  done
  return 1
}

kctl() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

apiserver_ready() {
  [[ -f "$PKI_DIR/admin.crt" && -n "${APISERVER_PORT:-}" ]] || return 1
  [[ "$(curl -sS --max-time 5 --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" 2>/dev/null)" == "ok" ]]
}

# start COMPONENT ARGS...: runs $BIN_DIR/COMPONENT detached (own session, no
# terminal, stdio to its log) and records "PID BINARY" in $RUN_DIR.
start() {
  local c="$1" bin
  bin="$(readlink -f "$BIN_DIR/$1")"
  shift
  : >"$LOG_DIR/$c.log"
  setsid "$bin" "$@" </dev/null >>"$LOG_DIR/$c.log" 2>&1 9>&- &
  echo "$! $bin" >"$RUN_DIR/$c.pid"
  STARTED=1
  log "started $c (pid $!, log $LOG_DIR/$c.log)"
}

# wait_for COMPONENT WHAT TIMEOUT CMD...: polls CMD until it succeeds; fails early
# if COMPONENT's process died, pointing at its log.
wait_for() {
  local c="$1" what="$2" timeout="$3" deadline
  shift 3
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! pid_of "$c" >/dev/null; then
      tail -n 20 "$LOG_DIR/$c.log" >&2 || true
      fail "$c exited while waiting for $what; see $LOG_DIR/$c.log"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$LOG_DIR/$c.log" >&2 || true
      fail "timed out after ${timeout}s waiting for $what; see $LOG_DIR/$c.log"
    fi
    sleep 0.5
  done
}

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || return 1; done
}

# ---------- reuse a healthy cluster ----------

lock_state
if [[ -f "$PORTS_FILE" ]]; then
  # shellcheck disable=SC1090
  source "$PORTS_FILE"
fi
if all_running && apiserver_ready && [[ -f "$KUBECONFIG_PATH" ]]; then
  log "cluster $CLUSTER_NAME is already up (apiserver https://127.0.0.1:$APISERVER_PORT)"
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
  exit 0
fi
if [[ -d "$RUN_DIR" ]]; then
  log "found a stopped or unhealthy cluster in $STATE_DIR: cleaning it up first"
  stop_all
fi

# ---------- prerequisites and binaries ----------

for tool in openssl curl; do
  if ! command -v "$tool" >/dev/null; then
    log "installing missing tool: $tool"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool"; } >&2 ||
      fail "could not install $tool"
  fi
done

mkdir -p "$LOG_DIR" "$RUN_DIR" "$PKI_DIR" "$EXEC_WORKDIR"
if ! "$CLUSTER_HERE/build.sh" --check; then
  log "building the control plane binaries into $BIN_DIR (cold: 15-30 min on 2 cores; log $LOG_DIR/build.log)"
  t0=$SECONDS
  if ! "$CLUSTER_HERE/build.sh" >"$LOG_DIR/build.log" 2>&1; then
    tail -n 30 "$LOG_DIR/build.log" >&2 || true
    fail "building the binaries failed; see $LOG_DIR/build.log"
  fi
  log "built in $((SECONDS - t0))s"
fi

# ---------- ports ----------

nofree() { fail "no free port on 127.0.0.1 near $1"; }
APISERVER_PORT="$(pick_port "${ANSFLOW_CLUSTER_APISERVER_PORT:-6443}")" || nofree apiserver
ETCD_PORT="$(pick_port "${ANSFLOW_CLUSTER_ETCD_PORT:-12379}")" || nofree etcd
ETCD_PEER_PORT="$(pick_port $((ETCD_PORT + 1)))" || nofree etcd-peer
KCM_PORT="$(pick_port "${ANSFLOW_CLUSTER_KCM_PORT:-10257}")" || nofree kube-controller-manager
SCHEDULER_PORT="$(pick_port "${ANSFLOW_CLUSTER_SCHEDULER_PORT:-10259}")" || nofree kube-scheduler
KWOK_PORT="$(pick_port "${ANSFLOW_CLUSTER_KWOK_PORT:-10247}")" || nofree kwok
cat >"$PORTS_FILE" <<EOF
APISERVER_PORT=$APISERVER_PORT
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
KCM_PORT=$KCM_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
KWOK_PORT=$KWOK_PORT
EOF

# ---------- certificates (kept across restarts) ----------

gen_cert() { # NAME SUBJECT [SAN]: key + cert signed by the cluster CA
  local name="$1" subj="$2" san="${3:-}" ext
  ext="$PKI_DIR/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI_DIR/$name.key" -subj "$subj" \
    -out "$PKI_DIR/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$ext" -out "$PKI_DIR/$name.crt" 2>/dev/null
  rm -f "$PKI_DIR/$name.csr" "$ext"
}

pki_complete() {
  local f
  for f in ca apiserver admin kwok front-proxy-client; do
    [[ -f "$PKI_DIR/$f.crt" && -f "$PKI_DIR/$f.key" ]] || return 1
  done
  [[ -f "$PKI_DIR/sa.key" && -f "$PKI_DIR/sa.pub" ]]
}
if ! pki_complete; then
  log "generating certificates in $PKI_DIR"
  rm -rf "${PKI_DIR:?}"/*
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI_DIR/ca.key" -out "$PKI_DIR/ca.crt" \
    -days 3650 -sha256 -subj "/CN=ansflow-local-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    2>/dev/null || fail "openssl could not create the CA"
  san="IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  gen_cert apiserver "/CN=kube-apiserver" "$san"
  # Cluster admin, also used by the controllers, kwok and the apiserver->kubelet(kwok) client.
  gen_cert admin "/O=system:masters/CN=kubernetes-admin"
  # kwok's kubelet-like server (logs/exec); the apiserver verifies it against the CA.
  gen_cert kwok "/CN=kwok" "IP:127.0.0.1,DNS:localhost"
  # Front proxy (aggregation layer) client; without it every component logs
  # "missing content for CA bundle ... requestheader-client-ca-file".
  gen_cert front-proxy-client "/CN=front-proxy-client"
  openssl genrsa -out "$PKI_DIR/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null
fi

# ---------- kubeconfig ----------

rm -f "$KUBECONFIG_PATH"
kctl config set-cluster "$CLUSTER_NAME" --server "https://127.0.0.1:$APISERVER_PORT" \
  --certificate-authority "$PKI_DIR/ca.crt" --embed-certs >/dev/null
kctl config set-credentials "$CLUSTER_NAME-admin" --client-certificate "$PKI_DIR/admin.crt" \
  --client-key "$PKI_DIR/admin.key" --embed-certs >/dev/null
kctl config set-context "$CLUSTER_NAME" --cluster "$CLUSTER_NAME" --user "$CLUSTER_NAME-admin" >/dev/null
kctl config use-context "$CLUSTER_NAME" >/dev/null
chmod 600 "$KUBECONFIG_PATH"

# ---------- etcd (fresh data on every start) ----------

rm -rf "$STATE_DIR/etcd"
start etcd \
  --name default \
  --data-dir "$STATE_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync \
  --log-level warn
etcd_healthy() { curl -sS --max-time 3 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
wait_for etcd "etcd health" 60 etcd_healthy

# ---------- kube-apiserver ----------

start kube-apiserver \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 \
  --advertise-address 127.0.0.1 \
  --secure-port "$APISERVER_PORT" \
  --endpoint-reconciler-type none \
  --tls-cert-file "$PKI_DIR/apiserver.crt" \
  --tls-private-key-file "$PKI_DIR/apiserver.key" \
  --client-ca-file "$PKI_DIR/ca.crt" \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI_DIR/sa.pub" \
  --service-account-signing-key-file "$PKI_DIR/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --kubelet-client-certificate "$PKI_DIR/admin.crt" \
  --kubelet-client-key "$PKI_DIR/admin.key" \
  --kubelet-certificate-authority "$PKI_DIR/ca.crt" \
  --kubelet-preferred-address-types InternalIP \
  --requestheader-client-ca-file "$PKI_DIR/ca.crt" \
  --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User \
  --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$PKI_DIR/front-proxy-client.crt" \
  --proxy-client-key-file "$PKI_DIR/front-proxy-client.key" \
  --allow-privileged=true \
  --profiling=false
wait_for kube-apiserver "kube-apiserver /readyz on https://127.0.0.1:$APISERVER_PORT" 120 apiserver_ready

# ---------- kube-controller-manager, kube-scheduler ----------

start kube-controller-manager \
  --kubeconfig "$KUBECONFIG_PATH" \
  --authentication-kubeconfig "$KUBECONFIG_PATH" \
  --authorization-kubeconfig "$KUBECONFIG_PATH" \
  --bind-address 127.0.0.1 \
  --secure-port "$KCM_PORT" \
  --leader-elect=false \
  --controllers '*' \
  --root-ca-file "$PKI_DIR/ca.crt" \
  --service-account-private-key-file "$PKI_DIR/sa.key" \
  --cluster-signing-cert-file "$PKI_DIR/ca.crt" \
  --cluster-signing-key-file "$PKI_DIR/ca.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --profiling=false

start kube-scheduler \
  --kubeconfig "$KUBECONFIG_PATH" \
  --authentication-kubeconfig "$KUBECONFIG_PATH" \
  --authorization-kubeconfig "$KUBECONFIG_PATH" \
  --bind-address 127.0.0.1 \
  --secure-port "$SCHEDULER_PORT" \
  --leader-elect=false \
  --profiling=false

# ---------- kwok (simulated nodes and pods) ----------

# Logs/Exec are served from CRDs so that tests can point one pod at its own log file
# or working directory at run time (ClusterLogs/ClusterExec below are the defaults).
kctl apply -f "$KWOK_ASSETS/crd/kwok.x-k8s.io_logs.yaml" -f "$KWOK_ASSETS/crd/kwok.x-k8s.io_execs.yaml" >/dev/null ||
  fail "could not install kwok's Logs/Exec CRDs; see $LOG_DIR/kube-apiserver.log"
kctl wait --for condition=established --timeout 60s crd/logs.kwok.x-k8s.io crd/execs.kwok.x-k8s.io >/dev/null ||
  fail "kwok's CRDs were not established; see $LOG_DIR/kube-apiserver.log"

mkdir -p "$STATE_DIR/pod-logs"
DEFAULT_POD_LOG="$STATE_DIR/pod-logs/default.log"
printf '%s stdout F %s\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" \
  "no log file registered for this container (create a kwok Logs object, see deploy/cluster/README.md)" \
  >"$DEFAULT_POD_LOG"

KWOK_CONFIG="$STATE_DIR/kwok.yaml"
{
  # Stages shipped by kwok (kustomize/stage/node/fast, node/heartbeat-with-lease, pod/fast).
  for f in node-initialize node-heartbeat-with-lease pod-ready pod-complete pod-delete; do
    echo "---"
    cat "$KWOK_ASSETS/stages/$f.yaml"
  done
  cat <<EOF
---
# AnsFlow addition: pods whose containers use an image named "never-ready*" run but
# never become Ready (for progress-deadline tests). Weight 1 beats pod-ready's 0.
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-never-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  weight: 1
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Pending'
    - key: '[.spec.containers[].image | startswith("never-ready")] | any'
      operator: 'In'
      values:
      - 'true'
  next:
    statusTemplate: |
      {{ \$now := Now }}
      conditions:
      - lastTransitionTime: {{ \$now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ \$now | Quote }}
        status: "False"
        reason: ContainersNotReady
        type: Ready
      - lastTransitionTime: {{ \$now | Quote }}
        status: "False"
        reason: ContainersNotReady
        type: ContainersReady
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        started: true
        restartCount: 0
        state:
          running:
            startedAt: {{ \$now | Quote }}
      {{ end }}
      {{ \$hostIPs := NodeIPsWith .spec.nodeName }}
      {{ with \$hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      {{ end }}
      {{ \$podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      {{ with \$podIPs }}
      podIP: {{ index . 0 | Quote }}
      {{ end }}
      phase: Running
      startTime: {{ \$now | Quote }}
---
# kubectl exec runs the command on this host, in this directory, with a
# pod-like PATH (not the environment of whoever started the cluster).
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata:
  name: ansflow-local-exec
spec:
  execs:
  - local:
      workDir: $EXEC_WORKDIR
      envs:
      - name: PATH
        value: /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
      - name: HOME
        value: $EXEC_WORKDIR
---
# kubectl logs serves this CRI-format file unless a Logs object names the pod.
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: ansflow-local-logs
spec:
  logs:
  - logsFile: $DEFAULT_POD_LOG
    follow: true
EOF
} >"$KWOK_CONFIG"

start kwok \
  --kubeconfig "$KUBECONFIG_PATH" \
  --config "$KWOK_CONFIG" \
  --enable-crds Logs,Exec \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
  --node-ip 127.0.0.1 \
  --node-name localhost \
  --node-port "$KWOK_PORT" \
  --server-address "127.0.0.1:$KWOK_PORT" \
  --tls-cert-file "$PKI_DIR/kwok.crt" \
  --tls-private-key-file "$PKI_DIR/kwok.key" \
  --node-lease-duration-seconds 40 \
  --cidr 10.244.0.0/16

# ---------- nodes ----------

nodes_yaml=""
for ((i = 0; i < NODE_COUNT; i++)); do
  nodes_yaml+="---
apiVersion: v1
kind: Node
metadata:
  name: ansflow-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    type: kwok
    kubernetes.io/hostname: ansflow-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/agent: \"\"
"
done
kctl apply -f - <<<"$nodes_yaml" >/dev/null || fail "could not create the nodes; see $LOG_DIR/kube-apiserver.log"

nodes_ready() {
  local out
  out="$(kctl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" ready="}{.status.conditions[?(@.type=="Ready")].status}{" taints="}{.spec.taints[*].key}{"\n"}{end}')" || return 1
  [[ "$(grep -c ' ready=True taints=$' <<<"$out")" -eq "$NODE_COUNT" ]]
}
wait_for kwok "$NODE_COUNT nodes Ready without the not-ready taint (kwok + node lifecycle controller)" 120 nodes_ready
wait_for kube-controller-manager "kube-controller-manager healthz" 60 \
  curl -sfk --max-time 3 "https://127.0.0.1:$KCM_PORT/healthz"
wait_for kube-scheduler "kube-scheduler healthz" 60 \
  curl -sfk --max-time 3 "https://127.0.0.1:$SCHEDULER_PORT/healthz"
default_sa() { kctl -n default get serviceaccount default; }
wait_for kube-controller-manager "the default service account" 60 default_sa

log "cluster $CLUSTER_NAME is up: apiserver https://127.0.0.1:$APISERVER_PORT, $NODE_COUNT kwok nodes, kubectl at $BIN_DIR/kubectl"
echo "export KUBECONFIG=$KUBECONFIG_PATH"
