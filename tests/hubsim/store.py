"""Git-like state of the Hub emulator: repos, commits, branches, tags and file content.

Everything the emulator advertises is computed the way git and the Hub compute it, so a client comparing hashes
sees real values:

- a file's git oid is ``sha1(b"blob <n>\\0" + data)`` where ``data`` is the content for a regular file and the
  Git LFS pointer (``version …\\noid sha256:<hex>\\nsize <n>\\n``) for an LFS file;
- a folder's oid is the sha1 of its git tree object (entries ``<mode> <name>\\0<20-byte oid>`` sorted the git way);
- a commit's oid is the sha1 of its git commit object (tree, parents, author, committer, message).

Content is stored once per sha256 in an :class:`Objects` store, in memory or under a folder. Repo metadata
(commits, refs) lives in memory only. All methods of :class:`Store` are thread-safe.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

DEFAULT_BRANCH = "main"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MB and more in LFS

# The `.gitattributes` the Hub writes in the initial commit of every new model repo.
_LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz"
    " *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar"
    " *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
)
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _LFS_PATTERNS.split(" "))

_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_SHORT_SHA = re.compile(r"[0-9a-f]{4,39}")


class HubError(Exception):
    """An error the server answers as ``status`` with ``X-Error-Code: code`` (when set) and ``message``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers: dict[str, str] = {}

    def with_headers(self, headers: Mapping[str, str]) -> HubError:
        """Adds response headers (``Retry-After``, ``X-Repo-Commit``, ...) and returns ``self``."""
        self.headers.update(headers)
        return self


def repo_not_found(repo_id: str, status: int = 404) -> HubError:
    return HubError(status, f"Repository not found: {repo_id}", "RepoNotFound")


def revision_not_found(revision: str) -> HubError:
    return HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def entry_not_found(path: str) -> HubError:
    return HubError(404, f"Entry not found: {path}", "EntryNotFound")


