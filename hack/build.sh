#!/usr/bin/env bash
# Build the pinned test components from their Go modules into a cache OUTSIDE the clone:
#   ${FTO_CACHE:-$HOME/.cache/finetune-operator}/<component>-<version>/bin/<binary>
# Idempotent: a component whose binaries are all present is skipped, so a fresh clone on
# the same machine reuses earlier builds. A build goes to a temporary folder and is moved
# into place only when complete; a lock file serialises concurrent runs.
#
# Usage: hack/build.sh [component ...]      components: kubernetes helm kwok etcd minio
#                                           kubelet containerd runc cni buildkit coredns kueue
#                                           kubeflow (default: all of them, in that order)
#        hack/build.sh control-plane        the first five (what the integration tier needs)
#        hack/build.sh node                 the next six (the real node, the image builder)
#        hack/build.sh platform             Kueue, Kubeflow Trainer + JobSet (their CRDs and
#                                           webhook manifests with them)
#        hack/build.sh lint                 actionlint (`make lint`)
#        hack/build.sh oldest               the oldest supported control plane
#                                           (kubernetes-oldest: `make test-kube-oldest`)
#        groups and components mix: hack/build.sh control-plane platform
#   FTO_CACHE=...       cache root (default ~/.cache/finetune-operator)
#   FTO_REBUILD=1       rebuild even when present
#   FTO_BUILD_P=N       go build -p (default: number of CPUs, i.e. Go's default)
# Prints the build time per component; exits non-zero when any build fails.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_cmds go flock
export GOTOOLCHAIN=local   # never download another toolchain
export CGO_ENABLED=0       # static binaries, as the upstream release builds are
# -dwarf=false: the linker strips the debug information anyway (-ldflags -s -w), so the
# compiler need not make it; the same binaries, 13 % less compile time (helm from an empty
# GOCACHE: 130 -> 113 user CPU-s, 84 -> 73 s wall; hack/README.md).
export GOFLAGS="-trimpath -buildvcs=false -mod=readonly -gcflags=all=-dwarf=false"
# The compiler and linker collect garbage 4x less often: kubernetes' four binaries from an
# empty GOCACHE took 796 -> 629 CPU-s (408 -> 328 s wall) for a peak of 1.56 -> 1.68 GiB
# (hack/README.md). The same binaries (GOGC changes no output).
export GOGC=400
# The CPUs this process may use. Not plain `nproc`: it answers OMP_NUM_THREADS when that is
# set, and `make test` sets it to 1 for torch, which built every Go tool with -p 1.
cpus() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }
BUILD_P="${FTO_BUILD_P:-$(cpus)}"

