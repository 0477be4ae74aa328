#!/usr/bin/env bash
# Start a real Kubernetes control plane + kwok fake GPU nodes + an S3 server, and (as root)
# a real node: kubelet, containerd, kube-proxy and CoreDNS (hack/node.sh), for integration
# and end-to-end tests. Idempotent: components that are already running and healthy are
# reused, missing or dead ones are (re)started.
#
# Usage:
#   hack/cluster-up.sh                    build what is missing, start, wait until ready
#   hack/cluster-up.sh restart-apiserver  stop kube-apiserver and start it again (state kept in etcd)
#   hack/cluster-up.sh restart-apiserver --with-clients
#                                         ... and then restart controller-manager, scheduler, kwok
#   hack/cluster-up.sh status             show what runs (exit 1 if something is down)
#   hack/cluster-up.sh builder            only containerd + BuildKit (node.sh's builder_up, as hack/images.sh runs it)
#
# Environment:
#   FTO_STATE       state dir (default ${FTO_CACHE:-~/.cache/finetune-operator}/cluster)
#   FTO_CACHE       build cache (see hack/build.sh)
#   FTO_UP_TIMEOUT  seconds to wait for each readiness step (default 120)
#   FTO_CPU_NODES / FTO_A100_NODES / FTO_H100_NODES   fake node counts (default 2 / 4 / 2)
#   FTO_KWOK_LOG_LEVEL  kwok log level (DEBUG, INFO, WARN, ERROR; default WARN; INFO logs
#                       every stage transition and lease renewal)
#   FTO_NODE        the real node: 1 (required), 0 (left out), auto (default: when root),
#                   later (its network now, the node on a later cluster-up).
#                   With it the API server and MinIO listen on 10.244.0.1 (the pods' bridge)
#                   instead of 127.0.0.1; the env file and kubeconfig say which.
#   FTO_KUBERNETES  the control plane's version: pinned (default, KUBERNETES_VERSION) or
#                   oldest (KUBERNETES_OLDEST_VERSION, `make test-kube-oldest`; kwok nodes
#                   only, since a kubelet must not be newer than its API server), with
#                   the kubectl of that minor; kwok, etcd, helm and the rest stay at their
#                   pins. Build it first:
#                   hack/build.sh oldest
#
# Afterwards:  source "$FTO_STATE/env"   (KUBECONFIG, FTO_S3_ENDPOINT, AWS_* ...)
# shellcheck disable=SC1091  # state files (ports.env, ...) exist only at run time
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_cmds openssl curl ss setsid flock base64 awk
use_state "$FTO_STATE"
S3_REGION=us-east-1
# shellcheck source=node.sh
source "$HACK_DIR/node.sh"
HOST_IP="$(host_ip)"

case "${FTO_KUBERNETES:-pinned}" in
  pinned) CONTROL_PLANE=kubernetes ;;
  oldest)
    CONTROL_PLANE=kubernetes-oldest
    [[ "${FTO_NODE:-auto}" == 0 ]] ||
      die "FTO_KUBERNETES=oldest runs kwok nodes only: set FTO_NODE=0 (the real node's kubelet is $KUBERNETES_VERSION, newer than a $KUBERNETES_OLDEST_VERSION API server)" ;;
  *) die "FTO_KUBERNETES=${FTO_KUBERNETES}: use pinned or oldest" ;;
esac
CONTROL_PLANE_VERSION="$(component_version "$CONTROL_PLANE")"
K_APISERVER="$(component_bin_dir "$CONTROL_PLANE")/kube-apiserver"
K_KCM="$(component_bin_dir "$CONTROL_PLANE")/kube-controller-manager"
K_SCHED="$(component_bin_dir "$CONTROL_PLANE")/kube-scheduler"
[[ "${1:-up}" != up ]] || component_built "$CONTROL_PLANE" ||
  die "the $CONTROL_PLANE $CONTROL_PLANE_VERSION control plane is not built (hack/build.sh $CONTROL_PLANE)"
