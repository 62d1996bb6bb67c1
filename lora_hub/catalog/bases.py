"""Base models, which adapters fit them, and the tensor-hash cache."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import undefer

from lora_hub.catalog.convert import base_info, versions_from_rows
from lora_hub.catalog.db import Database
from lora_hub.catalog.tables import AdapterRow, BaseFitRow, BaseRow, FileHashRow, VersionRow, utcnow
from lora_hub.compat import StatKey
from lora_hub.errors import BaseNotFoundError, ConflictError
from lora_hub.types import AdapterVersion, BaseModelInfo


class Bases:
    """Registered bases and their fits. Every public method is one managed session."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, info: BaseModelInfo) -> tuple[BaseModelInfo, bool]:
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
            return base_info(row, with_tensors=True), created

    def get(self, name: str, *, with_tensors: bool = True) -> BaseModelInfo:
        with self.db.session() as s:
            stmt = select(BaseRow).where(BaseRow.name == name)
            if with_tensors:
                stmt = stmt.options(undefer(BaseRow.tensors))
            row = s.scalar(stmt)
            if row is None:
                raise BaseNotFoundError(name)
            return base_info(row, with_tensors=with_tensors)

    def has(self, name: str) -> bool:
        with self.db.session() as s:
            return s.scalar(select(BaseRow.id).where(BaseRow.name == name)) is not None

    def all(self) -> list[BaseModelInfo]:
        with self.db.session() as s:
            return [base_info(r, with_tensors=False) for r in s.scalars(select(BaseRow).order_by(BaseRow.name))]

    def remove(self, name: str) -> BaseModelInfo:
        with self.db.session(write=True) as s:
            row = s.scalar(select(BaseRow).where(BaseRow.name == name))
            if row is None:
                raise BaseNotFoundError(name)
            gone = base_info(row, with_tensors=False)
            s.execute(delete(BaseFitRow).where(BaseFitRow.base_id == row.id))
            s.execute(delete(BaseRow).where(BaseRow.id == row.id))
            return gone

    def without_fit(self, signature: str) -> list[str]:
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
            rows: list[tuple[VersionRow, AdapterRow]] = [
                (r[0], r[1])
                for r in s.execute(
                    select(VersionRow, AdapterRow)
                    .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
                    .where(VersionRow.id.in_(firsts))
                    .options(undefer(VersionRow.layout))
                ).all()
            ]
            loaded = versions_from_rows(s, rows, with_layout=True)
            return [(row.signature or "", v, row.base_model_type) for (row, _), v in zip(rows, loaded, strict=True)]

    def record_fits(self, base: str, fits: dict[str, bool]) -> None:
        if not fits:
            return
        with self.db.session(write=True) as s:
            base_id = s.scalar(select(BaseRow.id).where(BaseRow.name == base))
            if base_id is None:
                raise BaseNotFoundError(base)
            s.execute(delete(BaseFitRow).where(BaseFitRow.base_id == base_id, BaseFitRow.signature.in_(fits)))
            s.add_all(BaseFitRow(base_id=base_id, signature=sig, fits=ok) for sig, ok in fits.items())


class HashCache:
    """Tensor hashes of whole weight files, valid while the file's (path, size, mtime, ctime,
    inode) stay (``compat.HashCache``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get_hashes(self, key: StatKey) -> dict[str, str] | None:
        path, size, mtime_ns, inode, ctime_ns = key
        with self.db.session() as s:
            row = s.get(FileHashRow, path)
            if row is None or (row.size, row.mtime_ns, row.inode, row.ctime_ns) != (size, mtime_ns, inode, ctime_ns):
                return None
            return dict(row.digests)

    def put_hashes(self, key: StatKey, digests: dict[str, str]) -> None:
        path, size, mtime_ns, inode, ctime_ns = key
        with self.db.session(write=True) as s:
            row = s.get(FileHashRow, path)
            if row is None:
                row = FileHashRow(path=path)
                s.add(row)
            row.size, row.mtime_ns, row.inode, row.ctime_ns = size, mtime_ns, inode, ctime_ns
            row.digests, row.updated_at = digests, utcnow()
