"""``list``: versions matching a query (``lora_hub.catalog.query``), one page at a time."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from lora_hub.catalog.convert import versions_from_rows
from lora_hub.catalog.db import Database
from lora_hub.catalog.query import TEXT_FIELDS, Condition, Sort, parse_sort, parse_where
from lora_hub.catalog.tables import AdapterRow, BaseFitRow, BaseRow, MetricRow, TagRow, TargetRow, VersionRow
from lora_hub.errors import InvalidArgumentError
from lora_hub.types import ListQuery, VersionPage

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
COUNT_CAP = 1_000  # counted past the offset when asked (``ListQuery.count``): "1,000 or more" beyond
# What a listed version needs (see ``convert.versions_from_rows``), as one row that serves as both
# the version and its adapter.
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


def _text_condition(cond: Condition) -> ColumnElement[bool]:
    """``field = word`` ignoring case; ``base_model`` matches the config's ``base_model_name_or_path``
    or the registered base the version was pushed against (``push --base``)."""
    value = str(cond.value).lower()
    columns = [_COLUMNS[cond.field]] + ([VersionRow.base_name] if cond.field == "base_model" else [])
    lowered = [func.coalesce(func.lower(c), "") for c in columns]
    if cond.op == "=":
        return or_(*(c == value for c in lowered))
    # A version with no value at all never matches, as a metric it lacks never does.
    return and_(*(c != value for c in lowered), or_(*(c.is_not(None) for c in columns)))


def search(db: Database, query: ListQuery) -> VersionPage:
    """The page of versions matching ``query``: at most ``limit`` from ``offset``, with the
    number matching in all (counted only when the page does not show them all)."""
    conditions = parse_where(query.where)
    sort = parse_sort(query.sort)
    if not 1 <= query.limit <= MAX_LIST_LIMIT:
        raise InvalidArgumentError(f"--limit must be between 1 and {MAX_LIST_LIMIT}")
    if query.offset < 0:
        raise InvalidArgumentError(f"--offset must be 0 or more, got {query.offset}")
    # Plain columns, not ORM entities: building 100 mapped objects cost more than the query.
    stmt = select(*_LISTED).select_from(VersionRow).join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
    if query.namespace is not None:
        stmt = stmt.where(AdapterRow.namespace == query.namespace)
    if query.name is not None:
        stmt = stmt.where(AdapterRow.name == query.name)
    if query.rank is not None:
        stmt = stmt.where(VersionRow.rank == query.rank)
    if query.base is not None:
        stmt = stmt.where(_fits_base(query.base))
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
    # One row more than asked says whether the page shows everything from its offset on.
    want = query.limit + 1
    with db.session() as s:
        for cond in conditions:
            stmt = _apply_condition(db, s, stmt, cond, metric_alias, sort_metric)
        if sort is not None and sort.is_metric:
            rows = _rows_by_metric(s, stmt, sort, metric_alias.get(sort.field), query.offset, want)
        else:
            order: list[Any] = []
            if sort is not None:
                col = _COLUMNS[sort.field]
                order.append(col.desc() if sort.descending else col.asc())
            order.append(VersionRow.id.desc())
            rows = [(r, r) for r in s.execute(stmt.order_by(*order).offset(query.offset).limit(want)).all()]
        capped, more = False, len(rows) == want
        total: int | None = None
        if not more and (rows or query.offset == 0):
            total = query.offset + len(rows)  # the page shows everything from its offset on: free
        elif query.count:
            # Counted up to a cap, and only when asked: past a full page, a count costs more than the
            # page itself (up to 150 ms over 100,000 versions for --latest), so the API skips it.
            bounded = stmt.order_by(None).limit(query.offset + COUNT_CAP + 1).subquery()
            counted = s.scalar(select(func.count()).select_from(bounded)) or 0
            capped = counted > query.offset + COUNT_CAP
            total = min(counted, query.offset + COUNT_CAP)
        items = versions_from_rows(s, rows[: query.limit], with_layout=False)
    notes = []
    if sort_metric and items and not any(sort_metric in v.metrics for v in items):
        notes.append(f"no listed version has the metric {sort_metric!r}, so --sort left the default order")
    return VersionPage(
        items=items,
        offset=query.offset,
        limit=query.limit,
        more=more,
        total=total,
        total_capped=capped,
        notes=notes,
    )


def _rows_by_metric(s: Session, stmt: Any, sort: Sort, joined: Any, offset: int, want: int) -> list[Any]:
    """Sorted by a metric, versions without it last. Two queries rather than one outer join
    ordered by ``value IS NULL``: each walks an index (metrics ``(key, value, version_id)``,
    versions by id) and stops at ``offset + want`` rows, where the outer join sorted every version."""
    m = joined
    if m is None:
        m = aliased(MetricRow)
        stmt_with = stmt.join(m, and_(m.version_id == VersionRow.id, m.key == sort.field))
    else:
        stmt_with = stmt
    value = m.value.desc() if sort.descending else m.value.asc()
    ordered = stmt_with.order_by(value, m.version_id.desc())
    rows = [(r, r) for r in s.execute(ordered.offset(offset).limit(want)).all()]
    if joined is None and len(rows) < want:
        if rows or offset == 0:
            with_count = offset + len(rows)
        else:
            with_count = s.scalar(select(func.count()).select_from(stmt_with.subquery())) or 0
        without = ~exists().where(MetricRow.version_id == VersionRow.id, MetricRow.key == sort.field)
        rest = stmt.where(without).order_by(VersionRow.id.desc())
        rest = rest.offset(max(0, offset - with_count)).limit(want - len(rows))
        rows += [(r, r) for r in s.execute(rest).all()]
    return rows


def _apply_condition(
    db: Database, s: Session, stmt: Any, cond: Condition, metric_alias: dict[str, Any], sort_metric: str | None
) -> Any:
    """Add ``cond`` to ``stmt``. On SQLite, whose planner has no statistics on value ranges
    and takes any indexed range for a selective one, a condition that a bounded probe finds
    to match many rows must not drive the query: for ``accuracy>=0.5 --sort -bleu`` it sorted
    every matching version (200 ms over 100,000) instead of walking the bleu index to the
    first 20 that match (0.2 ms). Such a condition becomes a per-row check (``EXISTS`` for a
    metric, ``likely()`` for a column); a selective one still drives. Postgres keeps
    statistics and plans this itself."""
    broad = db.is_sqlite and cond.field not in TEXT_FIELDS and _broad(s, cond)
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
    elif cond.field in TEXT_FIELDS:
        clause = _text_condition(cond)
    else:
        clause = _compare(_COLUMNS[cond.field], cond.op, cond.value)
    return stmt.where(func.likely(clause) if broad else clause)


def _broad(s: Session, cond: Condition) -> bool:
    """Whether a metric condition matches at least ``_BROAD_ROWS`` rows (counted up to there,
    on the index); column conditions (rank, size...) are taken as broad."""
    if not cond.is_metric:
        return True
    probe = select(MetricRow.version_id).where(
        MetricRow.key == cond.field, _compare(MetricRow.value, cond.op, cond.value)
    )
    return (s.scalar(select(func.count()).select_from(probe.limit(_BROAD_ROWS).subquery())) or 0) >= _BROAD_ROWS


def _fits_base(base: str) -> ColumnElement[bool]:
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
