# shellcheck shell=bash
# The local cluster's real node: kubelet + containerd + runc, a CNI bridge, kube-proxy and
# CoreDNS on this machine, beside kwok's fake nodes. Source it after hack/lib.sh and
# `use_state DIR` (the cluster's state: certificates, kubeconfigs, PIDs, ports, node files);
# it uses only lib.sh's functions (start_proc, wait_until, gen_client_cert, kc, ...) and
# defines variables and functions only. hack/cluster-up.sh and hack/cluster-down.sh source
# it. One real node per machine: the bridge, its addresses and the iptables chains below
# are the machine's.
#
# Network (all of it stays on this machine):
#   fto-br0       a Linux bridge with NODE_HOST_IP; pods get 10.244.0.0/24 behind it (CNI
#                 bridge + host-local). The API server and MinIO listen on NODE_HOST_IP
#                 (not 0.0.0.0), so pods reach them and nothing outside the machine does.
#   routes        `unreachable` routes for the whole pod range (10.244.0.0/16), kwok's fake
#                 pods' range (10.245.0.0/16) and the Service range: a packet for an address
#                 no pod or kube-proxy rule owns is refused here instead of following the
#                 default route off the machine.
#   FTO-FORWARD   pods may talk to pods; anything a pod sends to another interface (the
#                 internet) and anything forwarded into the pods from outside is dropped.
#                 No masquerade (the CNI plugin's ipMasq is off).
#   FTO-INPUT     pods may reach the host only on the API server's, MinIO's, the registry's
#                 (hack/registry.sh) and DNS ports.
# Cgroups: this machine's kernel mounts every controller in cgroup v1 (cgroup2 has none), so
# the kubelet runs with failCgroupV1: false and the cgroupfs driver (hack/README.md, "Cgroups").

NODE_NAME=fto-node
NODE_BRIDGE=fto-br0
NODE_HOST_IP=10.244.0.1
NODE_POD_CIDR=10.244.0.0/24
CLUSTER_POD_CIDR=10.244.0.0/16
KWOK_POD_CIDR=10.245.0.0/16  # hack/kwok/kwok.yaml's cidr: fake pods never share a real one's address
NODE_TAINT=finetune.dev/local-node
NODE_POOL_LABEL=finetune.dev/pool=local
# Runtime state (sockets, container state): one node per machine, short socket paths.
NODE_RUN=/run/fto-node
# Images and snapshots outlive `cluster-down --purge` (the built images are a cache).
NODE_CONTAINERD_ROOT="$FTO_CACHE/node-containerd"
BUILDKIT_ROOT="$FTO_CACHE/buildkit"
CONTAINERD_SOCK="$NODE_RUN/containerd/containerd.sock"
BUILDKIT_SOCK="$NODE_RUN/buildkit/buildkitd.sock"
PAUSE_IMAGE=fto.local/pause:3.10.2
# BuildKit's own garbage collection keeps at most this much build cache (hack/images.sh also
# drops what its run did not use): the trainer image's builder stage alone is ~7 GB.
BUILDKIT_KEEP_MB="${FTO_BUILDKIT_KEEP_MB:-16000}"

# Whether this run has a real node: FTO_NODE=1 requires it, 0 leaves it out, auto (the
# default) has it when running as root. later: its network and addresses now, the node
# itself on a later cluster-up without it (`make test` runs the integration tier first).
node_enabled() {
  case "${FTO_NODE:-auto}" in
    1 | later) [[ $EUID -eq 0 ]] || die "FTO_NODE=${FTO_NODE}: the real node needs root (kubelet, containerd, iptables)"; return 0 ;;
    0) return 1 ;;
    auto) [[ $EUID -eq 0 ]] ;;
    *) die "FTO_NODE must be 0, 1, auto or later (got '$FTO_NODE')" ;;
  esac
}
node_deferred() { [[ "${FTO_NODE:-auto}" == later ]]; }

