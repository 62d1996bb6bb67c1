"""``Hub.hub_sync`` / ``lorahub hub sync``: a namespace mirrored to an organisation and back, the plan first
(``--dry-run`` writes nothing), and a second sync doing nothing."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from lora_hub import Hub
from lora_hub.cli.main import app
from tests.helpers import write_adapter
from tests.hubsim import HubSim

WRITES = ("create-repo", "preupload", "lfs-batch", "lfs-upload", "commit", "branch", "tag")


def _writes(hf_hub: HubSim) -> int:
    return sum(hf_hub.count(kind=k) for k in WRITES)


def _sync(hub: Hub, hf_hub: HubSim, **kw: object):  # type: ignore[no-untyped-def]
    return hub.hub_sync("acme", "lora-org", endpoint=hf_hub.url, token=hf_hub.write_token, **kw)  # type: ignore[arg-type]


def test_sync_to_an_org_and_back(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    hub.push(write_adapter(tmp_path / "a", seed=1), "acme/sql")
    hub.push(write_adapter(tmp_path / "b", seed=2), "acme/chat")
    hub.push(write_adapter(tmp_path / "c", seed=3), "other/ignored")
    hf_hub.create_repo("lora-org/chat")  # exists already, empty

    plan = _sync(hub, hf_hub, dry_run=True)
    assert [(i.name, i.repo_id, i.action) for i in plan.items] == [
        ("acme/chat", "lora-org/chat", "update"),
        ("acme/sql", "lora-org/sql", "create"),
    ]
    assert _writes(hf_hub) == 0 and hf_hub.store.get("lora-org/sql") is None

    done = _sync(hub, hf_hub)
    assert [i.action for i in done.items] == ["update", "create"] and hf_hub.commits_made() == 2
    hf_hub.clear_log()
    again = _sync(hub, hf_hub)
    assert [i.action for i in again.items] == ["up to date", "up to date"] and _writes(hf_hub) == 0

    hf_hub.create_repo("lora-org/notes")
    hf_hub.commit("lora-org/notes", {"notes.txt": b"not an adapter"})
    with Hub(tmp_path / "home2", database_url=f"sqlite:///{tmp_path / 'c2.db'}") as other:
        pulled = other.hub_sync("acme", "lora-org", pull=True, endpoint=hf_hub.url, token=hf_hub.read_token)
        assert [(i.name, i.action) for i in pulled.items] == [
            ("acme/chat", "create"), ("acme/notes", "skip"), ("acme/sql", "create"),
        ]  # fmt: skip
        for name in ("acme/chat", "acme/sql"):
            assert other.show(name).digest == hub.show(name).digest
        again_pulled = other.hub_sync("acme", "lora-org", pull=True, endpoint=hf_hub.url, token=hf_hub.read_token)
        assert [i.action for i in again_pulled.items] == ["up to date", "skip", "up to date"]


def test_sync_dry_run_from_the_cli(lorahub_env: dict[str, str], hf_hub: HubSim, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["push", str(write_adapter(tmp_path / "a")), "--name", "acme/sql"]).exit_code == 0
    result = runner.invoke(app, ["hub", "sync", "acme", "lora-org", "--dry-run", "--endpoint", hf_hub.url],
                           env={"HF_TOKEN": hf_hub.write_token})  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("create      acme/sql -> lora-org/sql  3 file(s), ")
    assert lines[-1] == "dry run: 1 of 1 would change; nothing was written"
    assert _writes(hf_hub) == 0
