#!/usr/bin/env bash
# Build the trainer and operator images from their Dockerfiles with BuildKit, into the local
# cluster's containerd (namespace k8s.io), where the real node's kubelet runs them with no
# registry in between. `make images` calls it when no Docker engine is reachable.
#
# The Dockerfiles' default bases come from Docker Hub and ghcr.io, which this machine cannot
# reach, so by default (FTO_IMAGE_BASES=local) the bases are made here and passed as build
# arguments:
#   fto.local/debian-python:bookworm-<recipe>   Debian 12 from Debian's archive (mmdebstrap:
#                       python3 3.11, ca-certificates, tini, gcc, libc6-dev), /usr/local/bin/python3
#   fto.local/uv:<version>                      the uv binary `make install` pinned (UV_VERSION)
# and the trainer uses the base's Python (PYTHON=/usr/bin/python3) instead of downloading
# one. Everything in uv.lock still comes from PyPI, by hash. The trainer's virtualenv is an
# image of its own, fto.local/finetune-trainer-deps:<digest of the lock, the workspace's
# pyproject files, the Dockerfile and the build arguments> (its Dockerfile's `deps` stage),
# built when that digest changes; the trainer image is built on it (DEPS_IMAGE). The Debian base trusts this
# machine's extra certificate authorities (/usr/local/share/ca-certificates), so its builds
# reach PyPI through the same TLS proxy as the machine's own pip and uv do. FTO_IMAGE_BASES=public builds
# exactly as `docker build` would (the registries must be reachable).
#
# Usage: hack/images.sh [bases] [trainer] [operator]     (default: all three)
#        hack/images.sh label IMAGE NAME    NAME: IMAGE (in the node's store) with the
#                        FTO_IMAGE_LABELS added: its layers as they are, a config of its own
#                        (hack/release.sh: a release is the tested build, labelled)
#   TRAINER_IMAGE   default finetune-trainer:dev
#   OPERATOR_IMAGE  default finetune-operator:dev
#   FTO_IMAGE_BUILD_ARGS  extra build arguments, e.g. "DEEPSPEED_BUILD_OPS=CPU_ADAM"
#   FTO_IMAGE_LABELS      labels for both images' configs, e.g. "org.opencontainers.image.version=1.0.0"
#                         (hack/release.sh sets the OCI ones)
#   FTO_REBUILD=1   build even when the image's inputs (Dockerfile, context files, build
#                   arguments, bases) are those it was built from
# Prints each image's build time and size. Needs root (containerd, BuildKit) and starts them
# (node.sh's builder_up) when they are not running.
#   FTO_IMAGE_SOURCE  the checkout the images are built from (default: this one; hack/release.sh
#                   sets it to release an older commit's operator, e.g. in tests/e2e/test_upgrade.py)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO="$(cd "${FTO_IMAGE_SOURCE:-$HACK_DIR/..}" && pwd)"

