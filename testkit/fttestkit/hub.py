"""A stand-in for the Hugging Face Hub's upload API (no Hub is reachable here), enough for
huggingface_hub's create_repo + create_commit to succeed against it: repository creation,
preupload (files of 10 MiB or more, and weights, go by LFS as on the Hub), the legacy LFS
batch API with basic PUT and verify, and the NDJSON commit. What it does not speak: Xet
storage (clients must run with HF_HUB_DISABLE_XET=1), downloads, branches, pull requests,
and the real Hub's checks of what is committed (a model card's YAML is taken as valid).

    with StandInHub() as hub:            # hub.endpoint for HF_ENDPOINT
        ...
        hub.files("user/model")          # {path: bytes} of the last commit
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USER = "stand-in-user"
LFS_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class HubState:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    """Paths whose content came through LFS (for tests to see the protocol was used)."""
    commits: list[dict[str, Any]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


def _handler(state: HubState, endpoint: list[str]) -> type[BaseHTTPRequestHandler]:
    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _json(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _auth(self) -> bool:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            state.tokens.append(token)
            if not token:
                self._json(401, {"error": "no token"})
                return False
            return True

        def do_POST(self) -> None:
            body = self._body()
            if not self._auth():
                return
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                request = json.loads(body)
                repo = f"{request.get('organization') or USER}/{request['name']}"
                state.repos.setdefault(repo, {})
                self._json(200, {"url": f"{endpoint[0]}/{repo}", "name": repo})
            elif path == "/api/validate-yaml":  # a README.md (model card) in the commit
                self._json(200, {"errors": [], "warnings": []})
            elif path.startswith("/api/models/") and "/preupload/" in path:
                files = json.loads(body)["files"]
                self._json(200, {"files": [{
                    "path": f["path"], "shouldIgnore": False,
                    "uploadMode": "lfs" if f["size"] >= LFS_THRESHOLD
                    or f["path"].endswith(LFS_SUFFIXES) else "regular",
                } for f in files]})  # fmt: skip
            elif path.endswith(".git/info/lfs/objects/batch"):
                objects = json.loads(body)["objects"]
                self._json(200, {"transfer": "basic", "objects": [{
                    "oid": o["oid"], "size": o["size"],
                    "actions": {"upload": {"href": f"{endpoint[0]}/lfs/{o['oid']}"},
                                "verify": {"href": f"{endpoint[0]}/lfs-verify"}},
                } for o in objects]})  # fmt: skip
            elif path == "/lfs-verify":
                verified = json.loads(body)
                ok = verified["oid"] in state.lfs
                self._json(200 if ok else 404, {"ok": ok})
            elif path.startswith("/api/models/") and "/commit/" in path:
                repo = path.removeprefix("/api/models/").split("/commit/")[0]
                self._commit(repo, body)
            else:
                self._json(404, {"error": f"not served: {path}"})

        def _commit(self, repo: str, body: bytes) -> None:
            if repo not in state.repos:
                self._json(404, {"error": f"no repository {repo}"})
                return
            files = dict(state.repos[repo])
            header: dict[str, Any] = {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    header = value
                elif item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    if value["oid"] not in state.lfs:
                        self._json(400, {"error": f"LFS object {value['oid']} was not uploaded"})
                        return
                    files[value["path"]] = state.lfs[value["oid"]]
                    state.lfs_paths.add(f"{repo}/{value['path']}")
            state.repos[repo] = files
            oid = hashlib.sha1(body).hexdigest()
            state.commits.append({"repo": repo, "summary": header.get("summary"), "oid": oid})
            self._json(200, {"commitUrl": f"{endpoint[0]}/{repo}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": None})  # fmt: skip

        def do_PUT(self) -> None:
            body = self._body()
            oid = self.path.removeprefix("/lfs/")
            if hashlib.sha256(body).hexdigest() != oid:
                self._json(400, {"error": "content does not match its oid"})
                return
            state.lfs[oid] = body
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._json(404, {"error": f"not served: {self.path}"})

    return Hub


class StandInHub:
    def __init__(self) -> None:
        self.state = HubState()
        self._endpoint: list[str] = [""]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state, self._endpoint))
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._endpoint[0] = self.endpoint

    def __enter__(self) -> StandInHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> dict[str, bytes]:
        return dict(self.state.repos.get(repo, {}))
