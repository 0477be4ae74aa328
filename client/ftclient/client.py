"""The Python client: what `finetune submit / status / logs / wait / cancel` do, as calls.

from ftclient import Client
client = Client(namespace="team-a")              # kubeconfig context, client config
job = client.submit("examples/quickstart-cpu.yaml")   # a path, a dict or a FineTuneJob
job.wait(timeout=3600)                            # the final status; JobFailedError
for row in job.metrics(): ...                     # the step and evaluation metrics
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ftapi.v1alpha1 import FineTuneJobStatus

from .config import ClientConfig, load_config
from .errors import ClientError, JobFailedError, NotFoundError, WaitTimeout
from .kube import Kube
from .logs import LogFollower, wait_for
from .status import phase_of
from .store import read_text, s3_client, s3_error
from .submit import Submitted, Submitter
from .validation import Checked, JobSource, check


class Client:
    """One namespace of one cluster, with this machine's S3 access for staging and reading
    what jobs keep (logs, metrics)."""

    def __init__(
        self,
        context: str | None = None,
        namespace: str | None = None,
        *,
        kubeconfig: str | None = None,
        config: ClientConfig | str | Path | None = None,
        staging: str | None = None,
    ) -> None:
        if not isinstance(config, ClientConfig):
            config = load_config(Path(config) if config is not None else None)
        self.config = config
        self.kube = Kube(
            context=context or config.context,
            namespace=namespace or config.namespace,
            kubeconfig=kubeconfig,
        )
        self.staging = staging or config.staging
        self._s3: Any = None

    @property
    def namespace(self) -> str:
        return self.kube.namespace

    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = s3_client(self.config.s3)
        return self._s3

    def close(self) -> None:
        self.kube.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def check(self, job: JobSource, overrides: Sequence[str] = ()) -> Checked:
        """Validate as `finetune validate` does (ValidationError with its output)."""
        return check(job, overrides)

    def submit(
        self,
        job: JobSource,
        *,
        name: str | None = None,
        overrides: Sequence[str] = (),
        dry_run: bool = False,
        checked: Checked | None = None,
        progress: Any = None,
    ) -> Handle:
        """Validate, upload local paths, apply. `job`: a manifest path (any config style), a
        dict, or a FineTuneJob."""
        checked = checked or check(job, overrides)
        submitter = Submitter(self.kube, self.config, staging=self.staging, s3=self.s3)
        submitted = submitter.submit(
            checked.job,
            checked.manifest,
            source=checked.source,
            name=name,
            dry_run=dry_run,
            progress=progress,
        )
        return Handle(self, submitted.name, submitted=submitted)

    def job(self, name: str) -> Handle:
        """A handle on an existing job (NotFoundError when there is none)."""
        self.kube.get(name)
        return Handle(self, name)

    def list(self) -> list[Handle]:
        return [Handle(self, item["metadata"]["name"]) for item in self.kube.list_jobs()]


class Handle:
    """One FineTuneJob. Every method asks the cluster afresh."""

    def __init__(self, client: Client, name: str, *, submitted: Submitted | None = None) -> None:
        self.client = client
        self.name = name
        self.submitted = submitted

    def __repr__(self) -> str:
        return f"Handle({self.name!r}, namespace={self.client.namespace!r})"

    def get(self) -> dict[str, Any]:
        """The FineTuneJob as the API server has it."""
        return self.client.kube.get(self.name)

    def status(self) -> FineTuneJobStatus:
        return FineTuneJobStatus.model_validate(self.get().get("status") or {})

    @property
    def phase(self) -> str:
        return phase_of(self.get())

    def events(self) -> list[Any]:
        return self.client.kube.events(self.name)

    def wait(self, timeout: float | None = None, *, poll: float = 2.0) -> FineTuneJobStatus:
        """The status once the job has ended. Raises JobFailedError (Failed, or Suspended: a
        cancelled job), WaitTimeout, NotFoundError (deleted meanwhile)."""
        try:
            job = wait_for(self.client.kube, self.name, timeout=timeout, poll=poll)
        except TimeoutError:
            raise WaitTimeout(f"FineTuneJob {self.name} did not end within {timeout}s") from None
        if job is None:
            raise NotFoundError(f"FineTuneJob {self.name} was deleted while waiting for it")
        status = FineTuneJobStatus.model_validate(job.get("status") or {})
        if status.phase != "Succeeded":
            raise JobFailedError(self.name, status.phase, status.failure_reason, status.message)
        return status

    def logs(
        self,
        *,
        follow: bool = False,
        attempt: int | None = None,
        rank: int | None = 0,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """The log's lines: the current attempt's (or `attempt`'s), from its pod or, once the
        pod is gone, from what the trainer kept. `rank` None: every rank, each line labelled."""
        if not follow:
            self.client.kube.get(self.name)  # NotFoundError at once
        follower = LogFollower(self.client.kube, self.client.s3)
        for line in follower.lines(self.name, attempt=attempt, rank=rank, follow=follow, stop=stop):
            yield (
                line.text if rank is not None or line.notice else f"[rank {line.rank}] {line.text}"
            )

    def metrics(self) -> list[dict[str, Any]]:
        """The logged metrics as rows (dicts: step, epoch, loss, learning_rate, grad_norm, ...;
        evaluation rows have eval_loss, ...), in step order: the published step and epoch
        metrics once the job has finished, else the newest checkpoint's history."""
        job = self.get()
        output = (job.get("spec") or {}).get("output", {}).get("uri", "")
        status = job.get("status") or {}
        s3 = self.client.s3()
        try:
            steps = read_text(s3, f"{output.rstrip('/')}/step_metrics.json")
            if steps is not None:
                epochs = read_text(s3, f"{output.rstrip('/')}/epoch_metrics.json") or "[]"
                rows = json.loads(steps) + json.loads(epochs)
            else:
                latest = (status.get("checkpoint") or {}).get("latest")
                state = (
                    read_text(s3, f"{latest.rstrip('/')}/trainer_state.json") if latest else None
                )
                rows = json.loads(state).get("log_history", []) if state else []
        except ClientError:
            raise
        except ValueError as exc:
            raise ClientError(
                f"the metrics of {self.name} under {output} are not JSON: {exc}"
            ) from None
        except Exception as exc:
            raise s3_error(f"reading the metrics of {self.name}", exc, s3) from None
        return sorted(rows, key=lambda row: (row.get("step", 0), "eval_loss" in row))

    def cancel(self, *, delete: bool = False) -> None:
        """Suspend the job (its pods stop; its checkpoints stay; resume it by setting
        spec.scheduling.suspend false), or delete it with everything it made but its output."""
        if delete:
            self.client.kube.delete(self.name)
        else:
            self.client.kube.suspend(self.name)
