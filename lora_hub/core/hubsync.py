"""Hugging Face Hub sync: import adapters and bases from the Hub, export adapters and merged models to it.

import:  resolve the revision to a commit sha -> list files with their hashes (one request) -> plan:
         every file is either in the blob store already (by its LFS sha256, or by its git blob id
         recorded by an earlier import) or to be downloaded -> the same content already a version of
         the name: return it, nothing created, nothing fetched -> else download the rest at that sha
         into a hidden staging folder inside LORAHUB_HOME, hashing every byte as it arrives and
         checking it against the Hub's hash -> ``adapters.push`` (the same validation as ``lorahub
         push``), given those digests so that it does not hash the downloads again, and the store
         adopts them (linked into place, not copied, when the staging folder and the store share a
         file system), with the source ``hf://REPO_ID@<sha>`` in the version's lineage -> remove
         the staging folder. The catalog row is written last, by the push: a failure or a kill at any
         point leaves no version (a killed import's staging folder is removed by ``lorahub gc``).
export:  the files and a generated model card -> read the branch head and the remote hashes of those
         paths -> drop files the remote already holds -> nothing left: no write at all ("up to date")
         -> else one ``create_commit`` on top of the head read (``parent_commit``); when the branch
         moved meanwhile (412), read again and retry, up to ``COMMIT_ATTEMPTS`` times -> tag the commit.
base add hf://: the safetensors, config and tokenizer files of a model repo at a pinned sha, checked
         the same way, into ``$LORAHUB_HOME/hub/models/<org>--<name>/<sha>``, then ``bases.add``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_hub import _faults
from lora_hub._context import Context
from lora_hub._fs import PARTIAL_MARK, fsync_dir, remove_unused_parts
from lora_hub.core import adapters
from lora_hub.core.common import check_free_space, check_space, is_base_name
from lora_hub.errors import (
    HubConflictError,
    HubNotFoundError,
    InvalidAdapterError,
    InvalidArgumentError,
    InvalidModelError,
    InvalidNameError,
    LoraHubError,
    NotFoundError,
    PickleRefusedError,
)
from lora_hub.formats.peft import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME
from lora_hub.formats.safetensors_file import PICKLE_HINT
from lora_hub.hashing import hash_file
from lora_hub.hubsync import card
from lora_hub.hubsync.client import HubClient, RemoteFile, Snapshot, git_blob_oid, split_spec
from lora_hub.hubsync.types import HubExportResult, HubImportResult, HubSyncResult, SyncItem
from lora_hub.progress import Advance, NoProgress, Progress
from lora_hub.refs import AdapterName, check_part, check_tag
from lora_hub.types import AdapterVersion, BaseAddResult, BaseModelInfo, FileEntry, ListQuery

LINEAGE_KIND = "hub-import"
COMMIT_ATTEMPTS = 4  # the first try and three retries after a 412
CARD = "README.md"
NOT_IMPORTED = frozenset({CARD, ".gitattributes"})
# What a base model repo holds that lora-hub reads: weights, their index, configs, tokenizer files.
BASE_FILES = re.compile(
    r"^(?:[^/]+\.safetensors|model\.safetensors\.index\.json|config\.json|generation_config\.json"
    r"|tokenizer(?:_config)?\.json|special_tokens_map\.json|added_tokens\.json|vocab\.(?:json|txt)|merges\.txt"
    r"|tokenizer\.model|spiece\.model|sentencepiece\.bpe\.model|chat_template\.(?:jinja|json))$"
)


def source_uri(repo_id: str, commit: str) -> str:
    return f"hf://{repo_id}@{commit}"


# --- import ----------------------------------------------------------------------------------------


def import_adapter(
    ctx: Context,
    spec: str,
    name: str,
    *,
    base: str | None = None,
    tags: Sequence[str] = (),
    endpoint: str | None = None,
    token: str | None = None,
    progress: Progress | None = None,
) -> HubImportResult:
    """Import the PEFT adapter repo ``spec`` (``REPO_ID[@REVISION]``: a branch, tag or commit;
    default ``main``) as the next version of ``name``, pinned to the commit the revision names.

    Files whose content the blob store holds are not downloaded; every downloaded byte is checked
    against the Hub's sha256 (LFS files) or git blob id (small files), so a damaged file is refused
    with nothing stored. The folder then goes through ``lorahub push``'s validation (with ``base``,
    the fit check too); pickle files are never fetched, and a repo with only pickled weights is
    refused. The card's ``model-index`` metrics become the version's metrics; its ``base_model``
    and the source ``hf://REPO_ID@<sha>`` go into the version's lineage. Importing content that is
    already a version of ``name`` (the same commit again) fetches nothing and creates nothing.
    """
    progress = progress or NoProgress()
    repo_id, revision = split_spec(spec)
    adapter_name = AdapterName.parse(name)
    tag_list = [check_tag(t) for t in dict.fromkeys(tags)]
    client = HubClient.connect(endpoint, token)
    plan = _plan_import(ctx, client, repo_id, revision, adapter_name)
    snap, files, skipped, known, to_fetch = plan.snap, plan.files, plan.skipped, plan.known, plan.to_fetch
    metrics, warnings = card.card_metrics(snap.card)
    metrics = adapters.check_metrics(metrics)
    source = source_uri(repo_id, snap.commit)
    if plan.existing is not None:
        version, updated = adapters.apply_to_existing(ctx, plan.existing, {}, tag_list, None)
        return HubImportResult(
            version=version,
            source=source,
            downloaded_bytes=0,
            created=False,
            files_reused=sorted(files),
            skipped=skipped,
            updated=updated,
            warnings=warnings,
        )
    needed = sum(f.size for f in files.values())
    check_free_space(ctx.settings.home, needed, what="the download")
    check_space(ctx.store, sum(f.size for f in to_fetch.values()))
    with _staging(ctx, "import") as folder:
        digests = {p: _link_stored(ctx, known[p], folder / p) for p in files if p not in to_fetch}
        with progress.task(f"downloading {repo_id}", sum(f.size for f in to_fetch.values())) as advance:
            for path, remote in sorted(to_fetch.items()):
                target = _inside(folder, path)
                target.parent.mkdir(parents=True, exist_ok=True)
                digests[path] = client.download(repo_id, snap.commit, remote, target, advance, resume_dir(ctx))
        _faults.checkpoint("hub.import.downloaded")
        lineage = {
            "kind": LINEAGE_KIND,
            "source": source,
            "repo_id": repo_id,
            "commit": snap.commit,
            "base_model": card.card_base_models(snap.card),
            "files": {p: {"digest": digests[p], "oid": files[p].oid} for p in sorted(files)},
        }
        # The card's metrics describe a new version; they never overwrite metrics someone set on
        # a version that already holds this content.
        entries = [FileEntry(path=p, digest=d, size=files[p].size) for p, d in digests.items()]
        known_version = ctx.catalog.adapters.find_by_digest(adapter_name, adapters.manifest_digest(entries))
        try:
            pushed = adapters.push(
                ctx,
                folder,
                name,
                metrics=metrics if known_version is None else {},
                tags=tag_list,
                base=base,
                lineage=lineage,
                progress=progress,
                # Hashed here as they arrived (and checked against the Hub's hashes): the push
                # validates them but neither hashes nor copies them again; the store adopts them.
                verified={p: (digests[p], to_fetch[p].size) for p in to_fetch},
            )
        except LoraHubError as exc:  # name the repo, not the staging folder that is about to go
            _rename_path(exc, str(folder), source)
            raise
    return HubImportResult(
        version=pushed.version,
        source=source,
        downloaded_bytes=sum(f.size for f in to_fetch.values()),
        created=pushed.created,
        files_downloaded=sorted(to_fetch),
        files_reused=sorted(set(files) - set(to_fetch)),
        skipped=skipped,
        updated=pushed.updated,
        warnings=[*warnings, *pushed.warnings],
    )


@dataclass(frozen=True)
class _ImportPlan:
    snap: Snapshot
    files: dict[str, RemoteFile]
    skipped: list[str]
    known: dict[str, str]  # path -> sha256 known without fetching
    to_fetch: dict[str, RemoteFile]
    existing: AdapterVersion | None  # the version that already holds this content


def _plan_import(ctx: Context, client: HubClient, repo_id: str, revision: str | None, name: AdapterName) -> _ImportPlan:
    """What importing ``repo_id@revision`` as ``name`` would do, read from the Hub and the catalog
    alone: the files, which are stored already, and whether the content is a version already."""
    snap = client.snapshot(repo_id, revision)
    files, skipped = _adapter_files(snap)
    known = _known_digests(ctx, files)
    to_fetch = {p: f for p, f in files.items() if p not in known or not ctx.store.has(known[p])}
    existing = None
    if len(known) == len(files) and not to_fetch:  # every file's content is known and stored
        entries = [FileEntry(path=p, digest=known[p], size=f.size) for p, f in files.items()]
        existing = ctx.catalog.adapters.find_by_digest(name, adapters.manifest_digest(entries))
    return _ImportPlan(snap, files, skipped, known, to_fetch, existing)


def _adapter_files(snap: Snapshot) -> tuple[dict[str, RemoteFile], list[str]]:
    """The repo files an adapter version is made of (not the card, git's files, hidden files, or
    pickles), and those left out; a repo that is not a safetensors PEFT adapter is refused here,
    before anything is fetched."""
    keep: dict[str, RemoteFile] = {}
    skipped: list[str] = []
    for path, remote in sorted(snap.files.items()):
        if any(part.startswith(".") for part in path.split("/")) or path in NOT_IMPORTED:
            if path == CARD:
                skipped.append(path)
            continue
        if Path(path).suffix.lower() in PICKLE_SUFFIXES:
            skipped.append(path)
            continue
        keep[path] = remote
    where = f"{snap.repo_id}@{snap.commit[:12]}"
    if WEIGHTS_NAME not in keep:
        pickled = [p for p in skipped if Path(p).suffix.lower() in PICKLE_SUFFIXES]
        if pickled:
            raise PickleRefusedError(
                f"{where} holds only pickled weights ({', '.join(pickled[:3])}); lora-hub imports safetensors only, "
                "and nothing was downloaded",
                hint=PICKLE_HINT.replace("IN", pickled[0]).replace("OUT", "adapter_model")
                + "; or load it with PEFT and save_pretrained(dir) (safetensors by default), then `lorahub push`",
            )
        found = ", ".join(sorted(snap.files)[:10]) or "nothing"
        raise InvalidAdapterError(
            f"{where} is not a PEFT adapter repo: no {WEIGHTS_NAME} (found: {found})",
            hint="for a full model use `lorahub base add hf://REPO_ID --name NAME`",
        )
    if CONFIG_NAME not in keep:
        raise InvalidAdapterError(f"{where} is not a PEFT adapter repo: no {CONFIG_NAME}")
    return keep, skipped


def _known_digests(ctx: Context, files: Mapping[str, RemoteFile]) -> dict[str, str]:
    """The sha256 of each file that can be told without fetching it: LFS files say it; a small file
    has only a git blob id, matched against the ids earlier imports recorded."""
    known = {p: f"sha256:{f.sha256}" for p, f in files.items() if f.sha256}
    if len(known) < len(files):
        by_oid: dict[str, str] = {}
        for v in ctx.catalog.adapters.derived():
            lineage = v.lineage or {}
            if lineage.get("kind") == LINEAGE_KIND and isinstance(lineage.get("files"), dict):
                for item in lineage["files"].values():
                    if isinstance(item, dict) and item.get("oid") and item.get("digest"):
                        by_oid[str(item["oid"])] = str(item["digest"])
        known |= {p: by_oid[f.oid] for p, f in files.items() if p not in known and f.oid in by_oid}
    return known


def _rename_path(exc: LoraHubError, old: str, new: str) -> None:
    exc.message = exc.message.replace(old, new)
    exc.args = (exc.message,)
    if exc.hint:
        exc.hint = exc.hint.replace(old, new)
    if isinstance(getattr(exc, "path", None), str):
        exc.path = exc.path.replace(old, new)  # type: ignore[attr-defined]


def _inside(folder: Path, rel: str) -> Path:
    target = (folder / rel).resolve()
    if not target.is_relative_to(folder.resolve()) or target == folder.resolve():
        raise InvalidArgumentError(f"refusing a file path outside the folder: {rel!r}")
    return target


def _link_stored(ctx: Context, digest: str, target: Path) -> str:
    """Put the stored blob ``digest`` at ``target``: a hard link where the store is a local folder on
    the same file system (blobs are read-only and never rewritten in place), else a checked copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    blob = ctx.local_copy(digest)
    try:
        os.link(blob, target)
    except OSError:
        with open(target, "wb") as out:
            ctx.store.copy_out(digest, out)
    return digest


