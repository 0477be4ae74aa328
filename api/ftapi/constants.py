"""Names that identify the API; imported by the CRD generator, the operator and tests."""

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
CATEGORIES = ("finetune",)
CRD_NAME = f"{PLURAL}.{GROUP}"
# The trainer's progress channel (ftapi.progress): one object per FineTuneJob, owned by it.
PROGRESS_KIND = "FineTuneJobProgress"
PROGRESS_PLURAL = "finetunejobprogresses"
PROGRESS_SINGULAR = "finetunejobprogress"
PROGRESS_CRD_NAME = f"{PROGRESS_PLURAL}.{GROUP}"
# The trainer pods' identity shared by a namespace's jobs (the operator's --trainer-policy):
# a ServiceAccount, Role and RoleBinding of this name, whose only right, patching progress
# objects, the chart's ValidatingAdmissionPolicy narrows to the pod's own job.
TRAINER_ACCOUNT = "finetune-trainer"
# Child Job/Service/pod hostnames embed the job name plus attempt and index suffixes, and a
# Service name must be a DNS-1035 label (max 63), so FineTuneJob names are kept shorter.
MAX_NAME_LENGTH = 42
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

# Environment variables the operator fills from Secret references and the trainer reads.
# Tokens travel only this way: never in the spec, the ConfigMap, logs or status.
ENV_HF_TOKEN = "HF_TOKEN"  # model.hfTokenSecretRef (downloads; huggingface_hub reads it)
ENV_HUB_PUSH_TOKEN = "FINETUNE_HUB_PUSH_TOKEN"  # output.pushToHub.tokenSecretRef
# model.hubEndpoint (else the operator's default Hub): huggingface_hub and datasets read it
# once, at import, so it is set before either is imported (operator: the pod's env).
ENV_HUB_ENDPOINT = "HF_ENDPOINT"
# huggingface_hub falls back to a token file ($HF_HOME/token) when HF_TOKEN is unset: pods
# point it at an empty file, so that no HF_HOME, XDG_CACHE_HOME or HOME can make it send
# another file (the ServiceAccount token) as the Hub token.
ENV_HUB_TOKEN_PATH = "HF_TOKEN_PATH"
NO_TOKEN_FILE = "/dev/null"
# OCI registries (output.oci, model.registry): a kubernetes.io/dockerconfigjson Secret's
# .dockerconfigjson, and the PEM CA bundle from a ConfigMap key, one pair per direction.
ENV_OCI_PUSH_SECRET = "FINETUNE_OCI_PUSH_SECRET"
ENV_OCI_PUSH_CA = "FINETUNE_OCI_PUSH_CA"
ENV_OCI_PULL_SECRET = "FINETUNE_OCI_PULL_SECRET"
ENV_OCI_PULL_CA = "FINETUNE_OCI_PULL_CA"
DOCKER_CONFIG_KEY = ".dockerconfigjson"
# output.s3.credentialsSecretRef: keys of that Secret, each set as the variable of its name.
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_SECRET_KEYS = ("AWS_SESSION_TOKEN",)
