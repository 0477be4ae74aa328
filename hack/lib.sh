# shellcheck shell=bash
# Shared helpers for hack/*.sh. Source it; it defines variables and functions only.

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"

FTO_CACHE="${FTO_CACHE:-$HOME/.cache/finetune-operator}"
FTO_STATE="${FTO_STATE:-$FTO_CACHE/cluster}"

# Also the build order: kubernetes first, so helm and kwok (whose wrapper modules take the
# kubernetes wrapper's module versions) find most of their packages compiled; helm next,
# which the tests without a cluster need. The control plane's components come first
# (FTO_CONTROL_PLANE: all that the integration tier needs), then the real node's and the
# image builder's (FTO_NODE_COMPONENTS: hack/node.sh, hack/images.sh), then the platform
# the serial integration tests and the operator benchmark run beside the operator
# (FTO_PLATFORM: Kueue; Kubeflow Trainer and JobSet, the benchmark's peer).
FTO_CONTROL_PLANE=(kubernetes helm kwok etcd minio)
FTO_NODE_COMPONENTS=(kubelet containerd runc cni buildkit coredns registry)
FTO_PLATFORM=(kueue kubeflow)
FTO_LINT=(actionlint)
# Built only by `make test-kube-oldest` (hack/test-kube-oldest.sh): the oldest supported
# control plane. Not in FTO_COMPONENTS, so `fto_bin kube-apiserver` always means the pinned one.
FTO_OLDEST=(kubernetes-oldest)
FTO_COMPONENTS=("${FTO_CONTROL_PLANE[@]}" "${FTO_NODE_COMPONENTS[@]}" "${FTO_PLATFORM[@]}" "${FTO_LINT[@]}")
# Components whose wrapper modules are aligned with hack/modules/kubernetes (their builds
# wait for it when it is being built elsewhere).
FTO_SHARES_KUBERNETES=(helm kwok kubelet containerd cni buildkit coredns kueue kubeflow)

# node_left_out_reason UID FTO_NODE: why a run has no real node (and so no images and no
# e2e tier), empty when it has one. Said at the start and the end of `make test`.
node_left_out_reason() {
  if [[ $1 -ne 0 ]]; then
    echo "not root (the kubelet, containerd, runc and the node's iptables rules need it)"
  elif [[ "${2:-auto}" == 0 ]]; then
    echo "FTO_NODE=0"
  fi
}

component_version() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kubernetes) echo "$KUBERNETES_VERSION" ;;
    kubernetes-oldest) echo "$KUBERNETES_OLDEST_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    minio) echo "$MINIO_VERSION" ;;
    kubelet) echo "$KUBERNETES_VERSION" ;;
    containerd) echo "$CONTAINERD_VERSION" ;;
    runc) echo "$RUNC_VERSION" ;;
    cni) echo "$CNI_PLUGINS_VERSION" ;;
    buildkit) echo "$BUILDKIT_VERSION" ;;
    coredns) echo "$COREDNS_VERSION" ;;
    registry) echo "$DISTRIBUTION_VERSION" ;;
    actionlint) echo "$ACTIONLINT_VERSION" ;;
    kueue) echo "$KUEUE_VERSION" ;;
    # Two modules in one wrapper: both pins name its cache folder.
    kubeflow) echo "$KUBEFLOW_TRAINER_VERSION-jobset-$JOBSET_VERSION" ;;
    *) echo "unknown component: $1" >&2; return 2 ;;
  esac
}

component_module() {
  case "$1" in
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    kubernetes | kubernetes-oldest) echo k8s.io/kubernetes ;;
    kwok) echo sigs.k8s.io/kwok ;;
    helm) echo helm.sh/helm/v3 ;;
    minio) echo github.com/minio/minio ;;
    kubelet) echo k8s.io/kubernetes ;;
    containerd) echo github.com/containerd/containerd/v2 ;;
    runc) echo github.com/opencontainers/runc ;;
    cni) echo github.com/containernetworking/plugins ;;
    buildkit) echo github.com/moby/buildkit ;;
    coredns) echo github.com/coredns/coredns ;;
    registry) echo github.com/distribution/distribution/v3 ;;
    actionlint) echo github.com/rhysd/actionlint ;;
    kueue) echo sigs.k8s.io/kueue ;;
    kubeflow) echo github.com/kubeflow/trainer/v2 ;;
    *) return 2 ;;
  esac
}

# The "module version" pairs a component's wrapper go.mod must require (build.sh checks them):
# its module at its pin, and for kubeflow JobSet's too.
component_pins() {
  case "$1" in
    kubeflow) printf '%s %s\n' github.com/kubeflow/trainer/v2 "$KUBEFLOW_TRAINER_VERSION" \
      sigs.k8s.io/jobset "$JOBSET_VERSION" ;;
    *) printf '%s %s\n' "$(component_module "$1")" "$(component_version "$1")" ;;
  esac
}

