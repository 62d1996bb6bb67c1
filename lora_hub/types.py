"""Domain types: what the core API takes and returns. Plain pydantic models, serialisable as the
stable ``--json`` output of the CLI. ORM rows never leave the catalog package; these do."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def human_bytes(n: float) -> str:
    """``21633`` -> ``21.6 kB`` (decimal units, as ``list`` prints sizes)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraModule(_Model):
    """One LoRA target: ``W' = W + scale * B @ A`` on the base tensor ``<path>.weight``.

    ``scale = alpha / rank``, or ``alpha / sqrt(rank)`` under rsLoRA. ``in_features`` and
    ``out_features`` are the base layer's, read from the shapes of A ``[rank, in]`` and
    B ``[out, rank]``.
    """

    path: str
    kind: Literal["linear", "embedding", "conv"] = "linear"
    rank: int
    alpha: float
    scale: float
    in_features: int
    out_features: int
    a_shape: list[int]
    b_shape: list[int]
    dora: bool = False
    bias: bool = False


class SavedTensor(_Model):
    """A full tensor that the adapter carries (``modules_to_save``, trained biases): it replaces
    the base tensor ``name`` when merged."""

    name: str
    dtype: str
    shape: list[int]
    key: str | None = Field(default=None, description="its key in adapter_model.safetensors, if not the usual one")
    base_layer: bool = Field(
        default=False,
        description="PEFT's copy of the base weight under a LoRA layer (``<path>.base_layer.weight``, saved with "
        "embedding layers): the LoRA update applies on top of it",
    )

    @property
    def file_key(self) -> str:
        from lora_hub.formats.peft import saved_key

        return self.key or saved_key(self.name)


class AdapterFacts(_Model):
    """What an adapter's config and tensors say, checked against each other."""

    peft_type: str = "LORA"
    rank: int
    alpha: float
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    lora_bias: bool = False
    bias: str = "none"
    rank_pattern: dict[str, int] = Field(default_factory=dict)
    alpha_pattern: dict[str, float] = Field(default_factory=dict)
    target_modules: list[str] = Field(description="short names of the targeted modules, e.g. q_proj")
    modules_to_save: list[str] = Field(default_factory=list)
    dtype: str
    num_params: int
    size_bytes: int
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    model_type: str | None = Field(default=None, description="model type the config names (PEFT's auto_mapping)")


class AdapterLayout(_Model):
    """Module by module: what the adapter changes in its base."""

    modules: list[LoraModule]
    saved_tensors: list[SavedTensor] = Field(default_factory=list)


class FileEntry(_Model):
    path: str
    digest: str
    size: int


class AdapterVersion(_Model):
    """One stored version of an adapter."""

    namespace: str
    name: str
    version: int
    ref: str
    digest: str = Field(description="sha256 of the file manifest; identical content gives the same digest")
    created_at: datetime
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    files: list[FileEntry] = Field(default_factory=list)
    facts: AdapterFacts
    layout: AdapterLayout | None = Field(default=None, description="omitted (null) in list results")
    base: str | None = Field(default=None, description="registered base it was pushed against (push --base)")
    base_fingerprint: str | None = Field(default=None, description="content fingerprint of that base")
    lineage: dict[str, Any] | None = None

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


class PushResult(_Model):
    version: AdapterVersion
    created: bool = Field(description="false when identical content was already stored as this version")
    bytes_written: int = Field(
        description="bytes this push wrote to the blob store; blobs already stored (by any version) cost nothing"
    )
    updated: list[str] = Field(
        default_factory=list,
        description="for content already stored: what this push applied to that version (metrics, tags, description)",
    )
    repaired: list[str] = Field(default_factory=list, description="stored blobs found damaged and rewritten")
    warnings: list[str] = Field(default_factory=list)


class PullResult(_Model):
    version: AdapterVersion
    path: str
    bytes_written: int


class GcReport(_Model):
    blobs_removed: int
    bytes_freed: int
    temp_files_removed: int
    dry_run: bool = False
    partials_removed: int = Field(default=0, description="hidden partial output folders of killed pulls and merges")


class DbStatus(_Model):
    database: str = Field(description="the catalog's URL, password hidden")
    revision: str
    queue_schema: str | None = Field(
        default=None, description="PostgreSQL: the last procrastinate schema migration the job queue includes"
    )
    queue_migrations: list[str] = Field(default_factory=list, description="procrastinate migrations applied now")


class BlobCheck(_Model):
    digest: str
    size: int | None = Field(description="size found in the store; null when missing")
    state: Literal["ok", "missing", "corrupted"]
    used_by: list[str] = Field(default_factory=list, description="versions and stored bases that refer to it")


class VerifyReport(_Model):
    """``lorahub verify``: every blob checked was re-read and re-hashed against its digest."""

    blobs_checked: int
    bytes_checked: int
    problems: list[BlobCheck] = Field(default_factory=list, description="only the blobs that are not ok")

    @property
    def ok(self) -> bool:
        return not self.problems


