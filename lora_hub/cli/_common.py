"""What every command shares: the Hub, option aliases, output, progress, and the error table."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lora_hub.api import HubAPI, open_hub
from lora_hub.errors import InvalidArgumentError, LoraHubError
from lora_hub.progress import Advance
from lora_hub.types import human_bytes


def _plain_argument_help() -> None:
    """Show arguments as their metavar alone (``REF``, ``[REF]``, ``ADAPTER...``), as options are,
    instead of typer's ``{REF}`` in the usage line and ``REF <str>`` in the list. Typer has no
    setting for it, so its two display methods are replaced for this process."""
    from typer.core import TyperArgument

    def usage(self: TyperArgument) -> str:
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    TyperArgument._usage_display_name = usage  # type: ignore[method-assign]
    TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]


_plain_argument_help()
out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:  # piped output: never fold a table row into several lines
    out = Console(highlight=False, soft_wrap=True, width=1000)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON (see README: JSON output).")]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", "-f", help="Replace the output folder if lora-hub wrote it (an earlier pull or merge)."),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace the output folder whatever it holds (its contents are deleted).")
]
RefArg = Annotated[
    str, typer.Argument(metavar="REF", help="Adapter reference: [namespace/]name[:version|:tag].", show_default=False)
]

P = ParamSpec("P")
R = TypeVar("R")


def debug_enabled() -> bool:
    return os.environ.get("LORAHUB_DEBUG", "") not in ("", "0", "false", "no")


_OPENED: list[HubAPI] = []


def hub() -> HubAPI:
    """The ``HubAPI`` of this command (``open_hub``), closed when the command returns."""
    opened = open_hub()
    _OPENED.append(opened)
    return opened


def _close_hubs() -> None:
    while _OPENED:
        _OPENED.pop().close()


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Known errors become one line on stderr and a non-zero exit (under ``--json``, a JSON object
    ``{"error": {"code", "message", "hint"}}`` on stdout, with the same exit code);
    ``LORAHUB_DEBUG=1`` adds the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("json"))
        try:
            try:
                return fn(*args, **kwargs)
            finally:
                _close_hubs()
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except LoraHubError as exc:
            _report(exc, exc.code, exc.message, exc.hint, exc.exit_code, as_json)
        except KeyboardInterrupt:
            _report(None, "interrupted", "interrupted", None, 130, as_json)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            _report(exc, "os_error", f"{exc.strerror or exc}{where}", _os_hint(exc), 2, as_json)
        except Exception as exc:
            _report(
                exc,
                "internal",
                f"internal error: {type(exc).__name__}: {exc}",
                "this is a bug in lora-hub; rerun with LORAHUB_DEBUG=1 and report the traceback",
                70,
                as_json,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


def _os_hint(exc: OSError) -> str | None:
    return {
        errno.ENOSPC: "the disk is full: free some space, or choose another folder",
        errno.EDQUOT: "the disk quota is used up: free some space, or choose another folder",
        errno.EROFS: "that file system is read-only: choose another folder",
        errno.EACCES: "permission denied: check the owner and mode of that path",
        errno.EPERM: "permission denied: check the owner and mode of that path",
    }.get(exc.errno or 0)


def _report(
    exc: BaseException | None, code: str, message: str, hint: str | None, exit_code: int, as_json: bool
) -> None:
    if exc is not None and debug_enabled():
        err.print(clean("".join(traceback.format_exception(exc))), markup=False)
    if as_json:
        sys.stdout.write(json.dumps({"error": {"code": code, "message": message, "hint": hint}}, indent=2) + "\n")
    else:
        text = message if code == "interrupted" or message.startswith("internal error") else f"error: {message}"
        err.print(clean(text if not hint else f"{text}\n  hint: {hint}"), markup=False)
    raise typer.Exit(exit_code)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """``text`` safe for a terminal: control characters (an escape sequence in a description or a
    file name pushed by someone else) shown as ``\\xNN`` instead of acted on; newlines kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def say(text: str = "") -> None:
    """Print one line (or a few) of human output on stdout, escaped by ``clean``."""
    out.print(clean(text), markup=False)


def warn(text: str) -> None:
    err.print(clean(f"warning: {text}"), markup=False)


def parse_metric_args(items: Sequence[str]) -> dict[str, float]:
    """``["accuracy=0.81", "bleu=31.2"]`` -> ``{"accuracy": 0.81, "bleu": 31.2}``. A metric given
    twice is refused rather than silently taking the last value; names and values are checked by
    the core."""
    parsed: dict[str, float] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw:
            raise InvalidArgumentError(f"metric {item[:100]!r} is not KEY=VALUE", hint="e.g. --metric accuracy=0.81")
        if key in parsed:
            raise InvalidArgumentError(f"metric {key[:100]} is given twice", hint="give each metric once")
        try:
            parsed[key] = float(raw)
        except ValueError:
            raise InvalidArgumentError(f"metric {key[:100]}: {raw[:40]!r} is not a number") from None
    return parsed


def print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class RichProgress:
    """``lora_hub.progress.Progress`` drawn with rich on stderr when stderr is a terminal; as plain
    lines on stderr (at most one every few seconds) when ``LORAHUB_PROGRESS=1`` asks for them in a
    log or CI; otherwise silent."""

    def __init__(self, enabled: bool = True) -> None:
        self.bars = enabled and err.is_terminal
        self.lines = enabled and not self.bars and os.environ.get("LORAHUB_PROGRESS", "") not in ("", "0", "no")

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "B") -> Iterator[Advance]:
        if self.lines:
            with _line_progress(description, total, unit) as advance:
                yield advance
            return
        if not self.bars:
            yield lambda n: None
            return
        columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
        columns += (
            [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
            if unit == "B"
            else [MofNCompleteColumn(), TimeRemainingColumn()]
        )
        with Progress(*columns, console=err, transient=True) as bar:
            task_id = bar.add_task(clean(description), total=total)
            yield lambda n: bar.advance(task_id, n)


LINE_EVERY_S = 5.0


@contextlib.contextmanager
def _line_progress(description: str, total: int | None, unit: str) -> Iterator[Advance]:
    started = last = time.monotonic()
    done = 0

    def show(n: int) -> str:
        amount = human_bytes(n) if unit == "B" else f"{n:,}"
        of = f" of {human_bytes(total) if unit == 'B' else f'{total:,}'}" if total else ""
        pct = f" ({100 * n / total:.0f}%)" if total else ""
        return f"{clean(description)}: {amount}{of}{pct}, {time.monotonic() - started:.1f} s"

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= LINE_EVERY_S:
            last = now
            err.print(show(done), markup=False)

    yield advance
    if time.monotonic() - started >= LINE_EVERY_S:  # a short step needs no closing line
        err.print(show(done) + ", done", markup=False)
