"""``SharedRead``: requests waiting at the same time share one catalog read, and never one that
started before they arrived (a read that old could miss a revocation committed before them)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from lora_hub.errors import CatalogError
from lora_hub.service.shared import SharedRead

WAIT_S = 10


class _GatedReads:
    """A blocking read whose calls are numbered 1, 2, ...; each returns its number once the
    test opens its gate, and says when it has started."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.started: list[threading.Event] = [threading.Event() for _ in range(8)]
        self.gates: list[threading.Event] = [threading.Event() for _ in range(8)]
        self.count = 0
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.count += 1
            n = self.count
        self.started[n].set()
        assert self.gates[n].wait(WAIT_S), "the test never opened this read's gate"
        if n == self.fail_on:
            raise CatalogError("the catalog is away")
        return n

    async def wait_started(self, n: int) -> None:
        assert await asyncio.to_thread(self.started[n].wait, WAIT_S), f"read {n} never started"


async def _settle() -> None:
    """Let every ready task run up to its next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


def _run(main: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(main(), WAIT_S * 2))  # type: ignore[arg-type]


def test_callers_share_only_a_read_that_starts_after_they_came() -> None:
    reads = _GatedReads()
    shared = SharedRead(reads)

    async def main() -> None:
        first = asyncio.create_task(shared())
        await reads.wait_started(1)
        # These came while read 1 runs: its answer may predate them, so they wait for read 2.
        later = [asyncio.create_task(shared()) for _ in range(20)]
        await _settle()
        assert reads.count == 1 and not any(t.done() for t in later)
        reads.gates[1].set()
        assert await first == 1
        await reads.wait_started(2)
        assert not any(t.done() for t in later)
        reads.gates[2].set()
        assert await asyncio.gather(*later) == [2] * 20
        assert reads.count == 2  # 21 callers, two reads

        reads.gates[3].set()  # nothing running: a new caller starts a read of its own at once
        assert await shared() == 3

    _run(main)


def test_a_failed_read_fails_its_callers_and_the_next_caller_reads_again() -> None:
    reads = _GatedReads(fail_on=1)
    shared = SharedRead(reads)

    async def main() -> None:
        callers = [asyncio.create_task(shared()) for _ in range(3)]
        await reads.wait_started(1)
        reads.gates[1].set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, CatalogError) for r in results), results
        reads.gates[2].set()
        assert await shared() == 2

    _run(main)


def test_a_caller_that_goes_away_does_not_cancel_the_others_read() -> None:
    reads = _GatedReads()
    shared = SharedRead(reads)

    async def main() -> None:
        gone, stays = asyncio.create_task(shared()), asyncio.create_task(shared())
        await reads.wait_started(1)
        gone.cancel()
        await _settle()
        assert gone.cancelled() and not stays.done()
        reads.gates[1].set()
        assert await stays == 1
        assert reads.count == 1

    _run(main)


def test_each_event_loop_has_its_own_reads() -> None:
    """A test client starts an event loop per use; an app's reads must not outlive one."""
    reads = _GatedReads()
    for gate in reads.gates:
        gate.set()
    shared = SharedRead(reads)
    assert [asyncio.run(shared()) for _ in range(2)] == [1, 2]


def test_a_read_cancelled_before_it_ran_does_not_stall_the_next_callers() -> None:
    reads = _GatedReads()
    for gate in reads.gates:
        gate.set()
    shared = SharedRead(reads)

    async def main() -> None:
        first = asyncio.create_task(shared())
        await asyncio.sleep(0)  # the caller has made the read's task; it has not run yet
        state = next(iter(shared._loops.values()))
        assert state.runner is not None
        state.runner.cancel()  # e.g. a shutdown helper cancelling every task of the loop
        await asyncio.sleep(0)
        # The next caller starts a read again, for itself and for the one still waiting.
        assert await asyncio.wait_for(shared(), WAIT_S) == 1
        assert await asyncio.wait_for(first, WAIT_S) == 1

    _run(main)
