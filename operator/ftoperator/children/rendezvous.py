"""Where torchrun's agents meet (the rendezvous on pod 0), and the headless Service through
which the pods of a multi-node job find pod 0.

A single-node job rendezvouses inside its one pod, on the loopback address: it needs no
Service and no DNS, so it makes one create fewer per job (docs/benchmarks.md, "Requests per
job"). `resources` is immutable, so a job never changes between the two.
"""

from __future__ import annotations

from typing import Any

from ftapi import contract
from ftapi.v1alpha1 import FineTuneJob

from .naming import LABEL_JOB, Meta, Names

LOOPBACK = "127.0.0.1"


def across_nodes(job: FineTuneJob) -> bool:
    return job.spec.resources.nodes > 1


def master_addr(job: FineTuneJob, names: Names) -> str:
    """torchrun's --master-addr: pod 0 of the attempt under the Service, or this pod."""
    return names.master_addr if across_nodes(job) else LOOPBACK


def build_service(job: FineTuneJob, names: Names, meta: Meta) -> dict[str, Any] | None:
    if not across_nodes(job):
        return None
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
