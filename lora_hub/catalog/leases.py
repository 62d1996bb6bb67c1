"""Store leases: pushes and ``gc`` exclude each other through the catalog.

A readers-writer lock over the blob store, kept in two tables: any number of ``write`` leases
(a push storing blobs, until its version is recorded) or one ``gc`` lease. ``gc`` first takes a
``gc_wait`` lease, which lets running writers finish but makes new ones wait, so a steady stream
of pushes cannot starve it. A held lease is refreshed by a heartbeat thread; one that is not
refreshed expires after ``LEASE_S``, and one whose holder was a process on this machine that is no
longer running is dropped at once, so a killed process never blocks the others for long. Taking a
lease locks the single ``store_lock`` row, which serialises the check-and-insert across processes
and servers.

This replaces a file lock in the store, which only worked for processes sharing one machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from lora_hub._fs import pid_alive
from lora_hub.catalog.db import Database
from lora_hub.catalog.tables import StoreLeaseRow, StoreLockRow
from lora_hub.errors import ConflictError, LoraHubError

LEASE_S = 600
HEARTBEAT_S = 60.0
WAIT_S = 600.0
POLL_S = 0.2
_HOST = socket.gethostname()


def _holder() -> str:
    return f"{_HOST}:{os.getpid()}"[:200]


def _dead_here(holder: str) -> bool:
    """Whether ``holder`` was a process on this machine that is no longer running."""
    host, _, pid = holder.rpartition(":")
    return host == _HOST and pid.isdigit() and not pid_alive(int(pid))


class Lease:
    """A lease held, refreshed every ``HEARTBEAT_S`` by a thread until released."""

    def __init__(self, db: Database, lease_id: str) -> None:
        self.db, self.id = db, lease_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lorahub-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(LoraHubError):  # a missed beat only shortens the lease
                self.refresh()

    def refresh(self) -> None:
        with self.db.session(write=True, listed=False) as s:
            s.execute(update(StoreLeaseRow).where(StoreLeaseRow.id == self.id).values(expires_at=_expiry()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _expiry() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=LEASE_S)


def _live(s: Session) -> list[str]:
    """Kinds of the leases still held, after dropping the expired ones and those of processes on
    this machine that died; the lock row is held."""
    s.execute(select(StoreLockRow.id).where(StoreLockRow.id == 1).with_for_update())
    s.execute(delete(StoreLeaseRow).where(StoreLeaseRow.expires_at < datetime.now(UTC)))
    rows = list(s.execute(select(StoreLeaseRow.id, StoreLeaseRow.kind, StoreLeaseRow.holder)))
    dead = [lease_id for lease_id, _, holder in rows if _dead_here(holder)]
    if dead:
        s.execute(delete(StoreLeaseRow).where(StoreLeaseRow.id.in_(dead)))
    return [kind for lease_id, kind, _ in rows if lease_id not in dead]


class Leases:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _take(self, kind: str, blocked_by: set[str], what: str, wait_s: float) -> Lease:
        deadline = time.monotonic() + wait_s
        while True:
            with self.db.session(write=True, listed=False) as s:
                if not blocked_by & set(_live(s)):
                    lease_id = secrets.token_hex(16)
                    s.add(StoreLeaseRow(id=lease_id, kind=kind, holder=_holder(), expires_at=_expiry()))
                    return Lease(self.db, lease_id)
            if time.monotonic() > deadline:
                raise ConflictError(
                    f"{what} did not finish within {wait_s:.0f} s",
                    hint="try again later; the lease of a process that died elsewhere expires after "
                    f"{LEASE_S // 60} minutes",
                )
            time.sleep(POLL_S)

    def _release(self, lease: Lease) -> None:
        lease.stop()
        with self.db.session(write=True, listed=False) as s:
            s.execute(delete(StoreLeaseRow).where(StoreLeaseRow.id == lease.id))

    @contextlib.contextmanager
    def writing(self, *, wait_s: float = WAIT_S) -> Iterator[Lease]:
        """Held while blobs are stored and their version recorded; waits while ``gc`` runs."""
        lease = self._take("write", {"gc", "gc_wait"}, "a running `lorahub gc`", wait_s)
        try:
            yield lease
        finally:
            self._release(lease)

    @contextlib.contextmanager
    def collecting(self, *, wait_s: float = WAIT_S) -> Iterator[Lease]:
        """Held by ``gc``: announced first (new writers wait), then taken once no writer runs."""
        intent = self._take("gc_wait", {"gc", "gc_wait"}, "another `lorahub gc`", wait_s)
        try:
            lease = self._take("gc", {"write", "gc"}, "pushes in progress", wait_s)
        finally:
            self._release(intent)
        try:
            yield lease
        finally:
            self._release(lease)