TRAINER_IMAGE="${TRAINER_IMAGE:-finetune-trainer:dev}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-finetune-operator:dev}"
BASES="${FTO_IMAGE_BASES:-local}"
UV_VERSION="$(sed -n 's/^UV_VERSION := //p' "$REPO/Makefile")"
UV_BIN="$FTO_CACHE/uv-$UV_VERSION/bin"
IMAGES_CACHE="$FTO_CACHE/images"
# What the Debian base holds; its hash names the image, so a changed list makes a new one.
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${FTO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_INCLUDE="python3,ca-certificates,tini,gcc,libc6-dev"

# containerd and BuildKit, in a subshell: it holds the cluster state's lock only that long.
(
  use_state "$FTO_STATE"
  # shellcheck source=node.sh
  source "$HACK_DIR/node.sh"
  builder_up
) >&2
# shellcheck disable=SC1091
source "$FTO_STATE/builder.env" # BUILDKIT_ADDR, CONTAINERD_ADDR
BUILDCTL="$(fto_bin buildctl)"
CTR="$(fto_bin ctr)"

# image_id NAME: the ID (manifest digest) of the image NAME in the node's store, or nothing
# when it is missing or incomplete. An image record can outlive its layers (a build or a
# garbage collection cut short: CI, 2026-11-26, where a base "present" had 1 of its 4 blobs
# and every build FROM it failed); such an image is built again, not trusted.
image_id() {
  local name id status
  name="$(normalize_image "$1")"
  read -r _ _ id status _ < <("$CTR" --address "$CONTAINERD_ADDR" -n k8s.io images check "name==$name" 2>/dev/null |
    awk 'NR==2') || true
  if [[ -n "${id:-}" && "$status" != complete ]]; then
    log "$name: incomplete in the node's store ($status): built again"
    return 0
  fi
  echo "${id:-}"
}

image_present() { [[ -n "$(image_id "$1")" ]]; }
remove_image() { "$CTR" --address "$CONTAINERD_ADDR" -n k8s.io images rm "$(normalize_image "$1")" >/dev/null; }
image_size() { # bytes of the unpacked image (what a node's disk holds)
  "$CTR" --address "$CONTAINERD_ADDR" -n k8s.io images ls "name==$1" 2>/dev/null | awk 'NR==2{print $4, $5}'
}


build() { # name context dockerfile-dir dockerfile [build-arg ...]
  local name="$1" ctx="$2" dfdir="$3" df="$4"; shift 4
  local opts=() a t0=$SECONDS
  for a in "$@"; do opts+=(--opt "build-arg:$a"); done
  for a in ${FTO_IMAGE_LABELS:-}; do opts+=(--opt "label:$a"); done
  [[ -z "${BUILD_TARGET:-}" ]] || opts+=(--opt "target=$BUILD_TARGET")
  log "building $name ($dfdir/$df${BUILD_TARGET:+, stage $BUILD_TARGET})"
  # image-resolve-mode=local: a FROM image already in the node's store (our bases) is used
  # as it is; anything else is pulled as usual. Uncompressed layers: the image is unpacked
  # into the same containerd right away, so compressing them would only cost minutes of CPU.
  "$BUILDCTL" --addr "$BUILDKIT_ADDR" build --progress=plain \
    --frontend dockerfile.v0 --local context="$ctx" --local dockerfile="$dfdir" \
    --opt filename="$df" --opt image-resolve-mode=local "${opts[@]}" \
    --output "type=image,name=$(normalize_image "$name"),unpack=true,compression=uncompressed,oci-mediatypes=true"
  log "built $name in $((SECONDS - t0))s ($(image_size "$(normalize_image "$name")"))"
}

# What builds leave behind: the images that the names pointed to before (the CRI plugin
# keeps them under their IDs, sha256:...) and BuildKit's whole cache. The trainer's builder
# stage alone is 7 GB, and BuildKit's cache shares snapshots with the images it exported, so
# no keep-this-much policy frees what a rebuild left; an image whose inputs did not change is
# not rebuilt at all instead (up_to_date), so a clean cache costs only real rebuilds.
release_disk() {
  local named ref target
  named=" $("$CTR" --address "$CONTAINERD_ADDR" -n k8s.io images ls 2>/dev/null |
    awk 'NR>1 && $1 !~ /^sha256:/ {printf "%s ", $3}')"
  while read -r ref target; do
    [[ "$named" == *" $target "* ]] || "$CTR" --address "$CONTAINERD_ADDR" -n k8s.io images rm "$ref" >/dev/null 2>&1 || true
  done < <("$CTR" --address "$CONTAINERD_ADDR" -n k8s.io images ls 2>/dev/null | awk 'NR>1 && $1 ~ /^sha256:/ {print $1, $3}')
  # A prune can fail where BuildKit's cache records leases its containerd no longer has
  # ("lease ... not found": seen after the node's store was deleted and BuildKit's state
  # kept). The images are built by then: it is tried again, and a failure is said, not fatal.
  local try
  for try in 1 2 3; do
    "$BUILDCTL" --addr "$BUILDKIT_ADDR" prune-histories >/dev/null &&
      "$BUILDCTL" --addr "$BUILDKIT_ADDR" prune --all >/dev/null && return 0
    sleep 2
  done
  log "warning: BuildKit's cache could not be pruned (its disk is not freed); the images are built"
}

debian_base() {
  local recipe tag tar ctx
  recipe="$(printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_INCLUDE" "$(cat "$HACK_DIR/images/debian-python.Dockerfile")" \
    "$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null)" | sha256sum | cut -c1-12)"
  tag="fto.local/debian-python:$DEBIAN_SUITE-$recipe"
  DEBIAN_BASE="$tag"
  image_present "$tag" && return 0
  "$HACK_DIR/host-packages.sh"
  tar="$IMAGES_CACHE/debian-$DEBIAN_SUITE-$(printf '%s\n' "$DEBIAN_INCLUDE" | sha256sum | cut -c1-12).tar"
  if [[ ! -f "$tar" ]]; then
    mkdir -p "$IMAGES_CACHE"
    log "mmdebstrap $DEBIAN_SUITE ($DEBIAN_INCLUDE) from $DEBIAN_MIRROR"
    mmdebstrap --quiet --format=tar --variant=minbase --include="$DEBIAN_INCLUDE" --skip=output/dev \
      --aptopt='Acquire::Retries "3"' "$DEBIAN_SUITE" "$tar.tmp" "$DEBIAN_MIRROR"
    mv "$tar.tmp" "$tar"
  fi
  ctx="$IMAGES_CACHE/debian-context"
  rm -rf "$ctx"; mkdir -p "$ctx"
  ln "$tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$tar" "$ctx/rootfs.tar"
  mkdir -p "$ctx/extra-ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/extra-ca/" 2>/dev/null || true
  build "$tag" "$ctx" "$HACK_DIR/images" debian-python.Dockerfile
  rm -rf "$ctx"
}