# The node is the machine's: the state directory that runs it is written in NODE_OWNER, and
# another state (a second cluster, a test's temporary HOME) neither starts a second node nor
# takes this one down while any of its processes runs.
NODE_OWNER="$NODE_RUN/owner"
NODE_PROCS=(containerd buildkitd kubelet kube-proxy coredns)
node_owner() { cat "$NODE_OWNER" 2>/dev/null || true; }
# node_runs_in OWNER: whether any node process started by the state OWNER still runs. A run
# killed outright (a CI job's timeout, a lost session) leaves OWNER and its PID files behind
# with nothing running: that claim is stale.
node_runs_in() {
  local n
  for n in "${NODE_PROCS[@]}"; do
    (PIDS="$1/pids" && pid_of "$n" >/dev/null) && return 0
  done
  return 1
}
claim_node() {
  local owner
  owner="$(node_owner)"
  if [[ -n "$owner" && "$owner" != "$STATE" && -d "$owner" ]]; then
    if node_runs_in "$owner"; then
      die "the real node belongs to the cluster in $owner: stop it first (FTO_STATE=$owner hack/cluster-down.sh) or run this one with FTO_NODE=0"
    fi
    log "the real node's last owner ($owner) was killed without stopping it: clearing what it left (pods, mounts, network namespaces)"
    (use_state "$owner" && node_down)
  fi
  mkdir -p "$NODE_RUN"
  echo "$STATE" >"$NODE_OWNER"
}
owns_node() { [[ "$(node_owner)" == "$STATE" ]]; }

# write_if_changed FILE: stdin to FILE, atomically and only when the content differs
# (kube-proxy exits when its configuration file changes; containerd reloads the CNI
# directory on every write).
write_if_changed() {
  local f="$1" tmp
  tmp="$(mktemp "$f.XXXXXX")"
  cat >"$tmp"
  if cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv -f "$tmp" "$f"; fi
}

# The address the API server and MinIO listen on.
host_ip() { if node_enabled; then echo "$NODE_HOST_IP"; else echo 127.0.0.1; fi; }

# ---------------------------------------------------------------- network

node_network() {
  "$HACK_DIR/host-packages.sh"
  claim_node
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip addr replace "$NODE_HOST_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  ip route replace unreachable "$CLUSTER_POD_CIDR"
  ip route replace unreachable "$KWOK_POD_CIDR"
  ip route replace unreachable "$SERVICE_CIDR"
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  local ch
  for ch in FTO-FORWARD FTO-INPUT; do
    iptables -w -N "$ch" 2>/dev/null || iptables -w -F "$ch"
  done
  iptables -w -A FTO-FORWARD -i "$NODE_BRIDGE" -o "$NODE_BRIDGE" -j ACCEPT
  iptables -w -A FTO-FORWARD -i "$NODE_BRIDGE" -m comment --comment "fto: pod traffic never leaves the machine" -j DROP
  iptables -w -A FTO-FORWARD -o "$NODE_BRIDGE" -m comment --comment "fto: nothing from outside reaches the pods" -j DROP
  iptables -w -A FTO-INPUT -i "$NODE_BRIDGE" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  iptables -w -A FTO-INPUT -i "$NODE_BRIDGE" -p tcp -m multiport --dports "$APISERVER_PORT,$S3_PORT,$REGISTRY_PORT,53" -j ACCEPT
  iptables -w -A FTO-INPUT -i "$NODE_BRIDGE" -p udp --dport 53 -j ACCEPT
  iptables -w -A FTO-INPUT -i "$NODE_BRIDGE" -m comment --comment "fto: pods reach the host only on its API server, S3, registry and DNS ports" -j DROP
  iptables -w -C FORWARD -j FTO-FORWARD 2>/dev/null || iptables -w -I FORWARD 1 -j FTO-FORWARD
  iptables -w -C INPUT -j FTO-INPUT 2>/dev/null || iptables -w -I INPUT 1 -j FTO-INPUT
}

