#!/usr/bin/env bash
# make gpu-kit: the wheels a lent GPU machine lacks, for hack/gpu/run.sh, in .gpu-kit/.
#
# The device has Python 3.12 with torch, transformers, accelerate, tokenizers, safetensors,
# pyarrow, pandas and numpy preinstalled and no network: everything else our trainer and the
# GPU tier import travels as cp312 wheels with the working tree (64 MiB in all). Versions are
# the ones uv.lock pins. bitsandbytes ships one library per CUDA release (129 MB unpacked);
# the kit keeps the CUDA 13 ones the device's torch (cu130) loads, so it fits.
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=${GPU_KIT:-.gpu-kit}
UV=${UV:-$(command -v uv)}
PIP_VERSION=25.3
# What the device lacks (KINDS.md's package list) or has at another version than we pin.
# Not huggingface-hub: our pin (2.x) needs httpx2, and the device's 1.x satisfies transformers.
PACKAGES=(transformers trl peft datasets dill multiprocess bitsandbytes liger-kernel hjson
          pydantic pydantic-core annotated-types typing-inspection fsspec)
KEEP_CUDA=("cuda130" "cuda132")

rm -rf "$KIT" && mkdir -p "$KIT"
pinned() {  # name==version from uv.lock, for the packages above (liger-kernel: not locked)
  "$UV" export --frozen --no-hashes --no-header --no-annotate --all-packages 2>/dev/null \
    | sed -n 's/^\([A-Za-z0-9_.-]*==[^ ;]*\).*/\1/p'
}
LOCKED=$(pinned)
REQUIREMENTS=()
for name in "${PACKAGES[@]}"; do
  line=$(grep -i "^${name}==" <<<"$LOCKED" || true)
  if [[ -z $line ]]; then
    line="$name==$(grep -m1 "^LIGER_KERNEL_VERSION=" hack/gpu/versions.env | cut -d= -f2)"
  fi
  REQUIREMENTS+=("$line")
done
echo "downloading ${REQUIREMENTS[*]}"
"$UV" tool run --quiet --from "pip==$PIP_VERSION" pip download --quiet --no-deps \
  --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$KIT" "${REQUIREMENTS[@]}"

# bitsandbytes: drop the libraries of other CUDA/ROCm/XPU releases (a valid wheel: RECORD
# loses their lines too, so pip installs it without complaint).
.venv/bin/python - "$KIT" "${KEEP_CUDA[@]}" <<'PY'
import re, sys, zipfile
from pathlib import Path
kit, keep = Path(sys.argv[1]), sys.argv[2:]
wheel = next(kit.glob("bitsandbytes-*.whl"))
def wanted(name: str) -> bool:
    match = re.search(r"libbitsandbytes_(\w+)\.so$", name)
    return match is None or match.group(1) in (*keep, "cpu")
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if not wanted(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = ("\n".join(l for l in lines if wanted(l.split(",")[0])) + "\n").encode()
        dst.writestr(item, data)
slim.replace(wheel)
PY

# deepspeed: an sdist whose setup.py imports torch; built here without its C++ ops (they
# are JIT-compiled on first use), so the wheel is pure Python.
DS=$(grep -i "^deepspeed==" <<<"$LOCKED")
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
"$UV" tool run --quiet --from "pip==$PIP_VERSION" pip download --quiet --no-deps \
  --no-binary=:all: -d "$BUILD" "$DS"
DS_BUILD_OPS=0 "$UV" build --quiet --wheel --no-build-isolation --python .venv/bin/python \
  --out-dir "$KIT" "$BUILD"/deepspeed-*.tar.gz

# The unsloth side's own packages (hack/gpu/run.sh installs them into a site directory of their
# own, beside the kit's peft and bitsandbytes). Unsloth's wheel carries its web UI ("studio",
# 82 MB unpacked), which training never imports: dropped, as bitsandbytes' other CUDAs are.
UNSLOTH_PACKAGES=$(grep -m1 "^UNSLOTH_PACKAGES=" hack/gpu/versions.env | cut -d= -f2- | tr -d '"')
mkdir -p "$KIT/unsloth"
# shellcheck disable=SC2086  # one word per package
"$UV" tool run --quiet --from "pip==$PIP_VERSION" pip download --quiet --no-deps \
  --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$KIT/unsloth" $UNSLOTH_PACKAGES
.venv/bin/python - "$KIT/unsloth" <<'PY'
import sys, zipfile
from pathlib import Path
wheel = next(Path(sys.argv[1]).glob("unsloth-*.whl"))
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if item.filename.startswith("studio/"):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = ("\n".join(l for l in lines if not l.startswith("studio/")) + "\n").encode()
        dst.writestr(item, data)
slim.replace(wheel)
PY

# Our packages (pure Python).
for package in api trainer-image; do
  "$UV" build --quiet --wheel --out-dir "$KIT" "$package"
done

ls -l "$KIT"
total=$(du -cb "$KIT"/*.whl "$KIT"/unsloth/*.whl | tail -1 | cut -f1)
echo "gpu kit: $(ls "$KIT"/*.whl "$KIT"/unsloth/*.whl | wc -l) wheels, $((total / 1024 / 1024)) MiB in $KIT"
