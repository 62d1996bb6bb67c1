"""Rows to domain types (``lora_hub.types``): the only way data leaves the catalog package."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_hub.catalog.tables import AdapterRow, BaseRow, MergeRow, MetricRow, TagRow, VersionFileRow, VersionRow
from lora_hub.types import (
    AdapterFacts,
    AdapterLayout,
    AdapterVersion,
    BaseFile,
    BaseModelInfo,
    BaseTensor,
    FileEntry,
    MergeRecord,
    MergeReport,
)

_FACTS_CACHE_SIZE = 4096
_facts_cache: OrderedDict[tuple[int, str], AdapterFacts] = OrderedDict()
_facts_lock = threading.Lock()


def _facts(row: VersionRow) -> AdapterFacts:
    """The version's facts, validated once per process: a version's facts never change (its row is
    immutable but for tags and metrics, which live in other tables), and ``AdapterFacts`` is
    frozen, so one object may serve every request. Keyed by id and digest, so a row id reused
    after a delete and a new push cannot get another version's facts."""
    key = (row.id, row.digest)
    with _facts_lock:
        found = _facts_cache.get(key)
        if found is not None:
            _facts_cache.move_to_end(key)
            return found
    facts = AdapterFacts.model_validate(row.facts)
    with _facts_lock:
        _facts_cache[key] = facts
        while len(_facts_cache) > _FACTS_CACHE_SIZE:
            _facts_cache.popitem(last=False)
    return facts


def versions_from_rows(
    s: Session, rows: Sequence[tuple[VersionRow, AdapterRow]], *, with_layout: bool
) -> list[AdapterVersion]:
    """Versions with their tags, metrics and files, each row serving as both version and adapter."""
    if not rows:
        return []
    ids = [row.id for row, _ in rows]
    tags: dict[int, list[str]] = defaultdict(list)
    for vid, tag in s.execute(
        select(TagRow.version_id, TagRow.tag).where(TagRow.version_id.in_(ids)).order_by(TagRow.tag)
    ):
        tags[vid].append(tag)
    metrics: dict[int, dict[str, float]] = defaultdict(dict)
    for vid, key, value in s.execute(
        select(MetricRow.version_id, MetricRow.key, MetricRow.value)
        .where(MetricRow.version_id.in_(ids))
        .order_by(MetricRow.key)
    ):
        metrics[vid][key] = value
    files: dict[int, list[FileEntry]] = defaultdict(list)
    for vid, path, digest, size in s.execute(
        select(VersionFileRow.version_id, VersionFileRow.path, VersionFileRow.digest, VersionFileRow.size)
        .where(VersionFileRow.version_id.in_(ids))
        .order_by(VersionFileRow.path)
    ):
        # Trusted rows, written by the catalog from validated models: built without validating again.
        files[vid].append(FileEntry.model_construct(path=path, digest=digest, size=size))
    out = []
    for row, adapter in rows:
        full = f"{adapter.namespace}/{adapter.name}" if adapter.namespace else adapter.name
        out.append(
            AdapterVersion(
                namespace=adapter.namespace,
                name=adapter.name,
                version=row.version,
                ref=f"{full}:{row.version}",
                digest=row.digest,
                created_at=aware(row.created_at),
                description=row.description,
                tags=tags[row.id],
                metrics=metrics[row.id],
                files=files[row.id],
                facts=_facts(row),
                layout=AdapterLayout.model_validate(row.layout) if with_layout else None,
                lineage=row.lineage if with_layout else None,
                base=row.base_name,
                base_fingerprint=row.base_fingerprint,
            )
        )
    return out


def base_info(row: BaseRow, *, with_tensors: bool) -> BaseModelInfo:
    return BaseModelInfo(
        name=row.name,
        path=row.path,
        stored=row.stored,
        content_fingerprint=row.content_fingerprint,
        structure_fingerprint=row.structure_fingerprint,
        model_type=row.model_type,
        architectures=list(row.architectures),
        dtype=row.dtype,
        num_params=row.num_params,
        num_tensors=row.num_tensors,
        size_bytes=row.size_bytes,
        files=[BaseFile.model_validate(f) for f in row.files],
        created_at=aware(row.created_at),
        lineage=row.lineage,
        tensors={n: BaseTensor.model_validate(t) for n, t in row.tensors.items()} if with_tensors else None,
    )


def merge_record(row: MergeRow) -> MergeRecord:
    return MergeRecord(
        recipe_digest=row.recipe_digest,
        recipe=row.recipe,
        output_path=row.output_path,
        content_fingerprint=row.content_fingerprint,
        name=row.name,
        report=MergeReport.model_validate(row.report),
        versions=row.versions,
        created_at=aware(row.created_at),
    )


def aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
