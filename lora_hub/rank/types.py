"""What ``Hub.analyze``, ``Hub.reduce`` and ``Hub.extract`` return: plain pydantic models, serialised
as the ``--json`` output of ``lorahub analyze``, ``reduce`` and ``extract``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from lora_hub.types import PushResult


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModuleSpectrum(_Model):
    """The singular values of one module's update ``dW = s * B @ A`` and what they say about its rank.

    ``energy[k-1] = sum_{j<=k} S_j^2 / sum_j S_j^2`` (the fraction of ``||dW||_F^2`` a rank-k cut keeps);
    ``effective_rank = exp(-sum_j p_j log p_j)`` with ``p_j = S_j / sum S`` (Roy and Vetterli 2007);
    ``stable_rank = ||dW||_F^2 / ||dW||_2^2 = sum_j S_j^2 / S_1^2``.
    """

    path: str
    kind: str = Field(description="linear, embedding or conv")
    rank: int = Field(description="the stored rank r of the module")
    scale: float = Field(description="the LoRA scale s (alpha/r, or alpha/sqrt(r) with rsLoRA)")
    shape: list[int] = Field(description="[out, in] of the update B @ A (conv: in * kernel)")
    singular_values: list[float] = Field(description="S_1 >= S_2 >= ... of s * B @ A, exact (float64)")
    energy: list[float] = Field(description="energy kept by the rank-k cut, k = 1..len(singular_values)")
    rank_for: dict[str, int] = Field(description="energy target -> the smallest rank that keeps it")
    effective_rank: float
    stable_rank: float
    norm: float = Field(description="||dW||_F")
    relative_norm: float | None = Field(default=None, description="||dW||_F / ||W||_F, with a base")


class RankSuggestion(_Model):
    """For one energy target E: the smallest uniform rank that keeps E in every module, and the
    per-module ranks that keep E in each (a ``rank_pattern``), with what each would cost."""

    energy: float
    uniform_rank: int = Field(description="max over modules of the rank that keeps E")
    uniform_params: int
    uniform_bytes: int
    rank_pattern: dict[str, int]
    pattern_params: int
    pattern_bytes: int


class RankAnalysis(_Model):
    adapter: str
    digest: str
    base: str | None = None
    energies: list[float]
    dtype: str
    params: int = Field(description="parameters of the adapter now (LoRA factors and saved tensors)")
    bytes: int = Field(description="bytes of those tensors now, without file headers")
    modules: list[ModuleSpectrum]
    suggestions: list[RankSuggestion]
    notes: list[str] = Field(default_factory=list)


class ReduceResult(_Model):
    """A reduced adapter, pushed. ``errors`` are the relative Frobenius errors
    ``||dW - dW'||_F / ||dW||_F`` of the stored result (computed exactly, from the factors);
    ``bounds`` the Eckart-Young optimum of each cut, ``sqrt(sum_{j>k} S_j^2) / ||dW||_F``."""

    push: PushResult
    rank: int | None
    energy: float | None
    ranks: dict[str, int]
    ranks_before: dict[str, int]
    errors: dict[str, float]
    bounds: dict[str, float]
    max_error: float
    mean_error: float
    params_before: int
    params_after: int


class ExtractResult(_Model):
    """A LoRA adapter extracted from a dense fine-tune, pushed against the base. ``errors`` are the
    relative Frobenius errors ``||D - B'A'||_F / ||D||_F`` of each module, ``D = W_tuned - W_base``,
    measured on the stored factors."""

    push: PushResult
    rank: int | None
    energy: float | None
    ranks: dict[str, int]
    errors: dict[str, float]
    max_error: float
    mean_error: float
    saved: list[str] = Field(description="tensors kept whole (modules_to_save)")
    unchanged: list[str] = Field(description="target tensors equal in both models (no LoRA needed)")
    not_captured: list[str] = Field(description="other tensors that differ, not kept (see --modules-to-save)")
    seconds: float
    peak_rss_bytes: int
    device: str
