"""A loopback stand-in for the Hugging Face Hub API, enough for ``create_repo``, ``create_branch`` and
``upload_folder`` of small files, recording what it receives.

    with HubServer() as hub:
        HfApi(endpoint=hub.endpoint, token="dummy").create_repo("org/name")
        hub.repos["org/name"].branches["main"]     # {path: bytes} committed to main

Endpoints (as huggingface_hub's hf_api.py and _commit_api.py call them):

- ``POST /api/repos/create`` ``{"name", "organization", "visibility"?, "type"?}`` -> ``{"url"}``; 409 if it exists.
- ``POST /api/models/{repo}/branch/{branch}`` ``{"startingPoint"?}`` -> ``{}``; 409 if it exists.
- ``POST /api/validate-yaml`` ``{"content", "repoType"}`` -> ``{"errors": [], "warnings": []}``.
- ``POST /api/models/{repo}/preupload/{revision}`` ``{"files": [{"path", "sample", "size"}]}`` -> every file
  ``"regular"`` (so contents come inline with the commit, never through LFS or Xet storage).
- ``POST /api/models/{repo}/commit/{revision}`` NDJSON: a ``header`` line, then ``file`` lines with base64
  contents -> ``{"commitUrl", "commitOid"}``.
- ``GET /api/models/{repo}`` and ``.../revision/{revision}`` -> minimal repository info.
- ``GET /api/agent-harnesses`` (huggingface_hub's user-agent detection) -> an empty registry.

Anything else answers 404 and is listed in ``unhandled``, so a test can assert that nothing unexpected was asked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

_REPO_ROUTE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<action>preupload|commit|branch|revision)/(?P<ref>.+))?$")


@dataclass
class Commit:
    """One commit as received: message, branch, files (path -> bytes) and the header line's content."""

    oid: str
    revision: str
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    """A repository: visibility, branches (name -> {path: bytes}) and commits in arrival order."""

    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[Commit] = field(default_factory=list)


class HubServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) playing the Hub; a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.tokens: set[str] = set()
        self.validated_yaml: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """The status and JSON reply of one request (called from the server's threads)."""
        with self._lock:
            self.requests.append((method, path))
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo(json.loads(body))
            if method == "GET" and path == "/api/agent-harnesses":  # huggingface_hub's user-agent detection
                return 200, {"standardEnvVars": [], "harnesses": {}}
            if method == "POST" and path == "/api/validate-yaml":
                self.validated_yaml.append(json.loads(body)["content"])
                return 200, {"errors": [], "warnings": []}
            match = _REPO_ROUTE.match(path)
            if match is None or match["repo"] not in self.repos:
                return self._unhandled(method, path) if match is None else (404, {"error": f"Repository {match['repo']} not found"})
            repo, action, ref = self.repos[match["repo"]], match["action"], unquote(match["ref"] or "main")
            if method == "POST" and action == "branch":
                if ref in repo.branches:
                    return 409, {"error": f"branch {ref} already exists"}
                starting_point = json.loads(body or b"{}").get("startingPoint") or "main"
                repo.branches[ref] = dict(repo.branches[starting_point])
                return 200, {}
            if method == "POST" and action == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                       for f in files]}
            if method == "POST" and action == "commit":
                return self._commit(match["repo"], repo, ref, body)
            if method == "GET" and action in (None, "revision"):
                sha = repo.commits[-1].oid if repo.commits else "0" * 40
                siblings = [{"rfilename": name} for name in repo.branches.get(ref, {})]
                return 200, {"id": match["repo"], "sha": sha, "private": repo.private, "siblings": siblings}
            return self._unhandled(method, path)

    def _create_repo(self, payload: dict[str, Any]) -> tuple[int, Any]:
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}
        self.repos[repo_id] = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}

    def _commit(self, repo_id: str, repo: Repo, revision: str, body: bytes) -> tuple[int, Any]:
        if revision not in repo.branches:
            return 404, {"error": f"Invalid rev id: {revision}"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {}
        for line in lines:
            if line["key"] == "file":
                value = line["value"]
                content = value["content"]
                files[value["path"]] = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
            elif line["key"] != "header":
                return 400, {"error": f"this test server takes inline files only; got a {line['key']!r} line"}
        oid = hashlib.sha1(body).hexdigest()
        repo.branches[revision].update(files)
        repo.commits.append(Commit(oid, revision, header["summary"], files))
        return 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def _unhandled(self, method: str, path: str) -> tuple[int, Any]:
        self.unhandled.append((method, path))
        return 404, {"error": f"{method} {path} is not served by the test Hub"}


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._reply("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._reply("POST")

        def _reply(self, method: str) -> None:
            authorisation = self.headers.get("Authorization", "")
            if authorisation.startswith("Bearer "):
                hub.tokens.add(authorisation.removeprefix("Bearer "))
            status, payload = hub.answer(method, urlsplit(self.path).path, self._body())
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().strip(), 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    return Handler
