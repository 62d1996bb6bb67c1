"""``base add hf://REPO[@REV]`` (pinned, verified, only the files lora-hub reads) and the export of a merged model
registered as a base (card: ``base_model_relation: finetune``, recipe, adapters, verification)."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from lora_hub import Hub
from lora_hub.errors import IntegrityError, InvalidModelError
from tests.helpers import save_llama, tree_bytes, write_adapter
from tests.hubsim import HubSim
from tests.test_compat import expected_fingerprints

BASE_REPO = "lora-org/tiny-llama"


@pytest.fixture
def llama(tmp_path: Path) -> Path:
    return save_llama(tmp_path / "llama")


def _publish_base(hf_hub: HubSim, llama: Path) -> str:
    files = tree_bytes(llama)
    files["pytorch_model.bin"] = b"\x80\x04pickled, never fetched"
    files["README.md"] = b"# tiny llama\n"
    hf_hub.create_repo(BASE_REPO)
    return hf_hub.commit(BASE_REPO, files)


def test_base_add_from_the_hub_is_pinned_verified_and_fetched_once(
    hub: Hub, hf_hub: HubSim, llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = _publish_base(hf_hub, llama)
    monkeypatch.setenv("HF_ENDPOINT", hf_hub.url)
    monkeypatch.setenv("HF_TOKEN", hf_hub.read_token)
    result = hub.base_add(f"hf://{BASE_REPO}", "tiny-llama")
    content, structure, _ = expected_fingerprints(llama)
    assert result.created and result.base.content_fingerprint == content
    assert result.base.structure_fingerprint == structure
    folder = Path(result.base.path or "")
    assert folder == hub.settings.home / "hub" / "models" / "lora-org--tiny-llama" / sha
    listed = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))  # lora-hub's manifest is hidden
    assert listed == sorted(p.name for p in llama.iterdir())  # no pickle, no card
    assert hf_hub.count(kind="resolve", method="GET") == len(list(llama.iterdir()))

    hf_hub.commit(BASE_REPO, {"notes.txt": b"main moves on"})
    hf_hub.clear_log()
    again = hub.base_add(f"hf://{BASE_REPO}@{sha}", "tiny-llama", store=True)
    assert hf_hub.count(kind="resolve") == 0 and not again.created
    assert again.base.stored and again.base.content_fingerprint == content


def test_base_add_refuses_a_corrupted_file_and_a_pickle_only_repo(
    hub: Hub, hf_hub: HubSim, llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish_base(hf_hub, llama)
    monkeypatch.setenv("HF_ENDPOINT", hf_hub.url)
    hf_hub.corrupt(BASE_REPO, "model.safetensors")
    with pytest.raises(IntegrityError, match="does not match its hash"):
        hub.base_add(f"hf://{BASE_REPO}", "tiny-llama")
    assert hub.base_list() == [] and not (hub.settings.home / "hub" / "models").exists()
    assert not any((hub.settings.home / "hub-staging").iterdir())
    hf_hub.create_repo("lora-org/pickled")
    hf_hub.commit("lora-org/pickled", {"config.json": b"{}", "pytorch_model.bin": b"\x80\x04"})
    with pytest.raises(InvalidModelError, match="only pickled ones"):
        hub.base_add("hf://lora-org/pickled", "pickled")


def test_a_merged_model_exports_with_its_recipe_and_verification(
    hub: Hub, hf_hub: HubSim, llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish_base(hf_hub, llama)
    monkeypatch.setenv("HF_ENDPOINT", hf_hub.url)
    hub.base_add(f"hf://{BASE_REPO}", "tiny-llama")
    hub.push(write_adapter(tmp_path / "adapter"), "acme/sql", base="tiny-llama")
    merged = hub.merge("tiny-llama", ["acme/sql:1"], tmp_path / "merged", name="acme/merged")
    result = hub.hub_export("acme/merged", "alice/merged", create=True, endpoint=hf_hub.url, token=hf_hub.write_token)
    assert result.created_commit and "model.safetensors" in result.files_uploaded
    card = ModelCard(hf_hub.file_bytes("alice/merged", "README.md").decode())
    data = card.data.to_dict()
    assert data["base_model"] == BASE_REPO and data["base_model_relation"] == "finetune"
    assert data["library_name"] == "transformers"
    digest = hub.show("acme/sql").digest
    assert f"| `acme/sql:1` | `{digest}` | 1.0 |" in card.text
    assert merged.record.recipe_digest in card.text and "verification" in card.text and "passed" in card.text
    merged_files = tree_bytes(tmp_path / "merged")
    assert set(result.files_uploaded) == {*merged_files, "README.md"}
    for name, data_bytes in merged_files.items():
        assert hf_hub.file_bytes("alice/merged", name) == data_bytes
    hf_hub.clear_log()
    again = hub.hub_export("acme/merged", "alice/merged", endpoint=hf_hub.url, token=hf_hub.write_token)
    assert not again.created_commit and hf_hub.commits_made() == 0

    # the adapter pushed against a base that came from the Hub names that repo as its base_model
    hub.hub_export("acme/sql", "alice/sql", create=True, endpoint=hf_hub.url, token=hf_hub.write_token)
    adapter_card = ModelCard(hf_hub.file_bytes("alice/sql", "README.md").decode())
    assert adapter_card.data.to_dict()["base_model"] == BASE_REPO
    assert hub.base_show("tiny-llama").content_fingerprint in adapter_card.text


def test_import_against_a_base_checks_the_fit(hub: Hub, hf_hub: HubSim, llama: Path, tmp_path: Path) -> None:
    from lora_hub.errors import IncompatibleError
    from tests.helpers import adapter_config
    from tests.hubsync.helpers import adapter_files, publish

    hub.base_add(llama, "tiny-llama")
    publish(hf_hub, "alice/fits", adapter_files(tmp_path))
    fits = hub.hub_import("alice/fits", "acme/fits", base="tiny-llama", endpoint=hf_hub.url, token=hf_hub.read_token)
    assert fits.version.base == "tiny-llama"
    assert fits.version.base_fingerprint == expected_fingerprints(llama)[0]
    wide = {"model.layers.0.self_attn.q_proj": (64, 64)}  # a module of another shape
    config = adapter_config(target_modules=["q_proj"])
    publish(hf_hub, "alice/wide", adapter_files(tmp_path, seed=9, tensors=_tensors(wide), config=config))
    with pytest.raises(IncompatibleError, match=r"^hf://alice/wide@"):
        hub.hub_import("alice/wide", "acme/wide", base="tiny-llama", endpoint=hf_hub.url, token=hf_hub.read_token)
    assert hub.versions("acme/wide") == []


def _tensors(modules: dict[str, tuple[int, int]]) -> dict[str, object]:
    from tests.helpers import adapter_tensors

    return dict(adapter_tensors(modules))


def test_a_base_folder_edited_after_download_is_fetched_again(
    hub: Hub, hf_hub: HubSim, llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish_base(hf_hub, llama)
    monkeypatch.setenv("HF_ENDPOINT", hf_hub.url)
    folder = Path(hub.base_add(f"hf://{BASE_REPO}", "tiny-llama").base.path or "")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    weights.write_bytes(bytes(data))
    hf_hub.clear_log()
    again = hub.base_add(f"hf://{BASE_REPO}", "tiny-llama")
    assert hf_hub.count(kind="resolve", method="GET") == len(list(llama.iterdir()))
    assert again.base.content_fingerprint == expected_fingerprints(llama)[0]
    assert weights.read_bytes() == (llama / "model.safetensors").read_bytes()
