{{/*
Names and labels, in the usual Helm shape.
*/}}
{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "finetune-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: finetune-operator
{{- end }}

{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "finetune-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "finetune-operator.leaseName" -}}
{{- default (printf "%s-leader" (include "finetune-operator.fullname" .)) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/*
RBAC rules: the table "RBAC the operator needs" in docs/operator.md, split by where they
apply. No Secrets, no wildcards. tests/helm/test_chart.py asserts these exact verbs x resources.
*/}}

{{/* In every watched namespace (or cluster-wide through the ClusterRole). */}}
{{- define "finetune-operator.namespacedRules" -}}
# Watch FineTuneJobs; delete them after spec.runPolicy.ttlSecondsAfterFinished.
- apiGroups: [finetune.dev]
  resources: [finetunejobs]
  verbs: [get, list, watch, delete]
# Write status.
- apiGroups: [finetune.dev]
  resources: [finetunejobs/status]
  verbs: [get, patch, update]
# Children carry ownerReferences with blockOwnerDeletion; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift) require this to set it.
- apiGroups: [finetune.dev]
  resources: [finetunejobs/finalizers]
  verbs: [update]
# The progress channel: one FineTuneJobProgress per job, created here, read from the watch.
# patch/update only because a Role may grant only what its creator holds, and the trainer's
# Role grants get/patch/update on its own progress object.
- apiGroups: [finetune.dev]
  resources: [finetunejobprogresses]
  verbs: [get, list, watch, create, patch, update]
# One Indexed Job per attempt; suspend/resume; tear down a failed attempt.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete, patch]
# Failure reasons and readiness of the training pods.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Why a queued job waits (spec.scheduling.queueName): Kueue's Workload for its Job, listed
# only while the Job is suspended in a queue. Nothing happens without Kueue installed.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list]
# Each job's resolved-config ConfigMap (immutable), its rendezvous Service, the training pods'
# ServiceAccount, Role and RoleBinding. get: an object that already exists is read to check
# that this job owns it (never adopted otherwise). list/watch: the operator watches the
# metadata of those labelled with their job (the API server filters by label), so that one
# edited or deleted while the attempt runs is put back. No update or delete: no ConfigMap of
# the cluster can be changed.
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [create, get, list, watch]
# patch: a job's own Role and RoleBinding, if edited, are put back (server-side apply; when
# an attempt starts, and when their watch shows the edit); a Role may only grant what the
# operator itself holds.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, get, list, watch, patch]
# Events on FineTuneJobs; list: the Job controller's FailedCreate Events on a Job whose
# pods do not appear (a quota, a missing PriorityClass), read into the job's status.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch, list]
{{- if .Values.operator.networkPolicy }}
# operator.networkPolicy: each job's NetworkPolicy (get, list, watch, patch: as for Roles above).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, get, list, watch, patch]
{{- end }}
{{- end }}

{{/* Cluster-scoped reads, needed in both modes. */}}
{{- define "finetune-operator.clusterRules" -}}
# Node loss: a node turning NotReady fails the pods on it.
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
# kopf's resource discovery notices the CRD being (re)installed.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.operator.sharedTrainerIdentity }}
# At start: whether the trainer policy is there and bound (--trainer-policy); this one only.
- apiGroups: [admissionregistration.k8s.io]
  resources: [validatingadmissionpolicies, validatingadmissionpolicybindings]
  resourceNames: [{{ include "finetune-operator.trainerPolicy" . }}]
  verbs: [get]
{{- end }}
{{- end }}

{{/*
Watch-namespaces mode only: kopf lists and watches namespaces to learn which of the named ones
exist (and when one is created or deleted). Cluster-wide, kopf never reads namespaces.
*/}}
{{- define "finetune-operator.namespaceDiscoveryRules" -}}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}

{{/* The ValidatingAdmissionPolicy (and binding) confining the shared trainer identity. */}}
{{- define "finetune-operator.trainerPolicy" -}}
{{- printf "%s-trainer-progress" (include "finetune-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
