"""A loopback Hugging Face Hub emulator for the real ``huggingface_hub`` client (2.x, ``HF_HUB_DISABLE_XET=1``).

It serves the HTTP API as ``huggingface_hub`` uses it (``hf_api.py``, ``file_download.py``, ``_commit_api.py``,
``lfs.py``, ``utils/_http.py``): repo info, tree and paths-info listings, refs, commits history, ``/resolve/``
downloads (HEAD + GET with Range), the preupload / LFS batch / commit upload flow, branches and tags, with the
status codes and ``X-Error-Code`` headers the client maps to its exception classes. Test hooks: a request log with
counters, and fault injection (size-equal corruption, a commit landing before the client's, 429 with Retry-After,
a connection cut mid-download, offline).

Usage from Python: ``HubSim().start()`` then ``HfApi(endpoint=hub.url, token=hub.write_token)``. From a shell:
``python -m tests.hubsim.server --port 0 --root DIR`` prints the URL on stdout and serves until SIGTERM/SIGINT.
See ``tests/hubsim/README.md``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from .store import (
    DEFAULT_BRANCH,
    LFS_THRESHOLD,
    Commit,
    FileEntry,
    HubError,
    LfsRef,
    Objects,
    Repo,
    Store,
    entry_not_found,
    iso_date,
    parse_front_matter,
    repo_not_found,
    revision_not_found,
)

Role = Literal["read", "write"]


@dataclass(frozen=True)
class Token:
    """An access token of ``user`` with ``role`` rights on the namespaces ``user`` and ``orgs``."""

    value: str
    user: str
    role: Role = "write"
    orgs: tuple[str, ...] = ()

    @property
    def namespaces(self) -> set[str]:
        return {self.user, *self.orgs}


DEFAULT_TOKENS: tuple[Token, ...] = (
    Token("hf_hubsim_alice_write", "alice", "write", ("lora-org",)),
    Token("hf_hubsim_alice_read", "alice", "read", ("lora-org",)),
    Token("hf_hubsim_bob_write", "bob", "write"),
)


@dataclass
class LogEntry:
    """One request as served. ``kind`` names the endpoint (``resolve``, ``commit``, ``lfs-upload``, ...);
    ``bytes_in`` / ``bytes_out`` count body bytes only. :meth:`HubSim.requests` returns copies."""

    method: str
    path: str
    query: str
    status: int
    bytes_in: int
    bytes_out: int
    kind: str
    repo_id: str | None
    authenticated: bool
    range: str | None


@dataclass
class _FailRule:
    times: int
    status: int
    retry_after: int | None
    kind: str | None
    method: str | None

    def matches(self, kind: str, method: str) -> bool:
        return (self.kind is None or self.kind == kind) and (self.method is None or self.method == method)


@dataclass
class _Hook:
    fn: Callable[[str, str], None]
    times: int


@dataclass
class _Cut:
    after_bytes: int
    times: int
    path: str | None = None


@dataclass
class _Request:
    method: str
    kind: str
    segs: list[str]  # raw (still quoted) path segments
    query: dict[str, list[str]]
    repo_id: str | None = None
    token: Token | None = None
    body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.q(name) or "").lower() in ("1", "true", "yes")


_REPO_API = {"revision", "tree", "paths-info", "refs", "commits", "preupload", "commit", "branch", "tag"}


def _route(method: str, segs: list[str]) -> tuple[str, str | None]:
    """``(kind, repo_id)`` of a request path; ``kind`` is ``unknown`` for paths the emulator does not serve."""
    n = len(segs)
    if n >= 2 and segs[0] == "api":
        if segs[1] == "whoami-v2":
            return "whoami", None
        if segs[1] == "validate-yaml":
            return "validate-yaml", None
        if n == 3 and segs[1] == "repos" and segs[2] in ("create", "delete"):
            return f"{segs[2]}-repo", None
        if segs[1] == "models" and n == 2:
            return "list-models", None
        if segs[1] == "models" and n >= 4:
            repo_id = f"{unquote(segs[2])}/{unquote(segs[3])}"
            if n == 4:
                return "info", repo_id
            if segs[4] in _REPO_API:
                return ("info" if segs[4] == "revision" else segs[4]), repo_id
        return "unknown", None
    if n >= 2 and segs[0] == "__hubsim":
        if segs[1] == "lfs" and n == 5:
            return "lfs-upload", f"{unquote(segs[2])}/{unquote(segs[3])}"
        if segs[1] == "lfs-verify" and n == 4:
            return "lfs-verify", f"{unquote(segs[2])}/{unquote(segs[3])}"
        if segs[1] == "cdn" and n == 3:
            return "cdn", None
        return "unknown", None
    if n == 6 and segs[1].endswith(".git") and segs[2:] == ["info", "lfs", "objects", "batch"]:
        return "lfs-batch", f"{unquote(segs[0])}/{unquote(segs[1][: -len('.git')])}"
    if n >= 5 and segs[2] == "resolve":
        return "resolve", f"{unquote(segs[0])}/{unquote(segs[1])}"
    return "unknown", None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], hub: HubSim) -> None:
        self.hub = hub
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hubsim/1"
    timeout = 60
    server: _Server

    # --------------------------------------------------------- plumbing
    def setup(self) -> None:
        super().setup()
        self.server.hub._track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.hub._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _iter_body(self) -> Iterator[bytes]:
        if self._consumed:
            return
        self._consumed = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    chunk = self.rfile.read(min(left, Objects.CHUNK))
                    if not chunk:
                        raise ConnectionError("client closed the connection mid-body")
                    left -= len(chunk)
                    self._bytes_in += len(chunk)
                    yield chunk
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                chunk = self.rfile.read(min(left, Objects.CHUNK))
                if not chunk:
                    raise ConnectionError("client closed the connection mid-body")
                left -= len(chunk)
                self._bytes_in += len(chunk)
                yield chunk

    def _drain(self) -> None:
        for _ in self._iter_body():
            pass

    def _start(self, status: int, headers: Mapping[str, str]) -> None:
        self._status = status
        self._entry.status = status
        self._entry.bytes_in = self._bytes_in
        self.server.hub._record(self._entry)  # before the client can see the answer
        self.send_response(status)
        for key, value in headers.items():
            # http.server encodes headers as strict latin-1: keep a non-latin-1 path from breaking the answer
            self.send_header(key, value.encode("latin-1", "replace").decode("latin-1"))
        self.end_headers()

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self._drain()
        all_headers = {"Content-Type": "application/json", **(headers or {}), "Content-Length": str(len(body))}
        self._start(status, all_headers)
        if self.command != "HEAD" and body:
            self._write(body)

    def _write(self, data: bytes) -> None:
        self._entry.bytes_out += len(data)  # counted before the write, for the same reason as in _start
        self.wfile.write(data)

    def _json(self, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubError, headers: Mapping[str, str] | None = None) -> None:
        h = {"X-Error-Message": err.message}
        if err.code:
            h["X-Error-Code"] = err.code
        self._json({"error": err.message}, err.status, {**h, **(headers or {})})

    # ---------------------------------------------------------- dispatch
    def _handle(self, method: str) -> None:
        hub = self.server.hub
        self._consumed = False
        self._bytes_in = 0
        self._status = 0
        split = urlsplit(self.path)
        segs = split.path.split("/")[1:]
        kind, repo_id = _route(method, segs)
        auth = self.headers.get("Authorization")
        self._entry = LogEntry(
            method=method,
            path=split.path,
            query=split.query,
            status=0,
            bytes_in=0,
            bytes_out=0,
            kind=kind,
            repo_id=repo_id,
            authenticated=auth is not None,
            range=self.headers.get("Range"),
        )
        req = _Request(method, kind, segs, parse_qs(split.query), repo_id)
        try:
            try:
                if kind != "lfs-upload":
                    req.body = b"".join(self._iter_body())
                rule = hub._take_fault(kind, method)
                if rule is not None:
                    headers = {} if rule.retry_after is None else {"Retry-After": str(rule.retry_after)}
                    raise HubError(rule.status, f"hubsim injected {rule.status}").with_headers(headers)
                req.token = hub._authenticate(auth)
                getattr(self, "_h_" + kind.replace("-", "_"))(req)
            except HubError as err:
                self._error(err, err.headers)
            except (ValueError, KeyError, TypeError, IndexError) as err:
                self._error(HubError(400, f"hubsim: malformed request: {type(err).__name__}: {err}"))
            except (ConnectionError, OSError):
                raise
            except Exception as err:  # a bug in the emulator: say so instead of dropping the connection
                traceback.print_exc()
                if self._status:
                    raise
                self._error(HubError(500, f"hubsim internal error: {type(err).__name__}: {err}"))
        except (ConnectionError, OSError):
            self.close_connection = True
            if not self._status:  # no answer went out: log the request as dropped
                self._entry.status = 499
                self._entry.bytes_in = self._bytes_in
                hub._record(self._entry)

    # ------------------------------------------------------------- access
    def _readable(self, req: _Request) -> Repo:
        """The repo if ``req.token`` may read it; 401 RepoNotFound without a token, 404 with one (as the Hub)."""
        hub = self.server.hub
        assert req.repo_id is not None
        repo = hub.store.get(req.repo_id)
        if repo is None or (repo.private and (req.token is None or repo.namespace not in req.token.namespaces)):
            raise repo_not_found(req.repo_id, 401 if req.token is None else 404)
        return repo

    def _writable(self, req: _Request) -> Repo:
        repo = self._readable(req)
        if req.token is None:
            raise HubError(401, "You must be authenticated to write to this repo")
        if req.token.role != "write" or repo.namespace not in req.token.namespaces:
            raise HubError(403, f"You don't have the rights to write to {repo.repo_id} with this token")
        return repo

    # ----------------------------------------------------------- handlers
    def _h_unknown(self, req: _Request) -> None:
        raise HubError(404, f"hubsim does not serve {req.method} /{'/'.join(req.segs)}")

    def _h_whoami(self, req: _Request) -> None:
        if req.token is None:
            raise HubError(401, "Invalid user token.")
        t = req.token
        self._json(
            {
                "type": "user",
                "name": t.user,
                "fullname": t.user,
                "orgs": [{"name": o, "type": "org"} for o in t.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "hubsim", "role": t.role}},
            }
        )

    def _h_validate_yaml(self, req: _Request) -> None:
        content = json.loads(req.body or b"{}").get("content", "")
        try:
            parse_front_matter(content)
        except ValueError as e:
            self._json({"errors": [{"message": str(e)}], "warnings": []}, 400)
            return
        self._json({"errors": [], "warnings": []})

    def _h_create_repo(self, req: _Request) -> None:
        hub = self.server.hub
        if req.method != "POST":
            raise HubError(405, "POST only")
        payload = json.loads(req.body or b"{}")
        if payload.get("type") not in (None, "model"):
            raise HubError(400, "hubsim serves model repos only")
        if req.token is None:
            raise HubError(401, "You must be authenticated to create a repo")
        repo_id = f"{payload.get('organization') or req.token.user}/{payload.get('name')}"
        if req.token.role != "write" or repo_id.split("/")[0] not in req.token.namespaces:
            raise HubError(403, f"You don't have the rights to create a model under the namespace {repo_id}")
        url = f"{hub.url}/{repo_id}"
        if hub.store.get(repo_id) is not None:
            self._json({"error": "You already created this model repo", "url": url}, 409)
            return
        repo = hub.store.create_repo(repo_id, private=payload.get("visibility") == "private")
        self._json({"url": url, "name": repo_id, "id": repo.uid})

    def _h_delete_repo(self, req: _Request) -> None:
        payload = json.loads(req.body or b"{}")
        if req.token is None:
            raise HubError(401, "You must be authenticated to delete a repo")
        req.repo_id = f"{payload.get('organization') or req.token.user}/{payload.get('name')}"
        self._writable(req)
        self.server.hub.store.delete_repo(req.repo_id)
        self._json({})

    def _h_list_models(self, req: _Request) -> None:
        """``GET /api/models?author=NS`` (``list_models(author=)``): the repos of ``NS`` this token can read, in
        one page; other search parameters are ignored."""
        hub = self.server.hub
        author = req.q("author")
        out = []
        with hub.store.lock:
            repos = sorted(hub.store.repos.values(), key=lambda r: r.repo_id)
        for repo in repos:
            if author is not None and repo.namespace != author:
                continue
            if repo.private and (req.token is None or repo.namespace not in req.token.namespaces):
                continue
            head = hub.store.commit_at(repo, None)
            out.append({"_id": repo.uid, "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.namespace,
                        "sha": head.oid, "private": repo.private, "lastModified": head.date,
                        "createdAt": iso_date(repo.created_at), "downloads": 0, "likes": 0, "tags": []})  # fmt: skip
        self._json(out)

    def _h_info(self, req: _Request) -> None:
        hub = self.server.hub
        repo = self._readable(req)
        revision = unquote(req.segs[5]) if len(req.segs) > 5 else None
        commit = hub.store.commit_at(repo, revision)
        blobs = req.flag("blobs")
        card: dict | None = None
        if "README.md" in commit.files:
            with contextlib.suppress(ValueError):
                card = parse_front_matter(hub.store.read(commit.files["README.md"]).decode(errors="replace"))
        siblings = []
        for entry in commit.files.values():
            sib: dict[str, Any] = {"rfilename": entry.path}
            if blobs:
                sib.update(size=entry.size, blobId=entry.blob_oid)
                if entry.lfs:
                    sib["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            siblings.append(sib)
        card_tags = (card or {}).get("tags") or []
        tags = [card_tags] if isinstance(card_tags, str) else list(card_tags)
        if (card or {}).get("library_name"):
            tags.insert(0, card["library_name"])
        info: dict[str, Any] = {
            "_id": repo.uid,
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": iso_date(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if card is not None:
            info["cardData"] = card
            for key in ("library_name", "pipeline_tag"):
                if card.get(key):
                    info[key] = card[key]
        self._json(info)

    def _entry_json(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        hub = self.server.hub
        entry = commit.files.get(path)
        if entry is not None:
            out: dict[str, Any] = {"type": "file", "oid": entry.blob_oid, "size": entry.size, "path": path}
            if entry.lfs:
                out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        else:
            out = {"type": "directory", "oid": commit.tree_oids[path], "size": 0, "path": path}
        if expand:
            last = hub.store.last_commit(repo, commit.oid, path)
            out["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
            if entry is not None:
                out["securityFileStatus"] = {"status": "unscanned", "avScan": None, "pickleImportScan": None}
        return out

    def _paginated(self, req: _Request, items: list[Any], page_size: int, render: Callable[[Any], Any]) -> None:
        start = int(req.q("cursor") or 0)
        page = items[start : start + page_size]
        headers = {}
        if start + page_size < len(items):
            query = {k: v[0] for k, v in req.query.items()}
            query["cursor"] = str(start + page_size)
            next_url = f"{self.server.hub.url}/{'/'.join(req.segs)}?{urlencode(query)}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._json([render(item) for item in page], headers=headers)

    def _h_tree(self, req: _Request) -> None:
        hub = self.server.hub
        repo = self._readable(req)
        if len(req.segs) < 6:
            raise HubError(400, "missing revision")
        commit = hub.store.commit_at(repo, unquote(req.segs[5]))
        base = unquote("/".join(req.segs[6:])).strip("/")
        if base and base not in commit.tree_oids:
            raise entry_not_found(base)
        recursive, expand = req.flag("recursive"), req.flag("expand")
        prefix = f"{base}/" if base else ""
        paths = [p for p in [*commit.tree_oids, *commit.files] if p and p.startswith(prefix)]
        if not recursive:
            paths = [p for p in paths if "/" not in p[len(prefix) :]]
        paths.sort()
        size = hub.page_size if not expand else min(hub.page_size, 50)
        self._paginated(req, paths, size, lambda p: self._entry_json(repo, commit, p, expand))

    def _h_paths_info(self, req: _Request) -> None:
        hub = self.server.hub
        repo = self._readable(req)
        commit = hub.store.commit_at(repo, unquote(req.segs[5]))
        if self.headers.get("Content-Type", "").startswith("application/json"):
            payload = json.loads(req.body or b"{}")
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(req.body.decode())
            paths, expand = form.get("paths", []), (form.get("expand", ["false"])[0].lower() in ("1", "true"))
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files or (path and path in commit.tree_oids):
                out.append(self._entry_json(repo, commit, path, expand))
        self._json(out)

    def _h_refs(self, req: _Request) -> None:
        repo = self._readable(req)
        with self.server.hub.store.lock:
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in repo.branches.items() if oid
            ]
            tags = [
                {"name": t.name, "ref": f"refs/tags/{t.name}", "targetCommit": t.commit} for t in repo.tags.values()
            ]
        out: dict[str, Any] = {"branches": branches, "converts": [], "tags": tags}
        if req.flag("include_prs"):
            out["pullRequests"] = []
        self._json(out)

    def _h_commits(self, req: _Request) -> None:
        hub = self.server.hub
        repo = self._readable(req)
        revision = unquote(req.segs[5]) if len(req.segs) > 5 else None
        history = hub.store.history(repo, hub.store.resolve(repo, revision))

        def render(c: Commit) -> dict[str, Any]:
            return {
                "id": c.oid,
                "title": c.title,
                "message": c.description,
                "authors": [{"user": c.author, "avatar": None}],
                "date": c.date,
            }

        self._paginated(req, history, hub.page_size, render)

    def _branch_head(self, repo: Repo, branch: str) -> Commit:
        store = self.server.hub.store
        with store.lock:
            oid = repo.branches.get(branch.removeprefix("refs/heads/"))
            if not oid:
                raise revision_not_found(branch)
            return repo.commits[oid]

    def _h_preupload(self, req: _Request) -> None:
        store = self.server.hub.store
        repo = self._writable(req)
        if req.flag("create_pr"):
            raise HubError(400, "hubsim does not implement pull requests")
        head = self._branch_head(repo, unquote(req.segs[5]))
        payload = json.loads(req.body or b"{}")
        gitignore = payload.get("gitIgnore")
        files = []
        for f in payload.get("files", []):
            path = f["path"]
            mode = store.upload_mode(repo, head, path, int(f["size"]), base64.b64decode(f.get("sample", "")))
            info: dict[str, Any] = {
                "path": path,
                "uploadMode": mode,
                "shouldIgnore": store.should_ignore(head, path, gitignore),
            }
            remote = head.files.get(path)
            if remote is not None:
                info["oid"] = remote.sha256 if remote.lfs else remote.blob_oid
            files.append(info)
        self._json({"files": files, "commitOid": head.oid})

    def _h_lfs_batch(self, req: _Request) -> None:
        hub = self.server.hub
        repo = self._writable(req)
        payload = json.loads(req.body or b"{}")
        if payload.get("operation") != "upload":
            raise HubError(400, "hubsim serves the LFS batch API for uploads only")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            out: dict[str, Any] = {"oid": oid, "size": size}
            if not hub.store.is_lfs_in_repo(repo, oid):
                sig = hub._sign(f"{repo.repo_id}/{oid}/{size}")
                ns, name = (quote(p, safe="") for p in repo.repo_id.split("/"))
                query = urlencode({"size": size, "sig": sig})
                out["authenticated"] = True
                out["actions"] = {"upload": {"href": f"{hub.url}/__hubsim/lfs/{ns}/{name}/{oid}?{query}", "header": {}}}
                if hub.lfs_verify:
                    out["actions"]["verify"] = {"href": f"{hub.url}/__hubsim/lfs-verify/{ns}/{name}", "header": {}}
            objects.append(out)
        self._json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _h_lfs_upload(self, req: _Request) -> None:
        hub = self.server.hub
        if req.method != "PUT":
            raise HubError(405, "PUT only")
        oid, size = req.segs[4], int(req.q("size") or -1)
        if not hmac.compare_digest(req.q("sig") or "", hub._sign(f"{req.repo_id}/{oid}/{size}")):
            raise HubError(403, "invalid or missing upload signature")
        repo = hub.store.get(req.repo_id or "")
        if repo is None:
            raise repo_not_found(req.repo_id or "")
        sha, got = hub.store.objects.put_stream(self._iter_body())
        if sha != oid or got != size:
            raise HubError(400, f"uploaded content has sha256 {sha} and size {got}, expected {oid} and {size}")
        hub.store.add_lfs_object(repo, oid)
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def _h_lfs_verify(self, req: _Request) -> None:
        hub = self.server.hub
        repo = self._writable(req)
        payload = json.loads(req.body or b"{}")
        oid, size = payload.get("oid", ""), payload.get("size")
        if not hub.store.is_lfs_in_repo(repo, oid) or hub.store.objects.size(oid) != size:
            raise HubError(404, f"LFS object {oid} of size {size} not found")
        self._json({"success": True})

    def _h_commit(self, req: _Request) -> None:
        hub = self.server.hub
        repo = self._writable(req)
        if req.flag("create_pr"):
            raise HubError(400, "hubsim does not implement pull requests")
        branch = unquote(req.segs[5]).removeprefix("refs/heads/")
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must be NDJSON starting with a header line")
        header = lines[0]["value"]
        adds: dict[str, bytes | LfsRef] = {}
        deletes: list[str] = []
        deleted_folders: list[str] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')}")
                adds[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                oid = value["oid"]
                if not hub.store.is_lfs_in_repo(repo, oid):
                    raise HubError(400, f"LFS file {value['path']} ({oid}) was not uploaded")
                adds[value["path"]] = LfsRef(oid, int(value.get("size", hub.store.objects.size(oid))))
            elif key == "deletedFile":
                deletes.append(value["path"])
            elif key == "deletedFolder":
                deleted_folders.append(value["path"])
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        self._branch_head(repo, branch)  # 404 before the hook for a missing branch
        hub._run_commit_hooks(repo.repo_id, branch)
        commit = hub.store.commit(
            repo.repo_id,
            branch,
            adds,
            deletes=deletes,
            deleted_folders=deleted_folders,
            title=header.get("summary") or "Upload files",
            description=header.get("description") or "",
            author=req.token.user if req.token else "hubsim",
            parent_commit=header.get("parentCommit"),
        )
        self._json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{hub.url}/{repo.repo_id}/commit/{commit.oid}",
                "commitMessage": commit.title,
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    def _h_branch(self, req: _Request) -> None:
        store = self.server.hub.store
        repo = self._writable(req)
        branch = unquote(req.segs[5])
        if req.method == "DELETE":
            store.delete_branch(repo.repo_id, branch)
        else:
            payload = json.loads(req.body or b"{}")
            store.create_branch(repo.repo_id, branch, payload.get("startingPoint"))
        self._json({})

    def _h_tag(self, req: _Request) -> None:
        store = self.server.hub.store
        repo = self._writable(req)
        name = unquote(req.segs[5])
        if req.method == "DELETE":
            store.delete_tag(repo.repo_id, name)
        else:
            payload = json.loads(req.body or b"{}")
            store.create_tag(repo.repo_id, payload.get("tag", ""), name, payload.get("message"))
        self._json({})

    def _h_resolve(self, req: _Request) -> None:
        hub = self.server.hub
        if req.method not in ("GET", "HEAD"):
            raise HubError(405, "GET or HEAD only")
        repo = self._readable(req)
        commit = hub.store.commit_at(repo, unquote(req.segs[3]))
        path = unquote("/".join(req.segs[4:]))
        entry = commit.files.get(path)
        if entry is None:
            raise entry_not_found(path).with_headers({"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
            if hub.lfs_redirect:
                # like the Hub's 302 to a signed CDN URL on another host: the client stops there, reads the
                # metadata from this response and downloads from Location without its token
                sig = hub._sign(f"cdn/{entry.sha256}")
                location = f"{hub.cdn_url}/__hubsim/cdn/{entry.sha256}?{urlencode({'sig': sig, 'name': path})}"
                self._send(302, b"", {**headers, "ETag": f'"{entry.blob_oid}"', "Location": location})
                return
            headers["ETag"] = f'"{entry.sha256}"'
        else:
            headers["ETag"] = f'"{entry.blob_oid}"'
        self._serve_object(entry, headers)

    def _h_cdn(self, req: _Request) -> None:
        hub = self.server.hub
        sha = req.segs[2]
        if not hmac.compare_digest(req.q("sig") or "", hub._sign(f"cdn/{sha}")) or not hub.store.objects.has(sha):
            raise HubError(403, "invalid or expired signature")
        size = hub.store.objects.size(sha)
        entry = FileEntry(req.q("name") or sha, size, sha, "", True)
        self._serve_object(entry, {"ETag": f'"{sha}"', "Accept-Ranges": "bytes"})

    def _serve_object(self, entry: FileEntry, headers: dict[str, str]) -> None:
        """Body of a file with single-range support (206 / 416), honouring an armed download cut."""
        hub = self.server.hub
        total = entry.size
        start, end, status = 0, total, 200
        rng = self.headers.get("Range") if self.command == "GET" else None
        if rng:
            m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", rng)
            if m is None or (not m.group(1) and not m.group(2)):
                raise HubError(416, f"unsupported range {rng}").with_headers({"Content-Range": f"bytes */{total}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(total, int(m.group(2)) + 1) if m.group(2) else total
            else:
                start = max(0, total - int(m.group(2)))
            if start >= total or start >= end:
                raise HubError(416, f"range {rng} not satisfiable").with_headers({"Content-Range": f"bytes */{total}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
        filename = entry.path.rsplit("/", 1)[-1]
        headers.update(
            {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(end - start),
                "Content-Disposition": f'inline; filename="{quote(filename)}";',
            }
        )
        self._drain()
        self._start(status, headers)
        if self.command == "HEAD":
            return
        cut = hub._take_cut(entry.path) if status == 200 else None
        limit = (end - start) if cut is None else min(cut, end - start - 1)
        for chunk in hub.store.objects.read(entry.sha256, start, start + limit):
            self._write(chunk)
        if cut is not None:
            # drop the connection with the body incomplete: the client resumes with a Range request
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class HubSim:
    """The emulator: a threaded HTTP server on ``host:port`` (0 = any free port) over a :class:`Store`.

    ``tokens``: the accepted access tokens (default :data:`DEFAULT_TOKENS`: alice write, alice read, bob write).
    ``root``: folder for file content (default: memory). ``lfs_threshold``: size from which a file is LFS
    (besides the ``.gitattributes`` patterns and binary content). ``page_size``: entries per listing page.
    ``lfs_redirect``: answer LFS downloads with a 302 to a signed "CDN" URL on ``localhost`` (another origin).
    ``lfs_verify``: include the optional LFS verify action in batch answers.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[Token] = DEFAULT_TOKENS,
        root: Path | str | None = None,
        lfs_threshold: int = LFS_THRESHOLD,
        page_size: int = 1000,
        lfs_redirect: bool = False,
        lfs_verify: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.tokens = {t.value: t for t in tokens}
        self.store = Store(Objects(Path(root) if root is not None else None), lfs_threshold=lfs_threshold)
        self.page_size = page_size
        self.lfs_redirect = lfs_redirect
        self.lfs_verify = lfs_verify
        self.host = host
        self.port = port
        self._secret = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._log: list[LogEntry] = []
        self._faults: list[_FailRule] = []
        self._hooks: list[_Hook] = []
        self._cuts: list[_Cut] = []
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------- lifecycle
    def start(self) -> HubSim:
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=f"hubsim:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening and closes open connections."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def cdn_url(self) -> str:
        """The "CDN" origin of LFS redirects: same server, but a host name the client sees as another origin."""
        return f"http://localhost:{self.port}"

    @property
    def online(self) -> bool:
        return self._server is not None

    def go_offline(self) -> None:
        """Closes the listening socket and every open connection: new connections are refused."""
        self.stop()

    def go_online(self) -> None:
        """Listens again on the same port."""
        if self._server is None:
            self.start()

    @contextlib.contextmanager
    def offline(self) -> Iterator[None]:
        self.go_offline()
        try:
            yield
        finally:
            self.go_online()

    # -------------------------------------------------------------- auth
    def token(self, user: str, role: Role = "write") -> str:
        """The value of a configured token of ``user`` with ``role``."""
        for t in self.tokens.values():
            if t.user == user and t.role == role:
                return t.value
        raise KeyError(f"no {role} token for {user}")

    @property
    def write_token(self) -> str:
        return self.token("alice", "write")

    @property
    def read_token(self) -> str:
        return self.token("alice", "read")

    @property
    def other_token(self) -> str:
        return self.token("bob", "write")

    def _authenticate(self, header: str | None) -> Token | None:
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        token = self.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def _sign(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()[:32]

    def api(self, token: str | bool | None = None) -> Any:
        """An ``HfApi`` on this emulator (``token=None``: the alice write token; ``False``: anonymous)."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.url, token=self.write_token if token is None else token)

    # ------------------------------------------------------ server-side
    def create_repo(self, repo_id: str, *, private: bool = False) -> None:
        """Creates a repo directly (no HTTP), with the Hub's initial ``.gitattributes`` commit."""
        self.store.create_repo(repo_id, private=private)

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | None = None,
        *,
        deletes: Iterable[str] = (),
        branch: str = DEFAULT_BRANCH,
        message: str = "hubsim commit",
        author: str = "hubsim",
    ) -> str:
        """Commits directly (no HTTP, not logged); each file is LFS or regular by the Hub's rule. Returns the oid."""
        repo = self.store.require(repo_id)
        head = self.store.commit_at(repo, branch) if repo.branches.get(branch) else None
        adds = {
            path: self.store.put_content(
                repo, data, lfs=self.store.upload_mode(repo, head, path, len(data), data[:512]) == "lfs"
            )
            for path, data in (files or {}).items()
        }
        return self.store.commit(repo_id, branch, adds, deletes=deletes, title=message, author=author).oid

    def create_branch(self, repo_id: str, branch: str, revision: str | None = None) -> str:
        return self.store.create_branch(repo_id, branch, revision)

    def create_tag(self, repo_id: str, tag: str, revision: str | None = None, message: str | None = None) -> str:
        return self.store.create_tag(repo_id, tag, revision, message)

    def head(self, repo_id: str, branch: str = DEFAULT_BRANCH) -> str:
        return self.store.head(repo_id, branch)

    def commit_count(self, repo_id: str) -> int:
        """Number of commits the repo holds (the initial ``.gitattributes`` commit included)."""
        return len(self.store.require(repo_id).commits)

    def files(self, repo_id: str, revision: str | None = None) -> dict[str, FileEntry]:
        repo = self.store.require(repo_id)
        return dict(self.store.commit_at(repo, revision).files)

    def file_bytes(self, repo_id: str, path: str, revision: str | None = None) -> bytes:
        """The bytes the emulator serves for ``path`` (after any :meth:`corrupt`)."""
        entry = self.files(repo_id, revision).get(path)
        if entry is None:
            raise entry_not_found(path)
        return self.store.read(entry)

    # -------------------------------------------------------------- log
    def _record(self, entry: LogEntry) -> None:
        with self._lock:
            self._log.append(entry)

    def requests(
        self,
        *,
        kind: str | None = None,
        method: str | None = None,
        status: int | None = None,
        repo_id: str | None = None,
    ) -> list[LogEntry]:
        """The logged requests matching every given field, oldest first."""
        with self._lock:
            log = list(self._log)
        return [
            dataclasses.replace(e)
            for e in log
            if (kind is None or e.kind == kind)
            and (method is None or e.method == method)
            and (status is None or e.status == status)
            and (repo_id is None or e.repo_id == repo_id)
        ]

    def count(self, **match: Any) -> int:
        """Number of logged requests matching ``kind`` / ``method`` / ``status`` / ``repo_id``."""
        return len(self.requests(**match))

    def bytes_out(self, **match: Any) -> int:
        """Body bytes sent by the emulator in the matching requests."""
        return sum(e.bytes_out for e in self.requests(**match))

    def bytes_in(self, **match: Any) -> int:
        """Body bytes received by the emulator in the matching requests."""
        return sum(e.bytes_in for e in self.requests(**match))

    def commits_made(self, repo_id: str | None = None) -> int:
        """Commits created over HTTP (successful ``/commit`` requests)."""
        return self.count(kind="commit", status=200, repo_id=repo_id)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # ----------------------------------------------------------- faults
    def corrupt(self, repo_id: str, path: str, revision: str | None = None, offset: int | None = None) -> int:
        """Flips one byte of the stored content of ``path`` keeping its size and every advertised hash
        (sha256, git oid, ETag): the served bytes no longer match them. Affects every file with that content."""
        entry = self.files(repo_id, revision).get(path)
        if entry is None:
            raise entry_not_found(path)
        return self.store.objects.corrupt(entry.sha256, offset)

    def fail(
        self,
        times: int = 1,
        *,
        status: int = 429,
        retry_after: int | None = 0,
        kind: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answers the next ``times`` requests matching ``kind``/``method`` with ``status`` (and ``Retry-After``).
        The client waits ``Retry-After + 1`` s before each retry."""
        with self._lock:
            self._faults.append(_FailRule(times, status, retry_after, kind, method))

    def _take_fault(self, kind: str, method: str) -> _FailRule | None:
        with self._lock:
            for rule in self._faults:
                if rule.times > 0 and rule.matches(kind, method):
                    rule.times -= 1
                    return rule
        return None

    def on_commit(self, fn: Callable[[str, str], None], times: int = 1) -> None:
        """Calls ``fn(repo_id, branch)`` when the next ``times`` commit requests arrive, before the parent check."""
        with self._lock:
            self._hooks.append(_Hook(fn, times))

    def race_next_commit(
        self, repo_id: str, files: Mapping[str, bytes], *, branch: str = DEFAULT_BRANCH, message: str = "concurrent"
    ) -> None:
        """Lands a server-side commit of ``files`` on ``branch`` just before the next HTTP commit is applied,
        so a client that read the head earlier sends a stale ``parentCommit`` (412)."""
        self.on_commit(lambda _repo, _branch: self.commit(repo_id, files, branch=branch, message=message))

    def _run_commit_hooks(self, repo_id: str, branch: str) -> None:
        with self._lock:
            hooks = [h for h in self._hooks if h.times > 0]
            for h in hooks:
                h.times -= 1
        for h in hooks:
            h.fn(repo_id, branch)

    def cut_download(self, after_bytes: int, times: int = 1, path: str | None = None) -> None:
        """The next ``times`` full (non-Range) file GETs (of ``path`` only, when given) send ``after_bytes``
        bytes (at most size - 1) and drop the connection."""
        with self._lock:
            self._cuts.append(_Cut(after_bytes, times, path))

    def _take_cut(self, path: str) -> int | None:
        with self._lock:
            for cut in self._cuts:
                if cut.times > 0 and cut.path in (None, path):
                    cut.times -= 1
                    return cut.after_bytes
        return None

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


def _parse_token(text: str) -> Token:
    value, user, *rest = text.split(":")
    role = rest[0] if rest else "write"
    if role not in ("read", "write"):
        raise argparse.ArgumentTypeError(f"role must be read or write, not {role!r}")
    return Token(value, user, role, tuple(rest[1].split(",")) if len(rest) > 1 and rest[1] else ())  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.hubsim.server``: serve until SIGTERM/SIGINT; the first stdout line is the URL."""
    parser = argparse.ArgumentParser(prog="python -m tests.hubsim.server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port (default)")
    parser.add_argument("--root", type=Path, default=None, help="folder for file content (default: memory)")
    parser.add_argument(
        "--token",
        type=_parse_token,
        action="append",
        help="VALUE:USER[:read|write[:ORG,ORG]] (repeatable; default: the built-in alice/bob tokens)",
    )
    parser.add_argument("--lfs-threshold", type=int, default=LFS_THRESHOLD)
    parser.add_argument("--lfs-redirect", action="store_true", help="302 LFS downloads to a localhost 'CDN' URL")
    args = parser.parse_args(argv)
    hub = HubSim(
        tokens=args.token or DEFAULT_TOKENS,
        root=args.root,
        lfs_threshold=args.lfs_threshold,
        lfs_redirect=args.lfs_redirect,
        host=args.host,
        port=args.port,
    ).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(hub.url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
