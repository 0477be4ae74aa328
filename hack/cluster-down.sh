#!/usr/bin/env bash
# Stop everything hack/cluster-up.sh started, by the PIDs it recorded in the state dir
# (lib.sh's stop_procs: SIGTERM, then SIGKILL after a timeout; node.sh's node_down for the
# real node) and check that none of the cluster's ports is still listening.
#
# Usage: hack/cluster-down.sh [--purge]
#   --purge   also delete the state dir (etcd data, S3 data, certificates, logs)
#   FTO_STATE state dir (default ${FTO_CACHE:-~/.cache/finetune-operator}/cluster)
# shellcheck disable=SC1091  # state files (ports.env, ...) exist only at run time
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

use_state "$FTO_STATE"
# shellcheck source=node.sh
source "$HACK_DIR/node.sh"
purge=0
for a in "$@"; do
  case "$a" in
    --purge) purge=1 ;;
    -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
    *) die "unknown argument: $a" ;;
  esac
done

if [[ ! -d "$STATE" ]]; then
  log "nothing to stop: $STATE does not exist"
  exit 0
fi


# The real node first (its pods, shims and mounts), its network last; then the control
# plane in reverse start order: clients first, etcd last, each group stopped together.
node=0
if [[ $EUID -eq 0 ]] && owns_node; then
  node=1
  node_down || log "stopping the real node failed (see above)"
fi
stop_procs 30 kwok kube-scheduler kube-controller-manager
stop_procs 30 kube-apiserver
stop_procs 30 etcd minio

# Nothing of ours may still listen.
if [[ -f "$STATE/ports.env" ]]; then
  busy=()
  for p in "${ETCD_PORT:-}" "${ETCD_PEER_PORT:-}" "${APISERVER_PORT:-}" "${KCM_PORT:-}" "${SCHED_PORT:-}" "${S3_PORT:-}" "${S3_CONSOLE_PORT:-}"; do
    [[ -n "$p" ]] || continue
    for _ in $(seq 1 50); do
      ss -Hltn "( sport = :$p )" | grep -q . || break
      sleep 0.1
    done
    ss -Hltn "( sport = :$p )" | grep -q . && busy+=("$p")
  done
  if [[ ${#busy[@]} -gt 0 ]]; then
    ss -Hltnp | grep -E ":($(IFS='|'; echo "${busy[*]}"))\b" >&2 || true
    die "ports still listening: ${busy[*]}"
  fi
fi

if [[ $node == 1 ]]; then
  node_network_down
fi

if [[ $purge == 1 ]]; then
  rm -rf "$STATE"
  log "purged $STATE"
fi
log "cluster stopped"
