"""A test cluster's way to give a job's pods the trainer's fault hooks
(fttrainer.supervision.faults).

The trainer reads FINETUNE_FAULT_* to make a step NaN, sleep or freeze, on one rank or all:
how the end-to-end tests make a real run diverge, straggle or hang at a chosen step. A
FineTuneJob cannot set them (resources.env refuses FINETUNE_*: the operator's names), and
no production operator should pass them on. So: only an operator started with
FTO_TEST_FAULTS=true (an environment variable, not a flag, and not in the Helm chart)
copies a job's `finetune.dev/test-faults` annotation, a JSON object of FINETUNE_FAULT_*
names to values, into the environment of its trainer containers:

    metadata:
      annotations:
        finetune.dev/test-faults: '{"FINETUNE_FAULT_RANK": "1", "FINETUNE_FAULT_SLEEP": "40:600"}'

Any other operator leaves the annotation alone, as Kubernetes does with annotations it does
not know. One that copies it refuses a value it cannot read (InvalidTestFaults) rather than
run the job without the faults its test expects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ftapi.v1alpha1 import FineTuneJob

ENV_TEST_FAULTS = "FTO_TEST_FAULTS"
ANNOTATION = "finetune.dev/test-faults"
FAULT_NAME = re.compile(r"FINETUNE_FAULT_[A-Z0-9_]+")


def enabled(environ: Mapping[str, str]) -> bool:
    return environ.get(ENV_TEST_FAULTS, "").strip().lower() == "true"


def read_faults(job: FineTuneJob) -> dict[str, str]:
    """The annotation's variables; ValueError (its message for the job's status) when it is
    not a JSON object of FINETUNE_FAULT_* names to strings. No annotation: none."""
    text = job.metadata.annotations.get(ANNOTATION)
    if text is None:
        return {}
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"annotation {ANNOTATION} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"annotation {ANNOTATION} must be a JSON object of names to strings")
    wrong = sorted(name for name in value if not FAULT_NAME.fullmatch(str(name)))
    if wrong:
        raise ValueError(
            f"annotation {ANNOTATION}: {', '.join(wrong)} not FINETUNE_FAULT_* "
            "(only the trainer's fault hooks can be set this way)"
        )
    strings = sorted(name for name, v in value.items() if not isinstance(v, str))
    if strings:
        raise ValueError(
            f"annotation {ANNOTATION}: the values of {', '.join(strings)} must be strings"
        )
    return dict(value)


def faults_violation(job: FineTuneJob, on: bool) -> tuple[str, str] | None:
    if not on:
        return None
    try:
        read_faults(job)
    except ValueError as error:
        return "InvalidTestFaults", str(error)
    return None


def fault_env(job: FineTuneJob, on: bool) -> list[dict[str, str]]:
    """The trainer container's FINETUNE_FAULT_* entries (none unless `on`)."""
    if not on:
        return []
    return [{"name": name, "value": value} for name, value in sorted(read_faults(job).items())]
