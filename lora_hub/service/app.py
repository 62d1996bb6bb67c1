"""The REST API of ``lorahub serve``: the core API (``lora_hub.api.Hub``) over HTTP, under ``/v1``.

Routes parse the request, check the caller's token (``lora_hub.service.auth``), call one ``Hub``
method and return its result as JSON (the same models as ``--json``). Errors are OCI-style
bodies, ``{"errors": [{"code", "message", "detail"}]}``, with the HTTP status of the error's class
(``lora_hub.errors``); ``detail`` carries ``type`` (the class), ``hint`` and, where the class has
them, ``problems`` or ``missing``. A reference is sent as it was typed, in the path
(``/v1/adapters/acme/sql-lora:3``); sub-resources follow ``/-/``, which no name can be.

Content-addressed transfer (``lora_hub.core.transfer``): ``HEAD /v1/blobs/{ns}/{digest}`` says
whether a blob is stored, ``PUT`` streams one in (hashed as it arrives, visible only if it
matches), ``GET`` streams one out (Range, ``ETag`` = digest), and
``POST /v1/adapters/{name}/-/manifest`` commits a version last. ``_`` stands for "no namespace".

Bases belong to no namespace: any valid token (or anonymous reading, where allowed) lists and
shows them and reads a stored base's files, ``GET /v1/bases/{name}/-/files/{path}`` (streamed,
Range, ``ETag`` = digest; ``lorahub base pull``). Registering one is an admin's: its files are
uploaded as blobs of ``_`` and committed as ``POST /v1/bases/{name}`` (``{"files": [...]}``; 409
``MANIFEST_BLOB_UNKNOWN`` lists the missing blobs, and nothing is registered), removing one is
``DELETE /v1/bases/{name}``.

Jobs (``/v1/jobs``): an admin's, except a merge of registered names whose output is stored as a
base (``store_output``), which a write token may submit, see and cancel when it may read every
adapter's namespace and write the output name's (see the jobs section below).

Resumable uploads, as OCI registries take them: ``POST /v1/blobs/{ns}/uploads`` starts a session
(202, ``Location``; with ``?mount=<digest>&from=<ns>``, 201 and no bytes to send when the caller
may read a version of ``<ns>`` that uses the blob), ``PATCH`` its ``Location`` with chunks
(``Content-Range: <start>-<end>``; a chunk that does not start at the staged offset is 416 with
``Range: 0-<last byte>``), ``GET``/``HEAD`` it for the offset (204, ``Range``, ``Upload-Offset``),
``PUT ?digest=`` (optionally with the last chunk) to complete it, ``DELETE`` to abort. Sessions
are staged in the store, so any server process sharing it may take the next request. Each
process takes at most ``LORAHUB_MAX_UPLOADS`` uploads at once; more are 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
from fastapi import Body, Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from lora_hub._version import __version__
from lora_hub.api import ServingHub
from lora_hub.errors import (
    AdapterNotFoundError,
    BodyTooLargeError,
    IncompatibleError,
    InvalidArgumentError,
    JobNotFoundError,
    LoraHubError,
    MissingBlobsError,
    NotFoundError,
    TooManyRequestsError,
    UnauthorizedError,
)
from lora_hub.hashing import parse_digest
from lora_hub.refs import Ref
from lora_hub.service.auth import Principal, bearer_secret, principal_for
from lora_hub.service.shared import SharedRead
from lora_hub.settings import Settings
from lora_hub.types import (
    AdapterVersion,
    BaseAddResult,
    BaseModelInfo,
    CompatReport,
    FileEntry,
    GcReport,
    JobInfo,
    ListQuery,
    PushResult,
    VersionPage,
)

log = logging.getLogger("lora_hub.service")
NO_NAMESPACE = "_"  # in /v1/blobs/{ns}/...: names without a namespace ("_" is never a namespace)
MAX_JSON_BODY = 8 << 20  # manifests and small requests; blobs have their own limit
ERROR_HEADER = "X-Lorahub-Error"
RETRY_AFTER_S = 1  # what a 429 asks a client to wait: an upload slot frees as soon as one ends
BUSY_TRIES, BUSY_WAIT_S = 100, 0.05  # a session another request still writes (a client that resumed early)


def error_body(exc: LoraHubError) -> dict[str, Any]:
    detail: dict[str, Any] = {"type": type(exc).__name__, "hint": exc.hint}
    if isinstance(exc, IncompatibleError):
        detail["problems"] = exc.problems
    if isinstance(exc, MissingBlobsError):
        detail["missing"] = exc.missing
    return {"errors": [{"code": exc.code.upper(), "message": exc.message, "detail": detail}]}


def _error_response(exc: LoraHubError, request: Request | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="lorahub"'} if isinstance(exc, UnauthorizedError) else {}
    headers.update(getattr(exc, "http_headers", None) or {})  # e.g. Range of a 416, Retry-After of a 429
    if request is not None and request.method == "HEAD":  # no body: the error travels in a header
        headers[ERROR_HEADER] = json.dumps(error_body(exc), ensure_ascii=True)
    return JSONResponse(error_body(exc), status_code=exc.http_status, headers=headers)


class MetricsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    set: dict[str, float] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class ManifestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[FileEntry]
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    base: str | None = Field(default=None, description="a base registered on the server")
    source: str | None = Field(default=None, description="the client's folder, as named in error messages")


class BaseManifestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[FileEntry]
    source: str | None = Field(default=None, description="the client's folder, as named in error messages")


class ValidateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str = Field(description="a stored adapter reference")
    base: str = Field(description="a base registered on the server")


class GcBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dry_run: bool = False


class BlobStored(BaseModel):
    digest: str
    size: int
    written: int = Field(description="bytes this upload added to the store (0: it was stored already)")


class ShownAny(BaseModel):
    kind: str
    adapter: AdapterVersion | None = None
    base: BaseModelInfo | None = None
    note: str | None = Field(default=None, description="name_clash: the name is also a base's")


class UploadStarted(BaseModel):
    upload_id: str
    location: str
    offset: int = 0


class _UploadSlots:
    """A per-process bound on uploads in progress (requests streaming a body into the store).
    Used from the event loop only (every upload route is ``async``), so a plain count is safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.busy >= self.limit:
            raise TooManyRequestsError(
                f"this server takes {self.limit} uploads at a time, and has that many now",
                retry_after_s=RETRY_AFTER_S,
                hint=f"try again in {RETRY_AFTER_S} s (LORAHUB_MAX_UPLOADS sets the bound)",
            )
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1


