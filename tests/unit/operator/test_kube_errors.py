"""How the operator reads the API server's refusals and ownership (kube.py's pure parts)."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from ftoperator.kube import namespace_going, owned_by, server_message


def _refusal(status: int, message: str, reason: str = "", kind: str | None = None) -> ApiException:
    error = ApiException(status=status, reason="Forbidden" if status == 403 else "Invalid")
    details: dict[str, object] = {"causes": [{"reason": reason}] if reason else []}
    if kind:
        details["kind"] = kind
    error.body = json.dumps({"kind": "Status", "message": message, "details": details})
    return error


def test_the_servers_own_words_are_quoted() -> None:
    error = _refusal(422, 'Job.batch "x-0" is invalid: spec.template.labels: Invalid value')
    assert (
        server_message(error) == 'Job.batch "x-0" is invalid: spec.template.labels: Invalid value'
    )
    bare = ApiException(status=500, reason="Internal Server Error")
    assert server_message(bare) == "Internal Server Error"


def test_a_terminating_or_deleted_namespace_is_told_apart_from_missing_rights() -> None:
    going = _refusal(403, "unable to create new content in namespace ns because it is being "
                     "terminated", reason="NamespaceTerminating")  # fmt: skip
    assert namespace_going(going)
    assert not namespace_going(_refusal(403, 'configmaps is forbidden: User "x" cannot'))
    # What a create into a namespace deleted a moment ago gets (seen in CI): 404 on the namespace.
    gone = _refusal(404, 'namespaces "ns" not found', kind="namespaces")
    assert namespace_going(gone)
    assert not namespace_going(_refusal(404, 'roles "x" not found', kind="roles"))


def test_ownership_is_the_controller_reference_uid() -> None:
    ours = {"metadata": {"ownerReferences": [{"uid": "u1", "controller": True}]}}
    assert owned_by(ours, "u1") and not owned_by(ours, "u2")
    assert not owned_by({"metadata": {"ownerReferences": [{"uid": "u1"}]}}, "u1")  # no controller
    assert not owned_by({"metadata": {}}, "u1")
