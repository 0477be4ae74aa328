"""The controller's own decisions, apart from the pure reconcile(): when it distrusts its
cache and asks the API server (pods_behind: the operator restarted and the Job's watch event
arrived before its pods'; a crash test found failures reported as BackoffLimitExceeded
instead of their exit code that way), and how it refuses jobs before reconciling them."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from ftapi import parse_job
from ftoperator import controller as controller_module
from ftoperator.cache import Cache, as_written, compact
from ftoperator.children import LABEL_ATTEMPT, LABEL_JOB, Names, build_children
from ftoperator.config import Settings, settings_of, with_recorded
from ftoperator.controller import UNCONFIRMED_JOB_SECONDS, Controller, pods_behind
from ftoperator.kube import Kube
from ftoperator.planner import CreateAttempt, DeleteSelf
from fttestkit.builders import make_job


def _job(active: int = 0, succeeded: int = 0, failed: int = 0, *, condition: str | None = None,
         uncounted_failed: int = 0) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {"active": active, "succeeded": succeeded, "failed": failed}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True"}]
    if uncounted_failed:
        status["uncountedTerminatedPods"] = {
            "failed": [f"uid-{i}" for i in range(uncounted_failed)]
        }
    return {"status": status}


def _pod(phase: str) -> dict[str, Any]:
    return {"status": {"phase": phase}}


@pytest.mark.parametrize(
    ("job", "cached", "behind"),
    [
        (_job(), [], False),  # no pods yet, none known
        (_job(active=2), [_pod("Running"), _pod("Running")], False),
        (_job(active=2), [_pod("Running")], True),  # one pod's event is late
        (_job(active=2), [], True),  # right after a restart: Job seen, pods not yet
        (_job(failed=1, condition="Failed"), [], True),
        (_job(failed=1, condition="Failed"), [_pod("Failed")], False),
        (_job(active=1, condition="FailureTarget"), [_pod("Running")], True),  # failure not seen
        (_job(uncounted_failed=1), [], True),
        (_job(succeeded=2, condition="Complete"), [_pod("Succeeded"), _pod("Succeeded")], False),
    ],
    ids=["empty", "in-step", "one-late", "all-late", "failed-unseen", "failed-seen",
         "failure-target", "uncounted", "complete"],
)  # fmt: skip
def test_pods_behind(job: dict[str, Any], cached: list[dict[str, Any]], behind: bool) -> None:
    assert pods_behind(job, cached) is behind


# --- refused jobs: the controller reads their TTL (found in review: they were never deleted) --


def _controller(**settings: Any) -> Controller:
    return Controller(cast(Kube, None), Settings(**settings))  # plan() never calls the API


def _body(manifest: dict[str, Any]) -> dict[str, Any]:
    return {**manifest, "metadata": {**manifest["metadata"], "namespace": "ns", "generation": 1}}


@pytest.mark.parametrize("ttl", [None, 0, 600])
def test_a_spec_that_does_not_parse_is_refused_and_its_raw_ttl_applies(ttl: int | None) -> None:
    # A value the CRD schema cannot check (here: only a rule of another layer refuses it).
    job = make_job("odd").set("method.lora.r", -1)
    if ttl is not None:
        job.set("runPolicy.ttlSecondsAfterFinished", ttl)
    parsed, plan = _controller().plan(("ns", "odd"), _body(job.obj()))
    assert parsed is None
    assert (plan.status.phase, plan.status.failure_reason) == ("Failed", "InvalidSpec")
    assert "spec.method.lora.r" in (plan.status.message or "")
    assert plan.actions == ([DeleteSelf()] if ttl == 0 else [])
    assert plan.requeue_after == (pytest.approx(600, abs=5) if ttl == 600 else None)


def test_an_image_the_policy_refuses_fails_without_children_and_its_ttl_applies() -> None:
    job = make_job("foreign").set("resources.image", "docker.io/x/trainer:1")
    job.set("runPolicy.ttlSecondsAfterFinished", 0)
    controller = _controller(allowed_registries=("registry.internal/ml/",))
    parsed, plan = controller.plan(("ns", "foreign"), _body(job.obj()))
    assert parsed is not None
    assert (plan.status.phase, plan.status.failure_reason) == ("Failed", "ImageNotAllowed")
    assert plan.actions == [DeleteSelf()]  # and no CreateAttempt


def test_the_image_policy_applies_to_every_attempt() -> None:
    """A restart after the allow-list changed creates no new attempt from a refused image;
    a Job that already runs is left alone."""
    job = make_job("later").set("resources.image", "registry.internal/ml-sandbox/trainer:1")
    controller = _controller(allowed_registries=("registry.internal/ml",))
    body = _body(job.obj())
    body["status"] = {"phase": "Restarting", "attempt": 1, "restarts": 1}
    _, plan = controller.plan(("ns", "later"), body)
    assert (plan.status.phase, plan.status.failure_reason) == ("Failed", "ImageNotAllowed")
    assert not any(type(a).__name__ == "CreateAttempt" for a in plan.actions)


def test_the_first_attempt_records_the_operator_settings_and_restarts_keep_them() -> None:
    job = make_job("pinned")
    first = _controller(default_image="registry.internal/ml/trainer:1.0",
                        default_s3_endpoint="http://minio.storage:9000")  # fmt: skip
    _, plan = first.plan(("ns", "pinned"), _body(job.obj()))
    assert any(isinstance(a, CreateAttempt) for a in plan.actions)
    recorded = plan.status.settings
    assert recorded is not None
    assert (recorded.image, recorded.s3_endpoint) == (
        "registry.internal/ml/trainer:1.0", "http://minio.storage:9000",
    )  # fmt: skip
    # After an operator upgrade with new defaults, a restart runs what the job started with.
    upgraded = _controller(default_image="registry.internal/ml/trainer:2.0",
                           default_s3_endpoint="http://ceph.storage:7480")  # fmt: skip
    used = with_recorded(upgraded.settings, recorded)
    children = build_children(parse_job(job.obj()), attempt=1, settings=used)
    (container,) = children.job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.internal/ml/trainer:1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.storage:9000"
    body = _body(job.obj())
    body["status"] = {**plan.status.model_dump(mode="json", by_alias=True, exclude_none=True),
                      "phase": "Restarting", "attempt": 1, "restarts": 1}  # fmt: skip
    _, restart = upgraded.plan(("ns", "pinned"), body)
    assert restart.status.settings == recorded  # never overwritten


# --- a new job's first status waits for its pods (controller.py's docstring) ------------------


@pytest.mark.parametrize(
    ("spec_endpoint", "default_endpoint", "recorded_endpoint"),
    [(None, "http://minio.storage:9000", "http://minio.storage:9000"),
     (None, None, None),
     # The spec's own endpoint: the default was not given to the pods (and does not matter).
     ("http://own:9000", "http://minio.storage:9000", None)],
    ids=["default-endpoint", "no-endpoint", "own-endpoint"],
)  # fmt: skip
def test_the_settings_a_job_was_made_with_are_read_back_from_it(
    spec_endpoint: str | None, default_endpoint: str | None, recorded_endpoint: str | None
) -> None:
    job = make_job("made")
    if spec_endpoint:
        job.set("output.s3", {"endpoint": spec_endpoint})
    settings = Settings(default_image="registry.internal/ml/trainer:1.0",
                        default_s3_endpoint=default_endpoint)  # fmt: skip
    batch_job = build_children(parse_job(job.obj()), attempt=0, settings=settings).job
    used = settings_of(batch_job)
    assert used is not None
    assert (used.image, used.s3_endpoint) == ("registry.internal/ml/trainer:1.0", recorded_endpoint)
    # What a later attempt made with them runs the same image against the same storage.
    again = build_children(
        parse_job(job.obj()), attempt=1, settings=with_recorded(Settings(), used)
    )
    assert _trainer(again.job)["image"] == _trainer(batch_job)["image"]
    assert _env(again.job).get("AWS_ENDPOINT_URL_S3") == _env(batch_job).get("AWS_ENDPOINT_URL_S3")
    assert settings_of({"spec": {"template": {"spec": {"containers": []}}}}) is None


def _trainer(batch_job: dict[str, Any]) -> dict[str, Any]:
    (container,) = batch_job["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(batch_job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in _trainer(batch_job)["env"]}


def test_the_cache_keeps_of_a_job_and_its_pod_what_the_passes_read() -> None:
    """slim_child: the status and metadata whole, the settings still readable from the Job,
    the pod's node; the pod template's bulk dropped (two thirds of a running job's cache)."""
    settings = Settings(default_image="registry.internal/ml/trainer:1.0",
                        default_s3_endpoint="http://minio.storage:9000")  # fmt: skip
    batch_job = build_children(parse_job(make_job("kept").obj()), attempt=0,
                               settings=settings).job  # fmt: skip
    batch_job["metadata"]["managedFields"] = [{"manager": "kube-controller-manager"}]
    batch_job["spec"]["suspend"] = True
    batch_job["status"] = {"active": 1, "conditions": [{"type": "Suspended", "status": "True"}]}
    template = batch_job["spec"]["template"]
    pod = {"metadata": {**template["metadata"], "name": "kept-0-abc"},
           "spec": {**template["spec"], "nodeName": "gpu-1"},
           "status": {"phase": "Running", "containerStatuses": [{"name": "trainer"}]}}  # fmt: skip
    key, name = ("ns", "kept"), batch_job["metadata"]["name"]
    cache = Cache()
    cache.observe_child("Job", key, name, batch_job)
    cache.observe_child("Pod", key, "kept-0-abc", pod)
    kept, kept_pod = cache.batch_jobs[key][name], cache.pods[key]["kept-0-abc"]
    assert settings_of(kept) == settings_of(batch_job) is not None
    assert kept["status"] == batch_job["status"] and kept["spec"]["suspend"] is True
    assert kept["spec"]["parallelism"] == batch_job["spec"]["parallelism"]
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["labels"] == batch_job["metadata"]["labels"]
    assert "volumes" not in json.dumps(kept)
    assert len(json.dumps(kept)) < len(json.dumps(batch_job)) / 2
    assert kept_pod == {**pod, "spec": {"nodeName": "gpu-1"}}
    assert cache.keys_on_nodes({"gpu-1"}) == [key]
    # A Job held from its create's answer is kept the same way.
    cache.observe_created_job(("ns", "other"), name, batch_job)
    assert cache.batch_jobs["ns", "other"][name] == kept


def test_the_jobs_on_a_node_follow_their_pods_binding_and_deletion() -> None:
    """keys_on_nodes reads an index kept by observe_child: it must drop a job when its last
    pod there goes, and keep it while another of its pods is still bound there."""
    cache = Cache()
    a, b = ("ns", "a"), ("ns", "b")

    def pod(node: str | None) -> dict[str, Any]:
        return {"metadata": {"name": "p"}, "spec": {"nodeName": node} if node else {}}

    cache.observe_child("Pod", a, "a-0-0", pod(None))  # pending: bound nowhere
    assert cache.keys_on_nodes({"n1"}) == []
    cache.observe_child("Pod", a, "a-0-0", pod("n1"))
    cache.observe_child("Pod", a, "a-0-1", pod("n1"))
    cache.observe_child("Pod", b, "b-0-0", pod("n2"))
    assert cache.keys_on_nodes({"n1"}) == [a]
    assert sorted(cache.keys_on_nodes({"n1", "n2", "n3"})) == [a, b]
    cache.observe_child("Pod", a, "a-0-0", None)  # one of a's two pods on n1 deleted
    assert cache.keys_on_nodes({"n1"}) == [a]
    cache.observe_child("Pod", a, "a-0-1", None)
    assert cache.keys_on_nodes({"n1"}) == []
    cache.observe_child("Pod", b, "b-0-0", None)
    assert cache.on_node == {}


def test_cached_objects_share_their_keys_and_short_strings() -> None:
    """compact(): each watch event is decoded on its own; kept, 3000 jobs' objects held
    3000 copies of every key and label. Shared, the values are the same."""
    text = json.dumps({"metadata": {"name": "a" * 50, "labels": {"finetune.dev/job-name": "x"}},
                       "status": {"phase": "Running", "active": 1, "ok": True}})  # fmt: skip
    first, second = compact(json.loads(text)), compact(json.loads(text))
    assert first == second == json.loads(text)
    assert next(iter(first)) is next(iter(second))  # "metadata"
    assert first["status"]["phase"] is second["status"]["phase"]
    (label,) = first["metadata"]["labels"]
    assert label is next(iter(second["metadata"]["labels"]))
    assert first["metadata"]["name"] is not second["metadata"]["name"]  # long: not shared
    assert compact(json.loads(text)) is not compact(json.loads(text))  # copies


def test_a_status_write_is_kept_as_the_patch_applied_with_the_answers_metadata() -> None:
    """Kube.patch_status answers with the metadata alone; what the passes plan from until
    the watch catches up is the body written against, its status patched, the new
    metadata without managedFields, the spec the same object (not a copy)."""
    body = _body(make_job("a").obj())
    body["metadata"].update(uid="u", resourceVersion="5")
    body["status"] = {"phase": "Pending", "attempt": 0, "message": "waiting"}
    answer = {**body["metadata"], "resourceVersion": "9", "managedFields": [{"manager": "x"}]}
    written = as_written(body, {"phase": "Running", "message": None}, answer)
    assert written["status"] == {"phase": "Running", "attempt": 0}
    assert written["metadata"] == {**body["metadata"], "resourceVersion": "9"}
    assert written["spec"] is body["spec"]
    assert body["status"]["phase"] == "Pending"  # the cached body is not changed
    # With the CRD's status schema, its defaults are filled in as the API server does, in
    # a copy: the cached body's nested objects stay as they were.
    body["status"]["progress"] = {"step": 3}
    schema = {"properties": {"restarts": {"type": "integer", "default": 0},
                             "progress": {"type": "object", "properties": {
                                 "percent": {"type": "number", "default": 0.0}}}}}  # fmt: skip
    written = as_written(body, {"phase": "Running"}, answer, schema)
    assert written["status"]["restarts"] == 0
    assert written["status"]["progress"] == {"step": 3, "percent": 0.0}
    assert body["status"]["progress"] == {"step": 3} and "restarts" not in body["status"]


def test_a_status_write_is_planned_from_until_the_watch_shows_its_very_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """resourceVersions are opaque: the object a status write returned is what passes plan
    from until the watch shows that version, whatever the versions look like, and a watch
    that never shows it (one that listed again) is trusted after WRITTEN_KEPT_SECONDS.
    Forgetting a gone job drops all that is kept of it."""
    clock = [1000.0]
    monkeypatch.setattr(controller_module.time, "monotonic", lambda: clock[0])
    controller = Controller(cast(Kube, _ApiServer()), Settings(default_image="img:1"))
    key = ("ns", "a")
    body = _body(make_job("a").obj())

    def at(version: str, phase: str) -> dict[str, Any]:
        metadata = {**body["metadata"], "resourceVersion": version}
        return {**body, "metadata": metadata, "status": {"phase": phase}}

    controller.cache.observe_job(key, at("9", "Pending"))  # an event from before the write
    controller._wrote(controller._state(key), at("10", "Running"))
    assert controller._freshest(key) == at("10", "Running")
    controller.cache.observe_job(key, at("9x", "Pending"))  # not a number: still not ours
    assert controller._freshest(key) == at("10", "Running")
    controller.cache.observe_job(key, at("10", "Running"))  # the write's own event
    assert controller._freshest(key) is controller.cache.jobs[key]
    assert controller._jobs[key].written is None

    controller._wrote(controller._state(key), at("12", "Succeeded"))
    controller.cache.observe_job(key, at("11", "Running"))
    clock[0] += controller_module.WRITTEN_KEPT_SECONDS + 1
    assert controller._freshest(key) == at("11", "Running")  # the watch is trusted now

    controller._state(key).held = controller_module.Held(due=0.0)
    controller._forget(key)
    assert key not in controller._jobs


def test_only_the_most_recently_used_parses_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "PARSE_CACHE_SIZE", 2)
    controller = Controller(cast(Kube, _ApiServer()), Settings(default_image="img:1"))
    bodies = {name: _body(make_job(name).obj()) for name in ("a", "b", "c")}
    parsed_a = controller._parse_once(("ns", "a"), bodies["a"])[0]
    controller._parse_once(("ns", "b"), bodies["b"])
    # A status write brings a new body with an equal spec: no parse again, and the kept
    # signature is the new body's (the old body's copy of the spec can go).
    again = {**bodies["a"], "spec": copy.deepcopy(bodies["a"]["spec"]), "status": {"attempt": 0}}
    assert controller._parse_once(("ns", "a"), again)[0] is parsed_a
    assert dict(controller._jobs["ns", "a"].parsed[0][1])["spec"] is again["spec"]
    controller._parse_once(("ns", "c"), bodies["c"])  # over the size: b, least recently used
    assert list(controller._recent_parses) == [("ns", "a"), ("ns", "c")]
    assert controller._parse_once(("ns", "b"), bodies["b"])[0] is not None  # parsed again