ETCD="$(fto_bin etcd)"
KWOK="$(fto_bin kwok)"
MINIO="$(fto_bin minio)"

# ---------------------------------------------------------------- certificates, kubeconfigs





setup_kubeconfigs() {
  mkdir -p "$KCFGS"
  write_kubeconfig "$STATE/kubeconfig" admin "https://$HOST_IP:$APISERVER_PORT"
  local n
  for n in kube-controller-manager kube-scheduler kwok; do
    write_kubeconfig "$KCFGS/$n" "$n" "https://$HOST_IP:$APISERVER_PORT"
  done
}

setup_s3_credentials() {
  if [[ ! -f "$STATE/s3-credentials.env" ]]; then
    umask 077
    {
      echo "S3_ACCESS_KEY=fto$(openssl rand -hex 8)"
      echo "S3_SECRET_KEY=$(openssl rand -hex 24)"
    } >"$STATE/s3-credentials.env"
    umask 022
  fi
  source "$STATE/s3-credentials.env"
}

# ---------------------------------------------------------------- health checks

etcd_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
apiserver_ready() {
  curl -fsS --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$HOST_IP:$APISERVER_PORT/readyz" | grep -q '^ok$'
}
kcm_healthy() { curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz" | grep -q '^ok$'; }
sched_healthy() { curl -fsSk --max-time 2 "https://127.0.0.1:$SCHED_PORT/healthz" | grep -q '^ok$'; }
s3_ready() { curl -fsS --max-time 2 -o /dev/null "http://$HOST_IP:$S3_PORT/minio/health/ready"; }
default_sa_exists() { kc get serviceaccount default -n default -o name; }
nodes_ready() {
  # every fake node Ready=True, without node.kubernetes.io/{not-ready,unreachable} taints, and
  # with a Lease renewed since the running kwok started (a restarted cluster has stale Ready
  # conditions in etcd, so Ready alone proves nothing)
  local want got since
  want="$(node_names | wc -l)"
  got="$(kc get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}/{.spec.taints[*].key}{"\n"}{end}' |
    grep '^True/' | grep -vc 'node.kubernetes.io/')" || true
  [[ "$got" -ge "$want" ]] || return 1
  since="$(date -u -r "$PIDS/kwok.pid" +%Y-%m-%dT%H:%M:%S)"
  got="$(kc get leases -n kube-node-lease -o jsonpath='{range .items[*]}{.spec.renewTime}{"\n"}{end}' |
    awk -v s="$since" 'substr($0,1,19) >= s' | wc -l)"
  [[ "$got" -ge "$want" ]]
}

# ---------------------------------------------------------------- components

start_etcd() {
  mkdir -p "$STATE/etcd"; chmod 700 "$STATE/etcd"
  start_proc etcd "$ETCD" \
    --name fto --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "fto=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
    --unsafe-no-fsync --quota-backend-bytes=2147483648 --log-level=warn
}

start_apiserver() {
  # With a real node, the `kubernetes` Service's endpoint is the bridge address (pods reach
  # the API server through kube-proxy); without one there is no pod to reach it.
  local reconciler=none
  [[ "$HOST_IP" == 127.0.0.1 ]] || reconciler=lease
  start_proc kube-apiserver "$K_APISERVER" \
    --bind-address="$HOST_IP" --advertise-address="$HOST_IP" --secure-port="$APISERVER_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --endpoint-reconciler-type="$reconciler" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --shutdown-watch-termination-grace-period=3s \
    --allow-privileged=true --profiling=false
}

