"""The operator's writes to the API server: a thin adapter over the kubernetes client.

Every write is idempotent, so a plan can be executed again after a crash: creating what
exists (409) and deleting what is gone (404) are successes. Creating is create-or-verify: an
object that already exists counts only when its controller ownerReference carries the
FineTuneJob's UID; anything else is somebody else's (or a deleted job's) and is never
adopted (ChildError "ChildConflict"). A create the API server refuses as invalid (400, 413,
422) will be refused again: ChildError "ChildRejected", with the server's own message.
The client is synchronous; callers run it in worker threads (asyncio.to_thread).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ftapi.constants import GROUP, PLURAL, PROGRESS_PLURAL, VERSION

from .drift import REPAIRABLE, drifted
from .observability import METRICS, Metrics

log = logging.getLogger("ftoperator")

INVALID = (400, 413, 422)  # the API server will refuse the same object again
FIELD_MANAGER = "finetune-operator"


class ChildError(Exception):
    """A child of a FineTuneJob that cannot be created, whatever the number of retries."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Whether `obj`'s controller ownerReference is the FineTuneJob with this UID."""
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in references)


def namespace_going(error: ApiException) -> bool:
    """A create refused because its namespace is being deleted (403 NamespaceTerminating) or
    already gone (404 whose details name the namespace, not the object)."""
    body = str(error.body or "")
    if error.status == 403:
        return "NamespaceTerminating" in body
    if error.status == 404:
        try:
            details = json.loads(body).get("details") or {}
        except (ValueError, AttributeError):
            return False
        return details.get("kind") == "namespaces"
    return False


def server_message(error: ApiException) -> str:
    """The API server's own explanation (its Status message), else the HTTP reason."""
    try:
        message = json.loads(error.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or error.reason or error.status)


