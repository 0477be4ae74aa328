"""The headless Service through which torchrun's workers find pod 0 (the rendezvous)."""

from __future__ import annotations

from typing import Any

from ftapi import contract
from ftapi.v1alpha1 import FineTuneJob

from .naming import LABEL_JOB, Meta, Names


def build_service(job: FineTuneJob, names: Names, meta: Meta) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(names.service, "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_JOB: job.name},
            # torchrun's rendezvous resolves pod 0 before any pod is ready.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "torchrun", "port": contract.MASTER_PORT}],
        },
    }
