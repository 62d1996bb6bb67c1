"""The catalog package: the only place that knows about SQLAlchemy rows."""

from lora_hub.catalog.catalog import Catalog
from lora_hub.catalog.db import HEAD_REVISION, Database

__all__ = ["HEAD_REVISION", "Catalog", "Database"]
