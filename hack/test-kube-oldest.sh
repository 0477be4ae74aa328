#!/usr/bin/env bash
# The CRD, the API server's rule tables, the chart and an operator smoke on the OLDEST
# Kubernetes minor we support (KUBERNETES_OLDEST_VERSION in versions.env), built from its Go
# module like the pinned one. Managed clusters lag upstream by one to three minors, and the
# CRD's CEL rules use features an older API server may lack: this is where that shows.
#
# Not part of `make test`: the v1.33 control plane shares no compiled package with v1.36, so
# its build alone (about 6 min on 2 cores) would push CI past its time budget. Run it when the
# CRD, its CEL rules or the chart change, and before a release.
#
# Usage: hack/test-kube-oldest.sh            build, start a kwok-only cluster on the oldest
#                                            control plane (own state and ports, beside any
#                                            other cluster), run the tests, tear it down
#        hack/test-kube-oldest.sh --plan     print the version, the state dir and the tests
#   FTO_OLDEST_STATE   state dir (default $FTO_CACHE/cluster-oldest)
#   FTO_KEEP_CLUSTER=1 leave the cluster running afterwards
#   PYTEST_ARGS        extra pytest arguments (e.g. -x, -k ...)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$(cd "$HACK_DIR/.." && pwd)"
STATE_DIR="${FTO_OLDEST_STATE:-$FTO_CACHE/cluster-oldest}"
# What an older API server can break: the CRD's schema and CEL rules (test_api_server), the
# control plane with kwok's GPU pools (test_cluster_smoke), the chart and its RBAC
# (test_helm_install), and the operator's reconcile loop end to end (test_operator). The
# serial tests restart the API server or the operator; they test our code, not the server's.
TESTS=(
  tests/integration/test_api_server.py
  tests/integration/test_cluster_smoke.py
  tests/integration/test_helm_install.py
  tests/integration/test_operator.py
)

if [[ "${1:-}" == --plan ]]; then
  echo "kubernetes: $KUBERNETES_OLDEST_VERSION (control plane and kubectl; kwok, etcd, helm at their pins)"
  echo "state: $STATE_DIR"
  echo "build: hack/build.sh oldest control-plane"
  printf 'test: %s\n' "${TESTS[@]}"
  exit 0
fi
[[ $# -eq 0 ]] || die "unknown argument: $1 (use --plan, or nothing)"

t0=$SECONDS
"$HACK_DIR/build.sh" oldest control-plane
export FTO_STATE="$STATE_DIR" FTO_NODE=0 FTO_KUBERNETES=oldest
down() {
  [[ "${FTO_KEEP_CLUSTER:-}" == 1 ]] || "$HACK_DIR/cluster-down.sh" --purge >/dev/null 2>&1 || true
}
trap down EXIT
"$HACK_DIR/cluster-up.sh" >/dev/null
log "cluster on Kubernetes $KUBERNETES_OLDEST_VERSION up after $((SECONDS - t0))s"
t1=$SECONDS
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
FTO_KEEP_CLUSTER=1 "$ROOT/.venv/bin/python" -m pytest -q -m "integration and not serial" \
  -p no:cacheprovider ${PYTEST_ARGS:-} "${TESTS[@]/#/$ROOT/}"
log "Kubernetes $KUBERNETES_OLDEST_VERSION: tests passed in $((SECONDS - t1))s (all: $((SECONDS - t0))s)"
