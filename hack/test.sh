#!/usr/bin/env bash
# `make test` (and so CI): lint and every test tier, with the slow parts side by side.
#
#   lane "tools"  (background)  hack/build.sh control-plane -> hack/cluster-up.sh (the real
#                               node's network, not the node) -> integration tests on N
#                               workers -> the `serial` tests alone, Kueue's and Kubeflow
#                               Trainer's Go tools building beside them -> the serial
#                               `platform` tests, which run those -> the real node (once the
#                               other lane has built the images) -> the e2e tier
#   lane "checks" (foreground)  make install -> ruff, import layers, mypy, hadolint -> the
#                               node's Go tools -> both images (hack/images.sh) -> unit,
#                               trainer and gpu tiers on N workers -> helm lint + the helm
#                               tier (need helm)
#
# The control plane's Go builds start first, so their module downloads overlap `uv sync` and
# their compiles overlap lint and the tests that need no cluster; the integration tier starts
# the moment they are there. Every tier's tools are built by a step before it, never inside a
# test's time limit. A failing step does not stop the others (CI shows every failure at
# once); the exit status is non-zero if any step failed. Each step's time is printed as it
# ends, and again in a table at the end with the machine's CPU use while it ran.
#
# Environment:
#   FTO_TEST_WORKERS         pytest-xdist workers for the tiers without a cluster (default 2)
#   FTO_INTEGRATION_WORKERS  workers for the integration tier (default 4: its tests mostly
#                            wait on the API server and kwok, so more workers than CPUs pay)
#   FTO_TEST_LOGS            where each lane's log goes (default: a temporary directory)
#   PYTEST_ARGS              extra pytest arguments for every tier (e.g. "-x")
#   FTO_NODE=0               no real node: the e2e tier and the images are left out (they
#                            need root); every other step runs
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib.sh
source hack/lib.sh

CHECK_WORKERS="${FTO_TEST_WORKERS:-2}"
INTEGRATION_WORKERS="${FTO_INTEGRATION_WORKERS:-4}"
LOGS="${FTO_TEST_LOGS:-$(mktemp -d -t fto-test.XXXXXX)}"
mkdir -p "$LOGS"
BIN=.venv/bin
T0=$(date +%s)
# One torch thread per test process: the workers (and the Go compiler) share two cores,
# and oversubscribed torch threads spin instead of working.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Python writes the .pyc of the clone's own modules and of pytest's rewritten test modules
# (the libraries' come from `make install`): with PYTHONDONTWRITEBYTECODE set, as on this
# project's machines, every pytest worker and trainer process compiled them again
# (collecting the unit tiers: 16.4 -> 10.4 CPU-s per process).
unset PYTHONDONTWRITEBYTECODE
read -r -a EXTRA <<<"${PYTEST_ARGS:-}"
PYTEST_COMMON=(-p no:cacheprovider --durations=15 "${EXTRA[@]}")
# This script starts and stops the cluster; the tiers' fixtures must leave it up.
KEEP_CLUSTER="${FTO_KEEP_CLUSTER:-}"
export FTO_KEEP_CLUSTER=1
# The real node: on unless FTO_NODE=0 (hack/node.sh), and then the e2e tier must run.
LEFT_OUT="$(node_left_out_reason "$EUID" "${FTO_NODE:-auto}")"
NODE=1
[[ -n "$LEFT_OUT" ]] && NODE=0
# left_out: says, first and last, what this run does not test and why (never silently).
left_out() {
  [[ -n "$LEFT_OUT" ]] || return 0
  echo "make test: the real node, both images and the e2e tier are LEFT OUT: $LEFT_OUT" >&2
}

# step NAME COMMAND...: runs it, appends "lane|name|start|seconds|rc|log" to the timing file.
# Its output also goes to a file of its own, whose end is printed again at the end of the
# run when it failed: CI's report keeps a run's first and last lines, and a failed step's
# reason in the middle of a 90-minute log was lost (the images, CI 2026-11-28).
step() {
  local name="$1" start rc log
  shift
  start=$(date +%s)
  log="$LOGS/step.$LANE.$(printf '%s' "$name" | tr -c 'a-zA-Z0-9' '-').log"
  : >"$log"
  echo "==> [$LANE] $name ($(($(date +%s) - T0))s after start)"
  # Process substitutions, not a pipe: a daemon the step starts (the cluster's) may keep
  # its output open, and a pipe would wait for it to end.
  "$@" > >(tee -a "$log") 2> >(tee -a "$log" >&2)
  rc=$?
  echo "<== [$LANE] $name: $(($(date +%s) - start))s, exit $rc"
  echo "$LANE|$name|$((start - T0))|$(($(date +%s) - start))|$rc|$log" >>"$LOGS/steps"
  return "$rc"
}

