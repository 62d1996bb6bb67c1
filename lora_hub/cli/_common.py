"""What every command shares: the Hub, option aliases, output, progress, and the error table."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
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

from lora_hub.api import Hub
from lora_hub.errors import LoraHubError
from lora_hub.progress import Advance

out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:  # piped output: never fold a table row into several lines
    out = Console(highlight=False, soft_wrap=True, width=1000)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON (see README: JSON output).")]
RefArg = Annotated[str, typer.Argument(help="Adapter reference: [namespace/]name[:version|:tag].", show_default=False)]

P = ParamSpec("P")
R = TypeVar("R")


def debug_enabled() -> bool:
    return os.environ.get("LORAHUB_DEBUG", "") not in ("", "0", "false", "no")


def hub() -> Hub:
    return Hub()


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Known errors become one line on stderr and a non-zero exit; ``LORAHUB_DEBUG=1`` adds the
    traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except LoraHubError as exc:
            _report(exc, f"error: {exc.message}", exc.hint, exc.exit_code)
        except KeyboardInterrupt:
            _report(None, "interrupted", None, 130)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            _report(exc, f"error: {exc.strerror or exc}{where}", None, 2)
        except Exception as exc:
            _report(
                exc,
                f"internal error: {type(exc).__name__}: {exc}",
                "this is a bug in lora-hub; rerun with LORAHUB_DEBUG=1 and report the traceback",
                70,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


def _report(exc: BaseException | None, message: str, hint: str | None, code: int) -> None:
    if exc is not None and debug_enabled():
        err.print("".join(traceback.format_exception(exc)), markup=False)
    err.print(message if not hint else f"{message}\n  hint: {hint}", markup=False)
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class RichProgress:
    """``lora_hub.progress.Progress`` drawn with rich on stderr; silent when stderr is no terminal."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and err.is_terminal

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "B") -> Iterator[Advance]:
        if not self.enabled:
            yield lambda n: None
            return
        columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
        columns += (
            [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
            if unit == "B"
            else [MofNCompleteColumn(), TimeRemainingColumn()]
        )
        with Progress(*columns, console=err, transient=True) as bar:
            task_id = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task_id, n)
