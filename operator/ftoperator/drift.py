"""Whether a child the job owns still says what the operator rendered. Pure.

An owned child can be edited after it was created (a Role given more rules, a Service's
selector changed); at each attempt the operator compares what exists with what it renders
and puts back what differs (server-side apply, kube.Kube.apply). Only what the operator
renders is compared: the API server's defaults (a Service port's protocol) and other
managers' additions to maps are not drift.
"""

from __future__ import annotations

from typing import Any

# Kinds that are repaired: what the trainer pods may do (Role, RoleBinding) and who may
# reach them (NetworkPolicy). Repairing costs the operator `patch` on the kind everywhere it
# works, so the others are not: the config ConfigMap is immutable, a Job's pod template
# too (each attempt has its own Job), the trainer writes the progress object, and an edited
# Service or ServiceAccount can break the job but not widen what it may do.
REPAIRABLE = frozenset({"Role", "RoleBinding", "NetworkPolicy"})


def drifted(existing: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether `existing` lacks or changed anything `desired` sets (metadata: its labels and
    ownerReferences only)."""
    wanted = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}
    meta = desired.get("metadata", {})
    wanted["metadata"] = {k: meta[k] for k in ("labels", "ownerReferences") if k in meta}
    return not _contains(existing, wanted)


def _contains(have: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            key in have and _contains(have[key], value) for key, value in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(_contains(h, w) for h, w in zip(have, want, strict=True))
        )
    return bool(have == want)
