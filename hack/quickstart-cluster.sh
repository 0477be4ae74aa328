#!/usr/bin/env bash
# `make quickstart-cluster`: the quick start as a real pod. Starts the local cluster with its
# real node (hack/cluster-up.sh), builds both images into it (hack/images.sh), installs the
# operator with the Helm chart (watching the namespace `quickstart`), writes the client
# config for this cluster, and runs `finetune submit examples/quickstart-cpu.yaml --follow`:
# the same manifest as `make quickstart`, unchanged; submit uploads its local model and data
# to MinIO and follows the job until it ends. Needs root (the node).
#
#   FTO_QUICKSTART_TIMEOUT   seconds to wait for the job (default 600)
# Afterwards: source ~/.cache/finetune-operator/cluster/env;
#             export FINETUNE_CONFIG=~/.cache/finetune-operator/cluster/quickstart-client.yaml
#             finetune status quickstart; finetune logs quickstart
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO="$(cd "$HACK_DIR/.." && pwd)"
cd "$REPO"
NS=quickstart
RELEASE=finetune-operator
SYSTEM_NS=finetune-system
EXAMPLE=examples/quickstart-cpu.yaml
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

# What `finetune submit` needs to know about this cluster that a portable manifest does not
# say: where to upload local files, the S3 credentials Secret the pods use, the real node's
# pool and taint, and a CPU-sized pod (the client config, docs/client.md).
CLIENT_CONFIG="$FTO_STATE/quickstart-client.yaml"
cat >"$CLIENT_CONFIG" <<EOF
# Written by hack/quickstart-cluster.sh: finetune submit's settings for the local cluster.
namespace: $NS
staging: s3://quickstart/staging
s3: {endpoint: "$FTO_S3_ENDPOINT", region: "$AWS_REGION", forcePathStyle: true}
jobDefaults:
  output:
    s3: {region: "$AWS_REGION", forcePathStyle: true, credentialsSecretRef: {name: quickstart-s3}}
  resources:
    cpu: 800m
    memory: 3Gi
    sharedMemory: 256Mi
    nodeSelector: {finetune.dev/pool: local}
    tolerations: [{key: finetune.dev/local-node, operator: Exists, effect: NoSchedule}]
  logging: {statusIntervalSeconds: 2}
EOF
export FINETUNE_CONFIG="$CLIENT_CONFIG"
"$BIN/python" - <<'EOF'
import os

import boto3
from botocore.config import Config

s3 = boto3.client("s3", endpoint_url=os.environ["FTO_S3_ENDPOINT"],
                  region_name=os.environ["AWS_REGION"],
                  config=Config(s3={"addressing_style": "path"}))
try:
    s3.create_bucket(Bucket="quickstart")
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
EOF
kubectl -n "$NS" create secret generic quickstart-s3 \
  --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
[[ -f .quickstart/tiny-llama/config.json ]] ||
  "$BIN/python" -m fttrainer.tiny --arch llama --output .quickstart/tiny-llama >/dev/null

# A new run each time: the previous quickstart job goes first (its results stay in S3).
kubectl -n "$NS" delete finetunejob quickstart --ignore-not-found --wait=true >/dev/null
log "finetune submit $EXAMPLE --follow   (FINETUNE_CONFIG=$CLIENT_CONFIG)"
code=0
timeout --foreground "${FTO_QUICKSTART_TIMEOUT:-600}" \
  "$BIN/finetune" submit "$EXAMPLE" --follow || code=$?
echo
"$BIN/finetune" status quickstart || true
case "$code" in
  0)
    echo
    echo "next:   source $FTO_STATE/env; export FINETUNE_CONFIG=$CLIENT_CONFIG"
    echo "        finetune logs quickstart        # the training log (kept after the pod is gone)"
    echo "        finetune submit $EXAMPLE --name try-2   # again: nothing is uploaded twice" ;;
  124) die "the quickstart job did not finish within ${FTO_QUICKSTART_TIMEOUT:-600}s" ;;
  *) die "the quickstart job did not succeed (finetune submit exited $code)" ;;
esac
