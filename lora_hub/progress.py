"""How the core reports progress on long work, without knowing who displays it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

Advance = Callable[[int], None]


class Progress(Protocol):
    def task(self, description: str, total: int | None, unit: str = "B") -> contextlib.AbstractContextManager[Advance]:
        """A unit of long work; the context yields ``advance(n)``, to call as ``n`` units finish."""
        ...


class NoProgress:
    """The default: report nothing."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "B") -> Iterator[Advance]:
        yield lambda n: None
