"""The attempt's Indexed batch/v1 Job: one pod per node, all failing together (the operator
restarts the whole gang), suspended while Kueue has not admitted it."""

from __future__ import annotations

from typing import Any

from ftapi.v1alpha1 import FineTuneJob
from ftoperator.config import Settings

from .naming import (
    KUEUE_QUEUE_LABEL,
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_JOB,
    MANAGED_BY,
    Meta,
    Names,
)
from .pod import build_pod_spec


def build_batch_job(
    job: FineTuneJob, names: Names, settings: Settings, meta: Meta, account: str
) -> dict[str, Any]:
    spec = job.spec
    resources = spec.resources
    nodes = resources.nodes
    scheduling = spec.scheduling
    kueue = {KUEUE_QUEUE_LABEL: scheduling.queue_name} if scheduling.queue_name else {}
    pod_labels = {
        **resources.labels,
        LABEL_JOB: job.name,
        LABEL_ATTEMPT: str(names.attempt),
        LABEL_COMPONENT: "trainer",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(
            names.batch_job, "trainer", labels={LABEL_ATTEMPT: str(names.attempt), **kueue}
        ),
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            # One failed pod fails the attempt: the operator restarts the whole gang.
            "backoffLimit": 0,
            # Kueue admits a queued Job by unsuspending it; suspend stops the pods.
            "suspend": bool(scheduling.suspend or scheduling.queue_name),
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(resources.annotations)},
                "spec": build_pod_spec(job, names, settings, account),
            },
        },
    }
