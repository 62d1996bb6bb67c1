"""Adapter names, versions, tags, metrics and descriptions.

Version numbers come from a per-name counter that is read and bumped under a row lock
(``SELECT ... FOR UPDATE`` on Postgres, ``BEGIN IMMEDIATE`` on SQLite), in the same transaction
that inserts the version, so concurrent pushes get distinct numbers with no gaps.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, undefer

from lora_hub.catalog.convert import versions_from_rows
from lora_hub.catalog.db import Database
from lora_hub.catalog.listing import search
from lora_hub.catalog.tables import (
    AdapterRow,
    MetricRow,
    TagRow,
    TargetRow,
    VersionFileRow,
    VersionRow,
    utcnow,
)
from lora_hub.errors import AdapterNotFoundError, NotFoundError, VersionNotFoundError
from lora_hub.refs import LATEST, AdapterName, Ref
from lora_hub.types import AdapterFacts, AdapterLayout, AdapterVersion, BaseModelInfo, FileEntry, ListQuery, VersionPage


class Adapters:
    """Every public method is one managed session and returns domain types."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def derived(self) -> list[AdapterVersion]:
        """Every version made from others (combine, reduce, extract), with its lineage."""
        with self.db.session() as s:
            rows = s.execute(
                select(VersionRow, AdapterRow)
                .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
                .where(VersionRow.lineage.is_not(None))
                .options(undefer(VersionRow.lineage), undefer(VersionRow.layout))
                .order_by(VersionRow.id)
            ).all()
            return versions_from_rows(s, [(r[0], r[1]) for r in rows], with_layout=True)

    def search(self, query: ListQuery) -> VersionPage:
        """See ``lora_hub.catalog.listing.search``."""
        return search(self.db, query)

    def add_version(
        self,
        name: AdapterName,
        *,
        digest: str,
        facts: AdapterFacts,
        layout: AdapterLayout,
        files: Sequence[FileEntry],
        description: str | None = None,
        metrics: dict[str, float] | None = None,
        tags: Sequence[str] = (),
        lineage: dict[str, Any] | None = None,
        signature: str | None = None,
        base: BaseModelInfo | None = None,
    ) -> tuple[AdapterVersion, bool]:
        """Record a new version, or return the existing one with the same digest (``created=False``,
        nothing written)."""
        with self.db.session(write=True) as s:
            adapter = self._lock_adapter(s, name)
            existing = s.scalar(
                select(VersionRow).where(VersionRow.adapter_id == adapter.id, VersionRow.digest == digest)
            )
            if existing is not None:
                return versions_from_rows(s, [(existing, adapter)], with_layout=True)[0], False
            row = VersionRow(
                adapter_id=adapter.id,
                version=adapter.next_version,
                digest=digest,
                created_at=utcnow(),
                description=description,
                rank=facts.rank,
                alpha=facts.alpha,
                dtype=facts.dtype,
                num_params=facts.num_params,
                size_bytes=facts.size_bytes,
                task_type=facts.task_type,
                base_model_name=facts.base_model_name_or_path,
                facts=facts.model_dump(mode="json"),
                layout=layout.model_dump(mode="json"),
                lineage=lineage,
                signature=signature,
                base_name=base.name if base else None,  # None for an unregistered folder
                base_fingerprint=base.content_fingerprint if base else None,
                base_model_type=base.model_type if base else None,
            )
            adapter.next_version += 1
            s.add(row)
            s.flush()
            s.add_all(VersionFileRow(version_id=row.id, path=f.path, digest=f.digest, size=f.size) for f in files)
            s.add_all(TargetRow(version_id=row.id, target=t) for t in facts.target_modules)
            s.add_all(MetricRow(version_id=row.id, key=k, value=v) for k, v in (metrics or {}).items())
            for tag in tags:
                self._move_tag(s, adapter.id, tag, row.id)
            s.flush()
            return versions_from_rows(s, [(row, adapter)], with_layout=True)[0], True

    def tag(self, ref: Ref, tag: str) -> AdapterVersion:
        """Point ``tag`` at ``ref``'s version, moving it off any other version of the name."""
        with self.db.session(write=True) as s:
            row, adapter = self._resolve(s, ref)
            self._move_tag(s, adapter.id, tag, row.id)
            s.flush()
            return versions_from_rows(s, [(row, adapter)], with_layout=False)[0]

    def untag(self, name: AdapterName, tag: str) -> AdapterVersion:
        with self.db.session(write=True) as s:
            row, adapter = self._resolve(s, Ref(name, tag))
            s.execute(delete(TagRow).where(TagRow.adapter_id == adapter.id, TagRow.tag == tag))
            return versions_from_rows(s, [(row, adapter)], with_layout=False)[0]

    def set_metrics(self, ref: Ref, metrics: dict[str, float], *, remove: Iterable[str] = ()) -> AdapterVersion:
        with self.db.session(write=True) as s:
            row, adapter = self._resolve(s, ref)
            if remove:
                have = set(s.scalars(select(MetricRow.key).where(MetricRow.version_id == row.id)))
                missing = [k for k in remove if k not in have]
                if missing:
                    full = f"{adapter.namespace}/{adapter.name}" if adapter.namespace else adapter.name
                    raise NotFoundError(
                        f"{full}:{row.version} has no metric {', '.join(map(repr, missing))}; nothing was removed",
                        hint=f"its metrics: {', '.join(sorted(have)) or 'none'}",
                    )
            keys = set(metrics) | set(remove)
            if keys:
                s.execute(delete(MetricRow).where(MetricRow.version_id == row.id, MetricRow.key.in_(keys)))
            s.add_all(MetricRow(version_id=row.id, key=k, value=v) for k, v in metrics.items())
            s.flush()
            return versions_from_rows(s, [(row, adapter)], with_layout=False)[0]

    def set_description(self, ref: Ref, description: str | None) -> AdapterVersion:
        with self.db.session(write=True) as s:
            row, adapter = self._resolve(s, ref)
            row.description = description
            s.flush()
            return versions_from_rows(s, [(row, adapter)], with_layout=False)[0]

    def delete_version(self, ref: Ref) -> AdapterVersion:
        """Remove one version (its tags and metrics go with it; its blobs wait for ``gc``)."""
        with self.db.session(write=True) as s:
            row, adapter = self._resolve(s, ref)
            gone = versions_from_rows(s, [(row, adapter)], with_layout=False)[0]
            for table in (TagRow, MetricRow, TargetRow, VersionFileRow):
                s.execute(delete(table).where(table.version_id == row.id))
            s.execute(delete(VersionRow).where(VersionRow.id == row.id))
            return gone

    def get(self, ref: Ref) -> AdapterVersion:
        with self.db.session() as s:
            row, adapter = self._resolve(s, ref, with_layout=True)
            return versions_from_rows(s, [(row, adapter)], with_layout=True)[0]

    def find_by_digest(self, name: AdapterName, digest: str) -> AdapterVersion | None:
        with self.db.session() as s:
            hit = s.execute(
                select(VersionRow, AdapterRow)
                .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
                .where(
                    AdapterRow.namespace == name.namespace,
                    AdapterRow.name == name.name,
                    VersionRow.digest == digest,
                )
            ).first()
            return versions_from_rows(s, [tuple(hit)], with_layout=True)[0] if hit else None  # type: ignore[list-item]

    def versions_of(self, name: AdapterName) -> list[int]:
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(VersionRow.version)
                    .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
                    .where(AdapterRow.namespace == name.namespace, AdapterRow.name == name.name)
                    .order_by(VersionRow.version)
                )
            )

    def trained_on(self, ref: Ref) -> tuple[AdapterVersion, str | None]:
        """The version (with layout) and the model type of the base it was pushed against."""
        with self.db.session() as s:
            row, adapter = self._resolve(s, ref, with_layout=True)
            return versions_from_rows(s, [(row, adapter)], with_layout=True)[0], row.base_model_type

    def _lock_adapter(self, s: Session, name: AdapterName) -> AdapterRow:
        values = {"namespace": name.namespace, "name": name.name, "next_version": 1, "created_at": utcnow()}
        insert: Any
        if s.get_bind().dialect.name == "postgresql":
            # Imported here: the Postgres dialect package costs 0.1 s of start-up on SQLite.
            from sqlalchemy.dialects.postgresql import insert
        else:
            insert = sqlite_insert
        s.execute(insert(AdapterRow).values(**values).on_conflict_do_nothing(index_elements=["namespace", "name"]))
        return s.scalars(
            select(AdapterRow)
            .where(AdapterRow.namespace == name.namespace, AdapterRow.name == name.name)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()

    @staticmethod
    def _move_tag(s: Session, adapter_id: int, tag: str, version_id: int) -> None:
        s.execute(delete(TagRow).where(TagRow.adapter_id == adapter_id, TagRow.tag == tag))
        s.add(TagRow(adapter_id=adapter_id, tag=tag, version_id=version_id))

    def _resolve(self, s: Session, ref: Ref, *, with_layout: bool = False) -> tuple[VersionRow, AdapterRow]:
        adapter = s.scalar(
            select(AdapterRow).where(AdapterRow.namespace == ref.adapter.namespace, AdapterRow.name == ref.adapter.name)
        )
        if adapter is None:
            raise AdapterNotFoundError(str(ref.adapter), similar=self._similar(s, ref.adapter))
        stmt = select(VersionRow).where(VersionRow.adapter_id == adapter.id)
        if with_layout:
            stmt = stmt.options(undefer(VersionRow.layout), undefer(VersionRow.lineage))
        if ref.selector == LATEST:
            stmt = stmt.order_by(VersionRow.version.desc()).limit(1)
        elif ref.version is not None:
            stmt = stmt.where(VersionRow.version == ref.version)
        else:
            stmt = stmt.join(TagRow, TagRow.version_id == VersionRow.id).where(
                TagRow.adapter_id == adapter.id, TagRow.tag == ref.selector
            )
        row = s.scalar(stmt)
        if row is None:
            versions = list(
                s.scalars(
                    select(VersionRow.version).where(VersionRow.adapter_id == adapter.id).order_by(VersionRow.version)
                )
            )
            tags = list(s.scalars(select(TagRow.tag).where(TagRow.adapter_id == adapter.id).order_by(TagRow.tag)))
            raise VersionNotFoundError(str(ref.adapter), ref.selector, versions=versions, tags=tags)
        return row, adapter

    @staticmethod
    def _similar(s: Session, name: AdapterName) -> list[str]:
        candidates = s.execute(
            select(AdapterRow.namespace, AdapterRow.name)
            .where((AdapterRow.namespace == name.namespace) | (AdapterRow.name == name.name))
            .limit(2000)
        ).all()
        full = [f"{ns}/{n}" if ns else n for ns, n in candidates]
        return difflib.get_close_matches(str(name), full, n=3, cutoff=0.6)
