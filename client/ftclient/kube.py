"""The cluster, as the client reaches it: a thin adapter over the kubernetes client, with the
user's own kubeconfig and rights (never the operator's). Every call answers in seconds or
raises UnreachableError: a laptop off the VPN must not hang."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from typing import Any

from ftapi.constants import GROUP, PLURAL, VERSION

from .errors import AlreadyExistsError, ClientError, NotFoundError, UnreachableError

FIELD_MANAGER = "finetune-client"
LABEL_JOB = "finetune.dev/job-name"
LABEL_ATTEMPT = "finetune.dev/attempt"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
TRAINER_CONTAINER = "trainer"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
# A followed log may be quiet for long (a large model loading): the client sets no limit
# of its own (the kubernetes client takes a number, not None).
FOLLOW_TIMEOUT = 7 * 24 * 3600.0


class Kube:
    """One namespace of one cluster."""

    def __init__(
        self,
        *,
        context: str | None = None,
        namespace: str | None = None,
        kubeconfig: str | None = None,
    ) -> None:
        import os

        from kubernetes import client, config

        # Read now, not when the kubernetes package was imported (its default is fixed then).
        kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
        try:
            contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=kubeconfig
            )
        except (config.ConfigException, OSError) as exc:
            contexts, current = [], None
            if kubeconfig or context:
                raise ClientError(f"cannot read the kubeconfig: {exc}") from None
        if current is None and not contexts:
            try:  # a notebook in a pod: its ServiceAccount
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                raise ClientError(
                    "no kubeconfig (set KUBECONFIG or ~/.kube/config) and not in a pod"
                ) from None
            self.api = client.ApiClient()
            self.context = "in-cluster"
            self.namespace = namespace or _pod_namespace()
        else:
            chosen = (
                next((c for c in contexts if c["name"] == context), None) if context else current
            )
            if chosen is None:
                names = ", ".join(c["name"] for c in contexts)
                raise ClientError(f"no context {context!r} in the kubeconfig (it has: {names})")
            self.api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=chosen["name"]
            )
            self.context = chosen["name"]
            self.namespace = namespace or chosen.get("context", {}).get("namespace") or "default"
        self.api.configuration.retries = 0  # urllib3's retries would triple a dead server's wait
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.server = self.api.configuration.host

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", (CONNECT_TIMEOUT, READ_TIMEOUT))
        try:
            return function(*args, **kwargs)
        except ApiException as exc:
            raise api_error(what, exc, self.namespace) from None
        except (HTTPError, OSError) as exc:
            raise UnreachableError(
                f"the cluster at {self.server} (context {self.context}) did not answer: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply (this client owns the fields it sets; a later `kubectl apply
        --server-side` of the same file sees no conflict)."""
        name = manifest["metadata"]["name"]
        result: dict[str, Any] = self._call(
            f"applying FineTuneJob {name}",
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            manifest,
            field_manager=FIELD_MANAGER,
            _content_type="application/apply-patch+yaml",
        )
        return result

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except NotFoundError:
            return False
        return True

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            f"reading FineTuneJob {name}",
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
        )
        return result

    def list_jobs(self, *, all_namespaces: bool = False) -> list[dict[str, Any]]:
        if all_namespaces:
            found = self._call(
                "listing FineTuneJobs",
                self.custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
            )
        else:
            found = self._call(
                "listing FineTuneJobs",
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
            )
        items: list[dict[str, Any]] = found.get("items", [])
        return items

    def delete(self, name: str) -> None:
        self._call(
            f"deleting FineTuneJob {name}",
            self.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            propagation_policy="Background",
        )

    def suspend(self, name: str) -> dict[str, Any]:
        patch = {"spec": {"scheduling": {"suspend": True}}}
        result: dict[str, Any] = self._call(
            f"suspending FineTuneJob {name}",
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            patch,
            _content_type="application/merge-patch+json",
        )
        return result

    def events(self, name: str) -> list[Any]:
        """The FineTuneJob's Events, oldest first."""
        found = self._call(
            f"reading the Events of {name}",
            self.core.list_namespaced_event,
            self.namespace,
            field_selector=f"involvedObject.name={name},involvedObject.kind=FineTuneJob",
        )
        return sorted(found.items, key=_event_time)

    def pods(self, name: str, attempt: int | None = None) -> list[Any]:
        selector = f"{LABEL_JOB}={name}"
        if attempt is not None:
            selector += f",{LABEL_ATTEMPT}={attempt}"
        found = self._call(
            f"listing the pods of {name}",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=selector,
        )
        return list(found.items)

    def stream_log(self, pod: str, *, follow: bool) -> Iterator[str]:
        """The trainer container's log, line by line (to its end, or while it runs)."""
        response = self._call(
            f"reading the log of pod {pod}",
            self.core.read_namespaced_pod_log,
            pod,
            self.namespace,
            container=TRAINER_CONTAINER,
            follow=follow,
            _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT, FOLLOW_TIMEOUT if follow else READ_TIMEOUT),
        )
        pending = b""
        try:
            for chunk in response.stream(64 * 1024, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if pending:
                yield pending.decode("utf-8", "replace")
        finally:
            response.release_conn()


def _event_time(event: Any) -> Any:
    from datetime import datetime

    moment = event.last_timestamp or event.event_time or event.first_timestamp
    return moment or datetime.min.replace(tzinfo=UTC)


def _pod_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as reader:
            return reader.read().strip() or "default"
    except OSError:
        return "default"


def api_error(what: str, exc: Any, namespace: str) -> ClientError:
    """The API server's refusal in words: its own message (the CRD's CEL rules and schema
    name the field), never the response headers."""
    import contextlib
    import json

    message = exc.reason or ""
    with contextlib.suppress(ValueError):
        message = json.loads(exc.body or "{}").get("message") or message
    if exc.status == 404:
        if "the server could not find the requested resource" in message:
            return ClientError(
                f"{what}: the cluster does not serve FineTuneJobs (install the CRDs: "
                "kubectl apply --server-side -f crds/)"
            )
        return NotFoundError(f"{what}: no such FineTuneJob in namespace {namespace}")
    if exc.status == 409:
        return AlreadyExistsError(f"{what}: {message}")
    if exc.status in (401, 403):
        return ClientError(f"{what}: not allowed ({exc.status}): {message}")
    if exc.status == 422:
        return ClientError(f"{what}: the API server refused it: {message}")
    return ClientError(f"{what}: {exc.status} {message}")


# What a user needs in a namespace for every client command: the first rule comes with the
# chart's `<release>-edit` ClusterRole (aggregated into Kubernetes' admin and edit roles), the
# second with `edit` itself. The integration tests run the client with exactly these.
USER_RULES: tuple[dict[str, list[str]], ...] = (
    {
        "apiGroups": [GROUP],
        "resources": [PLURAL],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods", "pods/log", "events"], "verbs": ["get", "list"]},
)