uv_base() {
  local tag="fto.local/uv:$UV_VERSION" ctx
  UV_BASE="$tag"
  image_present "$tag" && return 0
  [[ -x "$UV_BIN/uv" ]] || make -C "$REPO" install >&2
  ctx="$IMAGES_CACHE/uv-context"
  rm -rf "$ctx"; mkdir -p "$ctx"
  cp "$UV_BIN/uv" "$UV_BIN/uvx" "$ctx/"
  build "$tag" "$ctx" "$HACK_DIR/images" uv.Dockerfile
  rm -rf "$ctx"
}

# inputs_of DOCKERFILE ARG...: a digest of everything a build reads: the Dockerfile, the
# context's files (.dockerignore lets only these in: pyproject.toml, uv.lock, api/,
# operator/, trainer-image/), the build arguments and the base images' IDs.
inputs_of() {
  local dockerfile="$1"; shift
  {
    echo "$dockerfile"; cat "$dockerfile"
    printf '%s\n' "$@"
    (cd "$REPO" && git ls-files -co --exclude-standard -- pyproject.toml uv.lock api operator trainer-image |
      grep -Ev '(__pycache__|\.pyc$|\.egg-info)' | sort | xargs -d '\n' sha256sum)
  } | sha256sum | cut -c1-16
}

# up_to_date NAME INPUTS: the image exists and was built from exactly these inputs.
up_to_date() {
  local id
  id="$(image_id "$1")"
  [[ -n "$id" && "$(cat "$(stamp_file "$1")" 2>/dev/null)" == "$2 $id" ]]
}

stamp_file() { echo "$IMAGES_CACHE/$(normalize_image "$1" | tr '/:' '__').inputs"; }

stamp() { # NAME INPUTS: remember what the image now in the store was built from
  mkdir -p "$IMAGES_CACHE"
  echo "$2 $(image_id "$1")" >"$(stamp_file "$1")"
}

# product NAME DOCKERFILE-DIR ARG...: build unless up to date.
product() {
  local name="$1" dir="$2"; shift 2
  local inputs
  # shellcheck disable=SC2086  # FTO_IMAGE_LABELS is a list of KEY=VALUE words
  inputs="$(inputs_of "$dir/Dockerfile" "$@" ${FTO_IMAGE_LABELS:-})"
  if [[ "${FTO_REBUILD:-0}" != 1 ]] && up_to_date "$name" "$inputs"; then
    log "$name: up to date (inputs $inputs), not rebuilt"
    return 0
  fi
  # The image it replaces is out of date whatever happens: its name goes first, so that its
  # layers (7 GB for the trainer's, as many again unpacked) can be collected while the new
  # one builds. Kept, they once ran a rebuild out of disk on a machine that had room for
  # one trainer image and one build, not two (2026-11-27).
  if image_present "$name"; then
    log "$name: out of date: removing the old image before the build"
    remove_image "$name"
  fi
  BUILT=1 # the cache is released even if the build fails (main's trap)
  build "$name" "$REPO" "$dir" Dockerfile "$@"
  stamp "$name" "$inputs"
}

