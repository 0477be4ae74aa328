"""Keep credentials out of messages: a URL's user:password@ never reaches a log or status.

Errors from boto3, datasets and urllib quote the endpoint they failed on, and an endpoint
may carry credentials (http://key:secret@minio:9000). Every message built from a library's
error text goes through `redact` and is bounded in length.
"""

from __future__ import annotations

import re

# A scheme is short (RFC 3986 sets no bound; real ones are under 32): unbounded, a long line
# of letters without "://" would cost quadratic time, and kept logs redact every line.
USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)[^\s/@\"']+@")
MAX_QUOTED = 500


def redact(text: str, limit: int = MAX_QUOTED) -> str:
    """`text` without any URL's userinfo, cut to `limit` characters."""
    cleaned = USERINFO.sub(r"\g<scheme>", text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