# failed_steps_output: the last lines each failed step printed, in the order they started.
failed_steps_output() {
  sort -t'|' -k3,3n "$LOGS/steps" | while IFS='|' read -r lane name _ _ rc log; do
    [[ $rc == 0 ]] && continue
    echo "========== the end of a failed step's output: [$lane] $name (exit $rc) =========="
    tail -n 40 "$log" | cut -c1-300
  done
}

tools_lane() {
  LANE=tools
  local had_cluster=0
  step "go tools (control plane)" hack/build.sh control-plane || return 1
  # The venv comes from the other lane; its pytest is needed from here on.
  while [[ ! -f "$LOGS/installed" ]]; do
    [[ -f "$LOGS/install-failed" ]] && return 1
    sleep 2
  done
  hack/cluster-up.sh status >/dev/null 2>&1 && had_cluster=1
  # Twice the default GPU nodes: four workers' jobs share the pools (a cluster that was
  # already up is reused as it is).
  # FTO_NODE=later: the API server and MinIO listen on the node's bridge from the start;
  # the node itself joins before the e2e tier.
  local node_mode=0
  [[ $NODE == 1 ]] && node_mode=later
  export FTO_A100_NODES="${FTO_A100_NODES:-8}" FTO_H100_NODES="${FTO_H100_NODES:-4}"
  export FTO_NODE=$node_mode # for the tiers' own cluster-up calls too
  step "cluster up" hack/cluster-up.sh >/dev/null || return 1
  step "integration (${INTEGRATION_WORKERS} workers)" "$BIN/pytest" tests/integration \
    -m "not serial" -n "$INTEGRATION_WORKERS" --dist loadfile "${PYTEST_COMMON[@]}"
  local rc=$?
  # Only the serial tier's `platform` tests run Kueue and Kubeflow Trainer (and `make tools`,
  # which wants every tool). Their Go tools build in the background while its other tests
  # run: those mostly wait on the API server, kwok and the operators, and built before them
  # the tools held this lane, the critical path, ~300 s on a new machine. `nice` 5: the
  # build takes the CPU those tests leave, ahead of the checks lane (10). The node's tools
  # come from the other lane (its images need them) unless this one gets there first: the
  # build locks make one wait for the other. No test waits on a build inside its time limit.
  (
    renice -n 5 -p "$BASHPID" >/dev/null 2>&1
    step "go tools (platform)" hack/build.sh platform
  ) &
  local platform_build=$!
  step "integration, serial" "$BIN/pytest" tests/integration -m "serial and not platform" \
    "${PYTEST_COMMON[@]}"
  rc=$((rc | $?))
  wait "$platform_build" || rc=1
  if [[ $NODE == 1 ]]; then
    step "go tools (real node)" hack/build.sh node || rc=1
  fi
  step "integration, serial (platform)" "$BIN/pytest" tests/integration \
    -m "serial and platform" "${PYTEST_COMMON[@]}"
  rc=$((rc | $?))
  if [[ $NODE == 1 ]]; then
    # The images come from the other lane (hack/images.sh would build them here otherwise).
    while [[ ! -f "$LOGS/images-done" && ! -f "$LOGS/install-failed" ]]; do sleep 2; done
    export FTO_NODE=1
    if step "real node up" hack/cluster-up.sh >/dev/null; then
      FTO_E2E_REQUIRED=1 step "e2e" "$BIN/pytest" tests/e2e "${PYTEST_COMMON[@]}"
      rc=$((rc | $?))
    else
      rc=1
    fi
  fi
  if [[ $had_cluster == 0 && -z "$KEEP_CLUSTER" ]]; then
    # The run's cluster goes with it: its etcd holds what the tests left (a namespace still
    # terminating, its FineTuneJobs "Running"), which the next cluster-up would bring back.
    # The components' logs stay with the run's.
    cp -r "$FTO_STATE/logs" "$LOGS/cluster-logs" 2>/dev/null || true
    step "cluster down" hack/cluster-down.sh --purge >/dev/null || rc=1
  fi
  return "$rc"
}