_CONTENT_RANGE = re.compile(r"^(?:bytes )?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def _content_range(request: Request) -> tuple[int | None, int | None]:
    """(start, end exclusive) of a chunk's ``Content-Range`` (OCI's ``<start>-<end>``, or the
    ``bytes <start>-<end>/<total>`` form), checked against ``Content-Length``; (None, None) without one."""
    raw = request.headers.get("content-range")
    if raw is None:
        return None, None
    m = _CONTENT_RANGE.match(raw.strip())
    if not m or int(m.group(2)) < int(m.group(1)):
        raise InvalidArgumentError(f"Content-Range {raw[:80]!r} is not <start>-<end>", hint="e.g. 0-1048575")
    start, end = int(m.group(1)), int(m.group(2)) + 1
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) != end - start:
        raise InvalidArgumentError(f"Content-Range {raw!r} says {end - start} bytes, Content-Length {length}")
    return start, end


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return (length is not None and length.strip() not in ("", "0")) or "transfer-encoding" in request.headers


async def _principal(request: Request) -> Principal:
    """The caller of this request: its token as the catalog holds it now. The catalog
    generation is read once per request, by a read that started after the request arrived
    (shared with the requests waiting at the same time: ``lora_hub.service.shared``); the token
    is looked up again only when it has moved. On the event loop: a thread only on a miss."""
    hub: ServingHub = request.app.state.hub
    generation = await request.app.state.generation()
    request.state.generation = generation
    secret = bearer_secret(request.headers.get("authorization"))
    token = None
    if secret is not None:
        kept, token = hub.authenticate_kept(secret, generation=generation)
        if not kept:
            token = await run_in_threadpool(hub.authenticate, secret, generation=generation)
    found = principal_for(secret, token, hub.settings.anonymous_read)
    request.state.principal = found
    return found


Caller = Annotated[Principal, Depends(_principal)]


def _freeze_heap() -> None:
    gc.collect()
    gc.freeze()


def serving_app() -> FastAPI:
    """The app of ``lorahub serve``'s processes: ``create_app`` over the environment's settings,
    with the heap frozen once started (``freeze_heap``)."""
    return create_app(freeze_heap=True)


