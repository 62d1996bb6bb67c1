"""Exports recorded by key (``lora_hub.core.exporting``): the same export again is served from its
record after its artifact's digests are checked, anywhere (copied); listed with the base; the
record follows the catalog on SQLite and Postgres."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from lora_hub import Hub
from lora_hub.errors import DestinationExistsError
from lora_hub.export import run as export_run
from tests.export.models import Sources

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")


def spy_exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Formats the exporter actually ran (planning still runs every time)."""
    calls: list[str] = []
    real = export_run.execute

    def spy(plan: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(plan.format)
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(export_run, "execute", spy)
    return calls


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_export_is_served_from_its_record(
    hub: Hub, sources: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.base_add(sources("llama").merged, "acme/llama-merged")
    calls = spy_exports(monkeypatch)
    first = hub.export("acme/llama-merged", tmp_path / "ts", "torchscript")
    assert not first.reused and calls == ["torchscript"]
    key = first.record.plan.key
    assert key is not None

    again = hub.export("acme/llama-merged", tmp_path / "ts", "torchscript")
    assert again.reused and calls == ["torchscript"]  # not run again
    assert again.record.plan.key == key and again.path == first.path

    # elsewhere: copied from the recorded folder, every file with its recorded digest
    copied = hub.export("acme/llama-merged", tmp_path / "elsewhere", "torchscript")
    assert copied.reused and calls == ["torchscript"]
    for artifact in first.record.artifacts:
        assert sha256(tmp_path / "elsewhere" / artifact.path) == artifact.digest
    assert json.loads((tmp_path / "elsewhere" / "lorahub_export.json").read_text())["plan"]["key"] == key

    # the folder, by its content fingerprint, is the same source: the same key
    by_folder = hub.export(sources("llama").merged, tmp_path / "ts", "torchscript")
    assert by_folder.reused and calls == ["torchscript"]

    # another option is another key
    other = hub.export("acme/llama-merged", tmp_path / "ts-short", "torchscript", max_seq=32)
    assert not other.reused and other.record.plan.key != key and calls == ["torchscript", "torchscript"]

    # --recompute exports again, into a folder lora-hub wrote (force)
    redone = hub.export("acme/llama-merged", tmp_path / "ts", "torchscript", recompute=True, force=True)
    assert not redone.reused and redone.record.plan.key == key and len(calls) == 3


def test_a_changed_or_missing_artifact_is_exported_again(
    hub: Hub, sources: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.base_add(sources("llama").merged, "acme/llama-merged")
    calls = spy_exports(monkeypatch)
    first = hub.export("acme/llama-merged", tmp_path / "ts", "torchscript")
    artifact = tmp_path / "ts" / first.record.artifacts[0].path
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    artifact.write_bytes(bytes(data))
    # the changed folder is not served, and not replaced without being asked
    with pytest.raises(DestinationExistsError, match="earlier lora-hub export"):
        hub.export("acme/llama-merged", tmp_path / "ts", "torchscript")
    assert calls == ["torchscript"]
    # to another folder: exported again (the record's folder no longer holds it)
    fresh = hub.export("acme/llama-merged", tmp_path / "ts2", "torchscript")
    assert not fresh.reused and calls == ["torchscript", "torchscript"]
    # the record now points at the good copy
    import shutil

    shutil.rmtree(tmp_path / "ts")
    served = hub.export("acme/llama-merged", tmp_path / "ts", "torchscript")
    assert served.reused and len(calls) == 2
    # (a TorchScript archive is not byte-for-byte reproducible: the digests are the new export's)
    assert served.record.plan.key == first.record.plan.key
    for artifact in fresh.record.artifacts:
        assert sha256(tmp_path / "ts" / artifact.path) == artifact.digest
    # the recorded folder gone too: exported again
    shutil.rmtree(tmp_path / "ts2")
    shutil.rmtree(tmp_path / "ts")
    assert not hub.export("acme/llama-merged", tmp_path / "ts", "torchscript").reused and len(calls) == 3


def test_exports_are_listed_with_their_base(hub: Hub, sources: Sources, tmp_path: Path) -> None:
    hub.base_add(sources("llama").merged, "acme/llama-merged")
    assert hub.base_show("acme/llama-merged").exports == []
    ts = hub.export("acme/llama-merged", tmp_path / "ts", "torchscript")
    pt2 = hub.export("acme/llama-merged", tmp_path / "pt2", "torch-export")
    listed = hub.base_show("acme/llama-merged").exports or []
    assert {e.key for e in listed} == {ts.record.plan.key, pt2.record.plan.key}
    by_format = {e.format: e for e in listed}
    assert by_format["torchscript"].output_path == str(tmp_path / "ts")
    assert by_format["torch-export"].record["parity"]["passed"] is True
    assert by_format["torchscript"].base_name == "acme/llama-merged"
    # a base with the same content under another name shares the exports
    hub.base_add(sources("llama").merged, "acme/same-content")
    assert {e.key for e in hub.base_show("acme/same-content").exports or []} == {e.key for e in listed}


def test_gc_removes_the_source_folder_of_a_killed_export(tmp_path: Path) -> None:
    """An export of a base kept in the blob store reads it through a folder of links under the
    home; an export killed with SIGKILL leaves that folder behind, and ``gc`` removes it (and
    leaves a running export's alone)."""
    import signal
    import subprocess
    import sys

    home, db = tmp_path / "home", f"sqlite:///{tmp_path / 'c.db'}"
    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"\0" * 1024)
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from lora_hub import Hub\n"
        "from lora_hub.export.run import linked_folder\n"
        f"hub = Hub({str(home)!r}, database_url={db!r})\n"
        f"with linked_folder({{'model.safetensors': Path({str(blob)!r})}}, Path({str(home)!r}) / 'export-sources',\n"
        "                   hub._ctx.partials()) as folder:\n"
        "    print(folder, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = Path(done.stdout.strip())
    assert left.parent == home / "export-sources" and (left / "model.safetensors").is_file()

    with Hub(home, database_url=db) as hub:
        with export_run.linked_folder(
            {"model.safetensors": blob}, home / "export-sources", hub._ctx.partials()
        ) as live:
            report = hub.gc()
            assert live.is_dir()  # its writer (this process) is running
        assert report.partials_removed == 1 and not left.exists()
    assert blob.read_bytes() == b"\0" * 1024  # the links' source is untouched
