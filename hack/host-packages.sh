#!/usr/bin/env bash
# Install the Debian packages that the real node and the image builder need from the host
# (DEBIAN_PACKAGES in hack/versions.env: iptables, conntrack, libseccomp-dev, mmdebstrap), at
# exactly the pinned versions. Idempotent: installed packages at those versions are left
# alone and apt is not even asked. Needs root (apt-get) and Debian's package archive.
#
# Usage: hack/host-packages.sh [--check]    --check: only say what is missing (exit 1 if any)
#
# A pinned version that the archive no longer serves (a point release replaced it) fails
# with apt's message: update DEBIAN_PACKAGES to the version `apt-cache policy <name>` shows.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

missing=()
for spec in $DEBIAN_PACKAGES; do
  name="${spec%%=*}" want="${spec#*=}"
  have="$(dpkg-query -W -f '${Version}' "$name" 2>/dev/null || true)"
  [[ "$(dpkg-query -W -f '${Status}' "$name" 2>/dev/null || true)" == "install ok installed" ]] || have=""
  [[ "$have" == "$want" ]] || missing+=("$spec")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ "${1:-}" == --check ]]; then
  echo "missing Debian packages: ${missing[*]} (run hack/host-packages.sh as root)" >&2
  exit 1
fi
command -v apt-get >/dev/null || die "not a Debian system (no apt-get): install ${missing[*]} by hand"
[[ $EUID -eq 0 ]] || die "installing ${missing[*]} needs root (apt-get)"
log "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A lock: two lanes of hack/test.sh may ask at once.
mkdir -p "$FTO_CACHE"
exec 9>"$FTO_CACHE/.apt.lock"
flock 9
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
log "installed: ${missing[*]}"
