#!/usr/bin/env bash
# The release's chart package: this tree's chart with version and appVersion VERSION and its
# default images the released ones pinned by digest, packed so that one commit always gives
# the same bytes (sorted, owner 0, every file time SOURCE_DATE_EPOCH, gzip without a name or
# time stamp; the file's own time too, which `helm push` records as the chart's creation).
# Used by hack/release.sh (`make release`) and .github/workflows/release.yaml.
#
# Usage: hack/package-chart.sh VERSION REGISTRY OPERATOR_DIGEST TRAINER_DIGEST OUT_DIR
#   prints the package's path. HELM: the helm binary (default: the pinned build, else PATH's).
#   FTO_CHART_SOURCE: the checkout whose chart is packed (default: this one).
set -euo pipefail
[[ $# -eq 5 ]] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
VERSION="$1" REGISTRY="$2" OPERATOR_DIGEST="$3" TRAINER_DIGEST="$4" OUT="$5"
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${FTO_CHART_SOURCE:-$HACK_DIR/..}" && pwd)"
if [[ -z "${HELM:-}" ]]; then
  HELM="$("$HACK_DIR/bin-path.sh" helm 2>/dev/null || true)"
  [[ -x "$HELM" ]] || HELM="$(command -v helm)"
fi
for digest in "$OPERATOR_DIGEST" "$TRAINER_DIGEST"; do
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "not a sha256 digest: $digest" >&2; exit 2; }
done
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct)}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp -r "$REPO/helm/finetune-operator" "$WORK/finetune-operator"
python3 - "$WORK/finetune-operator" "$VERSION" "$REGISTRY" "$OPERATOR_DIGEST" \
  "$REGISTRY/trainer@$TRAINER_DIGEST" <<'PY'
import re, sys
from pathlib import Path
chart, version, registry, operator_digest, trainer = sys.argv[1:]
def sub(path, pattern, value):
    text = Path(path).read_text()
    new, count = re.subn(pattern, value, text, count=1, flags=re.M)
    assert count == 1, (path, pattern)
    Path(path).write_text(new)
sub(f"{chart}/Chart.yaml", r"^version: .*$", f"version: {version}")
sub(f"{chart}/Chart.yaml", r"^appVersion: .*$", f'appVersion: "{version}"')
sub(f"{chart}/values.yaml", r"^  repository: .*$", f"  repository: {registry}/operator")
sub(f"{chart}/values.yaml", r'^  digest: ""$', f'  digest: "{operator_digest}"')
sub(f"{chart}/values.yaml", r"^  defaultImage: .*$", f"  defaultImage: {trainer}")
PY
rendered="$("$HELM" template release "$WORK/finetune-operator")"
grep -q "image: \"$REGISTRY/operator@$OPERATOR_DIGEST\"" <<<"$rendered" || {
  echo "the packaged chart does not run $REGISTRY/operator@$OPERATOR_DIGEST" >&2; exit 1; }
grep -q -- "$REGISTRY/trainer@$TRAINER_DIGEST" <<<"$rendered" || {
  echo "the packaged chart does not default to $REGISTRY/trainer@$TRAINER_DIGEST" >&2; exit 1; }
"$HELM" package "$WORK/finetune-operator" --destination "$WORK/pkg" >/dev/null
mkdir -p "$WORK/unpacked" "$OUT"
tar -xzf "$WORK/pkg/finetune-operator-$VERSION.tgz" -C "$WORK/unpacked"
PACKAGE="$OUT/finetune-operator-$VERSION.tgz"
(cd "$WORK/unpacked" && tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 \
  --numeric-owner --mode='u+rw,go+r,go-w' --format=ustar -cf - finetune-operator) |
  gzip -n -9 >"$PACKAGE"
touch -d "@$SOURCE_DATE_EPOCH" "$PACKAGE"
echo "$PACKAGE"