RESUME_MAX_AGE_S = 7 * 24 * 3600


def resume_dir(ctx: Context) -> Path:
    """Where interrupted Hub downloads keep what they received (``<sha256>.part``), for the next
    import of the same content to resume. Parts untouched for a week are removed here."""
    folder = ctx.settings.home / "hub-staging" / "resume"
    remove_unused_parts(folder, max_age_s=RESUME_MAX_AGE_S)
    return folder


@contextlib.contextmanager
def _staging(ctx: Context, kind: str) -> Iterator[Path]:
    """A hidden folder inside LORAHUB_HOME for downloads, removed when the block ends, whatever
    happens; recorded for ``lorahub gc`` while it exists, in case this process is killed."""
    root = ctx.settings.home / "hub-staging"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f".{kind}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir()
    partials = ctx.partials()
    record = partials.add(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if record is not None:
            with contextlib.suppress(OSError):
                record.unlink()


# --- base add hf:// ------------------------------------------------------------------------------


def is_hub_spec(text: str) -> bool:
    """Whether ``base add``'s argument names a Hub repo (``hf://ORG/NAME``; a path argument may have
    collapsed it to ``hf:/ORG/NAME``) rather than a folder."""
    return text.startswith("hf://") or (text.startswith("hf:/") and not Path(text).exists())


def add_base(
    ctx: Context,
    spec: str,
    name: str,
    *,
    store: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    progress: Progress | None = None,
) -> BaseAddResult:
    """Register the model repo ``spec`` (``hf://REPO_ID[@REVISION]``) as the base ``name``, pinned
    to the commit the revision names: its safetensors, config and tokenizer files are downloaded
    (each byte checked against the Hub's hash) into ``$LORAHUB_HOME/hub/models/<org>--<name>/<sha>``,
    which becomes the base's folder (``store`` also copies them into the blob store). A commit
    already downloaded there is not fetched again."""
    from lora_hub.core import bases

    progress = progress or NoProgress()
    repo_id, revision = split_spec(spec)
    AdapterName.parse(name)
    client = HubClient.connect(endpoint, token)
    snap = client.snapshot(repo_id, revision)
    files = {p: f for p, f in snap.files.items() if BASE_FILES.match(p)}
    where = f"{repo_id}@{snap.commit[:12]}"
    if not any(p.endswith(".safetensors") for p in files):
        pickled = [p for p in snap.files if Path(p).suffix.lower() in PICKLE_SUFFIXES]
        raise InvalidModelError(
            f"{where} has no safetensors weights"
            + (f", only pickled ones ({', '.join(pickled[:3])})" if pickled else "")
            + "; nothing was downloaded",
            hint="convert them with model.save_pretrained(dir, safe_serialization=True), then `lorahub base add DIR`"
            if pickled
            else "is it a model repo? an adapter is imported with `lorahub hub import`",
        )
    owner, repo_name = repo_id.split("/")
    final = ctx.settings.home / "hub" / "models" / f"{owner}--{repo_name}" / snap.commit
    if not (final.is_dir() and _holds(final, files)):
        check_free_space(ctx.settings.home, sum(f.size for f in files.values()), what="the download")
        with _staging(ctx, "base") as folder:
            with progress.task(f"downloading {repo_id}", sum(f.size for f in files.values())) as advance:
                for path, remote in sorted(files.items()):
                    target = _inside(folder, path)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    client.download(repo_id, snap.commit, remote, target, advance, resume_dir(ctx))
            _faults.checkpoint("hub.base.downloaded")
            _write_manifest(folder, source_uri(repo_id, snap.commit), files)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # an earlier, incomplete or altered copy: never half-replaced
                shutil.rmtree(final)
            os.rename(folder, final)
            fsync_dir(final.parent)
    return bases.add(ctx, final, name, store=store, progress=progress)


MANIFEST = ".lorahub-source.json"  # hidden: never listed as a file of the model


def _write_manifest(folder: Path, source: str, files: Mapping[str, RemoteFile]) -> None:
    """Record, beside the verified downloads, what each file was when it was checked."""
    stats = {p: (folder / p).stat() for p in files}
    doc = {"source": source, "files": {p: [st.st_size, st.st_mtime_ns, st.st_ino] for p, st in stats.items()}}
    (folder / MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _holds(folder: Path, files: Mapping[str, RemoteFile]) -> bool:
    """Whether an earlier download of this commit is still exactly what was verified: every file
    present with the size, mtime and inode recorded when its hash was checked. Anything else
    (a file edited or replaced in place) is downloaded again."""
    try:
        recorded = json.loads((folder / MANIFEST).read_text())["files"]
        for p, f in files.items():
            st = (folder / p).stat()
            if recorded[p] != [f.size, st.st_mtime_ns, st.st_ino] or st.st_size != f.size:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


# --- export --------------------------------------------------------------------------------------


def export(
    ctx: Context,
    ref: str,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    create: bool = False,
    dry_run: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    progress: Progress | None = None,
) -> HubExportResult:
    """Export an adapter version (``ref``) or a registered base (a merged model: its recipe,
    adapters and verification report go into the card) to the model repo ``repo_id`` on branch
    ``revision`` (default ``main``), in one commit.

    Files the branch already holds with the same content are not sent; when nothing differs, no
    write is made at all (``created_commit`` false). The commit is made on top of the head that
    was read (``parent_commit``): if the branch moves meanwhile, the head and hashes are read
    again and the commit retried, up to ``COMMIT_ATTEMPTS`` times, then ``HubConflictError``. The
    commit is tagged ``lorahub-<name>-v<version>`` (for a base, ``-<fingerprint>``). README.md gets
    a generated card; text a user wrote in an existing one is kept, only the block between
    ``<!-- lorahub:begin -->`` and ``<!-- lorahub:end -->`` and lora-hub's metadata keys are rewritten.
    ``create`` creates the repo (``private``) and the branch when missing. ``dry_run`` reads
    only, and returns what would be sent (``planned``)."""
    progress = progress or NoProgress()
    repo_id, _ = split_spec(repo_id)
    item = _export_item(ctx, ref)
    local = _export_files(ctx, item)
    # A version that carries its own README.md: its text is the card's starting point (when the
    # repo has none yet); the card itself is generated.
    own_card = local.pop(CARD, None)
    own_text = own_card[0].read_text(encoding="utf-8", errors="replace") if own_card else None
    tag = _tag_name(item)
    branch = revision or "main"
    client = HubClient.connect(endpoint, token)
    if create and not dry_run:
        client.create_repo(repo_id, private=private)
    attempts = 0
    while True:
        attempts += 1
        try:
            branches, tags = client.refs(repo_id)
        except HubNotFoundError:
            if not (dry_run and create):
                raise
            branches, tags = {}, {}
        head = branches.get(branch)
        if head is None and dry_run and create:  # a new repo or branch: everything would be sent
            return _planned(repo_id, branch, "", tag, {**{p: v[0] for p, v in local.items()}, CARD: b""}, [])
        if head is None:
            if not create:
                raise HubNotFoundError(
                    f"{repo_id} has no branch {branch!r}", hint="add --create to create it from the default branch"
                )
            client.create_branch(repo_id, branch)
            attempts -= 1  # creating the branch is not a commit attempt
            continue
        remote = client.paths_info(repo_id, head, [*local, CARD])
        remote_card = (
            client.read_small(repo_id, head, remote[CARD]).decode("utf-8", "replace") if CARD in remote else None
        )
        old_card = remote_card if remote_card is not None else own_text
        new_card = _card(ctx, item, repo_id, old_card, {p: d for p, (_, d) in local.items()}).encode()
        changed: dict[str, Path | bytes] = {
            p: path for p, (path, digest) in local.items() if p not in remote or not remote[p].matches(digest, path)
        }
        if CARD not in remote or _card_differs(remote[CARD], new_card):
            changed[CARD] = new_card
        unchanged = sorted(p for p in local if p not in changed)
        deletes, kept = _stale_files(client, repo_id, head, card.exported_files(remote_card), local)
        if dry_run:
            return _planned(repo_id, branch, head, tag, changed, unchanged, deletes, kept)
        if not changed and not deletes:
            commit, created, uploaded = head, False, 0
            break
        uploaded = sum(len(v) if isinstance(v, bytes) else v.stat().st_size for v in changed.values())
        with progress.task(f"uploading to {repo_id}", uploaded) as advance:
            sent = _Counted(advance)
            # Each file is checked against its recorded sha256 as it is read to be sent (a damaged
            # blob fails the export before the commit); the client then hashes nothing itself.
            oid = client.commit(
                repo_id,
                changed,
                branch=branch,
                parent=head,
                message=f"lora-hub: {_label(item)}",
                description=f"Exported by lora-hub from {_label(item)} ({_digest(item)}).",
                digests={p: digest for p, (_, digest) in local.items()},
                advance=sent,
                deletes=deletes,
            )
            advance(max(0, uploaded - sent.total))  # the card, and files the Hub already had
        if oid is not None:
            commit, created = oid, True
            break
        if attempts >= COMMIT_ATTEMPTS:
            raise HubConflictError(
                f"{repo_id}@{branch} kept moving: {attempts} commits were refused because another commit landed "
                "between reading the branch and writing to it; nothing of this export was committed",
                hint="run the export again once the other writer is done, or export to another --revision",
            )
        _faults.checkpoint("hub.export.retry")
    # A tag already naming another commit is left alone: tags are not moved. An up-to-date export
    # writes nothing, so it only tags when no tag of that name exists yet.
    if tags.get(tag) != commit and (created or tag not in tags):
        if tag in tags:
            tag = f"{tag}-{commit[:8]}"
        if tags.get(tag) != commit:
            client.create_tag(repo_id, tag, commit, _label(item))
    return HubExportResult(
        repo_id=repo_id,
        commit=commit,
        created_commit=created,
        uploaded_bytes=uploaded,
        revision=branch,
        tag=tag,
        files_uploaded=sorted(changed),
        files_unchanged=unchanged,
        files_deleted=deletes if created else [],
        files_kept=kept,
        attempts=attempts,
        url=f"{client.endpoint}/{repo_id}/tree/{branch}",
    )


def _planned(
    repo_id: str,
    branch: str,
    head: str,
    tag: str,
    changed: Mapping[str, Path | bytes],
    unchanged: list[str],
    deletes: Sequence[str] = (),
    kept: Sequence[str] = (),
) -> HubExportResult:
    size = sum(len(v) if isinstance(v, bytes) else v.stat().st_size for v in changed.values())
    return HubExportResult(repo_id=repo_id, commit=head, created_commit=False, uploaded_bytes=size, revision=branch,
                           tag=tag, files_uploaded=sorted(changed), files_unchanged=unchanged,
                           files_deleted=list(deletes), files_kept=list(kept), attempts=0, planned=True)  # fmt: skip


def _stale_files(
    client: HubClient, repo_id: str, head: str, previous: Mapping[str, str], local: Mapping[str, tuple[Path, str]]
) -> tuple[list[str], list[str]]:
    """Files an earlier export wrote (``previous``, from the card's block) that this one does not
    have: (to delete, to keep). Only files still holding the content lora-hub wrote are deleted; a
    file someone changed since, or that the card names but the branch lacks, is not touched. Files
    lora-hub never wrote are never candidates."""
    candidates = sorted(p for p in previous if p not in local and p != CARD)
    if not candidates:
        return [], []
    remote = client.paths_info(repo_id, head, candidates)
    deletes: list[str] = []
    kept: list[str] = []
    for path in candidates:
        if path not in remote:
            continue
        f = remote[path]
        if f.sha256 is not None:
            same = f.matches(previous[path])
        else:  # a small file held in git: its sha256 is not listed, so it is read (at most 1 MiB)
            data = client.read_small(repo_id, head, f) if f.size <= 1 << 20 else b""
            same = bool(data) and "sha256:" + hashlib.sha256(data).hexdigest() == previous[path]
        (deletes if same else kept).append(path)
    return deletes, kept


def _card_differs(remote: RemoteFile, new_card: bytes) -> bool:
    if remote.sha256 is not None:
        return hashlib.sha256(new_card).hexdigest() != remote.sha256
    return remote.size != len(new_card) or git_blob_oid(new_card) != remote.oid


def _export_item(ctx: Context, ref: str) -> AdapterVersion | BaseModelInfo:
    try:
        return adapters.show(ctx, ref)
    except NotFoundError:
        if ":" not in ref and is_base_name(ref) and ctx.catalog.bases.has(ref):
            return ctx.catalog.bases.get(ref, with_tensors=False)
        raise


def _export_files(ctx: Context, item: AdapterVersion | BaseModelInfo) -> dict[str, tuple[Path, str]]:
    """Each file to export by its path in the repo: a local file holding it, and its sha256 (the
    catalog's for blobs of the store; a registered folder's files are hashed here). Every file is
    checked against that sha256 again as it is sent."""
    if isinstance(item, AdapterVersion):
        return {f.path: (ctx.local_copy(f.digest), f.digest) for f in item.files}
    from lora_hub.core import bases

    out: dict[str, tuple[Path, str]] = {}
    if item.stored and all(f.digest for f in item.files):
        for f in item.files:
            assert f.digest is not None
            out[f.path] = (ctx.local_copy(f.digest), f.digest)
        return out
    full = ctx.catalog.bases.get(item.name or "")
    model = bases.base_weights(ctx, full)
    if model is None:
        raise bases.why_no_weights(ctx, full, item.name or "")
    for f in item.files:
        path = model.files.get(f.path) or Path(item.path or ".") / f.path
        digest, _ = hash_file(path)
        out[f.path] = (path, digest)
    return out


class _Counted:
    """An ``Advance`` that also counts what it reported (called from the client's upload threads)."""

    def __init__(self, advance: Advance) -> None:
        self._advance = advance
        self._lock = threading.Lock()
        self.total = 0

    def __call__(self, n: int) -> None:
        with self._lock:
            self.total += n
            self._advance(n)


def _label(item: AdapterVersion | BaseModelInfo) -> str:
    return item.ref if isinstance(item, AdapterVersion) else f"base {item.name}"


def _digest(item: AdapterVersion | BaseModelInfo) -> str:
    return item.digest if isinstance(item, AdapterVersion) else item.content_fingerprint


def _tag_name(item: AdapterVersion | BaseModelInfo) -> str:
    if isinstance(item, AdapterVersion):
        text = f"lorahub-{item.full_name}-v{item.version}"
    else:
        text = f"lorahub-{item.name}-{item.content_fingerprint.removeprefix('sha256:')[:12]}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _card(
    ctx: Context, item: AdapterVersion | BaseModelInfo, repo_id: str, existing: str | None, files: Mapping[str, str]
) -> str:
    """The card of an export; ``files`` (path -> sha256) are listed in its block, which is how the
    next export knows which files lora-hub wrote (``card.exported_files``)."""
    if isinstance(item, AdapterVersion):
        hub_base = _hub_repo_of_base(ctx, item.base_fingerprint) if item.base_fingerprint else None
        meta, block = _adapter_card(item, repo_id, hub_base)
    else:
        fingerprint = (item.lineage or {}).get("recipe", {}).get("base_fingerprint")
        hub_base = _hub_repo_of_base(ctx, fingerprint) if fingerprint else None
        meta, block = _base_card(item, repo_id, hub_base)
    block += "\n\n" + card.json_block(card.FILES_TITLE, dict(sorted(files.items())))
    return card.render(existing, meta, block)


def _hub_repo_of_base(ctx: Context, fingerprint: str) -> str | None:
    """The Hub repo a registered base with this content was imported from (``base add hf://``: its
    folder is ``$LORAHUB_HOME/hub/models/<org>--<name>/<sha>``), if any."""
    models = ctx.settings.home / "hub" / "models"
    for info in ctx.catalog.bases.all():
        path = Path(info.path or "")
        if info.content_fingerprint == fingerprint and path.parent.parent == models and "--" in path.parent.name:
            owner, name = path.parent.name.split("--", 1)
            return f"{owner}/{name}"
    return None


def _adapter_card(v: AdapterVersion, repo_id: str, hub_base: str | None) -> tuple[dict[str, Any], str]:
    f = v.facts
    # The base it was pushed against, if that came from the Hub; else what an imported card named;
    # else the adapter's config.
    from_card = (v.lineage or {}).get("base_model") if (v.lineage or {}).get("kind") == LINEAGE_KIND else None
    named = from_card[0] if isinstance(from_card, list) and len(from_card) == 1 else f.base_model_name_or_path
    base_model = hub_base or (named if isinstance(named, str) and _REPO_ID.match(named) else None)
    task = card.task_of(f.task_type)
    meta: dict[str, Any] = {"library_name": "peft"}
    if base_model:
        meta |= {"base_model": base_model, "base_model_relation": "adapter"}
    if task:
        meta["pipeline_tag"] = task
    meta["tags"] = ["lora", "lora-hub", *([f"base_model:adapter:{base_model}"] if base_model else [])]
    if v.metrics:
        meta["model-index"] = card.model_index(repo_id.split("/")[-1], v.metrics, task)
    rows = [
        ("lora-hub version", f"`{v.ref}`"),
        ("digest", f"`{v.digest}`"),
        ("base model", f"`{base_model or f.base_model_name_or_path or 'unknown'}`"),
        ("registered base", f"`{v.base}`" if v.base else "none"),
        ("base content fingerprint", f"`{v.base_fingerprint}`" if v.base_fingerprint else "not recorded"),
        (
            "LoRA",
            f"rank {f.rank}, alpha {f.alpha:g}{', rsLoRA' if f.use_rslora else ''}{', DoRA' if f.use_dora else ''}",
        ),
        ("targets", ", ".join(f.target_modules)),
        ("dtype, parameters", f"{f.dtype}, {f.num_params:,}"),
    ]
    if v.metrics:
        rows.append(("metrics", ", ".join(f"{k}={val:g}" for k, val in sorted(v.metrics.items()))))
    parts = [
        "## lora-hub",
        "",
        f"Exported by lora-hub from `{v.ref}`. Load it with PEFT: "
        f'`PeftModel.from_pretrained(base_model, "{repo_id}")`.',
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {val} |" for k, val in rows),
        "",
        "Files: " + ", ".join(f"`{e.path}` (`{e.digest}`)" for e in v.files),
    ]
    if v.lineage:
        parts += ["", card.json_block("lineage", v.lineage)]
    return meta, "\n".join(parts)


def _base_card(b: BaseModelInfo, repo_id: str, base_model: str | None) -> tuple[dict[str, Any], str]:
    lineage = b.lineage or {}
    recipe = lineage.get("recipe") or {}
    report = lineage.get("report") or {}
    versions = lineage.get("versions") or {}
    meta: dict[str, Any] = {"library_name": "transformers"}
    if lineage and base_model:
        meta |= {"base_model": base_model, "base_model_relation": "finetune"}
    meta["tags"] = ["lora-hub", *(["merge"] if lineage else [])]
    rows = [
        ("base", f"`{b.name}`"),
        ("content fingerprint", f"`{b.content_fingerprint}`"),
        ("structure fingerprint", f"`{b.structure_fingerprint}`"),
        ("model type, dtype, parameters", f"{b.model_type}, {b.dtype}, {b.num_params:,}"),
    ]
    parts = ["## lora-hub", "", f"Exported by lora-hub from the registered base `{b.name}`.", ""]
    if lineage:
        rows.append(("recipe digest", f"`{lineage.get('recipe_digest')}`"))
        if recipe:
            rows.append(
                ("merged onto", f"`{base_model or 'a base'}`, content fingerprint `{recipe.get('base_fingerprint')}`")
            )
            rows.append(("method", f"{recipe.get('method')} {json.dumps(recipe.get('params') or {}, sort_keys=True)}"))
        if report:
            rows.append(
                (
                    "verification",
                    f"{'passed' if report.get('passed') else 'FAILED'}: "
                    f"{report.get('verified_tensors')} tensors checked, "
                    f"worst error {report.get('worst_error')} ({report.get('error_kind', '')})",
                )
            )
    parts += ["| | |", "|---|---|", *(f"| {k} | {val} |" for k, val in rows)]
    merged = [a for a in recipe.get("adapters") or [] if isinstance(a, dict)]
    if merged:
        parts += ["", "Adapters merged:", "", "| adapter | digest | weight |", "|---|---|---|"]
        parts += [f"| `{a.get('ref')}` | `{a.get('digest')}` | {a.get('weight')} |" for a in merged]
    if versions:
        parts += ["", "Made with " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "."]
    if recipe:
        parts += ["", card.json_block("recipe", recipe)]
    if report:
        parts += ["", card.json_block("verification report", report)]
    return meta, "\n".join(parts)


# --- sync ----------------------------------------------------------------------------------------


def sync(
    ctx: Context,
    namespace: str,
    org: str,
    *,
    pull: bool = False,
    dry_run: bool = False,
    private: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    progress: Progress | None = None,
) -> HubSyncResult:
    """Mirror the lora-hub namespace ``namespace`` to the Hub organisation (or user) ``org``: the
    latest version of every adapter ``NS/NAME`` is exported to ``ORG/NAME`` (created when missing,
    ``private``). With ``pull``, the other way: every adapter repo ``ORG/NAME`` is imported at its
    ``main`` as ``NS/name`` (repos that are not safetensors PEFT adapters are skipped, with why).
    The plan is made first, from reads alone (``SyncItem``: create, update, up to date, skip);
    ``dry_run`` returns it, otherwise each step that is not up to date is carried out by
    ``export`` or ``import_adapter`` (each idempotent: running sync again does nothing)."""
    check_part(namespace, "namespace")
    if not org or "/" in org:
        raise InvalidArgumentError(f"not a Hub user or organisation: {org!r}", hint="e.g. lora-org")
    client = HubClient.connect(endpoint, token)
    items = _sync_imports(ctx, client, namespace, org) if pull else _sync_exports(ctx, client, namespace, org, private)
    if not dry_run:
        for item in items:
            if item.action in ("create", "update"):
                if pull:
                    pinned = (item.note or item.repo_id).removeprefix("hf://")  # the commit the plan read
                    import_adapter(ctx, pinned, item.name, endpoint=client.endpoint, token=client.token,
                                   progress=progress)  # fmt: skip
                else:
                    export(ctx, item.note or item.name, item.repo_id, create=True, private=private,
                           endpoint=client.endpoint, token=client.token, progress=progress)  # fmt: skip
    return HubSyncResult(namespace=namespace, org=org, direction="import" if pull else "export", dry_run=dry_run,
                         items=items)  # fmt: skip


def _sync_exports(ctx: Context, client: HubClient, namespace: str, org: str, private: bool) -> list[SyncItem]:
    page = ctx.catalog.adapters.search(ListQuery(namespace=namespace, latest_only=True, limit=10_000))
    items = []
    for v in sorted(page.items, key=lambda v: v.name):
        repo_id = f"{org}/{v.name}"
        plan = export(ctx, v.ref, repo_id, create=True, private=private, dry_run=True, endpoint=client.endpoint,
                      token=client.token)  # fmt: skip
        action = "up to date" if not plan.files_uploaded else "update" if plan.commit else "create"
        items.append(SyncItem(direction="export", name=v.full_name, repo_id=repo_id, action=action,
                              files=plan.files_uploaded, bytes=plan.uploaded_bytes, note=v.ref))  # fmt: skip
    return items


def _sync_imports(ctx: Context, client: HubClient, namespace: str, org: str) -> list[SyncItem]:
    items = []
    for repo_id in client.list_models(org):
        name = f"{namespace}/{repo_id.split('/', 1)[1].lower()}"
        try:
            adapter_name = AdapterName.parse(name)
            plan = _plan_import(ctx, client, repo_id, None, adapter_name)
        except (InvalidNameError, InvalidAdapterError) as exc:
            items.append(SyncItem(direction="import", name=name, repo_id=repo_id, action="skip", note=exc.message))
            continue
        exists = bool(ctx.catalog.adapters.versions_of(adapter_name))
        action = "up to date" if plan.existing is not None else "update" if exists else "create"
        fetch = [] if plan.existing is not None else sorted(plan.to_fetch)
        items.append(SyncItem(direction="import", name=name, repo_id=repo_id, action=action, files=fetch,
                              bytes=sum(plan.to_fetch[p].size for p in fetch),
                              note=source_uri(repo_id, plan.snap.commit)))  # fmt: skip
    return items
