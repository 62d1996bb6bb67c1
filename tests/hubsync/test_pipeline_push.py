"""A pipeline's ``push:`` step: the registered merged model exported to the Hub after the merge,
in one commit; the unchanged pipeline run again writes nothing there."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from lora_hub import Hub
from lora_hub.errors import InvalidArgumentError
from tests.helpers import save_llama, tree_bytes, write_adapter
from tests.hubsim import HubSim


def test_a_pipeline_pushes_its_merged_model_once(
    hub: Hub, hf_hub: HubSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hf_hub.url)
    monkeypatch.setenv("HF_TOKEN", hf_hub.write_token)
    hub.base_add(save_llama(tmp_path / "llama"), "tiny-llama")
    hub.push(write_adapter(tmp_path / "adapter"), "acme/sql", base="tiny-llama")
    path = tmp_path / "job" / "pipeline.yaml"
    path.parent.mkdir()
    path.write_text(
        "base_model: tiny-llama\n"
        "models: [{model: acme/sql:1, weight: 0.5}]\n"
        "output: ./merged\n"
        "name: acme/merged\n"
        "push: {repo_id: alice/merged, create: true}\n"
    )
    result = hub.run_pipeline(path)
    assert result.pushed is not None and result.pushed.created_commit and result.work_done
    assert hf_hub.commits_made() >= 1
    merged = tree_bytes(tmp_path / "job" / "merged")
    for name, data in merged.items():
        assert hf_hub.file_bytes("alice/merged", name) == data
    card = ModelCard(hf_hub.file_bytes("alice/merged", "README.md").decode())
    assert card.data.to_dict()["library_name"] == "transformers"  # no base_model: the base is not on the Hub
    assert result.merge.record.recipe_digest in card.text

    hf_hub.clear_log()
    again = hub.run_pipeline(path)
    assert again.pushed is not None and not again.pushed.created_commit
    assert hf_hub.commits_made() == 0 and not again.work_done


def test_push_needs_a_name(hub: Hub, tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("base_model: b\nmodels: [{model: a}]\noutput: ./m\npush: {repo_id: alice/m}\n")
    with pytest.raises(InvalidArgumentError, match="give it a `name:` too"):
        hub.run_pipeline(path)