def test_a_job_whose_first_status_was_never_written_records_what_its_job_runs() -> None:
    """The operator died after creating attempt 0, before its held first status, and came
    back with another default image: the status records the image the Job runs."""
    job = make_job("orphan")
    old = Settings(default_image="registry.internal/ml/trainer:1.0")
    batch_job = build_children(parse_job(job.obj()), attempt=0, settings=old).job
    batch_job["metadata"]["uid"] = "job-uid"
    body = _body(job.obj())
    body["metadata"]["uid"] = "ftj-uid"
    batch_job["metadata"]["ownerReferences"] = [{"uid": "ftj-uid", "controller": True}]
    restarted = _controller(default_image="registry.internal/ml/trainer:2.0")
    restarted.cache.observe_child("Job", ("ns", "orphan"), batch_job["metadata"]["name"], batch_job)
    _, plan = restarted.plan(("ns", "orphan"), body)
    assert not any(isinstance(a, CreateAttempt) for a in plan.actions)
    assert plan.status.settings is not None
    assert plan.status.settings.image == "registry.internal/ml/trainer:1.0"


def _held_pass(controller: Controller, stored: dict[str, Any], plan: Any) -> bool:
    planned = plan.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return controller._hold(("ns", "new"), stored, plan, planned)


def test_a_new_jobs_pending_status_is_held_until_its_grace_ends() -> None:
    async def run() -> None:
        controller = _controller()
        controller.first_status_grace_seconds = 0.2
        body = _body(make_job("new").obj())
        _, plan = controller.plan(("ns", "new"), body)
        assert plan.status.phase == "Pending" and any(
            isinstance(a, CreateAttempt) for a in plan.actions
        )
        assert _held_pass(controller, {}, plan)  # the first pass: held
        # The next passes plan from the held status (attempt, settings, conditions)...
        held = controller._with_held_status(("ns", "new"), body)
        assert held["status"]["settings"]["image"] == plan.status.settings.image  # type: ignore[union-attr]
        assert {c["type"] for c in held["status"]["conditions"]} >= {"ResourcesCreated"}
        assert _held_pass(controller, {}, plan)  # still within the grace
        # Its Events wait with it; "Created" is left out when the status is Running.
        held_events = controller._jobs["ns", "new"].held
        assert [e.reason for e in held_events.events] == ["Created"]  # once, not per pass
        assert held_events.events_to_tell("Running") == []
        assert [e.reason for e in held_events.events_to_tell("Pending")] == ["Created"]
        await asyncio.sleep(0.25)
        assert not _held_pass(controller, {}, plan)  # the grace is over: written
        # Something stored meanwhile (another operator's write) wins over what is held.
        stored = {**body, "status": {"phase": "Running"}}
        assert controller._with_held_status(("ns", "new"), stored) is stored
        assert controller._jobs["ns", "new"].held is None

    asyncio.run(run())


