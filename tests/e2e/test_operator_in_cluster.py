"""The operator as users run it: the chart's Deployment, on a real node, from the image
built from operator/Dockerfile, with the chart's ServiceAccount, RBAC and pod security."""

from __future__ import annotations

import urllib.request

from kubernetes import client

from fttestkit.cluster import eventually
from fttestkit.release import Release


def test_the_chart_runs_the_operator_image_under_its_account_and_it_leads(
    operator_release: Release,
) -> None:
    release = operator_release
    pod = eventually(release.pod, what="the operator's pod Running")
    spec = pod.spec
    # The real node ran it, as the chart's ServiceAccount, with the image we built.
    assert pod.spec.node_name == release.cluster.env["FTO_NODE_NAME"]
    assert spec.service_account_name == release.fullname
    (container,) = pod.status.container_statuses
    assert container.ready and container.restart_count == 0
    assert container.image.endswith(release.values["image"]["repository"] + ":dev")
    # Under the chart's pod security, enforced by runc: not root, read-only root file system.
    assert (
        pod.spec.security_context.run_as_non_root
        and spec.containers[0].security_context.read_only_root_filesystem
    )

    # It took the Lease (holder: this pod).
    coordination = client.CoordinationV1Api(release.cluster.api)
    lease = eventually(
        lambda: coordination.read_namespaced_lease(f"{release.fullname}-leader", release.namespace),
        what="the leader Lease",
    )
    assert lease.spec.holder_identity.startswith(pod.metadata.name), lease.spec.holder_identity

    # /metrics, scraped from the pod's own address as Prometheus would.
    url = f"http://{pod.status.pod_ip}:8080/metrics"  # the chart's default metricsPort

    def scrape() -> str:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    def leading() -> str:
        page = scrape()
        return page if "finetune_operator_leader 1.0" in page else ""

    page = eventually(leading, what=f"{url} saying finetune_operator_leader 1.0")
    assert "finetune_job" in page or "finetune_operator" in page
    # Nothing in its log says a permission was missing.
    log = release.logs()
    assert "forbidden" not in log.lower() and "Traceback" not in log, log[-3000:]
