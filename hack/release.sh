#!/usr/bin/env bash
# `make release VERSION=X.Y.Z REGISTRY=host[:port]/path`: what a platform team installs, pushed
# to a registry.
#
#   REGISTRY/operator:VERSION     the operator image   (operator/Dockerfile)
#   REGISTRY/trainer:VERSION      the trainer image    (trainer-image/Dockerfile)
#   oci://REGISTRY/charts/finetune-operator:VERSION    the chart, version and appVersion VERSION,
#                                 its default images the two above pinned by digest
#
# The images are built from this tree with BuildKit into the node's containerd
# (hack/images.sh, the same build `make images` makes), tagged with the release's names and
# pushed with containerd's client; the chart is packaged with helm, re-packed so that the same
# commit gives the same bytes (file times from SOURCE_DATE_EPOCH, the commit's time), and
# pushed with `helm push`. Prints a summary: each artifact's digest and size.
#
# Environment:
#   VERSION, REGISTRY    required; REGISTRY without a scheme, e.g. registry.internal/ml
#   REGISTRY_AUTH        a Docker config.json holding the registry's credentials (default: the
#                        local cluster's FTO_REGISTRY_AUTH for its registry, else
#                        ${DOCKER_CONFIG:-~/.docker}/config.json)
#   REGISTRY_CA          a CA bundle to trust for the registry (default: the local cluster's
#                        FTO_REGISTRY_CA for its registry, else the system's)
#   FTO_RELEASE_OUT      where the chart package and summary.json go (default: dist/)
#   FTO_RELEASE_SOURCE   the checkout whose operator image and chart are released (default:
#                        this one): an older commit's `git worktree`, as the upgrade test
#                        releases the previous version (tests/e2e/test_upgrade.py)
#   FTO_RELEASE_TRAINER_DIGEST
#                        sha256:... of a trainer image already in REGISTRY/trainer: pinned by
#                        the chart instead of building and pushing one (a release whose trainer
#                        did not change; the trainer image is gigabytes)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO="$(cd "$HACK_DIR/.." && pwd)"

: "${VERSION:?set VERSION, e.g. make release VERSION=0.2.0 REGISTRY=registry.internal/ml}"
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] ||
  die "VERSION must be semantic (X.Y.Z or X.Y.Z-pre): got '$VERSION'"