class ListQuery(_Model):
    """Filters of ``Hub.list``. ``where`` is e.g. ``"accuracy>=0.8 and rank<=16"``; ``sort`` a
    field or metric, ``-`` first for descending."""

    namespace: str | None = None
    name: str | None = None
    base: str | None = None
    rank: int | None = None
    target: str | None = None
    tag: str | None = None
    where: str | None = None
    sort: str | None = None
    limit: int = 50
    offset: int = 0
    latest_only: bool = False
    count: bool = Field(default=False, description="also count the matching versions past a full page (capped)")


class VersionPage(_Model):
    """One page of a listing: ``items`` (at most ``limit``), starting at ``offset`` of ``total``."""

    items: list[AdapterVersion]
    offset: int
    limit: int
    more: bool = Field(default=False, description="whether versions past this page match too")
    total: int | None = Field(
        default=None,
        description="how many versions match in all (at least, when total_capped); null when not counted "
        "(a full page, and the query did not ask for a count)",
    )
    total_capped: bool = Field(default=False, description="true when counting stopped at 1,000 past the offset")
    notes: list[str] = Field(default_factory=list, description="e.g. a --sort metric that no listed version has")


# --- base models and compatibility ------------------------------------------------------------


class BaseTensor(_Model):
    dtype: str = Field(description="safetensors dtype, e.g. BF16")
    shape: list[int]
    digest: str = Field(description="sha256 of the tensor's bytes")
    file: str = Field(description="the shard that holds it")


class BaseFile(_Model):
    path: str
    size: int
    digest: str | None = Field(default=None, description="set for files copied into the blob store")


class ExportEntry(_Model):
    """What the catalog keeps of an export: its key, source and format, where it was written, and
    the whole record (``lora_hub.export.run.ExportRecord``, as written to ``lorahub_export.json``)."""

    key: str
    source_fingerprint: str
    base_name: str | None = None
    format: str
    output_path: str
    record: dict[str, Any]
    created_at: datetime | None = None


class BaseModelInfo(_Model):
    """A base model: an HF model folder, fingerprinted.

    ``content_fingerprint`` = sha256 over the lines ``name\\tdtype\\tshape\\tsha256(bytes)``,
    one per tensor, sorted by name; ``structure_fingerprint`` is the same without the hashes.
    """

    name: str | None = Field(description="registered name; null for a folder that is not registered")
    path: str | None = Field(description="the folder the weights were read from")
    stored: bool = Field(description="whether the files are also in the blob store")
    content_fingerprint: str
    structure_fingerprint: str
    model_type: str | None
    architectures: list[str] = Field(default_factory=list)
    dtype: str
    num_params: int
    num_tensors: int
    size_bytes: int
    files: list[BaseFile] = Field(default_factory=list)
    created_at: datetime | None = None
    lineage: dict[str, Any] | None = Field(default=None, description="for merged models: recipe and verification")
    tensors: dict[str, BaseTensor] | None = Field(default=None, description="omitted (null) in list results")
    exports: list[ExportEntry] | None = Field(default=None, description="in base show: its recorded exports")
    status: Literal["ok", "missing", "changed"] | None = Field(
        default=None,
        description="in base list/show: whether its folder still holds its weights (sizes checked, not hashes); "
        "a stored base merges from the store either way",
    )


class BaseAddResult(_Model):
    base: BaseModelInfo
    created: bool
    hashed_bytes: int = Field(description="bytes hashed now; 0 when every shard's hashes came from the cache")
    stored_bytes: int = 0
    warnings: list[str] = Field(default_factory=list)


Verdict = Literal["exact", "compatible", "incompatible"]


class Problem(_Model):
    """One reason an adapter does not fit a base."""

    code: Literal[
        "architecture", "missing_module", "in_features", "out_features", "shape", "rank", "vocab_size",
        "saved_tensor_shape", "dora_magnitude", "dtype", "adapter", "target_modules", "bias",
    ]  # fmt: skip
    module: str | None = None
    expected: str | None = None
    found: str | None = None
    message: str


class WeightDiff(_Model):
    """How the base differs from the one the adapter was trained on, on the target tensors."""

    tensors_compared: int
    tensors_differing: int
    max_relative_diff: float | None = Field(
        default=None, description="max over target tensors of ||W_base - W_trained|| / ||W_trained|| (Frobenius)"
    )
    mean_relative_diff: float | None = None
    worst_tensor: str | None = None


class CompatReport(_Model):
    verdict: Verdict
    adapter: str
    base: str
    base_fingerprint: str
    trained_on_fingerprint: str | None = Field(
        description="content fingerprint of the base the adapter was trained on, where known"
    )
    problems: list[Problem] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    diff: WeightDiff | None = None
    key_mapping: dict[str, str] = Field(
        default_factory=dict, description='how adapter module paths map to base keys: {"strip": .., "add": ..}'
    )


# --- merging -------------------------------------------------------------------------------------


