"""The operator's watches: list, then watch, as client-go's informers do.

The FineTuneJobs, their FineTuneJobProgress objects, Jobs, pods and nodes are watched here;
kopf keeps the CRD (a few events a day) and runs the operator's lifecycle. Not kopf for the
rest, because its handling of one event (its causes, the kwargs of a handler, a logger, a
worker task per object) costs several times what reading it here does, measured side by side
(docs/results/history.md), and each job brings about a dozen such events, the nodes'
heartbeats besides (docs/operator.md, "What it watches").

One Informer per kind and namespace (or one for all namespaces): it lists the objects (those
that carry the label selector, when one is given), page by page, then watches from the
list's resourceVersion with bookmarks. A stream the server ends (timeoutSeconds) is watched
again from the last version seen; an expired version (410 Gone) or any error makes it list
again, after a backoff for errors: objects changed meanwhile are delivered as MODIFIED, those
that vanished as DELETED (what kopf's re-listing does not do). Requests use the kubernetes
client's configuration: its server, CA, client certificate and bearer token (read again, and
so refreshed, on every request).

`metadata_only` asks the API server for the objects' metadata alone (PartialObjectMetadata, as
client-go's metadata informers do): enough to know that a child changed or vanished, without
its contents crossing the wire or being parsed here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import orjson
from kubernetes import client

from .kube import JSON, PARTIAL_METADATA

log = logging.getLogger("ftoperator")

Deliver = Callable[[str, dict[str, Any]], None]  # (ADDED/MODIFIED/DELETED, the object)
PAGE = 500
MAX_BACKOFF_SECONDS = 30.0


class Expired(Exception):
    """The resourceVersion to watch from is too old (410 Gone): list again."""


class WatchError(Exception):
    """The API server refused a list or watch, or the stream broke off."""


class Informer:
    def __init__(
        self,
        configuration: client.Configuration,
        kind: str,
        collection: str,
        selector: str | None,
        deliver: Deliver,
        *,
        accept: Callable[[str], bool] | None = None,
        server_timeout: int = 270,
        metadata_only: bool = False,
        keep: tuple[str, ...] = (),
    ) -> None:
        """`collection`: the URL path of the objects (`/api/v1/pods`, or a namespace's);
        `accept`: which namespaces to deliver (all when None); `kind` and the collection's
        API version are set on listed objects (a list's items carry neither). `selector`
        is the label selector's key (the objects that carry it are delivered; None: every
        object). `keep`: the metadata fields remembered of each object for the DELETED
        stub of one that vanished while nothing watched (client-go's last known state),
        e.g. the ownerReferences an observer ties the object to its job by."""
        self.configuration = configuration
        self.kind = kind
        self.collection = collection
        self.api_version = _api_version(collection)
        self.selector = selector
        self.deliver = deliver
        self.accept = accept
        self.server_timeout = server_timeout
        self.metadata_only = metadata_only
        self.keep = keep
        # (namespace, name) -> (resourceVersion, the selector's label value and the kept
        # metadata, for DELETED)
        self.known: dict[tuple[str, str], tuple[str, str, dict[str, Any] | None]] = {}
        self.lists = 0  # how often it listed (the first list, then after errors or 410s)

    async def run(self) -> None:
        """List and watch until cancelled."""
        version: str | None = None
        delay = 0.0
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=30, sock_read=self.server_timeout + 30
        )
        connector = aiohttp.TCPConnector(ssl=ssl_context(self.configuration))
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while True:
                try:
                    if version is None:
                        version = await self._list(session)
                    version = await self._watch(session, version)
                    delay = 0.0
                except Expired:
                    version = None
                except Exception as error:  # never ends silently: logged, listed again
                    delay = min(max(delay * 2, 0.5), MAX_BACKOFF_SECONDS)
                    log.warning(
                        "watching %s: %s; listing again in %.1f s",
                        self.collection,
                        error or type(error).__name__,
                        delay,
                    )
                    version = None
                    await asyncio.sleep(delay)

    async def _list(self, session: aiohttp.ClientSession) -> str:
        """Deliver what changed since the objects were last known, DELETED for those gone;
        the list's resourceVersion."""
        self.lists += 1
        listed: set[tuple[str, str]] = set()
        cont = ""
        while True:
            params = {"limit": str(PAGE), **self._selecting()}
            if cont:
                params["continue"] = cont
            headers = self._headers("PartialObjectMetadataList")
            async with session.get(self._url(), params=params, headers=headers) as answer:
                if answer.status == 410:  # the continue token expired: start over
                    raise Expired()
                page = await _json(answer)
            for item in page.get("items") or []:
                if not self.metadata_only:  # PartialObjectMetadata is what those say
                    item.setdefault("kind", self.kind)
                    item.setdefault("apiVersion", self.api_version)
                ref = _ref(item)
                listed.add(ref)
                self._observe("MODIFIED" if ref in self.known else "ADDED", item)
            metadata = page.get("metadata") or {}
            cont = str(metadata.get("continue") or "")
            if not cont:
                break
        for ref in [ref for ref in self.known if ref not in listed]:
            _, value, kept = self.known.pop(ref)
            stub: dict[str, Any] = {**(kept or {}), "namespace": ref[0], "name": ref[1]}
            if self.selector is not None:
                stub["labels"] = {self.selector: value}
            self.deliver(
                "DELETED", {"kind": self.kind, "apiVersion": self.api_version, "metadata": stub}
            )
        return str(metadata.get("resourceVersion") or "")

    async def _watch(self, session: aiohttp.ClientSession, version: str) -> str:
        """Deliver the stream's events until the server ends it; the last version seen."""
        params = {
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.server_timeout),
            **self._selecting(),
        }
        headers = self._headers("PartialObjectMetadata")
        async with session.get(self._url(), params=params, headers=headers) as answer:
            if answer.status == 410:
                raise Expired()
            if answer.status != 200:
                await _json(answer)  # raises WatchError with the server's message
            async for line in _lines(answer.content):
                event = orjson.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired()
                    raise WatchError(str(obj.get("message") or obj))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind != "BOOKMARK":
                    self._observe(str(kind), obj)
        return version

    def _observe(self, kind: str, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        ref = _ref(obj)
        if self.accept is not None and not self.accept(ref[0]):
            return
        if kind == "DELETED":
            self.known.pop(ref, None)
        else:
            version = str(metadata.get("resourceVersion") or "")
            held = self.known.get(ref)
            if held is not None and held[0] == version:
                return  # a list's copy of what was already delivered
            # Interned: a job's children share its name (and all their namespace).
            labels = metadata.get("labels") or {}
            value = sys.intern(str(labels.get(self.selector, ""))) if self.selector else ""
            kept = {key: metadata[key] for key in self.keep if key in metadata} or None
            self.known[(sys.intern(ref[0]), ref[1])] = (version, value, kept)
        self.deliver(kind, obj)

    def _selecting(self) -> dict[str, str]:
        return {} if self.selector is None else {"labelSelector": self.selector}

    def _url(self) -> str:
        return f"{self.configuration.host}{self.collection}"

    def _headers(self, metadata_as: str) -> dict[str, str]:
        """Accept JSON (the metadata alone as `metadata_as`, when metadata_only); the bearer
        token as the client has it now (refreshed by its hook)."""
        accept = PARTIAL_METADATA.format(metadata_as) if self.metadata_only else JSON
        headers = {"Accept": accept}
        settings = cast(dict[str, dict[str, Any]], self.configuration.auth_settings())
        for setting in settings.values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[str(setting["key"])] = str(setting["value"])
        return headers


def ssl_context(configuration: client.Configuration) -> ssl.SSLContext:
    """TLS as the kubernetes client makes it: the cluster's CA (or no check when the
    kubeconfig says insecure-skip-tls-verify), the client certificate when there is one."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


async def _lines(stream: aiohttp.StreamReader) -> Any:
    """The stream's lines, however long (aiohttp's own line reader stops at 64 KiB)."""
    buffer = bytearray()
    async for chunk in stream.iter_any():
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            if end > start:
                yield buffer[start:end]  # a copy; orjson reads a bytearray as it is
            start = end + 1
        del buffer[:start]
    if buffer.strip():
        yield bytes(buffer)


async def _json(answer: aiohttp.ClientResponse) -> dict[str, Any]:
    data = await answer.read()
    if not 200 <= answer.status <= 299:
        text = data.decode("utf-8", errors="replace")
        try:
            message = json.loads(text).get("message") or text
        except (ValueError, AttributeError):
            message = text
        raise WatchError(f"{answer.status} {answer.reason}: {message}"[:500])
    return dict(orjson.loads(data))


def _ref(obj: dict[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _api_version(collection: str) -> str:
    """`v1` for /api/v1/..., `batch/v1` for /apis/batch/v1/..."""
    parts = collection.strip("/").split("/")
    return parts[1] if parts[0] == "api" else f"{parts[1]}/{parts[2]}"
