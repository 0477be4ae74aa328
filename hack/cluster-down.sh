#!/usr/bin/env bash
# Stop everything hack/cluster-up.sh started, by the PIDs it recorded in the state dir.
# Waits for each process to exit (SIGTERM, then SIGKILL after a timeout) and checks that
# none of the cluster's ports is still listening.
#
# Usage: hack/cluster-down.sh [--purge]
#   --purge   also delete the state dir (etcd data, S3 data, certificates, logs)
#   FTO_STATE state dir (default ${FTO_CACHE:-~/.cache/finetune-operator}/cluster)
# shellcheck disable=SC1091  # state files (ports.env, ...) exist only at run time
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE="$FTO_STATE"
PIDS="$STATE/pids"
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


# Reverse start order: clients first, etcd last. All get SIGTERM together per group.
# The real node first (its pods, shims and mounts), its network last.
node=0
if [[ $EUID -eq 0 && "$(cat /run/fto-node/owner 2>/dev/null)" == "$STATE" ]]; then
  node=1
  "$HACK_DIR/cluster-up.sh" node-down || log "stopping the real node failed (see above)"
fi
groups=("kwok kube-scheduler kube-controller-manager" "kube-apiserver" "etcd minio")
for group in "${groups[@]}"; do
  declare -A waiting=()
  for n in $group; do
    if pid="$(pid_of "$n")"; then
      kill -TERM "$pid" 2>/dev/null || true
      waiting[$n]=$pid
      log "$n: SIGTERM sent (pid $pid)"
    fi
    rm -f "$PIDS/$n.pid"
  done
  deadline=$((SECONDS + 30))
  while [[ ${#waiting[@]} -gt 0 ]]; do
    for n in "${!waiting[@]}"; do
      if ! kill -0 "${waiting[$n]}" 2>/dev/null; then
        log "$n: stopped"
        unset "waiting[$n]"
      fi
    done
    [[ ${#waiting[@]} -eq 0 ]] && break
    if ((SECONDS >= deadline)); then
      for n in "${!waiting[@]}"; do
        log "$n: did not stop within 30s, sending SIGKILL"
        kill -KILL "${waiting[$n]}" 2>/dev/null || true
      done
      sleep 1
      break
    fi
    sleep 0.2
  done
  unset waiting
done

# Nothing of ours may still listen.
if [[ -f "$STATE/ports.env" ]]; then
  source "$STATE/ports.env"
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
  "$HACK_DIR/cluster-up.sh" network-down
fi

if [[ $purge == 1 ]]; then
  rm -rf "$STATE"
  log "purged $STATE"
fi
log "cluster stopped"
