"""Store leases (lora_hub.catalog.leases): pushes and gc exclude each other through the catalog,
on SQLite and Postgres, and a dead holder never blocks for long."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from lora_hub.catalog import Catalog
from lora_hub.catalog.tables import StoreLeaseRow
from lora_hub.errors import ConflictError


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    c = Catalog(catalog_url)
    yield c
    c.close()


def kinds(catalog: Catalog) -> list[str]:
    with catalog.db.session() as s:
        return sorted(s.scalars(select(StoreLeaseRow.kind)))


def test_writers_share_and_gc_excludes_them(catalog: Catalog) -> None:
    with catalog.leases.writing(), catalog.leases.writing():
        assert kinds(catalog) == ["write", "write"]
        with pytest.raises(ConflictError, match="pushes in progress"), catalog.leases.collecting(wait_s=0.3):
            pass
        assert kinds(catalog) == ["write", "write"]  # the failed gc left no intent behind
    with catalog.leases.collecting(wait_s=0.3):
        assert kinds(catalog) == ["gc"]
        with pytest.raises(ConflictError, match="running `lorahub gc`"), catalog.leases.writing(wait_s=0.3):
            pass
        with pytest.raises(ConflictError, match="another `lorahub gc`"), catalog.leases.collecting(wait_s=0.3):
            pass
    assert kinds(catalog) == []


def test_a_waiting_gc_holds_new_writers_back(catalog: Catalog) -> None:
    """gc announces itself first, so that a stream of pushes cannot starve it."""
    with catalog.db.session(write=True) as s:
        s.add(StoreLeaseRow(id="x" * 32, kind="gc_wait", holder=f"elsewhere:{os.getpid()}",
                            expires_at=datetime.now(UTC) + timedelta(minutes=5)))  # fmt: skip
    with pytest.raises(ConflictError), catalog.leases.writing(wait_s=0.3):
        pass


def test_expired_and_dead_holders_are_ignored(catalog: Catalog) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process of this machine that has exited
    with catalog.db.session(write=True) as s:
        s.add(StoreLeaseRow(id="a" * 32, kind="write", holder=f"{socket.gethostname()}:{dead_pid}",
                            expires_at=datetime.now(UTC) + timedelta(minutes=5)))  # fmt: skip
        s.add(StoreLeaseRow(id="b" * 32, kind="write", holder="another-host:1",
                            expires_at=datetime.now(UTC) - timedelta(seconds=1)))  # fmt: skip
    with catalog.leases.collecting(wait_s=0.3):
        assert kinds(catalog) == ["gc"]
    # a live holder on another machine is waited for until its lease expires
    with catalog.db.session(write=True) as s:
        s.add(StoreLeaseRow(id="c" * 32, kind="write", holder="another-host:1",
                            expires_at=datetime.now(UTC) + timedelta(minutes=5)))  # fmt: skip
    with pytest.raises(ConflictError), catalog.leases.collecting(wait_s=0.3):
        pass
    with catalog.db.session(write=True) as s:
        s.execute(update(StoreLeaseRow).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    with catalog.leases.collecting(wait_s=0.3):
        pass


def test_a_held_lease_is_refreshed(catalog: Catalog) -> None:
    with catalog.leases.writing() as lease:
        with catalog.db.session(write=True) as s:
            s.execute(update(StoreLeaseRow).values(expires_at=datetime.now(UTC) + timedelta(seconds=5)))
        lease.refresh()
        with catalog.db.session() as s:
            expires = s.scalar(select(StoreLeaseRow.expires_at))
        assert expires is not None
        expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
        assert expires > datetime.now(UTC) + timedelta(minutes=5)
