"""The API server's timestamps (RFC 3339, `Z`) read one way everywhere in the operator."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def api_time(stamp: Any) -> datetime | None:
    """An aware datetime, or None when absent or unreadable: a field another client wrote
    badly must not stop a pass, so callers decide what an unknown time means."""
    if not stamp or not isinstance(stamp, str):
        return None
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