# The wrapper module under hack/modules/ a component is built from (kubelet and kube-proxy
# come from the same module as the control plane).
component_moddir() {
  case "$1" in
    kubelet) echo "$HACK_DIR/modules/kubernetes" ;;
    *) echo "$HACK_DIR/modules/$1" ;;
  esac
}

component_binaries() {
  case "$1" in
    etcd) echo etcd ;;
    kubernetes) echo kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
    kubernetes-oldest) echo kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
    kwok) echo kwok ;;
    helm) echo helm ;;
    minio) echo minio ;;
    kubelet) echo kubelet kube-proxy ;;
    containerd) echo containerd containerd-shim-runc-v2 ctr ;;
    runc) echo runc ;;
    cni) echo bridge host-local loopback ;;
    buildkit) echo buildkitd buildctl ;;
    coredns) echo coredns ;;
    registry) echo registry htpasswd ;;
    actionlint) echo actionlint ;;
    kueue) echo kueue ;;
    kubeflow) echo trainer-controller-manager jobset ;;
    *) return 2 ;;
  esac
}

# <cache>/<component>-<version>
component_dir() { echo "$FTO_CACHE/$1-$(component_version "$1")"; }
component_bin_dir() { echo "$(component_dir "$1")/bin"; }

component_built() {
  local c="$1" b dir
  dir="$(component_bin_dir "$c")"
  for b in $(component_binaries "$c"); do [[ -x "$dir/$b" ]] || return 1; done
}

# Absolute path of a built binary, e.g. `fto_bin kubectl`.
fto_bin() {
  local c
  for c in "${FTO_COMPONENTS[@]}"; do
    if [[ " $(component_binaries "$c") " == *" $1 "* ]]; then
      echo "$(component_bin_dir "$c")/$1"
      return 0
    fi
  done
  echo "no component builds $1" >&2
  return 2
}