checks_lane() {
  LANE=checks
  local rc=0
  if step install make --no-print-directory install; then
    touch "$LOGS/installed"
  else
    touch "$LOGS/install-failed"
    return 1
  fi
  step "ruff" bash -c "$BIN/ruff check . && $BIN/ruff format --check ." || rc=1
  step "import layers" "$BIN/lint-imports" --no-cache || rc=1
  # mypy's cache lives outside the clone, as the Go tools do: a fresh clone on the same
  # machine (CI's) re-checks only what changed (mypy compares a file's hash when its path
  # or mtime differ, the installed libraries' included) instead of torch's and
  # transformers' thousands of modules (190-966 s from no cache on the 2-core machines).
  # Keyed by mypy's version, whose cache format it is, not by the lock: a new dependency
  # would throw the whole cache away for one changed package.
  mypy_version="$("$BIN/mypy" --version | cut -d' ' -f2)"
  MYPY_CACHE_DIR="${MYPY_CACHE_DIR:-$FTO_CACHE/mypy-$mypy_version}" \
    step "mypy" "$BIN/mypy" || rc=1
  step "hadolint" make --no-print-directory lint-docker || rc=1
  step "actionlint" make --no-print-directory lint-workflows || rc=1
  # The node's tools and both images, before the unit tiers: the e2e tier (the last and
  # longest step of the other lane) waits on the images, and built last here they held it
  # back ~6 minutes after the serial tier had ended (CI, 2026-11-28). Whichever lane gets to
  # the node's tools first builds them, the other waits on the build locks.
  if [[ $NODE == 1 ]]; then
    step "go tools (real node)" hack/build.sh node || rc=1
    step "images" make --no-print-directory images DOCKER=false || rc=1
    touch "$LOGS/images-done"
  fi
  step "unit, trainer, gpu (${CHECK_WORKERS} workers)" "$BIN/pytest" tests/unit tests/trainer \
    tests/gpu -n "$CHECK_WORKERS" --dist worksteal "${PYTEST_COMMON[@]}" || rc=1
  # helm: built by the other lane or, if it has not got there yet, here (the build lock
  # makes one wait for the other).
  step "helm lint" bash -c 'hack/build.sh helm 2>/dev/null && \
    "$(hack/bin-path.sh helm)" lint --strict helm/finetune-operator' || rc=1
  step "helm tier" "$BIN/pytest" tests/helm "${PYTEST_COMMON[@]}" || rc=1
  return "$rc"
}

# The machine's CPU use, sampled every 5 s ("seconds busy_ticks all_ticks" from /proc/stat):
# each step's share of the machine in the table at the end says whether the run waited on
# the CPUs or on something else.
sample_cpu() {
  while :; do
    awk -v t="$(($(date +%s) - T0))" '/^cpu /{b=$2+$3+$4+$7+$8; print t, b, b+$5+$6; exit}' /proc/stat
    sleep 5
  done >"$LOGS/cpu"
}
rm -f "$LOGS/steps" "$LOGS/installed" "$LOGS/install-failed" "$LOGS/images-done"
touch "$LOGS/t0"
sample_cpu &
sampler_pid=$!
echo "make test: logs in $LOGS; the tools lane's log is printed when it ends"
left_out
tools_lane >"$LOGS/tools.log" 2>&1 &
tools_pid=$!
# The tools lane is the critical path (Go builds, then the integration tier, whose leases
# and timeouts want a responsive machine): the checks lane takes the CPU it leaves over.
renice -n 10 -p $$ >/dev/null 2>&1 || true
checks_lane
checks_rc=$?
wait "$tools_pid"
tools_rc=$?
echo
echo "================================ tools lane log ================================"
cat "$LOGS/tools.log"
echo
kill "$sampler_pid" 2>/dev/null
# cpu_share FROM TO: the whole machine's CPU use (%, 100 = every core busy) between two
# offsets in seconds, from the samples; "-" when no two samples lie between them.
cpu_share() {
  awk -v a="$1" -v b="$2" '
    NR == 1 || $1 <= a { b0 = $2; t0 = $3 } $1 <= b { b1 = $2; t1 = $3 }
    END { if (t1 > t0) printf "%d", 100 * (b1 - b0) / (t1 - t0); else print "-" }' "$LOGS/cpu"
}
failed_steps_output
echo "================================ step times ===================================="
printf '%-7s %-36s %8s %8s %5s %5s\n' lane step start_s took_s exit cpu%
sort -t'|' -k3,3n "$LOGS/steps" | while IFS='|' read -r lane name start took rc _; do
  printf '%-7s %-36s %8s %8s %5s %5s\n' "$lane" "$name" "$start" "$took" "$rc" \
    "$(cpu_share "$start" "$((start + took))")"
done
end=$(($(date +%s) - T0))
echo "total: ${end}s, the machine's CPUs $(cpu_share 0 "$end")% busy"
# What each Go tool's build took (a new machine builds them all; a cached one none).
for info in "${FTO_CACHE:-$HOME/.cache/finetune-operator}"/*/build-info.txt; do
  [[ -f "$info" && "$info" -nt "$LOGS/t0" ]] || continue
  awk -F= '/^component=/{c=$2} /^build_seconds=/{s=$2} /maxrss_kb/{u=$0; sub(/.*cpu_user_s=/, "", u); sub(/ .*/, "", u)}
    END { printf "go build: %-11s %5ss wall, %6ss user CPU\n", c, s, u }' "$info"
done
left_out
if [[ $checks_rc != 0 || $tools_rc != 0 ]]; then
  echo "make test: FAILED (see the steps with a non-zero exit above)" >&2
  exit 1
fi
