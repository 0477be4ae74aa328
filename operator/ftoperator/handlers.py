"""Watch streams in, cache updates and queued keys out. No decisions here.

kopf's handlers take the FineTuneJobs (an event handler: each event into the cache and the
work queue) and the CRD, and run the lifecycle (login, startup, cleanup). The children, the
trainer's FineTuneJobProgress objects and the nodes come from informers (informer.py)
started and stopped with kopf: they bring about a dozen events per job (seven of its Job and
pods at its start, the trainer's reports, the nodes' heartbeats), where kopf's handling of an
event costs several times an informer's (docs/operator.md, "What it watches"). So do the
metadata of the job's other children (ConfigMap, Service, ServiceAccount, Role, RoleBinding,
NetworkPolicy), so that one edited or deleted while the attempt runs is put back at once,
with no periodic reads. kopf's handlers are coroutines on purpose: kopf runs plain
functions in worker threads, and the cache and the queue belong to the event loop (no locks,
no races with the passes); the informers deliver on the loop too.

Each watched kind feeds the controller's cache and queues the FineTuneJob it belongs to;
the controller's workers do the rest (controller.py). kopf writes nothing to the objects
(no finalizers, no annotations): only event handlers are registered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

import kopf
from kopf._cogs.structs.references import NamespaceName, match_namespace
from kubernetes import client

from ftapi.constants import CRD_NAME, GROUP, KIND, PLURAL, VERSION
from ftapi.progress import RANKS_FIELD, REPORT_FIELD

from .cache import node_ready
from .children import LABEL_JOB, Names
from .controller import Controller
from .informer import Deliver, Informer
from .kube import collection

log = logging.getLogger("ftoperator")
# The children watched by informers, only those labelled with their FineTuneJob (the API
# server filters: the cluster's other workloads are never sent).
CHILD_KINDS = ("Job", "Pod")
# The attempt's prerequisites (children.Children.stages), watched for their metadata only:
# a change or deletion is all the controller needs to hear of (Controller.child_changed).
# The NetworkPolicy only where the operator creates them (--network-policy).
PREREQUISITE_KINDS = ("ConfigMap", "Service", "ServiceAccount", "Role", "RoleBinding")
# A job's Job and pod events start a pass within this long, one pass for all of them
# (WorkQueue.add_batched): a new job's first events cost a few passes, not one each
# (docs/operator.md, "What costs a pass").
CHILD_BATCH_SECONDS = 1.0


def register(
    registry: kopf.OperatorRegistry,
    controller: Controller,
    configuration: client.Configuration,
    namespaces: Sequence[str] = (),
) -> None:
    """`namespaces`: as kopf's (names or globs; none: every namespace)."""
    count = controller.metrics.count_watch_event
    informers = watch_informers(configuration, namespaces, controller)
    running: list[asyncio.Task[None]] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In-cluster ServiceAccount or KUBECONFIG, as the kubernetes client finds them.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our own Events say what happened
        settings.watching.server_timeout = 270
        settings.watching.client_timeout = 300
        settings.networking.request_timeout = 60
        settings.persistence.diffbase_storage = NoDiffBase()
        controller.queue.start()
        running.extend(asyncio.create_task(informer.run()) for informer in informers)

    # The FineTuneJobs: kopf's watch, scoped to the namespaces kopf was given. Its initial
    # list delivers events without a type: each is the job as it is (ADDED).
    observe_job = job_observer(controller)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def finetunejob(event: kopf.RawEvent, **_: Any) -> None:
        observe_job(str(event.get("type") or "ADDED"), _body(event))

    @kopf.on.cleanup(registry=registry)
    async def shutdown(**_: Any) -> None:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await controller.stop()

    # The stored CRD, for what a field newer than this operator defaults to (ftapi.skew).
    # The chart's ClusterRole already lets kopf list and watch CRDs (its resource discovery).
    @kopf.on.event(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        field="metadata.name",
        value=CRD_NAME,
        registry=registry,
    )
    async def crd(event: kopf.RawEvent, **_: Any) -> None:
        count("CustomResourceDefinition")
        controller.observe_crd(None if event.get("type") == "DELETED" else _body(event))


def job_observer(controller: Controller) -> Deliver:
    """What kopf's FineTuneJob events go to: the cache, and a pass of the job unless the
    event is what its last pass planned from (the echo of its own status write)."""
    cache, queue, count = controller.cache, controller.queue, controller.metrics.count_watch_event

    def observe(event: str, body: dict[str, Any]) -> None:
        count(KIND)
        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        deleted = event == "DELETED"
        cache.observe_job(key, None if deleted else body)
        if not deleted and not controller.planned_from(key, KIND, key[1], body):
            queue.add(key)

    return observe


def progress_observer(controller: Controller) -> Deliver:
    """What the FineTuneJobProgress objects' informer delivers to. Tied to its job by the
    controller ownerReference and the name the operator gave it, never by labels; the
    controller also checks the owner's UID (cache.py)."""
    cache, queue, count = controller.cache, controller.queue, controller.metrics.count_watch_event

    def observe(event: str, body: dict[str, Any]) -> None:
        count("FineTuneJobProgress")
        metadata = body.get("metadata") or {}
        owner = _controller(body)
        if owner is None or metadata.get("name") != Names(owner[0], 0).progress:
            return
        key = (str(metadata.get("namespace") or ""), owner[0])
        deleted = event == "DELETED"
        report, ranks = (None, None) if deleted else (body.get(REPORT_FIELD), body.get(RANKS_FIELD))
        changed = cache.observe_progress(key, report, owner[1], ranks)
        # The trainer's reports are not edits; a deletion is (a prerequisite of the attempt).
        if (deleted and controller.child_changed(key, "DELETED", body)) or changed:
            queue.add(key)

    return observe


