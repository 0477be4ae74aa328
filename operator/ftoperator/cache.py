"""What the operator has seen: the informer cache every reconcile pass reads.

`Cache` is an informer cache fed by the watches (informer.py's: FineTuneJobs, progress
objects, Jobs, pods and nodes): FineTuneJobs by (namespace, name), their Jobs,
pods and progress reports grouped by owning FineTuneJob, and the nodes that are not ready.
Reconciling reads only from here, so one pass costs no API reads. Jobs and pods are kept
as the passes read them (slim_child), not whole.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ftapi.progress import (
    ProgressReport,
    RankReport,
    UnreadableReport,
    read_rank_report,
    read_report,
)
from ftapi.skew import defaulted

from .kueue import QueueState
from .merge_patch import apply_merge_patch
from .nodes import NodeHealth

log = logging.getLogger("ftoperator")

Key = tuple[str, str]  # (namespace, FineTuneJob name)


@dataclass
class Cache:
    jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    """FineTuneJobs (whole objects)."""
    batch_jobs: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    pods: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    progress: dict[Key, tuple[str, ProgressReport]] = field(default_factory=dict)
    """The trainer's last report (parsed once, when its FineTuneJobProgress changes), with
    the UID of the FineTuneJob that owns the object it came from."""
    ranks: dict[Key, dict[int, RankReport]] = field(default_factory=dict)
    """Each rank's own last report, from the same object (read with `progress`)."""
    progress_errors: dict[Key, tuple[str, str]] = field(default_factory=dict)
    """Why the newest report could not be read (with its owner's UID): the last readable
    one stays in `progress`, and the status says the reports stopped being readable."""
    nodes: NodeHealth = field(default_factory=NodeHealth)
    """Which nodes are NotReady or gone, and since when (nodes.py)."""
    create_failures: dict[Key, str] = field(default_factory=dict)
    """Why the Job controller cannot create a job's pods (its FailedCreate Events), read
    only while a Job lacks pods."""
    queue_states: dict[Key, QueueState] = field(default_factory=dict)
    """Why Kueue holds a queued job (its Workload's conditions), read only while it waits."""
    unconfirmed: dict[tuple[Key, str], float] = field(default_factory=dict)
    """Jobs held from their create's answer whose watch event has not come yet, with the
    monotonic time of the create (observe_created_job)."""
    on_node: dict[str, dict[Key, int]] = field(default_factory=dict)
    """node -> the jobs with pods bound there (how many pods each), kept from the cached
    pods' nodeName, so that a node's change finds its jobs without scanning every pod: a
    cost that grows with the jobs and recurs whenever nodes flap (docs/results/history.md)."""

    def observe_job(self, key: Key, body: dict[str, Any] | None) -> None:
        if body is None:
            self.jobs.pop(key, None)
        else:
            self.jobs[key] = slim(body)

    def observe_child(self, kind: str, key: Key, name: str, body: dict[str, Any] | None) -> None:
        """A Job or pod labelled with its FineTuneJob; body None when it was deleted."""
        group = self.batch_jobs if kind == "Job" else self.pods
        if kind == "Job":
            self.unconfirmed.pop((key, name), None)
        children = group.setdefault(key, {})
        before = children.get(name)
        if body is None:
            children.pop(name, None)
            if not children:
                group.pop(key, None)
        else:
            children[name] = slim_child(kind, body)
        if kind == "Pod":
            self._rebind(key, _node_of(before), _node_of(body))

    def _rebind(self, key: Key, before: str | None, node: str | None) -> None:
        """Keep on_node in step with one pod of `key` moving from `before` to `node` (None:
        unbound, or not there)."""
        if before == node:
            return
        if before is not None:
            counts = self.on_node[before]
            counts[key] -= 1
            if not counts[key]:
                del counts[key]
                if not counts:
                    del self.on_node[before]
        if node is not None:
            counts = self.on_node.setdefault(node, {})
            counts[key] = counts.get(key, 0) + 1

    def observe_created_job(self, key: Key, name: str, body: dict[str, Any]) -> None:
        """A Job this process has just created, as the API server answered the create: held
        until its watch event arrives (seconds later in a burst), so that the passes in
        between do not take the cache for behind and ask the API server (a GET and a pod
        list per new job; docs/results/history.md, "Requests per job"). A watch event that came
        first is as new or newer: it stays. One that never comes (the Job deleted at once,
        before this answer was held) is caught by unconfirmed_for()."""
        children = self.batch_jobs.setdefault(key, {})
        if name not in children:
            children[name] = slim_child("Job", body)
            self.unconfirmed[(key, name)] = time.monotonic()

    def unconfirmed_for(self, key: Key, name: str) -> float:
        """Seconds since a Job held from its create's answer was created, while no watch
        event has confirmed it; 0 for a Job seen by the watch (or not held)."""
        created = self.unconfirmed.get((key, name))
        return 0.0 if created is None else time.monotonic() - created

    def observe_progress(
        self, key: Key, text: str | None, owner_uid: str = "", ranks: Any = None
    ) -> bool:
        """Whether the cache changed: a job's FineTuneJobProgress is created without a
        report (by the operator, with the job's other children), and that event alone is
        no reason to look at the job again."""
        if not text:
            held = (
                self.progress.pop(key, None),
                self.ranks.pop(key, None),
                self.progress_errors.pop(key, None),
            )
            return held != (None, None, None)
        try:
            report = read_report(text)
        except UnreadableReport as error:
            log.warning("unreadable progress report for %s/%s: %s", *key, error)
            self.progress_errors[key] = (owner_uid, str(error))
            return True
        self.progress_errors.pop(key, None)
        self.progress[key] = (owner_uid, report)
        self.ranks[key] = rank_reports(ranks, key)
        return True

    def progress_of(self, key: Key) -> ProgressReport | None:
        """The last report of this FineTuneJob itself: from an object its UID owns (not
        one left by a deleted job of the same name, nor one pointing at another job)."""
        owner_uid, report = self.progress.get(key, ("", None))
        return report if self._owns(key, owner_uid) else None

    def progress_error_of(self, key: Key) -> str | None:
        """Why this job's newest report could not be read, if it could not."""
        owner_uid, error = self.progress_errors.get(key, ("", None))
        return error if self._owns(key, owner_uid) else None

    def _owns(self, key: Key, owner_uid: str) -> bool:
        uid = (self.jobs.get(key) or {}).get("metadata", {}).get("uid")
        return bool(uid) and owner_uid == uid

    def ranks_of(self, key: Key) -> dict[int, RankReport]:
        """Each rank's last report, from the same object as progress_of (else none)."""
        return self.ranks.get(key, {}) if self.progress_of(key) is not None else {}

    def keys_on_nodes(self, nodes: set[str]) -> list[Key]:
        """FineTuneJobs with a pod on one of these nodes (to look at when a node changes)."""
        return list(dict.fromkeys(key for node in nodes for key in self.on_node.get(node, ())))


