#!/usr/bin/env bash
# Print the cache bin dirs of the pinned components as a PATH fragment, or use it to
# extend PATH:
#   hack/bin-path.sh                  -> /…/kubernetes-v1.36.3/bin:/…/helm-v3.21.4/bin:…
#   export PATH="$(hack/bin-path.sh):$PATH"
#   source hack/bin-path.sh           # (sourced) prepends them to PATH in the current shell
#   hack/bin-path.sh kubectl          -> absolute path of one binary
# Does not build anything; run hack/build.sh first.
_fto_bin_path() {
  # shellcheck source=lib.sh
  source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
  if [[ $# -gt 0 ]]; then fto_bin "$1"; return; fi
  local c out=""
  for c in "${FTO_COMPONENTS[@]}"; do out+="${out:+:}$(component_bin_dir "$c")"; done
  echo "$out"
}
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  PATH="$(_fto_bin_path):$PATH"
  export PATH
  unset -f _fto_bin_path
else
  set -euo pipefail
  _fto_bin_path "$@"
fi
