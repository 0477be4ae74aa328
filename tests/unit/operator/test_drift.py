"""drifted(existing, desired): an edit is drift; the API server's own defaults are not."""

from __future__ import annotations

from typing import Any

import pytest

from ftapi import parse_job
from ftoperator.children import build_children
from ftoperator.config import Settings
from ftoperator.drift import drifted
from fttestkit.builders import make_job

CHILDREN = build_children(  # two nodes: a rendezvous Service among the children
    parse_job(make_job("j").set("metadata.uid", "u1").set("resources.nodes", 2).obj()),
    attempt=0, settings=Settings(),
)  # fmt: skip


def _stored(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The object as the API server returns it: server fields added, then `changes`."""
    stored = {**obj, "metadata": {**obj["metadata"], "uid": "x", "resourceVersion": "7",
                                  "creationTimestamp": "2026-11-22T12:00:00Z"}}  # fmt: skip
    stored.update(changes)
    return stored


def test_as_created_with_server_defaults_is_not_drift() -> None:
    service = CHILDREN.service
    assert service is not None
    ports = [{**service["spec"]["ports"][0], "protocol": "TCP", "targetPort": 29500}]
    defaults = {**service["spec"], "ports": ports, "sessionAffinity": "None", "type": "ClusterIP"}
    assert not drifted(_stored(service, spec=defaults), service)
    assert not drifted(_stored(CHILDREN.role), CHILDREN.role)


@pytest.mark.parametrize(
    "edit",
    [
        {"rules": [*CHILDREN.role["rules"], {"apiGroups": [""], "resources": ["secrets"],
                                             "verbs": ["get"]}]},
        {"rules": [{**CHILDREN.role["rules"][0], "verbs": ["*"]}]},
        {"metadata": {**CHILDREN.role["metadata"], "ownerReferences": []}},
    ],
    ids=["a rule added", "verbs widened", "owner removed"],
)  # fmt: skip
def test_an_edit_is_drift(edit: dict[str, Any]) -> None:
    assert drifted(_stored(CHILDREN.role, **edit), CHILDREN.role)


def test_a_rebound_rolebinding_is_drift() -> None:
    binding = CHILDREN.role_binding
    extra = [*binding["subjects"], {"kind": "User", "name": "mallory"}]
    assert drifted(_stored(binding, subjects=extra), binding)
