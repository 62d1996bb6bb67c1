"""hub import / export: adapters and merged models to and from the Hugging Face Hub."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, cast

import typer

from lora_hub.cli._common import JsonOpt, RichProgress, handle_errors, hub, human_bytes, print_json, say, warn
from lora_hub.cli.jobs import DetachOpt, SubmitOpt, submitted

if TYPE_CHECKING:
    from lora_hub.api import HubExportResult, HubImportResult, HubSyncResult

app = typer.Typer(
    help="Import adapters from the Hugging Face Hub and export adapters and merged models to it. "
    "The token comes from HF_TOKEN or `hf auth login`; the endpoint from HF_ENDPOINT or --endpoint.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
EndpointOpt = Annotated[
    str | None,
    typer.Option("--endpoint", metavar="URL", help="Hub endpoint (default: HF_ENDPOINT, else https://huggingface.co)."),
]


@app.command("import")
@handle_errors
def import_(
    repo: Annotated[
        str,
        typer.Argument(metavar="REPO_ID[@REVISION]", help="Adapter repo, at a branch, tag or commit (default main)."),
    ],
    name: Annotated[str, typer.Option("--name", "-n", metavar="NS/NAME", help="[namespace/]name to store it under.")],
    base: Annotated[
        str | None,
        typer.Option("--base", "-b", metavar="BASE", help="Base it must fit (registered name or model folder)."),
    ] = None,
    tag: Annotated[
        list[str], typer.Option("--tag", "-t", metavar="TAG", help="Tag to point at the version; repeatable.")
    ] = [],  # noqa: B006
    endpoint: EndpointOpt = None,
    submit: SubmitOpt = False,
    detach: DetachOpt = False,
    json: JsonOpt = False,
) -> None:
    """Import a PEFT adapter repo as the next version of NAME, pinned to a commit.

    The revision is resolved to its commit sha and every file is fetched at that sha; files whose
    content is stored already are not downloaded, and every downloaded byte is checked against the
    Hub's sha256. The folder is validated as `lorahub push` does. The card's model-index metrics are
    imported; the version records its source hf://REPO_ID@<sha>. The same commit again downloads and
    creates nothing.

    Example: lorahub hub import alice/sql-lora@v1 --name acme/sql-lora
    """
    if submit or detach:  # a worker imports it, with its own HF_ENDPOINT and HF_TOKEN
        _no_endpoint(endpoint)
        job = hub().submit_hub("import", repo=repo, name=name, base=base, tags=list(tag))
        done = cast("HubImportResult | None", submitted(job, detach=detach, json=json))
        if done is None:
            return
        result = done
    else:
        result = hub().hub_import(repo, name, base=base, tags=tag, endpoint=endpoint, progress=RichProgress(not json))
    for w in result.warnings:
        warn(w)
    if json:
        print_json(result)
        return
    v = result.version
    if result.created:
        note = f"new, from {result.source}; {human_bytes(result.downloaded_bytes)} downloaded"
        if result.files_reused:
            note += f", {len(result.files_reused)} file(s) already stored"
    else:
        note = f"unchanged: {result.source} is already this version; {human_bytes(result.downloaded_bytes)} downloaded"
        if result.updated:
            note += "; applied " + ", ".join(result.updated)
    say(f"{v.ref}  {v.digest}  ({note})")


@app.command("export")
@handle_errors
def export(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="REF", help="Adapter reference, or a registered base (a merged model).", show_default=False
        ),
    ],
    repo_id: Annotated[str, typer.Argument(metavar="REPO_ID", help="Hub model repo, ORG/NAME.", show_default=False)],
    revision: Annotated[
        str | None, typer.Option("--revision", "-r", metavar="BRANCH", help="Branch to commit to (default main).")
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="With --create: make a new repo private.")] = False,
    create: Annotated[bool, typer.Option("--create", help="Create the repo (and the branch) if missing.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent and removed; write nothing.")
    ] = False,
    endpoint: EndpointOpt = None,
    submit: SubmitOpt = False,
    detach: DetachOpt = False,
    json: JsonOpt = False,
) -> None:
    """Export an adapter version or a merged model to a Hub repo, in one commit.

    Files the branch already holds are not sent; when nothing differs, nothing is written and the
    output says "up to date". The commit is made on top of the head that was read, and retried if
    the branch moves meanwhile; it is tagged lorahub-<name>-v<version>. README.md gets a generated
    card (library_name, base_model, metrics as model-index, digest, lineage); text you wrote in an
    existing card is kept, only the block between <!-- lorahub:begin --> and <!-- lorahub:end -->
    is regenerated. Files an earlier export wrote (the card's block lists them) that this version
    lacks are removed in the same commit, unless someone changed them since; files lora-hub did
    not write are never touched. Each file is checked against its recorded sha256 as it is sent.

    Example: lorahub hub export acme/sql-lora:3 alice/sql-lora --create
    """
    if submit or detach:
        _no_endpoint(endpoint)
        job = hub().submit_hub("export", name=ref, repo=repo_id, revision=revision, private=private, create=create,
                               dry_run=dry_run)  # fmt: skip
        done = cast("HubExportResult | None", submitted(job, detach=detach, json=json))
        if done is None:
            return
        result = done
    else:
        result = hub().hub_export(ref, repo_id, revision=revision, private=private, create=create, dry_run=dry_run,
                                  endpoint=endpoint, progress=RichProgress(not json))  # fmt: skip
    if json:
        print_json(result)
        return
    print_hub_export(result)


def print_hub_export(result: HubExportResult) -> None:
    """The line of a Hub export: the commit and what it sent, or that the branch was up to date."""
    where = f"{result.repo_id}@{result.revision}"
    kept = (
        f"; kept {len(result.files_kept)} file(s) of an earlier export that were changed since: "
        + ", ".join(result.files_kept)
        if result.files_kept
        else ""
    )
    if result.planned:
        removes = f", remove {', '.join(result.files_deleted)}" if result.files_deleted else ""
        say(
            f"dry run: {where} would get {len(result.files_uploaded)} file(s), {human_bytes(result.uploaded_bytes)}"
            f"{removes}; {len(result.files_unchanged)} unchanged{kept}; nothing was written"
        )
        return
    if not result.created_commit:
        say(f"{where} is up to date ({result.commit}); nothing was written")
        return
    retried = (
        f", after {result.attempts - 1} retr{'y' if result.attempts == 2 else 'ies'}" if result.attempts > 1 else ""
    )
    say(
        f"{where}  {result.commit}  (committed {len(result.files_uploaded)} file(s), "
        f"{human_bytes(result.uploaded_bytes)}; {len(result.files_unchanged)} unchanged"
        f"{f'; removed {len(result.files_deleted)} left from an earlier export' if result.files_deleted else ''}"
        f"; tag {result.tag}{retried}){kept}"
    )


@app.command("sync")
@handle_errors
def sync(
    namespace: Annotated[str, typer.Argument(metavar="NAMESPACE", help="lora-hub namespace.", show_default=False)],
    org: Annotated[str, typer.Argument(metavar="ORG", help="Hub user or organisation.", show_default=False)],
    pull: Annotated[
        bool, typer.Option("--pull", help="Import ORG's adapter repos into NAMESPACE instead of exporting.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; change nothing.")] = False,
    private: Annotated[bool, typer.Option("--private", help="Create missing repos private.")] = False,
    endpoint: EndpointOpt = None,
    submit: SubmitOpt = False,
    detach: DetachOpt = False,
    json: JsonOpt = False,
) -> None:
    """Mirror a namespace to a Hub organisation (the latest version of each NS/NAME to ORG/NAME),
    or with --pull the other way (each adapter repo ORG/NAME at main to NS/name).

    The plan is made from reads alone; --dry-run prints it. Every step is an export or an import,
    so running sync again does nothing.

    Example: lorahub hub sync acme lora-org --dry-run
    """
    if submit or detach:
        _no_endpoint(endpoint)
        job = hub().submit_hub("sync", namespace=namespace, repo=org, pull=pull, dry_run=dry_run, private=private)
        done = cast("HubSyncResult | None", submitted(job, detach=detach, json=json))
        if done is None:
            return
        result = done
    else:
        result = hub().hub_sync(namespace, org, pull=pull, dry_run=dry_run, private=private, endpoint=endpoint,
                                progress=RichProgress(not json))  # fmt: skip
    if json:
        print_json(result)
        return
    arrow = "->" if result.direction == "export" else "<-"
    for item in result.items:
        what = f"{len(item.files)} file(s), {human_bytes(item.bytes)}" if item.files else ""
        note = f"  ({item.note})" if item.action == "skip" and item.note else ""
        say(f"{item.action:<10}  {item.name} {arrow} {item.repo_id}  {what}".rstrip() + note)
    todo = sum(i.action in ("create", "update") for i in result.items)
    if not result.items:
        say("nothing to sync")
    elif dry_run:
        say(f"dry run: {todo} of {len(result.items)} would change; nothing was written")
    else:
        say(f"{todo} of {len(result.items)} changed")


def _no_endpoint(endpoint: str | None) -> None:
    if endpoint is not None:
        from lora_hub.errors import InvalidArgumentError

        raise InvalidArgumentError(
            "--endpoint cannot go with --submit or --detach: workers talk to the Hub with their own HF_ENDPOINT",
            hint="leave out --endpoint, and set HF_ENDPOINT and HF_TOKEN where `lorahub worker` runs",
        )