def child_observer(kind: str, controller: Controller) -> Deliver:
    """What an informer of `kind` delivers to: the cache, and a batched pass of the job."""
    cache, queue, count = controller.cache, controller.queue, controller.metrics.count_watch_event

    def observe(event: str, body: dict[str, Any]) -> None:
        count(kind)  # before the check below: what the API server sent
        metadata = body.get("metadata") or {}
        job = (metadata.get("labels") or {}).get(LABEL_JOB)
        if job is None:  # not ours (the watch's label selector never sends one)
            return
        key, name = (metadata.get("namespace") or "", job), str(metadata.get("name"))
        deleted = event == "DELETED"
        cache.observe_child(kind, key, name, None if deleted else body)
        if deleted or not controller.planned_from(key, kind, name, body):
            queue.add_batched(key, CHILD_BATCH_SECONDS)

    return observe


def node_observer(controller: Controller) -> Deliver:
    """What the nodes' informer delivers to: each node's readiness (nodes.py), and a pass of
    the jobs with pods on one whose readiness changed: at once when it was deleted or is
    Ready again, when it would count as lost when it turned NotReady."""
    cache, queue, count = controller.cache, controller.queue, controller.metrics.count_watch_event

    def observe(event: str, body: dict[str, Any]) -> None:
        count("Node")
        name = str((body.get("metadata") or {}).get("name") or "")
        ready = None if event == "DELETED" else node_ready(body)
        nodes = cache.nodes
        if nodes.observe(name, ready, time.monotonic()):
            for key in cache.keys_on_nodes({name}):
                if ready is False:
                    queue.add_after(key, nodes.lost_after + 0.5)
                else:
                    queue.add(key)

    return observe


def prerequisite_observer(kind: str, controller: Controller) -> Deliver:
    """What an informer of a prerequisite's metadata delivers to: a batched pass of the job
    when the controller must verify its children."""
    queue, count = controller.queue, controller.metrics.count_watch_event

    def observe(event: str, body: dict[str, Any]) -> None:
        count(kind)
        metadata = body.get("metadata") or {}
        job = (metadata.get("labels") or {}).get(LABEL_JOB)
        if job is None:
            return
        key = (metadata.get("namespace") or "", job)
        if controller.child_changed(key, event, body):
            queue.add_batched(key, CHILD_BATCH_SECONDS)

    return observe


def watch_informers(
    configuration: client.Configuration, namespaces: Sequence[str], controller: Controller
) -> list[Informer]:
    """One informer per kind and watched namespace; for globs (or none), one per kind for
    every namespace, delivering only what the globs match (kopf's own matching). The
    progress objects whole, all of them; the Jobs and pods whole, those labelled with their
    FineTuneJob; the prerequisites' metadata only, labelled."""
    plain = all(not set(pattern) & set("*?!,") for pattern in namespaces)
    scopes: list[str | None] = list(namespaces) if namespaces and plain else [None]

    def accept(namespace: str) -> bool:
        name = NamespaceName(namespace)
        return any(match_namespace(name, pattern) for pattern in namespaces)

    filtered = accept if namespaces and not plain else None
    prerequisites: tuple[str, ...] = PREREQUISITE_KINDS
    if controller.settings.network_policy:
        prerequisites += ("NetworkPolicy",)
    # (kind, label selector, where its events go, metadata only, kept for a vanished one)
    watched: list[tuple[str, str | None, Deliver, bool, tuple[str, ...]]] = [
        # progress_observer ties a progress object to its job by its ownerReference, so one
        # deleted while the watch was down is delivered with it.
        ("FineTuneJobProgress", None, progress_observer(controller), False, ("ownerReferences",)),
        *((kind, LABEL_JOB, child_observer(kind, controller), False, ()) for kind in CHILD_KINDS),
        *(
            (kind, LABEL_JOB, prerequisite_observer(kind, controller), True, ())
            for kind in prerequisites
        ),
    ]
    # The nodes are the cluster's, whatever namespaces are watched: all of them, whole (the
    # readiness is in their status).
    nodes = Informer(
        configuration, "Node", collection("Node", None), None, node_observer(controller)
    )
    return [
        Informer(
            configuration,
            kind,
            collection(kind, scope),
            selector,
            observe,
            accept=filtered,
            metadata_only=metadata_only,
            keep=keep,
        )
        for kind, selector, observe, metadata_only, keep in watched
        for scope in scopes
    ] + [nodes]


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds every watched object's "essence" (a deep copy of the whole body) on every
    watch event, for change-detecting handlers (on.create/update/resume) to diff against.
    This operator registers event handlers only, so that copy is never read, and making it
    for every event of a burst is CPU spent for nothing (docs/results/history.md). Nothing is
    stored on the objects either way (no annotations)."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _body(event: kopf.RawEvent) -> dict[str, Any]:
    return cast(dict[str, Any], event["object"])


def _controller(body: dict[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the FineTuneJob that controls this object, if one does."""
    for reference in (body.get("metadata") or {}).get("ownerReferences") or []:
        if (
            reference.get("controller")
            and reference.get("kind") == KIND
            and str(reference.get("apiVersion", "")).split("/")[0] == GROUP
        ):
            return str(reference.get("name")), str(reference.get("uid"))
    return None
