"""``lorahub lineage REF``: everything made from an adapter version or a base, as a tree.

From an adapter version (by digest, so that the same content under another name counts): the
adapters combined, reduced or extracted from it, the merges that used it, and, from each merged
model (by content fingerprint), its exports and the merges built on it in turn. From a base: its
exports and the merges built on it. The catalog answers from its records (merges by recipe,
exports by key, adapter lineages); nothing is read from disk.
"""

from __future__ import annotations

from lora_hub._context import Context
from lora_hub.core import adapters, bases
from lora_hub.core.common import is_base_name
from lora_hub.errors import NotFoundError
from lora_hub.types import AdapterVersion, ExportEntry, LineageNode, MergeRecord

MAX_DEPTH = 8


class _Index:
    """The catalog's records, read once per question."""

    def __init__(self, ctx: Context) -> None:
        self.merges = ctx.catalog.merges.all()
        self.derived = ctx.catalog.adapters.derived()
        self.ctx = ctx
        self._exports: dict[str, list[ExportEntry]] = {}

    def exports_of(self, fingerprint: str) -> list[ExportEntry]:
        if fingerprint not in self._exports:
            self._exports[fingerprint] = self.ctx.catalog.exports.of_source(fingerprint)
        return self._exports[fingerprint]


def lineage(ctx: Context, ref: str) -> LineageNode:
    """The tree of what was made from ``ref`` (an adapter reference, or a registered base's name)."""
    index = _Index(ctx)
    try:
        version = adapters.show(ctx, ref)
    except NotFoundError:
        if ":" in ref or not is_base_name(ref) or not ctx.catalog.bases.has(ref):
            raise
        info = bases.show_base(ctx, ref)
        root = LineageNode(kind="base", label=ref, fingerprint=info.content_fingerprint, path=info.path)
        return root.model_copy(update={"children": _from_model(index, info.content_fingerprint, 0)})
    return _from_adapter(index, version, None, 0)


def _from_adapter(index: _Index, version: AdapterVersion, how: str | None, depth: int) -> LineageNode:
    children: list[LineageNode] = []
    if depth < MAX_DEPTH:
        for other in index.derived:
            for item in (other.lineage or {}).get("inputs", []):
                if item.get("digest") == version.digest:
                    kind = (other.lineage or {}).get("kind", "derived")
                    method = (other.lineage or {}).get("method")
                    weight = item.get("weight")
                    made = f"{kind}" + (f" {method}" if method and method != kind else "")
                    made += f" @ {weight:g}" if isinstance(weight, int | float) else ""
                    children.append(_from_adapter(index, other, made, depth + 1))
        for record in index.merges:
            for item in record.recipe.get("adapters", []):
                if item.get("digest") == version.digest:
                    children.append(_from_merge(index, record, f"merged @ {item.get('weight', 1):g}", depth + 1))
    return LineageNode(kind="adapter", label=version.ref, digest=version.digest, how=how, children=children)


def _from_merge(index: _Index, record: MergeRecord, how: str, depth: int) -> LineageNode:
    method = record.recipe.get("method", "linear")
    return LineageNode(
        kind="merge",
        label=record.name or record.output_path,
        digest=record.recipe_digest,
        fingerprint=record.content_fingerprint,
        path=record.output_path,
        how=f"{how} ({method})",
        children=_from_model(index, record.content_fingerprint, depth + 1),
    )


def _from_model(index: _Index, fingerprint: str, depth: int) -> list[LineageNode]:
    """A model's exports, and the merges built on it."""
    nodes = [
        LineageNode(kind="export", label=e.format, digest=e.key, path=e.output_path, how="exported")
        for e in index.exports_of(fingerprint)
    ]
    if depth < MAX_DEPTH:
        nodes += [
            _from_merge(index, r, "base of a merge", depth + 1)
            for r in index.merges
            if r.recipe.get("base_fingerprint") == fingerprint
        ]
    return nodes
