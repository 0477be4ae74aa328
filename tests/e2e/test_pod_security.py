"""The pod security the operator writes, as a real runtime enforces it on a training pod
that is training: not root, a read-only root file system, no capabilities, the
RuntimeDefault seccomp filter, and only the job's own ServiceAccount token."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from fttestkit.cluster import eventually
from fttestkit.finetunejobs import create_ftj
from fttestkit.release import Release
from tests.e2e.realnode import Bucket, tiny_cpu_job, training_pod

CHECKS = r"""
import json, os
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
              if ":\t" in line)
try:
    open("/etc/finetune-was-here", "w")
    root_fs = "writable"
except OSError as error:
    root_fs = error.strerror
token = open("/var/run/secrets/kubernetes.io/serviceaccount/token").read()
print("CHECKS " + json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "root_fs": root_fs,
    "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
    "seccomp": status["Seccomp"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "token": token, "workspace_writable": os.access("/workspace", os.W_OK),
}))
"""


def test_the_runtime_enforces_the_training_pods_security(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    cluster, ns, name = operator_release.cluster, operator_release.watched, "locked-down"
    job = tiny_cpu_job(operator_release, bucket, tmp_path, name, steps=100_000,
                       save_steps=100_000, log_every=10)  # fmt: skip
    create_ftj(cluster, ns, job)
    pod = eventually(lambda: training_pod(operator_release, name), timeout=300, interval=1.0,
                     what="the pod training")  # fmt: skip
    out = cluster.kubectl("exec", "-n", ns, pod["metadata"]["name"], "-c", "trainer", "--",
                          "python", "-c", CHECKS)  # fmt: skip
    (line,) = [x for x in out.splitlines() if x.startswith("CHECKS ")]
    seen = json.loads(line.removeprefix("CHECKS "))
    assert (seen["uid"], seen["gid"]) == (1000, 1000), seen
    assert seen["root_fs"] == "Read-only file system", seen
    assert seen["workspace_writable"], seen  # the one writable place, an emptyDir
    assert int(seen["cap_eff"], 16) == 0 and int(seen["cap_bnd"], 16) == 0, seen
    assert seen["seccomp"] == "2", seen  # 2: a filter is applied (RuntimeDefault)
    assert seen["no_new_privs"] == "1", seen  # allowPrivilegeEscalation: false
    # The token is the job's own ServiceAccount's (not the namespace's default one).
    claims = json.loads(base64.urlsafe_b64decode(seen["token"].split(".")[1] + "=="))
    account = pod["spec"]["serviceAccountName"]
    assert account != "default"
    assert claims["sub"] == f"system:serviceaccount:{ns}:{account}", claims["sub"]
    cluster.kubectl("delete", "finetunejob", "-n", ns, name, "--wait=false")
