"""Experiment trackers (spec.logging.reportTo): MLflow, Weights & Biases, TensorBoard.

transformers' own callbacks do the logging during training (`report_to`); this module
decides what they see and owns the runs' lifetime:

- `tracker_env` maps spec.logging to the environment variables those callbacks and the
  tracker clients read (pure, unit-tested). Credentials are not in it: MLFLOW_TRACKING_TOKEN
  and WANDB_API_KEY reach the container from Secrets (`LoggingSpec.secret_env`) and the
  clients read them from there; nothing here writes them anywhere.
- `TrackerRuns` opens the MLflow and W&B runs before training and closes them after the
  final metrics are logged. transformers' MLflow callback ends its run when training ends,
  so the test-set evaluation and the scores computed after training would otherwise be lost
  (or, with MLflow, land in a stray run that the next log call opens implicitly).
- `callbacks.TrackerIds` writes the runs' ids into every checkpoint (trackers.json), so an attempt
  that resumes from a checkpoint continues the same MLflow and W&B runs (`read_tracker_ids`)
  instead of starting a new run per restart.

Without `reportTo` nothing here runs and no tracker directory (mlruns/, wandb/, runs/) is
created: transformers 5 defaults `report_to` to "none".
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftapi.redaction import redact
from ftapi.v1alpha1 import FineTuneJobSpec, LoggingSpec

log = logging.getLogger("fttrainer")
TRACKERS_FILE = "trackers.json"  # in each checkpoint folder: the runs it belongs to
TENSORBOARD_DIR = "tensorboard"  # under the run's output directory, published with it
FINAL_PREFIX = "final/"  # TensorBoard tag prefix of the final metrics
REGISTERED_ARTIFACT = "model"  # a local output's final model, logged under the run
OUTPUT_TAG = "finetune.dev/model-uri"  # a registered version: where the job published it


def mlflow_run_name(logging_spec: LoggingSpec, job_name: str) -> str:
    mlflow = logging_spec.mlflow
    if mlflow is None:
        return job_name
    return f"{mlflow.run_name_prefix}{mlflow.run_name or job_name}{mlflow.run_name_suffix}"


def tracker_env(logging_spec: LoggingSpec, *, job_name: str, output_dir: Path) -> dict[str, str]:
    """Environment for the trackers in reportTo, as transformers' integrations and the
    tracker clients read it."""
    env: dict[str, str] = {}
    report_to = logging_spec.report_to
    if "tensorboard" in report_to:
        env["TENSORBOARD_LOGGING_DIR"] = str(output_dir / TENSORBOARD_DIR)
    mlflow = logging_spec.mlflow
    if "mlflow" in report_to and mlflow is not None:
        env["MLFLOW_TRACKING_URI"] = mlflow.tracking_uri
        env["MLFLOW_EXPERIMENT_NAME"] = mlflow.experiment
        if mlflow.tags:
            env["MLFLOW_TAGS"] = json.dumps(mlflow.tags, sort_keys=True)
        # Flattened parameters (lora_r, not one JSON blob); checkpoints go to output.uri.
        env["MLFLOW_FLATTEN_PARAMS"] = "true"
        env["HF_MLFLOW_LOG_ARTIFACTS"] = "false"
    wandb = logging_spec.wandb
    if "wandb" in report_to and wandb is not None:
        env["WANDB_PROJECT"] = wandb.project
        env["WANDB_NAME"] = wandb.run_name or job_name
        env["WANDB_DIR"] = str(output_dir)  # runs go to <output>/wandb/
        if wandb.entity:
            env["WANDB_ENTITY"] = wandb.entity
        if wandb.group:
            env["WANDB_RUN_GROUP"] = wandb.group
        if wandb.tags:
            env["WANDB_TAGS"] = ",".join(wandb.tags)
        if wandb.mode:
            env["WANDB_MODE"] = wandb.mode
        if wandb.base_url:
            env["WANDB_BASE_URL"] = wandb.base_url
        # The model goes to output.uri, not to W&B artifacts; no gradient hooks.
        env["WANDB_LOG_MODEL"] = "false"
        env["WANDB_WATCH"] = "false"
    return env


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """`env` set in os.environ for the block, the previous values restored after it (tests
    run several jobs in one process; a pod runs one, where this changes nothing)."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class TrackerRuns:
    """The tracker runs of one job: opened before training, so every log call of the
    trainer (training, evaluation, the test set after training) lands in them, and closed
    with the final metrics. Rank 0 only; call inside `environment(tracker_env(...))`."""

    def __init__(self, logging_spec: LoggingSpec, *, job_name: str, env: Mapping[str, str]) -> None:
        self.report_to = set(logging_spec.report_to)
        self.logging_spec = logging_spec
        self.job_name = job_name
        self.env = dict(env)
        self.ids: dict[str, str] = {}
        """tracker -> run id, for the checkpoints (TrackerIds)."""

    def start(self, resume: Mapping[str, str] | None = None) -> dict[str, str]:
        """Open the runs, or reopen those of `resume` (the ids a checkpoint recorded).

        Returns the environment transformers' callbacks need on top of `tracker_env`: a
        reopened MLflow run already has its parameters, and MLflow refuses a parameter
        logged again with another value (a local run's output directory differs per attempt)."""
        resume = resume or {}
        extra: dict[str, str] = {}
        mlflow_spec = self.logging_spec.mlflow
        if "mlflow" in self.report_to and mlflow_spec is not None:
            import mlflow

            # Explicit rather than from the environment: mlflow keeps a process-wide URI
            # once any code has set one.
            mlflow.set_tracking_uri(mlflow_spec.tracking_uri)
            mlflow.set_experiment(mlflow_spec.experiment)
            run = _reopen_mlflow_run(resume.get("mlflow"))
            if run is None:
                run = mlflow.start_run(
                    run_name=mlflow_run_name(self.logging_spec, self.job_name),
                    tags=dict(mlflow_spec.tags),
                )
                log.info("mlflow: run %s in experiment %s", run.info.run_id, mlflow_spec.experiment)
            else:
                extra["MLFLOW_MAX_LOG_PARAMS"] = "0"
            self.ids["mlflow"] = run.info.run_id
        if "wandb" in self.report_to:
            import wandb

            previous = resume.get("wandb")
            resuming: dict[str, Any] = {"id": previous, "resume": "allow"} if previous else {}
            run = wandb.init(**wandb_init_args(self.env), **resuming)
            self.ids["wandb"] = run.id
            continued = "continuing run" if previous else "run"
            log.info("wandb: %s %s (%s)", continued, run.id, run.settings.mode)
        return extra

    def finish(self, metrics: Mapping[str, Any], *, step: int, failed: bool = False) -> None:
        """Log the final metrics and close the runs (marked failed when training failed)."""
        scalars = final_scalars(metrics)
        mlflow_run_id = self.ids.get("mlflow")
        if "mlflow" in self.report_to and mlflow_run_id is not None:
            import mlflow

            if scalars:
                mlflow.log_metrics(
                    {mlflow_metric_name(k): v for k, v in scalars.items()},
                    step=step,
                    run_id=mlflow_run_id,
                )
            mlflow.end_run(status="FAILED" if failed else "FINISHED")
        if "wandb" in self.report_to:
            import wandb

            if wandb.run is not None:
                wandb.run.summary.update(scalars)
                wandb.finish(exit_code=1 if failed else 0)
        log_dir = self.env.get("TENSORBOARD_LOGGING_DIR")
        if "tensorboard" in self.report_to and log_dir and scalars:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=log_dir)
            for name, value in scalars.items():
                writer.add_scalar(FINAL_PREFIX + name, value, step)
            writer.close()

    def register_model(
        self, model_dir: Path, published_uri: str, *, local: bool, tags: Mapping[str, str]
    ) -> tuple[str, str] | None:
        """The final model as a new version in the MLflow Model Registry: (name, version),
        or None when mlflow is not reported to, registration is off, or it failed (the
        model is published already; a registry error is a warning, not a failed job).

        An S3 (or other remote) output is registered at `published_uri`, where the job put
        it. A local output is first logged to the run's artifacts, since the registry
        refuses a local path as a version's source. Registering twice for the same run and
        source (a publish that ran again) returns the existing version."""
        spec = self.logging_spec.mlflow
        run_id = self.ids.get("mlflow")
        if "mlflow" not in self.report_to or spec is None or not spec.register_model or not run_id:
            return None
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        name = spec.registered_model or self.job_name
        client = MlflowClient(tracking_uri=spec.tracking_uri)
        try:
            source = published_uri
            if local:
                client.log_artifacts(run_id, str(model_dir), artifact_path=REGISTERED_ARTIFACT)
                source = f"runs:/{run_id}/{REGISTERED_ARTIFACT}"
            for existing in client.search_model_versions(f"run_id='{run_id}'"):
                if existing.name == name and existing.tags.get(OUTPUT_TAG) == published_uri:
                    return name, str(existing.version)
            try:
                client.get_registered_model(name)
            except MlflowException as error:
                if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                client.create_registered_model(
                    name, description=f"Fine-tuned by the FineTuneJob {self.job_name}."
                )
            version = client.create_model_version(
                name, source=source, run_id=run_id, tags={**tags, OUTPUT_TAG: published_uri}
            )
        except MlflowException as error:
            log.warning("mlflow: could not register the model as %r: %s", name, redact(str(error)))
            return None
        log.info("mlflow: registered %s version %s (%s)", name, version.version, published_uri)
        return name, str(version.version)


