"""Results of Hub sync, serialisable as the ``--json`` output of ``lorahub hub ...``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_hub.types import AdapterVersion


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HubImportResult(_Model):
    """``lorahub hub import``: the version, where it came from, and what the import moved."""

    version: AdapterVersion
    source: str = Field(description="hf://REPO_ID@<commit sha>")
    downloaded_bytes: int = Field(description="bytes fetched from the Hub; files whose sha256 is stored cost nothing")
    created: bool = Field(description="false when this content was already this version (nothing created)")
    files_downloaded: list[str] = Field(default_factory=list)
    files_reused: list[str] = Field(default_factory=list, description="taken from the blob store, not downloaded")
    skipped: list[str] = Field(default_factory=list, description="repo files not imported (model card, pickles...)")
    updated: list[str] = Field(default_factory=list, description="applied to an existing version (metrics, tags)")
    warnings: list[str] = Field(default_factory=list)


class HubExportResult(_Model):
    """``lorahub hub export``: the commit the repo's branch now points at, and what was sent."""

    repo_id: str
    commit: str = Field(description="the commit holding the export (the branch head when it was up to date)")
    created_commit: bool = Field(description="false when the repo already held every file: nothing was written")
    uploaded_bytes: int = Field(description="size of the files committed (0 when up to date)")
    revision: str = Field(description="the branch written to")
    tag: str | None = Field(default=None, description="the tag naming this export's commit")
    files_uploaded: list[str] = Field(default_factory=list)
    files_unchanged: list[str] = Field(default_factory=list)
    files_deleted: list[str] = Field(
        default_factory=list,
        description="files an earlier lora-hub export wrote that this version does not have (removed in the commit)",
    )
    files_kept: list[str] = Field(
        default_factory=list,
        description="files an earlier export wrote that someone changed since: not this version's, but left alone",
    )
    attempts: int = Field(default=1, description="commit attempts (more than 1 when the branch moved meanwhile)")
    url: str | None = None
    planned: bool = Field(
        default=False,
        description="a dry run: files_uploaded and uploaded_bytes are what would be sent; nothing was written",
    )


class SyncItem(_Model):
    """One step of ``lorahub hub sync``: an adapter name and the Hub repo it mirrors."""

    direction: Literal["export", "import"]
    name: str = Field(description="the lora-hub adapter name (export: its latest version)")
    repo_id: str
    action: Literal["create", "update", "up to date", "skip"]
    files: list[str] = Field(default_factory=list, description="files that are (or would be) sent or fetched")
    bytes: int = 0
    note: str | None = None


class HubSyncResult(_Model):
    """``lorahub hub sync``: the plan, and with ``dry_run`` false what it did (the same items, done)."""

    namespace: str
    org: str
    direction: Literal["export", "import"]
    dry_run: bool
    items: list[SyncItem]
