"""The FineTuneJob API (finetune.dev/v1alpha1): pydantic models, shared by the operator and
the trainer, from which the CRD is generated. Imports nothing heavier than pydantic."""

from .constants import API_VERSION, GROUP, KIND, PLURAL, VERSION
from .loading import FieldError, InvalidSpecError, load_job, parse_job, read_manifest
from .v1alpha1 import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "FieldError",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "InvalidSpecError",
    "load_job",
    "parse_job",
    "read_manifest",
]
