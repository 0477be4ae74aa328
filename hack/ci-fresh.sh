#!/usr/bin/env bash
# What CI meets on a machine it has never seen, on this one: a fresh clone of HEAD with
# ../shared beside it, run with an empty HOME, so every cache a new machine lacks is empty:
# the Go tools and images (~/.cache/finetune-operator), Go's module and build caches
# (~/go/pkg/mod, ~/.cache/go-build), uv's and pip's (~/.cache/uv, ~/.cache/pip) and the
# pinned uv itself. What stays is what a new machine of this kind has before the session
# starts: Go, Python (pyenv's, through PYENV_ROOT), git, and the Debian packages already
# installed (hack/host-packages.sh installs the rest; `apt-get remove` them first to see that
# too).
#
# Usage: hack/ci-fresh.sh [--dir DIR] [--keep] [-- COMMAND...]
#   --dir DIR   where the clone and the empty HOME go (default: a new folder under /var/tmp);
#               in a DIR kept from an earlier run the clone is new but HOME is kept: its
#               caches are then warm, which is how to measure the cached run on this machine
#   --keep      keep DIR afterwards (default: removed when COMMAND succeeded; the caches
#               hold ~15 GB)
#   COMMAND     what to run in the clone (default: bash .ci/run, as CI does)
# Prints the clone's commit, then COMMAND's output (also in DIR/ci.log), then the wall time.
# Stop any local cluster first (make cluster-down): the real node is the machine's, and a
# second cluster cannot start it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

DIR="" KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --) shift; break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "hack/ci-fresh.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || set -- bash .ci/run
[[ -d "$REPO/../shared" ]] || { echo "hack/ci-fresh.sh: $REPO/../shared is missing (CI has it beside the clone)" >&2; exit 2; }
if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
  echo "hack/ci-fresh.sh: note: uncommitted changes are not in the clone (it is HEAD, as CI's is)" >&2
fi

if [[ -z "$DIR" ]]; then DIR="$(mktemp -d /var/tmp/fto-ci-fresh.XXXXXX)"; fi
mkdir -p "$DIR/home"
DIR="$(cd "$DIR" && pwd)"
# A run's new HOME fills to ~35 GB (Go's module cache 4.5, its build cache 7.8, uv's 6.6, the
# node's containerd and the Go tools 16; 2026-11-28), beside whatever this machine's own HOME
# holds: with 43 GB free, the images ran out of disk 32 minutes in. Refuse rather than fail late.
need_gb="${FTO_CI_FRESH_MIN_GB:-45}"
free_gb=$(($(df --output=avail -k "$DIR" | tail -1) / 1024 / 1024))
if ((free_gb < need_gb)); then
  echo "hack/ci-fresh.sh: only ${free_gb} GB free under $DIR; a run needs ~${need_gb} GB (FTO_CI_FRESH_MIN_GB to change)" >&2
  rmdir "$DIR/home" "$DIR" 2>/dev/null || true # only what this call made and left empty
  exit 2
fi
# Always a new clone (CI's is), even in a kept DIR: only HOME's caches carry over.
rm -rf "$DIR/main"
git clone --quiet "$REPO" "$DIR/main"
ln -sfn "$(cd "$REPO/../shared" && pwd)" "$DIR/shared"
[[ -f "$HOME/.gitconfig" && ! -f "$DIR/home/.gitconfig" ]] && cp "$HOME/.gitconfig" "$DIR/home/"

# pyenv's shims find their Pythons through PYENV_ROOT (default ~/.pyenv, i.e. the old HOME).
pyenv_root=""
command -v pyenv >/dev/null 2>&1 && pyenv_root="$(pyenv root)"

echo "hack/ci-fresh.sh: $(git -C "$DIR/main" log -1 --format='%h %s' | cut -c1-100)"
echo "hack/ci-fresh.sh: clone $DIR/main, HOME $DIR/home, running: $*"
start=$(date +%s)
set +e
(
  cd "$DIR/main"
  # Nothing of this machine's caches or cluster may leak in through the environment.
  unset GOCACHE GOMODCACHE GOPATH GOFLAGS XDG_CACHE_HOME UV_CACHE_DIR PIP_CACHE_DIR \
    FTO_CACHE FTO_STATE KUBECONFIG VIRTUAL_ENV
  export HOME="$DIR/home" CI=true
  [[ -z "$pyenv_root" ]] || export PYENV_ROOT="$pyenv_root"
  "$@"
) 2>&1 | tee "$DIR/ci.log"
rc=${PIPESTATUS[0]}
set -e
took=$(($(date +%s) - start))
echo "hack/ci-fresh.sh: exit $rc after ${took}s ($((took / 60)) min $((took % 60)) s); log $DIR/ci.log"
if [[ $rc == 0 && $KEEP == 0 ]] && ! findmnt -rn -o TARGET | grep -q "^$DIR/"; then
  rm -rf "$DIR"
else
  echo "hack/ci-fresh.sh: kept $DIR (remove it when done: it holds the run's caches)"
fi
exit "$rc"
