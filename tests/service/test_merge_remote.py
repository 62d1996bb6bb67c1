"""A laptop asks the server to merge: with ``LORAHUB_URL`` set, ``lorahub merge --base BASE REF
--name NS/NAME --submit`` without ``-o`` is a ``store_output`` job of registered names only, which
a write token of ``NS`` may submit, follow, list and cancel; the worker stores the merged model as
the base ``NS/NAME`` and ``lorahub base pull`` writes it on the laptop. The pulled tensors are
compared with an independent float64 ``W + s * B @ A``. SQLite: the server's in-process worker;
PostgreSQL: a worker beside the server (as in ``test_jobs_remote``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lora_hub.cli.main import app
from lora_hub.core.pipeline import ModelSpec, PipelineSpec
from lora_hub.remote.client import RemoteHub
from lora_hub.settings import Settings
from tests.helpers import PREFIX, adapter_config, adapter_tensors, save_llama, write_adapter
from tests.service.conftest import Served, cli

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

SCALE = 8 / 4  # adapter_config: lora_alpha 8, r 4


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def expected_merge(base: dict[str, torch.Tensor], adapter: dict[str, Any], weight: float) -> dict[str, torch.Tensor]:
    """W + weight * s * B @ A in float64 for every target; the other tensors as they are."""
    out = {k: v.double() for k, v in base.items()}
    for key, a in adapter.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(PREFIX) : -len(".lora_A.weight")]
        b = adapter[key.replace("lora_A", "lora_B")]
        delta = torch.from_numpy(b).double() @ torch.from_numpy(a).double()
        out[f"{module}.weight"] = out[f"{module}.weight"] + weight * SCALE * delta
    return out


def _assert_merged(folder: Path, base: dict[str, torch.Tensor], lora: dict[str, Any], weight: float) -> None:
    got = _tensors(folder)
    want = expected_merge(base, lora, weight)
    assert set(got) == set(want)
    for key, w in want.items():
        assert torch.allclose(got[key].double(), w, atol=1e-5, rtol=1e-5), key
    assert any(not torch.equal(got[k], base[k]) for k in got)  # the merge changed something


@pytest.fixture
def inputs(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Through the server: an admin stores the base ``tiny`` (``base add --store``), the write
    token of ``acme`` pushes ``acme/lora`` against it. The base's and adapter's tensors."""
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "laptop"))
    monkeypatch.delenv("LORAHUB_DATABASE_URL", raising=False)
    base = save_llama(tmp_path / "base", seed=5)
    lora = adapter_tensors(seed=9)
    adapter = write_adapter(tmp_path / "adapter", tensors=lora, config=adapter_config())
    code, _, stderr = cli(served, "admin", "base", "add", str(base), "--name", "tiny", "--store",
                          monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0, stderr
    code, _, stderr = cli(served, "write", "push", str(adapter), "--name", "acme/lora", "--base", "tiny",
                          monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0, stderr
    return _tensors(base), lora


def test_a_laptop_merges_on_the_server_and_pulls_the_result(
    served: Served, workers: None, inputs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, lora = inputs
    code, stdout, stderr = cli(served, "write", "merge", "--base", "tiny", "acme/lora", "--name", "acme/merged",
                               "--submit", monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("submitted job ") and "(pipeline, " in lines[0]
    assert lines[1].startswith("merged ") and lines[1].endswith(" -> the blob store")
    assert lines[-2:] == ["  registered as base acme/merged", "  pull it with `lorahub base pull acme/merged -o DIR`"]
    info = served.hub.base_show("acme/merged")
    assert info.stored and info.path is None and info.lineage is not None

    out = tmp_path / "merged"
    code, stdout, stderr = cli(served, "read", "base", "pull", "acme/merged", "-o", str(out), monkeypatch=monkeypatch)
    assert code == 0, stderr
    assert stdout.startswith(f"acme/merged -> {out}  (") and "digests verified" in stdout
    _assert_merged(out, base, lora, 1.0)
    assert (out / "config.json").is_file()

    # the write token sees its job; a token of another namespace does not
    code, stdout, _ = cli(served, "write", "jobs", "list", "--json", monkeypatch=monkeypatch)
    (job,) = json.loads(stdout)
    assert code == 0 and job["state"] == "succeeded" and job["request"]["store_output"] is True
    code, _, stderr = cli(served, "other", "jobs", "show", job["id"], monkeypatch=monkeypatch)
    assert code == 2 and stderr.startswith(f"error: no job '{job['id']}'")
    code, stdout, _ = cli(served, "other", "jobs", "list", "--json", monkeypatch=monkeypatch)
    assert code == 0 and json.loads(stdout) == []
    assert cli(served, "write", "jobs", "show", job["id"], monkeypatch=monkeypatch)[0] == 0

    # the same recipe again: answered from its record, with no job
    code, stdout, stderr = cli(served, "write", "merge", "--base", "tiny", "acme/lora", "--name", "acme/merged",
                               "--submit", monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == "served from the record of this recipe, with no job: stored base acme/merged"
    assert "registered as base acme/merged" in stdout
    assert served.hub.base_show("acme/merged") == info
    assert [j.id for j in served.hub.jobs()] == [job["id"]]
    code, stdout, stderr = cli(served, "write", "merge", "--base", "tiny", "acme/lora", "--name", "acme/merged",
                               "--detach", "--json", monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0, stderr
    recorded = json.loads(stdout)
    assert recorded["recorded"] is True and recorded["id"] == "" and recorded["state"] == "succeeded"
    assert recorded["result"]["stored_base"] == "acme/merged"


def test_what_a_write_token_may_not_submit(
    served: Served, inputs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    merge = ["merge", "--base", "tiny", "acme/lora", "--submit"]
    code, _, stderr = cli(served, "write", *merge, "--name", "other/merged", monkeypatch=monkeypatch)
    assert code == 2 and stderr.startswith("error: no namespace 'other' for this token")
    code, _, stderr = cli(served, "other", *merge, "--name", "other/merged", monkeypatch=monkeypatch)
    assert code == 2 and stderr.startswith("error: no adapter named 'acme/lora'")  # it cannot read acme
    code, _, stderr = cli(served, "write", *merge, "--name", "merged", monkeypatch=monkeypatch)
    assert code == 2 and stderr.startswith("error: no namespace '' for this token")
    code, _, stderr = cli(served, "read", *merge, "--name", "acme/merged", monkeypatch=monkeypatch)
    assert code == 2 and stderr.startswith("error: this token (read) may not write in namespace acme")
    # a server path as the base, or an output folder of the server: an admin's job only
    folder = str(tmp_path / "base")
    code, _, stderr = cli(served, "write", "merge", "--base", folder, "acme/lora", "--name", "acme/m", "--submit",
                          monkeypatch=monkeypatch)  # fmt: skip
    assert code == 2 and stderr.startswith("error: this needs an admin token for namespace *")
    code, _, stderr = cli(served, "write", *merge, "-o", str(tmp_path / "x"), monkeypatch=monkeypatch)
    assert code == 2 and stderr.startswith("error: this needs an admin token for namespace *")
    # without -o a merge needs a name and a worker
    code, _, stderr = cli(served, "write", "merge", "--base", "tiny", "acme/lora", monkeypatch=monkeypatch)
    assert code == 2 and stderr.startswith("error: give the merged model a folder (-o DIR)")
    assert served.hub.jobs() == [] and [b.name for b in served.hub.base_list()] == ["tiny"]


def test_a_pipeline_without_output_through_the_python_api(
    served: Served, workers: None, inputs: Any, tmp_path: Path
) -> None:
    base, lora = inputs
    settings = Settings.from_env(home=tmp_path / "laptop")
    settings = Settings(**{**settings.__dict__, "server_url": served.url, "token": served.tokens["write"]})
    spec = PipelineSpec(base_model="tiny", models=[ModelSpec(model="acme/lora", weight=0.5)], output="",
                        name="acme/half")  # fmt: skip
    with RemoteHub(settings) as remote:
        done = remote.run_pipeline(spec, device="cpu")
        assert done.merge.registered == "acme/half" and done.merge.path == ""
        pulled = remote.base_pull("acme/half", tmp_path / "half")
    _assert_merged(Path(pulled.path), base, lora, 0.5)


def test_a_pipeline_file_without_output_is_stored_on_the_server(
    served: Served, workers: None, inputs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, lora = inputs
    file = tmp_path / "laptop" / "merge.yaml"
    file.parent.mkdir()
    file.write_text("base_model: tiny\nmodels:\n  - {model: acme/lora, weight: 0.25}\nname: acme/quarter\n")
    code, stdout, stderr = cli(served, "write", "run", str(file), monkeypatch=monkeypatch)
    assert code == 0, stderr
    assert "registered as base acme/quarter" in stdout and not (file.parent / "merged").exists()
    code, _, stderr = cli(served, "write", "base", "pull", "acme/quarter", "-o", str(tmp_path / "q"),
                          monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0, stderr
    _assert_merged(tmp_path / "q", base, lora, 0.25)

    # run here (no server), the same file has nowhere to write
    for key in ("LORAHUB_URL", "LORAHUB_TOKEN"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "laptop-home"))
    local = CliRunner().invoke(app, ["run", str(file)])
    assert local.exit_code == 2 and local.stderr.startswith("error: the pipeline has no `output:` folder")
