"""finetune.dev/v1alpha1: the FineTuneJob API."""

from ._base import ApiModel, Rule
from .common import EnvVar, SecretKeyRef, Toleration
from .dataset import Cleaning, Columns, DatasetSpec, DataSource, ResponseMarkers, Split
from .distributed import DeepSpeedSpec, DistributedSpec, FsdpSpec
from .evaluation import Benchmark, EvaluationSpec
from .job import FineTuneJob, FineTuneJobSpec, ObjectMeta
from .method import (
    AdapterSpec,
    LoftQ,
    LoraSpec,
    MethodSpec,
    PrefixSpec,
    PromptTuningSpec,
    QuantizationSpec,
    SpectrumSpec,
)
from .model import ModelSpec
from .output import OutputSpec, PushToHub, S3Spec
from .reporting import LoggingSpec, MlflowSpec, WandbSpec
from .resources import ResourcesSpec
from .scheduling import RunPolicy, SchedulingSpec
from .status import CheckpointStatus, Condition, FineTuneJobStatus, Metrics, Progress
from .trainer import DpoSpec, GrpoSpec, Reward, TrainerSpec
from .training import EarlyStopping, TrainingSpec
from .vision import VisionSpec

__all__ = [
    "AdapterSpec",
    "ApiModel",
    "Benchmark",
    "CheckpointStatus",
    "Cleaning",
    "Columns",
    "Condition",
    "DataSource",
    "DatasetSpec",
    "DeepSpeedSpec",
    "DistributedSpec",
    "DpoSpec",
    "EarlyStopping",
    "EnvVar",
    "EvaluationSpec",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "FsdpSpec",
    "GrpoSpec",
    "LoftQ",
    "LoggingSpec",
    "LoraSpec",
    "MethodSpec",
    "Metrics",
    "MlflowSpec",
    "ModelSpec",
    "ObjectMeta",
    "OutputSpec",
    "PrefixSpec",
    "Progress",
    "PromptTuningSpec",
    "PushToHub",
    "QuantizationSpec",
    "ResourcesSpec",
    "ResponseMarkers",
    "Reward",
    "Rule",
    "RunPolicy",
    "S3Spec",
    "SchedulingSpec",
    "SecretKeyRef",
    "SpectrumSpec",
    "Split",
    "Toleration",
    "TrainerSpec",
    "TrainingSpec",
    "VisionSpec",
    "WandbSpec",
]
