"""The catalog: one object per database, composed of one repository per aggregate.

    catalog.adapters   names, versions, tags, metrics (``adapters.py``; listing in ``listing.py``)
    catalog.bases      base models and which adapters fit them (``bases.py``)
    catalog.hashes     the tensor-hash cache of weight files (``bases.py``)
    catalog.merges     merges by recipe (``merges.py``)
    catalog.exports    exports by key (``exports.py``)
    catalog.jobs       jobs run by workers: state, progress, result (``jobs.py``)
    catalog.leases     store leases: pushes and gc exclude each other (``leases.py``)
    catalog.tokens     API tokens of ``lorahub serve``, stored as hashes (``tokens.py``)

Every public method of a repository is one managed session and returns domain types
(``lora_hub.types``); ORM rows never leave the package.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select

from lora_hub.catalog.adapters import Adapters
from lora_hub.catalog.bases import Bases, HashCache
from lora_hub.catalog.db import Database
from lora_hub.catalog.exports import Exports
from lora_hub.catalog.jobs import Jobs
from lora_hub.catalog.leases import Leases
from lora_hub.catalog.merges import Merges
from lora_hub.catalog.tables import AdapterRow, BaseRow, VersionFileRow, VersionRow
from lora_hub.catalog.tokens import Tokens


class Catalog:
    def __init__(self, database_url: str, *, migrate: bool = True) -> None:
        self.db = Database(database_url, migrate=migrate)
        self.adapters = Adapters(self.db)
        self.bases = Bases(self.db)
        self.hashes = HashCache(self.db)
        self.merges = Merges(self.db)
        self.exports = Exports(self.db)
        self.jobs = Jobs(self.db)
        self.leases = Leases(self.db)
        self.tokens = Tokens(self.db)

    def close(self) -> None:
        self.db.close()

    # --- across aggregates: what the blob store holds for whom -------------------------------

    def referenced_digests(self) -> set[str]:
        """Every blob a version or a stored base refers to."""
        with self.db.session() as s:
            digests = set(s.scalars(select(VersionFileRow.digest).distinct()))
            for files in s.scalars(select(BaseRow.files).where(BaseRow.stored.is_(True))):
                digests.update(f["digest"] for f in files if f.get("digest"))
            return digests

    def blob_users(self) -> tuple[dict[str, list[str]], dict[str, int]]:
        """Every referenced blob: who refers to it (``ns/name:version``, ``base NAME``), and its size."""
        users: dict[str, list[str]] = defaultdict(list)
        sizes: dict[str, int] = {}
        with self.db.session() as s:
            rows = s.execute(
                select(
                    VersionFileRow.digest,
                    VersionFileRow.size,
                    AdapterRow.namespace,
                    AdapterRow.name,
                    VersionRow.version,
                )
                .join(VersionRow, VersionFileRow.version_id == VersionRow.id)
                .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
            )
            for digest, size, ns, name, version in rows:
                users[digest].append(f"{ns}/{name}:{version}" if ns else f"{name}:{version}")
                sizes[digest] = size
            for base_name, files in s.execute(select(BaseRow.name, BaseRow.files).where(BaseRow.stored.is_(True))):
                for f in files:
                    if f.get("digest"):
                        users[f["digest"]].append(f"base {base_name}")
                        sizes[f["digest"]] = f["size"]
        return dict(users), sizes

    def namespace_uses_blob(self, namespace: str, digest: str) -> bool:
        """Whether a version in ``namespace`` refers to the blob (what a server lets a reader of
        that namespace download)."""
        with self.db.session() as s:
            hit = s.execute(
                select(VersionFileRow.digest)
                .join(VersionRow, VersionFileRow.version_id == VersionRow.id)
                .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
                .where(VersionFileRow.digest == digest, AdapterRow.namespace == namespace)
                .limit(1)
            ).first()
            return hit is not None