def test_only_a_new_jobs_plain_pending_is_held() -> None:
    async def run() -> None:
        controller = _controller()
        body = _body(make_job("new").obj())
        _, plan = controller.plan(("ns", "new"), body)
        assert not _held_pass(controller, {"phase": "Pending"}, plan)  # a status is stored
        blocked = plan.status.model_copy(deep=True)
        blocked.message = "pod new-0-0 cannot be scheduled: 0/3 nodes are available"
        assert not _held_pass(controller, {}, type(plan)(status=blocked))  # a reason: now
        restart = plan.status.model_copy(deep=True)
        restart.attempt = 1
        assert not _held_pass(controller, {}, type(plan)(status=restart))  # status first
        failed = plan.status.model_copy(deep=True)
        failed.phase = "Failed"
        assert not _held_pass(controller, {}, type(plan)(status=failed))
        controller.first_status_grace_seconds = 0
        assert not _held_pass(controller, {}, plan)  # --first-status-grace-seconds 0

    asyncio.run(run())


# --- a Job the operator just created is held from the create's answer (issue 43) -------------


class _ApiServer:
    """Answers creates as the API server does (the object as stored) and records every read:
    a pass that reads is what these tests look for. Nothing else of Kube is called."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.stored_job: dict[str, Any] | None = None

    def create(self, namespace: str, body: dict[str, Any], owner_uid: str | None = None) -> bool:
        return True

    def create_object(
        self, namespace: str, body: dict[str, Any], owner_uid: str | None = None
    ) -> dict[str, Any]:
        stored = {**body, "metadata": {**body["metadata"], "uid": "job-uid",
                                       "resourceVersion": "7"}, "status": {}}  # fmt: skip
        self.stored_job = stored
        return stored

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(f"get {name}")
        return self.stored_job

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.reads.append(f"list {selector}")
        return []


def test_a_job_just_created_is_not_read_back_until_its_watch_event_is_late() -> None:
    """In a burst the Job's watch event comes seconds after its create; until then every
    pass read it back (a GET and a pod list per job: 1.07 requests per job at 200 jobs)."""
    server = _ApiServer()
    controller = Controller(cast(Kube, server), Settings(default_image="img:1"))
    manifest = _body(make_job("new").obj())
    manifest["metadata"]["uid"] = "ftj-uid"
    job, key = parse_job(manifest), ("ns", "new")
    name = Names("new", 0).batch_job
    asyncio.run(controller._act(key, job, CreateAttempt(attempt=0), controller.settings))
    assert controller.cache.batch_jobs[key][name]["metadata"]["uid"] == "job-uid"
    running = {**manifest, "status": {"phase": "Pending", "attempt": 0}}
    asyncio.run(controller._read_through(key, running))
    assert server.reads == []
    # Its watch event replaces what the create answered and confirms it.
    watched = {**(server.stored_job or {}), "status": {"active": 1}}
    controller.cache.observe_child("Job", key, name, watched)
    assert controller.cache.unconfirmed_for(key, name) == 0.0
    # A watch event that came before the create's answer is kept (it is as new or newer).
    controller.cache.observe_created_job(key, name, {"metadata": {"name": name}})
    assert controller.cache.batch_jobs[key][name]["status"] == watched["status"]


def test_a_held_job_no_watch_event_confirms_is_read_back_and_forgotten_when_gone() -> None:
    server = _ApiServer()
    controller = Controller(cast(Kube, server), Settings(default_image="img:1"))
    manifest = _body(make_job("ghost").obj())
    manifest["metadata"]["uid"] = "ftj-uid"
    key, name = ("ns", "ghost"), Names("ghost", 0).batch_job
    asyncio.run(controller._act(key, parse_job(manifest), CreateAttempt(attempt=0),
                                controller.settings))  # fmt: skip
    # Deleted at once, before any watch event; the hold's time runs out.
    server.stored_job = None
    controller.cache.unconfirmed[(key, name)] -= UNCONFIRMED_JOB_SECONDS + 1
    running = {**manifest, "status": {"phase": "Pending", "attempt": 0}}
    asyncio.run(controller._read_through(key, running))
    assert server.reads == [f"get {name}"]
    assert name not in controller.cache.batch_jobs.get(key, {})
    assert (key, name) not in controller.cache.unconfirmed


# --- the parse kept between passes ---------------------------------------------------------


def test_a_pass_parses_the_spec_again_only_when_what_the_parse_reads_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Status writes and resourceVersions change every pass and leave the parse as it was; an
    edit of the spec, a label or an annotation is seen by the very next pass."""
    import ftoperator.controller as controller_module

    parses: list[dict[str, Any]] = []
    real = controller_module._parse

    def counted(manifest: dict[str, Any]) -> Any:
        parses.append(manifest)
        return real(manifest)

    monkeypatch.setattr(controller_module, "_parse", counted)
    controller, key = _controller(), ("ns", "kept")
    body = _body(make_job("kept").set("training.maxSteps", 10).obj())
    body["metadata"].update(uid="u-1", resourceVersion="1")
    first, _ = controller.plan(key, body)
    assert first is not None and first.spec.training.max_steps == 10

    written = {**body, "status": {"phase": "Running"},
               "metadata": {**body["metadata"], "resourceVersion": "2"}}  # fmt: skip
    assert controller.plan(key, written)[0] is first
    assert len(parses) == 1

    edited = {**written, "spec": {**written["spec"], "training": {"maxSteps": 20}},
              "metadata": {**written["metadata"], "generation": 2}}  # fmt: skip
    again, _ = controller.plan(key, edited)
    assert again is not None and again.spec.training.max_steps == 20
    labelled = {**edited, "metadata": {**edited["metadata"], "labels": {"team": "a"}}}
    assert (controller.plan(key, labelled)[0] or first).metadata.labels == {"team": "a"}
    assert len(parses) == 3
    # A finished job's parse is not kept (its memory, for the few passes it has left).
    finished = {**labelled, "status": {"phase": "Succeeded", "attempt": 0}}
    controller.plan(key, finished)  # the kept parse serves, then is dropped
    controller.plan(key, finished)
    assert len(parses) == 4