# The module's publication time (from the module proxy's .info) doubles as build date,
# so rebuilding the same version gives the same binaries.
module_time() { # module version wrapper-dir
  (cd "$HACK_DIR/modules/$3" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$1@$2" 2>/dev/null) || true
}

ldflags_for() {
  local c="$1" v t flags="-s -w"
  v="$(component_version "$c")"
  case "$c" in
    etcd)
      flags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$v" ;;
    kubernetes | kubernetes-oldest)
      local minor="${v#v1.}"; minor="${minor%%.*}"
      t="$(module_time k8s.io/kubernetes "$v" "$c")"; t="${t:-1970-01-01T00:00:00Z}"
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        flags+=" -X $p.gitTreeState=clean -X $p.buildDate=$t -X $p.gitCommit="
      done ;;
    kwok)
      flags+=" -X sigs.k8s.io/kwok/pkg/consts.Version=$v"
      flags+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBERNETES_VERSION" ;;
    helm)
      # Helm's built-in .Capabilities.KubeVersion (used by `helm template` and `helm lint`
      # without a cluster) follows our Kubernetes pin instead of its client-go version.
      local kminor="${KUBERNETES_VERSION#v1.}"; kminor="${kminor%%.*}"
      flags+=" -X helm.sh/helm/v3/internal/version.version=$v"
      flags+=" -X helm.sh/helm/v3/internal/version.metadata="
      flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        flags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kminor"
      done ;;
    kubelet) flags="$(ldflags_for kubernetes)" ;;
    containerd)
      flags+=" -X github.com/containerd/containerd/v2/version.Version=$v"
      flags+=" -X github.com/containerd/containerd/v2/version.Revision=module-$v" ;;
    runc) flags+=" -X main.version=${v#v} -X main.gitCommit=module-$v" ;;
    cni) flags+=" -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$v" ;;
    buildkit)
      flags+=" -X github.com/moby/buildkit/version.Version=$v"
      flags+=" -X github.com/moby/buildkit/version.Revision=module-$v" ;;
    coredns) flags+=" -X github.com/coredns/coredns/coremain.GitCommit=module-$v" ;;
    actionlint) flags+=" -X github.com/rhysd/actionlint.version=$v" ;;
    registry)
      flags+=" -X github.com/distribution/distribution/v3/version.version=$v"
      flags+=" -X github.com/distribution/distribution/v3/version.revision=module-$v" ;;
    kueue)
      flags+=" -X sigs.k8s.io/kueue/pkg/version.GitVersion=$v"
      flags+=" -X sigs.k8s.io/kueue/pkg/version.GitCommit=module-$v" ;;
    kubeflow) # the Trainer's manager has no version variables; JobSet logs its own at start
      flags+=" -X sigs.k8s.io/jobset/pkg/version.GitVersion=$JOBSET_VERSION"
      flags+=" -X sigs.k8s.io/jobset/pkg/version.GitCommit=module-$JOBSET_VERSION" ;;
    minio)
      # pseudo-version v0.0.0-YYYYMMDDhhmmss-<12 hex>
      local ts="${v#v0.0.0-}"; local commit="${ts#*-}"; ts="${ts%%-*}"
      local iso="${ts:0:4}-${ts:4:2}-${ts:6:2}T${ts:8:2}:${ts:10:2}:${ts:12:2}Z"
      flags+=" -X github.com/minio/minio/cmd.Version=$iso"
      flags+=" -X github.com/minio/minio/cmd.ReleaseTag=DEVELOPMENT.${iso//:/-}"
      flags+=" -X github.com/minio/minio/cmd.CommitID=$commit"
      flags+=" -X github.com/minio/minio/cmd.ShortCommitID=$commit"
      flags+=" -X github.com/minio/minio/cmd.CopyrightYear=${ts:0:4}" ;;
  esac
  echo "$flags"
}

packages_for() {
  case "$1" in
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    kubernetes) echo k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl ;;
    kubernetes-oldest) echo k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl ;;
    kwok) echo sigs.k8s.io/kwok/cmd/kwok ;;
    helm) echo helm.sh/helm/v3/cmd/helm ;;
    minio) echo github.com/minio/minio ;;
    kubelet) echo k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy ;;
    containerd) echo github.com/containerd/containerd/v2/cmd/containerd \
      github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
      github.com/containerd/containerd/v2/cmd/ctr ;;
    runc) echo github.com/opencontainers/runc ;;
    cni) echo github.com/containernetworking/plugins/plugins/main/bridge \
      github.com/containernetworking/plugins/plugins/ipam/host-local \
      github.com/containernetworking/plugins/plugins/main/loopback ;;
    buildkit) echo github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl ;;
    coredns) echo ./cmd/coredns ;;
    registry) echo github.com/distribution/distribution/v3/cmd/registry ./cmd/htpasswd ;;
    actionlint) echo github.com/rhysd/actionlint/cmd/actionlint ;;
    kueue) echo sigs.k8s.io/kueue/cmd/kueue ;;
    # One `go build` for both (shared packages compile once); `-o dir/` names JobSet's
    # binary after its module's last element, `jobset`.
    kubeflow) echo github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager sigs.k8s.io/jobset ;;
  esac
}

