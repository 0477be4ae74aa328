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
FTO_NODE_COMPONENTS=(kubelet containerd runc cni buildkit coredns)
FTO_PLATFORM=(kueue kubeflow)
FTO_COMPONENTS=("${FTO_CONTROL_PLANE[@]}" "${FTO_NODE_COMPONENTS[@]}" "${FTO_PLATFORM[@]}")
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
    kwok) echo "$KWOK_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    minio) echo "$MINIO_VERSION" ;;
    kubelet) echo "$KUBERNETES_VERSION" ;;
    containerd) echo "$CONTAINERD_VERSION" ;;
    runc) echo "$RUNC_VERSION" ;;
    cni) echo "$CNI_PLUGINS_VERSION" ;;
    buildkit) echo "$BUILDKIT_VERSION" ;;
    coredns) echo "$COREDNS_VERSION" ;;
    kueue) echo "$KUEUE_VERSION" ;;
    # Two modules in one wrapper: both pins name its cache folder.
    kubeflow) echo "$KUBEFLOW_TRAINER_VERSION-jobset-$JOBSET_VERSION" ;;
    *) echo "unknown component: $1" >&2; return 2 ;;
  esac
}

component_module() {
  case "$1" in
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    kubernetes) echo k8s.io/kubernetes ;;
    kwok) echo sigs.k8s.io/kwok ;;
    helm) echo helm.sh/helm/v3 ;;
    minio) echo github.com/minio/minio ;;
    kubelet) echo k8s.io/kubernetes ;;
    containerd) echo github.com/containerd/containerd/v2 ;;
    runc) echo github.com/opencontainers/runc ;;
    cni) echo github.com/containernetworking/plugins ;;
    buildkit) echo github.com/moby/buildkit ;;
    coredns) echo github.com/coredns/coredns ;;
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
    kwok) echo kwok ;;
    helm) echo helm ;;
    minio) echo minio ;;
    kubelet) echo kubelet kube-proxy ;;
    containerd) echo containerd containerd-shim-runc-v2 ctr ;;
    runc) echo runc ;;
    cni) echo bridge host-local loopback ;;
    buildkit) echo buildkitd buildctl ;;
    coredns) echo coredns ;;
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

require_cmds() { # cmd... : fail early with a clear message
  local c missing=()
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  [[ ${#missing[@]} -eq 0 ]] || { echo "missing commands: ${missing[*]} (install them first)" >&2; exit 1; }
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# PID of a component started by cluster-up.sh if it is running (and really runs the binary
# we started: guards against PID reuse), else nothing. Needs $PIDS (the state's pids dir).
pid_of() {
  local f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(cat "$PIDS/$1.bin" 2>/dev/null || echo /nonexistent)" || return 1
  echo "$pid"
}