# --- which events cost a pass, and which looks a pass asks for (issue 43) -------------------


class _Stored(_ApiServer):
    """_ApiServer that also stores status writes (with a new resourceVersion) and has no
    FailedCreate Events to tell."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__()
        self.job = job
        self.version = 100

    def create_object(
        self, namespace: str, body: dict[str, Any], owner_uid: str | None = None
    ) -> dict[str, Any]:
        stored = super().create_object(namespace, body, owner_uid)
        stored["metadata"]["creationTimestamp"] = datetime.now(UTC).isoformat()
        return stored

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        status = merge_patch_apply(self.job.get("status") or {}, patch)
        metadata = {**self.job["metadata"], "resourceVersion": str(self.version)}
        self.job = {**self.job, "status": status, "metadata": metadata}
        return metadata  # as Kube.patch_status: the metadata alone

    def pod_create_failures(self, namespace: str) -> dict[str, str]:
        return {}

    def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        return None


class _Gone(_Stored):
    """_Stored whose FineTuneJob was deleted: status writes answer 404 (None)."""

    def patch_status(
        self, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        return None


def test_a_job_a_status_write_finds_gone_is_dropped_and_then_forgotten() -> None:
    """kopf does not deliver as deleted a job that went while its watch was down and listed
    again: the first status write that finds it gone drops it from the cache, and the pass
    that follows forgets it."""

    async def run() -> None:
        job = make_job("ghost").set("resources.image", "docker.io/x/trainer:1")
        manifest = _body(job.obj())
        server = _Gone(manifest)
        settings = Settings(default_image="img:1", allowed_registries=("registry.internal/",))
        controller = Controller(cast(Kube, server), settings)
        key = ("ns", "ghost")
        controller.cache.observe_job(key, manifest)
        await controller.reconcile(key)  # refused: Failed is written, and answers 404
        assert key not in controller.cache.jobs
        assert key in controller._jobs
        await controller.reconcile(key)
        assert key not in controller._jobs
        await controller.stop()

    asyncio.run(run())


def merge_patch_apply(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a status merge patch."""
    out = dict(target)
    for field, value in patch.items():
        if value is None:
            out.pop(field, None)
        elif isinstance(value, dict) and isinstance(out.get(field), dict):
            out[field] = merge_patch_apply(out[field], value)
        else:
            out[field] = value
    return out