: "${REGISTRY:?set REGISTRY, e.g. make release VERSION=0.2.0 REGISTRY=registry.internal/ml}"
[[ "$REGISTRY" != *://* && "$REGISTRY" != */ ]] ||
  die "REGISTRY is host[:port][/path], without a scheme or a trailing slash: got '$REGISTRY'"
HOST="${REGISTRY%%/*}"
OUT="${FTO_RELEASE_OUT:-$REPO/dist}"
SRC="$(cd "${FTO_RELEASE_SOURCE:-$REPO}" && pwd)"
git -C "$SRC" rev-parse --verify -q HEAD >/dev/null || die "FTO_RELEASE_SOURCE=$SRC is not a git checkout"
REUSED_TRAINER="${FTO_RELEASE_TRAINER_DIGEST:-}"
[[ -z "$REUSED_TRAINER" || "$REUSED_TRAINER" =~ ^sha256:[0-9a-f]{64}$ ]] ||
  die "FTO_RELEASE_TRAINER_DIGEST must be sha256:<64 hex>: got '$REUSED_TRAINER'"
mkdir -p "$OUT"

# The local cluster's registry: its credentials and CA, unless told otherwise.
if [[ -f "$FTO_STATE/env" ]]; then
  # shellcheck disable=SC1091
  source "$FTO_STATE/env"
fi
if [[ -n "${FTO_REGISTRY:-}" && "$HOST" == "$FTO_REGISTRY" ]]; then
  REGISTRY_AUTH="${REGISTRY_AUTH:-$FTO_REGISTRY_AUTH}"
  REGISTRY_CA="${REGISTRY_CA:-$FTO_REGISTRY_CA}"
fi
REGISTRY_AUTH="${REGISTRY_AUTH:-${DOCKER_CONFIG:-$HOME/.docker}/config.json}"
[[ -f "$REGISTRY_AUTH" ]] || die "no registry credentials: $REGISTRY_AUTH (set REGISTRY_AUTH)"
USER_PASSWORD="$(python3 - "$REGISTRY_AUTH" "$HOST" <<'PY'
import base64, json, sys
auths = json.load(open(sys.argv[1])).get("auths", {})
entry = auths.get(sys.argv[2]) or auths.get("https://" + sys.argv[2]) or {}
if entry.get("auth"):
    print(base64.b64decode(entry["auth"]).decode())
elif entry.get("username"):
    print(f"{entry['username']}:{entry.get('password', '')}")
PY
)"
[[ -n "$USER_PASSWORD" ]] || die "$REGISTRY_AUTH holds no credentials for $HOST"

# What the commit says: the release's time (SOURCE_DATE_EPOCH) and a dirty tree warning.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$SRC" log -1 --format=%ct)}"
if [[ -n "$(git -C "$SRC" status --porcelain --untracked-files=no)" ]]; then
  log "warning: the tree has uncommitted changes; the release holds them"
fi

# 1. The images: the `make images` build of the source (nothing is rebuilt when it is up to
# date), then the same layers under the release's names with the OCI labels that say which
# release and commit they are (the labels make their own image IDs, so a node that ran the
# local builds tells them apart), pushed, and the names removed from the node: what runs the
# release pulls it.
COMMIT="$(git -C "$SRC" rev-parse HEAD)"
OPERATOR_REF="$REGISTRY/operator:$VERSION"
TRAINER_REF="$REGISTRY/trainer:$VERSION"
BUILD=(operator trainer)
[[ -z "$REUSED_TRAINER" ]] || { BUILD=(operator); TRAINER_REF="$REGISTRY/trainer@$REUSED_TRAINER"; }
if [[ "$SRC" == "$REPO" ]]; then
  DEV_TRAINER="${TRAINER_IMAGE:-finetune-trainer:dev}" DEV_OPERATOR="${OPERATOR_IMAGE:-finetune-operator:dev}"
else # another checkout's build must not replace this one's
  DEV_TRAINER="finetune-trainer:src-${COMMIT:0:12}" DEV_OPERATOR="finetune-operator:src-${COMMIT:0:12}"
fi
TRAINER_IMAGE="$DEV_TRAINER" OPERATOR_IMAGE="$DEV_OPERATOR" FTO_IMAGE_SOURCE="$SRC" \
  "$HACK_DIR/images.sh" "${BUILD[@]}" >&2
LABELS="org.opencontainers.image.version=$VERSION org.opencontainers.image.revision=$COMMIT org.opencontainers.image.source=https://github.com/finetune-operator/finetune-operator"
FTO_IMAGE_LABELS="$LABELS" "$HACK_DIR/images.sh" label "$DEV_OPERATOR" "$OPERATOR_REF" >&2
[[ -n "$REUSED_TRAINER" ]] || FTO_IMAGE_LABELS="$LABELS" "$HACK_DIR/images.sh" label "$DEV_TRAINER" "$TRAINER_REF" >&2
# shellcheck disable=SC1091
source "$FTO_STATE/builder.env" # CONTAINERD_ADDR
CTR=(ctr_quiet --address "$CONTAINERD_ADDR" -n k8s.io)
# ctr, without containerd's client-side deprecation notice (cgroup v1) on every call.
ctr_quiet() { "$(fto_bin ctr)" "$@" 2> >(grep -v 'DEPRECATION' >&2); }
HOSTS_DIR="$(mktemp -d)" # 0700: it may hold the registry's credentials (below)
trap 'rm -rf "$HOSTS_DIR"' EXIT
# How ctr gets the credentials without putting them on its command line (where `ps` shows
# them): a registry that asks for Basic auth (Distribution with htpasswd, Harbor, Artifactory,
# Nexus) gets them as a header from hosts.toml, a private file; one that hands out tokens
# (ghcr.io, Docker Hub, ECR) only takes them through ctr's --user, which the release then
# says out loud.
challenge="$(curl -sS -o /dev/null -D - --max-time 10 ${REGISTRY_CA:+--cacert "$REGISTRY_CA"} \
  "https://$HOST/v2/" 2>/dev/null | tr -d '\r' | sed -n 's/^[Ww][Ww][Ww]-[Aa]uthenticate: //p' | head -1)"
CREDENTIALS=()
mkdir -p "$HOSTS_DIR/$HOST"
{
  printf 'server = "https://%s"\n\n[host."https://%s"]\n  capabilities = ["pull", "resolve", "push"]\n' "$HOST" "$HOST"
  [[ -z "${REGISTRY_CA:-}" ]] || printf '  ca = "%s"\n' "$REGISTRY_CA"
  if [[ "$challenge" == [Bb]asic* ]]; then
    printf '  [host."https://%s".header]\n    Authorization = ["Basic %s"]\n' "$HOST" \
      "$(printf '%s' "$USER_PASSWORD" | base64 -w0)"
  fi
} >"$HOSTS_DIR/$HOST/hosts.toml"
if [[ "$challenge" != [Bb]asic* ]]; then
  log "warning: $HOST asks for ${challenge%% *} auth: the password goes to ctr on its command line"
  CREDENTIALS=(--user "$USER_PASSWORD")
fi

declare -A DIGEST SIZE
push_image() { # release-name
  local ref name
  ref="$1"
  name="$(normalize_image "$ref")"
  log "pushing $ref"
  "${CTR[@]}" images push --hosts-dir "$HOSTS_DIR" "${CREDENTIALS[@]}" "$name" >/dev/null
  read -r DIGEST["$ref"] SIZE["$ref"] < <("${CTR[@]}" images ls "name==$name" | awk 'NR==2{print $3, $4 $5}')
  "${CTR[@]}" images rm "$name" >/dev/null
}
# reused_image REF DIGEST: the registry holds the manifest (a Basic-auth registry is asked; a
# token registry's answer needs its token dance, so it is taken on trust, said out loud).
reused_image() {
  local path="${REGISTRY#"$HOST"}" code
  path="${path#/}"
  if [[ "$challenge" != [Bb]asic* ]]; then
    log "warning: $HOST asks for ${challenge%% *} auth: not checked that it holds trainer@$2"
  else
    code="$(printf 'Authorization: Basic %s\n' "$(printf '%s' "$USER_PASSWORD" | base64 -w0)" |
      curl -sS -o /dev/null -w '%{http_code}' --max-time 20 -I -H @- ${REGISTRY_CA:+--cacert "$REGISTRY_CA"} \
        -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json' \
        "https://$HOST/v2/${path:+$path/}trainer/manifests/$2")"
    [[ "$code" == 200 ]] || die "FTO_RELEASE_TRAINER_DIGEST: $HOST answers $code for ${path:+$path/}trainer@$2"
  fi
  DIGEST["$1"]="$2"
  SIZE["$1"]="(reused)"
}
push_image "$OPERATOR_REF"
if [[ -n "$REUSED_TRAINER" ]]; then reused_image "$TRAINER_REF" "$REUSED_TRAINER"; else push_image "$TRAINER_REF"; fi
if [[ "$SRC" != "$REPO" ]]; then # the other checkout's local build is not kept
  for image in "$DEV_OPERATOR" "$DEV_TRAINER"; do
    "${CTR[@]}" images rm "$(normalize_image "$image")" >/dev/null 2>&1 || true
  done
fi

# 2. The chart, pinned to the pushed images by digest (hack/package-chart.sh), pushed.
HELM="$(fto_bin helm)"
CHART_TGZ="$(HELM="$HELM" FTO_CHART_SOURCE="$SRC" "$HACK_DIR/package-chart.sh" "$VERSION" "$REGISTRY" \
  "${DIGEST[$OPERATOR_REF]}" "${DIGEST[$TRAINER_REF]}" "$OUT")"
HELM_PUSH=("$HELM" push "$CHART_TGZ" "oci://$REGISTRY/charts" --registry-config "$REGISTRY_AUTH")
[[ -n "${REGISTRY_CA:-}" ]] && HELM_PUSH+=(--ca-file "$REGISTRY_CA")
pushed="$("${HELM_PUSH[@]}" 2>&1)" || die "helm push failed: $pushed"
CHART_DIGEST="$(sed -n 's/^Digest: //p' <<<"$pushed")"

# 3. The summary (also $OUT/summary.json).
python3 - "$OUT/summary.json" <<PY
import json
summary = {
    "version": "$VERSION",
    "sourceDateEpoch": $SOURCE_DATE_EPOCH,
    "commit": "$COMMIT",
    "images": {
        "$OPERATOR_REF": {"digest": "${DIGEST[$OPERATOR_REF]}", "size": "${SIZE[$OPERATOR_REF]}"},
        "$TRAINER_REF": {"digest": "${DIGEST[$TRAINER_REF]}", "size": "${SIZE[$TRAINER_REF]}"},
    },
    "chart": {"ref": "oci://$REGISTRY/charts/finetune-operator:$VERSION", "digest": "$CHART_DIGEST",
              "package": "$CHART_TGZ"},
}
json.dump(summary, open("$OUT/summary.json", "w"), indent=2)
PY
cat <<EOF

release $VERSION (commit $(git -C "$SRC" rev-parse --short HEAD), SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)
  $OPERATOR_REF  ${DIGEST[$OPERATOR_REF]}  ${SIZE[$OPERATOR_REF]}
  $TRAINER_REF  ${DIGEST[$TRAINER_REF]}  ${SIZE[$TRAINER_REF]}
  oci://$REGISTRY/charts/finetune-operator:$VERSION  $CHART_DIGEST

  helm install finetune-operator oci://$REGISTRY/charts/finetune-operator --version $VERSION \\
    -n finetune-system --create-namespace
EOF