node_network_down() {
  owns_node || return 0
  local ch
  iptables -w -D FORWARD -j FTO-FORWARD 2>/dev/null || true
  iptables -w -D INPUT -j FTO-INPUT 2>/dev/null || true
  for ch in FTO-FORWARD FTO-INPUT; do
    iptables -w -F "$ch" 2>/dev/null || true
    iptables -w -X "$ch" 2>/dev/null || true
  done
  ip route del unreachable "$CLUSTER_POD_CIDR" 2>/dev/null || true
  ip route del unreachable "$KWOK_POD_CIDR" 2>/dev/null || true
  ip route del unreachable "$SERVICE_CIDR" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  rm -f "$NODE_OWNER"
}

# ---------------------------------------------------------------- configuration files

node_certs() {
  gen_client_cert kubelet "system:node:$NODE_NAME" system:nodes
  gen_client_cert kube-proxy system:kube-proxy ""
  gen_client_cert coredns system:coredns ""
  if [[ ! -f "$PKI/kubelet-serving.crt" ]]; then
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/kubelet-serving.key" -subj "/CN=$NODE_NAME" \
      -out "$PKI/kubelet-serving.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/kubelet-serving.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 3650 \
      -extfile <(printf '%s\n' 'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
        "subjectAltName=IP:$NODE_HOST_IP,DNS:$NODE_NAME") -out "$PKI/kubelet-serving.crt" 2>/dev/null
    rm -f "$PKI/kubelet-serving.csr"
  fi
  chmod 600 "$PKI"/*.key
  local n
  for n in kubelet kube-proxy coredns; do
    write_kubeconfig "$KCFGS/$n" "$n" "https://$(host_ip):$APISERVER_PORT"
  done
}

node_write_configs() {
  local d="$NODE_STATE"
  mkdir -p "$d/cni/net.d" "$d/cni/ipam" "$d/kubelet" "$NODE_RUN"
  write_if_changed "$d/cni/net.d/10-fto.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "fto",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_HOST_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$d/cni/ipam"
      }
    }
  ]
}
EOF
  write_if_changed "$d/containerd.toml" <<EOF
# Written by hack/cluster-up.sh (hack/node.sh).
version = 3
root = '$NODE_CONTAINERD_ROOT'
state = '$NODE_RUN/containerd'

[grpc]
  address = '$CONTAINERD_SOCK'

[ttrpc]
  address = '$NODE_RUN/containerd/containerd.sock.ttrpc'

[debug]
  level = 'warn'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '$PAUSE_IMAGE'
    # hosts.toml per registry (the local one's: hack/registry.sh)
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '$d/certs.d'

  [plugins.'io.containerd.cri.v1.runtime']
    # This machine's root lacks CAP_SYS_RESOURCE (it runs in a VM sandbox), so no process
    # may lower its oom_score_adj: containers get at least containerd's own (0).
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '$(fto_bin runc)'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['$(component_bin_dir cni)']
      conf_dir = '$d/cni/net.d'

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
EOF
  [[ -z "${REGISTRY_PORT:-}" ]] || registry_hosts_toml
  write_if_changed "$d/kubelet.yaml" <<EOF
# Written by hack/cluster-up.sh (hack/node.sh).
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_HOST_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
# This machine mounts its cgroup controllers as v1 (hack/node.sh's header).
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$NODE_HOST_IP]
# No host resolv.conf in pods: cluster names only, nothing resolves to the outside.
resolvConf: ""
# The built images are a cache: no image garbage collection, and eviction only when the
# disk is really full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 200Mi
  nodefs.available: 2Gi
  imagefs.available: 2Gi
  nodefs.inodesFree: 1%
  imagefs.inodesFree: 1%
serializeImagePulls: false
maxPods: 110
# See restrict_oom_score_adj in containerd.toml: lowering it is refused here.
oomScoreAdj: 0
registerWithTaints:
- {key: $NODE_TAINT, value: "true", effect: NoSchedule}
EOF
  write_if_changed "$d/kube-proxy.yaml" <<EOF
# Written by hack/cluster-up.sh (hack/node.sh).
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KCFGS/kube-proxy}
hostnameOverride: $NODE_NAME
mode: iptables
oomScoreAdj: 0
clusterCIDR: $CLUSTER_POD_CIDR
bindAddress: $NODE_HOST_IP
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
nodePortAddresses: [$NODE_HOST_IP/32]
iptables:
  # true would set route_localnet=1 on every interface
  localhostNodePorts: false
conntrack:
  # leave the machine's conntrack sysctls alone
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  write_if_changed "$d/Corefile" <<EOF
# Written by hack/cluster-up.sh (hack/node.sh): cluster names only, no forwarding.
.:53 {
    bind $NODE_HOST_IP
    ready 127.0.0.1:$COREDNS_READY_PORT
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    errors
    cache 5
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KCFGS/coredns fto
        pods insecure
        ttl 5
    }
}
EOF
}

# CoreDNS reads Services, EndpointSlices, Pods and Namespaces; the API server's client
# identity may call the kubelet's API (logs, exec). Both as RBAC objects, not system:masters.
node_rbac() {
  kc apply -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "fto:coredns"}
rules:
- apiGroups: [""]
  resources: [services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "fto:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "fto:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "fto:kube-apiserver-kubelet-client"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kubelet-api-admin"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kube-apiserver-kubelet-client"}
EOF
}

# ---------------------------------------------------------------- health checks

ctr_() { "$(fto_bin ctr)" --address "$CONTAINERD_SOCK" "$@"; }
containerd_ready() { ctr_ version; }
buildkit_ready() { "$(fto_bin buildctl)" --addr "unix://$BUILDKIT_SOCK" debug workers | grep -q .; }
kubelet_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" | grep -q '^ok$'; }
node_ready() {
  [[ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
kube_proxy_healthy() { curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"; }
coredns_ready() { curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$COREDNS_READY_PORT/ready"; }
pause_image_present() { ctr_ -n k8s.io images ls -q "name==$PAUSE_IMAGE" | grep -q .; }

# ---------------------------------------------------------------- processes

node_path() { echo "$(component_bin_dir containerd):$(component_bin_dir runc):$PATH"; }

# Each containerd store gets an ID when it is made; BuildKit's state records the ID of the
# store its cache lives in. BuildKit's records point at that store's snapshots and leases:
# kept beside a new store (the old one deleted to free disk), every cached step fails with
# "parent snapshot ... does not exist" (CI, 2026-11-26), so such state is dropped instead.
STORE_ID_FILE=fto-store-id

# claim_store: give the containerd store its ID if it has none, and drop BuildKit's state if
# it was made with another store (not while buildkitd runs on it).
claim_store() {
  local store_id
  mkdir -p "$NODE_CONTAINERD_ROOT"
  [[ -s "$NODE_CONTAINERD_ROOT/$STORE_ID_FILE" ]] ||
    cat /proc/sys/kernel/random/uuid >"$NODE_CONTAINERD_ROOT/$STORE_ID_FILE"
  store_id="$(cat "$NODE_CONTAINERD_ROOT/$STORE_ID_FILE")"
  if ! pid_of buildkitd >/dev/null && [[ -d "$BUILDKIT_ROOT" ]] &&
    [[ "$(cat "$BUILDKIT_ROOT/$STORE_ID_FILE" 2>/dev/null)" != "$store_id" ]]; then
    log "buildkitd: its state ($BUILDKIT_ROOT) belongs to another containerd store: dropped"
    rm -rf "$BUILDKIT_ROOT"
  fi
  mkdir -p "$BUILDKIT_ROOT"
  echo "$store_id" >"$BUILDKIT_ROOT/$STORE_ID_FILE"
}

start_containerd() {
  claim_store
  mkdir -p "$NODE_CONTAINERD_ROOT" "$NODE_RUN/containerd"
  PATH="$(node_path)" start_proc containerd "$(fto_bin containerd)" --config "$NODE_STATE/containerd.toml"
  wait_until containerd "containerd on $CONTAINERD_SOCK" "$TIMEOUT" containerd_ready
}

start_buildkitd() {
  claim_store
  mkdir -p "$BUILDKIT_ROOT" "$NODE_RUN/buildkit"
  # The containerd worker: images built here land in the node's image store (namespace
  # k8s.io), where the kubelet finds them without a registry. RUN steps use the host's
  # network (package registries), not the pods' bridge.
  # Build history pins each build's results (7 GB per trainer image): keep only the last few.
  write_if_changed "$NODE_STATE/buildkitd.toml" <<EOF
# Written by hack/cluster-up.sh (hack/node.sh).
[history]
  maxAge = 3600
  maxEntries = 4
$([[ -z "${REGISTRY_PORT:-}" ]] || printf '\n# The local registry (hack/registry.sh), for pushes.\n[registry."%s"]\n  ca = ["%s"]\n' "$(registry_addr)" "$PKI/ca.crt")
EOF
  PATH="$(node_path)" start_proc buildkitd "$(fto_bin buildkitd)" \
    --config "$NODE_STATE/buildkitd.toml" \
    --root "$BUILDKIT_ROOT" --addr "unix://$BUILDKIT_SOCK" \
    --oci-worker=false --containerd-worker=true \
    --containerd-worker-addr "$CONTAINERD_SOCK" --containerd-worker-namespace k8s.io \
    --containerd-worker-net host --containerd-worker-gc=true \
    --containerd-worker-gc-keepstorage "$BUILDKIT_KEEP_MB"
  wait_until buildkitd "buildkitd on $BUILDKIT_SOCK" "$TIMEOUT" buildkit_ready
}

# The sandbox ("pause") image, from Kubernetes' own pause.c at the pinned release, built
# FROM scratch by BuildKit: no registry is needed.
build_pause_image() {
  pause_image_present && return 0
  local src ctx
  # The binaries may be cached while Go's module cache is not (a cleaned or new GOMODCACHE):
  # `go mod download` fetches the source then, and is a no-op otherwise.
  src="$(cd "$HACK_DIR/modules/kubernetes" && go mod download k8s.io/kubernetes &&
    go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c" ||
    die "cannot download k8s.io/kubernetes $KUBERNETES_VERSION for the pause image's source"
  [[ -f "$src" ]] || die "the pause image's source is missing: $src"
  ctx="$NODE_STATE/pause-build"
  rm -rf "$ctx"; mkdir -p "$ctx"
  gcc -Os -Wall -Werror -static -DVERSION="v3.10.2-$KUBERNETES_VERSION" -o "$ctx/pause" "$src"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Dockerfile"
  log "building $PAUSE_IMAGE from $src"
  "$(fto_bin buildctl)" --addr "unix://$BUILDKIT_SOCK" build --progress=plain \
    --frontend dockerfile.v0 --local context="$ctx" --local dockerfile="$ctx" \
    --output "type=image,name=$PAUSE_IMAGE,unpack=true" >"$LOGS/pause-build.log" 2>&1 ||
    fail_with_log pause-build "building $PAUSE_IMAGE failed"
  rm -rf "$ctx"
}

start_kubelet() {
  local d="$NODE_STATE"
  PATH="$(node_path)" start_proc kubelet "$(fto_bin kubelet)" \
    --config "$d/kubelet.yaml" --kubeconfig "$KCFGS/kubelet" \
    --root-dir "$d/kubelet" --cert-dir "$d/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_HOST_IP" \
    --node-labels "$NODE_POOL_LABEL,node.kubernetes.io/instance-type=local" \
    --v=1
  wait_until kubelet "kubelet /healthz" "$TIMEOUT" kubelet_healthy
  wait_until kubelet "node $NODE_NAME Ready" "$TIMEOUT" node_ready
}

start_kube_proxy() {
  start_proc kube-proxy "$(fto_bin kube-proxy)" --config "$NODE_STATE/kube-proxy.yaml" --v=1
  wait_until kube-proxy "kube-proxy /healthz" "$TIMEOUT" kube_proxy_healthy
}

start_coredns() {
  start_proc coredns "$(fto_bin coredns)" -conf "$NODE_STATE/Corefile"
  wait_until coredns "CoreDNS /ready" "$TIMEOUT" coredns_ready
}

node_up() {
  "$HACK_DIR/build.sh" node
  node_certs
  node_write_configs
  node_rbac
  start_containerd
  start_registry
  start_buildkitd
  build_pause_image
  start_kubelet
  start_kube_proxy
  start_coredns
}

# shim_pattern SOCKET: the `pkill -f` pattern of every runc shim of the containerd at SOCKET,
# whatever the namespace (k8s.io, BuildKit's): containerd starts them as
# `containerd-shim-runc-v2 -namespace NS -id ID -address SOCKET`.
shim_pattern() { echo "containerd-shim-runc-v2 .*-address $1( |\$)"; }

# Stop the node's processes and what they leave behind: the pods' processes (their cgroups),
# the containerd shims, mounts under the kubelet's directory and the pods' network namespaces.
node_down() {
  owns_node || { log "the real node is not this cluster's ($(node_owner)): left alone"; return 0; }
  local n pid
  for n in coredns kube-proxy kubelet buildkitd registry; do stop_proc "$n" 30; done
  # Every process in a pod cgroup, then the shims (they would restart nothing without
  # containerd, but hold mounts).
  local procs
  procs="$(cat /sys/fs/cgroup/pids/kubepods/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/pids/kubepods/*/*/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/*/*/cgroup.procs 2>/dev/null || true)"
  for pid in $procs; do kill -KILL "$pid" 2>/dev/null || true; done
  local shims
  shims="$(shim_pattern "$CONTAINERD_SOCK")"
  pkill -KILL -f "$shims" 2>/dev/null || true
  for _ in $(seq 1 50); do pgrep -f "$shims" >/dev/null || break; sleep 0.1; done
  forget_pulled_images
  stop_proc containerd 30
  local d="$NODE_STATE"
  { grep -oE " ($d/kubelet|$NODE_RUN)[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns delete "$ns" 2>/dev/null || true; done
  rm -rf "$d/cni/ipam"
  "$(fto_bin kube-proxy)" --cleanup >/dev/null 2>&1 || true
}

