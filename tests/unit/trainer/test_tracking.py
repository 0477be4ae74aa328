"""spec.logging → what the tracker integrations read, and where credentials (do not) go;
the tracker runs a checkpoint names (a resumed attempt continues them)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from ftapi.v1alpha1 import LoggingSpec, SecretKeyRef
from fttestkit.builders import make_job
from fttrainer.reporting.tracking import (
    TRACKERS_FILE,
    environment,
    final_scalars,
    mlflow_run_name,
    read_tracker_ids,
    tracker_env,
    wandb_init_args,
)

OUT = Path("/results/job-1")


def _logging(**settings: Any) -> LoggingSpec:
    return parse_job(make_job("job-1").set("logging", settings).obj()).spec.logging


def test_no_trackers_no_environment() -> None:
    assert tracker_env(_logging(), job_name="job-1", output_dir=OUT) == {}


def test_every_tracker_setting_maps_to_its_variable() -> None:
    logging = _logging(
        reportTo=["tensorboard", "mlflow", "wandb"],
        mlflow={"trackingUri": "http://mlflow:5000", "experiment": "llama", "runName": "r",
                "runNamePrefix": "pre-", "runNameSuffix": "-1", "tags": {"team": "nlp"},
                "tokenSecretRef": {"name": "mlflow", "key": "token"}},
        wandb={"project": "ft", "entity": "acme", "runName": "w", "group": "sweep",
               "tags": ["a", "b"], "mode": "offline",
               "apiKeySecretRef": {"name": "wandb", "key": "key"}},
    )  # fmt: skip
    assert tracker_env(logging, job_name="job-1", output_dir=OUT) == {
        "TENSORBOARD_LOGGING_DIR": "/results/job-1/tensorboard",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_EXPERIMENT_NAME": "llama",
        "MLFLOW_TAGS": json.dumps({"team": "nlp"}),
        "MLFLOW_FLATTEN_PARAMS": "true",
        "HF_MLFLOW_LOG_ARTIFACTS": "false",
        "WANDB_PROJECT": "ft",
        "WANDB_NAME": "w",
        "WANDB_DIR": "/results/job-1",
        "WANDB_ENTITY": "acme",
        "WANDB_RUN_GROUP": "sweep",
        "WANDB_TAGS": "a,b",
        "WANDB_MODE": "offline",
        "WANDB_LOG_MODEL": "false",
        "WANDB_WATCH": "false",
    }
    assert mlflow_run_name(logging, "job-1") == "pre-r-1"
    # Credentials: Secret references for the pod's environment, never values in ours.
    assert logging.secret_env() == {
        "MLFLOW_TRACKING_TOKEN": SecretKeyRef(name="mlflow", key="token"),
        "WANDB_API_KEY": SecretKeyRef(name="wandb", key="key"),
    }
    env = tracker_env(logging, job_name="job-1", output_dir=OUT)
    assert not {"MLFLOW_TRACKING_TOKEN", "WANDB_API_KEY"} & set(env)


def test_defaults_name_runs_after_the_job() -> None:
    logging = _logging(
        reportTo=["mlflow", "wandb"],
        mlflow={"trackingUri": "file:///tmp/mlruns"},
        wandb={"project": "ft"},
    )
    env = tracker_env(logging, job_name="job-1", output_dir=OUT)
    assert mlflow_run_name(logging, "job-1") == "job-1"
    assert env["WANDB_NAME"] == "job-1" and env["MLFLOW_EXPERIMENT_NAME"] == "finetune"
    assert "WANDB_MODE" not in env and "MLFLOW_TAGS" not in env  # W&B/MLflow defaults
    assert logging.secret_env() == {}


def test_environment_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    with environment({"WANDB_MODE": "offline", "WANDB_DIR": "/x"}):
        assert (os.environ["WANDB_MODE"], os.environ["WANDB_DIR"]) == ("offline", "/x")
    assert os.environ["WANDB_MODE"] == "online" and "WANDB_DIR" not in os.environ


def test_only_finite_numbers_reach_the_trackers() -> None:
    metrics = {"a": 1, "b": 0.5, "flag": True, "inf": float("inf"), "text": "x"}
    assert final_scalars(metrics) == {"a": 1.0, "b": 0.5}


def test_wandb_is_given_every_setting_explicitly() -> None:
    logging = _logging(
        reportTo=["wandb"],
        wandb={"project": "ft", "entity": "acme", "group": "sweep", "tags": ["a", "b"],
               "mode": "offline", "baseUrl": "https://wandb.internal"},
    )  # fmt: skip
    env = tracker_env(logging, job_name="job-1", output_dir=OUT)
    assert env["WANDB_BASE_URL"] == "https://wandb.internal"
    assert wandb_init_args(env) == {
        "project": "ft", "name": "job-1", "dir": "/results/job-1", "entity": "acme",
        "group": "sweep", "mode": "offline", "tags": ["a", "b"],
        "settings": {"base_url": "https://wandb.internal"},
    }  # fmt: skip
    assert wandb_init_args({}) == {}


@pytest.mark.parametrize(
    ("content", "ids"),
    [
        (None, {}),  # a checkpoint from before the trackers were recorded, or none at all
        ('{"mlflow": "abc", "wandb": "x1"}', {"mlflow": "abc", "wandb": "x1"}),
        ('{"mlflow": ""}', {}),
        ('["abc"]', {}),
        ("{not json", {}),
    ],
)
def test_a_checkpoint_names_its_tracker_runs(
    tmp_path: Path, content: str | None, ids: dict[str, str]
) -> None:
    if content is not None:
        (tmp_path / TRACKERS_FILE).write_text(content)
    assert read_tracker_ids(tmp_path) == ids
    assert read_tracker_ids(None) == {}


def test_a_registered_version_names_its_job_base_metrics_and_pushed_image() -> None:
    from fttrainer.reporting.tracking import registry_tags

    spec = parse_job(make_job("chat").set("model.name", "org/base").obj()).spec
    image = "oci://r.example/tuned/chat:v1-merged@sha256:" + "d" * 64
    tags = registry_tags("chat", "team-a", spec, {"eval_loss": 1.25, "note": "x"}, image=image)
    assert tags["finetune.dev/job"] == "team-a/chat"
    assert tags["finetune.dev/base-model"] == "org/base"
    assert tags["finetune.dev/image"] == image
    assert tags["metric.eval_loss"] == "1.25"
    assert "finetune.dev/image" not in registry_tags("chat", None, spec, {})
