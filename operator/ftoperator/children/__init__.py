"""build_children(job, attempt) -> the Kubernetes objects one FineTuneJob attempt needs. Pure.

    children = build_children(job, attempt=0, settings=Settings(default_image="..."))
    children.job          # the Indexed batch/v1 Job running torchrun, one pod per node
    children.all()        # config ConfigMap, FineTuneJobProgress, headless Service
                          # (multi-node jobs), ServiceAccount, Role, RoleBinding (per-job
                          # identity), Job
    children.stages()     # the same, in the order the API server needs them created

Everything a pod needs is decided here, so a unit test can read it without a cluster:
torchrun's arguments, the GPU request, where the pods may run, which Secrets become which
environment variables (values never: only `secretKeyRef`s), and the security context.
The controller (controller.Controller._act) applies what this returns and never edits
it.

A new kind of child gets a module here with its `build_...` function, a field in Children
and its place in Children.stages().
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ftapi.constants import API_VERSION, KIND, TRAINER_ACCOUNT
from ftapi.v1alpha1 import FineTuneJob
from ftoperator.config import Settings

from .access import (
    build_namespace_identity,
    build_network_policy,
    build_role,
    build_role_binding,
    build_service_account,
)
from .batch_job import build_batch_job
from .config_map import CONFIG_KEY, build_config_map, resolved_config
from .naming import (
    KUEUE_QUEUE_LABEL,
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_JOB,
    MANAGED_BY,
    Names,
)
from .pod import RUN_AS_USER, quantity_bytes, shared_memory, shutdown_timeout
from .progress import build_progress
from .rendezvous import build_service

__all__ = [
    "CONFIG_KEY",
    "KUEUE_QUEUE_LABEL",
    "LABEL_ATTEMPT",
    "LABEL_COMPONENT",
    "LABEL_JOB",
    "MANAGED_BY",
    "RUN_AS_USER",
    "Children",
    "Names",
    "build_children",
    "build_namespace_identity",
    "dumps",
    "quantity_bytes",
    "resolved_config",
    "shared_memory",
    "shutdown_timeout",
]


@dataclass
class Children:
    config: dict[str, Any]
    progress: dict[str, Any]
    service: dict[str, Any] | None
    """The rendezvous Service of a multi-node job (rendezvous.py); None for one node."""
    service_account: dict[str, Any] | None
    """None where the job names its own account or uses its namespace's (shared_identity)."""
    role: dict[str, Any] | None
    role_binding: dict[str, Any] | None
    """Role and RoleBinding: None under the namespace's shared identity."""
    job: dict[str, Any]
    shared_identity: bool = False
    """The pods run as the namespace's `finetune-trainer` (access.build_namespace_identity),
    which the operator makes sure of before the first stage."""
    extra: list[dict[str, Any]] = field(default_factory=list)
    """Optional children (the NetworkPolicy), created with the RoleBinding."""

    def stages(self) -> list[list[dict[str, Any]]]:
        """Creation order, objects of one stage being independent of each other. The
        RoleBinding waits for its Role: an operator without the `bind` verb may bind a Role
        only by holding its rules, which the API server checks by reading the Role (a 404
        while it does not exist yet). The Job comes last: what its pods reference exists."""
        first = [self.config, self.progress, self.service, self.service_account, self.role]
        second = [self.role_binding, *self.extra]
        stages = [[c for c in stage if c is not None] for stage in (first, second)]
        return [*(stage for stage in stages if stage), [self.job]]

    def all(self) -> list[dict[str, Any]]:
        return [obj for stage in self.stages() for obj in stage]


def build_children(job: FineTuneJob, *, attempt: int, settings: Settings) -> Children:
    names = Names(job.name, attempt)
    namespace = job.metadata.namespace
    labels = {LABEL_JOB: job.name, "app.kubernetes.io/managed-by": MANAGED_BY}
    owner = _owner_reference(job)

    def meta(name: str, component: str, **extra: Any) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": name,
            "labels": {**labels, LABEL_COMPONENT: component, **extra.pop("labels", {})},
            **extra,
        }
        if namespace:
            metadata["namespace"] = namespace
        if owner:
            metadata["ownerReferences"] = [owner]
        return metadata

    named = job.spec.resources.service_account_name
    # A job naming its own account keeps a per-job Role bound to it: the shared identity's
    # policy narrows only the shared account's writes.
    shared = bool(settings.trainer_policy) and not named
    account = named or (TRAINER_ACCOUNT if shared else names.trainer)
    extra = (
        [build_network_policy(job, meta(names.trainer, "trainer"))]
        if (settings.network_policy)
        else []
    )
    return Children(
        extra=extra,
        config=build_config_map(job, names, meta),
        progress=build_progress(names, meta),
        service=build_service(job, names, meta),
        service_account=None if named or shared else build_service_account(names, meta),
        role=None if shared else build_role(names, meta),
        role_binding=None if shared else build_role_binding(names, meta, account, namespace),
        job=build_batch_job(job, names, settings, meta, account),
        shared_identity=shared,
    )


def _owner_reference(job: FineTuneJob) -> dict[str, Any] | None:
    if not job.metadata.uid:
        return None
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def dumps(children: Children) -> str:
    """Stable text of the children (for diffs in tests and `--dry-run` output)."""
    return json.dumps(children.all(), indent=2, sort_keys=True)