def _node_of(pod: dict[str, Any] | None) -> str | None:
    node = ((pod or {}).get("spec") or {}).get("nodeName")
    return str(node) if node else None


def slim(body: dict[str, Any]) -> dict[str, Any]:
    """The object as the cache keeps it: without metadata.managedFields (nearly half of an
    object's size, and never read here; docs/results/history.md), and compact()."""
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and "managedFields" in metadata:
        body = {**body, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}
    compacted: dict[str, Any] = compact(body)
    return compacted


def as_written(
    body: dict[str, Any],
    status_patch: dict[str, Any],
    metadata: dict[str, Any],
    status_schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A FineTuneJob as a status write of this operator left it: `body`, the object the
    patch was made against, with the patch applied to its status, the CRD's defaults of
    `status_schema` filled in (as the API server fills them: `restarts: 0` where the patch
    had none) and the metadata the API server answered (its new resourceVersion). What the
    API server stored, unless someone else wrote the status in between: then the watch
    brings the stored object soon after (Controller._freshest)."""
    metadata = {k: v for k, v in metadata.items() if k != "managedFields"}
    status = apply_merge_patch(body.get("status") or {}, status_patch)
    if status_schema is not None:  # defaulted() fills in place: a copy, not the cache's
        status = defaulted(status_schema, copy.deepcopy(status))
    return {**body, "metadata": compact(metadata), "status": compact(status)}


# Strings up to this long are shared between the cached objects (compact).
_SHARED_STRING_LENGTH = 40


def compact(value: Any) -> Any:
    """A copy of a decoded JSON value whose keys and short strings are shared with every
    other cached object's (sys.intern). Each watch event is decoded on its own, so every
    job's objects would hold their own copies of "metadata", "status", "Running", their
    label keys and values: sharing them halves a cached FineTuneJob for a little CPU per
    event (docs/results/history.md). Interned strings no longer referenced are freed
    (mortal)."""
    if isinstance(value, dict):
        return {_intern(k): compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    if isinstance(value, str) and len(value) <= _SHARED_STRING_LENGTH:
        return sys.intern(value)
    return value


def _intern(key: Any) -> Any:
    return sys.intern(key) if isinstance(key, str) else key


# What the passes read of a Job's pod template: the trainer container's image and env, from
# which config.settings_of reads back the settings an attempt was made with.
_TEMPLATE_CONTAINER_FIELDS = ("name", "image", "env")


def slim_child(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """A Job or pod as the passes read it: its metadata (less managedFields) and status
    whole; of a pod's spec only nodeName (which node it runs on), of a Job's spec all but
    the pod template, and of that only the containers' name, image and env. The rest (the
    template's volumes, commands, resources, security contexts, tolerations; the pod's own
    copy of all of them) is never read and was most of what a running job held here: kept,
    it takes the operator past its memory target (docs/results/history.md)."""
    spec = body.get("spec")
    if not isinstance(spec, dict):
        return slim(body)
    if kind == "Pod":
        kept = {k: v for k, v in spec.items() if k == "nodeName"}
    else:
        kept = {k: v for k, v in spec.items() if k != "template"}
        template = spec.get("template")
        containers = ((template or {}).get("spec") or {}).get("containers")
        if isinstance(containers, list):
            kept["template"] = {
                "spec": {
                    "containers": [
                        {k: c[k] for k in _TEMPLATE_CONTAINER_FIELDS if k in c}
                        for c in containers
                        if isinstance(c, dict)
                    ]
                }
            }
    return slim({**body, "spec": kept})


def node_ready(node: dict[str, Any]) -> bool:
    for condition in node.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def rank_reports(found: Any, key: Key) -> dict[int, RankReport]:
    """The `ranks` map of a FineTuneJobProgress, parsed; an entry that does not parse, or
    whose key is not its own rank, is logged and left out."""
    reports: dict[int, RankReport] = {}
    if not isinstance(found, dict):
        return reports
    for name, text in found.items():
        try:
            report = read_rank_report(text if isinstance(text, str) else "")
        except UnreadableReport:
            report = None
        if report is None or str(report.rank) != name:
            log.warning("ignoring a malformed rank report %r for %s/%s", name, *key)
            continue
        reports[report.rank] = report
    return reports
