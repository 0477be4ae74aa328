"""A model folder as an OCI image that a kubelet can mount, and back.

    digest = push_model(folder, "oci://registry.example/models/llama-lora:v1", auth, lineage)
    pull_model("oci://registry.example/models/llama-lora:v1", target, auth)

The shape is the one serving reads today: a plain OCI image (manifest
application/vnd.oci.image.manifest.v1+json, config application/vnd.oci.image.config.v1+json
with rootfs.diff_ids) whose uncompressed tar layers hold the files under `models/`. A pod
mounts it with an `image` volume (Kubernetes 1.35+ by default; containerd 2.1+, 2.2+ for
subPath `models`), KServe's `oci+native://` mounts the same, and it pulls with any OCI
client. containerd mounts only image layers (application/vnd.oci.image.layer.*) listed in
an image config's rootfs: a CNCF ModelPack artifact (its own config and layer media types)
cannot be mounted, so the mountable image is the artifact. Layers are uncompressed (weights
do not compress; a layer's digest is then its diff_id), with fixed owners, modes and times
(the same folder always gives the same digests, so a push of unchanged files uploads
nothing): one layer per file of 64 MiB or more, one for all the smaller ones.

Lineage (base model, data hashes, the spec's hash, metrics, versions) goes into the
manifest's annotations (`dev.finetune.*`) and the config's Labels, where registries and
`crane`/`oras manifest fetch` show it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftapi.constants import DOCKER_CONFIG_KEY
from fttrainer.storage.paths import sha256_file

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
ROOT = "models"
OWN_LAYER_BYTES = 64 * 1024 * 1024
CHUNK = 64 * 1024 * 1024
FIXED_MTIME = 0
TIMEOUT = 60.0


class OciError(RuntimeError):
    """The registry refused or could not be reached; said without credentials.
    `permanent`: trying again would meet the same answer (401, 403, 404, a bad reference)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def target(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"oci://{self.registry}/{self.repository}{suffix}"


def parse_reference(uri: str) -> Reference:
    """oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]."""
    if not uri.startswith("oci://"):
        raise OciError(f"{uri!r} is not an oci:// reference", permanent=True)
    rest = uri.removeprefix("oci://")
    registry, _, path = rest.partition("/")
    digest = None
    if "@" in path:
        path, _, digest = path.partition("@")
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise OciError(f"{uri!r}: the digest must be sha256:<64 hex>", permanent=True)
    repository, tag = path, None
    if ":" in path.rsplit("/", 1)[-1]:
        repository, _, tag = path.rpartition(":")
    if not registry or not repository:
        raise OciError(f"{uri!r}: expected oci://registry/repository[:tag]", permanent=True)
    return Reference(registry, repository, tag, digest)


def docker_auth(config: Mapping[str, Any], registry: str) -> tuple[str, str] | None:
    """(user, password) for `registry` from a Docker config (a kubernetes.io/dockerconfigjson
    Secret's .dockerconfigjson): `auths[registry]` with `auth` (base64 user:password) or
    `username`/`password`."""
    for key, entry in (config.get("auths") or {}).items():
        host = key.removeprefix("https://").removeprefix("http://").rstrip("/")
        if host.split("/")[0] != registry:
            continue
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
        if entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
    return None


def local_docker_config() -> dict[str, Any]:
    """The Docker config a local run uses ($DOCKER_CONFIG/config.json, else
    ~/.docker/config.json), as docker, oras and crane read it; {} when there is none."""
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OciError(f"{path}: cannot read the Docker config ({exc})", permanent=True) from None
    return config if isinstance(config, dict) else {}


def connect(uri: str, *, secret_env: str, ca_env: str, plain_http: bool = False) -> Registry:
    """A client for the registry of `uri`, with the credentials of that direction: in a pod
    the operator puts the dockerconfigjson Secret in `secret_env` and the CA in `ca_env`;
    a local run without them reads the local Docker config."""
    reference = parse_reference(uri)
    text = os.environ.get(secret_env)
    if text:
        try:
            config = json.loads(text)
        except ValueError:
            raise OciError(
                f"{uri}: the registry Secret's {DOCKER_CONFIG_KEY} is not JSON (expected a "
                "kubernetes.io/dockerconfigjson Secret: kubectl create secret docker-registry)",
                permanent=True,
            ) from None
    else:
        config = local_docker_config()
    credentials = docker_auth(config if isinstance(config, dict) else {}, reference.registry)
    if text and credentials is None:
        raise OciError(
            f"{uri}: the registry Secret has no entry for {reference.registry} in its auths",
            permanent=True,
        )
    return Registry(
        reference.registry,
        credentials,
        ca_data=os.environ.get(ca_env) or None,
        plain_http=plain_http,
    )


def _deterministic(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = FIXED_MTIME
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def _layers(folder: Path) -> list[list[Path]]:
    """The files of each layer: every large file alone, then all the others together."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise OciError(f"{folder}: nothing to push (no files)", permanent=True)
    large = [[p] for p in files if p.stat().st_size >= OWN_LAYER_BYTES]
    small = [p for p in files if p.stat().st_size < OWN_LAYER_BYTES]
    return large + ([small] if small else [])


def write_layer(folder: Path, files: list[Path], out: Path) -> tuple[str, int]:
    """A tar of `files` under models/ (with their folders), written to `out`; its digest."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        added: set[str] = set()

        def directory(name: str) -> None:
            if name not in added:
                added.add(name)
                tar.addfile(_deterministic(_dir_info(name)))

        directory(ROOT)
        for path in files:
            relative = path.relative_to(folder)
            for parent in reversed(relative.parents[:-1]):
                directory(f"{ROOT}/{parent.as_posix()}")
            info = _deterministic(tar.gettarinfo(str(path), f"{ROOT}/{relative.as_posix()}"))
            with open(path, "rb") as reader:
                tar.addfile(info, reader)
    return "sha256:" + sha256_file(out), out.stat().st_size


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


@dataclass
class Registry:
    """The distribution API of one registry, with its credentials: Basic, or the Bearer token
    flow (WWW-Authenticate: Bearer realm=...), as the registry asks."""

    registry: str
    credentials: tuple[str, str] | None = None
    ca_file: str | None = None
    ca_data: str | None = None
    """PEM certificates to trust (a ConfigMap's value), besides or instead of ca_file."""
    plain_http: bool = False
    _token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        import ssl

        import httpx

        verify: Any = True
        if self.ca_file or self.ca_data:
            verify = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        scheme = "http" if self.plain_http else "https"
        self.base = f"{scheme}://{self.registry}"
        self.http = httpx.Client(verify=verify, timeout=TIMEOUT, follow_redirects=True)

    def close(self) -> None:
        self.http.close()

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._token:
            headers["Authorization"] = self._token
        return headers

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        ok: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        import httpx

        target = url if url.startswith("http") else self.base + url
        try:
            response = self.http.request(method, target, headers=self._headers(headers), **kwargs)
            if response.status_code == 401 and self._authenticate(response):
                response = self.http.request(
                    method, target, headers=self._headers(headers), **kwargs
                )
        except httpx.HTTPError as exc:
            raise OciError(
                f"{what}: cannot reach {self.registry} ({type(exc).__name__}: {exc})",
                permanent=False,
            ) from None
        if response.status_code not in ok:
            detail = response.text[:300].replace("\n", " ").strip()
            if response.status_code == 401:
                detail = (
                    "the credentials were refused"
                    if self.credentials
                    else "it needs credentials, and none were given"
                )
            raise OciError(
                f"{what}: {self.registry} answered {response.status_code}: {detail}",
                permanent=response.status_code in (400, 401, 403, 404, 405),
            )
        return response

    def _authenticate(self, response: Any) -> bool:
        """Credentials for the challenge; False when none apply (or they were refused)."""
        if self.credentials is None or (self._token is not None and "Basic" in self._token):
            return False
        challenge = response.headers.get("WWW-Authenticate", "")
        user, password = self.credentials
        basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if challenge.lower().startswith("basic"):
            self._token = basic
            return True
        if challenge.lower().startswith("bearer"):
            params = dict(_challenge_params(challenge[len("bearer") :]))
            realm = params.pop("realm", "")
            token = self.http.get(realm, params=params, headers={"Authorization": basic})
            if token.status_code != 200:
                return False
            body = token.json()
            self._token = "Bearer " + (body.get("token") or body.get("access_token") or "")
            return True
        return False

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            ok=(200, 404),
            what=f"looking up blob {digest[:19]}",
        )
        return bool(response.status_code == 200)

    def put_blob(self, repository: str, path: Path, digest: str) -> None:
        what = f"uploading {path.name} to {repository}"
        started = self.request("POST", f"/v2/{repository}/blobs/uploads/", ok=(202,), what=what)
        location = _absolute(self.base, started.headers["Location"])
        size = path.stat().st_size
        with open(path, "rb") as reader:
            offset = 0
            while size - offset > CHUNK:
                data = reader.read(CHUNK)
                patched = self.request(
                    "PATCH",
                    location,
                    ok=(202,),
                    what=what,
                    content=data,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(data) - 1}",
                    },
                )
                location = _absolute(self.base, patched.headers["Location"])
                offset += len(data)
            rest = reader.read()
        separator = "&" if "?" in location else "?"
        self.request(
            "PUT",
            f"{location}{separator}digest={digest}",
            ok=(201,),
            what=what,
            content=rest,
            headers={"Content-Type": "application/octet-stream"},
        )

    def put_manifest(self, repository: str, reference: str, manifest: bytes) -> str:
        response = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            ok=(201,),
            content=manifest,
            headers={"Content-Type": MANIFEST},
            what=f"pushing the manifest of {repository}",
        )
        return str(response.headers.get("Docker-Content-Digest") or _digest(manifest))

    def get_manifest(self, repository: str, reference: str) -> tuple[dict[str, Any], str]:
        response = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": MANIFEST},
            what=f"reading the manifest of {repository}:{reference}",
        )
        return json.loads(response.content), _digest(response.content)

    def blob_to(self, repository: str, digest: str, out: Path) -> None:
        import httpx

        what = f"downloading blob {digest[:19]} of {repository}"
        url = f"{self.base}/v2/{repository}/blobs/{digest}"
        hasher = hashlib.sha256()
        for attempt in range(2):
            try:
                with self.http.stream("GET", url, headers=self._headers()) as response:
                    if (
                        response.status_code == 401
                        and attempt == 0
                        and self._authenticate(response)
                    ):
                        continue
                    if response.status_code != 200:
                        raise OciError(
                            f"{what}: {self.registry} answered {response.status_code}",
                            permanent=True,
                        )
                    with open(out, "wb") as writer:
                        for chunk in response.iter_bytes(1024 * 1024):
                            hasher.update(chunk)
                            writer.write(chunk)
                break
            except httpx.HTTPError as exc:
                raise OciError(f"{what}: {type(exc).__name__}: {exc}", permanent=False) from None
        if "sha256:" + hasher.hexdigest() != digest:
            raise OciError(f"{what}: the content does not match its digest", permanent=True)