def git_blob_oid(data: bytes) -> str:
    """Git's object id of a blob: ``sha1(b"blob <len>\\0" + data)``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class LfsRef:
    """Content already in the repo's LFS storage (uploaded through the batch API), referenced by sha256."""

    sha256: str
    size: int


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit. ``sha256`` is always known (the key of its content in :class:`Objects`)."""

    path: str
    size: int
    sha256: str
    blob_oid: str
    lfs: bool
    pointer_size: int | None = None


@dataclass(frozen=True)
class Commit:
    oid: str
    parents: tuple[str, ...]
    files: Mapping[str, FileEntry]
    tree_oids: Mapping[str, str]  # folder path ("" = root) -> git tree oid
    title: str
    description: str
    author: str
    timestamp: int

    @property
    def date(self) -> str:
        return iso_date(self.timestamp)


@dataclass(frozen=True)
class Tag:
    name: str
    commit: str
    message: str | None


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: int
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, Tag] = field(default_factory=dict)
    lfs_objects: set[str] = field(default_factory=set)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/", 1)[0]


def iso_date(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(timestamp))


class Objects:
    """Content addressed by sha256: in memory (``root=None``) or as files under ``root/objects``."""

    CHUNK = 1024 * 1024

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self._mem: dict[str, bytes] = {}
        self._lock = threading.Lock()
        if self.root is not None:
            (self.root / "objects").mkdir(parents=True, exist_ok=True)
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        assert self.root is not None
        return self.root / "objects" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        if self.root is None:
            return sha256 in self._mem
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        if self.root is None:
            return len(self._mem[sha256])
        return self._path(sha256).stat().st_size

    def put(self, data: bytes) -> str:
        """Stores ``data`` and returns its sha256."""
        return self.put_stream([data])[0]

    def put_stream(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Stores the concatenated ``chunks`` (hashing as they come); returns ``(sha256, size)``."""
        digest = hashlib.sha256()
        size = 0
        if self.root is None:
            buf = bytearray()
            for chunk in chunks:
                digest.update(chunk)
                buf += chunk
            sha = digest.hexdigest()
            with self._lock:
                self._mem.setdefault(sha, bytes(buf))
            return sha, len(buf)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            sha = digest.hexdigest()
            dest = self._path(sha)
            dest.parent.mkdir(exist_ok=True)
            if dest.exists():
                os.unlink(tmp)
            else:
                os.replace(tmp, dest)
            return sha, size
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yields the bytes ``[start, end)`` of an object in chunks."""
        total = self.size(sha256)
        end = total if end is None else min(end, total)
        if self.root is None:
            view = memoryview(self._mem[sha256])
            for pos in range(start, end, self.CHUNK):
                yield bytes(view[pos : min(end, pos + self.CHUNK)])
            return
        with open(self._path(sha256), "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(self.CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk

    def read_all(self, sha256: str) -> bytes:
        return b"".join(self.read(sha256))

    def corrupt(self, sha256: str, offset: int | None = None) -> int:
        """Flips one byte of a stored object in place (same size, key unchanged); returns the offset flipped."""
        size = self.size(sha256)
        if size == 0:
            raise ValueError("cannot corrupt an empty object keeping its size")
        pos = size // 2 if offset is None else offset
        if self.root is None:
            with self._lock:
                data = bytearray(self._mem[sha256])
                data[pos] ^= 0xFF
                self._mem[sha256] = bytes(data)
            return pos
        with open(self._path(sha256), "r+b") as f:
            f.seek(pos)
            byte = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([byte ^ 0xFF]))
        return pos


def _tree_oids(files: Mapping[str, FileEntry]) -> dict[str, str]:
    """Git tree oids of every folder of a file listing (``""`` is the root)."""
    root: dict = {}
    for path, entry in files.items():
        node = root
        *dirs, name = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = entry
    oids: dict[str, str] = {}

    def visit(node: dict, prefix: str) -> bytes:
        items: list[tuple[bytes, bytes]] = []
        for name, value in node.items():
            raw = name.encode()
            if isinstance(value, dict):
                oid = visit(value, f"{prefix}{name}/")
                # git sorts a folder as if its name ended with "/"
                items.append((raw + b"/", b"40000 " + raw + b"\0" + oid))
            else:
                items.append((raw, b"100644 " + raw + b"\0" + bytes.fromhex(value.blob_oid)))
        body = b"".join(entry for _, entry in sorted(items))
        oid = hashlib.sha1(b"tree %d\0" % len(body) + body).digest()
        oids[prefix.rstrip("/")] = oid.hex()
        return oid

    visit(root, "")
    return oids


def _commit_oid(tree: str, parents: tuple[str, ...], author: str, timestamp: int, message: str) -> str:
    ident = f"{author} <{author}@hubsim.invalid> {timestamp} +0000"
    lines = [f"tree {tree}", *(f"parent {p}" for p in parents), f"author {ident}", f"committer {ident}"]
    body = ("\n".join(lines) + "\n\n" + message + "\n").encode()
    return hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()


def _patterns(text: str, *, lfs_only: bool) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, *attrs = line.split()
        if lfs_only and "filter=lfs" not in attrs:
            continue
        out.append(pattern)
    return out


def matches_any(path: str, patterns: Iterable[str]) -> bool:
    """Gitattributes-style match: a pattern without ``/`` matches the base name, otherwise the whole path."""
    base = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if "/" in pattern.lstrip("/"):
            if fnmatch.fnmatchcase(path, pattern.lstrip("/")) or fnmatch.fnmatchcase(path, pattern.replace("**/", "")):
                return True
        elif fnmatch.fnmatchcase(base, pattern):
            return True
    return False


def parse_front_matter(text: str) -> dict | None:
    """The YAML front matter of a model card as a dict, ``None`` if there is none; raises ValueError if invalid."""
    import yaml

    match = re.match(r"\A\s*---[ \t]*\r?\n(.*?)(?:^|\r?\n)---[ \t]*(?:\r?\n|\Z)", text, re.S | re.M)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        raise ValueError(f"Invalid YAML in README.md metadata: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("README.md metadata must be a YAML mapping")
    return data


class Store:
    """The repos of the emulator. ``lfs_threshold``: size from which :meth:`upload_mode` answers ``lfs``."""

    def __init__(self, objects: Objects | None = None, *, lfs_threshold: int = LFS_THRESHOLD) -> None:
        self.objects = objects if objects is not None else Objects()
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self._clock = 0

    def _now(self) -> int:
        # strictly increasing seconds so that two commits made within one second get distinct dates and oids
        self._clock = max(int(time.time()), self._clock + 1)
        return self._clock

    # ---------------------------------------------------------------- repos
    def get(self, repo_id: str) -> Repo | None:
        with self.lock:
            return self.repos.get(repo_id)

    def require(self, repo_id: str) -> Repo:
        repo = self.get(repo_id)
        if repo is None:
            raise repo_not_found(repo_id)
        return repo

    def create_repo(self, repo_id: str, *, private: bool = False) -> Repo:
        """Creates a repo with the Hub's initial commit (``.gitattributes`` by ``system``); 409 if it exists."""
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise HubError(400, f"Invalid repo id {repo_id!r}: expected 'namespace/name'")
        with self.lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo")
            repo = Repo(repo_id=repo_id, private=private, created_at=self._now())
            self.repos[repo_id] = repo
            repo.branches[DEFAULT_BRANCH] = ""
            self.commit(
                repo_id,
                DEFAULT_BRANCH,
                {".gitattributes": DEFAULT_GITATTRIBUTES.encode()},
                title="initial commit",
                author="system",
            )
            return repo

    def delete_repo(self, repo_id: str) -> None:
        with self.lock:
            if self.repos.pop(repo_id, None) is None:
                raise repo_not_found(repo_id)

    # ------------------------------------------------------------ revisions
    def resolve(self, repo: Repo, revision: str | None) -> str:
        """Commit oid of a branch, tag, ``refs/heads/…``, ``refs/tags/…``, full sha or unique short sha (>= 4)."""
        rev = revision or DEFAULT_BRANCH
        with self.lock:
            for name in (rev, rev.removeprefix("refs/heads/")):
                if repo.branches.get(name):
                    return repo.branches[name]
            tag = repo.tags.get(rev.removeprefix("refs/tags/"))
            if tag is not None:
                return tag.commit
            if _FULL_SHA.fullmatch(rev) and rev in repo.commits:
                return rev
            if _SHORT_SHA.fullmatch(rev):
                found = [oid for oid in repo.commits if oid.startswith(rev)]
                if len(found) == 1:
                    return found[0]
        raise revision_not_found(rev)

    def commit_at(self, repo: Repo, revision: str | None) -> Commit:
        with self.lock:
            return repo.commits[self.resolve(repo, revision)]

    def head(self, repo_id: str, branch: str = DEFAULT_BRANCH) -> str:
        repo = self.require(repo_id)
        with self.lock:
            oid = repo.branches.get(branch)
            if not oid:
                raise revision_not_found(branch)
            return oid

    def history(self, repo: Repo, oid: str) -> list[Commit]:
        """First-parent history from ``oid``, newest first."""
        out = []
        with self.lock:
            cur: str | None = oid
            while cur:
                commit = repo.commits[cur]
                out.append(commit)
                cur = commit.parents[0] if commit.parents else None
        return out

    def last_commit(self, repo: Repo, oid: str, path: str) -> Commit:
        """The newest commit on the first-parent history of ``oid`` that changed ``path`` (a file or folder)."""

        def value(c: Commit) -> str | None:
            entry = c.files.get(path)
            return entry.blob_oid if entry is not None else c.tree_oids.get(path)

        history = self.history(repo, oid)
        for commit, parent in itertools.pairwise(history):
            if value(commit) != value(parent):
                return commit
        return history[-1]

    # ------------------------------------------------------------- content
    def read(self, entry: FileEntry) -> bytes:
        return self.objects.read_all(entry.sha256)

    def upload_mode(self, repo: Repo, branch_head: Commit | None, path: str, size: int, sample: bytes) -> str:
        """``lfs`` if ``path`` matches an LFS pattern of the head's ``.gitattributes``, is at least
        ``lfs_threshold`` bytes, or looks binary (a NUL byte in its first 512 bytes); else ``regular``."""
        patterns = _patterns(DEFAULT_GITATTRIBUTES, lfs_only=True)
        if branch_head is not None and ".gitattributes" in branch_head.files:
            text = self.read(branch_head.files[".gitattributes"]).decode(errors="replace")
            patterns = _patterns(text, lfs_only=True)
        if size == 0:
            return "regular"
        if matches_any(path, patterns) or size >= self.lfs_threshold or b"\0" in sample[:512]:
            return "lfs"
        return "regular"

    def should_ignore(self, branch_head: Commit | None, path: str, gitignore: str | None) -> bool:
        if gitignore is None and branch_head is not None and ".gitignore" in branch_head.files:
            gitignore = self.read(branch_head.files[".gitignore"]).decode(errors="replace")
        return bool(gitignore) and matches_any(path, _patterns(gitignore or "", lfs_only=False))

    def add_lfs_object(self, repo: Repo, sha256: str) -> None:
        with self.lock:
            repo.lfs_objects.add(sha256)

    def is_lfs_in_repo(self, repo: Repo, sha256: str) -> bool:
        with self.lock:
            return sha256 in repo.lfs_objects and self.objects.has(sha256)

    def _entry(self, repo: Repo, path: str, value: bytes | LfsRef) -> FileEntry:
        if isinstance(value, LfsRef):
            if not self.is_lfs_in_repo(repo, value.sha256):
                raise HubError(400, f"LFS object {value.sha256} for {path} was not uploaded to {repo.repo_id}")
            pointer = lfs_pointer(value.sha256, value.size)
            return FileEntry(path, value.size, value.sha256, git_blob_oid(pointer), True, len(pointer))
        sha = self.objects.put(value)
        return FileEntry(path, len(value), sha, git_blob_oid(value), False)

    def put_content(self, repo: Repo, data: bytes, *, lfs: bool) -> bytes | LfsRef:
        """Stores ``data`` for a later :meth:`commit`, in the repo's LFS storage if ``lfs``."""
        if not lfs:
            return data
        sha = self.objects.put(data)
        self.add_lfs_object(repo, sha)
        return LfsRef(sha, len(data))

    # -------------------------------------------------------------- commits
    def commit(
        self,
        repo_id: str,
        branch: str,
        adds: Mapping[str, bytes | LfsRef],
        *,
        deletes: Iterable[str] = (),
        deleted_folders: Iterable[str] = (),
        title: str = "Upload files",
        description: str = "",
        author: str = "hubsim",
        parent_commit: str | None = None,
    ) -> Commit:
        """One atomic commit on ``branch``. ``bytes`` values are regular files, :class:`LfsRef` LFS files.

        Raises 404 RevisionNotFound for a missing branch, 412 if ``parent_commit`` is not the branch head,
        404 EntryNotFound for a deleted path that does not exist.
        """
        repo = self.require(repo_id)
        branch = branch.removeprefix("refs/heads/")
        with self.lock:
            if branch not in repo.branches:
                raise revision_not_found(branch)
            head_oid = repo.branches[branch]
            if parent_commit is not None and parent_commit != head_oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head_oid].files) if head_oid else {}
            for path in deletes:
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            for folder in deleted_folders:
                prefix = folder.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            for path, value in adds.items():
                files[path] = self._entry(repo, path, value)
            files = dict(sorted(files.items()))
            tree_oids = _tree_oids(files)
            parents = (head_oid,) if head_oid else ()
            timestamp = self._now()
            message = title + (f"\n\n{description}" if description else "")
            oid = _commit_oid(tree_oids[""], parents, author, timestamp, message)
            commit = Commit(
                oid=oid,
                parents=parents,
                files=MappingProxyType(files),
                tree_oids=MappingProxyType(tree_oids),
                title=title,
                description=description,
                author=author,
                timestamp=timestamp,
            )
            repo.commits[oid] = commit
            repo.branches[branch] = oid
            return commit

    # ----------------------------------------------------------------- refs
    def create_branch(self, repo_id: str, branch: str, starting_point: str | None = None) -> str:
        repo = self.require(repo_id)
        if not branch or branch.startswith("refs/") or ".." in branch or branch.endswith("/"):
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        with self.lock:
            oid = self.resolve(repo, starting_point)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = oid
            return oid

    def delete_branch(self, repo_id: str, branch: str) -> None:
        repo = self.require(repo_id)
        with self.lock:
            if branch == DEFAULT_BRANCH:
                raise HubError(403, "Cannot delete the default branch")
            if repo.branches.pop(branch, None) is None:
                raise revision_not_found(branch)

    def create_tag(self, repo_id: str, tag: str, revision: str | None = None, message: str | None = None) -> str:
        repo = self.require(repo_id)
        if not tag or tag.startswith("refs/") or ".." in tag:
            raise HubError(400, f"Invalid tag name: {tag}")
        with self.lock:
            oid = self.resolve(repo, revision)
            if tag in repo.tags:
                raise HubError(409, f"Tag already exists: {tag}")
            repo.tags[tag] = Tag(tag, oid, message)
            return oid

    def delete_tag(self, repo_id: str, tag: str) -> None:
        repo = self.require(repo_id)
        with self.lock:
            if repo.tags.pop(tag, None) is None:
                raise revision_not_found(tag)
