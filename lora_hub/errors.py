"""Every error lora-hub raises on purpose.

Each class also inherits the matching builtin (``ValueError``, ``LookupError``, ...), so callers
that do not know lora-hub can still catch it sensibly. Each message says what went wrong and
what to do next; the CLI prints it on one line and exits non-zero (``LORAHUB_DEBUG=1`` adds the
traceback). Each class carries the process exit code the CLI uses and the HTTP status a service
answers with, so that both front ends map errors from the same table: the class itself.

=========================  ====  ====  ============================================================
class                      exit  HTTP  meaning
=========================  ====  ====  ============================================================
IncompatibleError          1     422   an adapter does not fit a base (every problem listed)
(most input errors)        2     400   a name, argument, file or folder that cannot be used
NotFoundError              2     404   something named does not exist
DestinationExistsError     2     409   an output that may not be replaced as asked
ConflictError              2     409   a change that conflicts with the catalog
IntegrityError, MergeError 3     500   stored bytes that do not match, a merge that failed its check
NotSupportedError          2     501   a feature this installation does not offer
UnauthorizedError          2     401   no usable token for a lorahub server (sent with WWW-Authenticate)
PermissionDeniedError      2     403   a token that may read a namespace but not change it
BodyTooLargeError          2     413   an upload over the server's limit
DigestMismatchError        2     400   uploaded bytes that do not match their digest (nothing stored)
MissingBlobsError          2     409   a manifest naming blobs the server does not hold
ServerError                3     502   a lorahub server that cannot be reached or read
HubError, HubAuthError     2     502   the Hugging Face Hub: unreachable, offline mode, 429; 401/403
HubNotFoundError           2     404   a Hub repo, revision or file that does not exist (or is hidden)
HubConflictError           2     409   a Hub branch that kept moving during an export (412 every try)
=========================  ====  ====  ============================================================
"""

from __future__ import annotations

from collections.abc import Sequence


class LoraHubError(Exception):
    """Base of the hierarchy. ``hint`` is the next step for the user, if there is one."""

    exit_code: int = 2
    http_status: int = 400
    #: A stable machine-readable name, e.g. for ``--json`` errors and HTTP error bodies.
    code: str = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def as_dict(self) -> dict[str, object]:
        """``{"code", "message", "hint"}``: what ``--json`` prints under ``"error"``."""
        return {"code": self.code, "message": self.message, "hint": self.hint}


# --- input: names, references, arguments ---------------------------------------------------


class InvalidNameError(LoraHubError, ValueError):
    """A namespace, name or tag that does not follow the naming rules."""

    code = "invalid_name"


class InvalidArgumentError(LoraHubError, ValueError):
    """An argument that cannot be used as given (a metric, a filter, a size...)."""

    code = "invalid_argument"


class SettingsError(LoraHubError, ValueError):
    """An environment variable or setting that cannot be used (``LORAHUB_HOME``, a database URL...)."""

    code = "invalid_setting"


class NotSupportedError(LoraHubError, RuntimeError):
    """A feature that this installation or configuration does not offer (yet)."""

    http_status = 501
    code = "not_supported"


# --- lookups ---------------------------------------------------------------------------------


class NotFoundError(LoraHubError, LookupError):
    """Something named by the user does not exist."""

    http_status = 404
    code = "not_found"


class AdapterNotFoundError(NotFoundError):
    def __init__(self, name: str, *, similar: Sequence[str] = ()) -> None:
        hint = f"did you mean {', '.join(similar)}?" if similar else "run `lorahub list` to see what exists"
        super().__init__(f"no adapter named {name!r}", hint=hint)
        self.name = name


class VersionNotFoundError(NotFoundError):
    def __init__(self, name: str, selector: str, *, versions: Sequence[int], tags: Sequence[str] = ()) -> None:
        have = ", ".join(str(v) for v in versions) if versions else "none"
        tag_text = f"; tags: {', '.join(tags)}" if tags else ""
        super().__init__(
            f"{name} has no version or tag {selector!r}",
            hint=f"versions that exist: {have}{tag_text}",
        )
        self.name = name
        self.selector = selector
        self.versions = list(versions)


class BaseNotFoundError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"no base model named {name!r}",
            hint="register it with `lorahub base add DIR --name NAME`, or pass a model folder",
        )
        self.name = name


# --- files and formats -----------------------------------------------------------------------


class PathError(LoraHubError, ValueError):
    """An error about a file or folder: the message starts with its path."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path


class InvalidAdapterError(PathError):
    """An adapter folder, config or weights file that cannot be accepted."""

    code = "invalid_adapter"


class SafetensorsFormatError(InvalidAdapterError):
    """A safetensors file that breaks the format (or our stricter reading of it)."""

    code = "invalid_safetensors"


class PickleRefusedError(InvalidAdapterError):
    """A pickle file: refused without ever being unpickled."""

    code = "pickle_refused"


class InvalidModelError(PathError):
    """A base model folder that cannot be read."""

    code = "invalid_model"


# --- storage and integrity ---------------------------------------------------------------------


class DestinationExistsError(LoraHubError, FileExistsError):
    """An output location that is not empty and may not be replaced as asked."""

    http_status = 409
    code = "destination_exists"


class ProtectedPathError(LoraHubError, PermissionError):
    """An output that is, holds or lies inside something lora-hub must not overwrite: its home,
    its blob store or catalog, a registered base's folder, or one of the command's inputs."""

    http_status = 409
    code = "protected_path"


class IntegrityError(LoraHubError, OSError):
    """Stored bytes that no longer match their digest, or a source that changed while read."""

    exit_code = 3
    http_status = 500
    code = "integrity"


class StoreError(LoraHubError, OSError):
    """The blob store cannot be used (missing, unwritable, full, unknown URL scheme...)."""

    http_status = 503
    code = "store"


class CatalogError(LoraHubError, RuntimeError):
    """The catalog database cannot be used (unreachable, schema too new, ...)."""

    http_status = 503
    code = "catalog"


class ConflictError(LoraHubError, RuntimeError):
    """A change that conflicts with the catalog's current state."""

    http_status = 409
    code = "conflict"


