"""Every error lora-hub raises on purpose.

Each class also inherits the matching builtin (``ValueError``, ``LookupError``, ...), so callers
that do not know lora-hub can still catch it sensibly. Each message says what went wrong and
what to do next; the CLI prints it on one line and exits non-zero (``LORAHUB_DEBUG=1`` adds the
traceback).
"""

from __future__ import annotations

from collections.abc import Sequence


class LoraHubError(Exception):
    """Base of the hierarchy. ``hint`` is the next step for the user, if there is one."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


# --- input: names, references, arguments ---------------------------------------------------


class InvalidNameError(LoraHubError, ValueError):
    """A namespace, name or tag that does not follow the naming rules."""


class InvalidArgumentError(LoraHubError, ValueError):
    """An argument that cannot be used as given (a metric, a filter, a size...)."""


# --- lookups ---------------------------------------------------------------------------------


class NotFoundError(LoraHubError, LookupError):
    """Something named by the user does not exist."""


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


class InvalidAdapterError(LoraHubError, ValueError):
    """An adapter folder, config or weights file that cannot be accepted."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path


class SafetensorsFormatError(InvalidAdapterError):
    """A safetensors file that breaks the format (or our stricter reading of it)."""


class PickleRefusedError(InvalidAdapterError):
    """A pickle file: refused without ever being unpickled."""


class InvalidModelError(LoraHubError, ValueError):
    """A base model folder that cannot be read."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path


# --- storage and integrity ---------------------------------------------------------------------


class DestinationExistsError(LoraHubError, FileExistsError):
    """An output location that is not empty."""


class IntegrityError(LoraHubError, OSError):
    """Stored bytes that no longer match their digest, or a source that changed while read."""

    exit_code = 3


class StoreError(LoraHubError, OSError):
    """The blob store cannot be used (missing, unwritable, unknown URL scheme...)."""


class CatalogError(LoraHubError, RuntimeError):
    """The catalog database cannot be used (unreachable, schema too new, ...)."""


class ConflictError(LoraHubError, RuntimeError):
    """A change that conflicts with the catalog's current state."""


# --- compatibility, merging -----------------------------------------------------------------


class IncompatibleError(LoraHubError, ValueError):
    """An adapter that does not fit a base. ``problems`` lists every problem found."""

    exit_code = 1

    def __init__(self, message: str, *, problems: Sequence[str] = (), hint: str | None = None) -> None:
        full = message + ("".join(f"\n  - {p}" for p in problems) if problems else "")
        super().__init__(full, hint=hint)
        self.problems = list(problems)


class MergeError(LoraHubError, RuntimeError):
    """A merge that could not be carried out or failed its verification."""

    exit_code = 3