# deps_image DOCKERFILE-DIR ARG...: the name of an image of the Dockerfile's `deps` stage (the
# runtime base with the locked virtualenv: 7 GB, 6-12 minutes to build and export), built
# when missing. Its tag is a digest of all that stage reads (the Dockerfile, the lock, the
# workspace's pyproject files, the build arguments), so a code change reuses it and builds
# only the layers above it: the step that every CI run of a changed commit paid in full.
# The images of other digests go first: each holds gigabytes the new build needs.
deps_image() {
  local dir="$1"; shift
  local inputs name ref
  # Contents only, not the checkout's path: every fresh clone (CI's) shares the image.
  inputs="$({
    cat "$dir/Dockerfile"
    printf '%s\n' "$@"
    (cd "$REPO" && sha256sum pyproject.toml uv.lock api/pyproject.toml operator/pyproject.toml \
      trainer-image/pyproject.toml)
  } | sha256sum | cut -c1-16)"
  name="fto.local/$(basename "$(normalize_image "$TRAINER_IMAGE")" | cut -d: -f1)-deps:$inputs"
  DEPS_IMAGE="$name"
  [[ "${FTO_REBUILD:-0}" != 1 ]] && image_present "$name" && return 0
  while read -r ref; do
    log "$ref: other inputs: removed before the build"
    remove_image "$ref"
  done < <("$CTR" --address "$CONTAINERD_ADDR" -n k8s.io images ls -q 2>/dev/null |
    grep -F "${name%:*}:" | grep -vxF "$(normalize_image "$name")" || true)
  # What was built on the old one is out of date too (product would remove it next).
  image_present "$TRAINER_IMAGE" && remove_image "$TRAINER_IMAGE"
  BUILT=1
  # No labels: they belong to the product, and would make a release build its own deps.
  FTO_IMAGE_LABELS="" BUILD_TARGET=deps build "$name" "$REPO" "$dir" Dockerfile "$@"
}

BUILT=0

# label IMAGE NAME: NAME is IMAGE with FTO_IMAGE_LABELS, built FROM it (resolved from the
# node's store), so nothing is rebuilt: the same layers, seconds instead of minutes.
label() {
  local from="$1" name="$2" ctx
  image_present "$from" || die "label: $from is not in the node's store (build it first)"
  ctx="$(mktemp -d)"
  printf 'FROM %s\n' "$(normalize_image "$from")" >"$ctx/Dockerfile"
  # The config's times from SOURCE_DATE_EPOCH (the release's commit): labelling the same
  # build twice gives the same image digest.
  build "$name" "$ctx" "$ctx" Dockerfile ${SOURCE_DATE_EPOCH:+"SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"}
  rm -rf "$ctx"
}

main() {
  local targets=("$@") t extra=() base_args=()
  if [[ "${1:-}" == label ]]; then
    [[ $# -eq 3 ]] || die "usage: hack/images.sh label IMAGE NAME"
    label "$2" "$3"
    return 0
  fi
  [[ ${#targets[@]} -gt 0 ]] || targets=(bases trainer operator)
  # shellcheck disable=SC2206  # a list of KEY=VALUE words
  [[ -z "${FTO_IMAGE_BUILD_ARGS:-}" ]] || extra=(${FTO_IMAGE_BUILD_ARGS})
  case "$BASES" in
    local)
      debian_base
      uv_base
      # UV_NO_CACHE: no 14 GB uv cache mount on this machine's disk (trainer/Dockerfile)
      base_args=("UV_IMAGE=$UV_BASE" "UV_NO_CACHE=1") ;;
    public) ;;
    *) die "FTO_IMAGE_BASES must be local or public (got '$BASES')" ;;
  esac
  # What a build left behind is released whether it succeeded or not: a failed build's
  # stages (7 GB for the trainer's builder) would otherwise stay until the next success.
  trap '[[ $BUILT == 1 ]] && release_disk' EXIT
  for t in "${targets[@]}"; do
    # The bases are looked for again before each image (and built again if gone): when a
    # trainer build fills the disk, the kubelet's eviction (nodefs.available < 2Gi) deletes
    # the node's unused images, the bases with them, and the next build found none (seen
    # 2026-11-28: "lookup fto.local: no such host" for the operator's build).
    if [[ "$BASES" == local && "$t" != bases ]]; then debian_base; uv_base; fi
    case "$t" in
      bases) ;;
      trainer)
        local args=("${base_args[@]}")
        [[ "$BASES" == public ]] || args+=("BUILDER_IMAGE=$DEBIAN_BASE" "RUNTIME_IMAGE=$DEBIAN_BASE" "PYTHON=/usr/bin/python3")
        # A source without the deps stage (an older commit's, FTO_IMAGE_SOURCE) builds whole.
        if grep -q '^ARG DEPS_IMAGE=' "$REPO/trainer-image/Dockerfile"; then
          deps_image "$REPO/trainer-image" "${args[@]}" "${extra[@]}"
          args+=("DEPS_IMAGE=$DEPS_IMAGE")
        fi
        product "$TRAINER_IMAGE" "$REPO/trainer-image" "${args[@]}" "${extra[@]}" ;;
      operator)
        local args=("${base_args[@]}")
        [[ "$BASES" == public ]] || args+=("PYTHON_IMAGE=$DEBIAN_BASE")
        product "$OPERATOR_IMAGE" "$REPO/operator" "${args[@]}" "${extra[@]}" ;;
      *) die "unknown image: $t (use: bases trainer operator)" ;;
    esac
  done
}

main "$@"
