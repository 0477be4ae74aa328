"""Every child's name and label, derived from the FineTuneJob's: deterministic, so that an
operator that died halfway finds what it made (and never makes it twice)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MANAGED_BY = "finetune-operator"
LABEL_JOB = "finetune.dev/job-name"
LABEL_ATTEMPT = "finetune.dev/attempt"
LABEL_COMPONENT = "app.kubernetes.io/component"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

Meta = Callable[..., dict[str, Any]]
"""meta(name, component, labels={...}, **more): a child's metadata (labels, namespace,
owner reference), made by build_children for each of its builders."""


@dataclass(frozen=True)
class Names:
    """Every child's name, derived from the FineTuneJob's (<= 42 characters by the CRD)."""

    job: str
    attempt: int

    @property
    def config(self) -> str:
        return f"{self.job}-config"

    @property
    def progress(self) -> str:
        return f"{self.job}-progress"

    @property
    def service(self) -> str:
        return self.job

    @property
    def trainer(self) -> str:
        """ServiceAccount, Role and RoleBinding of the trainer pods."""
        return f"{self.job}-trainer"

    @property
    def batch_job(self) -> str:
        return f"{self.job}-{self.attempt}"

    @property
    def master_addr(self) -> str:
        """Pod 0 of the attempt: Indexed Job hostnames are <job>-<index>, under the
        headless Service's subdomain."""
        return f"{self.batch_job}-0.{self.service}"
