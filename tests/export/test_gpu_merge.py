"""On a CUDA machine (``pytest -m gpu``, e.g. through ``scripts/gpu_check.sh``): the same merge
recipe on cuda and on cpu. Tensors no adapter touches are byte-for-byte the same (copied as
bytes); merged ones may differ by the order of float32 accumulation only, which both merges'
verification bound covers. (It lives here because the GPU checks are run together; it tests
``lora_hub.merge``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_hub import Hub
from tests.export.models import Sources
from tests.merge.models import load_folder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)"),
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning"),
]


def test_merge_on_cuda_equals_the_cpu_merge(sources: Sources, tmp_path: Path) -> None:
    src = sources("llama")
    outs = {}
    for device in ("cpu", "cuda"):
        with Hub(tmp_path / device, database_url=f"sqlite:///{tmp_path / device}.db") as hub:
            result = hub.merge(src.base, [str(src.adapter)], tmp_path / f"out-{device}", device=device)
        assert result.record.report.passed and result.device.startswith(device)
        outs[device] = load_folder(tmp_path / f"out-{device}")
    cpu, cuda = outs["cpu"], outs["cuda"]
    base = load_folder(src.base)
    assert set(cpu) == set(cuda)
    identical = [k for k in cpu if torch.equal(cpu[k], cuda[k])]
    untouched = [k for k in cpu if torch.equal(cpu[k], base[k])]
    assert set(untouched) <= set(identical)  # copied bytes are the same bytes
    worst = 0.0
    for key in set(cpu) - set(identical):
        a, b = cpu[key].double(), cuda[key].double()
        # relative to the tensor's scale: float32 rounding of a rank-4 update is ~1e-7
        worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    print(f"cuda vs cpu: {len(identical)}/{len(cpu)} tensors byte-identical, worst relative difference {worst:.3g}")
    assert worst <= 1e-6
