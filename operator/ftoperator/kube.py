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
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ftapi.constants import GROUP, PLURAL, PROGRESS_PLURAL, VERSION

from .drift import REPAIRABLE, drifted
from .kueue import WORKLOAD_API
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


def rejected_child(kind: str, name: str, error: ApiException, what: str = "") -> ChildError:
    """A child the API server refused as invalid: it will refuse it again (ChildRejected)."""
    return ChildError(
        "ChildRejected", f"the API server refused the {what}{kind} {name}: {server_message(error)}"
    )


def server_message(error: ApiException) -> str:
    """The API server's own explanation (its Status message), else the HTTP reason."""
    try:
        message = json.loads(error.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or error.reason or error.status)


ADMISSION_API = "admissionregistration.k8s.io/v1"
# Each kind the operator sends: (apiVersion, plural), i.e. where its collection lives.
RESOURCES = {
    "ConfigMap": ("v1", "configmaps"),
    "Service": ("v1", "services"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "Event": ("v1", "events"),
    "Pod": ("v1", "pods"),
    "Node": ("v1", "nodes"),
    "Role": ("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
    "Job": ("batch/v1", "jobs"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
    "FineTuneJobProgress": (f"{GROUP}/{VERSION}", PROGRESS_PLURAL),
    "FineTuneJob": (f"{GROUP}/{VERSION}", PLURAL),
    "Workload": (WORKLOAD_API, "workloads"),
    "ValidatingAdmissionPolicy": (ADMISSION_API, "validatingadmissionpolicies"),
    "ValidatingAdmissionPolicyBinding": (ADMISSION_API, "validatingadmissionpolicybindings"),
}
JSON = "application/json"
# An answer (or a watch's objects) with the metadata alone, as client-go's metadata client
# asks: .format("PartialObjectMetadata") for one object, "PartialObjectMetadataList" for a
# list; plain JSON where a server cannot.
PARTIAL_METADATA = "application/json;as={};g=meta.k8s.io;v=v1,application/json"
METADATA_ONLY = PARTIAL_METADATA.format("PartialObjectMetadata")  # one object's answer
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML


def collection(kind: str, namespace: str | None) -> str:
    """The URL path of a kind's objects in a namespace (None: in every namespace)."""
    version, plural = RESOURCES[kind]
    root = "/api/v1" if version == "v1" else f"/apis/{version}"
    return f"{root}/namespaces/{namespace}/{plural}" if namespace else f"{root}/{plural}"


class Kube:
    """Plain JSON over the kubernetes client's connection pool and credentials.

    The typed API methods validate a dict into a pydantic model, serialize it back and turn
    the answer into models again, which costs more CPU than the request itself
    (docs/results/history.md), and the operator is one Python process sharing its CPU with
    everything else in a burst of new jobs. Objects here are the JSON the watches deliver."""

    def __init__(
        self, api: client.ApiClient, identity: str = "finetune-operator", metrics: Metrics = METRICS
    ) -> None:
        self.api = api
        self.identity = identity
        self.metrics = metrics
        self.requests = 0  # API calls made by this client (also finetune_api_requests_total)

    def request(
        self,
        verb: str,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = JSON,
        accept: str = JSON,
    ) -> dict[str, Any]:
        """One request; the answer's JSON. Raises ApiException (NotFoundException, ...) for
        a status outside 2xx, with the server's Status as its body, as the typed client
        does. `verb` is Kubernetes' (create, get, list, patch, delete), for the metric."""
        self._count(verb)
        headers = {"Accept": accept, "Content-Type": content_type}
        method, url, headers, payload, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )[:5]
        response = self.api.call_api(method, url, headers, payload, post)
        data = cast(bytes, response.read())  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            text = data.decode("utf-8", errors="replace")
            raise ApiException.from_response(http_resp=response, body=text, data=None)
        return cast(dict[str, Any], orjson.loads(data) if data else {})

    def create(self, namespace: str, body: dict[str, Any], owner_uid: str | None = None) -> bool:
        """Create one child; False when this FineTuneJob's own child already existed.

        owner_uid: the FineTuneJob's UID, which an existing object must carry as its
        controller (None: no check, for callers that create objects of their own)."""
        # Its metadata back, not the whole object: nothing here reads the rest.
        return self.create_object(namespace, body, owner_uid, accept=METADATA_ONLY) is not None

    def create_object(
        self,
        namespace: str,
        body: dict[str, Any],
        owner_uid: str | None = None,
        accept: str = JSON,
    ) -> dict[str, Any] | None:
        """create(), returning the object as the API server stored it (None: it existed)."""
        kind, name = body["kind"], body["metadata"]["name"]
        try:
            return self.request("create", "POST", collection(kind, namespace), body, accept=accept)
        except ApiException as error:
            if error.status in INVALID:
                raise rejected_child(kind, name, error) from None
            if namespace_going(error):
                # The namespace, and with it the job, is being deleted: nothing to create.
                log.info("%s/%s: not created, the namespace is being deleted", namespace, name)
                return None
            if error.status != 409:
                raise
        if owner_uid is None:
            return None
        existing = self.read(kind, namespace, name)
        if existing is None:  # deleted since: the next pass creates it
            raise RuntimeError(f"{kind} {namespace}/{name} vanished while being verified")
        self._verify(namespace, existing, body, owner_uid)
        return None

    def ensure(self, namespace: str, body: dict[str, Any], owner_uid: str) -> bool:
        """Verify one child of a running attempt, read first (one GET when it is intact,
        where create() would cost a refused POST and a GET): re-create it when it was
        deleted, put it back when it was edited (REPAIRABLE kinds), ChildError when a
        stranger's object took its name. True when it had to be created again."""
        existing = self.read(body["kind"], namespace, body["metadata"]["name"])
        if existing is None:
            created = self.create(namespace, body, owner_uid)
            if created:
                log.warning(
                    "%s %s/%s was deleted: created it again",
                    body["kind"],
                    namespace,
                    body["metadata"]["name"],
                )
            return created
        self._verify(namespace, existing, body, owner_uid)
        return False

    def _verify(
        self, namespace: str, existing: dict[str, Any], body: dict[str, Any], owner_uid: str
    ) -> None:
        """An existing child counts only when this FineTuneJob controls it; the kinds that
        decide what the pods may do or who reaches them are put back when edited."""
        kind, name = body["kind"], body["metadata"]["name"]
        if not owned_by(existing, owner_uid):
            raise ChildError(
                "ChildConflict",
                f"a {kind} named {name} already exists in {namespace} and does not belong to "
                "this FineTuneJob (its controller ownerReference is another object): the "
                "operator never adopts it. Delete it, or give the job another name",
            )
        if kind in REPAIRABLE and drifted(existing, body):
            log.warning(
                "%s %s/%s was edited: putting back what the operator renders", kind, namespace, name
            )
            self.apply(namespace, body)

    def apply(self, namespace: str, body: dict[str, Any]) -> None:
        """Server-side apply of a child the job owns, as the one field manager that owns its
        fields (force: an edit by another manager is taken back)."""
        kind, name = body["kind"], body["metadata"]["name"]
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        try:
            self.request(
                "patch", "PATCH", f"{collection(kind, namespace)}/{name}", body, query, APPLY_PATCH
            )
        except ApiException as error:
            if error.status in INVALID:
                raise rejected_child(kind, name, error, "repaired ") from None
            if namespace_going(error):
                return
            raise

    def ensure_shared(self, namespace: str, body: dict[str, Any]) -> None:
        """Make sure of an object several jobs share (the namespace's trainer identity): read
        first, created when absent, put back when edited (REPAIRABLE kinds). One the operator
        did not make (no managed-by label of ours) is never taken over: ChildError, since a
        stranger's Role under the shared name would decide what every trainer may do."""
        kind, name = body["kind"], body["metadata"]["name"]
        existing = self.read(kind, namespace, name)
        if existing is None:
            # No owner to verify: one created meanwhile (409) is read again at the next check.
            if self.create_object(namespace, body, None, accept=METADATA_ONLY) is not None:
                log.info("%s %s/%s created (shared by the namespace's jobs)", kind, namespace, name)
            return
        labels = (existing.get("metadata") or {}).get("labels") or {}
        ours = body["metadata"]["labels"]["app.kubernetes.io/managed-by"]
        if labels.get("app.kubernetes.io/managed-by") != ours:
            raise ChildError(
                "ChildConflict",
                f"a {kind} named {name} already exists in {namespace} and was not made by "
                f"the operator (no app.kubernetes.io/managed-by: {ours} label): the trainer "
                "pods of this namespace would run with it. Delete or rename it",
            )
        if kind in REPAIRABLE and drifted(existing, body):
            log.warning(
                "%s %s/%s was edited: putting back what the operator renders", kind, namespace, name
            )
            self.apply(namespace, body)

    def admission_policy_bound(self, name: str) -> bool:
        """Whether the ValidatingAdmissionPolicy `name` exists and a binding of the same name
        enforces it (Deny). False when either is missing or unreadable (no rights)."""
        try:
            policy = self.read("ValidatingAdmissionPolicy", "", name)
            binding = self.read("ValidatingAdmissionPolicyBinding", "", name)
        except ApiException as error:
            if error.status == 403:
                return False
            raise
        spec = (binding or {}).get("spec") or {}
        return (
            policy is not None
            and spec.get("policyName") == name
            and "Deny" in (spec.get("validationActions") or [])
        )

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object by kind and name (JSON as the watch delivers it); None when absent."""
        try:
            return self.request("get", "GET", f"{collection(kind, namespace or None)}/{name}")
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.read("Job", namespace, name)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        listed = self.request(
            "list", "GET", collection("Pod", namespace), query=[("labelSelector", selector)]
        )
        return list(listed.get("items") or [])

    def pod_create_failures(self, namespace: str) -> dict[str, str]:
        """The newest FailedCreate Event the Job controller recorded on each Job of the
        namespace, by Job name: why its pods do not exist (a ResourceQuota, a missing
        PriorityClass, Pod Security). One list serves every job of the namespace."""
        selector = "involvedObject.kind=Job,reason=FailedCreate"
        listed = self.request(
            "list", "GET", collection("Event", namespace), query=[("fieldSelector", selector)]
        )
        newest: dict[str, tuple[str, str]] = {}
        for event in listed.get("items") or []:
            job = str((event.get("involvedObject") or {}).get("name") or "")
            when = str(event.get("lastTimestamp") or event.get("eventTime") or "")
            if job not in newest or when >= newest[job][0]:
                newest[job] = (when, str(event.get("message") or "FailedCreate"))
        return {job: message for job, (_, message) in newest.items()}

    def workloads(self, namespace: str) -> list[dict[str, Any]]:
        """Kueue's Workloads in the namespace (one list serves every queued job there); none
        when Kueue is not installed (404) or the chart's rule for them is missing (403)."""
        try:
            listed = self.request("list", "GET", collection("Workload", namespace))
        except ApiException as error:
            if error.status in (403, 404):
                return []
            raise
        return list(listed.get("items") or [])

    def _count(self, verb: str) -> None:
        self.requests += 1
        self.metrics.count_api_request(verb)

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete an attempt's Job and, in the background, its pods."""
        try:
            self.request(
                "delete",
                "DELETE",
                f"{collection('Job', namespace)}/{name}",
                {"propagationPolicy": "Background"},
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def suspend_job(self, namespace: str, name: str, suspend: bool) -> None:
        try:
            self.request(
                "patch",
                "PATCH",
                f"{collection('Job', namespace)}/{name}",
                {"spec": {"suspend": suspend}},
                content_type=MERGE_PATCH,
            )
        except ApiException as error:
            if error.status not in (404, 422):  # gone, or finished (suspend no longer matters)
                raise

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Apply a JSON merge patch to status (merge_patch.py: null deletes a field); the
        object's metadata as stored after the write (None when the FineTuneJob is gone).

        Only the metadata is asked back (PartialObjectMetadata): the whole object, spec and
        status this process had just sent, was decoded for nothing but its resourceVersion
        (docs/operator.md, "Status writes"). The caller applies the patch itself
        (cache.as_written)."""
        path = f"{collection('FineTuneJob', namespace)}/{name}/status"
        try:
            answer = self.request(
                "patch",
                "PATCH",
                path,
                {"status": status},
                content_type=MERGE_PATCH,
                accept=METADATA_ONLY,
            )
            return cast(dict[str, Any], answer.get("metadata") or {})
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about a FineTuneJob (what `kubectl describe` lists). Best effort:
        an Event that cannot be written is logged, never retried."""
        meta = obj.get("metadata", {})
        now = datetime.now(UTC).isoformat()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta.get('name', 'finetunejob')}.",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "finetune-operator"},
            "reportingComponent": "finetune.dev/operator",
            "reportingInstance": self.identity,
        }
        try:
            self.request("create", "POST", collection("Event", meta.get("namespace", "")), event)
        except ApiException as error:
            log.warning("could not record the event %s: %s", reason, error.reason)

    def delete_finetunejob(self, namespace: str, name: str) -> None:
        try:
            self.request(
                "delete",
                "DELETE",
                f"{collection('FineTuneJob', namespace)}/{name}",
                {"propagationPolicy": "Background"},
            )
        except ApiException as error:
            if error.status != 404:
                raise