start_controllers() {
  start_proc kube-controller-manager "$K_KCM" \
    --kubeconfig="$KCFGS/kube-controller-manager" \
    --authentication-kubeconfig="$KCFGS/kube-controller-manager" \
    --authorization-kubeconfig="$KCFGS/kube-controller-manager" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --leader-elect=false --profiling=false
  start_proc kube-scheduler "$K_SCHED" \
    --kubeconfig="$KCFGS/kube-scheduler" \
    --authentication-kubeconfig="$KCFGS/kube-scheduler" \
    --authorization-kubeconfig="$KCFGS/kube-scheduler" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --leader-elect=false --profiling=false
  mkdir -p "$STATE/kwok"
  # kwok reads its Stages once: a running kwok whose configuration changed since it started
  # (a new failure-injection Stage, say) is restarted, so a reused cluster runs the new one.
  local kwok_config
  kwok_config="$(cat "$HACK_DIR"/kwok/*.yaml | sha256sum | cut -d' ' -f1)"
  if pid_of kwok >/dev/null && [[ "$(cat "$STATE/kwok/config.sha256" 2>/dev/null)" != "$kwok_config" ]]; then
    log "kwok's configuration changed since it started: restarting kwok"
    stop_proc kwok 30
  fi
  if ! pid_of kwok >/dev/null; then
    # Node Leases left by a previous kwok carry its (random) holder identity; a new kwok waits
    # for them to expire (up to 40 s) before it renews them. The old kwok is gone: drop them.
    local -a leases
    mapfile -t leases < <(node_names)
    kc delete lease -n kube-node-lease --ignore-not-found "${leases[@]}" >/dev/null 2>&1 || true
  fi
  # KWOK_WORKDIR keeps kwok from also loading a user's ~/.kwok/kwok.yaml
  KWOK_WORKDIR="$STATE/kwok" start_proc kwok "$KWOK" \
    --kubeconfig="$KCFGS/kwok" --v="${FTO_KWOK_LOG_LEVEL:-WARN}" \
    --config="$HACK_DIR/kwok/kwok.yaml" \
    --config="$HACK_DIR/kwok/node-stages.yaml" \
    --config="$HACK_DIR/kwok/pod-stages.yaml"
  echo "$kwok_config" >"$STATE/kwok/config.sha256"
}

start_minio() {
  mkdir -p "$STATE/s3"
  MINIO_ROOT_USER="$S3_ACCESS_KEY" MINIO_ROOT_PASSWORD="$S3_SECRET_KEY" \
    MINIO_BROWSER=off MINIO_UPDATE=off MINIO_SITE_REGION="$S3_REGION" \
    MINIO_CI_CD=1 \
    start_proc minio "$MINIO" server "$STATE/s3" \
    --address "$HOST_IP:$S3_PORT" --console-address "127.0.0.1:$S3_CONSOLE_PORT" --quiet --anonymous
}

# ---------------------------------------------------------------- fake nodes

node_names() {
  local i
  for ((i = 0; i < ${FTO_CPU_NODES:-2}; i++)); do echo "fto-cpu-$i"; done
  for ((i = 0; i < ${FTO_A100_NODES:-4}; i++)); do echo "fto-a100-$i"; done
  for ((i = 0; i < ${FTO_H100_NODES:-2}; i++)); do echo "fto-h100-$i"; done
}