def _running_pod(name: str, job_uid: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": "9",
                     "labels": {LABEL_JOB: "new", LABEL_ATTEMPT: "0"},
                     "ownerReferences": [{"uid": job_uid, "controller": True}]},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "trainer", "ready": True, "state": {"running": {}}}]},
    }  # fmt: skip


def test_a_pass_asks_only_for_the_looks_it_still_needs_and_echoes_cost_no_pass() -> None:
    async def run() -> None:
        manifest = _body(make_job("new").obj())
        manifest["metadata"].update(uid="ftj-uid", resourceVersion="1")
        server = _Stored(manifest)
        controller = Controller(cast(Kube, server), Settings(default_image="img:1"))
        controller.resync_seconds = 60.0
        key, name = ("ns", "new"), Names("new", 0).batch_job
        loop = asyncio.get_running_loop()

        def look() -> float:
            return controller.queue._timers[key].when() - loop.time()

        controller.cache.observe_job(key, manifest)
        await controller.reconcile(key)  # creates the attempt; its first status is held
        assert controller.planned_from(key, "FineTuneJob", "new", manifest)
        held_job = controller.cache.batch_jobs[key][name]
        # The Job's watch event shows what the pass held from the create's answer after
        # planning: it costs a pass, the one that plans with it.
        assert not controller.planned_from(key, "Job", name, held_job)
        await controller.reconcile(key)
        assert controller.planned_from(key, "Job", name, held_job)
        assert not controller.planned_from(key, "Job", name, {"metadata": {"resourceVersion": "8"}})
        # No pods yet and the status held: looks within the grace (5 s), not at the resync.
        assert 4.0 < look() < 6.0

        # The pod starts: the status is written at once, and nothing is left to look for soon.
        controller.cache.observe_child("Pod", key, "new-0-0", _running_pod("new-0-0", "job-uid"))
        await controller.reconcile(key)
        assert server.job["status"]["phase"] == "Running"
        assert 59.0 < look() <= 60.0
        # The watch event of that write: the pass that wrote planned from the older object,
        # so it costs one pass; after that pass, the same write's event costs none.
        echo = server.job
        assert not controller.planned_from(key, "FineTuneJob", "new", echo)
        await controller.reconcile(key)
        assert controller.planned_from(key, "FineTuneJob", "new", echo)
        # A write whose spec is not the one the watch last showed (an edit on its way): the
        # pass plans from the watched spec, so that write's event is not taken as seen.
        edited = {**echo, "spec": {**echo["spec"], "training": {"maxSteps": 7}}}
        controller._jobs[key].written = echo
        older = {**echo["metadata"], "resourceVersion": "50"}
        controller.cache.observe_job(key, {**edited, "metadata": older})
        await controller.reconcile(key)
        assert not controller.planned_from(key, "FineTuneJob", "new", echo)

    asyncio.run(run())