# normalize_image NAME: what containerd and the kubelet call an image ("finetune-trainer:dev" is
# docker.io/library/finetune-trainer:dev to both).
normalize_image() {
  local n="$1"
  [[ "$n" == */* ]] || n="library/$n"
  [[ "${n%%/*}" == *.* || "${n%%/*}" == *:* || "${n%%/*}" == localhost ]] || n="docker.io/$n"
  echo "$n"
}

require_cmds() { # cmd... : fail early with a clear message
  local c missing=()
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  [[ ${#missing[@]} -eq 0 ]] || { echo "missing commands: ${missing[*]} (install them first)" >&2; exit 1; }
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# PID of a component started by cluster-up.sh if it is running (and really runs the binary
# we started: guards against PID reuse), else nothing. Needs use_state (below) first.
pid_of() {
  local f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(cat "$PIDS/$1.bin" 2>/dev/null || echo /nonexistent)" || return 1
  echo "$pid"
}

# ---------------------------------------------------------------- the cluster's state
# Scripts that work on a cluster (cluster-up.sh, cluster-down.sh, node.sh's functions) name
# its state directory first: use_state DIR sets STATE and its parts, which the functions
# below read. Nothing else sets them.

# use_state DIR: STATE=DIR, PKI (certificates), LOGS (components' logs), PIDS (their PIDs),
# KCFGS (their kubeconfigs), NODE_STATE (the real node's files), TIMEOUT (seconds each readiness wait may take), and the ports
# the cluster picked (FTO_PORT_NAMES below: APISERVER_PORT, ...) once it has picked them.
use_state() {
  STATE="$1"
  PKI="$STATE/pki"
  LOGS="$STATE/logs"
  PIDS="$STATE/pids"
  KCFGS="$STATE/kubeconfigs"
  NODE_STATE="$STATE/node"
  TIMEOUT="${FTO_UP_TIMEOUT:-120}"
  if [[ -f "$STATE/ports.env" ]]; then source "$STATE/ports.env"; fi
}

# The Service range and the API server's ClusterIP in it (the pods' ranges: node.sh).
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1

# begin COMPONENT...: build them, then hold the state's lock (released when the calling
# process exits: call it in a subshell to hold it less long), with its ports and
# certificates in place.
begin() {
  "$HACK_DIR/build.sh" "$@"
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  exec 8>"$STATE/.up.lock"
  flock -w 600 8 || die "another hack/cluster-up.sh holds $STATE/.up.lock"
  STARTED=()
  setup_ports
  setup_pki
}

# ---------------------------------------------------------------- processes
# A component runs as a daemon in its own session, its PID and binary in $PIDS, its log in
# $LOGS; pid_of (above) finds it again.

start_proc() { # name binary args... (env vars for the process must already be exported)
  local name="$1" bin="$2"; shift 2
  if pid_of "$name" >/dev/null; then
    log "$name: already running (pid $(pid_of "$name"))"
    return 0
  fi
  mkdir -p "$LOGS" "$PIDS"
  [[ -f "$LOGS/$name.log" ]] && mv -f "$LOGS/$name.log" "$LOGS/$name.log.prev"
  # setsid: own session, so the caller's Ctrl-C / process-group kill does not take it down;
  # all fds redirected, so callers that capture our output do not hang on the daemon.
  # 8>&-: the daemon must not inherit the lock fd, or it would hold the lock forever.
  setsid "$bin" "$@" </dev/null >"$LOGS/$name.log" 2>&1 8>&- &
  local pid=$!
  echo "$pid" >"$PIDS/$name.pid"
  echo "$bin" >"$PIDS/$name.bin"
  log "$name: started (pid $pid, log $LOGS/$name.log)"
  STARTED+=("$name")
}

# stop_proc NAME [TIMEOUT]: stop_procs (below) for one component (default 30 s).
stop_proc() { stop_procs "${2:-30}" "$1"; }

fail_with_log() { # name message
  log "ERROR: $2"
  if [[ -f "$LOGS/$1.log" ]]; then
    echo "----- last 40 lines of $LOGS/$1.log -----" >&2
    tail -n 40 "$LOGS/$1.log" >&2
    echo "-----" >&2
  fi
  exit 1
}

wait_until() { # name description timeout command...
  local name="$1" what="$2" t="$3"; shift 3
  local deadline=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    # kill -0 on the PID we started, not pid_of: right after the fork, before setsid execs
    # the binary, its command line is still this script's (seen under load: a kubelet that
    # was starting fine reported as exited).
    if [[ "$name" != - ]] && ! kill -0 "$(cat "$PIDS/$name.pid" 2>/dev/null || echo none)" 2>/dev/null; then
      fail_with_log "$name" "$name exited while waiting for: $what"
    fi
    if ((SECONDS >= deadline)); then
      fail_with_log "$name" "timed out after ${t}s waiting for: $what"
    fi
    sleep 0.5
  done
}

# stop_procs TIMEOUT NAME...: SIGTERM to all of them at once, SIGKILL to those still alive
# after TIMEOUT seconds (components that shut down together, e.g. the control plane's clients).
stop_procs() {
  local t="$1" n pid i alive
  shift
  local -A waiting=()
  for n in "$@"; do
    if pid="$(pid_of "$n")"; then
      kill -TERM "$pid" 2>/dev/null || true
      waiting[$n]=$pid
      log "$n: SIGTERM sent (pid $pid)"
    fi
    rm -f "$PIDS/$n.pid"
  done
  for ((i = 0; i < t * 5; i++)); do
    alive=0
    for n in "${!waiting[@]}"; do if kill -0 "${waiting[$n]}" 2>/dev/null; then alive=1; fi; done
    [[ $alive == 0 ]] && break
    sleep 0.2
  done
  local killed=0
  for n in "${!waiting[@]}"; do
    if kill -0 "${waiting[$n]}" 2>/dev/null; then
      log "$n: did not stop within ${t}s, sending SIGKILL"
      kill -KILL "${waiting[$n]}" 2>/dev/null || true
      killed=1
    else
      log "$n: stopped"
    fi
  done
  if [[ $killed == 1 ]]; then sleep 0.5; fi
}

# ---------------------------------------------------------------- ports
# Every port the cluster listens on, picked once and kept in $STATE/ports.env.
FTO_PORT_NAMES=(ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHED_PORT S3_PORT S3_CONSOLE_PORT
  KUBELET_PORT KUBELET_HEALTHZ_PORT KUBE_PROXY_HEALTHZ_PORT KUBE_PROXY_METRICS_PORT
  COREDNS_READY_PORT COREDNS_HEALTH_PORT REGISTRY_PORT)

port_free() { ! ss -Hltn "( sport = :$1 )" 2>/dev/null | grep -q .; }

pick_port() { # VAR: set VAR to a free port below the ephemeral range (32768+), so outgoing
  # connections never take it; never one already picked for another component
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 10000))
    if port_free "$p" && [[ " ${PICKED[*]:-} " != *" $p "* ]]; then
      PICKED+=("$p")
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port found"
}

setup_ports() {
  local names=("${FTO_PORT_NAMES[@]}") n changed=0
  PICKED=()
  [[ -f "$STATE/ports.env" ]] && source "$STATE/ports.env"
  for n in "${names[@]}"; do [[ -n "${!n:-}" ]] && PICKED+=("${!n}"); done
  for n in "${names[@]}"; do
    if [[ -z "${!n:-}" ]]; then
      pick_port "$n"; changed=1
    fi
  done
  # A port taken by someone else while we were down: pick another one (the kubeconfig and
  # env file are rewritten below, so callers must re-source them after a cluster-down).
  local owner
  for n in "${names[@]}"; do
    owner="$(port_owner_component "$n")"
    if ! pid_of "$owner" >/dev/null && ! port_free "${!n}"; then
      log "port ${!n} ($n) is in use by another process; picking a new one"
      pick_port "$n"; changed=1
    fi
  done
  if [[ $changed == 1 || ! -f "$STATE/ports.env" ]]; then
    for n in "${names[@]}"; do echo "$n=${!n}"; done >"$STATE/ports.env"
  fi
}

port_owner_component() {
  case "$1" in
    ETCD_PORT | ETCD_PEER_PORT) echo etcd ;;
    APISERVER_PORT) echo kube-apiserver ;;
    KCM_PORT) echo kube-controller-manager ;;
    SCHED_PORT) echo kube-scheduler ;;
    S3_PORT | S3_CONSOLE_PORT) echo minio ;;
    KUBELET_PORT | KUBELET_HEALTHZ_PORT) echo kubelet ;;
    KUBE_PROXY_HEALTHZ_PORT | KUBE_PROXY_METRICS_PORT) echo kube-proxy ;;
    COREDNS_READY_PORT | COREDNS_HEALTH_PORT) echo coredns ;;
    REGISTRY_PORT) echo registry ;;
  esac
}

# ---------------------------------------------------------------- certificates, kubeconfigs

gen_ca() { # name CN
  [[ -f "$PKI/$1.crt" ]] && return 0
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/$1.key" -days 3650 \
    -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$PKI/$1.crt" 2>/dev/null
}

gen_client_cert() { # name CN O [ca-name]
  local n="$1" cn="$2" o="$3" ca="${4:-ca}" subj="/CN=$2"
  [[ -n "$o" ]] && subj="/O=$o/CN=$cn"
  [[ -f "$PKI/$n.crt" ]] && return 0
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$n.key" -subj "$subj" -out "$PKI/$n.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$n.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial -days 3650 \
    -extfile <(printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') \
    -out "$PKI/$n.crt" 2>/dev/null
  rm -f "$PKI/$n.csr"
}

write_kubeconfig() { # file user-cert-name server (https://host:port)
  local f="$1" n="$2" server="$3"
  umask 077
  cat >"$f.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fto
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $n
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$n.crt")
    client-key-data: $(base64 -w0 <"$PKI/$n.key")
contexts:
- name: fto
  context:
    cluster: fto
    user: $n
current-context: fto
EOF
  mv -f "$f.tmp" "$f"
  umask 022
}

kc() { "$(fto_bin kubectl)" --kubeconfig "$STATE/kubeconfig" --request-timeout=10s "$@"; }

# setup_pki: the cluster's CA, the API server's serving certificate (for 127.0.0.1, the
# node's bridge address and the kubernetes Service) and the components' client identities.
setup_pki() {
  mkdir -p "$PKI"; chmod 700 "$PKI"
  [[ -f "$PKI/ca.crt" ]] || log "generating certificates and keys in $PKI"
  gen_ca ca finetune-operator-test-ca
  # front proxy (request-header authentication for aggregated API servers); also stops
  # kube-controller-manager/kube-scheduler from logging a missing requestheader CA forever
  gen_ca front-proxy-ca finetune-operator-test-front-proxy-ca
  gen_client_cert front-proxy-client front-proxy-client "" front-proxy-ca
  # A certificate from before the real node existed lacks its address: make a new one.
  if [[ -f "$PKI/apiserver.crt" ]] && ! openssl x509 -noout -ext subjectAltName -in "$PKI/apiserver.crt" |
    grep -q "IP Address:$NODE_HOST_IP"; then
    rm -f "$PKI/apiserver.crt"
  fi
  if [[ ! -f "$PKI/apiserver.crt" ]]; then
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/apiserver.key" -subj "/CN=kube-apiserver" -out "$PKI/apiserver.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 3650 \
      -extfile <(printf '%s\n' 'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
        "subjectAltName=IP:127.0.0.1,IP:$NODE_HOST_IP,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local") \
      -out "$PKI/apiserver.crt" 2>/dev/null
    rm -f "$PKI/apiserver.csr"
  fi
  # client identities; system:masters = cluster-admin without any RBAC objects
  gen_client_cert admin fto-admin system:masters
  gen_client_cert kube-controller-manager system:kube-controller-manager ""
  gen_client_cert kube-scheduler system:kube-scheduler ""
  gen_client_cert kwok kwok-controller system:masters
  # the API server's identity towards kubelets (logs, exec; RBAC in hack/node.sh)
  gen_client_cert apiserver-kubelet-client kube-apiserver-kubelet-client ""
  if [[ ! -f "$PKI/sa.key" ]]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  chmod 600 "$PKI"/*.key
}