node_yaml() { # name pool instance-type cpu memory gpus accelerator product gpu-mem-MiB zone
  local name="$1" pool="$2" itype="$3" cpu="$4" mem="$5" gpus="$6" accel="$7" product="$8" gpumem="$9" zone="${10}"
  local alloc_cpu alloc_mem
  # allocatable = capacity minus a GKE-like system reservation
  alloc_cpu="$((cpu * 1000 - 60 - cpu * 10))m"
  alloc_mem="$((mem * 1024 * 94 / 100))Mi"
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    node.kubernetes.io/instance-type: $itype
    topology.kubernetes.io/region: us-central1
    topology.kubernetes.io/zone: $zone
    cloud.google.com/gke-nodepool: $pool
    cloud.google.com/machine-family: ${itype%%-*}
    finetune.dev/pool: ${pool%-pool}
EOF
  if [[ "$gpus" -gt 0 ]]; then
    cat <<EOF
    cloud.google.com/gke-accelerator: $accel
    cloud.google.com/gke-gpu: "true"
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.count: "$gpus"
    nvidia.com/gpu.product: $product
    nvidia.com/gpu.memory: "$gpumem"
spec:
  taints:
  - key: nvidia.com/gpu
    value: present
    effect: NoSchedule
status:
  capacity:
    cpu: "$cpu"
    memory: ${mem}Gi
    ephemeral-storage: 2000Gi
    pods: "110"
    nvidia.com/gpu: "$gpus"
  allocatable:
    cpu: $alloc_cpu
    memory: $alloc_mem
    ephemeral-storage: 1800Gi
    pods: "110"
    nvidia.com/gpu: "$gpus"
EOF
  else
    cat <<EOF
spec: {}
status:
  capacity:
    cpu: "$cpu"
    memory: ${mem}Gi
    ephemeral-storage: 100Gi
    pods: "110"
  allocatable:
    cpu: $alloc_cpu
    memory: $alloc_mem
    ephemeral-storage: 90Gi
    pods: "110"
EOF
  fi
}

nodes_manifest() {
  local i zones=(us-central1-a us-central1-b us-central1-c)
  for ((i = 0; i < ${FTO_CPU_NODES:-2}; i++)); do
    node_yaml "fto-cpu-$i" cpu-pool e2-standard-8 8 32 0 "" "" "" "${zones[i % 3]}"
  done
  for ((i = 0; i < ${FTO_A100_NODES:-4}; i++)); do
    node_yaml "fto-a100-$i" a100-pool a2-highgpu-8g 96 680 8 nvidia-tesla-a100 NVIDIA-A100-SXM4-40GB 40960 us-central1-a
  done
  for ((i = 0; i < ${FTO_H100_NODES:-2}; i++)); do
    node_yaml "fto-h100-$i" h100-pool a3-highgpu-8g 208 1872 8 nvidia-h100-80gb NVIDIA-H100-80GB-HBM3 81559 us-central1-c
  done
}

create_nodes() {
  local existing missing=() n
  existing=" $(kc get nodes -l type=kwok -o jsonpath='{.items[*].metadata.name}') "
  while read -r n; do [[ "$existing" == *" $n "* ]] || missing+=("$n"); done < <(node_names)
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "creating fake nodes: ${missing[*]}"
    # create (not apply): status (capacity, allocatable) is only accepted on create
    nodes_manifest | kc create -f - 2>&1 | grep -v AlreadyExists >&2 || true
  fi
}

# ---------------------------------------------------------------- env file

write_env() {
  local bins
  # The control plane's kubectl first: kubectl supports one minor of skew either way.
  bins="$(component_bin_dir "$CONTROL_PLANE"):$(component_bin_dir kubernetes):$(component_bin_dir helm):$(component_bin_dir kwok):$(component_bin_dir etcd):$(component_bin_dir minio)"
  if node_enabled; then bins+=":$(component_bin_dir kubelet):$(component_bin_dir containerd):$(component_bin_dir buildkit)"; fi
  umask 077
  cat >"$STATE/env.tmp" <<EOF
# Written by hack/cluster-up.sh; source it: . "$STATE/env"
export FTO_STATE="$STATE"
export KUBECONFIG="$STATE/kubeconfig"
export FTO_APISERVER="https://$HOST_IP:$APISERVER_PORT"
export FTO_S3_ENDPOINT="http://$HOST_IP:$S3_PORT"
export AWS_ENDPOINT_URL_S3="http://$HOST_IP:$S3_PORT"
export FTO_NODE_NAME="$(node_enabled && ! node_deferred && echo "$NODE_NAME")"
export FTO_BUILDKIT_ADDR="$(node_enabled && echo "unix://$BUILDKIT_SOCK")"
export FTO_CONTAINERD_ADDR="$(node_enabled && echo "$CONTAINERD_SOCK")"
export FTO_REGISTRY="$(node_enabled && ! node_deferred && registry_addr)"
export FTO_REGISTRY_CA="$(node_enabled && ! node_deferred && echo "$PKI/ca.crt")"
export FTO_REGISTRY_AUTH="$(node_enabled && ! node_deferred && echo "$(registry_dir)/auth.json")"
export AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY"
export AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY"
export AWS_REGION="$S3_REGION"
export AWS_DEFAULT_REGION="$S3_REGION"
export FTO_BIN_PATH="$bins"
export FTO_KUBERNETES_VERSION="$CONTROL_PLANE_VERSION"
case ":\$PATH:" in *":$(component_bin_dir "$CONTROL_PLANE"):"*) ;; *) export PATH="$bins:\$PATH" ;; esac
EOF
  mv -f "$STATE/env.tmp" "$STATE/env"
  umask 022
}