# --- compatibility, merging -----------------------------------------------------------------


class IncompatibleError(LoraHubError, ValueError):
    """An adapter that does not fit a base. ``problems`` lists every problem found."""

    exit_code = 1
    http_status = 422
    code = "incompatible"

    def __init__(self, message: str, *, problems: Sequence[str] = (), hint: str | None = None) -> None:
        full = message + ("".join(f"\n  - {p}" for p in problems) if problems else "")
        super().__init__(full, hint=hint)
        self.problems = list(problems)


class MergeError(LoraHubError, RuntimeError):
    """A merge that could not be carried out or failed its verification."""

    exit_code = 3
    http_status = 500
    code = "merge"


class ExportError(LoraHubError, RuntimeError):
    """An export that could not be carried out on this machine, or whose artifact failed its
    parity check against the eager model."""

    exit_code = 3
    http_status = 500
    code = "export"


# --- the service and its clients ------------------------------------------------------------


class UnauthorizedError(LoraHubError, PermissionError):
    """A request to a lorahub server without a usable token (none, unknown, expired or revoked)."""

    http_status = 401
    code = "unauthorized"


class PermissionDeniedError(LoraHubError, PermissionError):
    """A token that may read a namespace but not do what was asked there (write, admin)."""

    http_status = 403
    code = "denied"


class BodyTooLargeError(LoraHubError, ValueError):
    """An upload larger than the server accepts (``LORAHUB_MAX_UPLOAD_BYTES``)."""

    http_status = 413
    code = "size_invalid"


class DigestMismatchError(LoraHubError, ValueError):
    """Uploaded bytes that do not hash to the digest they were sent as: nothing was stored."""

    http_status = 400
    code = "digest_invalid"


class MissingBlobsError(ConflictError):
    """A manifest naming blobs the store does not hold; ``missing`` lists their digests."""

    code = "manifest_blob_unknown"

    def __init__(self, message: str, *, missing: Sequence[str] = (), hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.missing = list(missing)


class UploadOffsetError(ConflictError):
    """A chunk of an upload session that does not start where the staged bytes end (HTTP 416,
    with a ``Range`` header of what is staged); or a session that another request is writing
    (``busy``), which the caller may try again."""

    http_status = 416
    code = "blob_upload_invalid"

    def __init__(self, message: str, *, offset: int, busy: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.offset = offset
        self.busy = busy

    @property
    def http_headers(self) -> dict[str, str]:
        """What the server has: ``Range: 0-<last byte>`` (``0-0`` when nothing is staged, as OCI
        registries answer) and the exact count in ``Upload-Offset``."""
        return {"Range": f"0-{max(self.offset - 1, 0)}", "Upload-Offset": str(self.offset)}


class TooManyRequestsError(LoraHubError, RuntimeError):
    """A server process that already takes as many uploads as it may (``LORAHUB_MAX_UPLOADS``):
    HTTP 429, try again after ``retry_after_s`` (the ``Retry-After`` header)."""

    http_status = 429
    code = "toomanyrequests"

    def __init__(self, message: str, *, retry_after_s: int = 1, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s

    @property
    def http_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ServerError(LoraHubError, ConnectionError):
    """A lorahub server that cannot be reached, or that answered something this client cannot read."""

    exit_code = 3
    http_status = 502
    code = "server"


# --- the Hugging Face Hub ------------------------------------------------------------------------


class HubError(LoraHubError, OSError):
    """The Hugging Face Hub refused or failed a request (``lora_hub.hubsync``): unreachable,
    offline mode, rate limited, or an answer lora-hub cannot use."""

    http_status = 502
    code = "hub"


class HubAuthError(HubError, PermissionError):
    """The Hub answered 401 or 403: no token, a token it does not accept, or one that may not write there."""

    code = "hub_auth"


class HubNotFoundError(NotFoundError):
    """A repository, revision or file that the Hub does not have (or, for a private repository,
    does not show to this token)."""

    code = "hub_not_found"


class HubConflictError(ConflictError):
    """The branch kept moving while an export tried to commit on top of it (412 after every retry)."""

    code = "hub_conflict"


# --- jobs ------------------------------------------------------------------------------------------


class JobNotFoundError(NotFoundError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}", hint="run `lorahub jobs list` to see the jobs")
        self.job_id = job_id


class JobCancelledError(LoraHubError, RuntimeError):
    """The job was cancelled while it ran; nothing it was writing was kept."""

    exit_code = 130
    http_status = 409
    code = "cancelled"


class JobFailedError(LoraHubError, RuntimeError):
    """A job failed on its worker for a reason that is not one of lora-hub's own errors."""

    exit_code = 3
    http_status = 500
    code = "job_failed"