def registry_tags(
    job_name: str,
    namespace: str | None,
    spec: FineTuneJobSpec,
    metrics: Mapping[str, Any],
    *,
    image: str | None = None,
) -> dict[str, str]:
    """What a registered version says about where it came from: the job, its base model,
    method and trainer, every final metric (`metric.<name>`), and the OCI image output.oci
    pushed of the registered folder, pinned by digest."""
    tags = {
        "finetune.dev/job": f"{namespace}/{job_name}" if namespace else job_name,
        "finetune.dev/base-model": str(spec.model.name),
        "finetune.dev/method": str(spec.method.type),
        "finetune.dev/trainer": str(spec.trainer.type),
    }
    if image:
        tags["finetune.dev/image"] = image
    for key, value in final_scalars(metrics).items():
        tags[f"metric.{mlflow_metric_name(key)}"] = repr(value)
    return tags


def wandb_init_args(env: Mapping[str, str]) -> dict[str, Any]:
    """tracker_env's W&B settings as wandb.init arguments. Explicit, as with MLflow: wandb
    reads its environment once per process, and a process may run several jobs (tests)."""
    names = {
        "WANDB_PROJECT": "project",
        "WANDB_NAME": "name",
        "WANDB_DIR": "dir",
        "WANDB_ENTITY": "entity",
        "WANDB_RUN_GROUP": "group",
        "WANDB_MODE": "mode",
    }
    args: dict[str, Any] = {arg: env[name] for name, arg in names.items() if env.get(name)}
    if env.get("WANDB_TAGS"):
        args["tags"] = env["WANDB_TAGS"].split(",")
    if env.get("WANDB_BASE_URL"):
        args["settings"] = {"base_url": env["WANDB_BASE_URL"]}
    return args


def _reopen_mlflow_run(run_id: str | None) -> Any:
    """The run a checkpoint recorded, active again; None when there is none or it is gone
    (deleted, or another server): training goes on in a new run rather than failing."""
    if not run_id:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.start_run(run_id=run_id)
    except MlflowException as error:
        log.warning("mlflow: cannot continue run %s (%s): starting a new one", run_id, error)
        return None
    log.info("mlflow: continuing run %s", run_id)
    return run


def read_tracker_ids(checkpoint: Path | None) -> dict[str, str]:
    """The tracker runs a checkpoint belongs to ({} for a fresh start or an older checkpoint)."""
    path = None if checkpoint is None else checkpoint / TRACKERS_FILE
    if path is None or not path.is_file():
        return {}
    try:
        ids = json.loads(path.read_text())
    except ValueError:
        return {}
    if not isinstance(ids, dict):
        return {}
    return {str(k): str(v) for k, v in ids.items() if isinstance(v, str) and v}


def final_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among the final metrics (trackers take nothing else)."""
    return {
        name: float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def mlflow_metric_name(name: str) -> str:
    """MLflow's allowed characters (transformers' callback replaces the same way)."""
    return re.sub(r"[^0-9A-Za-z_\-\.\ :/]", "_", name)