# The images the kubelet pulled from a local registry ($NODE_HOST_IP:PORT/...: `make
# release`, the e2e tier's pushes, OCI models), and their IDs: that registry keeps them (in
# its cluster's state) and serves them again; kept here too, every e2e run's trainer image
# stayed behind (40 of them, 34 GB, on 2026-11-30). Images built here (hack/images.sh) stay.
forget_pulled_images() {
  containerd_ready >/dev/null 2>&1 || return 0
  local listed named ref target
  listed="$(ctr_ -n k8s.io images ls 2>/dev/null | awk 'NR>1 {print $1, $3}')"
  while read -r ref target; do
    if [[ "$ref" == "$NODE_HOST_IP:"* ]]; then ctr_ -n k8s.io images rm "$ref" >/dev/null 2>&1 || true; fi
  done <<<"$listed"
  named=" $(ctr_ -n k8s.io images ls 2>/dev/null | awk 'NR>1 && $1 !~ /^sha256:/ {printf "%s ", $3}')"
  while read -r ref target; do
    if [[ "$ref" == sha256:* && "$named" != *" $target "* ]]; then
      ctr_ -n k8s.io images rm "$ref" >/dev/null 2>&1 || true
    fi
  done <<<"$listed"
  return 0
}

# builder_up: only containerd and BuildKit (hack/images.sh; `hack/cluster-up.sh builder`):
# images can be built with no cluster running.
builder_up() {
  node_enabled || die "building images needs root (containerd, BuildKit); FTO_NODE=${FTO_NODE:-auto}: nothing was built"
  begin containerd runc cni buildkit
  claim_node
  node_write_configs
  start_containerd
  start_buildkitd
  printf 'BUILDKIT_ADDR=unix://%s\nCONTAINERD_ADDR=%s\n' "$BUILDKIT_SOCK" "$CONTAINERD_SOCK" >"$STATE/builder.env"
}

# shellcheck source=registry.sh
source "$HACK_DIR/registry.sh"
