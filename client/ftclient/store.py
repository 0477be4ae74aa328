"""S3 as this machine reaches it (uploads on submit, kept logs, metrics): boto3 with the
user's own credentials, failing in seconds when the endpoint does not answer."""

from __future__ import annotations

import os
from typing import Any

from ftapi.redaction import redact

from .config import S3Access
from .errors import ClientError, UnreachableError

CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60


def s3_client(access: S3Access) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.Session(profile_name=access.profile) if access.profile else boto3.Session()
    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path"} if access.force_path_style else None,
        max_pool_connections=32,
    )
    return session.client(
        "s3", endpoint_url=access.endpoint or None, region_name=access.region or None, config=config
    )


def endpoint_of(client: Any) -> str:
    return str(
        getattr(client.meta, "endpoint_url", "") or os.environ.get("AWS_ENDPOINT_URL_S3", "")
    )


def s3_error(what: str, exc: BaseException, client: Any) -> ClientError:
    """boto3's failure in words, without credentials: unreachable, denied, or its message."""
    from botocore.exceptions import ClientError as BotoError
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    endpoint = redact(endpoint_of(client))
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return UnreachableError(f"{what}: the S3 endpoint {endpoint} did not answer ({exc})")
    if isinstance(exc, NoCredentialsError):
        return ClientError(
            f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or s3.profile in the client config)"
        )
    if isinstance(exc, BotoError):
        error = exc.response.get("Error", {})
        message = redact(str(error.get("Message")))
        return ClientError(f"{what}: S3 at {endpoint} answered {error.get('Code')}: {message}")
    return ClientError(f"{what}: {redact(f'{type(exc).__name__}: {exc}')}")


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def read_text(client: Any, uri: str) -> str | None:
    """The object's text; None when it does not exist."""
    from botocore.exceptions import ClientError as BotoError

    bucket, key = split_uri(uri)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except BotoError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    return str(body.decode("utf-8", "replace"))


def list_keys(client: Any, uri: str) -> list[str]:
    """Every key under the prefix, in order."""
    bucket, prefix = split_uri(uri)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return sorted(keys)
