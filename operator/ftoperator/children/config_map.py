"""The attempt's ConfigMap: the resolved manifest the trainer reads (contract.JOB_CONFIG_DIR)."""

from __future__ import annotations

from typing import Any

import yaml

from ftapi.constants import API_VERSION, KIND
from ftapi.contract import ANNOTATION_CONTRACT, ANNOTATION_WRITTEN_BY, CONTRACT
from ftapi.v1alpha1 import FineTuneJob
from ftoperator.config import OPERATOR

from .naming import Meta, Names

CONFIG_KEY = "job.yaml"
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def build_config_map(job: FineTuneJob, names: Names, meta: Meta) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(names.config, "config"),
        # What an attempt trains cannot be edited under it (deleting it and creating
        # a look-alike is caught by the owner check when the next attempt starts).
        "immutable": True,
        "data": {CONFIG_KEY: resolved_config(job)},
    }


def resolved_config(job: FineTuneJob) -> str:
    """The manifest the trainer runs: the spec fields that differ from their defaults
    (contract.CONTRACT: an older trainer image, pinned by a job, then sees a field newer
    than itself only when the job uses it), nothing secret (the spec holds only Secret
    references), the uid kept so checkpoints are tied to this job, and who wrote it."""
    metadata = {
        key: value
        for key, value in {
            "name": job.metadata.name,
            "namespace": job.metadata.namespace,
            "uid": job.metadata.uid,
            "generation": job.metadata.generation,
            "annotations": {ANNOTATION_CONTRACT: str(CONTRACT), ANNOTATION_WRITTEN_BY: OPERATOR},
        }.items()
        if value is not None
    }
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": job.spec.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude_defaults=True
        ),
    }
    # libyaml's emitter when PyYAML has it (its wheels do): the same YAML for far less CPU,
    # which a burst of new jobs pays once each (docs/results/history.md).
    return yaml.dump(manifest, Dumper=_SAFE_DUMPER, sort_keys=False)