# Extra `go build` settings: runc applies seccomp profiles through libseccomp (cgo, with
# Debian's libseccomp-dev: hack/host-packages.sh); everything else is static and cgo-free.
build_env_for() {
  case "$1" in
    runc) echo "CGO_ENABLED=1" ;;
    *) echo "CGO_ENABLED=0" ;;
  esac
}
build_tags_for() {
  case "$1" in
    runc) echo "seccomp urfave_cli_no_docs" ;;
    containerd) echo "no_btrfs no_devmapper no_zfs" ;;
    *) echo "" ;;
  esac
}

build_one() {
  local c="$1" v dir moddir tmp start end rc
  v="$(component_version "$c")"
  dir="$(component_dir "$c")"
  moddir="$(component_moddir "$c")"
  [[ -f "$moddir/go.mod" && -f "$moddir/go.sum" ]] || die "$c: $moddir/go.mod or go.sum missing (run hack/update-modules.sh $c)"
  local pin_mod pin_ver
  while read -r pin_mod pin_ver; do
    grep -Eq "^[[:space:]]*(require[[:space:]]+)?$pin_mod[[:space:]]+$pin_ver([[:space:]]|\$)" "$moddir/go.mod" ||
      die "$c: $moddir/go.mod does not require $pin_mod $pin_ver from versions.env (run hack/update-modules.sh $c)"
  done < <(component_pins "$c")

  mkdir -p "$FTO_CACHE"
  if [[ " ${FTO_SHARES_KUBERNETES[*]} " == *" $c "* ]] && ! component_built kubernetes; then
    # Built in another process right now? Wait for it: its compiled packages are most of
    # this build (a build started alone still works, it only compiles more).
    exec 8>"$FTO_CACHE/.build-kubernetes.lock"
    flock 8
    exec 8>&-
  fi
  exec 9>"$FTO_CACHE/.build-$c.lock"
  flock 9
  if [[ "${FTO_REBUILD:-0}" != 1 ]] && component_built "$c"; then
    log "$c $v: present in $dir/bin, skipped"
    exec 9>&-
    return 0
  fi

  tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/bin"
  # runc links Debian's libseccomp (cgo): its headers come from libseccomp-dev.
  [[ "$c" != runc ]] || "$HACK_DIR/host-packages.sh" || die "runc: Debian packages missing"
  local pkgs ldflags out
  pkgs="$(packages_for "$c")"
  ldflags="$(ldflags_for "$c")"
  if [[ "$c" == etcd ]]; then out="$tmp/bin/etcd"; else out="$tmp/bin/"; fi
  local tags env
  tags="$(build_tags_for "$c")"
  env="$(build_env_for "$c")"
  log "$c $v: building $(component_binaries "$c") (log: $tmp/build.log)"
  start=$(date +%s)
  local timer=()
  [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -f 'maxrss_kb=%M elapsed_s=%e cpu_user_s=%U cpu_sys_s=%S' -o "$tmp/time.txt")
  set +e
  # shellcheck disable=SC2086  # $pkgs is a list of package paths
  (cd "$moddir" && go mod download && env "$env" "${timer[@]}" go build -p "$BUILD_P" \
    ${tags:+-tags "$tags"} -ldflags "$ldflags" -o "$out" $pkgs) >"$tmp/build.log" 2>&1
  rc=$?
  set -e
  end=$(date +%s)
  if [[ $rc -ne 0 ]]; then
    tail -n 40 "$tmp/build.log" >&2
    log "$c $v: FAILED after $((end - start))s (log kept in $tmp/build.log)"
    exec 9>&-
    return 1
  fi
  # Kueue's CRDs and webhook configurations come with its binary, from the same module.
  if [[ "$c" == kueue ]]; then
    local src
    src="$(cd "$moddir" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
    mkdir -p "$tmp/config"
    cp "$src"/config/components/crd/bases/*.yaml "$src/config/components/webhook/manifests.yaml" "$tmp/config/"
    chmod -R u+w "$tmp/config"
  fi
  # Kubeflow Trainer's and JobSet's likewise (testkit/fttestkit/kubeflow.py, the benchmark):
  # config/{trainer,jobset}/ with crds/, webhooks.yaml, their shipped manager Configuration,
  # and the Trainer's torch runtime that the benchmark's runtime is made from.
  if [[ "$c" == kubeflow ]]; then
    local trainer jobset
    trainer="$(cd "$moddir" && go list -m -f '{{.Dir}}' github.com/kubeflow/trainer/v2)"
    jobset="$(cd "$moddir" && go list -m -f '{{.Dir}}' sigs.k8s.io/jobset)"
    mkdir -p "$tmp/config/trainer/crds" "$tmp/config/jobset/crds"
    cp "$trainer"/manifests/base/crds/trainer.kubeflow.org_*.yaml "$tmp/config/trainer/crds/"
    cp "$trainer/manifests/base/webhook/manifests.yaml" "$tmp/config/trainer/webhooks.yaml"
    cp "$trainer/manifests/base/manager/controller_manager_config.yaml" "$tmp/config/trainer/configuration.yaml"
    cp "$trainer/manifests/base/runtimes/torch_distributed.yaml" "$tmp/config/trainer/"
    cp "$jobset"/config/components/crd/bases/*.yaml "$tmp/config/jobset/crds/"
    cp "$jobset/config/components/webhook/manifests.yaml" "$tmp/config/jobset/webhooks.yaml"
    cp "$jobset/config/components/manager/controller_manager_config.yaml" "$tmp/config/jobset/configuration.yaml"
    chmod -R u+w "$tmp/config"
  fi
  {
    echo "component=$c"
    echo "version=$v"
    echo "go=$(go env GOVERSION)"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$((end - start))"
    echo "go_build_p=$BUILD_P"
    echo "nproc=$(cpus)"
    [[ -f "$tmp/time.txt" ]] && tail -n 1 "$tmp/time.txt"
    echo "go_sum_sha256=$(sha256sum "$moddir/go.sum" | cut -d' ' -f1)"
    echo "ldflags=$ldflags"
    echo "goflags=$GOFLAGS"
  } >"$tmp/build-info.txt"
  rm -f "$tmp/time.txt"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  exec 9>&-
  local rss=""
  rss="$(sed -n 's/.*maxrss_kb=\([0-9]*\).*/\1/p' "$dir/build-info.txt")"
  log "$c $v: built in $((end - start))s${rss:+ (largest process peak RSS $((rss / 1024)) MiB)} -> $dir/bin"
}

main() {
  local comps=() c failed=() t0
  [[ $# -gt 0 ]] || set -- "${FTO_COMPONENTS[@]}"
  # Groups expand in place and may be mixed with components: `control-plane platform`.
  for c in "$@"; do
    case "$c" in
      control-plane) comps+=("${FTO_CONTROL_PLANE[@]}") ;;
      node) comps+=("${FTO_NODE_COMPONENTS[@]}") ;;
      platform) comps+=("${FTO_PLATFORM[@]}") ;;
      lint) comps+=("${FTO_LINT[@]}") ;;
      oldest) comps+=("${FTO_OLDEST[@]}") ;;
      *) comps+=("$c") ;;
    esac
  done
  for c in "${comps[@]}"; do component_version "$c" >/dev/null || exit 2; done
  t0=$(date +%s)
  # One at a time: on a 2-core machine parallel component builds only fight over the CPUs
  # (go build already compiles packages in parallel) and add to peak memory.
  for c in "${comps[@]}"; do
    build_one "$c" || failed+=("$c")
  done
  log "total $(($(date +%s) - t0))s for: ${comps[*]}"
  if [[ ${#failed[@]} -gt 0 ]]; then
    log "FAILED: ${failed[*]}"
    exit 1
  fi
}

main "$@"
