"""``Hub.hub_export`` against the loopback Hub: one guarded commit, nothing written when unchanged, 412 races,
the model card (parsed by ``huggingface_hub.ModelCard``), round trips, and PEFT loading the exported repo."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, snapshot_download

from lora_hub import Hub
from lora_hub.errors import HubConflictError, HubNotFoundError
from tests.helpers import write_adapter
from tests.hubsim import HubSim
from tests.hubsync.helpers import row

REPO = "alice/sql-lora"
WRITES = ("create-repo", "preupload", "lfs-batch", "lfs-upload", "commit", "branch", "tag")


def _export(hub: Hub, hf_hub: HubSim, ref: str, repo: str = REPO, **kw: object):  # type: ignore[no-untyped-def]
    return hub.hub_export(ref, repo, endpoint=hf_hub.url, token=hf_hub.write_token, **kw)  # type: ignore[arg-type]


def _writes(hf_hub: HubSim) -> int:
    return sum(hf_hub.count(kind=k) for k in WRITES)


@pytest.fixture
def pushed(hub: Hub, tmp_path: Path) -> Path:
    folder = write_adapter(tmp_path / "adapter")
    hub.push(folder, "acme/sql", metrics={"accuracy": 0.81})
    return folder


def test_export_is_one_commit_with_the_files_a_card_and_a_tag(
    hub: Hub, hf_hub: HubSim, pushed: Path, tmp_path: Path
) -> None:
    result = _export(hub, hf_hub, "acme/sql", create=True)
    assert result.created_commit and hf_hub.commits_made(REPO) == 1
    assert hf_hub.head(REPO) == result.commit
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert hf_hub.file_bytes(REPO, name) == (pushed / name).read_bytes()
    assert result.uploaded_bytes == sum(len(hf_hub.file_bytes(REPO, p)) for p in result.files_uploaded)
    assert result.tag == "lorahub-acme-sql-v1"
    tags = hf_hub.api().list_repo_refs(REPO).tags
    assert [(t.name, t.target_commit) for t in tags] == [("lorahub-acme-sql-v1", result.commit)]

    card = ModelCard(hf_hub.file_bytes(REPO, "README.md").decode())
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["base_model"] == "tiny-llama"
    assert data["base_model_relation"] == "adapter" and "lora-hub" in data["tags"]
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("accuracy", 0.81)]
    version = hub.show("acme/sql")
    assert version.digest in card.text and "<!-- lorahub:begin -->" in card.text


def test_export_again_writes_nothing(hub: Hub, hf_hub: HubSim, pushed: Path) -> None:
    first = _export(hub, hf_hub, "acme/sql", create=True)
    hf_hub.clear_log()
    again = _export(hub, hf_hub, "acme/sql")
    assert not again.created_commit and again.commit == first.commit and again.uploaded_bytes == 0
    assert _writes(hf_hub) == 0 and hf_hub.commits_made() == 0
    assert sorted(again.files_unchanged) == ["adapter_config.json", "adapter_model.safetensors"]


def test_only_changed_files_are_sent(hub: Hub, hf_hub: HubSim, pushed: Path, tmp_path: Path) -> None:
    _export(hub, hf_hub, "acme/sql", create=True)
    config = (pushed / "adapter_config.json").read_text().replace('"lora_alpha": 8', '"lora_alpha": 16')
    (pushed / "adapter_config.json").write_text(config)
    hub.push(pushed, "acme/sql")
    hf_hub.clear_log()
    second = _export(hub, hf_hub, "acme/sql:2")
    assert second.created_commit and "adapter_model.safetensors" in second.files_unchanged
    assert sorted(second.files_uploaded) == ["README.md", "adapter_config.json"]
    assert hf_hub.count(kind="lfs-upload") == 0  # the weights were not sent again
    assert second.tag == "lorahub-acme-sql-v2"


def test_a_commit_landing_between_read_and_write_is_retried(hub: Hub, hf_hub: HubSim, pushed: Path) -> None:
    hf_hub.create_repo(REPO)
    hf_hub.race_next_commit(REPO, {"other.txt": b"someone else's work"})
    result = _export(hub, hf_hub, "acme/sql")
    assert result.created_commit and result.attempts == 2
    assert hf_hub.count(kind="commit", status=412) == 1
    files = hf_hub.files(REPO)
    assert {"other.txt", "adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(files)
    assert hf_hub.file_bytes(REPO, "other.txt") == b"someone else's work"


def test_a_branch_that_keeps_moving_gives_a_clear_error(hub: Hub, hf_hub: HubSim, pushed: Path) -> None:
    hf_hub.create_repo(REPO)
    n = iter(range(100))
    hf_hub.on_commit(lambda repo, branch: hf_hub.commit(REPO, {f"race-{next(n)}.txt": b"x"}), times=100)
    with pytest.raises(HubConflictError, match="kept moving") as caught:
        _export(hub, hf_hub, "acme/sql")
    assert caught.value.hint is not None
    assert hf_hub.count(kind="commit", status=412) == 4 and hf_hub.commits_made() == 0
    assert "adapter_model.safetensors" not in hf_hub.files(REPO)


def test_a_users_card_text_is_kept_and_only_the_block_is_regenerated(hub: Hub, hf_hub: HubSim, pushed: Path) -> None:
    hf_hub.create_repo(REPO)
    user = "---\nlicense: apache-2.0\ntags:\n- sql\n---\n# My adapter\n\nHand-written notes.\n"
    hf_hub.commit(REPO, {"README.md": user.encode()})
    _export(hub, hf_hub, "acme/sql")
    hub.set_metrics("acme/sql", {"accuracy": 0.9})
    _export(hub, hf_hub, "acme/sql")
    text = hf_hub.file_bytes(REPO, "README.md").decode()
    card = ModelCard(text)
    assert card.data.license == "apache-2.0" and card.data.tags[0] == "sql" and "lora-hub" in card.data.tags
    assert "# My adapter\n\nHand-written notes.\n" in card.text
    assert text.count("<!-- lorahub:begin -->") == 1 and text.count("<!-- lorahub:end -->") == 1
    assert [r.metric_value for r in card.data.eval_results] == [0.9]


def test_round_trip_gives_the_same_version(hub: Hub, hf_hub: HubSim, pushed: Path) -> None:
    exported = _export(hub, hf_hub, "acme/sql", create=True)
    back = hub.hub_import(REPO, "acme/sql-back", endpoint=hf_hub.url, token=hf_hub.read_token)
    original = hub.show("acme/sql")
    assert back.version.digest == original.digest
    assert back.source == f"hf://{REPO}@{exported.commit}"
    assert back.version.metrics == original.metrics  # through the card's model-index
    assert row(back.version)["files"] == row(original)["files"]
    into_same = hub.hub_import(REPO, "acme/sql", endpoint=hf_hub.url, token=hf_hub.read_token)
    assert not into_same.created and into_same.version.version == 1


def test_missing_repo_or_branch_without_create(hub: Hub, hf_hub: HubSim, pushed: Path) -> None:
    with pytest.raises(HubNotFoundError, match="--create"):
        _export(hub, hf_hub, "acme/sql")
    hf_hub.create_repo(REPO)
    with pytest.raises(HubNotFoundError, match="no branch 'dev'"):
        _export(hub, hf_hub, "acme/sql", revision="dev")
    result = _export(hub, hf_hub, "acme/sql", revision="dev", create=True)
    assert hf_hub.head(REPO, "dev") == result.commit and "adapter_model.safetensors" not in hf_hub.files(REPO)


def test_peft_loads_the_exported_repo(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from tests.helpers import tiny_llama

    hub.push(write_adapter(tmp_path / "adapter", seed=3), "acme/sql")
    _export(hub, hf_hub, "acme/sql", create=True)
    folder = snapshot_download(REPO, endpoint=hf_hub.url, token=hf_hub.read_token, local_dir=tmp_path / "dl")
    torch.manual_seed(0)
    model = PeftModel.from_pretrained(tiny_llama(), folder)
    expected = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(expected) == 8
    for key, value in expected.items():
        name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)
    digest = hashlib.sha256((Path(folder) / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert "sha256:" + digest == next(f.digest for f in hub.show("acme/sql").files if f.path.endswith(".safetensors"))


def test_a_damaged_stored_blob_is_never_exported(hub: Hub, hf_hub: HubSim, pushed: Path) -> None:
    from lora_hub.errors import IntegrityError
    from tests.helpers import blob_path

    digest = next(f.digest for f in hub.show("acme/sql").files if f.path == "adapter_model.safetensors")
    blob = blob_path(hub.settings.home, digest)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="corrupted in the blob store"):
        _export(hub, hf_hub, "acme/sql", create=True)
    # The blob is checked as it is sent, and its last bytes are withheld: no upload completes.
    assert hf_hub.commits_made() == 0 and hf_hub.count(kind="lfs-upload", status=200) == 0
    assert hf_hub.bytes_in(kind="lfs-upload") < len(data)


def test_an_imported_adapter_keeps_its_cards_base_model_when_exported(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    from tests.hubsync.helpers import adapter_files, publish

    publish(hf_hub, "bob/source", adapter_files(tmp_path))  # its card names meta-llama/Llama-3.2-1B
    hub.hub_import("bob/source", "acme/sql", endpoint=hf_hub.url, token=hf_hub.read_token)
    _export(hub, hf_hub, "acme/sql", create=True)
    data = ModelCard(hf_hub.file_bytes(REPO, "README.md").decode()).data.to_dict()
    assert data["base_model"] == "meta-llama/Llama-3.2-1B"
    assert "base_model:adapter:meta-llama/Llama-3.2-1B" in data["tags"]
    assert {
        (r.metric_type, r.metric_value)
        for r in ModelCard(hf_hub.file_bytes(REPO, "README.md").decode()).data.eval_results
    } == {("accuracy", 0.81), ("exact_match", 0.5)}


def test_files_an_earlier_export_wrote_are_removed_and_nothing_else(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    v1 = write_adapter(tmp_path / "v1")
    (v1 / "notes.txt").write_text("training notes\n")
    (v1 / "extra.safetensors").write_bytes((tmp_path / "v1" / "adapter_model.safetensors").read_bytes())
    (v1 / "eval.json").write_text('{"loss": 1}\n')
    hub.push(v1, "acme/sql")
    _export(hub, hf_hub, "acme/sql", create=True)
    # Someone adds a file of their own, and edits one that lora-hub wrote.
    hf_hub.commit(REPO, {"user.md": b"mine\n", "eval.json": b'{"loss": 2}\n'})
    hub.push(write_adapter(tmp_path / "v2", seed=1), "acme/sql")

    plan = _export(hub, hf_hub, "acme/sql", dry_run=True)
    assert plan.files_deleted == ["extra.safetensors", "notes.txt"] and plan.files_kept == ["eval.json"]
    assert set(hf_hub.files(REPO)) >= {"notes.txt", "extra.safetensors"}  # a dry run deletes nothing

    result = _export(hub, hf_hub, "acme/sql")
    assert result.created_commit and result.files_deleted == ["extra.safetensors", "notes.txt"]
    assert result.files_kept == ["eval.json"]
    assert set(hf_hub.files(REPO)) == {
        ".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors", "user.md", "eval.json"
    }  # fmt: skip
    assert hf_hub.file_bytes(REPO, "eval.json") == b'{"loss": 2}\n'
    assert (
        hf_hub.file_bytes(REPO, "adapter_model.safetensors")
        == (tmp_path / "v2" / "adapter_model.safetensors").read_bytes()
    )
    # The new card lists only v2's files: exporting v2 again deletes nothing more and writes nothing.
    again = _export(hub, hf_hub, "acme/sql")
    assert not again.created_commit and again.files_deleted == []
