"""Exports by key: the same export is served from its record (``lora_hub.core.exporting``)."""

from __future__ import annotations

from sqlalchemy import delete, select

from lora_hub.catalog.convert import aware
from lora_hub.catalog.db import Database
from lora_hub.catalog.tables import ExportRow, utcnow
from lora_hub.types import ExportEntry


def _entry(row: ExportRow) -> ExportEntry:
    return ExportEntry(
        key=row.key,
        source_fingerprint=row.source_fingerprint,
        base_name=row.base_name,
        format=row.format,
        output_path=row.output_path,
        record=row.record,
        created_at=aware(row.created_at),
    )


class Exports:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, entry: ExportEntry) -> ExportEntry:
        """Record (or re-point) the export of ``entry.key``."""
        with self.db.session(write=True) as s:
            row = s.get(ExportRow, entry.key)
            if row is None:
                row = ExportRow(key=entry.key)
                s.add(row)
            row.source_fingerprint = entry.source_fingerprint
            row.base_name = entry.base_name
            row.format = entry.format
            row.output_path = entry.output_path
            row.record = entry.record
            row.created_at = utcnow()
            s.flush()
            return _entry(row)

    def find(self, key: str) -> ExportEntry | None:
        with self.db.session() as s:
            row = s.get(ExportRow, key)
            return _entry(row) if row is not None else None

    def of_source(self, fingerprint: str) -> list[ExportEntry]:
        """Every recorded export of the model with this content fingerprint, newest first."""
        with self.db.session() as s:
            rows = s.scalars(
                select(ExportRow)
                .where(ExportRow.source_fingerprint == fingerprint)
                .order_by(ExportRow.created_at.desc())
            )
            return [_entry(r) for r in rows]

    def forget(self, key: str) -> None:
        with self.db.session(write=True) as s:
            s.execute(delete(ExportRow).where(ExportRow.key == key))
