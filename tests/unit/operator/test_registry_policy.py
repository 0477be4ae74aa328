"""Whom a job's registry credential goes to is the platform's choice: which registries a
job may reach over plain HTTP (--plain-http-registries), which ConfigMaps it may name as a
registry's CA (--allowed-ca-config-maps), and which Secrets it may name as image pull
secrets (--allowed-secret-names)."""

from __future__ import annotations

from ftapi import parse_job
from ftoperator.config import Settings, parse_options
from ftoperator.policy import policy_violation
from fttestkit.builders import JobBuilder, make_job

REGISTRY = "registry.cluster.local:5000"
DIGEST = "sha256:" + "a" * 64


def _refusal(job: JobBuilder, settings: Settings) -> tuple[str, str] | None:
    return policy_violation(parse_job(job.obj()), settings)


def _push(**access: object) -> JobBuilder:
    return make_job("a").set("output.oci", {"reference": f"oci://{REGISTRY}/models/a:1", **access})


def _pull(**access: object) -> JobBuilder:
    job = make_job("a").set("model.name", f"oci://{REGISTRY}/base/m@{DIGEST}")
    return job.set("model.hfTokenSecretRef", None).set("model.registry", access)


def test_plain_http_is_refused_for_registries_the_operator_does_not_list() -> None:
    cases = [
        (_push(plainHttp=True), "spec.output.oci"),
        (_pull(plainHttp=True), "spec.model.registry"),
    ]
    for job, field in cases:
        assert _refusal(job, Settings()) is None  # the default: any registry
        refused = _refusal(job, Settings(plain_http_registries=()))
        assert refused is not None and refused[0] == "PlainHttpNotAllowed", refused
        assert f"{field}.plainHttp" in refused[1] and REGISTRY in refused[1]
        assert "plainHttpRegistries admits none" in refused[1]
        listed = Settings(plain_http_registries=("registry.cluster.local:*",))
        assert _refusal(job, listed) is None
        other = Settings(plain_http_registries=("registry.internal",))
        assert _refusal(job, other) is not None
    # TLS needs no entry.
    assert _refusal(_push(), Settings(plain_http_registries=())) is None


def test_a_ca_config_map_is_refused_unless_the_operator_lists_it() -> None:
    only_cluster_ca = Settings(allowed_ca_config_maps=("kube-root-ca.crt",))
    for build, field in ((_push, "spec.output.oci"), (_pull, "spec.model.registry")):
        mine = build(caConfigMapRef={"name": "my-ca", "key": "ca.crt"})
        refused = _refusal(mine, only_cluster_ca)
        assert refused is not None and refused[0] == "CaConfigMapNotAllowed", refused
        assert f"{field}.caConfigMapRef (my-ca)" in refused[1]
        assert _refusal(mine, Settings()) is None
        cluster = build(caConfigMapRef={"name": "kube-root-ca.crt", "key": "ca.crt"})
        assert _refusal(cluster, only_cluster_ca) is None
        refused = _refusal(cluster, Settings(allowed_ca_config_maps=()))
        assert refused is not None and "admits none" in refused[1]


def test_image_pull_secrets_are_secrets_the_job_names() -> None:
    job = make_job("a").set("resources.imagePullSecrets", ["finetune-pull", "regcred"])
    refused = _refusal(job, Settings(allowed_secret_names=("finetune-*",)))
    assert refused is not None and refused[0] == "SecretNotAllowed", refused
    assert "spec.resources.imagePullSecrets[1] (regcred)" in refused[1]
    assert "finetune-pull" not in refused[1]
    assert _refusal(job, Settings()) is None


def test_the_flags_parse_and_empty_means_none() -> None:
    settings = parse_options([], env={}).settings
    assert settings.plain_http_registries == ("*",) and settings.allowed_ca_config_maps == ("*",)
    settings = parse_options(
        ["--plain-http-registries", "", "--allowed-ca-config-maps", "kube-root-ca.crt"], env={}
    ).settings
    assert settings.plain_http_registries == ()
    assert settings.allowed_ca_config_maps == ("kube-root-ca.crt",)