def _challenge_params(text: str) -> Iterator[tuple[str, str]]:
    for part in text.strip().split(","):
        key, _, value = part.strip().partition("=")
        if key:
            yield key, value.strip('"')


def _absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_model(
    folder: Path,
    uri: str,
    registry: Registry,
    *,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """Push `folder` as an image (see the module's docstring); the manifest's digest."""
    reference = parse_reference(uri)
    notes = dict(annotations or {})
    with tempfile.TemporaryDirectory(prefix="oci-push-") as scratch:
        descriptors = []
        for index, files in enumerate(_layers(folder)):
            out = Path(scratch) / f"layer-{index}.tar"
            digest, size = write_layer(folder, files, out)
            if not registry.has_blob(reference.repository, digest):
                registry.put_blob(reference.repository, out, digest)
            descriptors.append({"mediaType": LAYER, "digest": digest, "size": size})
            out.unlink()
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": notes},
                "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
            },
            sort_keys=True,
        ).encode()
        config_path = Path(scratch) / "config.json"
        config_path.write_bytes(config)
        config_digest = _digest(config)
        if not registry.has_blob(reference.repository, config_digest):
            registry.put_blob(reference.repository, config_path, config_digest)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config)},
            "layers": descriptors,
            "annotations": notes,
        },
        sort_keys=True,
    ).encode()
    return registry.put_manifest(reference.repository, reference.target, manifest)


