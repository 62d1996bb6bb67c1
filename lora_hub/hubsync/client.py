"""The one place that talks to the Hugging Face Hub, through ``huggingface_hub`` (>= 1.31).

Facts about the client that shape this module (checked against huggingface_hub 2.4 with the loopback
emulator in ``tests/hubsim``):

- ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read when ``huggingface_hub`` is imported, so the
  endpoint and the offline switch are read here from ``os.environ`` and passed explicitly.
- Its downloads are checked by size only (a size-equal corrupted file is accepted), so files are
  fetched here with its HTTP session and every byte is hashed as it arrives: sha256 against the
  Hub's LFS sha256, or git's blob id for small (non-LFS) files.
- ``upload_folder`` may split a large upload into several commits; exports use ``create_commit``
  alone, guarded by ``parent_commit`` (a stale parent is a plain ``HfHubHTTPError`` with status 412).
- A ``create_commit`` whose files are all unchanged makes no commit and does not check
  ``parent_commit``; callers skip unchanged files themselves, so that case never reaches it.
- The client reads a file it uploads through ``CommitOperationAdd.as_file`` (the LFS PUT, the
  base64 body of a small file, the README check). Exports hand it ``_CheckedAdd``, whose
  ``as_file`` hashes the bytes as the client reads them (on a second thread) and refuses a file
  whose sha256 is not the one the catalog records before the commit is made: a damaged blob
  never lands in a commit, and each byte is read once, not once to check and again to send.

Every error of the client becomes a ``lora_hub.errors`` error with a hint (``translate``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import queue
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_hub.errors import (
    HubAuthError,
    HubError,
    HubNotFoundError,
    IntegrityError,
    InvalidArgumentError,
    LoraHubError,
)
from lora_hub.hashing import hash_file
from lora_hub.progress import Advance

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20  # bytes per network read handed to the hashing thread
RESUME_ATTEMPTS = 4  # Range requests in one download before it gives up (keeping what it received)
_TRUE = ("1", "on", "yes", "true")


def git_blob_oid(data: bytes) -> str:
    """git's id of a file's content (sha1 of ``blob <size>\\0`` + content): the Hub's ``blob_id``
    of a small (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def git_file_oid(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class RemoteFile:
    """A file of a repo at one commit: its size, git blob id, and the sha256 of its content when
    the Hub stores it with LFS (``None`` for a small file held in git)."""

    path: str
    size: int
    oid: str
    sha256: str | None = None

    def matches(self, sha256: str, local: Path | None = None) -> bool:
        """Whether the remote file holds the content ``sha256`` (``sha256:<hex>``) of ``local``."""
        if self.sha256 is not None:
            return "sha256:" + self.sha256 == sha256
        return local is not None and local.stat().st_size == self.size and git_file_oid(local) == self.oid


@dataclass(frozen=True)
class Snapshot:
    """A repo at one commit: the commit sha, its files, and its card's metadata (README.md's YAML)."""

    repo_id: str
    commit: str
    files: dict[str, RemoteFile]
    card: dict[str, Any] = field(default_factory=dict)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``[hf://]org/name[@revision]`` -> (repo id, revision or None)."""
    text = spec.removeprefix("hf://")
    if text.startswith("hf:/"):  # a path argument collapses the double slash
        text = text.removeprefix("hf:/")
    repo_id, sep, revision = text.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo_id) or (sep and not revision):
        raise InvalidArgumentError(
            f"not a Hub model repository: {spec!r}",
            hint="give it as ORG/NAME, optionally @BRANCH, @TAG or @COMMIT, e.g. alice/sql-lora@v1",
        )
    return repo_id, revision or None


def offline_mode() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


class HubClient:
    """An ``HfApi`` bound to one endpoint and token (``connect``), with lora-hub's errors."""

    def __init__(self, endpoint: str, token: str | None) -> None:
        from huggingface_hub import HfApi

        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.api = HfApi(endpoint=self.endpoint, token=token)

    @classmethod
    def connect(cls, endpoint: str | None = None, token: str | None = None) -> HubClient:
        """The endpoint from ``endpoint``, else ``HF_ENDPOINT``, else huggingface.co; the token from
        ``token``, else ``HF_TOKEN`` or the ``hf auth login`` token file. Refused in offline mode."""
        url = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
        if offline_mode():
            raise HubError(
                f"cannot reach the Hugging Face Hub at {url}: offline mode is on (HF_HUB_OFFLINE)",
                hint="unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to import or export",
            )
        try:
            from huggingface_hub import get_token
        except ImportError as exc:  # pragma: no cover - the dev install has it
            from lora_hub.errors import NotSupportedError

            raise NotSupportedError("Hub sync needs huggingface_hub", hint="pip install 'lora-hub[hub]'") from exc
        return cls(url, token or os.environ.get("HF_TOKEN") or get_token())

    # --- reading -------------------------------------------------------------------------------
    def snapshot(self, repo_id: str, revision: str | None) -> Snapshot:
        """Resolve ``revision`` (branch, tag or sha; default ``main``) to its commit and list its files
        with their hashes, in one request."""
        with translate(repo_id, revision):
            info = self.api.model_info(repo_id, revision=revision, files_metadata=True)
        files = {}
        for s in info.siblings or []:
            lfs = s.lfs
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            files[s.rfilename] = RemoteFile(s.rfilename, int(s.size or 0), str(s.blob_id or ""), _lfs_sha(repo_id, sha))
        card = info.card_data.to_dict() if info.card_data is not None else {}
        return Snapshot(repo_id, str(info.sha), files, card)

    def head(self, repo_id: str, branch: str) -> str | None:
        """The commit ``branch`` points at, or None when the repo has no such branch."""
        refs = self.refs(repo_id)
        return refs[0].get(branch)

    def refs(self, repo_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """(branches, tags) of the repo, by name -> commit."""
        with translate(repo_id):
            refs = self.api.list_repo_refs(repo_id)
        return {b.name: b.target_commit for b in refs.branches}, {t.name: t.target_commit for t in refs.tags}

    def list_models(self, author: str) -> list[str]:
        """The ids of the model repos of ``author`` (a user or organisation) that this token can see."""
        with translate(author):
            return sorted(m.id for m in self.api.list_models(author=author))

    def paths_info(self, repo_id: str, commit: str, paths: Sequence[str]) -> dict[str, RemoteFile]:
        """The files among ``paths`` that exist at ``commit`` (folders and missing paths left out)."""
        with translate(repo_id, commit):
            infos = self.api.get_paths_info(repo_id, list(paths), revision=commit)
        from huggingface_hub.hf_api import RepoFile as HfRepoFile

        out = {}
        for f in infos:
            if not isinstance(f, HfRepoFile):  # a folder
                continue
            sha = f.lfs.sha256 if f.lfs is not None else None
            out[f.path] = RemoteFile(f.path, int(f.size or 0), str(f.blob_id), _lfs_sha(repo_id, sha))
        return out

    def read_small(self, repo_id: str, commit: str, remote: RemoteFile, limit: int = 1 << 20) -> bytes:
        """The content of a small file (a model card), checked against its hash."""
        if remote.size > limit:
            raise HubError(f"{repo_id}: {remote.path} is {remote.size:,} bytes, over the {limit:,}-byte limit")
        chunks: list[bytes] = []
        with self._get(repo_id, commit, remote.path) as response:
            for chunk in response.iter_bytes(CHUNK):
                chunks.append(chunk)
        data = b"".join(chunks)
        if remote.sha256 is not None:
            ok = hashlib.sha256(data).hexdigest() == remote.sha256
        else:
            ok = git_blob_oid(data) == remote.oid
        if not ok or len(data) != remote.size:
            raise IntegrityError(f"{repo_id}@{commit[:12]}: {remote.path} does not match its hash on the Hub")
        return data

    @contextlib.contextmanager
    def _get(self, repo_id: str, commit: str, path: str, start: int = 0) -> Iterator[Any]:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

        url = hf_hub_url(repo_id, path, revision=commit, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token)
        if start:
            headers["Range"] = f"bytes={start}-"
        with translate(repo_id, commit, path):
            # What the caller's block raises (a connection lost mid-body) must not be thrown into
            # the client's retrying generator: it would start the request again and yield a second
            # time. It is raised here instead, after that generator has closed.
            failure: list[Exception] = []
            with http_stream_backoff("GET", url, headers=headers) as response:
                hf_raise_for_status(response)
                try:
                    yield response
                except Exception as exc:
                    failure.append(exc)
            if failure:
                raise failure[0]

    def download(
        self, repo_id: str, commit: str, remote: RemoteFile, dest: Path, advance: Advance, resume: Path | None = None
    ) -> str:
        """Write ``remote`` (at ``commit``) to ``dest``, hashing every byte on a second thread as it
        arrives; return its ``sha256:<hex>``. A file whose bytes do not match the Hub's sha256 (or,
        for a small file, its git blob id) or size raises ``IntegrityError``, with ``dest`` removed.

        With ``resume`` (a folder), an LFS file is received into ``resume/<sha256>.part`` first: a
        connection lost mid-file is resumed with a Range request (up to ``RESUME_ATTEMPTS`` times in
        this call), and what was received is kept for the next call when this one gives up or its
        process is killed, so that a second import fetches only the rest. The kept prefix is hashed
        again before it counts, and the whole file is checked against the Hub's sha256 before it is
        moved to ``dest``; a part that fails that check is deleted."""
        if resume is not None and remote.sha256 is not None:
            part = resume / f"{remote.sha256}.part"
            try:
                with _open_part(part) as out:
                    try:
                        fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        pass  # another import is receiving the same content: download on our own
                    else:
                        return self._resumable(repo_id, commit, remote, dest, advance, part, out)
            finally:
                with contextlib.suppress(OSError):  # nothing kept: no folder left behind either
                    resume.rmdir()
        for attempt in range(1, RESUME_ATTEMPTS + 1):
            try:
                return self._download_once(repo_id, commit, remote, dest, advance)
            except Exception as exc:  # a small file cut mid-way is fetched again, whole
                if attempt == RESUME_ATTEMPTS or not _is_transport_error(exc):
                    raise
        raise AssertionError("unreachable")

    def _resumable(
        self, repo_id: str, commit: str, remote: RemoteFile, dest: Path, advance: Advance, part: Path, out: Any
    ) -> str:
        assert remote.sha256 is not None
        where = f"{repo_id}@{commit[:12]}: {remote.path}"
        reported = 0
        for attempt in range(1, RESUME_ATTEMPTS + 1):
            have = out.seek(0, os.SEEK_END)
            if have > remote.size:
                out.truncate(0)
                have = 0
            sha256 = _hash_prefix(part, have)
            if have > reported:
                advance(have - reported)
                reported = have
            interrupted: BaseException | None = None
            if have < remote.size:
                try:
                    with self._get(repo_id, commit, remote.path, start=have) as response:
                        if have and response.status_code != 206:  # the range was ignored: from the start
                            out.truncate(0)
                            have, sha256 = 0, hashlib.sha256()
                        with _Sink(out, sha256) as sink:
                            # Read as received (httpx drops what it buffered for a chunk size when
                            # the stream breaks) and gathered here into CHUNK-sized hand-offs, the
                            # last, partial one kept whatever happens.
                            gathered = bytearray()
                            try:
                                for chunk in response.iter_bytes():
                                    if have + len(chunk) > remote.size:
                                        break
                                    gathered += chunk
                                    have += len(chunk)
                                    if len(gathered) >= CHUNK:
                                        sink.put(bytes(gathered))
                                        gathered.clear()
                                        advance(have - reported)
                                        reported = have
                            finally:
                                if gathered:
                                    sink.put(bytes(gathered))
                        if have > reported:
                            advance(have - reported)
                            reported = have
                except Exception as exc:  # a connection lost mid-file: resume it
                    if not _is_transport_error(exc):
                        raise
                    interrupted = exc
                out.flush()
            if have < remote.size:
                if attempt < RESUME_ATTEMPTS:
                    continue
                cause = f" ({type(interrupted).__name__}: {_short(interrupted)})" if interrupted else ""
                raise HubError(
                    f"{where}: the download stopped at {have:,} of {remote.size:,} bytes after {attempt} "
                    f"attempts{cause}; nothing was stored",
                    hint="run the same command again: it resumes from the bytes received so far",
                ) from interrupted
            got = "sha256:" + sha256.hexdigest()
            if have != remote.size or not remote.matches(got):
                with contextlib.suppress(OSError):
                    part.unlink()
                raise IntegrityError(
                    f"{where} does not match its hash on the Hub (got {got}, the Hub lists "
                    f"sha256:{remote.sha256}); refused, nothing was stored",
                    hint="the file on the Hub (or a proxy between) is damaged; tell the repo's owner, or try again",
                )
            os.replace(part, dest)
            return got
        raise AssertionError("unreachable")

    def _download_once(self, repo_id: str, commit: str, remote: RemoteFile, dest: Path, advance: Advance) -> str:
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % remote.size, usedforsecurity=False) if remote.sha256 is None else None
        received = 0
        try:
            with (
                open(dest, "wb", buffering=0) as out,
                self._get(repo_id, commit, remote.path) as response,
                _Sink(out, sha256, sha1) as sink,
            ):
                for chunk in response.iter_bytes(CHUNK):
                    received += len(chunk)
                    if received > remote.size:
                        break
                    sink.put(chunk)
                    advance(len(chunk))
                # No fsync here: the blob store adopts the staged file (hard link) and fsyncs it
                # once, before it is visible; that is the durable step.
            got = "sha256:" + sha256.hexdigest()
            if received != remote.size:
                raise IntegrityError(
                    f"{repo_id}@{commit[:12]}: {remote.path} came with {'more' if received > remote.size else 'fewer'}"
                    f" bytes than the Hub lists ({remote.size:,}); nothing was stored",
                    hint="try again; if it persists, the file on the Hub is damaged",
                )
            if not (remote.matches(got) if remote.sha256 is not None else sha1 and sha1.hexdigest() == remote.oid):
                expected = f"sha256:{remote.sha256}" if remote.sha256 else f"git blob {remote.oid}"
                raise IntegrityError(
                    f"{repo_id}@{commit[:12]}: {remote.path} does not match its hash on the Hub "
                    f"(got {got}, the Hub lists {expected}); refused, nothing was stored",
                    hint="the file on the Hub (or a proxy between) is damaged; tell the repo's owner, or try again",
                )
            return got
        except BaseException:
            with contextlib.suppress(OSError):
                dest.unlink()
            raise

    # --- writing -------------------------------------------------------------------------------
    def create_repo(self, repo_id: str, *, private: bool) -> None:
        with translate(repo_id):
            self.api.create_repo(repo_id, private=private, exist_ok=True)

    def create_branch(self, repo_id: str, branch: str) -> None:
        with translate(repo_id, branch):
            self.api.create_branch(repo_id, branch=branch, exist_ok=True)

    def create_tag(self, repo_id: str, tag: str, commit: str, message: str) -> None:
        with translate(repo_id, commit):
            self.api.create_tag(repo_id, tag=tag, revision=commit, tag_message=message, exist_ok=True)

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, Path | bytes],
        *,
        branch: str,
        parent: str,
        message: str,
        description: str | None = None,
        digests: Mapping[str, str] | None = None,
        advance: Advance | None = None,
        deletes: Sequence[str] = (),
    ) -> str | None:
        """One atomic commit of ``files`` on ``branch`` on top of ``parent``; returns its sha, or
        None when ``branch`` moved since ``parent`` was read (the Hub's 412). ``digests`` are the
        files' sha256 as the catalog records them: each such file is checked as the client reads
        it to send it (``_CheckedAdd``), so it is read once; a mismatch raises ``IntegrityError``
        before anything is committed. ``advance`` gets the bytes of those files as they are read
        for sending. ``deletes`` are removed in the same commit."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError

        # With hf_xet the client reads each large file itself (not through ``as_file``) and
        # computes its sha256 as it goes: the files are sent first (``preupload_lfs_files``) and
        # that sha256 is compared with the catalog's before the commit is made. Without it, the
        # LFS batch needs the sha256 before anything is sent: the catalog's is given, and checked
        # as the file is read to be sent.
        xet = _xet_in_use()
        checked = _checked_add_class()
        ops: list[Any] = []
        for path, src in files.items():
            digest = (digests or {}).get(path)
            if digest is None or not isinstance(src, Path):
                ops.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=src))
                continue
            op = checked(path_in_repo=path, path_or_fileobj=src)
            op.expect(digest, advance)
            if not xet:
                with contextlib.suppress(AttributeError):  # an UploadInfo without a settable sha256
                    op.upload_info.sha256 = bytes.fromhex(digest.removeprefix("sha256:"))
            ops.append(op)
        additions = list(ops)
        ops += [CommitOperationDelete(path_in_repo=path) for path in deletes]
        with translate(repo_id, branch), _quiet():
            try:
                if xet and additions:
                    self.api.preupload_lfs_files(repo_id, additions=additions, revision=branch)
                    for op in additions:
                        if isinstance(op, checked):
                            op.check_reported()
                info = self.api.create_commit(
                    repo_id,
                    ops,
                    commit_message=message,
                    commit_description=description,
                    revision=branch,
                    parent_commit=parent,
                )
            except HfHubHTTPError as exc:
                if _status(exc) == 412:
                    return None
                raise
            except Exception:
                # The client wraps what an upload raised (RuntimeError "Error while uploading"):
                # a file refused by its check is reported as what it is.
                for op in ops:
                    if isinstance(op, checked) and op.failure is not None:
                        raise op.failure from None
                raise
        return str(info.oid)


class _HashingReader(io.RawIOBase):
    """A read-only view of a file being uploaded, which hashes the bytes as they are read, in file
    order, on a second thread (``hashlib`` releases the GIL, so hashing overlaps the socket
    writes), and checks them against ``expected`` before it hands out the file's last bytes: a
    file whose content is not what the catalog records is never sent whole, so no request body
    carrying it can complete, and the error is raised from the read. Bytes read again (a retried
    PUT) are not hashed twice; after a read that skips ahead, the check hashes the file itself."""

    def __init__(self, raw: io.BufferedReader, size: int, check: Any, advance: Advance) -> None:
        super().__init__()
        self._raw = raw
        self._size = size
        self._check = check  # (sha256:<hex> | None) -> None, raises on a mismatch
        self._advance = advance
        self._sha = hashlib.sha256()
        self._covered = 0  # bytes [0, covered) are hashed
        self._gap = False
        self._checked = False
        self._failure: BaseException | None = None
        self._work: queue.Queue[memoryview | None] = queue.Queue(maxsize=64)
        self._thread: threading.Thread | None = None

    def _hash_loop(self) -> None:
        while (chunk := self._work.get()) is not None:
            self._sha.update(chunk)

    def _stop(self) -> None:
        if self._thread is not None:
            self._work.put(None)
            self._thread.join()
            self._thread = None

    def _take(self, pos: int, data: bytes) -> None:
        end = pos + len(data)
        if pos > self._covered:
            self._gap = True
        if not self._gap and end > self._covered:
            new = memoryview(data)[self._covered - pos :]
            self._covered = end
            if self._thread is None:
                self._thread = threading.Thread(target=self._hash_loop, name="lorahub-hub-upload-hash", daemon=True)
                self._thread.start()
            self._work.put(new)
            self._advance(len(new))
        if self._failure is not None:  # a retried request never gets the last bytes either
            raise self._failure
        if end >= self._size and not self._checked:  # the last bytes: checked before anyone gets them
            self._stop()
            self._checked = True
            try:
                self._check(None if self._gap else "sha256:" + self._sha.hexdigest())
            except BaseException as exc:
                self._failure = exc
                raise

    def read(self, size: int | None = -1) -> bytes:
        pos = self._raw.tell()
        data = self._raw.read(-1 if size is None else size)
        if data or pos >= self._size:
            self._take(pos, data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._stop()
        super().close()


_CHECKED: type | None = None


def _checked_add_class() -> Any:
    """``CommitOperationAdd`` whose reads are checked against the sha256 the catalog records
    (built on first use: ``huggingface_hub`` is imported only when the Hub is used)."""
    global _CHECKED
    if _CHECKED is not None:
        return _CHECKED
    from huggingface_hub import CommitOperationAdd

    class _CheckedAdd(CommitOperationAdd):
        expected: str = ""
        failure: IntegrityError | None = None
        _verified = False
        _progress: Advance | None = None

        def expect(self, digest: str, advance: Advance | None) -> None:
            self.expected, self._progress = digest, advance

        def _check(self, got: str | None) -> None:
            if self._verified:
                return
            if got is None:  # read out of order: hash the file here, once
                got, _ = hash_file(Path(str(self.path_or_fileobj)))
            if got != self.expected:
                self.failure = IntegrityError(
                    f"{self.path_in_repo} is corrupted in the blob store (its bytes hash to {got}, the catalog "
                    f"records {self.expected}); it was not sent whole, and nothing of this export was committed",
                    hint="push the folder again (it rewrites damaged blobs); `lorahub verify --all` checks every blob",
                )
                raise self.failure
            self._verified = True

        def check_reported(self) -> None:
            """Check the sha256 the client computed while sending the file (hf_xet), if it did."""
            if getattr(self.upload_info, "is_hashed", False) and not self._verified:
                self._check("sha256:" + self.upload_info.sha256.hex())

        @contextlib.contextmanager
        def as_file(self, with_tqdm: bool = False) -> Iterator[Any]:
            path = Path(str(self.path_or_fileobj))
            # Progress counts the first checked pass only (the upload); later reads report nothing.
            advance = _no_advance if self._verified else (self._progress or _no_advance)
            with open(path, "rb") as raw, _HashingReader(raw, path.stat().st_size, self._check, advance) as reader:
                yield reader

    _CHECKED = _CheckedAdd
    return _CHECKED


def _xet_in_use() -> bool:
    """Whether the client will send large files with hf_xet (installed, and not turned off by
    ``HF_HUB_DISABLE_XET``, which the client reads when it is imported)."""
    import importlib.util

    from huggingface_hub import constants

    return not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None


def _no_advance(n: int) -> None:
    pass


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The client's own progress bars off for one call: lora-hub reports progress itself, and they
    would land in ``--json`` output."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


@contextlib.contextmanager
def translate(repo_id: str, revision: str | None = None, path: str | None = None) -> Iterator[None]:
    """Turn the client's errors (and network errors) into lora-hub's, each with a hint."""
    from huggingface_hub import errors as hf

    where = repo_id + (f"@{revision}" if revision else "")
    try:
        yield
    except LoraHubError:
        raise
    except hf.OfflineModeIsEnabled as exc:
        raise HubError(
            f"cannot reach the Hub for {where}: offline mode is on (HF_HUB_OFFLINE)",
            hint="unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to import or export",
        ) from exc
    except hf.GatedRepoError as exc:
        raise HubAuthError(
            f"{repo_id} is gated: this token has not been granted access",
            hint=f"request access on the repo's page, then set HF_TOKEN; {_short(exc)}",
        ) from exc
    except hf.RevisionNotFoundError as exc:
        raise HubNotFoundError(
            f"{repo_id} has no revision {revision!r}",
            hint="give an existing branch, tag or full commit sha (see the repo's 'Files and versions' page)",
        ) from exc
    except hf.RepositoryNotFoundError as exc:
        raise HubNotFoundError(
            f"no model repository {repo_id} on the Hub (or it is private and this token cannot see it)",
            hint="check the name; for a private repo set HF_TOKEN (or run `hf auth login`); "
            "to export into a new repo add --create",
        ) from exc
    except hf.RemoteEntryNotFoundError as exc:
        raise HubNotFoundError(f"{where} has no file {path!r}", hint="the repo changed; try again") from exc
    except hf.HfHubHTTPError as exc:
        status = _status(exc)
        if status == 401:
            raise HubAuthError(
                f"the Hub refused the token for {where} (401: {_short(exc)})",
                hint="set HF_TOKEN to a valid token, or run `hf auth login`",
            ) from exc
        if status == 403:
            raise HubAuthError(
                f"this token may not do that on {repo_id} (403: {_short(exc)})",
                hint="use a token with write access to that namespace (a 'write' or fine-grained token)",
            ) from exc
        if status == 404:
            raise HubNotFoundError(f"{where}: not found on the Hub ({_short(exc)})") from exc
        if status == 429:
            raise HubError(
                f"the Hub is rate-limiting requests for {where} (429)",
                hint="wait a few minutes and run the command again; a token raises the limits",
            ) from exc
        raise HubError(f"the Hub answered {status} for {where}: {_short(exc)}", hint="try again later") from exc
    except (ConnectionError, TimeoutError) as exc:
        raise _unreachable(where, exc) from exc
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):
            raise _unreachable(where, exc) from exc
        raise


def _open_part(part: Path) -> Any:
    """``part`` opened for appending, its folder created (again, if an import that finished just
    now removed it while empty)."""
    for _ in range(3):
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            return open(part, "ab+")
        except FileNotFoundError:
            continue
    return open(part, "ab+")


class _Sink:
    """Writes chunks to ``out`` and updates ``hashers`` (None ones skipped) on a second thread
    (``hashlib`` and file writes release the GIL, so both overlap the network reads). Leaving the
    block waits for every chunk; a write error (a full disk) is raised by ``put`` or there."""

    def __init__(self, out: Any, *hashers: Any) -> None:
        self._out, self._hashers = out, [h for h in hashers if h is not None]
        self._work: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._loop, name="lorahub-hub-hash", daemon=True)

    def _loop(self) -> None:
        try:
            while (chunk := self._work.get()) is not None:
                for h in self._hashers:
                    h.update(chunk)
                self._out.write(chunk)
        except BaseException as exc:  # a full disk: raised by the receiving thread
            self._failure.append(exc)
            while self._work.get() is not None:  # keep draining so the producer never blocks
                pass

    def put(self, chunk: bytes) -> None:
        if self._failure:
            raise self._failure[0]
        self._work.put(chunk)

    def __enter__(self) -> _Sink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._work.put(None)
        self._thread.join()
        if self._failure:
            raise self._failure[0]


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _lfs_sha(repo_id: str, value: object) -> str | None:
    """The LFS sha256 the Hub lists for a file, checked to be one: it names local files (a resumed
    download's part), so anything else is refused rather than used."""
    if value is None:
        return None
    text = str(value).lower()
    if not _SHA256_HEX.fullmatch(text):
        raise HubError(
            f"the Hub listed {str(value)[:80]!r} as the sha256 of a file of {repo_id}, which is not a sha256",
            hint="check the endpoint (HF_ENDPOINT or --endpoint): it does not answer as the Hub does",
        )
    return text


def _is_transport_error(exc: BaseException) -> bool:
    """A connection lost, reset or timed out (the client's HTTP stack, or lora-hub's error for it)."""
    for e in (exc, exc.__cause__):
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        if e is not None and type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2", "h11"):
            return True
    return False


def _hash_prefix(path: Path, size: int) -> Any:
    """sha256 of the first ``size`` bytes of ``path`` (what a resumed download already holds)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left > 0 and (chunk := f.read(min(CHUNK * 8, left))):
            h.update(chunk)
            left -= len(chunk)
    return h


def _unreachable(where: str, exc: BaseException) -> HubError:
    return HubError(
        f"cannot reach the Hub for {where}: {type(exc).__name__}: {_short(exc)}",
        hint="check the network and the endpoint (HF_ENDPOINT or --endpoint)",
    )


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
