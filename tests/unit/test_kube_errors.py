"""How the operator reads the API server's refusals and ownership (kube.py's pure parts)."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from ftoperator.kube import namespace_terminating, owned_by, server_message


def _refusal(status: int, message: str, reason: str = "") -> ApiException:
    error = ApiException(status=status, reason="Forbidden" if status == 403 else "Invalid")
    causes = [{"reason": reason}] if reason else []
    error.body = json.dumps({"kind": "Status", "message": message, "details": {"causes": causes}})
    return error


def test_the_servers_own_words_are_quoted() -> None:
    error = _refusal(422, 'Job.batch "x-0" is invalid: spec.template.labels: Invalid value')
    assert (
        server_message(error) == 'Job.batch "x-0" is invalid: spec.template.labels: Invalid value'
    )
    bare = ApiException(status=500, reason="Internal Server Error")
    assert server_message(bare) == "Internal Server Error"


def test_a_terminating_namespace_is_told_apart_from_missing_rights() -> None:
    going = _refusal(403, "unable to create new content in namespace ns because it is being "
                     "terminated", reason="NamespaceTerminating")  # fmt: skip
    assert namespace_terminating(going)
    assert not namespace_terminating(_refusal(403, 'configmaps is forbidden: User "x" cannot'))


def test_ownership_is_the_controller_reference_uid() -> None:
    ours = {"metadata": {"ownerReferences": [{"uid": "u1", "controller": True}]}}
    assert owned_by(ours, "u1") and not owned_by(ours, "u2")
    assert not owned_by({"metadata": {"ownerReferences": [{"uid": "u1"}]}}, "u1")  # no controller
    assert not owned_by({"metadata": {}}, "u1")