def pull_model(uri: str, target: Path, registry: Registry) -> str:
    """The image's `models/` files extracted into `target` (which must not exist yet or be
    empty); every blob checked against its digest; the manifest's digest."""
    reference = parse_reference(uri)
    manifest, digest = registry.get_manifest(reference.repository, reference.target)
    if reference.digest and digest != reference.digest:
        raise OciError(
            f"{uri}: the registry sent a manifest of another digest ({digest})", permanent=True
        )
    if manifest.get("mediaType", MANIFEST) != MANIFEST:
        raise OciError(
            f"{uri}: not an OCI image manifest ({manifest.get('mediaType')})", permanent=True
        )
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="oci-pull-") as scratch:
        for layer in manifest.get("layers", []):
            if not str(layer.get("mediaType", "")).startswith(LAYER):
                continue
            blob = Path(scratch) / "layer.tar"
            registry.blob_to(reference.repository, layer["digest"], blob)
            _extract(blob, target, uri)
            blob.unlink()
    return digest


def _extract(blob: Path, target: Path, uri: str) -> None:
    """The layer's regular files under models/ into `target`; anything else (links, device
    files, a path leaving models/) is refused: the registry's content is not trusted."""
    with tarfile.open(blob, "r:*") as tar:
        for member in tar.getmembers():
            name = member.name.lstrip("./")
            if member.isdir():
                continue
            if not member.isfile():
                raise OciError(f"{uri}: {member.name!r} is not a regular file", permanent=True)
            parts = Path(name).parts
            if not parts or parts[0] != ROOT or ".." in parts or os.path.isabs(name):
                raise OciError(f"{uri}: {member.name!r} is outside {ROOT}/", permanent=True)
            destination = target.joinpath(*parts[1:])
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(destination, "wb") as writer:
                while chunk := source.read(8 * 1024 * 1024):
                    writer.write(chunk)