def create_app(
    settings: Settings | None = None, *, hub: ServingHub | None = None, freeze_heap: bool = False
) -> FastAPI:
    """The ASGI app over ``hub`` (default: a ``Hub`` of ``settings``, or of the environment).
    ``freeze_heap``: once started, move every object then alive out of the garbage collector's
    sight (``gc.freeze``), for a process that does nothing but serve: otherwise each full
    collection walks the whole imported library, and every request waiting meanwhile
    (all of them, under load) gets 70-110 ms later (``BENCHMARKS.md``, service ``list``). Not
    for a process that goes on to do other work (tests): what was frozen is never collected."""
    the_hub = hub or ServingHub(settings=settings or Settings.from_env())
    cfg = the_hub.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Open (and migrate) the catalog before the first request, not in several threads at once.
        await run_in_threadpool(the_hub.upgrade_db)
        removed = await run_in_threadpool(the_hub.clean_uploads)
        if removed:
            log.info("removed %d staged upload(s) left by a server that stopped", removed)
        if freeze_heap:  # before resumed jobs allocate: what they hold must stay collectable
            _freeze_heap()
        resumed = await run_in_threadpool(the_hub.resume_jobs)
        if resumed:
            log.info("resumed %d job(s) left by a server that stopped", resumed)
        yield
        if hub is None:
            the_hub.close()

    app = FastAPI(
        title="lora-hub",
        version=__version__,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.hub = the_hub
    app.state.generation = SharedRead(the_hub.generation)

    @app.exception_handler(LoraHubError)
    async def _lorahub_error(request: Request, exc: LoraHubError) -> JSONResponse:
        principal: Principal | None = getattr(request.state, "principal", None)
        if isinstance(exc, AdapterNotFoundError) and not (principal and principal.sees_everything):
            exc = AdapterNotFoundError(exc.name)  # its "did you mean" could name other namespaces
        return _error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error_response(InvalidArgumentError(f"invalid request: {where}: {first.get('msg', 'invalid')}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "UNSUPPORTED"}.get(exc.status_code, "ERROR")
        body = {"errors": [{"code": code, "message": str(exc.detail), "detail": None}]}
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        body = {"errors": [{"code": "INTERNAL", "message": f"internal error: {type(exc).__name__}", "detail": None}]}
        return JSONResponse(body, status_code=500)

    app.add_middleware(_EarlyLimit, blob_limit=cfg.max_upload_bytes)
    slots = _UploadSlots(cfg.max_uploads)
    app.state.upload_slots = slots

    def _ref(text: str) -> Ref:
        return Ref.parse(text)

    def _need_ref(caller: Principal, text: str, scope: str) -> Ref:
        ref = _ref(text)
        caller.need(ref.adapter.namespace, scope, lambda: AdapterNotFoundError(str(ref.adapter)))
        return ref

    # --- health ----------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """The catalog answers (one small query) and the blob store is usable."""
        try:
            the_hub.search(ListQuery(limit=1))
            the_hub.blob_size("sha256:" + "0" * 64)
        except LoraHubError as exc:
            return JSONResponse({"status": "unavailable", **error_body(exc)}, status_code=503)
        return JSONResponse({"status": "ready", "version": __version__})

    # --- adapters --------------------------------------------------------------------------------
    @app.get("/v1/adapters", tags=["adapters"], response_model=VersionPage)
    async def list_adapters(caller: Caller, request: Request, query: Annotated[ListQuery, Query()]) -> Response:
        """Versions matching the query (``lorahub list``: ``where``, ``sort``, ...). Answered from
        the server's cache while the catalog has not changed."""
        caller.need_any()
        if caller.token is not None and not caller.sees_everything:
            pattern = caller.token.namespace
            if query.namespace is not None:
                if not caller.token.covers(query.namespace):
                    empty = VersionPage(items=[], offset=query.offset, limit=query.limit, total=0)
                    return Response(empty.model_dump_json(), media_type="application/json")
            elif "*" in pattern:
                raise InvalidArgumentError(
                    f"this token reads the namespaces {pattern}: list one of them at a time",
                    hint="pass --namespace NS",
                )
            else:
                query = query.model_copy(update={"namespace": pattern})
        generation = request.state.generation
        page = the_hub.search_json_kept(query, generation=generation)
        if page is None:
            page = await run_in_threadpool(the_hub.search_json, query, generation=generation)
        return Response(page, media_type="application/json")

    @app.get("/v1/adapters/{ref:path}/-/versions", tags=["adapters"])
    def versions(caller: Caller, ref: str) -> list[int]:
        _need_ref(caller, ref, "read")
        return the_hub.versions(ref)

    @app.get("/v1/adapters/{ref:path}/-/any", tags=["adapters"])
    def show_any(caller: Caller, ref: str) -> ShownAny:
        """The adapter version, or else the base of that name (``lorahub show``)."""
        parsed = _ref(ref)
        found: AdapterVersion | BaseModelInfo
        try:
            caller.need(parsed.adapter.namespace, "read", lambda: AdapterNotFoundError(str(parsed.adapter)))
        except AdapterNotFoundError:
            # The namespace is not this caller's to read: only a base of that name may be shown.
            if ":" in ref:
                raise
            try:
                found = the_hub.base_show(ref)
            except NotFoundError:
                raise AdapterNotFoundError(str(parsed.adapter)) from None
        else:
            found = the_hub.show_any(ref)
        if isinstance(found, BaseModelInfo):
            return ShownAny(kind="base", base=found)
        return ShownAny(kind="adapter", adapter=found, note=the_hub.name_clash(ref))

    @app.put("/v1/adapters/{ref:path}/-/tags", tags=["adapters"])
    def tag(caller: Caller, ref: str, tag: Annotated[str, Query()]) -> AdapterVersion:
        """Point ``tag`` at the version ``ref``; it moves off the version that had it."""
        _need_ref(caller, ref, "write")
        return the_hub.tag(ref, tag)

    @app.delete("/v1/adapters/{ref:path}/-/tags", tags=["adapters"])
    def untag(caller: Caller, ref: str, tag: Annotated[str, Query()]) -> AdapterVersion:
        _need_ref(caller, ref, "write")
        return the_hub.untag(ref, tag)

    @app.get("/v1/token", tags=["admin"])
    def whoami(caller: Caller) -> dict[str, Any]:
        """The caller's token (never its secret), or ``null`` for an anonymous caller."""
        return {"token": caller.token.model_dump(mode="json") if caller.token else None}

    @app.patch("/v1/adapters/{ref:path}/-/metrics", tags=["adapters"])
    def set_metrics(caller: Caller, ref: str, body: MetricsBody) -> AdapterVersion:
        _need_ref(caller, ref, "write")
        return the_hub.set_metrics(ref, body.set, remove=body.remove)

    @app.post("/v1/adapters/{name:path}/-/manifest", tags=["transfer"])
    def commit(caller: Caller, name: str, body: ManifestBody, response: Response) -> PushResult:
        """Commit a version as a manifest of stored blobs: 201 (new), 200 (identical content is
        that version already), or 409 ``MANIFEST_BLOB_UNKNOWN`` with ``detail.missing``."""
        _need_ref(caller, name, "write")
        if body.base is not None:
            caller.need_any()
        result = the_hub.commit_manifest(
            name, body.files, metrics=body.metrics, tags=body.tags, description=body.description, base=body.base,
            source=body.source,
        )  # fmt: skip
        response.status_code = 201 if result.created else 200
        return result

    @app.get("/v1/adapters/{ref:path}", tags=["adapters"])
    def show(caller: Caller, ref: str) -> AdapterVersion:
        _need_ref(caller, ref, "read")
        return the_hub.show(ref)

    @app.delete("/v1/adapters/{ref:path}", tags=["adapters"])
    def remove(caller: Caller, ref: str) -> AdapterVersion:
        _need_ref(caller, ref, "write")
        return the_hub.remove(ref)

    # --- bases, validate, methods, gc --------------------------------------------------------------
    @app.get("/v1/bases", tags=["bases"])
    def base_list(caller: Caller) -> list[BaseModelInfo]:
        caller.need_any()
        return the_hub.base_list()

    # Bases belong to no namespace: any valid token (or anonymous reading) reads them, stored
    # files included; only an admin registers or removes one (issue 14: admin = tokens, gc, bases).
    @app.get("/v1/bases/{name:path}/-/files/{file:path}", tags=["bases"], response_class=FileResponse)
    def base_file(caller: Caller, name: str, file: str) -> FileResponse:
        """One stored file of a stored base (``lorahub base pull``), streamed, Range requests
        answered, ``ETag`` = its digest (which the client checks). 501 when the base is not in
        the blob store, 404 when it has no such file."""
        caller.need_any()
        stored = the_hub.base_file(name, file)
        assert stored.digest is not None
        with the_hub.blob_file(stored.digest) as path:
            return _BlobResponse(
                path,
                media_type="application/octet-stream",
                headers={"ETag": f'"{stored.digest}"', "Docker-Content-Digest": stored.digest},
            )

    @app.get("/v1/bases/{name:path}", tags=["bases"])
    def base_show(caller: Caller, name: str) -> BaseModelInfo:
        caller.need_any()
        return the_hub.base_show(name)

    @app.post("/v1/bases/{name:path}", tags=["bases"])
    def base_commit(caller: Caller, name: str, body: BaseManifestBody, response: Response) -> BaseAddResult:
        """Register a stored base made of uploaded blobs (``base add --store`` through the
        server; upload them first under ``/v1/blobs/_/``): the server computes its fingerprints
        from the stored blobs. 201 (new), 200 (the same content under that name already), 409
        ``MANIFEST_BLOB_UNKNOWN`` with ``detail.missing`` (nothing registered). Admin only."""
        caller.need_admin()
        result = the_hub.commit_base_manifest(name, body.files, source=body.source)
        response.status_code = 201 if result.created else 200
        return result

    @app.delete("/v1/bases/{name:path}", tags=["bases"])
    def base_remove(caller: Caller, name: str) -> BaseModelInfo:
        """Forget a base (``lorahub base rm``); its stored blobs are freed by ``gc``. Admin only."""
        caller.need_admin()
        return the_hub.base_remove(name)

    @app.post("/v1/validate", tags=["bases"])
    def validate(caller: Caller, body: ValidateBody) -> CompatReport:
        """Does a stored adapter fit a registered base (``lorahub validate``)?"""
        _need_ref(caller, body.adapter, "read")
        return the_hub.validate_stored(body.adapter, body.base)

    @app.get("/v1/methods", tags=["merging"])
    def methods(caller: Caller) -> list[dict[str, Any]]:
        caller.need_any()
        return the_hub.methods()

    @app.post("/v1/gc", tags=["admin"])
    def gc(caller: Caller, body: Annotated[GcBody, Body()] = GcBody()) -> GcReport:
        caller.need_admin()
        return the_hub.gc(dry_run=body.dry_run)

    # --- blobs -----------------------------------------------------------------------------------
    def _ns(segment: str) -> str:
        return "" if segment == NO_NAMESPACE else segment

    def _hidden_blob(digest: str) -> NotFoundError:
        return NotFoundError(f"no blob {digest}", hint="upload it first")

    @app.head("/v1/blobs/{namespace}/{digest}", tags=["transfer"])
    def blob_head(caller: Caller, namespace: str, digest: str) -> Response:
        """200 with ``Content-Length`` when the store holds the blob, else 404 (for writers of
        ``namespace``, who are about to upload; readers see only the namespace's blobs)."""
        ns = _ns(namespace)
        parse_digest(digest)
        writer = caller.token is not None and caller.token.allows(ns, "write")
        if not writer:
            caller.need(ns, "read", lambda: _hidden_blob(digest))
            if not the_hub.namespace_uses_blob(ns, digest):
                raise _hidden_blob(digest)
        size = the_hub.blob_size(digest)
        if size is None:
            raise _hidden_blob(digest)
        return Response(headers={"Content-Length": str(size), "Docker-Content-Digest": digest, "ETag": f'"{digest}"'})

    @app.get("/v1/blobs/{namespace}/{digest}", tags=["transfer"], response_class=FileResponse)
    def blob_get(caller: Caller, namespace: str, digest: str) -> FileResponse:
        """The blob's bytes (Range requests answered; ``ETag`` is the digest), for readers of a
        namespace that one of whose versions refers to it."""
        ns = _ns(namespace)
        parse_digest(digest)
        caller.need(ns, "read", lambda: _hidden_blob(digest))
        if not the_hub.namespace_uses_blob(ns, digest):
            raise _hidden_blob(digest)
        with the_hub.blob_file(digest) as path:
            # A local store's blob is its own read-only file, which outlives this block.
            return _BlobResponse(
                path,
                media_type="application/octet-stream",
                headers={"ETag": f'"{digest}"', "Docker-Content-Digest": digest},
            )

    def _need_write(caller: Principal, ns: str) -> None:
        caller.need(
            ns,
            "write",
            lambda: NotFoundError(f"no namespace {ns!r} for this token", hint="a token covers only its namespaces"),
        )

    @app.put("/v1/blobs/{namespace}/{digest}", tags=["transfer"], status_code=201)
    async def blob_put(caller: Caller, request: Request, namespace: str, digest: str) -> BlobStored:
        """Stream one blob in (``application/octet-stream``): hashed as it is written to a staged
        file, stored only if it matches ``digest`` (else 400 ``DIGEST_INVALID``, nothing stored).
        The staged file itself becomes the blob (``Hub.receive_blob``: no copy, no second hash)."""
        ns = _ns(namespace)
        _need_write(caller, ns)
        parse_digest(digest)
        with slots.hold():
            cm = the_hub.receive_blob(digest, limit=cfg.max_upload_bytes)
            receiver = await _enter(cm)
            await _stream_into(request, cm, receiver)
        return BlobStored(digest=digest, size=receiver.size, written=receiver.written)

    # --- upload sessions (lora_hub.core.transfer) ---------------------------------------------------
    def _location(namespace: str, upload_id: str) -> str:
        return f"/v1/blobs/{namespace}/uploads/{upload_id}"

    def _session_headers(namespace: str, upload_id: str, offset: int) -> dict[str, str]:
        return {
            "Location": _location(namespace, upload_id),
            "Docker-Upload-UUID": upload_id,
            "Range": f"0-{max(offset - 1, 0)}",  # OCI's form; 0-0 also when nothing is staged
            "Upload-Offset": str(offset),  # the exact count
        }

    async def _append(request: Request, ns: str, upload_id: str) -> int:
        """Stream the request's body into the session from the offset its Content-Range names;
        the staged offset after it. A client that breaks off keeps what the store staged."""
        start, end = _content_range(request)
        length = request.headers.get("content-length")
        if end is None and start is None and length is not None and length.isdigit():
            status = await run_in_threadpool(the_hub.upload_status, ns, upload_id)
            end = status.offset + int(length)
        for attempt in range(BUSY_TRIES):
            cm = the_hub.upload_append(ns, upload_id, start, end=end, limit=cfg.max_upload_bytes)
            try:
                sink = await _enter(cm)
                break
            except LoraHubError as exc:
                if not getattr(exc, "busy", False) or attempt + 1 == BUSY_TRIES:
                    raise
                await asyncio.sleep(BUSY_WAIT_S)
        await _stream_into(request, cm, sink)
        return int(sink.offset)

    @app.post("/v1/blobs/{namespace}/uploads", tags=["transfer"], status_code=202)
    def upload_start(
        caller: Caller,
        namespace: str,
        response: Response,
        mount: Annotated[str | None, Query(description="a digest to use from the namespace `from`")] = None,
        from_: Annotated[str | None, Query(alias="from")] = None,
    ) -> UploadStarted | BlobStored:
        """Start an upload session (202 with ``Location``), or with ``mount`` and ``from``, use a
        blob that a version of ``from`` refers to (201, nothing to send) when the token may read
        ``from``; otherwise a session all the same (202), which tells nothing of other namespaces."""
        ns = _ns(namespace)
        _need_write(caller, ns)
        if mount is not None:
            parse_digest(mount)
            if from_ is not None:
                source = _ns(from_)
                may_read = caller.token is not None and caller.token.allows(source, "read")
                size = the_hub.mount_blob(mount, source, may_read)
                if size is not None:
                    response.status_code = 201
                    response.headers.update({"Location": f"/v1/blobs/{namespace}/{mount}",
                                             "Docker-Content-Digest": mount})  # fmt: skip
                    return BlobStored(digest=mount, size=size, written=0)
        session = the_hub.upload_start(ns)
        response.headers.update(_session_headers(namespace, session.id, 0))
        if cfg.store_url.startswith("s3://"):
            response.headers["OCI-Chunk-Min-Length"] = str(1 << 20)  # each chunk is one staging object
        return UploadStarted(upload_id=session.id, location=_location(namespace, session.id))

    @app.get("/v1/blobs/{namespace}/uploads/{upload_id}", tags=["transfer"], status_code=204)
    def upload_status(caller: Caller, namespace: str, upload_id: str) -> Response:
        """How much of the session is staged: 204 with ``Range: 0-<last byte>`` and ``Upload-Offset``."""
        ns = _ns(namespace)
        _need_write(caller, ns)
        session = the_hub.upload_status(ns, upload_id)
        return Response(status_code=204, headers=_session_headers(namespace, upload_id, session.offset))

    @app.head("/v1/blobs/{namespace}/uploads/{upload_id}", tags=["transfer"], status_code=204)
    def upload_status_head(caller: Caller, namespace: str, upload_id: str) -> Response:
        """The same as ``GET``."""
        return upload_status(caller, namespace, upload_id)

    @app.patch("/v1/blobs/{namespace}/uploads/{upload_id}", tags=["transfer"], status_code=202)
    async def upload_chunk(caller: Caller, request: Request, namespace: str, upload_id: str) -> Response:
        """Append a chunk (``Content-Range: <start>-<end>``, inclusive; without it, at the staged
        offset). 202 with the new ``Range``; 416 with what is staged when ``start`` is not it."""
        ns = _ns(namespace)
        _need_write(caller, ns)
        with slots.hold():
            try:
                offset = await _append(request, ns, upload_id)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody reads it: the client keeps what was staged
        return Response(status_code=202, headers=_session_headers(namespace, upload_id, offset))

    @app.put("/v1/blobs/{namespace}/uploads/{upload_id}", tags=["transfer"], status_code=201)
    async def upload_finish(
        caller: Caller, request: Request, namespace: str, upload_id: str, digest: Annotated[str, Query()]
    ) -> JSONResponse:
        """Complete the session as ``digest`` (with the last chunk, optionally): 201 when all the
        staged bytes hash to it, else 400 ``DIGEST_INVALID`` and nothing is stored."""
        ns = _ns(namespace)
        _need_write(caller, ns)
        parse_digest(digest)
        with slots.hold():
            if _has_body(request):
                await _append(request, ns, upload_id)
            for attempt in range(BUSY_TRIES):
                try:
                    size, written = await run_in_threadpool(the_hub.upload_finish, ns, upload_id, digest)
                    break
                except LoraHubError as exc:
                    if not getattr(exc, "busy", False) or attempt + 1 == BUSY_TRIES:
                        raise
                    await asyncio.sleep(BUSY_WAIT_S)
        body = BlobStored(digest=digest, size=size, written=written).model_dump()
        headers = {"Location": f"/v1/blobs/{namespace}/{digest}", "Docker-Content-Digest": digest}
        return JSONResponse(body, status_code=201, headers=headers)

    @app.delete("/v1/blobs/{namespace}/uploads/{upload_id}", tags=["transfer"], status_code=204)
    def upload_abort(caller: Caller, namespace: str, upload_id: str) -> Response:
        """Abort the session: its staged bytes are removed."""
        ns = _ns(namespace)
        _need_write(caller, ns)
        the_hub.upload_abort(ns, upload_id)
        return Response(status_code=204)

    # --- jobs (lora_hub.core.jobs) ------------------------------------------------------------------
    # A job that names paths of the server's machine (base and adapter folders, outputs) is an
    # admin's. A job that names only registered things (``ServingHub.job_names``: a merge of a
    # registered base and stored adapters whose output is stored as a base, ``store_output``) is
    # also a write token's, when the token may read every adapter's namespace and write the
    # output name's namespace (``acme/merged`` for a write token of ``acme``; a name without a
    # namespace needs a token that writes there, i.e. ``*``). The same rule says who may see or
    # cancel a job, and which jobs a write token lists. Hub jobs (``lorahub hub import|export|sync``
    # through the server, run with the workers' own Hub token) are a write token's in the
    # namespace they write: the import's name, the exported adapter's, the synced one.

    def _is_admin(caller: Principal) -> bool:
        return caller.token is not None and caller.token.scope == "admin" and caller.token.namespace == "*"

    def _need_read_adapter(caller: Principal, name: str) -> None:
        caller.need(Ref.parse(name).adapter.namespace, "read", lambda: AdapterNotFoundError(name))

    def _may_run(caller: Principal, request: dict[str, Any]) -> None:
        """Raise unless ``caller`` may submit (see, cancel) a job of this request."""
        if _is_admin(caller):
            return
        names = the_hub.job_names(request) if caller.token is not None else None
        if names is None:
            caller.need_admin()
            return
        for adapter in names.adapters:
            _need_read_adapter(caller, adapter)
        _need_write(caller, names.writes)

    def _visible_job(caller: Principal, job_id: str) -> JobInfo:
        if not _is_admin(caller):
            caller.need_any()  # 401 before anything is looked up
        job = the_hub.job(job_id)
        try:
            _may_run(caller, job.request)
        except NotFoundError:
            raise JobNotFoundError(job_id) from None  # one of its namespaces is not the caller's to read
        return job

    @app.post("/v1/jobs", tags=["jobs"], status_code=201)
    def submit_job(caller: Caller, body: Annotated[dict[str, Any], Body()]) -> JobInfo:
        """Submit a merge, export or pipeline (a ``JobRequest``); joins an identical active job.
        On SQLite the server runs it in its own worker thread; on PostgreSQL `lorahub worker`s do."""
        if caller.token is None:
            caller.need_admin()  # 401 before the request is read
        _may_run(caller, body)
        return the_hub.submit_request(body)

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(
        caller: Caller, state: Annotated[str | None, Query()] = None, limit: Annotated[int, Query(ge=1)] = 50
    ) -> list[JobInfo]:
        """The newest jobs: every job for an admin, those it may run for a write token."""
        if _is_admin(caller):
            return the_hub.jobs(state=state, limit=limit)
        if caller.token is None or caller.token.scope == "read":
            caller.need_admin()
        # the newest `limit` of the caller's own: read more jobs until that many are found
        window = limit
        while True:
            batch = the_hub.jobs(state=state, limit=window)
            mine = []
            for job in batch:
                try:
                    _may_run(caller, job.request)
                except LoraHubError:
                    continue
                mine.append(job)
            if len(mine) >= limit or len(batch) < window or window >= MAX_JOBS_SCANNED:
                return mine[:limit]
            window = min(window * 4, MAX_JOBS_SCANNED)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def show_job(caller: Caller, job_id: str) -> JobInfo:
        return _visible_job(caller, job_id)

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    def cancel_job(caller: Caller, job_id: str) -> JobInfo:
        """Cancel a queued job; ask a running one to stop."""
        _visible_job(caller, job_id)
        return the_hub.cancel_job(job_id)

    return app


MAX_JOBS_SCANNED = 10_000  # a write token's job list looks at most this many of the newest jobs


class _BlobResponse(FileResponse):
    chunk_size = 1 << 20  # Starlette's 64 KiB costs a round of the event loop per 64 KiB


class _EarlyLimit:
    """Answer 413 from the request's headers, before any of its body is read (blobs up to
    ``LORAHUB_MAX_UPLOAD_BYTES``, anything else up to ``MAX_JSON_BODY``). Plain ASGI, so that
    request and response bodies stream through untouched."""

    def __init__(self, app: ASGIApp, *, blob_limit: int) -> None:
        self.app = app
        self.blob_limit = blob_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = self.blob_limit if scope["path"].startswith("/v1/blobs/") else MAX_JSON_BODY
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                exc = BodyTooLargeError(
                    f"the request body is {int(length):,} bytes; this server accepts at most {limit:,}",
                    hint="LORAHUB_MAX_UPLOAD_BYTES sets the limit for blobs",
                )
                await _error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _stream_into(request: Request, cm: contextlib.AbstractContextManager[Any], sink: Any) -> None:
    """Write the request body to ``sink`` (what ``cm`` was entered for, off the event loop) as
    it arrives, on the event loop, then leave ``cm`` off it: with the body's exception, if any
    (a client that went away), so that it keeps or discards what it staged."""
    try:
        async for chunk in request.stream():
            sink.write(chunk)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):  # a cancelled request still discards what it staged
            kept = await run_in_threadpool(cm.__exit__, type(exc), exc, exc.__traceback__)
        if not kept:
            raise
    else:
        await run_in_threadpool(cm.__exit__, None, None, None)


async def _enter(cm: contextlib.AbstractContextManager[Any]) -> Any:
    """``cm.__enter__()`` off the event loop, shielded: a request cancelled meanwhile must not
    leave it entered with nobody to leave it (its staged file, threads and buffers)."""
    with anyio.CancelScope(shield=True):
        return await run_in_threadpool(cm.__enter__)