# ---------------------------------------------------------------- main


up() {
  local t0=$SECONDS
  begin control-plane
  # The node switched on or off since the running components started: they listen on the
  # other address, so start them all again.
  if [[ "$(cat "$STATE/host-ip" 2>/dev/null || echo 127.0.0.1)" != "$HOST_IP" ]]; then
    local n
    for n in coredns kube-proxy kubelet kwok kube-scheduler kube-controller-manager kube-apiserver minio; do
      if pid_of "$n" >/dev/null; then log "the API server's address is now $HOST_IP: restarting $n"; stop_proc "$n" 30; fi
    done
  fi
  if node_enabled; then node_network; fi
  echo "$HOST_IP" >"$STATE/host-ip"
  # Another control plane version than the running one (FTO_KUBERNETES changed): its
  # processes go, etcd's data stays (the newer API server reads what the older one wrote).
  if [[ "$(cat "$STATE/kubernetes-version" 2>/dev/null || echo "$KUBERNETES_VERSION")" != "$CONTROL_PLANE_VERSION" ]]; then
    local p
    for p in kube-scheduler kube-controller-manager kube-apiserver; do
      if pid_of "$p" >/dev/null; then log "the control plane is now $CONTROL_PLANE_VERSION: restarting $p"; stop_proc "$p" 30; fi
    done
  fi
  echo "$CONTROL_PLANE_VERSION" >"$STATE/kubernetes-version"
  setup_kubeconfigs
  setup_s3_credentials

  start_minio
  start_etcd
  wait_until etcd "etcd /health on 127.0.0.1:$ETCD_PORT" "$TIMEOUT" etcd_healthy
  start_apiserver
  wait_until kube-apiserver "kube-apiserver /readyz on $HOST_IP:$APISERVER_PORT" "$TIMEOUT" apiserver_ready
  start_controllers
  create_nodes
  wait_until kube-controller-manager "kube-controller-manager /healthz on 127.0.0.1:$KCM_PORT" "$TIMEOUT" kcm_healthy
  wait_until kube-scheduler "kube-scheduler /healthz on 127.0.0.1:$SCHED_PORT" "$TIMEOUT" sched_healthy
  wait_until kwok "all $(node_names | wc -l) fake nodes Ready" "$TIMEOUT" nodes_ready
  wait_until kube-controller-manager "ServiceAccount default/default (token + serviceaccount controllers)" "$TIMEOUT" default_sa_exists
  wait_until minio "S3 /minio/health/ready on $HOST_IP:$S3_PORT" "$TIMEOUT" s3_ready
  if node_deferred; then
    log "the real node comes later (FTO_NODE=later): its network is up, the node is not"
  elif node_enabled; then
    node_up
  else
    log "no real node (FTO_NODE=${FTO_NODE:-auto}, not root or switched off): kwok nodes only"
  fi
  write_env
  log "cluster ready in $((SECONDS - t0))s (started: ${STARTED[*]:-nothing, all were running})"
  cat <<EOF

  Kubernetes $CONTROL_PLANE_VERSION API:  https://$HOST_IP:$APISERVER_PORT   (admin kubeconfig: $STATE/kubeconfig)
  S3 (MinIO):                 http://$HOST_IP:$S3_PORT       (credentials in $STATE/env)
  Real node:                  $(node_enabled && echo "$NODE_NAME (taint $NODE_TAINT, label $NODE_POOL_LABEL)" || echo "none (FTO_NODE=0 or not root)")
  Registry:                   $(node_enabled && ! node_deferred && echo "https://$(registry_addr) (user $REGISTRY_USER; CA, auth: FTO_REGISTRY_CA, FTO_REGISTRY_AUTH)" || echo "none (comes with the real node)")
  Logs:                       $LOGS/<component>.log

  source $STATE/env      # KUBECONFIG, FTO_S3_ENDPOINT, AWS_*, PATH with kubectl/helm
  kubectl get nodes -L cloud.google.com/gke-nodepool
  hack/cluster-down.sh   # stop (add --purge to delete the state)
EOF
}

