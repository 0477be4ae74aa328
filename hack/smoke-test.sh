#!/usr/bin/env bash
# End-to-end check of the hack/cluster-up.sh cluster. Needs a running cluster.
#   1. versions reported by the built binaries
#   2. all fake nodes Ready, GPU pools labelled and tainted
#   3. a Job tolerating the GPU taint and requesting nvidia.com/gpu: 1 lands on a GPU node and completes
#   4. a pod requesting a GPU without the toleration stays Pending (Unschedulable)
#   5. a Job whose pod template carries finetune.dev/kwok-fail=oom fails: OOMKilled / 137, Job Failed
#   6. finetune.dev/kwok-fail=exit:3 gives exit code 3
#   7. finetune.dev/kwok-disrupt=preempt on a running pod: DisruptionTarget + Failed
#   8. deleting a Job removes its pods (garbage collector via ownerReferences)
#   9. an object survives an apiserver restart; a Job still completes afterwards
#  10. the S3 endpoint answers (health + signed ListBuckets via curl --aws-sigv4)
#  11. deleting the namespace removes it (namespace controller)
# Usage: hack/smoke-test.sh [--no-restart]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=/dev/null
source "$FTO_STATE/env"
NS="fto-smoke-$RANDOM"
restart=1
[[ "${1:-}" == --no-restart ]] && restart=0
pass=0
ok() { pass=$((pass + 1)); log "PASS: $*"; }
fail() { log "FAIL: $*"; kubectl get pods -n "$NS" -o wide >&2 || true; exit 1; }
t0=$SECONDS

kubectl version
kube-apiserver --version | grep -q "$KUBERNETES_VERSION" || fail "kube-apiserver --version"
kubectl version -o json | grep -q "\"gitVersion\": \"$KUBERNETES_VERSION\"" || fail "kubectl version"
helm version --short
kwok --version 2>/dev/null | head -1 || true
ok "versions"

kubectl get nodes -o wide -L cloud.google.com/gke-nodepool,nvidia.com/gpu.count
notready="$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -v '=True$' || true)"
[[ -z "$notready" ]] || fail "nodes not Ready: $notready"
[[ "$(kubectl get nodes -l nvidia.com/gpu.present=true -o name | wc -l)" -ge 2 ]] || fail "GPU nodes"
kubectl get nodes -l cloud.google.com/gke-accelerator -o jsonpath='{range .items[*]}{.spec.taints[*].key}={.spec.taints[*].effect}{"\n"}{end}' |
  grep -qv 'nvidia.com/gpu=NoSchedule' && fail "GPU node without taint"
ok "nodes Ready, GPU pools labelled and tainted"

kubectl create namespace "$NS"
trap 'kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true' EXIT
# Pods can only be created once the namespace's "default" ServiceAccount exists; a Job created
# before that gets FailedCreate and the Job controller retries with backoff (seconds to tens of
# seconds). Real clusters have the same race; tests that create namespaces should wait like this.
for _ in $(seq 1 100); do kubectl get serviceaccount default -n "$NS" >/dev/null 2>&1 && break; sleep 0.1; done

job() { # name annotations-yaml-or-empty gpu(0/1) toleration(0/1) backoff
  cat <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: $1, namespace: $NS}
spec:
  backoffLimit: $5
  template:
    metadata:
      annotations: {$2}
    spec:
      restartPolicy: Never
$( [[ $4 == 1 ]] && printf '      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]\n')
      containers:
      - name: trainer
        image: example.invalid/trainer:latest
        resources:
          limits: {cpu: "1", memory: 1Gi$( [[ $3 == 1 ]] && printf ', nvidia.com/gpu: "1"')}
EOF
}

# 3. GPU job completes on a GPU node
job gpu-ok "" 1 1 0 | kubectl apply -f -
kubectl wait -n "$NS" job/gpu-ok --for=condition=Complete --timeout=60s || fail "GPU Job did not complete"
node="$(kubectl get pods -n "$NS" -l job-name=gpu-ok -o jsonpath='{.items[0].spec.nodeName}')"
[[ "$(kubectl get node "$node" -o jsonpath='{.metadata.labels.nvidia\.com/gpu\.present}')" == true ]] || fail "gpu-ok ran on $node"
ok "GPU Job Complete on $node"

# 4. no toleration -> Pending, Unschedulable
kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: gpu-no-toleration, namespace: $NS}
spec:
  containers:
  - name: c
    image: example.invalid/x
    resources: {limits: {nvidia.com/gpu: "1"}}
EOF
kubectl wait -n "$NS" pod/gpu-no-toleration --for=jsonpath='{.status.conditions[?(@.type=="PodScheduled")].reason}'=Unschedulable --timeout=30s ||
  fail "pod without toleration was not reported Unschedulable"
[[ "$(kubectl get pod -n "$NS" gpu-no-toleration -o jsonpath='{.status.phase}')" == Pending ]] || fail "not Pending"
kubectl get pod -n "$NS" gpu-no-toleration -o jsonpath='{.status.conditions[0].message}{"\n"}'
ok "GPU pod without toleration stays Pending/Unschedulable"

