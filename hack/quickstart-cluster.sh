#!/usr/bin/env bash
# `make quickstart-cluster`: the quick start as a real pod. Starts the local cluster with its
# real node (hack/cluster-up.sh), builds both images into it (hack/images.sh), installs the
# operator with the Helm chart (watching the namespace `quickstart`), uploads the tiny model
# and the quick start's data to MinIO, applies examples/local-cluster/quickstart.yaml and
# prints what `kubectl get ftj -w` shows until the job ends. Needs root (the node).
#
#   FTO_QUICKSTART_TIMEOUT   seconds to wait for the job (default 600)
# Afterwards: source ~/.cache/finetune-operator/cluster/env; kubectl -n quickstart get ftj
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO="$(cd "$HACK_DIR/.." && pwd)"
cd "$REPO"
NS=quickstart
RELEASE=finetune-operator
SYSTEM_NS=finetune-system
EXAMPLE=examples/local-cluster/quickstart.yaml
BIN="$REPO/.venv/bin"

[[ $EUID -eq 0 ]] || die "the local cluster's real node needs root (kubelet, containerd)"
FTO_NODE=1 "$HACK_DIR/cluster-up.sh" >/dev/null
# shellcheck disable=SC1091
source "$FTO_STATE/env"
"$HACK_DIR/images.sh" trainer operator >&2

log "installing the CRDs and the operator (Helm release $RELEASE in $SYSTEM_NS, watching $NS)"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
helm upgrade --install "$RELEASE" helm/finetune-operator --namespace "$SYSTEM_NS" \
  --create-namespace --wait --timeout 180s \
  --set image.repository=finetune-operator --set image.tag=dev --set image.pullPolicy=Never \
  --set "watchNamespaces={$NS}" \
  --set operator.defaultImage=finetune-trainer:dev \
  --set operator.defaultS3Endpoint="$FTO_S3_ENDPOINT" \
  --set nodeSelector."finetune\.dev/pool"=local \
  --set "tolerations[0].key=finetune.dev/local-node" --set "tolerations[0].operator=Exists" \
  --set "tolerations[0].effect=NoSchedule" >/dev/null

log "uploading the tiny model and the data to s3://quickstart"
[[ -f .quickstart/tiny-llama/config.json ]] ||
  "$BIN/python" -m fttrainer.tiny --arch llama --output .quickstart/tiny-llama >/dev/null
"$BIN/python" - <<'EOF'
import os
from pathlib import Path

import boto3
from botocore.config import Config

s3 = boto3.client("s3", endpoint_url=os.environ["FTO_S3_ENDPOINT"],
                  region_name=os.environ["AWS_REGION"],
                  config=Config(s3={"addressing_style": "path"}))
try:
    s3.create_bucket(Bucket="quickstart")
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
for path in sorted(Path(".quickstart/tiny-llama").rglob("*")):
    if path.is_file():
        s3.upload_file(str(path), "quickstart", f"models/tiny-llama/{path.relative_to('.quickstart/tiny-llama')}")
s3.upload_file("examples/data/quickstart.jsonl", "quickstart", "data/quickstart.jsonl")
EOF
kubectl -n "$NS" create secret generic quickstart-s3 \
  --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

# A new run each time: the previous quickstart job (and its results) go first.
kubectl -n "$NS" delete finetunejob quickstart --ignore-not-found --wait=true >/dev/null
kubectl -n "$NS" apply -f "$EXAMPLE" >/dev/null
log "applied $EXAMPLE; kubectl -n $NS get ftj -w:"
kubectl -n "$NS" get ftj quickstart -w &
watcher=$!
trap 'kill $watcher 2>/dev/null || true' EXIT
deadline=$((SECONDS + ${FTO_QUICKSTART_TIMEOUT:-600}))
phase=""
while ((SECONDS < deadline)); do
  phase="$(kubectl -n "$NS" get ftj quickstart -o jsonpath='{.status.phase}')"
  [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
  sleep 2
done
sleep 1
kill "$watcher" 2>/dev/null || true
echo
kubectl -n "$NS" get ftj quickstart
case "$phase" in
  Succeeded)
    echo
    echo "the model is at $(kubectl -n "$NS" get ftj quickstart -o jsonpath='{.status.modelUri}')"
    echo "logs:   kubectl -n $NS logs -l finetune.dev/job-name=quickstart"
    echo "env:    source $FTO_STATE/env" ;;
  Failed)
    kubectl -n "$NS" get ftj quickstart -o jsonpath='{.status.message}{"\n"}' >&2
    die "the quickstart job failed" ;;
  *) die "the quickstart job did not finish within ${FTO_QUICKSTART_TIMEOUT:-600}s (phase: ${phase:-none})" ;;
esac
