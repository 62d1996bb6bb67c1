"""Merges by recipe: the same recipe is served from its record instead of recomputed."""

from __future__ import annotations

from sqlalchemy import select

from lora_hub.catalog.convert import merge_record
from lora_hub.catalog.db import Database
from lora_hub.catalog.tables import MergeRow, utcnow
from lora_hub.types import MergeRecord


class Merges:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, record: MergeRecord) -> MergeRecord:
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
            return merge_record(row)

    def find(self, recipe_digest: str) -> MergeRecord | None:
        with self.db.session() as s:
            row = s.get(MergeRow, recipe_digest)
            return merge_record(row) if row is not None else None

    def all(self) -> list[MergeRecord]:
        """Every recorded merge (``lorahub lineage`` follows adapters and bases through them)."""
        with self.db.session() as s:
            return [merge_record(row) for row in s.scalars(select(MergeRow).order_by(MergeRow.created_at))]
