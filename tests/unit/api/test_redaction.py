"""Credentials in URLs never reach a message: data-source and storage errors quote library
text that may hold the endpoint they failed on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ftapi.redaction import redact
from fttrainer.data.sources import DataSourceError, read_source


def test_userinfo_is_removed_and_long_text_bounded() -> None:
    text = 'Could not connect to the endpoint URL: "http://AKIAKEY:s3cr3t@minio:9000/b/k"'
    assert redact(text) == 'Could not connect to the endpoint URL: "http://minio:9000/b/k"'
    assert redact("plain words, no URL") == "plain words, no URL"
    assert len(redact("x" * 10_000)) == 500


class _FailingS3:
    def download_file(self, bucket: str, key: str, target: str) -> None:
        raise RuntimeError(f"Could not connect to http://AKIAKEY:s3cr3t@minio:9000/{bucket}/{key}")


def test_a_data_source_error_does_not_quote_credentials(tmp_path: Path) -> None:
    client: Any = _FailingS3()
    with pytest.raises(DataSourceError) as caught:
        read_source("s3://data/train.jsonl", s3_client=client)
    message = str(caught.value)
    assert "s3cr3t" not in message and "AKIAKEY" not in message
    assert "http://minio:9000/data/train.jsonl" in message