class _Failing(_Stored):
    """_Stored whose namespace has the FailedCreate reasons the test sets, and counts reads."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job)
        self.failures: dict[str, str] = {}
        self.reads = 0

    def pod_create_failures(self, namespace: str) -> dict[str, str]:
        self.reads += 1
        return dict(self.failures)


def test_jobs_lacking_pods_are_polled_once_per_namespace_and_passed_only_on_a_new_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each job looked again every 10 s while the Job controller had not created its pods
    yet, so a burst cost far more passes than watch events (docs/results/history.md). The
    namespace's poll reads the FailedCreate Events for all of them, and queues a job only
    when its reason changes."""
    monkeypatch.setattr(controller_module, "CREATE_FAILURE_POLL_SECONDS", 0.05)

    async def run() -> None:
        manifest = _body(make_job("new").obj())
        manifest["metadata"].update(uid="ftj-uid", resourceVersion="1")
        server = _Failing(manifest)
        controller = Controller(cast(Kube, server), Settings(default_image="img:1"))
        key, name = ("ns", "new"), Names("new", 0).batch_job
        queue = controller.queue

        def queued() -> bool:
            taken = key in queue._queued
            if taken:  # as a worker would take it
                queue._queued.discard(key)
                queue._queue.get_nowait()
            return taken

        controller.cache.observe_job(key, manifest)
        await controller.reconcile(key)  # creates the attempt; no pods yet
        batch_job = controller.cache.batch_jobs[key][name]
        batch_job["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"  # past the grace
        await controller.reconcile(key)
        assert controller._awaiting_pods == {"ns": {key}}
        assert controller._jobs[key].awaiting_pods == name
        queued()
        reads = server.reads
        await asyncio.sleep(0.2)  # polls, nothing new: no pass
        assert server.reads > reads and not queued()
        server.failures = {name: 'pods "new-0-0" is forbidden: exceeded quota: no-gpus'}
        await asyncio.sleep(0.2)
        assert queued()  # a new reason: one pass to tell it
        assert "exceeded quota" in controller.cache.create_failures[key]
        await asyncio.sleep(0.2)
        assert not queued()  # the same reason again: none
        # The pods appear: its pass drops it, and the namespace's poll ends.
        controller.cache.observe_child("Pod", key, "new-0-0", _running_pod("new-0-0", "job-uid"))
        await controller.reconcile(key)
        await asyncio.sleep(0.2)
        assert controller._awaiting_pods == {} and controller._polls == {}
        reads = server.reads
        await asyncio.sleep(0.2)
        assert server.reads == reads
        await controller.stop()

    asyncio.run(run())


# --- a running attempt's children are verified when their watch shows a change (issue 43) --


class _Checked(_Stored):
    """_Stored that records which children a pass verifies (Kube.ensure)."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job)
        self.ensured: list[str] = []

    def ensure(self, namespace: str, body: dict[str, Any], owner_uid: str) -> bool:
        self.ensured.append(body["kind"])
        return False


def test_a_running_attempts_children_are_verified_when_one_changes_and_only_then() -> None:
    """The periodic check cost 5 GETs per running job every 300 s (50 GETs/s at 3000 jobs);
    the watch of the children's metadata says when one was edited or deleted instead."""

    async def run() -> None:
        manifest = _body(make_job("new").obj())
        manifest["metadata"].update(uid="ftj-uid", resourceVersion="1")
        server = _Checked(manifest)
        controller = Controller(cast(Kube, server), Settings(default_image="img:1"))
        key = ("ns", "new")
        controller.cache.observe_job(key, manifest)
        await controller.reconcile(key)  # creates the attempt: its creation verifies all
        controller.cache.observe_child("Pod", key, "new-0-0", _running_pod("new-0-0", "job-uid"))
        await controller.reconcile(key)
        controller.cache.observe_job(key, server.job)
        assert server.job["status"]["phase"] == "Running" and server.ensured == []

        owner = {"uid": "ftj-uid", "controller": True}
        own = {"metadata": {"name": "new-trainer", "namespace": "ns", "ownerReferences": [owner]}}
        stranger = {"metadata": {"name": "new-trainer", "namespace": "ns"}}
        # Its own creation's events are no reason to look; an edit, a deletion, or a
        # stranger's object under a child's name are.
        assert not controller.child_changed(key, "ADDED", own)
        await controller.reconcile(key)
        assert server.ensured == []
        for event, body in (("MODIFIED", own), ("DELETED", own), ("ADDED", stranger)):
            assert controller.child_changed(key, event, body)
            await controller.reconcile(key)
            assert sorted(server.ensured) == ["ConfigMap", "FineTuneJobProgress", "Role",
                                              "RoleBinding", "ServiceAccount"], event  # fmt: skip
            server.ensured.clear()
            await controller.reconcile(key)  # verified once per change
            assert server.ensured == []
        # --child-check-seconds above 0 adds the periodic check.
        controller.child_check_seconds = 0.01
        await asyncio.sleep(0.02)
        await controller.reconcile(key)
        assert len(server.ensured) == 5
        # A job that is gone or finished has nothing to verify.
        assert not controller.child_changed(("ns", "other"), "DELETED", own)
        done = {**server.job, "status": {**server.job["status"], "phase": "Succeeded"}}
        controller.cache.observe_job(key, done)
        assert not controller.child_changed(key, "DELETED", own)

    asyncio.run(run())
