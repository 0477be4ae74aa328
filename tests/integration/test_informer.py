"""The operator's informers (ftoperator.informer) against the real API server:
what a list and a watch deliver, the watch taken up again where the server ended it, what
vanished while nothing watched, and objects larger than a stream reader's line limit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes import client

from ftapi.constants import GROUP, KIND, PLURAL, VERSION
from ftoperator.children import LABEL_JOB
from ftoperator.informer import Informer
from ftoperator.kube import collection
from fttestkit.builders import make_job
from fttestkit.cluster import Cluster
from fttestkit.finetunejobs import create_ftj

SECURE = {
    "runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}  # fmt: skip


def _pod(name: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> Any:
    # Left to a scheduler that does not exist: no scheduler, no kubelet, only the changes
    # made here. (Bound to a missing node instead, the pod GC deletes it after 40 s, which a
    # loaded machine reaches before the test deletes it itself.)
    return {
        "metadata": {"name": name, "labels": labels, "annotations": annotations or {}},
        "spec": {"schedulerName": "fto-no-such-scheduler", "containers": [
            {"name": "c", "image": "registry.invalid/none:0", "securityContext": SECURE}]},
    }  # fmt: skip


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, event: str, body: dict[str, Any]) -> None:
        self.events.append((event, body["metadata"]["name"], body))

    def names(self, event: str) -> list[str]:
        return [name for kind, name, _ in self.events if kind == event]


async def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


async def _watch_until(informer: Informer, what: str, check: Callable[[], bool]) -> None:
    """Run the informer until check() holds, then stop it (nothing watches afterwards)."""
    task = asyncio.create_task(informer.run())
    await _until(check, what)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_an_informer_lists_watches_resumes_and_reports_what_vanished_meanwhile(
    cluster: Cluster, ns: str
) -> None:
    core = client.CoreV1Api(cluster.api)
    ours = {LABEL_JOB: "some-job"}
    core.create_namespaced_pod(ns, _pod("before", ours))
    core.create_namespaced_pod(ns, _pod("stranger", {"app": "other"}))
    seen = Recorder()
    # The server ends each watch after 1 s: the informer must watch on from where it was.
    informer = Informer(cluster.api.configuration, "Pod", collection("Pod", ns), LABEL_JOB,
                        seen, server_timeout=1)  # fmt: skip

    async def first() -> None:
        task = asyncio.create_task(informer.run())
        await _until(lambda: "before" in seen.names("ADDED"), "the listed pod")
        listed = next(body for _, name, body in seen.events if name == "before")
        assert listed["kind"] == "Pod" and listed["apiVersion"] == "v1"  # set on list items
        await asyncio.sleep(2.5)  # two streams ended by the server
        await asyncio.to_thread(core.create_namespaced_pod, ns, _pod("during", ours))
        patch = {"metadata": {"annotations": {"step": "1"}}}
        await asyncio.to_thread(core.patch_namespaced_pod, "during", ns, patch)
        await _until(lambda: "during" in seen.names("MODIFIED"), "the watched change")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    _run(first)
    assert informer.lists == 1  # watched on after each end, never listed again
    assert seen.names("ADDED").count("during") == 1  # once, though three streams ran
    assert "stranger" not in {name for _, name, _ in seen.events}  # the API server filtered

    # While nothing watches: one pod deleted, one created, one unchanged.
    core.delete_namespaced_pod("before", ns, grace_period_seconds=0)
    core.create_namespaced_pod(ns, _pod("after", ours))
    seen.events.clear()

    async def second() -> None:
        task = asyncio.create_task(informer.run())
        await _until(lambda: "before" in seen.names("DELETED"), "the vanished pod")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    _run(second)
    assert informer.lists == 2
    assert seen.names("ADDED") == ["after"]  # "during" was delivered before, unchanged since
    assert seen.names("DELETED") == ["before"]


def test_an_informer_delivers_objects_longer_than_a_stream_readers_line(
    cluster: Cluster, ns: str
) -> None:
    """aiohttp's line reader refuses lines over 64 KiB; a pod with large annotations (a
    ConfigMap-sized value, say) is one such line of the watch stream."""
    core = client.CoreV1Api(cluster.api)
    seen = Recorder()
    informer = Informer(cluster.api.configuration, "Pod", collection("Pod", ns), LABEL_JOB, seen)
    large = "x" * 200_000

    async def run() -> None:
        task = asyncio.create_task(informer.run())
        await asyncio.sleep(1.0)  # listed (nothing yet), watching
        await asyncio.to_thread(core.create_namespaced_pod, ns,
                                _pod("large", {LABEL_JOB: "j"}, {"big": large}))  # fmt: skip
        await _until(lambda: "large" in seen.names("ADDED"), "the large pod")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    _run(run)
    body = next(body for _, name, body in seen.events if name == "large")
    assert body["metadata"]["annotations"]["big"] == large
    assert informer.lists == 1  # from the watch stream, not a list after an error


def test_a_metadata_informer_delivers_metadata_only_and_what_changed_while_away(
    cluster: Cluster, ns: str
) -> None:
    """The prerequisites' informers (handlers.PREREQUISITE_KINDS): the API server sends the
    metadata alone (a ConfigMap's data never reaches the operator); a change made while
    nothing watched is delivered as MODIFIED by the next list, a deletion as DELETED with
    the job's label."""
    core = client.CoreV1Api(cluster.api)
    secret_ish = "not for the operator"

    def config_map(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {LABEL_JOB: "some-job"}},
                "data": {"config.yaml": secret_ish}}  # fmt: skip

    core.create_namespaced_config_map(ns, config_map("kept"))
    core.create_namespaced_config_map(ns, config_map("edited"))
    core.create_namespaced_config_map(ns, config_map("deleted"))
    seen = Recorder()
    informer = Informer(cluster.api.configuration, "ConfigMap", collection("ConfigMap", ns),
                        LABEL_JOB, seen, server_timeout=1, metadata_only=True)  # fmt: skip

    async def watch(until: Callable[[], bool], what: str) -> None:
        task = asyncio.create_task(informer.run())
        await _until(until, what)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def first() -> None:
        async def change() -> None:
            await asyncio.sleep(1.5)  # a watch stream ended by the server, watched on
            patch = {"metadata": {"annotations": {"a": "1"}}}
            await asyncio.to_thread(core.patch_namespaced_config_map, "kept", ns, patch)

        changing = asyncio.create_task(change())
        await watch(lambda: "kept" in seen.names("MODIFIED"), "the watched change")
        await changing

    _run(first)
    assert sorted(seen.names("ADDED")) == ["deleted", "edited", "kept"]
    assert all(body["kind"] == "PartialObjectMetadata" and "data" not in body
               for _, _, body in seen.events), seen.events  # fmt: skip
    assert secret_ish not in repr(seen.events)

    core.patch_namespaced_config_map("edited", ns, {"metadata": {"labels": {"x": "y"}}})
    core.delete_namespaced_config_map("deleted", ns)
    seen.events.clear()
    _run(lambda: watch(lambda: bool(seen.names("DELETED")), "the vanished ConfigMap"))
    assert (seen.names("MODIFIED"), seen.names("ADDED")) == (["edited"], [])
    (deleted,) = [body for event, _, body in seen.events if event == "DELETED"]
    assert deleted["metadata"]["labels"] == {LABEL_JOB: "some-job"}
    assert informer.lists == 2