# 5./6. failure injection
job oom "finetune.dev/kwok-fail: oom" 1 1 0 | kubectl apply -f -
job exit3 "finetune.dev/kwok-fail: 'exit:3', finetune.dev/kwok-run-duration: 1s" 0 0 0 | kubectl apply -f -
kubectl wait -n "$NS" job/oom --for=condition=Failed --timeout=60s || fail "oom Job did not fail"
term="$(kubectl get pods -n "$NS" -l job-name=oom -o jsonpath='{.items[0].status.phase}/{.items[0].status.containerStatuses[0].state.terminated.reason}/{.items[0].status.containerStatuses[0].state.terminated.exitCode}')"
[[ "$term" == Failed/OOMKilled/137 ]] || fail "oom pod: $term"
ok "kwok-fail=oom -> pod $term, Job Failed ($(kubectl get job -n "$NS" oom -o jsonpath='{.status.conditions[?(@.type=="Failed")].reason}'))"
kubectl wait -n "$NS" job/exit3 --for=condition=Failed --timeout=60s || fail "exit3 Job did not fail"
term="$(kubectl get pods -n "$NS" -l job-name=exit3 -o jsonpath='{.items[0].status.phase}/{.items[0].status.containerStatuses[0].state.terminated.reason}/{.items[0].status.containerStatuses[0].state.terminated.exitCode}')"
[[ "$term" == Failed/Error/3 ]] || fail "exit3 pod: $term"
ok "kwok-fail=exit:3 -> pod $term"

# 7. disruption of a running pod (podFailurePolicy ignores DisruptionTarget -> Job retries, not counted)
kubectl apply -f - <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: preempted, namespace: $NS}
spec:
  backoffLimit: 0
  podFailurePolicy:
    rules:
    - action: Ignore
      onPodConditions: [{type: DisruptionTarget}]
  template:
    metadata:
      annotations: {finetune.dev/kwok-run-duration: 4s}
    spec:
      restartPolicy: Never
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      containers:
      - {name: trainer, image: example.invalid/trainer, resources: {limits: {nvidia.com/gpu: "8"}}}
EOF
kubectl wait -n "$NS" pod -l job-name=preempted --for=jsonpath='{.status.phase}'=Running --timeout=30s || fail "preempted pod not Running"
first="$(kubectl get pods -n "$NS" -l job-name=preempted -o jsonpath='{.items[0].metadata.name}')"
kubectl annotate pod -n "$NS" "$first" finetune.dev/kwok-disrupt=preempt
kubectl wait -n "$NS" "pod/$first" --for=jsonpath='{.status.phase}'=Failed --timeout=30s || fail "disrupted pod not Failed"
cond="$(kubectl get pod -n "$NS" "$first" -o jsonpath='{.status.conditions[?(@.type=="DisruptionTarget")].reason}')"
[[ "$cond" == PreemptionByScheduler ]] || fail "DisruptionTarget reason: $cond"
kubectl wait -n "$NS" job/preempted --for=condition=Complete --timeout=60s || fail "Job did not complete after ignored disruption"
ok "kwok-disrupt=preempt -> DisruptionTarget/$cond, Job retried and Complete"

# 8. garbage collector: deleting a Job deletes its pods
kubectl delete job -n "$NS" gpu-ok --cascade=background
for _ in $(seq 1 60); do
  [[ -z "$(kubectl get pods -n "$NS" -l job-name=gpu-ok -o name)" ]] && break
  sleep 0.5
done
[[ -z "$(kubectl get pods -n "$NS" -l job-name=gpu-ok -o name)" ]] || fail "pods of deleted Job remain"
ok "garbage collector removed the pods of a deleted Job"

# 9. apiserver restart
if [[ $restart == 1 ]]; then
  kubectl create configmap -n "$NS" survivor --from-literal=k=v
  uid="$(kubectl get configmap -n "$NS" survivor -o jsonpath='{.metadata.uid}')"
  "$HACK_DIR/restart-apiserver.sh"
  [[ "$(kubectl get configmap -n "$NS" survivor -o jsonpath='{.metadata.uid}')" == "$uid" ]] || fail "configmap lost"
  ok "ConfigMap survived an apiserver restart"
  # controllers, scheduler and kwok must have reconnected
  job after-restart "" 0 0 0 | kubectl apply -f -
  kubectl wait -n "$NS" job/after-restart --for=condition=Complete --timeout=120s || fail "Job after apiserver restart"
  ok "a Job completes after the apiserver restart (controllers, scheduler, kwok reconnected)"
fi

# 10. S3
curl -fsS -o /dev/null -w 'S3 health: HTTP %{http_code}\n' "$FTO_S3_ENDPOINT/minio/health/ready" || fail "S3 health"
curl -fsS --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$FTO_S3_ENDPOINT/" |
  grep -q ListAllMyBucketsResult || fail "S3 signed ListBuckets"
ok "S3 endpoint answers (health, signed ListBuckets)"

# namespace controller: deleting the namespace removes it and everything in it
trap - EXIT
kubectl delete namespace "$NS" --timeout=60s || fail "namespace $NS not deleted"
ok "namespace deleted (namespace controller)"

log "all $pass checks passed in $((SECONDS - t0))s"
