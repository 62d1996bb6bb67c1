"""The catalog: adapter names, versions, tags and metrics, over SQLAlchemy.

Every public method is one managed session and returns domain types (``lora_hub.types``).
Version numbers come from a per-name counter that is read and bumped under a row lock
(``SELECT ... FOR UPDATE`` on Postgres, ``BEGIN IMMEDIATE`` on SQLite), in the same transaction
that inserts the version, so concurrent pushes get distinct numbers with no gaps.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased, undefer

from lora_hub.catalog.db import Database
from lora_hub.catalog.query import TEXT_FIELDS, Condition, Sort, parse_sort, parse_where
from lora_hub.catalog.tables import (
    AdapterRow,
    BaseFitRow,
    BaseRow,
    FileHashRow,
    MergeRow,
    MetricRow,
    TagRow,
    TargetRow,
    VersionFileRow,
    VersionRow,
    utcnow,
)
from lora_hub.errors import (
    AdapterNotFoundError,
    BaseNotFoundError,
    ConflictError,
    InvalidArgumentError,
    VersionNotFoundError,
)
from lora_hub.refs import LATEST, AdapterName, Ref
from lora_hub.types import (
    AdapterFacts,
    AdapterLayout,
    AdapterVersion,
    BaseFile,
    BaseModelInfo,
    BaseTensor,
    FileEntry,
    ListQuery,
    MergeRecord,
    MergeReport,
)

StatKey = tuple[str, int, int, int]

_COLUMNS: dict[str, Any] = {
    "version": VersionRow.version,
    "rank": VersionRow.rank,
    "alpha": VersionRow.alpha,
    "params": VersionRow.num_params,
    "size": VersionRow.size_bytes,
    "created": VersionRow.id,  # ids grow with time, and are indexed
    "dtype": VersionRow.dtype,
    "task_type": VersionRow.task_type,
    "base_model": VersionRow.base_model_name,
    "name": AdapterRow.name,
    "namespace": AdapterRow.namespace,
}
MAX_LIST_LIMIT = 10_000
# What a listed version needs (see ``Catalog._load``), as one row that serves as both the version
# and its adapter.
_LISTED = (
    VersionRow.id,
    VersionRow.version,
    VersionRow.digest,
    VersionRow.created_at,
    VersionRow.description,
    VersionRow.facts,
    VersionRow.base_name,
    VersionRow.base_fingerprint,
    AdapterRow.namespace,
    AdapterRow.name,
)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


# A condition matching at least this many rows is not selective enough to drive a query.
_BROAD_ROWS = 2000


def _compare(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    return {
        ">=": column >= value,
        "<=": column <= value,
        ">": column > value,
        "<": column < value,
        "=": column == value,
        "!=": column != value,
    }[op]


class Catalog:
    def __init__(self, database_url: str, *, migrate: bool = True) -> None:
        self.db = Database(database_url, migrate=migrate)

    def close(self) -> None:
        self.db.close()

    # --- writes -----------------------------------------------------------------------------

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
                return self._load(s, [(existing, adapter)], with_layout=True)[0], False
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
            return self._load(s, [(row, adapter)], with_layout=True)[0], True

    def tag(self, ref: Ref, tag: str) -> AdapterVersion:
        """Point ``tag`` at ``ref``'s version, moving it off any other version of the name."""
        with self.db.session(write=True) as s:
            row, adapter = self._resolve(s, ref)
            self._move_tag(s, adapter.id, tag, row.id)
            s.flush()
            return self._load(s, [(row, adapter)], with_layout=False)[0]

    def untag(self, name: AdapterName, tag: str) -> AdapterVersion:
        with self.db.session(write=True) as s:
            row, adapter = self._resolve(s, Ref(name, tag))
            s.execute(delete(TagRow).where(TagRow.adapter_id == adapter.id, TagRow.tag == tag))
            return self._load(s, [(row, adapter)], with_layout=False)[0]

    def set_metrics(self, ref: Ref, metrics: dict[str, float], *, remove: Iterable[str] = ()) -> AdapterVersion:
        with self.db.session(write=True) as s:
            row, adapter = self._resolve(s, ref)
            keys = set(metrics) | set(remove)
            if keys:
                s.execute(delete(MetricRow).where(MetricRow.version_id == row.id, MetricRow.key.in_(keys)))
            s.add_all(MetricRow(version_id=row.id, key=k, value=v) for k, v in metrics.items())
            s.flush()
            return self._load(s, [(row, adapter)], with_layout=False)[0]

    def delete_version(self, ref: Ref) -> AdapterVersion:
        """Remove one version (its tags and metrics go with it; its blobs wait for ``gc``)."""
        with self.db.session(write=True) as s:
            row, adapter = self._resolve(s, ref)
            gone = self._load(s, [(row, adapter)], with_layout=False)[0]
            for table in (TagRow, MetricRow, TargetRow, VersionFileRow):
                s.execute(delete(table).where(table.version_id == row.id))
            s.execute(delete(VersionRow).where(VersionRow.id == row.id))
            return gone

    # --- reads ------------------------------------------------------------------------------

    def get(self, ref: Ref) -> AdapterVersion:
        with self.db.session() as s:
            row, adapter = self._resolve(s, ref, with_layout=True)
            return self._load(s, [(row, adapter)], with_layout=True)[0]

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
            return self._load(s, [tuple(hit)], with_layout=True)[0] if hit else None  # type: ignore[list-item]

    def list(self, query: ListQuery) -> list[AdapterVersion]:
        conditions = parse_where(query.where)
        sort = parse_sort(query.sort)
        if not 1 <= query.limit <= MAX_LIST_LIMIT:
            raise InvalidArgumentError(f"--limit must be between 1 and {MAX_LIST_LIMIT}")
        # Plain columns, not ORM entities: building 100 mapped objects cost more than the query.
        stmt = select(*_LISTED).select_from(VersionRow).join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
        if query.namespace is not None:
            stmt = stmt.where(AdapterRow.namespace == query.namespace)
        if query.name is not None:
            stmt = stmt.where(AdapterRow.name == query.name)
        if query.rank is not None:
            stmt = stmt.where(VersionRow.rank == query.rank)
        if query.base is not None:
            stmt = stmt.where(self._fits_base(query.base))
        if query.target is not None:
            stmt = stmt.where(exists().where(TargetRow.version_id == VersionRow.id, TargetRow.target == query.target))
        if query.tag is not None:
            stmt = stmt.where(exists().where(TagRow.version_id == VersionRow.id, TagRow.tag == query.tag))
        if query.latest_only:
            newest = aliased(VersionRow)
            stmt = stmt.where(
                ~exists().where(newest.adapter_id == VersionRow.adapter_id, newest.version > VersionRow.version)
            )
        metric_alias: dict[str, Any] = {}
        sort_metric = sort.field if sort is not None and sort.is_metric else None
        with self.db.session() as s:
            for cond in conditions:
                stmt = self._apply_condition(s, stmt, cond, metric_alias, sort_metric)
            if sort is not None and sort.is_metric:
                return self._list_by_metric(s, stmt, sort, metric_alias.get(sort.field), query.limit)
            order: list[Any] = []
            if sort is not None:
                col = _COLUMNS[sort.field]
                order.append(col.desc() if sort.descending else col.asc())
            order.append(VersionRow.id.desc())
            rows = [(r, r) for r in s.execute(stmt.order_by(*order).limit(query.limit)).all()]
            return self._load(s, rows, with_layout=False)  # type: ignore[arg-type]

    def _list_by_metric(self, s: Session, stmt: Any, sort: Sort, joined: Any, limit: int) -> list[AdapterVersion]:
        """Sorted by a metric, versions without it last. Two queries rather than one outer join
        ordered by ``value IS NULL``: each walks an index (metrics ``(key, value, version_id)``,
        versions by id) and stops at ``limit`` rows, where the outer join sorted every version."""
        m = joined
        if m is None:
            m = aliased(MetricRow)
            stmt_with = stmt.join(m, and_(m.version_id == VersionRow.id, m.key == sort.field))
        else:
            stmt_with = stmt
        value = m.value.desc() if sort.descending else m.value.asc()
        rows = [(r, r) for r in s.execute(stmt_with.order_by(value, m.version_id.desc()).limit(limit)).all()]
        if joined is None and len(rows) < limit:
            without = ~exists().where(MetricRow.version_id == VersionRow.id, MetricRow.key == sort.field)
            rest = stmt.where(without).order_by(VersionRow.id.desc()).limit(limit - len(rows))
            rows += [(r, r) for r in s.execute(rest).all()]
        return self._load(s, rows, with_layout=False)  # type: ignore[arg-type]

    def referenced_digests(self) -> set[str]:
        """Every blob a version or a stored base refers to."""
        with self.db.session() as s:
            digests = set(s.scalars(select(VersionFileRow.digest).distinct()))
            for files in s.scalars(select(BaseRow.files).where(BaseRow.stored.is_(True))):
                digests.update(f["digest"] for f in files if f.get("digest"))
            return digests

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
            return self._load(s, [(row, adapter)], with_layout=True)[0], row.base_model_type

    # --- bases ------------------------------------------------------------------------------

    def add_base(self, info: BaseModelInfo) -> tuple[BaseModelInfo, bool]:
        """Register ``info`` under ``info.name``. The same content again updates where it lives
        (path, stored files) and returns ``created=False``; other content under that name is a
        conflict."""
        assert info.name is not None and info.tensors is not None
        with self.db.session(write=True) as s:
            row = s.scalar(select(BaseRow).where(BaseRow.name == info.name))
            if row is not None and row.content_fingerprint != info.content_fingerprint:
                raise ConflictError(
                    f"base {info.name} is already registered with other content ({row.content_fingerprint})",
                    hint=f"choose another name, or `lorahub base rm {info.name}` first",
                )
            created = row is None
            if row is None:
                row = BaseRow(
                    name=info.name,
                    content_fingerprint=info.content_fingerprint,
                    structure_fingerprint=info.structure_fingerprint,
                    model_type=info.model_type,
                    architectures=info.architectures,
                    dtype=info.dtype,
                    num_params=info.num_params,
                    num_tensors=info.num_tensors,
                    size_bytes=info.size_bytes,
                    tensors={n: t.model_dump() for n, t in info.tensors.items()},
                    lineage=info.lineage,
                    created_at=utcnow(),
                    stored=False,
                    files=[],
                )
                s.add(row)
            row.path = info.path
            row.tensors = {n: t.model_dump() for n, t in info.tensors.items()}  # the same content, maybe re-sharded
            stored_before = {f["path"]: f.get("digest") for f in row.files or []}
            row.stored = bool(row.stored or info.stored)
            row.files = [{**f.model_dump(), "digest": f.digest or stored_before.get(f.path)} for f in info.files]
            s.flush()
            return self._base(row, with_tensors=True), created

    def get_base(self, name: str, *, with_tensors: bool = True) -> BaseModelInfo:
        with self.db.session() as s:
            stmt = select(BaseRow).where(BaseRow.name == name)
            if with_tensors:
                stmt = stmt.options(undefer(BaseRow.tensors))
            row = s.scalar(stmt)
            if row is None:
                raise BaseNotFoundError(name)
            return self._base(row, with_tensors=with_tensors)

    def find_base(self, name: str) -> bool:
        with self.db.session() as s:
            return s.scalar(select(BaseRow.id).where(BaseRow.name == name)) is not None

    def list_bases(self) -> list[BaseModelInfo]:
        with self.db.session() as s:
            return [self._base(r, with_tensors=False) for r in s.scalars(select(BaseRow).order_by(BaseRow.name))]

    def remove_base(self, name: str) -> BaseModelInfo:
        with self.db.session(write=True) as s:
            row = s.scalar(select(BaseRow).where(BaseRow.name == name))
            if row is None:
                raise BaseNotFoundError(name)
            gone = self._base(row, with_tensors=False)
            s.execute(delete(BaseFitRow).where(BaseFitRow.base_id == row.id))
            s.execute(delete(BaseRow).where(BaseRow.id == row.id))
            return gone

    def bases_without_fit(self, signature: str) -> list[str]:
        with self.db.session() as s:
            done = select(BaseFitRow.base_id).where(BaseFitRow.signature == signature)
            return list(s.scalars(select(BaseRow.name).where(BaseRow.id.not_in(done)).order_by(BaseRow.name)))

    def signatures_without_fit(self, base: str) -> list[tuple[str, AdapterVersion, str | None]]:
        """One representative version (with layout) per structure signature not yet checked
        against ``base``, with the model type it expects."""
        with self.db.session() as s:
            base_id = s.scalar(select(BaseRow.id).where(BaseRow.name == base))
            if base_id is None:
                raise BaseNotFoundError(base)
            done = select(BaseFitRow.signature).where(BaseFitRow.base_id == base_id)
            firsts = (
                select(func.min(VersionRow.id))
                .where(VersionRow.signature.is_not(None), VersionRow.signature.not_in(done))
                .group_by(VersionRow.signature)
            )
            rows = [
                tuple(r)
                for r in s.execute(
                    select(VersionRow, AdapterRow)
                    .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
                    .where(VersionRow.id.in_(firsts))
                    .options(undefer(VersionRow.layout))
                ).all()
            ]
            loaded = self._load(s, rows, with_layout=True)  # type: ignore[arg-type]
            return [(row.signature, v, row.base_model_type) for (row, _), v in zip(rows, loaded, strict=True)]  # type: ignore[misc]

    def record_fits(self, base: str, fits: dict[str, bool]) -> None:
        if not fits:
            return
        with self.db.session(write=True) as s:
            base_id = s.scalar(select(BaseRow.id).where(BaseRow.name == base))
            if base_id is None:
                raise BaseNotFoundError(base)
            s.execute(delete(BaseFitRow).where(BaseFitRow.base_id == base_id, BaseFitRow.signature.in_(fits)))
            s.add_all(BaseFitRow(base_id=base_id, signature=sig, fits=ok) for sig, ok in fits.items())

    # --- merges -----------------------------------------------------------------------------

    def record_merge(self, record: MergeRecord) -> MergeRecord:
        with self.db.session(write=True) as s:
            row = s.get(MergeRow, record.recipe_digest)
            if row is None:
                row = MergeRow(recipe_digest=record.recipe_digest)
                s.add(row)
            row.recipe = record.recipe
            row.output_path = record.output_path
            row.content_fingerprint = record.content_fingerprint
            row.name = record.name
            row.report = record.report.model_dump(mode="json")
            row.versions = record.versions
            row.created_at = utcnow()
            s.flush()
            return self._merge(row)

    def find_merge(self, recipe_digest: str) -> MergeRecord | None:
        with self.db.session() as s:
            row = s.get(MergeRow, recipe_digest)
            return self._merge(row) if row is not None else None

    @staticmethod
    def _merge(row: MergeRow) -> MergeRecord:
        return MergeRecord(
            recipe_digest=row.recipe_digest,
            recipe=row.recipe,
            output_path=row.output_path,
            content_fingerprint=row.content_fingerprint,
            name=row.name,
            report=MergeReport.model_validate(row.report),
            versions=row.versions,
            created_at=_aware(row.created_at),
        )

    # --- the tensor-hash cache (compat.HashCache) --------------------------------------------

    def get_hashes(self, key: StatKey) -> dict[str, str] | None:
        path, size, mtime_ns, inode = key
        with self.db.session() as s:
            row = s.get(FileHashRow, path)
            if row is None or (row.size, row.mtime_ns, row.inode) != (size, mtime_ns, inode):
                return None
            return dict(row.digests)

    def put_hashes(self, key: StatKey, digests: dict[str, str]) -> None:
        path, size, mtime_ns, inode = key
        with self.db.session(write=True) as s:
            row = s.get(FileHashRow, path)
            if row is None:
                row = FileHashRow(path=path)
                s.add(row)
            row.size, row.mtime_ns, row.inode, row.digests, row.updated_at = size, mtime_ns, inode, digests, utcnow()

    # --- helpers ----------------------------------------------------------------------------

    def _fits_base(self, base: str) -> ColumnElement[bool]:
        """Versions that fit the registered base ``base`` (or, for a name that is not a
        registered base, whose config names it)."""
        base_id = select(BaseRow.id).where(BaseRow.name == base).scalar_subquery()
        content = select(BaseRow.content_fingerprint).where(BaseRow.name == base).scalar_subquery()
        fitting = select(BaseFitRow.signature).where(BaseFitRow.base_id == base_id, BaseFitRow.fits.is_(True))
        registered = exists().where(BaseRow.name == base)
        # Pushed against exactly this content, or of a structure that fits it.
        trained_on = VersionRow.base_fingerprint == content
        return ((VersionRow.signature.in_(fitting) | trained_on) & registered) | (
            ~registered & (VersionRow.base_model_name == base)
        )

    @staticmethod
    def _base(row: BaseRow, *, with_tensors: bool) -> BaseModelInfo:
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
            created_at=_aware(row.created_at),
            lineage=row.lineage,
            tensors={n: BaseTensor.model_validate(t) for n, t in row.tensors.items()} if with_tensors else None,
        )

    def _apply_condition(
        self, s: Session, stmt: Any, cond: Condition, metric_alias: dict[str, Any], sort_metric: str | None
    ) -> Any:
        """Add ``cond`` to ``stmt``. On SQLite, whose planner has no statistics on value ranges
        and takes any indexed range for a selective one, a condition that a bounded probe finds
        to match many rows must not drive the query: for ``accuracy>=0.5 --sort -bleu`` it sorted
        every matching version (200 ms over 100,000) instead of walking the bleu index to the
        first 20 that match (0.2 ms). Such a condition becomes a per-row check (``EXISTS`` for a
        metric, ``likely()`` for a column); a selective one still drives. Postgres keeps
        statistics and plans this itself."""
        broad = self.db.is_sqlite and cond.field not in TEXT_FIELDS and self._broad(s, cond)
        if cond.is_metric:
            if broad and cond.field != sort_metric and cond.field not in metric_alias:
                return stmt.where(
                    exists().where(
                        MetricRow.version_id == VersionRow.id,
                        MetricRow.key == cond.field,
                        _compare(MetricRow.value, cond.op, cond.value),
                    )
                )
            m = metric_alias.get(cond.field)
            if m is None:
                m = metric_alias[cond.field] = aliased(MetricRow)
                stmt = stmt.join(m, and_(m.version_id == VersionRow.id, m.key == cond.field))
            clause = _compare(m.value, cond.op, cond.value)
        elif cond.field == "created":
            raise InvalidArgumentError("'created' can be sorted on, not compared", hint="use --sort -created")
        else:
            clause = _compare(_COLUMNS[cond.field], cond.op, cond.value)
        return stmt.where(func.likely(clause) if broad else clause)

    @staticmethod
    def _broad(s: Session, cond: Condition) -> bool:
        """Whether a metric condition matches at least ``_BROAD_ROWS`` rows (counted up to there,
        on the index); column conditions (rank, size...) are taken as broad."""
        if not cond.is_metric:
            return True
        probe = select(MetricRow.version_id).where(
            MetricRow.key == cond.field, _compare(MetricRow.value, cond.op, cond.value)
        )
        return s.scalar(select(func.count()).select_from(probe.limit(_BROAD_ROWS).subquery())) >= _BROAD_ROWS

    def _lock_adapter(self, s: Session, name: AdapterName) -> AdapterRow:
        values = {"namespace": name.namespace, "name": name.name, "next_version": 1, "created_at": utcnow()}
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

    @staticmethod
    def _load(s: Session, rows: Sequence[tuple[VersionRow, AdapterRow]], *, with_layout: bool) -> list[AdapterVersion]:
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
            files[vid].append(FileEntry(path=path, digest=digest, size=size))
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
                    created_at=_aware(row.created_at),
                    description=row.description,
                    tags=tags[row.id],
                    metrics=metrics[row.id],
                    files=files[row.id],
                    facts=AdapterFacts.model_validate(row.facts),
                    layout=AdapterLayout.model_validate(row.layout) if with_layout else None,
                    lineage=row.lineage if with_layout else None,
                    base=row.base_name,
                    base_fingerprint=row.base_fingerprint,
                )
            )
        return out
