"""One catalog read shared by the requests that wait for it at the same time.

Every request reads the catalog generation once (its token's lookup and a listing's page are
kept by it). Under load, dozens of requests in one process want that read within the same
millisecond; they can share one query without losing anything, as long as the query they share
*started after each of them arrived*: then it sees every change committed before any of them
began, exactly as a read of its own would (a token revoked before a request arrives is refused by
that request).

So a request joins the read that has not started yet (there is at most one); that read starts
as soon as the one running, if any, has ended. A request waits for at most two reads, and the
catalog sees at most one generation query at a time per process, however many requests come.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool


class _LoopState:
    def __init__(self) -> None:
        self.waiting: asyncio.Future[int] | None = None  # the read that has not started yet
        self.runner: asyncio.Task[None] | None = None


class SharedRead:
    """``await shared()``: the value of ``read()`` (a blocking call, run in a worker thread),
    from a call that started after this one was made. Safe on any number of event loops (each
    has its own state); use from inside a loop only."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()

    async def __call__(self) -> int:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState()
        if state.waiting is None:
            state.waiting = loop.create_future()
            state.waiting.add_done_callback(_consume)
        if state.runner is None or state.runner.done():  # done: cancelled before it ever ran
            state.runner = loop.create_task(self._run(state))
        # shield: a request that goes away (client disconnected) must not cancel the others' read
        return await asyncio.shield(state.waiting)

    async def _run(self, state: _LoopState) -> None:
        future: asyncio.Future[int] | None = None
        try:
            while state.waiting is not None:
                # Taken off before the read starts: whoever comes now waits for the next read.
                future, state.waiting = state.waiting, None
                try:
                    value = await run_in_threadpool(self._read)
                except asyncio.CancelledError:
                    future.cancel()
                    raise
                except Exception as exc:  # handed to every waiter, each raises it as its own
                    future.set_exception(exc)
                else:
                    future.set_result(value)
        finally:
            state.runner = None
            if future is not None and not future.done():  # stopped by something not an Exception
                future.cancel()
            if state.waiting is not None:
                # Cancelled while requests had joined the next read: they must not wait forever.
                state.waiting.cancel()
                state.waiting = None


def _consume(future: asyncio.Future[int]) -> None:
    """Mark a failed read's exception as seen: its waiters raise it, and one nobody waited for
    (every request gone) is not an error to log."""
    if not future.cancelled():
        future.exception()