class MergeReport(_Model):
    """The verification of a merge (``lora_hub.merge.verify``): every changed tensor checked
    against an independent float64 recomputation of the recipe. ``checks`` says how, per tensor:
    ``probe`` (``W'x`` against ``Wx + sum_i c_i s_i B_i(A_i x)``, all rows), ``rows`` (sampled rows
    recomputed by the method's formula, entry by entry), ``threshold`` (each trim's cut counted
    over the whole delta), ``dora``, ``bias`` (every entry), ``copy`` (a saved tensor, every entry).

    ``errors`` holds, per tensor, its worst error as a fraction of its rounding bound
    (``error_kind`` ``fraction_of_bound``; ``tolerances`` are then 1). Reports written before
    these checks existed (``error_kind`` ``probe_relative``) hold the probe's relative error
    ``||W'x - ref|| / (||W'||_F ||x||)`` and its tolerance, and none of the fields after it."""

    verified_tensors: int
    worst_error: float | None
    worst_tensor: str | None
    errors: dict[str, float]
    tolerances: dict[str, float]
    passed: bool
    error_kind: str = Field(
        default="probe_relative", description="fraction_of_bound (errors / rounding bound) or probe_relative (old)"
    )
    checks: dict[str, list[str]] = Field(default_factory=dict, description="per tensor: the checks applied")
    rows_checked: dict[str, int] = Field(default_factory=dict, description="per tensor: rows compared entry by entry")
    entries_checked: dict[str, int] = Field(default_factory=dict, description="per tensor: entries compared")
    ambiguous: dict[str, int] = Field(
        default_factory=dict,
        description="per tensor: sampled entries left out, where rounding could flip a trim, sign vote or mean",
    )
    thresholds: dict[str, list[float | None]] = Field(
        default_factory=dict,
        description="per trimmed tensor: each adapter's checked cut |d| >= t, in recipe order (null: nothing cut)",
    )
    not_verified: list[str] = Field(
        default_factory=list, description="changed tensors that no check compared (ideally none)"
    )


class MergeRecord(_Model):
    """What the catalog keeps of a merge: the recipe, where the output went, what it holds."""

    recipe_digest: str
    recipe: dict[str, Any]
    output_path: str
    content_fingerprint: str
    name: str | None = None
    report: MergeReport
    versions: dict[str, str]
    created_at: datetime | None = None


class MergeResult(_Model):
    path: str
    record: MergeRecord
    reused: bool = Field(description="true when the same recipe was served from the catalog, not recomputed")
    registered: str | None = Field(default=None, description="the base name this call registered the output as")
    tensors_merged: int = 0
    tensors_copied: int = Field(default=0, description="copied byte for byte (kernel-side)")
    tensors_converted: int = Field(default=0, description="unchanged but re-encoded to another dtype")
    bytes_written: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    device: str = "cpu"


class CombineResult(_Model):
    """A combined adapter, pushed: its version, and how close each module is to the exact
    combination (relative Frobenius error of the rank cut; 0 for ``cat``)."""

    push: PushResult
    method: str
    ranks: dict[str, int]
    errors: dict[str, float]
    max_error: float
    mean_error: float


# --- lineage ---------------------------------------------------------------------------------


class LineageNode(_Model):
    """One thing in a lineage and what was made from it: an adapter version, a merged model (a
    registered base, or an unregistered output folder), or an export."""

    kind: Literal["adapter", "base", "merge", "export"]
    label: str = Field(description="ref, base name, output folder or format")
    digest: str | None = Field(default=None, description="adapter digest, recipe digest, or export key")
    fingerprint: str | None = Field(default=None, description="content fingerprint of a model")
    path: str | None = None
    how: str | None = Field(default=None, description="how it was made from its parent (method, weight, format)")
    children: list[LineageNode] = Field(default_factory=list)


# --- jobs ------------------------------------------------------------------------------------

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_DONE: tuple[str, ...] = ("succeeded", "failed", "cancelled")


class JobLogLine(_Model):
    at: datetime
    message: str


class JobInfo(_Model):
    """A job: a merge, export, pipeline or Hub import/export/sync run by a worker. ``result`` is
    the local command's result (a ``PipelineResult``, ``ExportResult`` or Hub result as JSON) once
    it succeeded; ``error`` is
    the error the local command would have raised (``{"code", "message", "hint"}``)."""

    id: str
    kind: Literal["pipeline", "export", "hub"]
    queue: str = Field(description="cpu or gpu: the workers that may take it")
    state: JobState
    request: dict[str, Any]
    dedup_key: str = Field(description="sha256 of the request: identical requests while one is active share it")
    progress: dict[str, Any] | None = Field(default=None, description="{step, done, total, unit} of the running step")
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    log: list[JobLogLine] = Field(default_factory=list)
    cancel_requested: bool = False
    attempts: int = 0
    worker: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    joined: bool = Field(default=False, description="true when the submission joined an identical active job")
    recorded: bool = Field(
        default=False,
        description="true when the request was answered from the catalog's record of its recipe, with no job: "
        "`id` is empty and `result` is the record",
    )

    @property
    def done(self) -> bool:
        return self.state in JOB_DONE
