"""A small Hugging Face Hub on loopback, so a push and a download can be tested end to end without the network.

The real clients (``huggingface_hub`` 2.x, transformers 5) talk to it over HTTP through ``HF_ENDPOINT`` or an explicit
``endpoint=``, so a test exercises their request building, error mapping, caching and retries instead of a mock.
Only the endpoints those clients use for creating a repo, committing, reading repo info, listing the tree and
downloading are served. Every upload is answered with the "regular" upload mode: file contents travel base64-encoded
inside the one NDJSON commit request, so no LFS or Xet storage has to exist. Downloads carry no Xet headers, so the
clients fetch plain bytes from ``/resolve``.

State lives in memory: each repo is a list of commits, and each commit holds the full file tree (path -> bytes). A
commit is validated completely before it is appended, so it either lands whole or not at all.

Use ``with FakeHub() as hub:`` or the ``fake_hub`` pytest fixture (import it into a test module or conftest with
``from fake_hub import fake_hub_fixture  # noqa: F401``). See ``FakeHub`` for fault injection and inspection.
"""

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml


# A fresh repo on the Hub starts with an "initial commit" holding a .gitattributes file; doing the same keeps commit
# counts and snapshot contents as a client sees them on the Hub. Clients never interpret its (abridged) content.
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"

