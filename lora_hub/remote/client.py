"""``RemoteHub``: the ``HubAPI`` of a lorahub server (``lorahub serve``), over httpx.

Errors come back as the server raised them: the body's ``detail.type`` names the class of
``lora_hub.errors``, which is rebuilt with the same message and hint, so a command run against a
server prints what it prints on this machine and exits with the same code.

push: read and check the folder here (the same checks, the same messages), hash every file,
``HEAD`` each blob, stream only the missing ones (``PUT``), then commit the manifest (a missing
blob, e.g. collected by ``gc`` meanwhile, is uploaded and the commit retried once). A blob of
``session_threshold`` bytes or more goes through a resumable upload session in chunks of
``chunk_size`` (``POST .../uploads``, ``PATCH`` each chunk, ``PUT ?digest=``): when the connection
breaks off mid-chunk, the client asks the session's offset and goes on from there, so a
dropped connection costs at most the chunk in flight. A server that has all its upload slots
taken answers 429: the client waits ``Retry-After`` (bounded) and tries again, ``RETRIES``
times at most, then says so.
pull: stream each blob into a staged folder (``lora_hub._fs``), hashing as it is written, and
refuse any blob whose bytes do not match its digest.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import quote

import httpx

from lora_hub import errors
from lora_hub._direct import DirectFile
from lora_hub._fs import PartialRegistry, Protected, Replace, prepare_output, staged_output
from lora_hub.errors import (
    IntegrityError,
    LoraHubError,
    MissingBlobsError,
    NotSupportedError,
    ServerError,
)
from lora_hub.formats.hf import read_model_dir
from lora_hub.formats.peft import check_finite_tensors, read_adapter_dir
from lora_hub.formats.safetensors_file import nonfinite_tensors
from lora_hub.hashing import CHUNK, hash_file
from lora_hub.progress import NoProgress, Progress
from lora_hub.refs import AdapterName, Ref
from lora_hub.remote.tokens import read_token
from lora_hub.settings import Settings
from lora_hub.types import (
    AdapterVersion,
    BaseAddResult,
    BaseFile,
    BaseModelInfo,
    CombineResult,
    CompatReport,
    DbStatus,
    FileEntry,
    GcReport,
    JobInfo,
    LineageNode,
    ListQuery,
    MergeRecord,
    MergeResult,
    PullResult,
    PushResult,
    VerifyReport,
    VersionPage,
)

if TYPE_CHECKING:
    from lora_hub.api import (
        BasePullResult,
        ExporterInfo,
        ExportResult,
        ExtractResult,
        HubAPI,
        HubExportResult,
        HubImportResult,
        HubOp,
        HubSyncResult,
        PipelineResult,
        PipelineSpec,
        RankAnalysis,
        ReduceResult,
    )
    from lora_hub.jobs.follow import JobResult

NO_NAMESPACE = "_"
ERROR_HEADER = "X-Lorahub-Error"  # the error of a HEAD request, which has no body
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
SESSION_THRESHOLD = 64 << 20  # blobs this large or larger are sent in a resumable session
CHUNK_BYTES = 32 << 20  # one PATCH: what a broken connection costs at most
RETRIES = 6  # attempts of a request answered 429 (Retry-After honoured, capped)
MAX_RETRY_AFTER_S = 60.0
RESUMES = 10  # broken chunks one blob may survive


def _path(ref: str) -> str:
    return quote(ref, safe="/:@")


def _error_class(name: str | None, code: str | None) -> type[LoraHubError]:
    cls = getattr(errors, name or "", None)
    if isinstance(cls, type) and issubclass(cls, LoraHubError):
        return cls
    for candidate in vars(errors).values():
        if isinstance(candidate, type) and issubclass(candidate, LoraHubError) and candidate.code.upper() == code:
            return candidate
    return ServerError


def error_from(response: httpx.Response) -> LoraHubError:
    """The ``LoraHubError`` an error response stands for."""
    try:
        raw = response.headers.get(ERROR_HEADER) if response.request.method == "HEAD" else None
        first = (json.loads(raw) if raw else response.json())["errors"][0]
        detail = first.get("detail") or {}
        message, hint = str(first["message"]), detail.get("hint")
    except (ValueError, KeyError, IndexError, TypeError):
        return ServerError(
            f"the server answered {response.status_code} {response.reason_phrase} to {response.request.method} "
            f"{response.request.url.path}, without a lorahub error",
            hint="check that LORAHUB_URL points at a lorahub server",
        )
    cls = _error_class(detail.get("type"), first.get("code"))
    exc = cls.__new__(cls)
    LoraHubError.__init__(exc, message, hint=hint)
    if isinstance(exc, errors.IncompatibleError):
        exc.problems = list(detail.get("problems") or [])
    if isinstance(exc, MissingBlobsError):
        exc.missing = list(detail.get("missing") or [])
    return exc


class RemoteHub:
    """The ``HubAPI`` of the server at ``settings.server_url``, with the token of
    ``LORAHUB_TOKEN`` or else the one ``lorahub login`` saved for that URL."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        session_threshold: int = SESSION_THRESHOLD,
        chunk_size: int = CHUNK_BYTES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.session_threshold = session_threshold
        self.chunk_size = chunk_size
        self._sleep = sleep  # waits between 429 retries (a test records them instead)
        assert settings.server_url
        self.url = settings.server_url.rstrip("/")
        token = settings.token or read_token(settings, self.url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT, transport=transport)
        self._notes: dict[str, str | None] = {}

    def __repr__(self) -> str:
        return f"RemoteHub({self.url!r})"

    def __enter__(self) -> RemoteHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- HTTP ------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, body: Callable[[], Any] | None = None, **kwargs: Any) -> httpx.Response:
        """The response to a request (``body()`` makes its content afresh for each attempt);
        429 is tried again after ``Retry-After``, up to ``RETRIES`` attempts in all."""
        for attempt in range(1, RETRIES + 1):
            try:
                if body is not None:
                    kwargs["content"] = body()
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise _Unreachable(
                    f"cannot reach the lorahub server at {self.url}: {exc}",
                    hint="check LORAHUB_URL and that `lorahub serve` runs there",
                ) from exc
            if response.status_code == 429 and attempt < RETRIES:
                self._sleep(_retry_after(response, attempt))
                continue
            if response.status_code == 429:
                raise ServerError(
                    f"the lorahub server at {self.url} was busy (429) for {RETRIES} attempts at {method} {path}",
                    hint="try again later, or ask its admin to raise LORAHUB_MAX_UPLOADS or add server processes",
                )
            if response.status_code == 416:
                raise _RangeRefused(error_from(response).message)
            if response.status_code >= 400:
                raise error_from(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    @staticmethod
    def _unsupported(what: str) -> NoReturn:
        raise NotSupportedError(
            f"the lorahub server does not offer {what} yet",
            hint="unset LORAHUB_URL to run it on this machine",
        )

    # --- adapters --------------------------------------------------------------------------------
    def push(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        metrics: Mapping[str, float] | None = None,
        tags: Sequence[str] = (),
        description: str | None = None,
        base: str | None = None,
        lineage: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> PushResult:
        """``Hub.push`` through the server: only the blobs it lacks are sent. ``base`` must be a
        base registered on the server."""
        progress = progress or NoProgress()
        if lineage is not None:
            self._unsupported("pushing with a lineage")
        if base is not None and Path(base).is_dir():
            self._unsupported("checking against a local base folder (register the base on the server)")
        adapter_name = Ref.parse(name).adapter
        if ":" in name:
            Ref.parse(name)  # the server says why a version cannot be named here
        adapter = read_adapter_dir(path, check_finite=False)
        total = sum(p.stat().st_size for p in adapter.files.values())
        # The NaN/Inf scan and the hashing read the same bytes; run them side by side (as push does).
        with progress.task("checking", total) as advance, ThreadPoolExecutor(2) as pool:
            scan = pool.submit(nonfinite_tensors, adapter.header)
            entries = [
                FileEntry(path=rel, digest=d, size=n)
                for rel, (d, n) in ((rel, hash_file(p, advance)) for rel, p in adapter.files.items())
            ]
            bad = scan.result()
        check_finite_tensors(adapter.header, bad)
        ns = adapter_name.namespace or NO_NAMESPACE
        body = {
            "files": [e.model_dump() for e in entries],
            "metrics": dict(metrics or {}),
            "tags": list(tags),
            "description": description,
            "base": base,
            "source": str(path),
        }
        written = 0
        missing = [e for e in entries if not self._has_blob(ns, e.digest)]
        for attempt in range(2):
            with progress.task("storing", sum(e.size for e in missing)) as advance:
                for entry in missing:
                    written += self._upload(ns, adapter.files[entry.path], entry, advance)
            try:
                raw = self._json("POST", f"/v1/adapters/{_path(name)}/-/manifest", json=body)
                break
            except MissingBlobsError as exc:  # collected by gc between upload and commit
                if attempt:
                    raise
                missing = [e for e in entries if e.digest in set(exc.missing)]
        result = PushResult.model_validate(raw)
        return result.model_copy(update={"bytes_written": result.bytes_written + written})

    def _has_blob(self, ns: str, digest: str) -> bool:
        try:
            self._send("HEAD", f"/v1/blobs/{ns}/{digest}")
        except errors.NotFoundError:
            return False
        return True

    def _upload(self, ns: str, src: Path, entry: FileEntry, advance: Any) -> int:
        if entry.size >= self.session_threshold:
            return self._upload_resumable(ns, src, entry, advance)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(entry.size)}
        raw = self._send(
            "PUT", f"/v1/blobs/{ns}/{entry.digest}", body=lambda: _file_range(src, 0, entry.size, advance),
            headers=headers,
        ).json()  # fmt: skip
        return int(raw["written"])

    def _upload_resumable(self, ns: str, src: Path, entry: FileEntry, advance: Any) -> int:
        """Send ``src`` through an upload session, chunk by chunk; after a connection that broke
        off (or a 416), ask the session what it holds and go on from there."""
        location = self._send("POST", f"/v1/blobs/{ns}/uploads").headers["location"]
        offset = 0
        breaks = 0
        while offset < entry.size:
            end = min(offset + self.chunk_size, entry.size)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{end - 1}",
                "Content-Length": str(end - offset),
            }
            start = offset
            try:
                r = self._send("PATCH", location, body=functools.partial(_file_range, src, start, end, None),
                               headers=headers)  # fmt: skip
                offset = _upload_offset(r)
            except (_Unreachable, _RangeRefused) as exc:
                breaks += 1
                if breaks > RESUMES:
                    raise ServerError(
                        f"the upload of {entry.path} to {self.url} broke off {breaks} times", hint="try again later"
                    ) from exc
                offset = self._session_offset(location)
            if offset > start:
                advance(offset - start)
        raw = self._send("PUT", location, params={"digest": entry.digest}).json()
        return int(raw["written"])

    def _session_offset(self, location: str) -> int:
        try:
            return _upload_offset(self._send("GET", location))
        except _Unreachable:  # the server may be back a moment later; once more, then give up
            return _upload_offset(self._send("GET", location))

    def pull(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> PullResult:
        """``Hub.pull`` from the server: every blob is streamed and checked against its digest."""
        progress = progress or NoProgress()
        version = self.show(ref)
        replace = Replace.of(force=force, overwrite=overwrite)
        protected = [Protected(self.settings.home, "the lora-hub home (LORAHUB_HOME)")]
        out = prepare_output(Path(dest), replace=replace, protected=protected)
        registry = PartialRegistry(self.settings.home / "partials")
        ns = version.namespace or NO_NAMESPACE
        written = 0
        details = {"ref": version.ref, "digest": version.digest}
        with (
            staged_output(out, kind="pull", replace=replace, registry=registry, details=details) as tmp,
            progress.task(f"pulling {version.ref}", sum(f.size for f in version.files)) as advance,
        ):
            for entry in version.files:
                target = (tmp / entry.path).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise errors.InvalidArgumentError(f"refusing a file path outside the folder: {entry.path!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                written += self._download(ns, entry, target, advance)
        return PullResult(version=version, path=str(out), bytes_written=written)

    def _download(self, ns: str, entry: FileEntry, target: Path, advance: Any) -> int:
        return self._fetch(f"/v1/blobs/{ns}/{entry.digest}", target, entry.path, entry.digest, entry.size, advance)

    def _fetch(self, url: str, target: Path, label: str, digest: str, expected: int, advance: Any) -> int:
        """Stream ``url`` into the new file ``target``, hashing it (``lora_hub._direct``: past the
        page cache, hashed and written on a second thread, fsynced); the bytes written, or
        ``IntegrityError`` when they are not ``digest`` (``expected`` bytes)."""
        try:
            with (
                DirectFile(target, sha256=True, direct=self.settings.direct_io) as fh,
                self._http.stream("GET", url) as response,
            ):
                if response.status_code >= 400:
                    response.read()
                    raise error_from(response)
                for block in response.iter_raw():  # as the transport reads them: no decoding, no re-chunking
                    fh.write(block)
                    advance(len(block))
        except httpx.TransportError as exc:
            raise ServerError(f"the download of {label} from {self.url} failed: {exc}") from exc
        got, size = "sha256:" + fh.hexdigest(), fh.size
        if got != digest or size != expected:
            raise IntegrityError(
                f"{label} came from the server as {got} ({size} bytes), not {digest} ({expected} bytes)",
                hint="pull again; if it repeats, ask the server's admin to run `lorahub verify --all`",
            )
        return size

    def show(self, ref: str) -> AdapterVersion:
        Ref.parse(ref)
        return AdapterVersion.model_validate(self._json("GET", f"/v1/adapters/{_path(ref)}"))

    def show_any(self, ref: str) -> AdapterVersion | BaseModelInfo:
        Ref.parse(ref)
        raw = self._json("GET", f"/v1/adapters/{_path(ref)}/-/any")
        if raw["kind"] == "base":
            return BaseModelInfo.model_validate(raw["base"])
        self._notes[ref] = raw.get("note")
        return AdapterVersion.model_validate(raw["adapter"])

    def name_clash(self, ref: str) -> str | None:
        if ref not in self._notes:
            self.show_any(ref)
        return self._notes.get(ref)

    def search(self, query: ListQuery | None = None, **filters: object) -> VersionPage:
        if query is None:
            query = ListQuery.model_validate(filters)
        elif filters:
            query = query.model_copy(update=filters)
        params = {k: v for k, v in query.model_dump().items() if v is not None}
        return VersionPage.model_validate(self._json("GET", "/v1/adapters", params=params))

    def list_versions(self, query: ListQuery | None = None, **filters: object) -> list[AdapterVersion]:
        return self.search(query, **filters).items

    def versions(self, name: str) -> list[int]:
        Ref.parse(name)
        return [int(v) for v in self._json("GET", f"/v1/adapters/{_path(name)}/-/versions")]

    def tag(self, ref: str, tag: str) -> AdapterVersion:
        Ref.parse(ref)
        raw = self._json("PUT", f"/v1/adapters/{_path(ref)}/-/tags", params={"tag": tag})
        return AdapterVersion.model_validate(raw)

    def untag(self, ref: str, tag: str) -> AdapterVersion:
        Ref.parse(ref)
        raw = self._json("DELETE", f"/v1/adapters/{_path(ref)}/-/tags", params={"tag": tag})
        return AdapterVersion.model_validate(raw)

    def set_metrics(self, ref: str, metrics: Mapping[str, float], *, remove: Sequence[str] = ()) -> AdapterVersion:
        Ref.parse(ref)
        body = json.dumps({"set": dict(metrics), "remove": list(remove)})  # allows NaN: the server refuses it
        raw = self._json(
            "PATCH", f"/v1/adapters/{_path(ref)}/-/metrics", content=body, headers={"Content-Type": "application/json"}
        )
        return AdapterVersion.model_validate(raw)

    def remove(self, ref: str) -> AdapterVersion:
        Ref.parse(ref)
        return AdapterVersion.model_validate(self._json("DELETE", f"/v1/adapters/{_path(ref)}"))

    # --- bases, fits, methods, maintenance -------------------------------------------------------
    def base_list(self) -> list[BaseModelInfo]:
        return [BaseModelInfo.model_validate(b) for b in self._json("GET", "/v1/bases")]

    def base_show(self, name: str) -> BaseModelInfo:
        return BaseModelInfo.model_validate(self._json("GET", f"/v1/bases/{_path(name)}"))

    def validate(self, adapter: str | os.PathLike[str], base: str | os.PathLike[str]) -> CompatReport:
        """``Hub.validate`` on the server, for a stored adapter and a base registered there."""
        if Path(adapter).is_dir() or Path(base).is_dir():
            self._unsupported("validating local folders (push the adapter, register the base on the server)")
        raw = self._json("POST", "/v1/validate", json={"adapter": str(adapter), "base": str(base)})
        return CompatReport.model_validate(raw)

    def methods(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/methods"))

    def gc(self, *, dry_run: bool = False, wait_s: float = 600.0) -> GcReport:
        return GcReport.model_validate(self._json("POST", "/v1/gc", json={"dry_run": dry_run}))

    def whoami(self) -> dict[str, Any] | None:
        """The token the server sees (``None``: anonymous); ``UnauthorizedError`` if it refuses it."""
        token = self._json("GET", "/v1/token")["token"]
        return dict(token) if token else None

    # --- not offered by the server yet -----------------------------------------------------------
    def merge_record(self, recipe_digest: str) -> MergeRecord | None:
        self._unsupported("merge records")

    def lineage(self, ref: str) -> LineageNode:
        self._unsupported("lineage")

    def run_pipeline(
        self,
        pipeline: PipelineSpec | str | os.PathLike[str],
        *,
        device: str = "auto",
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> PipelineResult:
        """Run the pipeline as a job on the server (its paths are the server's), following it."""
        job = self.submit_pipeline(pipeline, device=device, recompute=recompute, force=force, overwrite=overwrite)
        done = job if job.recorded else self.follow_job(job.id, progress)  # recorded: answered with no job
        return cast("PipelineResult", self.job_result(done))

    def merge_pipeline(
        self,
        base: str | os.PathLike[str],
        adapters: Sequence[str],
        output: str | os.PathLike[str],
        *,
        formats: Sequence[str],
        name: str | None = None,
        method: str = "linear",
        params: Mapping[str, Any] | None = None,
        dtype: str = "auto",
        shard_size: str | int = "5GB",
    ) -> PipelineSpec:
        from lora_hub.core import pipeline as pipelines  # pure data: nothing is read here

        return pipelines.merge_spec(str(base), adapters, output, formats=formats, name=name, method=method,
                                    params=dict(params or {}), dtype=dtype, shard_size=shard_size)  # fmt: skip

    def base_add(
        self, path: str | os.PathLike[str], name: str, *, store: bool = False, progress: Progress | None = None
    ) -> BaseAddResult:
        """``Hub.base_add`` through the server, with ``store`` only (the server cannot read a
        folder of this machine): the folder is read and checked here, its files hashed, the manifest
        sent (``POST /v1/bases/{name}``, an admin's), the blobs it answers missing uploaded
        (``/v1/blobs/_/``, only those), and the manifest committed again; the server computes the
        fingerprints from the stored blobs."""
        progress = progress or NoProgress()
        if str(path).startswith("hf:/"):
            self._unsupported("registering a base from the Hugging Face Hub (run it on the server's machine)")
        if not store:
            raise NotSupportedError(
                f"the lorahub server at {self.url} cannot read the folder {path} of this machine: "
                "a base registered through it must be stored there",
                hint=f"add --store to upload its files (`lorahub base add {path} --name {name} --store`), "
                "or run `lorahub base add` on the server's machine",
            )
        AdapterName.parse(name)
        model = read_model_dir(path)
        total = sum(p.stat().st_size for p in model.files.values())
        with progress.task("hashing", total) as advance:
            hashed = {rel: hash_file(p, advance) for rel, p in sorted(model.files.items())}
        entries = [FileEntry(path=rel, digest=d, size=n) for rel, (d, n) in hashed.items()]
        body = {"files": [e.model_dump() for e in entries], "source": str(path)}
        written = self._commit_with_blobs(
            NO_NAMESPACE, entries, model.files, f"/v1/bases/{_path(name)}", body, progress
        )
        result = BaseAddResult.model_validate(written[0])
        return result.model_copy(update={"stored_bytes": result.stored_bytes + written[1]})

    def _commit_with_blobs(
        self,
        ns: str,
        entries: Sequence[FileEntry],
        sources: Mapping[str, Path],
        url: str,
        body: dict[str, Any],
        progress: Progress,
    ) -> tuple[Any, int]:
        """POST the manifest ``body`` to ``url`` first: its 409 lists the blobs the server lacks
        (one request rather than a ``HEAD`` per file, and a caller the route refuses is told so
        before any byte is sent); upload those, then commit again (and once more, for a blob
        collected by ``gc`` meanwhile). (The response's JSON, the bytes uploaded.)"""
        written = 0
        by_digest = {e.digest: e for e in entries}
        for attempt in range(3):
            try:
                return self._json("POST", url, json=body), written
            except MissingBlobsError as exc:
                if attempt == 2:
                    raise
                missing = [by_digest[d] for d in exc.missing if d in by_digest]
            with progress.task("storing", sum(e.size for e in missing)) as advance:
                for entry in missing:
                    written += self._upload(ns, sources[entry.path], entry, advance)
        raise AssertionError("unreachable")  # pragma: no cover

    def base_remove(self, name: str) -> BaseModelInfo:
        """``Hub.base_remove`` on the server (an admin's); its stored blobs are freed by ``gc``."""
        return BaseModelInfo.model_validate(self._json("DELETE", f"/v1/bases/{_path(name)}"))

    def merge(
        self,
        base: str | os.PathLike[str],
        adapters: Sequence[str],
        output: str | os.PathLike[str],
        *,
        name: str | None = None,
        method: str = "linear",
        params: Mapping[str, Any] | None = None,
        dtype: str = "auto",
        device: str = "auto",
        shard_size: str | int = "5GB",
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> MergeResult:
        """The merge as a job on the server (an admin's: ``base``, the adapter folders and
        ``output`` are paths of the server's machine), followed until it ends."""
        spec = self.merge_pipeline(base, adapters, output, formats=[], name=name, method=method, params=params,
                                   dtype=dtype, shard_size=shard_size)  # fmt: skip
        return self.run_pipeline(spec, device=device, recompute=recompute, force=force, overwrite=overwrite,
                                 progress=progress).merge  # fmt: skip

    def combine(
        self,
        adapters: Sequence[str],
        name: str,
        *,
        method: str = "linear",
        params: Mapping[str, Any] | None = None,
        rank: int | None = None,
        dtype: str = "auto",
        output: str | os.PathLike[str] | None = None,
        force: bool = False,
        overwrite: bool = False,
        description: str | None = None,
        tags: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> CombineResult:
        self._unsupported("combine")

    def analyze(
        self,
        adapter: str,
        *,
        base: str | None = None,
        energies: Sequence[float] = (0.9, 0.95, 0.99),
        plot: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> RankAnalysis:
        self._unsupported("analyze")

    def reduce(
        self,
        adapter: str,
        name: str,
        *,
        rank: int | None = None,
        energy: float | None = None,
        dtype: str = "auto",
        output: str | os.PathLike[str] | None = None,
        description: str | None = None,
        tags: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> ReduceResult:
        self._unsupported("reduce")

    def extract(
        self,
        base: str,
        tuned: str,
        name: str,
        *,
        rank: int | None = None,
        energy: float | None = None,
        targets: Sequence[str] | None = None,
        modules_to_save: Sequence[str] = (),
        seed: int = 0,
        device: str = "auto",
        dtype: str = "float32",
        output: str | os.PathLike[str] | None = None,
        description: str | None = None,
        tags: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> ExtractResult:
        self._unsupported("extract")

    def export(
        self,
        model: str | os.PathLike[str],
        output: str | os.PathLike[str],
        format: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        max_batch: int | None = None,
        max_seq: int | None = None,
        opset: int | None = None,
        with_cache: bool = False,
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> ExportResult:
        """The export as a job on the server (paths of the server's machine), followed."""
        job = self.submit_export(model, output, format, dtype=dtype, device=device, max_batch=max_batch,
                                 max_seq=max_seq, opset=opset, with_cache=with_cache, recompute=recompute,
                                 force=force, overwrite=overwrite)  # fmt: skip
        return cast("ExportResult", self.job_result(self.follow_job(job.id, progress)))

    def exporters(self) -> list[ExporterInfo]:
        self._unsupported("exporters")

    def verify(
        self, ref: str | None = None, *, everything: bool = False, progress: Progress | None = None
    ) -> VerifyReport:
        self._unsupported("verify (run it on the server)")

    def upgrade_db(self) -> DbStatus:
        self._unsupported("db upgrade (run it on the server)")

    def submit_pipeline(
        self,
        pipeline: PipelineSpec | str | os.PathLike[str],
        *,
        device: str = "auto",
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
    ) -> JobInfo:
        from lora_hub.core import jobs as job_core

        request = job_core.pipeline_request(pipeline, device=device, recompute=recompute, force=force,
                                            overwrite=overwrite)  # fmt: skip
        return self._submit(request.model_dump(mode="json"))

    def _submit(self, request: dict[str, Any]) -> JobInfo:
        return JobInfo.model_validate(self._json("POST", "/v1/jobs", json=request))

    def submit_export(
        self,
        model: str | os.PathLike[str],
        output: str | os.PathLike[str],
        format: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        max_batch: int | None = None,
        max_seq: int | None = None,
        opset: int | None = None,
        with_cache: bool = False,
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
    ) -> JobInfo:
        from lora_hub.core import jobs as job_core

        request = job_core.export_request(model, output, format, dtype=dtype, device=device, max_batch=max_batch,
                                          max_seq=max_seq, opset=opset, with_cache=with_cache, recompute=recompute,
                                          force=force, overwrite=overwrite)  # fmt: skip
        return self._submit(request.model_dump(mode="json"))

    def job(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(self._json("GET", f"/v1/jobs/{quote(job_id, safe='')}"))

    def jobs(self, *, state: str | None = None, limit: int = 50) -> list[JobInfo]:
        params: dict[str, Any] = {"limit": limit, **({"state": state} if state else {})}
        return [JobInfo.model_validate(j) for j in self._json("GET", "/v1/jobs", params=params)]

    def cancel_job(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(self._json("DELETE", f"/v1/jobs/{quote(job_id, safe='')}"))

    def follow_job(self, job_id: str, progress: Progress | None = None, *, timeout_s: float | None = None) -> JobInfo:
        from lora_hub.jobs.follow import follow

        return follow(self.job, job_id, progress, timeout_s=timeout_s)

    def job_result(self, job: JobInfo) -> JobResult:
        from lora_hub.jobs.follow import result_of

        return result_of(job)

    def run_worker(self, *, queue: str | None = None, concurrency: int = 1, wait: bool = True) -> None:
        self._unsupported("workers (run `lorahub worker` beside the server)")

    def hub_import(
        self,
        repo: str,
        name: str,
        *,
        base: str | None = None,
        tags: Sequence[str] = (),
        endpoint: str | None = None,
        token: str | None = None,
        progress: Progress | None = None,
    ) -> HubImportResult:
        """A Hub import as a job on the server's workers (``submit_hub``), followed."""
        self._server_hub_only(endpoint, token)
        job = self.submit_hub("import", repo=repo, name=name, base=base, tags=list(tags))
        return cast("HubImportResult", self.job_result(self.follow_job(job.id, progress)))

    def hub_export(
        self,
        ref: str,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool = False,
        create: bool = False,
        dry_run: bool = False,
        endpoint: str | None = None,
        token: str | None = None,
        progress: Progress | None = None,
    ) -> HubExportResult:
        """A Hub export as a job on the server's workers (``submit_hub``), followed."""
        self._server_hub_only(endpoint, token)
        job = self.submit_hub("export", name=ref, repo=repo_id, revision=revision, private=private, create=create,
                              dry_run=dry_run)  # fmt: skip
        return cast("HubExportResult", self.job_result(self.follow_job(job.id, progress)))

    def hub_sync(
        self,
        namespace: str,
        org: str,
        *,
        pull: bool = False,
        dry_run: bool = False,
        private: bool = False,
        endpoint: str | None = None,
        token: str | None = None,
        progress: Progress | None = None,
    ) -> HubSyncResult:
        """A Hub sync as a job on the server's workers (``submit_hub``), followed."""
        self._server_hub_only(endpoint, token)
        job = self.submit_hub("sync", namespace=namespace, repo=org, pull=pull, dry_run=dry_run, private=private)
        return cast("HubSyncResult", self.job_result(self.follow_job(job.id, progress)))

    def submit_hub(self, op: HubOp, **arguments: Any) -> JobInfo:
        from lora_hub.core import jobs as job_core

        return self._submit(job_core.hub_request(op, **arguments).model_dump(mode="json"))

    def _server_hub_only(self, endpoint: str | None, token: str | None) -> None:
        if endpoint is not None or token is not None:
            raise NotSupportedError(
                f"the lorahub server at {self.url} talks to the Hugging Face Hub with its own endpoint and token",
                hint="leave out --endpoint (and the token): set HF_ENDPOINT and HF_TOKEN for the server's workers",
            )

    def base_pull(
        self,
        name: str,
        dest: str | os.PathLike[str],
        *,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> BasePullResult:
        """``Hub.base_pull`` from the server: the same checks and output rule as on the server's
        machine (``lora_hub.core.bases.write_pulled``), each file streamed from
        ``GET /v1/bases/{name}/-/files/{path}`` and checked against its digest, the folder
        renamed into place only once every file is."""
        from lora_hub.core import bases as base_core  # the pull's own rules, not a copy of them

        info = self.base_show(name)

        def copy(f: BaseFile, target: Path, advance: Any) -> int:
            assert f.digest is not None
            url = f"/v1/bases/{_path(info.name or name)}/-/files/{quote(f.path, safe='/')}"
            return self._fetch(url, target, f.path, f.digest, f.size, advance)

        return base_core.write_pulled(
            info, dest, copy, replace=Replace.of(force=force, overwrite=overwrite),
            protected=[Protected(self.settings.home, "the lora-hub home (LORAHUB_HOME)")],
            registry=PartialRegistry(self.settings.home / "partials"), progress=progress,
        )  # fmt: skip


class _Unreachable(ServerError):
    """The request did not get an answer (connection refused, reset or broken off)."""


class _RangeRefused(errors.ConflictError):
    """416 to a chunk: the session holds another offset (asked again)."""


def _retry_after(response: httpx.Response, attempt: int) -> float:
    """Seconds to wait before trying again: the server's ``Retry-After`` (seconds), capped; else
    a doubling backoff."""
    raw = response.headers.get("retry-after", "").strip()
    try:
        wait = float(raw)
    except ValueError:
        wait = float(2 ** (attempt - 1))
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)


def _upload_offset(response: httpx.Response) -> int:
    """The staged offset a session's response names (``Upload-Offset``, else OCI's ``Range``)."""
    raw = response.headers.get("upload-offset")
    if raw is not None and raw.isdigit():
        return int(raw)
    last = response.headers.get("range", "0-0").rpartition("-")[2]
    return int(last) + 1 if last.isdigit() and int(last) > 0 else 0


def _file_range(src: Path, start: int, end: int, advance: Any) -> Iterator[bytes]:
    with open(src, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0 and (block := fh.read(min(CHUNK, left))):
            left -= len(block)
            if advance is not None:
                advance(len(block))
            yield block


if TYPE_CHECKING:

    def _conforms(hub: RemoteHub) -> HubAPI:  # mypy: the remote hub implements the whole protocol
        return hub
