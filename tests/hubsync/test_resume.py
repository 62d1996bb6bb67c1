"""Interrupted Hub downloads resume: within one import (a Range request after a lost connection) and across
imports (the received prefix is kept, hashed again, and only the rest is fetched). Expected bytes are what was
committed to the emulator, hashed with ``hashlib``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lora_hub import Hub
from lora_hub.errors import HubError, IntegrityError
from lora_hub.hubsync import client as hub_client
from tests.helpers import store_of, tree_bytes
from tests.hubsim import HubSim
from tests.hubsync.helpers import adapter_files, publish

REPO = "alice/sql-lora"
WEIGHTS = "adapter_model.safetensors"


def _import(hub: Hub, hf_hub: HubSim):  # type: ignore[no-untyped-def]
    return hub.hub_import(REPO, "acme/sql", endpoint=hf_hub.url, token=hf_hub.read_token)


def _weights_gets(hf_hub: HubSim) -> list[tuple[int, str | None, int]]:
    return [
        (e.status, e.range, e.bytes_out)
        for e in hf_hub.requests(kind="resolve", method="GET")
        if e.path.endswith(WEIGHTS)
    ]


def _stored(hub: Hub) -> list[str]:
    return [d for d, _ in store_of(hub).digests()]


def _parts(hub: Hub) -> list[Path]:
    return sorted((hub.settings.home / "hub-staging" / "resume").glob("*.part"))


@pytest.fixture
def files(hf_hub: HubSim, tmp_path: Path) -> dict[str, bytes]:
    files = adapter_files(tmp_path)
    publish(hf_hub, REPO, files)
    hf_hub.clear_log()
    return files


def test_a_lost_connection_is_resumed_in_the_same_import(hub: Hub, hf_hub: HubSim, files: dict[str, bytes]) -> None:
    size = len(files[WEIGHTS])
    hf_hub.cut_download(after_bytes=size // 3, path=WEIGHTS)
    result = _import(hub, hf_hub)
    assert result.created
    assert tree_bytes(Path(hub.pull("acme/sql", hub.settings.home.parent / "out").path))[WEIGHTS] == files[WEIGHTS]
    assert _weights_gets(hf_hub) == [(200, None, size // 3), (206, f"bytes={size // 3}-", size - size // 3)]
    assert _parts(hub) == []


def test_an_import_that_gives_up_keeps_what_it_received_for_the_next(
    hub: Hub, hf_hub: HubSim, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    size, cut = len(files[WEIGHTS]), len(files[WEIGHTS]) // 2
    monkeypatch.setattr(hub_client, "RESUME_ATTEMPTS", 1)
    hf_hub.cut_download(after_bytes=cut, path=WEIGHTS)
    with pytest.raises(HubError, match=r"stopped at .* bytes.*nothing was stored") as info:
        _import(hub, hf_hub)
    assert "resumes" in (info.value.hint or "")
    assert _stored(hub) == []
    (part,) = _parts(hub)
    assert part.name == hashlib.sha256(files[WEIGHTS]).hexdigest() + ".part"
    assert part.read_bytes() == files[WEIGHTS][:cut]

    hf_hub.clear_log()
    assert _import(hub, hf_hub).created
    assert _weights_gets(hf_hub) == [(206, f"bytes={cut}-", size - cut)]  # only the rest
    assert tree_bytes(Path(hub.pull("acme/sql", hub.settings.home.parent / "out").path))[WEIGHTS] == files[WEIGHTS]
    assert _parts(hub) == []


def test_a_damaged_kept_part_is_refused_then_fetched_whole(
    hub: Hub, hf_hub: HubSim, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_client, "RESUME_ATTEMPTS", 1)
    hf_hub.cut_download(after_bytes=100, path=WEIGHTS)
    with pytest.raises(HubError):
        _import(hub, hf_hub)
    (part,) = _parts(hub)
    part.write_bytes(b"\0" * 100)  # the kept bytes are not the file's (a crash, a bad disk)
    with pytest.raises(IntegrityError, match="does not match its hash"):
        _import(hub, hf_hub)
    assert _parts(hub) == []  # a part that failed the check is not resumed again
    assert _import(hub, hf_hub).created


def test_gc_removes_kept_parts(
    hub: Hub, hf_hub: HubSim, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_client, "RESUME_ATTEMPTS", 1)
    hf_hub.cut_download(after_bytes=100, path=WEIGHTS)
    with pytest.raises(HubError):
        _import(hub, hf_hub)
    assert len(_parts(hub)) == 1
    assert hub.gc(dry_run=True).temp_files_removed >= 1 and len(_parts(hub)) == 1
    hub.gc()
    assert _parts(hub) == []


def test_a_small_file_cut_mid_download_is_fetched_again(hub: Hub, hf_hub: HubSim, files: dict[str, bytes]) -> None:
    hf_hub.cut_download(after_bytes=10, path="adapter_config.json")
    assert _import(hub, hf_hub).created
    gets = [e.status for e in hf_hub.requests(kind="resolve", method="GET") if e.path.endswith("adapter_config.json")]
    assert gets == [200, 200]


def test_a_sha256_that_is_not_one_is_refused_before_it_names_a_file() -> None:
    good = hashlib.sha256(b"x").hexdigest()
    assert hub_client._lfs_sha("alice/r", good.upper()) == good and hub_client._lfs_sha("alice/r", None) is None
    for bad in ("../../etc/passwd", good[:-1], good + "0", "g" * 64):
        with pytest.raises(HubError, match="not a sha256"):
            hub_client._lfs_sha("alice/r", bad)