class Kube:
    def __init__(
        self, api: client.ApiClient, identity: str = "finetune-operator", metrics: Metrics = METRICS
    ) -> None:
        self.api = api
        self.identity = identity
        self.metrics = metrics
        self.core = client.CoreV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.networking = client.NetworkingV1Api(api)
        self.requests = 0  # API calls made by this client (also finetune_api_requests_total)

    def create(self, namespace: str, body: dict[str, Any], owner_uid: str | None = None) -> bool:
        """Create one child; False when this FineTuneJob's own child already existed.

        owner_uid: the FineTuneJob's UID, which an existing object must carry as its
        controller (None: no check, for callers that create objects of their own)."""
        kind, name = body["kind"], body["metadata"]["name"]
        creators: dict[str, Callable[..., Any]] = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "Job": self.batch.create_namespaced_job,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
            "FineTuneJobProgress": lambda ns, obj: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PROGRESS_PLURAL, obj
            ),
        }
        self._count("create")
        try:
            creators[kind](namespace, body)
        except ApiException as error:
            if error.status in INVALID:
                raise ChildError(
                    "ChildRejected",
                    f"the API server refused the {kind} {name}: {server_message(error)}",
                ) from None
            if namespace_going(error):
                # The namespace, and with it the job, is being deleted: nothing to create.
                log.info("%s/%s: not created, the namespace is being deleted", namespace, name)
                return False
            if error.status != 409:
                raise
        else:
            return True
        if owner_uid is None:
            return False
        existing = self.read(kind, namespace, name)
        if existing is None:  # deleted since: the next pass creates it
            raise RuntimeError(f"{kind} {namespace}/{name} vanished while being verified")
        if not owned_by(existing, owner_uid):
            raise ChildError(
                "ChildConflict",
                f"a {kind} named {name} already exists in {namespace} and does not belong to "
                "this FineTuneJob (its controller ownerReference is another object): the "
                "operator never adopts it. Delete it, or give the job another name",
            )
        if kind in REPAIRABLE and drifted(existing, body):
            log.warning("%s %s/%s was edited: putting back what the operator renders",
                        kind, namespace, name)  # fmt: skip
            self.apply(namespace, body)
        return False

    def apply(self, namespace: str, body: dict[str, Any]) -> None:
        """Server-side apply of a child the job owns, as the one field manager that owns its
        fields (force: an edit by another manager is taken back)."""
        appliers: dict[str, Callable[..., Any]] = {
            "Role": self.rbac.patch_namespaced_role,
            "RoleBinding": self.rbac.patch_namespaced_role_binding,
            "NetworkPolicy": self.networking.patch_namespaced_network_policy,
        }
        self._count("patch")
        try:
            appliers[body["kind"]](
                body["metadata"]["name"], namespace, body, field_manager=FIELD_MANAGER,
                force=True, _content_type="application/apply-patch+yaml",
            )  # fmt: skip
        except ApiException as error:
            if error.status in INVALID:
                raise ChildError(
                    "ChildRejected",
                    f"the API server refused the repaired {body['kind']} "
                    f"{body['metadata']['name']}: {server_message(error)}",
                ) from None
            if namespace_going(error):
                return
            raise

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One child by kind and name (JSON as the watch delivers it); None when absent."""
        readers: dict[str, Callable[..., Any]] = {
            "ConfigMap": self.core.read_namespaced_config_map,
            "Service": self.core.read_namespaced_service,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "Role": self.rbac.read_namespaced_role,
            "RoleBinding": self.rbac.read_namespaced_role_binding,
            "Job": self.batch.read_namespaced_job,
            "NetworkPolicy": self.networking.read_namespaced_network_policy,
            "FineTuneJobProgress": lambda n, ns: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, ns, PROGRESS_PLURAL, n
            ),
        }
        self._count("get")
        try:
            return self._plain(readers[kind](name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.read("Job", namespace, name)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self._count("list")
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [self._plain(pod) for pod in pods]

    def pod_create_failure(self, namespace: str, job_name: str) -> str | None:
        """The newest FailedCreate Event the Job controller recorded on this Job: why its
        pods do not exist (a ResourceQuota, a missing PriorityClass, Pod Security)."""
        self._count("list")
        selector = f"involvedObject.kind=Job,involvedObject.name={job_name},reason=FailedCreate"
        events = self.core.list_namespaced_event(namespace, field_selector=selector).items
        if not events:
            return None
        newest = max(events, key=lambda e: str(e.last_timestamp or e.event_time or ""))
        return str(newest.message or "FailedCreate")

    def _count(self, verb: str) -> None:
        self.requests += 1
        self.metrics.count_api_request(verb)

    def _plain(self, obj: Any) -> dict[str, Any]:
        """A client model as the JSON the watch streams deliver (camelCase dicts)."""
        plain = self.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return cast(dict[str, Any], plain)

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete an attempt's Job and, in the background, its pods."""
        self._count("delete")
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise

    def suspend_job(self, namespace: str, name: str, suspend: bool) -> None:
        self._count("patch")
        try:
            self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})
        except ApiException as error:
            if error.status not in (404, 422):  # gone, or finished (suspend no longer matters)
                raise

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Apply a JSON merge patch to status (merge_patch.py: null deletes a field); the
        object as stored after the write (None when the FineTuneJob is gone)."""
        self._count("patch")
        try:
            result = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return cast(dict[str, Any], result)

    def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about a FineTuneJob (what `kubectl describe` lists). Best effort:
        an Event that cannot be written is logged, never retried."""
        meta = obj.get("metadata", {})
        now = datetime.now(UTC)
        event = {
            "metadata": {"generateName": f"{meta.get('name', 'finetunejob')}.",
                         "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                "name": meta.get("name"), "namespace": meta.get("namespace"),
                "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
            "source": {"component": "finetune-operator"},
            "reportingComponent": "finetune.dev/operator", "reportingInstance": self.identity,
        }  # fmt: skip
        self._count("create")
        try:
            # The client validates a plain dict like its CoreV1Event model.
            self.core.create_namespaced_event(meta.get("namespace"), event)  # type: ignore[arg-type]
        except ApiException as error:
            log.warning("could not record the event %s: %s", reason, error.reason)

    def delete_finetunejob(self, namespace: str, name: str) -> None:
        self._count("delete")
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background"
            )
        except ApiException as error:
            if error.status != 404:
                raise
