"""The Helm chart (helm/finetune-operator) without a cluster: `helm lint --strict`, `helm
template` for a table of values parsed and checked (the env the operator reads, probes,
security context, placement, optional objects), the RBAC against docs/operator.md's table
(verbs x resources, nothing on Secrets, no wildcards), the schema refusing bad values, and
the chart's CRD against crds/.

Runs with the unit tests (`pytest tests/helm`); needs only the pinned helm binary
(hack/build.sh helm, built on first use)."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
import yaml

from ftclient.kube import USER_RULES
from ftoperator.config import Settings, parse_options
from fttestkit.chart import (
    CHART,
    REPO,
    Grants,
    container,
    documented_grants,
    grants,
    helm,
    merge,
    of_kind,
    only,
    plain_env,
    render,
)

RELEASE_NS = "finetune-system"
SA = "finetune-operator"
LEASES = ("coordination.k8s.io", "leases")
NAMESPACES = ("", "namespaces")
# Cluster-scoped reads every mode needs (nodes: node loss; CRDs: kopf's resource discovery;
# the trainer policy, at start).
ADMISSION = "admissionregistration.k8s.io"
CLUSTER_READS = {("", "nodes"), ("apiextensions.k8s.io", "customresourcedefinitions"),
                 (ADMISSION, "validatingadmissionpolicies"),
                 (ADMISSION, "validatingadmissionpolicybindings")}  # fmt: skip
# What is granted per watched namespace (or cluster-wide): everything else in the table.
NAMESPACED = set(documented_grants()) - CLUSTER_READS - {LEASES, NAMESPACES}
SPOT = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
        "effect": "NoSchedule"}  # fmt: skip


def documented(keys: set[tuple[str, str]]) -> Grants:
    return {key: documented_grants()[key] for key in keys}


def operator_options(objects: list[dict[str, Any]]) -> Any:
    """What the real operator's parse_options makes of the Deployment's env."""
    env = {**plain_env(container(objects)), "POD_NAMESPACE": RELEASE_NS, "POD_NAME": "op-abc"}
    return parse_options([], env=env)


# --- lint, CRD, versions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [{}, {"watchNamespaces": ["team-a", "team-b"], "replicas": 2,
          "metrics": {"serviceMonitor": {"enabled": True}}}],
    ids=["defaults", "namespaces-ha-monitoring"],
)  # fmt: skip
def test_helm_lint_strict_passes(values: dict[str, Any]) -> None:
    out = helm("lint", "--strict", str(CHART), values=values)
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_the_charts_crd_is_the_generated_one() -> None:
    # Helm installs crds/ on first install; make crds copies the files there.
    names = ["finetune.dev_finetunejobprogresses.yaml", "finetune.dev_finetunejobs.yaml"]
    for name in names:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            "helm/finetune-operator/crds/ differs from crds/: run `make crds`"
        )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == names
    assert sorted(p.name for p in (REPO / "crds").iterdir()) == names
    # Never rendered as a template (Helm would then delete it on uninstall).
    assert not of_kind(render(), "CustomResourceDefinition")


def test_versions_follow_the_operator() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "operator" / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["defaultImage"] == Settings().default_image
    assert container(render())["image"] == f"{values['image']['repository']}:{project['version']}"


def test_every_value_is_documented_in_install_md() -> None:
    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node:
            return [p for k, v in node.items() for p in leaves(v, f"{prefix}{k}.")]
        return [prefix.rstrip(".")]

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    doc = (REPO / "docs" / "install.md").read_text().split("## Values", 1)[1].split("\n## ")[0]
    rows = [line.split("|")[1] for line in doc.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([^`]+)`", row)}
    undocumented = [
        key for key in leaves(values)
        if not any(key == d or key.startswith(d + ".") for d in documented)
    ]  # fmt: skip
    assert undocumented == [], "add these to the Values table of docs/install.md"
    stale = [
        d for d in documented if not any(k == d or k.startswith(d + ".") for k in leaves(values))
    ]
    assert stale == [], "docs/install.md documents values the chart does not have"


# --- the Deployment -----------------------------------------------------------------------


def test_defaults_run_the_operator_cluster_wide_with_json_logs_and_leader_election() -> None:
    objects = render()
    options = operator_options(objects)
    assert options.namespaces == ()  # all namespaces
    # The operator's own defaults, and the chart's trainer policy (trainer-policy.yaml).
    assert options.settings == Settings(trainer_policy="finetune-operator-trainer-progress")
    assert (options.log_format, options.log_level) == ("json", "INFO")
    assert options.leader_election is True
    assert (options.lease_name, options.lease_namespace) == (
        "finetune-operator-leader", RELEASE_NS
    )  # fmt: skip
    assert (options.metrics_bind, options.metrics_port) == ("0.0.0.0", 8080)
    assert (options.workers, options.resync_seconds) == (64, 60.0)
    env = {e["name"]: e for e in container(objects)["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # The chart sets exactly the FTO_* variables the operator documents (a new operator flag
    # fails this until the chart has a value for it). FTO_LEASE_NAMESPACE: POD_NAMESPACE.
    doc = (REPO / "docs" / "operator.md").read_text().split("## Running it", 1)[1]
    documented_env = set(re.findall(r"`(FTO_\w+)`", doc.split("\n## ", 1)[0]))
    assert {n for n in env if n.startswith("FTO_")} == documented_env - {"FTO_LEASE_NAMESPACE"}
    deployment = only(objects, "Deployment")
    assert deployment["metadata"]["namespace"] == RELEASE_NS
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == SA


def test_operator_settings_reach_the_operator() -> None:
    objects = render({
        "watchNamespaces": ["team-a", "team-b"],
        "operator": {
            "defaultImage": "registry.internal/ml/trainer:1.2",
            "allowedRegistries": ["registry.internal/ml/", "ghcr.io/acme/"],
            "allowedS3Endpoints": ["http://minio.storage:9000"],
            "allowedTrackerUrls": ["https://mlflow.internal/", "https://wandb.internal"],
            "allowedHubEndpoints": ["https://hub.internal"],
            "allowedSecretNames": ["team-hub", "team-s3"],
            "forbidJobCode": True,
            "defaultS3Endpoint": "http://minio.storage:9000",
            "gpuTolerations": [SPOT],
            "gpuResourceName": "amd.com/gpu",
            "scratchSize": "200Gi",
            "workers": 4,
            "resyncSeconds": 30,
            "logFormat": "text",
            "logLevel": "DEBUG",
            "metricsPort": 9090,
            "leaderElection": {"leaseName": "ft-leader"},
        },
    })  # fmt: skip
    options = operator_options(objects)
    assert options.namespaces == ("team-a", "team-b")
    assert options.settings == Settings(
        default_image="registry.internal/ml/trainer:1.2",
        allowed_registries=("registry.internal/ml/", "ghcr.io/acme/"),
        allowed_s3_endpoints=("http://minio.storage:9000",),
        allowed_tracker_urls=("https://mlflow.internal/", "https://wandb.internal"),
        allowed_hub_endpoints=("https://hub.internal",),
        allowed_secret_names=("team-hub", "team-s3"),
        forbid_job_code=True,
        default_s3_endpoint="http://minio.storage:9000",
        gpu_tolerations=(SPOT,),
        gpu_resource_name="amd.com/gpu",
        scratch_size="200Gi",
        trainer_policy="finetune-operator-trainer-progress",
    )
    assert (options.workers, options.resync_seconds) == (4, 30.0)
    assert (options.log_format, options.log_level) == ("text", "DEBUG")
    assert (options.metrics_port, options.lease_name) == (9090, "ft-leader")
    # The probes follow the port, and so does the Role naming the Lease.
    ports = container(objects)["ports"]
    assert ports == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    lease_rules = only(objects, "Role", "finetune-operator-leader-election")["rules"]
    assert [r.get("resourceNames") for r in lease_rules] == [None, ["ft-leader"]]


def test_probes_use_the_metrics_port() -> None:
    operator = container(render())
    assert operator["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert operator["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert operator["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_security_context_is_restricted_and_matches_the_image_user() -> None:
    objects = render()
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    dockerfile = (REPO / "operator" / "Dockerfile").read_text()
    user = re.findall(r"^USER (\d+):(\d+)$", dockerfile, flags=re.MULTILINE)[-1]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": int(user[0]), "runAsGroup": int(user[1]),
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert container(objects)["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert "volumes" not in pod  # the image writes nothing (operator/Dockerfile)


def test_placement_and_resources_of_the_operator_pod() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "node-role", "operator": "In", "values": ["system"]}]}]}}}  # fmt: skip
    values = {
        "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"memory": "1Gi"}},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "affinity": affinity,
        "priorityClassName": "system-cluster-critical",
        "image": {"repository": "registry.internal/finetune-operator", "tag": "0.1.0-rc1",
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
    }  # fmt: skip
    objects = render(values)
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert container(objects)["resources"] == values["resources"]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert container(objects)["image"] == "registry.internal/finetune-operator:0.1.0-rc1"
    assert container(objects)["imagePullPolicy"] == "Always"
    digest = "sha256:" + "a" * 64
    pinned = render({"image": {"digest": digest}})
    assert container(pinned)["image"] == f"ghcr.io/finetune-operator/operator@{digest}"
    # The defaults: requests and a memory limit, no placement constraints.
    default_pod = only(render(), "Deployment")["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "affinity"} & set(default_pod)
    assert container(render())["resources"]["limits"] == {"memory": "512Mi"}


# --- optional objects -----------------------------------------------------------------------


def test_two_replicas_get_a_pod_disruption_budget() -> None:
    assert not of_kind(render(), "PodDisruptionBudget")
    objects = render({"replicas": 2})
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not of_kind(render({"replicas": 2, "podDisruptionBudget": {"enabled": False}}),
                       "PodDisruptionBudget")  # fmt: skip


def test_service_monitor_scrapes_the_metrics_service() -> None:
    defaults = render()
    assert not of_kind(defaults, "Service") and not of_kind(defaults, "ServiceMonitor")
    objects = render({"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s",
                                                     "labels": {"release": "prom"}}}})  # fmt: skip
    service, monitor = only(objects, "Service"), only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NS]}
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The Service alone (no Prometheus Operator).
    alone = render({"metrics": {"service": {"enabled": True}}})
    assert of_kind(alone, "Service") and not of_kind(alone, "ServiceMonitor")


# --- RBAC -----------------------------------------------------------------------------------

VALUES_TABLE = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": ["a", "b"]},
    "replicas-2": {"replicas": 2},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True}}},
    "allowed-registries": {"operator": {"allowedRegistries": ["registry.internal/"]}},
    "placement": {"nodeSelector": {"pool": "system"}, "resources": {"limits": {"cpu": "1"}}},
    "no-leader-election": {"operator": {"leaderElection": {"enabled": False}}},
}


@pytest.mark.parametrize("values", VALUES_TABLE.values(), ids=VALUES_TABLE.keys())
def test_no_secrets_no_wildcards_and_only_the_operators_service_account(
    values: dict[str, Any],
) -> None:
    objects = render(values)
    for role in of_kind(objects, "Role") + of_kind(objects, "ClusterRole"):
        for rule in role["rules"]:
            flat = [*rule["apiGroups"], *rule["resources"], *rule["verbs"],
                    *rule.get("resourceNames", [])]  # fmt: skip
            assert not any("*" in item for item in flat), (role["metadata"]["name"], rule)
            assert "secrets" not in rule["resources"], (role["metadata"]["name"], rule)
            assert not rule.get("nonResourceURLs"), rule
    for binding in of_kind(objects, "RoleBinding") + of_kind(objects, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": SA, "namespace": RELEASE_NS}
        ]
        # The role it names exists, in the binding's own namespace (or cluster-wide).
        namespace = binding["metadata"].get("namespace")
        roles = [r for r in of_kind(objects, binding["roleRef"]["kind"])
                 if r["metadata"]["name"] == binding["roleRef"]["name"]
                 and r["metadata"].get("namespace") == namespace]  # fmt: skip
        assert len(roles) == 1, binding


def test_cluster_wide_rbac_is_the_documented_table() -> None:
    objects = render()
    cluster_role = only(objects, "ClusterRole", "finetune-operator")
    assert grants(cluster_role["rules"]) == documented(NAMESPACED | CLUSTER_READS)
    assert (
        only(objects, "ClusterRoleBinding")["roleRef"]["name"] == cluster_role["metadata"]["name"]
    )
    assert not of_kind(objects, "RoleBinding") or all(
        b["metadata"]["name"].endswith("-leader-election") for b in of_kind(objects, "RoleBinding")
    )
    lease_role = only(objects, "Role")
    assert lease_role["metadata"]["namespace"] == RELEASE_NS
    assert grants(lease_role["rules"]) == documented({LEASES})
    # Everything in docs/operator.md except namespaces list/watch, which kopf reads only when
    # it watches named namespaces (cluster-wide it never does).
    everything = merge(grants(cluster_role["rules"]), grants(lease_role["rules"]))
    assert everything == documented(set(documented_grants()) - {NAMESPACES})


def test_watch_namespaces_rbac_is_a_role_per_namespace_and_cluster_reads_only() -> None:
    objects = render({"watchNamespaces": ["a", "b"]})
    roles = {r["metadata"]["namespace"]: r for r in of_kind(objects, "Role")
             if not r["metadata"]["name"].endswith("-leader-election")}  # fmt: skip
    assert set(roles) == {"a", "b"}
    for namespace, role in roles.items():
        assert grants(role["rules"]) == documented(NAMESPACED), namespace
        binding = only(
            [b for b in of_kind(objects, "RoleBinding") if b["metadata"]["namespace"] == namespace
             and b["roleRef"]["name"] == role["metadata"]["name"]],
            "RoleBinding",
        )  # fmt: skip
        assert binding["roleRef"]["kind"] == "Role"
    # Cluster-wide: read-only, cluster-scoped kinds only (nothing namespaced leaks out).
    cluster_role = only(objects, "ClusterRole", "finetune-operator")
    assert grants(cluster_role["rules"]) == documented(CLUSTER_READS | {NAMESPACES})
    assert all(
        set(verbs) <= {"get", "list", "watch"} for verbs in grants(cluster_role["rules"]).values()
    )
    lease_role = only(objects, "Role", "finetune-operator-leader-election")
    assert lease_role["metadata"]["namespace"] == RELEASE_NS
    # Taken together: exactly docs/operator.md's table.
    everything = merge(*(grants(r["rules"]) for r in [*roles.values(), cluster_role, lease_role]))
    assert everything == documented_grants()


def test_the_lease_role_names_the_lease_the_operator_uses() -> None:
    objects = render(release="ft")
    lease_role = only(objects, "Role", "ft-finetune-operator-leader-election")
    create, named = lease_role["rules"]
    assert (create["verbs"], "resourceNames" in create) == (["create"], False)
    assert (named["verbs"], named["resourceNames"]) == (
        ["get", "update"],
        ["ft-finetune-operator-leader"],
    )
    assert plain_env(container(objects))["FTO_LEASE_NAME"] == "ft-finetune-operator-leader"
    # Leader election off: no Lease access at all.
    objects = render({"operator": {"leaderElection": {"enabled": False}}})
    assert not [r for r in of_kind(objects, "Role") if "leader" in r["metadata"]["name"]]
    assert operator_options(objects).leader_election is False


def test_users_get_finetunejob_rights_through_kubernetes_default_roles() -> None:
    """Namespace editors can do all the client does (ftclient.kube.USER_RULES: the first rule
    is this chart's, the second comes with `edit` itself); viewers can read jobs. Nothing
    else is granted, and nobody is bound: Kubernetes aggregates these into its own roles."""
    objects = render()
    edit = only(objects, "ClusterRole", "finetune-operator-edit")
    view = only(objects, "ClusterRole", "finetune-operator-view")
    labels = edit["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    (rule,) = edit["rules"]
    needed = USER_RULES[0]
    assert (rule["apiGroups"], rule["resources"]) == (needed["apiGroups"], needed["resources"])
    assert set(needed["verbs"]) <= set(rule["verbs"])
    ((read),) = view["rules"]
    assert (read["resources"], set(read["verbs"])) == (["finetunejobs"], {"get", "list", "watch"})
    bound = {b["roleRef"]["name"] for b in of_kind(objects, "ClusterRoleBinding")}
    assert not bound & {"finetune-operator-edit", "finetune-operator-view"}
    off = render({"rbac": {"aggregateToDefaultRoles": False}})
    assert [r["metadata"]["name"] for r in of_kind(off, "ClusterRole")] == ["finetune-operator"]


def test_rbac_off_renders_no_roles_and_an_existing_service_account_can_be_used() -> None:
    objects = render({"rbac": {"create": False},
                      "serviceAccount": {"create": False, "name": "platform-sa"}})  # fmt: skip
    kinds = {o["kind"] for o in objects}
    assert not kinds & {
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
        "ServiceAccount",
    }
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-sa"


def test_the_trainer_policy_is_rendered_bound_and_named_to_the_operator_or_not_at_all() -> None:
    """The operator shares a namespace's trainer identity only under this policy (main.py
    checks it is bound): the chart renders both together, or neither."""
    objects = render(release="ft")
    policy = only(objects, "ValidatingAdmissionPolicy")
    name = policy["metadata"]["name"]
    assert name == "ft-finetune-operator-trainer-progress"
    binding = only(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["metadata"]["name"] == name
    assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    (match,) = policy["spec"]["matchConditions"]
    assert ":finetune-trainer" in match["expression"]  # the shared account's name
    assert operator_options(objects).settings.trainer_policy == name
    rules = only(objects, "ClusterRole", "ft-finetune-operator")["rules"]
    (admission,) = [r for r in rules if r["apiGroups"] == [ADMISSION]]
    assert (admission["resourceNames"], admission["verbs"]) == ([name], ["get"])
    off = render({"operator": {"sharedTrainerIdentity": False}}, release="ft")
    assert not of_kind(off, "ValidatingAdmissionPolicy")
    assert not of_kind(off, "ValidatingAdmissionPolicyBinding")
    assert operator_options(off).settings.trainer_policy is None
    rules = only(off, "ClusterRole", "ft-finetune-operator")["rules"]
    assert not [r for r in rules if r["apiGroups"] == [ADMISSION]]


# --- bad values fail at install -------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"logFormat": "xml"}},
         "at '/operator/logFormat': value must be one of 'json', 'text'"),
        ({"replicas": 0}, "at '/replicas': minimum: got 0, want 1"),
        ({"replicas": "2"}, "at '/replicas': got string, want integer"),
        ({"image": {"pullPolicy": "Sometimes"}},
         "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0': 'Team_A' does not match"),
        ({"watchNamespaces": ["team-*"]}, "at '/watchNamespaces/0': 'team-*' does not match"),
        ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
        ({"operator": {"gpuTolerations": [{"key": "x", "effect": "NoWay"}]}},
         "at '/operator/gpuTolerations/0/effect': value must be one of"),
        ({"operator": {"gpuResourceName": "gpu"}},
         "at '/operator/gpuResourceName': 'gpu' does not match"),
        ({"operator": {"metricsPort": 0}}, "at '/operator/metricsPort': minimum: got 0, want 1"),
        ({"operator": {"defaultS3Endpoint": "minio:9000"}},
         "at '/operator/defaultS3Endpoint': 'minio:9000' does not match"),
        ({"operator": {"allowedRegistries": "a/,b/"}},
         "at '/operator/allowedRegistries': got string, want array"),
        ({"replica": 2}, "additional properties 'replica' not allowed"),
        ({"operator": {"namespaces": ["a"]}}, "additional properties 'namespaces' not allowed"),
        ({"replicas": 2, "operator": {"leaderElection": {"enabled": False}}},
         "replicas > 1 needs operator.leaderElection.enabled: true"),
        ({"serviceAccount": {"create": False}},
         "serviceAccount.name is required when serviceAccount.create is false"),
    ],
    ids=["log-format", "replicas-0", "replicas-string", "pull-policy", "namespace-not-dns",
         "namespace-glob", "namespaces-not-list", "toleration-effect", "gpu-resource-no-domain",
         "metrics-port-0", "s3-endpoint-scheme", "registries-not-list", "unknown-key",
         "unknown-operator-key", "ha-without-leader-election", "no-sa-name"],
)  # fmt: skip
def test_bad_values_are_refused_with_the_field_named(values: dict[str, Any], message: str) -> None:
    out = helm("template", "finetune-operator", str(CHART), values=values, check=False)
    assert message in out, out
    assert "kind: Deployment" not in out
