"""The spectra of an analysis drawn into a PNG (``lorahub analyze --plot``), with matplotlib, an
optional dependency (``pip install 'lora-hub[rank]'``)."""

from __future__ import annotations

import os
from pathlib import Path

from lora_hub.errors import InvalidArgumentError
from lora_hub.rank.types import RankAnalysis


def require_matplotlib() -> None:
    """Fail before any work when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InvalidArgumentError(
            "--plot needs matplotlib, which is not installed", hint="pip install 'lora-hub[rank]'"
        ) from None


def plot_spectra(analysis: RankAnalysis, path: str | os.PathLike[str]) -> Path:
    """Two panels: each module's singular values relative to its largest (log scale), and the
    energy kept at each rank, with the targets drawn as horizontal lines."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    many = len(analysis.modules) > 12
    for m in analysis.modules:
        if not m.singular_values or m.singular_values[0] == 0:
            continue
        ranks = range(1, len(m.singular_values) + 1)
        top = m.singular_values[0]
        style = {"linewidth": 0.8, "alpha": 0.5} if many else {"label": m.path}
        left.semilogy(ranks, [s / top for s in m.singular_values], **style)
        right.plot(ranks, m.energy, **style)
    for e in analysis.energies:
        right.axhline(e, color="gray", linestyle="--", linewidth=0.8)
    left.set(xlabel="k", ylabel="S_k / S_1", title="singular values of s * B @ A")
    right.set(xlabel="rank k", ylabel="energy kept", title="sum_{j<=k} S_j^2 / sum_j S_j^2", ylim=(0, 1.02))
    if not many and analysis.modules:
        right.legend(fontsize="x-small", loc="lower right")
    fig.suptitle(f"{analysis.adapter}: {len(analysis.modules)} modules")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