ROUTES = ("whoami", "create", "validate-yaml", "preupload", "commit", "paths-info", "tree", "info", "resolve")

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API = r"^/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
# (HTTP methods, path pattern, route name). Paths are matched before percent-decoding, so a quoted revision such as
# ``refs%2Fpr%2F1`` stays one segment.
_ROUTE_TABLE = [
    ({"GET"}, re.compile(r"^/api/whoami-v2$"), "whoami"),
    ({"POST"}, re.compile(r"^/api/repos/create$"), "create"),
    ({"POST"}, re.compile(r"^/api/validate-yaml$"), "validate-yaml"),
    ({"POST"}, re.compile(_API + r"/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ({"POST"}, re.compile(_API + r"/commit/(?P<rev>[^/]+)$"), "commit"),
    ({"POST"}, re.compile(_API + r"/paths-info/(?P<rev>[^/]+)$"), "paths-info"),
    ({"GET"}, re.compile(_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ({"GET"}, re.compile(_API + r"(?:/revision/(?P<rev>[^/]+))?$"), "info"),
    (
        {"GET", "HEAD"},
        re.compile(r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
        "resolve",
    ),
]


def git_blob_sha(data: bytes) -> str:
    """The git object id of a file, which the Hub uses as ETag and ``oid`` of regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Commit:
    """One commit: its id, message and the complete file tree after it."""

    sha: str
    message: str
    description: str
    files: Mapping[str, bytes]
    date: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str = field(default_factory=_now)
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]


class LoggedRequest(NamedTuple):
    method: str
    path: str


class _HubError(Exception):
    """An error answer in the Hub's shape: JSON ``{"error": ...}`` plus the headers the client maps to exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(obj, status: int = 200) -> _Reply:
    return _Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})


@dataclass
class _Call:
    """What a route handler needs to know about one request."""

    method: str
    groups: dict[str, str]
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    user: str | None  # the authenticated user, None without a (valid) token

    def json(self):
        try:
            return json.loads(self.body or b"null")
        except ValueError as error:
            raise _HubError(400, f"Invalid JSON body: {error}") from None

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[-1].lower() in ("1", "true")


class FakeHub:
    """An in-memory Hub served on ``127.0.0.1`` by a ``ThreadingHTTPServer`` in a daemon thread.

    ``FakeHub(token="hf_test", user="test-user")``; ``hub.endpoint`` is ``"http://127.0.0.1:PORT"`` once started
    (``start()``/``stop()`` or ``with``). Requests carrying ``Authorization: Bearer <token>`` act as ``user``; writes
    need that, a wrong token is refused with 401 everywhere, and private repos look missing without it.

    Tests steer and inspect it with ``fail_next`` (fault injection), ``files``, ``commits``, ``requests``, ``count``
    and ``unhandled``; ``seed`` fills a repo without HTTP; ``env`` builds the environment of a client subprocess.
    """

    def __init__(self, token: str = "hf_test", user: str = "test-user"):
        self.token = token
        self.user = user
        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._log: list[tuple[LoggedRequest, str | None]] = []
        self._faults: dict[str, list] = {}  # route -> [mode, remaining count or None for "until cleared"]
        self._commit_counter = 0
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running; use start() or a with-block")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        handler = type("BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        # A short poll interval makes stop() quick, which adds up over a test suite.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close kept-alive connections, so no handler thread outlives the hub."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def env(self, home: "str | os.PathLike | None" = None, base: Mapping[str, str] | None = None, **extra: str):
        """Environment (a dict) for a client subprocess: online, pointed at this hub, logged in with its token.

        ``HF_ENDPOINT`` is read when huggingface_hub is imported, hence a subprocess for anything (transformers'
        ``from_pretrained`` included) that cannot take ``endpoint=``. ``home`` gives the child its own ``HF_HOME``
        and remote-code module cache, so nothing cached by an earlier process can stand in for a download.
        Telemetry is off so the request log only holds what the client needs. ``extra`` overrides anything.
        """
        env = dict(os.environ if base is None else base)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            env.pop(name, None)
        env.update(HF_ENDPOINT=self.endpoint, HF_TOKEN=self.token, HF_HUB_DISABLE_TELEMETRY="1")
        if home is not None:
            env.update(HF_HOME=str(home), HF_MODULES_CACHE=os.path.join(home, "modules"))
            env.pop("HF_HUB_CACHE", None)
        env.update(extra)
        return env

    # ------------------------------------------------------------------ steering and inspection

    def fail_next(self, route: str, mode: str | int = "500", times: int | None = 1) -> None:
        """Make the next ``times`` requests to ``route`` fail before they touch any state (None: until cleared).

        ``mode`` is an HTTP status (``"500"``, ``503``, ...: answered with a JSON error) or ``"drop"``: read half of
        the request body, then close the connection without any response. ``route`` is one of ``ROUTES``.
        """
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")
        if mode != "drop" and not 400 <= int(mode) <= 599:
            raise ValueError(f"mode must be 'drop' or an HTTP error status, not {mode!r}")
        with self._lock:
            self._faults[route] = [str(mode), times]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def seed(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        message: str = "seed",
        *,
        private: bool = False,
        repo_type: str = "model",
    ) -> Commit:
        """Commit ``files`` (added or replaced) directly, creating the repo if needed: a fixture without HTTP."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id)) or self._create(repo_type, repo_id, private)
            tree = {**repo.head.files, **{path: bytes(data) for path, data in files.items()}}
            return self._append_commit(repo, tree, message, "")

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The file tree (path -> bytes) at ``revision`` (a branch or a commit sha)."""
        with self._lock:
            try:
                return dict(self._resolve(self._repo(repo_type, repo_id), revision).files)
            except _HubError as error:
                raise KeyError(str(error)) from None

    def commits(self, repo_id: str, repo_type: str = "model") -> list[Commit]:
        """All commits of ``main``, oldest first; the first is the "initial commit" that creating a repo makes."""
        with self._lock:
            return list(self._repo(repo_type, repo_id).commits)

    def repos(self) -> list[str]:
        with self._lock:
            return sorted(repo_id for _, repo_id in self._repos)

    @property
    def requests(self) -> list[LoggedRequest]:
        """Every request received, as (method, path without query), including failed and injected-failure ones."""
        with self._lock:
            return [request for request, _ in self._log]

    def count(self, route: str) -> int:
        """How many requests reached ``route`` (attempts: a retried commit counts twice, but lands once)."""
        with self._lock:
            return sum(1 for _, name in self._log if name == route)

    @property
    def unhandled(self) -> list[LoggedRequest]:
        """Requests that matched no route (answered 404): the place to look when a client does something new."""
        with self._lock:
            return [request for request, name in self._log if name is None]

    # ------------------------------------------------------------------ state (callers hold self._lock)

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id!r}; have {sorted(r for _, r in self._repos)}") from None

    def _create(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        repo = self._repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, private)
        self._append_commit(repo, {".gitattributes": GITATTRIBUTES}, "initial commit", "")
        return repo

    def _append_commit(self, repo: _Repo, tree: Mapping[str, bytes], message: str, description: str) -> Commit:
        self._commit_counter += 1
        parent = repo.head.sha if repo.commits else ""
        digest = hashlib.sha1(f"{repo.repo_id}\0{parent}\0{message}\0{self._commit_counter}".encode())
        for path in sorted(tree):
            digest.update(f"\0{path}\0{git_blob_sha(tree[path])}".encode())
        commit = Commit(digest.hexdigest(), message, description, MappingProxyType(dict(tree)), _now())
        repo.commits.append(commit)
        return commit

    @staticmethod
    def _resolve(repo: _Repo, revision: str) -> Commit:
        if revision == "main":
            return repo.head
        for commit in repo.commits:
            if commit.sha == revision:
                return commit
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _take_fault(self, route: str | None) -> str | None:
        with self._lock:
            fault = self._faults.get(route)
            if fault is None:
                return None
            mode, remaining = fault
            if remaining is not None:
                if remaining <= 1:
                    del self._faults[route]
                else:
                    fault[1] = remaining - 1
            return mode

    def _record(self, method: str, path: str, route: str | None) -> None:
        with self._lock:
            self._log.append((LoggedRequest(method, path), route))

    # ------------------------------------------------------------------ routes

    def _readable_repo(self, call: _Call) -> _Repo:
        """The addressed repo; private ones are indistinguishable from missing ones without the token, as on the Hub."""
        repo = self._repos.get((_REPO_TYPES[call.groups.get("kind") or "models"], unquote(call.groups["repo"])))
        if repo is None or (repo.private and call.user is None):
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _writable_repo(self, call: _Call) -> _Repo:
        if call.user is None:
            raise _HubError(401, "You must be authenticated to write to a repository")
        return self._readable_repo(call)

    def _route_whoami(self, call: _Call) -> _Reply:
        if call.user is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        access = {"displayName": "fake-hub token", "role": "write"}
        return _json_reply({"type": "user", "name": call.user, "fullname": call.user, "orgs": [], "auth": access})

    def _route_create(self, call: _Call) -> _Reply:
        if call.user is None:
            raise _HubError(401, "You must be authenticated to create a repository")
        payload = call.json() or {}
        name, namespace = payload.get("name"), payload.get("organization") or call.user
        if not name or "/" in name:
            raise _HubError(400, f"Invalid repo name {name!r}")
        repo_type = payload.get("type") or "model"
        if repo_type not in _REPO_TYPES.values():
            raise _HubError(400, f"Invalid repo type {repo_type!r}")
        repo_id = f"{namespace}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.endpoint}/{prefix}{repo_id}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                return _json_reply({"error": f"You already created this {repo_type} repo", "url": url}, status=409)
            self._create(repo_type, repo_id, private)
        return _json_reply({"url": url, "name": repo_id, "id": repo_id})

    def _route_validate_yaml(self, call: _Call) -> _Reply:
        """Checks that a README's front matter is a YAML mapping, the one property the clients rely on."""
        content = (call.json() or {}).get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.DOTALL)
        errors = []
        if match:
            try:
                metadata = yaml.safe_load(match.group(1))
            except yaml.YAMLError as error:
                errors.append({"message": f"Invalid YAML: {error}"})
            else:
                if metadata is not None and not isinstance(metadata, dict):
                    errors.append({"message": "Metadata must be a YAML mapping"})
        return _json_reply({"errors": errors, "warnings": []}, status=400 if errors else 200)

    def _route_preupload(self, call: _Call) -> _Reply:
        """Answers "regular" for every file, so the client inlines all contents in the commit (no LFS, no Xet)."""
        entries = (call.json() or {}).get("files")
        if not isinstance(entries, list):
            raise _HubError(400, "Expected a list of files")
        with self._lock:
            current = self._resolve(self._writable_repo(call), unquote(call.groups["rev"])).files
        files = []
        for entry in entries:
            existing = current.get(entry.get("path"))
            oid = git_blob_sha(existing) if existing is not None else None  # lets the client skip unchanged files
            files.append({"path": entry.get("path"), "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return _json_reply({"files": files, "commitOid": None})

    def _route_commit(self, call: _Call) -> _Reply:
        if call.flag("create_pr"):
            raise _HubError(400, "Pull requests are not supported by this hub")
        try:
            lines = [json.loads(line) for line in call.body.splitlines() if line.strip()]
        except ValueError as error:
            raise _HubError(400, f"Invalid NDJSON commit payload: {error}") from None
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "The commit payload must start with a header line")
        header, operations = lines[0]["value"], lines[1:]
        revision = unquote(call.groups["rev"])
        with self._lock:
            repo = self._writable_repo(call)
            if revision != "main":  # the only branch here; a commit sha cannot be committed to either
                raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent and parent != repo.head.sha:
                raise _HubError(412, f"Parent commit {parent} is not the head of main ({repo.head.sha})")
            tree = _apply_operations(dict(repo.head.files), operations)
            commit = self._append_commit(repo, tree, header.get("summary", ""), header.get("description", ""))
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        url = f"{self.endpoint}/{prefix}{repo.repo_id}/commit/{commit.sha}"
        return _json_reply({"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None})

    def _route_info(self, call: _Call) -> _Reply:
        with self._lock:
            repo = self._readable_repo(call)
            commit = self._resolve(repo, unquote(call.groups.get("rev") or "main"))
        with_blobs = call.flag("blobs")
        siblings = []
        for path, data in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if with_blobs:
                sibling.update(size=len(data), blobId=git_blob_sha(data))
            siblings.append(sibling)
        namespace = repo.repo_id.split("/")[0]
        return _json_reply(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": namespace,
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(len(data) for data in commit.files.values()),
            }
        )

    def _route_tree(self, call: _Call) -> _Reply:
        with self._lock:
            commit = self._resolve(self._readable_repo(call), unquote(call.groups["rev"]))
        folder = unquote(call.groups.get("path") or "").strip("/")
        entries = _tree_entries(commit.files, folder, recursive=call.flag("recursive"))
        if folder and not entries:
            raise _HubError(404, f"{folder} does not exist on main", "EntryNotFound")
        return _json_reply(entries)

    def _route_paths_info(self, call: _Call) -> _Reply:
        with self._lock:
            commit = self._resolve(self._readable_repo(call), unquote(call.groups["rev"]))
        paths = parse_qs(call.body.decode()).get("paths", [])  # the client posts a form, one `paths` field each
        all_entries = {entry["path"]: entry for entry in _tree_entries(commit.files, "", recursive=True)}
        return _json_reply([all_entries[path.strip("/")] for path in paths if path.strip("/") in all_entries])

    def _route_resolve(self, call: _Call) -> _Reply:
        """Serves a file directly (no redirect, no Xet headers): ETag is the git blob id, as for regular files."""
        with self._lock:
            commit = self._resolve(self._readable_repo(call), unquote(call.groups["rev"]))
        path = unquote(call.groups["path"])
        data = commit.files.get(path)
        if data is None:
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha(data)}"',
            "X-Repo-Commit": commit.sha,
            "Accept-Ranges": "bytes",
        }
        byte_range = call.headers.get("Range")
        if not byte_range:
            return _Reply(200, data, headers)
        start, end = _parse_range(byte_range, len(data))
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return _Reply(206, data[start : end + 1], headers)


def _apply_operations(tree: dict[str, bytes], operations: Iterable[dict]) -> dict[str, bytes]:
    """Apply commit operations to a copy of the tree; any invalid one rejects the whole commit."""
    for line in operations:
        key, value = line.get("key"), line.get("value") or {}
        path = str(value.get("path", "")).strip("/")
        if not path or ".." in path.split("/"):
            raise _HubError(400, f"Invalid path {value.get('path')!r}")
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise _HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
            try:
                tree[path] = base64.b64decode(value.get("content", ""), validate=True)
            except ValueError as error:
                raise _HubError(400, f"Invalid base64 content for {path}: {error}") from None
        elif key == "deletedFile":
            if tree.pop(path, None) is None:
                raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            inside = [name for name in tree if name.startswith(path + "/")]
            if not inside:
                raise _HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for name in inside:
                del tree[name]
        elif key == "lfsFile":
            raise _HubError(400, "LFS files are not stored here; preupload answers 'regular' for every file")
        else:
            raise _HubError(400, f"Unknown commit operation {key!r}")
    return tree


def _tree_entries(files: Mapping[str, bytes], folder: str, recursive: bool) -> list[dict]:
    """Tree listing in the Hub's JSON shape: the folder's files and sub-folders (all of them when recursive)."""
    prefix = f"{folder}/" if folder else ""
    folders: dict[str, list[str]] = {}
    entries = []
    for path in sorted(files):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        for level in range(1, min(depth, len(parts) - 1) + 1):
            folders.setdefault(prefix + "/".join(parts[:level]), []).append(path)
        if recursive or len(parts) == 1:
            data = files[path]
            entries.append({"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path})
    for name, contents in folders.items():
        oid = hashlib.sha1("\0".join(contents).encode()).hexdigest()
        entries.append({"type": "directory", "oid": oid, "size": 0, "path": name})
    return sorted(entries, key=lambda entry: entry["path"])


def _parse_range(header: str, size: int) -> tuple[int, int]:
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or match.groups() == ("", ""):
        raise _HubError(416, f"Unsupported range {header!r}")
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    else:
        start, end = max(size - int(last), 0), size - 1
    if start > end:
        raise _HubError(416, f"Range {header!r} is outside the file ({size} bytes)")
    return start, end


class _Handler(BaseHTTPRequestHandler):
    """Routes one HTTP/1.1 connection's requests to the owning FakeHub (set on a per-hub subclass)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    hub: FakeHub

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the peer, or a dropped-connection fault, already closed the socket
            super().finish()

    def log_message(self, format, *args) -> None:  # noqa: A002 - signature fixed by the base class
        pass  # the request log on the hub replaces stderr noise in test output

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        route, groups = None, {}
        for methods, pattern, name in _ROUTE_TABLE:
            match = pattern.match(url.path)
            if match and self.command in methods:
                route, groups = name, {k: v for k, v in match.groupdict().items() if v is not None}
                break
        self.hub._record(self.command, url.path, route)

        fault = self.hub._take_fault(route)
        if fault == "drop":
            self._read_body(limit=int(self.headers.get("Content-Length") or 0) // 2)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = self._read_body()
        if fault is not None:
            self._send(_HubError(int(fault), f"Injected failure ({fault}) on {route}"))
            return
        if route is None:
            self._send(_HubError(404, f"No such endpoint: {self.command} {url.path}"))
            return

        authorization = self.headers.get("Authorization", "")
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
        if authorization and token != self.hub.token:
            self._send(_HubError(401, "Invalid credentials in Authorization header"))
            return
        call = _Call(
            method=self.command,
            groups=groups,
            query=parse_qs(url.query),
            headers=self.headers,
            body=body,
            user=self.hub.user if token else None,
        )
        try:
            reply = getattr(self.hub, "_route_" + route.replace("-", "_"))(call)
        except _HubError as error:
            reply = error
        except Exception as error:  # a server bug must reach the client as a 500, not a hung connection
            reply = _HubError(500, f"{type(error).__name__}: {error}")
        self._send(reply)

    def _read_body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length if limit is None else min(limit, length))

    def _send(self, reply: "_Reply | _HubError") -> None:
        if isinstance(reply, _HubError):
            headers = {"X-Error-Message": reply.message, **reply.headers}
            if reply.code:
                headers["X-Error-Code"] = reply.code
            error = _json_reply({"error": reply.message}, reply.status)
            reply = _Reply(reply.status, error.body, {**error.headers, **headers})
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            # Header values must be one latin-1 line; error messages may quote arbitrary paths.
            self.send_header(name, " ".join(value.splitlines()).encode("latin-1", "replace").decode("latin-1"))
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)


@pytest.fixture(name="fake_hub")
def fake_hub_fixture(monkeypatch):
    """A running FakeHub, with huggingface_hub's offline switch turned off in this process for the test.

    The test suite sets ``HF_HUB_OFFLINE=1``, which blocks every huggingface_hub request, whatever the endpoint; the
    flag is read from ``huggingface_hub.constants`` at request time, so patching it there lets in-process calls with
    ``endpoint=hub.endpoint`` through. Subprocesses get their environment from ``hub.env()``.

    Import it as ``from fake_hub import fake_hub_fixture  # noqa: F401``: the fixture is named ``fake_hub``, and a
    different import name keeps ruff from reading each test's ``fake_hub`` argument as a redefinition.
    """
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with FakeHub() as hub:
        yield hub


fake_hub = fake_hub_fixture  # the same fixture under its own name, for `from fake_hub import fake_hub`