def test_an_informer_without_a_selector_delivers_every_finetunejob_and_what_vanished(
    cluster: Cluster, ns: str
) -> None:
    """An informer that selects no label (as the progress objects' does, handlers.
    watch_informers) delivers every object of its kind, labelled or not, whole; one deleted
    while nothing watched comes back as DELETED with its name."""
    create_ftj(cluster, ns, make_job("plain").obj())
    labelled = make_job("labelled").obj()
    labelled["metadata"]["labels"] = {"team": "a"}
    create_ftj(cluster, ns, labelled)
    seen = Recorder()
    informer = Informer(cluster.api.configuration, KIND, collection(KIND, ns), None, seen)

    _run(lambda: _watch_until(informer, "both jobs", lambda: len(seen.names("ADDED")) == 2))
    assert sorted(seen.names("ADDED")) == ["labelled", "plain"]
    body = next(body for _, name, body in seen.events if name == "plain")
    assert body["kind"] == KIND and body["apiVersion"] == f"{GROUP}/{VERSION}"
    assert body["spec"]["model"]["name"]  # whole, not its metadata alone

    custom = client.CustomObjectsApi(cluster.api)
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "plain")
    seen.events.clear()
    _run(lambda: _watch_until(informer, "the vanished job", lambda: bool(seen.names("DELETED"))))
    assert seen.names("DELETED") == ["plain"] and seen.names("ADDED") == []
    gone = seen.events[0][2]
    assert gone["metadata"] == {"namespace": ns, "name": "plain"} and gone["kind"] == KIND


def test_a_progress_object_gone_while_nothing_watched_comes_back_with_its_owner(
    cluster: Cluster, ns: str
) -> None:
    """The progress objects' informer keeps each one's ownerReferences (handlers.
    watch_informers, `keep`): one deleted while the watch was down (here by the garbage
    collector, its FineTuneJob deleted) is delivered as DELETED with them, which is what
    progress_observer ties it to its job by. An object that had none gets none."""
    job = create_ftj(cluster, ns, make_job("owner").obj())
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": "owner",
             "uid": job["metadata"]["uid"], "controller": True,
             "blockOwnerDeletion": True}  # fmt: skip
    custom = client.CustomObjectsApi(cluster.api)
    for name, owners in (("owned", [owner]), ("orphan", None)):
        metadata: dict[str, Any] = {"name": name}
        if owners:
            metadata["ownerReferences"] = owners
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, "finetunejobprogresses",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJobProgress",
             "metadata": metadata},
        )  # fmt: skip
    seen = Recorder()
    informer = Informer(
        cluster.api.configuration, "FineTuneJobProgress",
        collection("FineTuneJobProgress", ns), None, seen, keep=("ownerReferences",),
    )  # fmt: skip

    _run(lambda: _watch_until(informer, "both", lambda: len(seen.names("ADDED")) == 2))
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "owner",
                                           body={"propagationPolicy": "Foreground"})  # fmt: skip
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobprogresses", "orphan")

    async def gone() -> None:  # the garbage collector deletes the owned one
        for _ in range(300):
            names = {item["metadata"]["name"] for item in custom.list_namespaced_custom_object(
                GROUP, VERSION, ns, "finetunejobprogresses")["items"]}  # fmt: skip
            if not names:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"still there: {names}")

    _run(gone)
    seen.events.clear()
    _run(lambda: _watch_until(informer, "both vanished", lambda: len(seen.names("DELETED")) == 2))
    stubs = {name: body["metadata"] for _, name, body in seen.events}
    assert stubs["owned"] == {"namespace": ns, "name": "owned", "ownerReferences": [owner]}
    assert stubs["orphan"] == {"namespace": ns, "name": "orphan"}
