"""The catalog package: the only place that knows about SQLAlchemy rows."""

from lora_hub.catalog.db import HEAD_REVISION, Database
from lora_hub.catalog.repo import Catalog

__all__ = ["HEAD_REVISION", "Catalog", "Database"]
