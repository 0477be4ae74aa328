"""Where the client's settings come from: flags, then a config file, then the kubeconfig.

The config file (`$FINETUNE_CONFIG`, else ~/.config/finetune/config.yaml) says how this
machine reaches a cluster's storage and what every job submitted there needs that a
portable manifest does not say (the platform's node pool, its S3 credentials Secret):

    namespace: team-a                      # default: the kubeconfig context's namespace
    context: prod                          # default: the kubeconfig's current context
    staging: s3://ml-staging/team-a        # where submit uploads local files
    s3: {endpoint: https://minio.internal, region: us-east-1, forcePathStyle: true}
    jobDefaults:                           # laid beneath every submitted manifest
      output: {s3: {credentialsSecretRef: {name: team-a-s3}}}
      resources: {nodeSelector: {pool: a100}}

S3 credentials are never in it: boto3 finds them where it always does (the environment,
~/.aws, an SSO profile named by `s3.profile` or AWS_PROFILE).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ClientError

CONFIG_ENV = "FINETUNE_CONFIG"
DEFAULT_CONFIG = Path("~/.config/finetune/config.yaml")
KEYS = ("namespace", "context", "staging", "s3", "jobDefaults")
S3_KEYS = ("endpoint", "region", "forcePathStyle", "profile")


@dataclass(frozen=True)
class S3Access:
    """How this machine reaches the store (not how the pods do: that is the job's spec)."""

    endpoint: str | None = None
    region: str | None = None
    force_path_style: bool = False
    profile: str | None = None


@dataclass(frozen=True)
class ClientConfig:
    namespace: str | None = None
    context: str | None = None
    staging: str | None = None
    s3: S3Access = field(default_factory=S3Access)
    job_defaults: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    """The file it was read from ("" when none)."""


def config_path(environ: dict[str, str] | None = None) -> Path:
    environ = dict(os.environ) if environ is None else environ
    return Path(environ.get(CONFIG_ENV) or DEFAULT_CONFIG).expanduser()


def load_config(path: Path | None = None, *, required: bool = False) -> ClientConfig:
    """The config file's settings; none when it does not exist (unless `required`: a file
    named by $FINETUNE_CONFIG or a flag must exist). Unknown keys are errors."""
    named = path is not None or CONFIG_ENV in os.environ
    path = path or config_path()
    if not path.is_file():
        if named or required:
            raise ClientError(f"the client config {path} does not exist")
        return ClientConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(f"cannot read the client config {path}: {exc}") from None
    return parse_config(data, str(path))


def parse_config(data: Any, source: str) -> ClientConfig:
    if not isinstance(data, dict):
        raise ClientError(f"{source}: the client config must be a mapping")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ClientError(
            f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(KEYS)})"
        )
    s3 = data.get("s3") or {}
    if not isinstance(s3, dict) or set(s3) - set(S3_KEYS):
        raise ClientError(f"{source}: s3 takes only {', '.join(S3_KEYS)}")
    defaults = data.get("jobDefaults") or {}
    if not isinstance(defaults, dict):
        raise ClientError(f"{source}: jobDefaults must be a mapping (a partial FineTuneJob spec)")
    for key in ("namespace", "context", "staging"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ClientError(f"{source}: {key} must be a string")
    return ClientConfig(
        namespace=data.get("namespace"),
        context=data.get("context"),
        staging=data.get("staging"),
        s3=S3Access(
            endpoint=s3.get("endpoint"),
            region=s3.get("region"),
            force_path_style=bool(s3.get("forcePathStyle", False)),
            profile=s3.get("profile"),
        ),
        job_defaults=defaults,
        source=source,
    )