restart_apiserver() {
  [[ -f "$STATE/ports.env" ]] || die "no cluster state in $STATE (run hack/cluster-up.sh first)"
  source "$STATE/ports.env"
  exec 8>"$STATE/.up.lock"
  flock -w 600 8 || die "another hack/cluster-up.sh holds $STATE/.up.lock"
  STARTED=()
  etcd_healthy || die "etcd is not running; run hack/cluster-up.sh"
  local t0=$SECONDS
  log "stopping kube-apiserver"
  stop_proc kube-apiserver 30
  wait_until - "port $APISERVER_PORT released" 30 port_free "$APISERVER_PORT"
  start_apiserver
  wait_until kube-apiserver "kube-apiserver /readyz on $HOST_IP:$APISERVER_PORT" "$TIMEOUT" apiserver_ready
  log "kube-apiserver restarted in $((SECONDS - t0))s"
  if [[ "${1:-}" == --with-clients ]]; then
    # kube-controller-manager, kube-scheduler and kwok reconnect by themselves, but their
    # informers can take 20-40 s to catch up after a restart; restarting them is faster.
    log "restarting kube-controller-manager, kube-scheduler and kwok too"
    stop_procs 30 kwok kube-scheduler kube-controller-manager
    start_controllers
    wait_until kube-controller-manager "kube-controller-manager /healthz" "$TIMEOUT" kcm_healthy
    wait_until kube-scheduler "kube-scheduler /healthz" "$TIMEOUT" sched_healthy
    wait_until kwok "all fake nodes Ready" "$TIMEOUT" nodes_ready
    log "control plane restarted in $((SECONDS - t0))s"
  fi
}

# Exit 0 when the control plane runs (what every tier needs); the real node's parts are
# listed too, and count only where the node is required (FTO_NODE=1).
status() {
  local n rc=0 pid
  for n in etcd kube-apiserver kube-controller-manager kube-scheduler kwok minio; do
    if pid="$(pid_of "$n")"; then printf '%-24s running  pid %s\n' "$n" "$pid"; else printf '%-24s DOWN\n' "$n"; rc=1; fi
  done
  if node_enabled && ! node_deferred; then
    for n in containerd registry buildkitd kubelet kube-proxy coredns; do
      if pid="$(pid_of "$n")"; then
        printf '%-24s running  pid %s\n' "$n" "$pid"
      else
        printf '%-24s DOWN (real node)\n' "$n"
        [[ "${FTO_NODE:-auto}" == 1 ]] && rc=1
      fi
    done
  fi
  return $rc
}


case "${1:-up}" in
  up) up ;;
  builder) builder_up ;;
  restart-apiserver) restart_apiserver "${2:-}" ;;
  status) status ;;
  -h | --help | help) sed -n '2,20p' "$0" ;;
  *) die "unknown command: $1 (use: up | builder | restart-apiserver | status)" ;;
esac
