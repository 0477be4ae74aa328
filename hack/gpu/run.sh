#!/usr/bin/env bash
# One call on a lent GPU machine: install .gpu-kit, run the GPU test tier and the benchmarks,
# print a table last; logs and JSON go to $OUT (the device tool brings them back).
#
#   device run:  bash hack/gpu/run.sh            (carry: .gpu-kit; make gpu-kit first)
#   here (CPU):  OUT=/tmp/gpu-out bash hack/gpu/run.sh   (the tier skips, benches run tiny)
#
# GPU_STEPS selects what runs (default "versions tests attention trainer"); BENCH_ARGS are
# passed to bench/trainer.py, ATTENTION_ARGS to bench/attention.py. BENCH_RUNS, if set, is a
# ';'-separated list of argument strings: the step "trainer" then runs the bench once per
# entry (BENCH_ARGS first in each), writing trainer-N.json, all logs in trainer.log. The step
# "prepare" writes the bench's model and data in the background (--prepare-only) while the
# next steps run (the GPU tier, say); the step "trainer" waits for it. The step "variants" runs
# our side alone once per entry of GPU_VARIANTS (';'-separated; each entry is `default` or
# space-separated PATH=VALUE changes for bench/trainer.py --set), profiling each run.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${OUT:-$REPO/results/gpu}
mkdir -p "$OUT"
STEPS=${GPU_STEPS:-versions tests attention trainer}
# Outside $OUT (which comes back): the 8B model written there once serves every bench run.
BENCH_WORKDIR=${BENCH_WORKDIR:-/tmp/ftbench}
if [[ -z ${PYTHON:-} ]]; then  # the device has no .venv (it does not travel): its python3
  PYTHON=python3
  [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
fi
# Several tests at a time share the GPU (small models); here they are all skipped anyway.
command -v nvidia-smi >/dev/null && PYTEST_ARGS=${PYTEST_ARGS:--n 4 --dist load}
SUMMARY=()
note() { SUMMARY+=("$(printf '%-10s %s' "$1" "$2")"); }

# The kit's wheels are cp312 (the device's Python); elsewhere the virtualenv has it all.
if [[ $("$PYTHON" -c 'import sys; print(sys.version_info[:2] == (3, 12))') == True && -d .gpu-kit ]]
then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu-kit/*.whl > /tmp/install.log 2>&1 \
    || { cat /tmp/install.log; exit 1; }
  export PYTHONPATH=/tmp/site
  note install "$(ls .gpu-kit/*.whl | wc -l) wheels from .gpu-kit"
  # The unsloth side: its pins (transformers <= 5.17, TRL <= 1.15) clash with ours, so it
  # gets a site of its own over the device's transformers, with the kit's PEFT and
  # bitsandbytes; bench/trainer.py gives it this PYTHONPATH (FTBENCH_PYTHONPATH_UNSLOTH).
  if compgen -G ".gpu-kit/unsloth/*.whl" >/dev/null; then
    shared=()
    for name in peft bitsandbytes dill multiprocess pydantic pydantic_core annotated_types \
                typing_inspection; do
      shared+=(.gpu-kit/"$name"-[0-9]*.whl)
    done
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site-unsloth .gpu-kit/unsloth/*.whl "${shared[@]}" \
      > /tmp/install-unsloth.log 2>&1 \
      && export FTBENCH_PYTHONPATH_UNSLOTH=$REPO/testkit:/tmp/site-unsloth UNSLOTH_DISABLE_STATISTICS=1 \
      || tail -5 /tmp/install-unsloth.log
  fi
fi
# The working tree's code wins over the kit's copy of it (edits need no new kit).
export PYTHONPATH=$REPO/testkit:$REPO/trainer-image:$REPO/api${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

for step in $STEPS; do
  started=$SECONDS
  case $step in
    versions)
      { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
        "$PYTHON" - <<'PY'
import importlib.metadata as m, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda",
      torch.version.cuda, "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
for name in ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
             "liger-kernel", "deepspeed", "triton", "pyarrow", "fsspec", "flash-attn"):
    try:
        print(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"{name} -")
PY
        [[ -n ${FTBENCH_PYTHONPATH_UNSLOTH:-} ]] && PYTHONPATH=$FTBENCH_PYTHONPATH_UNSLOTH \
          "$PYTHON" -c 'import importlib.metadata as m
for n in ("unsloth", "unsloth_zoo", "trl", "transformers", "datasets"): print("unsloth env:", n, m.version(n))'
      } > "$OUT/versions.txt" 2>&1
      cat "$OUT/versions.txt"
      note versions "$(head -2 "$OUT/versions.txt" | tr '\n' ' ')" ;;
    tests)
      # GPU_TESTS_TIMEOUT (seconds) caps the tier inside a short lease; 0: no cap.
      # --confcutdir: the tier needs none of the cluster fixtures tests/conftest.py loads (and
      # the device lacks the kubernetes client they import).
      timeout "${GPU_TESTS_TIMEOUT:-0}" "$PYTHON" -m pytest tests/gpu -q -p no:cacheprovider -o addopts="" -ra --durations=10 --confcutdir=tests/gpu \
        ${PYTEST_ARGS:-} > "$OUT/gpu-tests.log" 2>&1
      tail -40 "$OUT/gpu-tests.log"
      note tests "$(tail -1 "$OUT/gpu-tests.log")" ;;
    attention)
      "$PYTHON" bench/attention.py --json "$OUT/attention.json" ${ATTENTION_ARGS:-} \
        > "$OUT/attention.log" 2>&1
      cat "$OUT/attention.log"
      note attention "$(grep -c ' ok$' "$OUT/attention.log") kernels correct; see attention.log" ;;
    prepare)
      "$PYTHON" bench/trainer.py --prepare-only --workdir "$BENCH_WORKDIR" ${BENCH_ARGS:-} \
        > /tmp/prepare.log 2>&1 &
      PREPARING=$!
      note prepare "started in the background" ;;
    trainer)
      if [[ -n ${PREPARING:-} ]]; then
        wait "$PREPARING" || { tail -20 /tmp/prepare.log; note prepare "FAILED"; }
        PREPARING=
      fi
      if [[ -n ${BENCH_RUNS:-} ]]; then IFS=';' read -ra runs <<< "$BENCH_RUNS"; else runs=(""); fi
      for i in "${!runs[@]}"; do
        name=trainer; [[ ${#runs[@]} -gt 1 ]] && name=trainer-$i
        # shellcheck disable=SC2086  # word-split argument strings
        # One log for every entry ($OUT brings back at most 8 files), written as it goes.
        echo "== $name: ${BENCH_ARGS:-} ${runs[$i]}" >> "$OUT/trainer.log"
        "$PYTHON" bench/trainer.py --json "$OUT/$name.json" --workdir "$BENCH_WORKDIR" \
          ${BENCH_ARGS:-} ${runs[$i]} 2>&1 | tee "/tmp/$name.log" >> "$OUT/trainer.log"
        tail -25 "/tmp/$name.log"
        note "$name" "$(grep -E '^(PASS|FAIL)' "/tmp/$name.log" | tr '\n' ';')"
      done ;;
    variants)
      IFS=';' read -ra variants <<< "${GPU_VARIANTS:-default}"
      for variant in "${variants[@]}"; do
        sets=()
        for change in $variant; do [[ $change == default ]] || sets+=(--set "$change"); done
        echo "== variant: $variant" >> "$OUT/variants.log"
        "$PYTHON" bench/trainer.py --sides ours --repeats 1 --workdir "$BENCH_WORKDIR" \
          --profile "$OUT" ${BENCH_ARGS:-} "${sets[@]}" >> "$OUT/variants.log" 2>&1 \
          || echo "FAILED: $variant" >> "$OUT/variants.log"
      done
      grep -E '^(== variant|  ours|FAILED)' "$OUT/variants.log"
      note variants "${#variants[@]} runs of ours; see variants.log and profile.txt" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
  SUMMARY[-1]+=" ($((SECONDS - started)) s)"
done
echo
echo "== hack/gpu/run.sh summary"
printf '%s\n' "${SUMMARY[@]}"
