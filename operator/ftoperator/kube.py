"""The operator's writes to the API server: a thin adapter over the kubernetes client.

Every write is idempotent, so a plan can be executed again after a crash: creating what
exists (409) and deleting what is gone (404) are successes. The client is synchronous;
callers run it in worker threads (asyncio.to_thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ftapi.constants import GROUP, PLURAL, VERSION

from .observability import METRICS, Metrics

log = logging.getLogger("ftoperator")


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
        self.requests = 0  # API calls made by this client (also finetune_api_requests_total)

    def create(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create one child; False when it already existed."""
        creators: dict[str, Callable[..., Any]] = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "Job": self.batch.create_namespaced_job,
        }
        create = creators[body["kind"]]
        self._count("create")
        try:
            create(namespace, body)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._count("get")
        try:
            job = self.batch.read_namespaced_job(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self._plain(job)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self._count("list")
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [self._plain(pod) for pod in pods]

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
        """Replace what status holds by merging; the object as stored after the write (None
        when the FineTuneJob is gone)."""
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
