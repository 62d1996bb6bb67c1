"""serve, token create/list/revoke, login."""

from __future__ import annotations

import gc
from typing import Annotated

import typer
from rich.table import Table

from lora_hub.api import ServingHub, TokenInfo
from lora_hub.cli._common import JsonOpt, clean, handle_errors, out, print_json, say
from lora_hub.errors import InvalidArgumentError, NotSupportedError
from lora_hub.settings import Settings

token_app = typer.Typer(
    help="API tokens of `lorahub serve` (run on the server's catalog).", no_args_is_help=True, rich_markup_mode=None
)


@handle_errors
def serve(
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option("--workers", metavar="N", help="Server processes (uvicorn workers).")] = 1,
) -> None:
    """Serve this catalog and blob store over HTTP (REST API under /v1, OpenAPI at /v1/openapi.json).

    Every request needs a token (`lorahub token create`), except reads when
    LORAHUB_ANONYMOUS_READ=1. Processes are stateless: run several against one Postgres catalog
    and one store behind a load balancer.

    Example: lorahub serve --host 0.0.0.0 --port 8080 --workers 4
    """
    if workers < 1:
        raise InvalidArgumentError("--workers must be at least 1")
    try:
        import uvicorn
    except ImportError:
        raise NotSupportedError(
            "`lorahub serve` needs FastAPI and uvicorn", hint="pip install 'lora-hub[service]'"
        ) from None
    gc.enable()  # a long-running process (see lora_hub.cli.main)
    ServingHub().upgrade_db()  # migrate once here rather than in every worker at once
    uvicorn.run("lora_hub.service:serving_app", factory=True, host=host, port=port, workers=workers, log_level="info")


def _print_tokens(tokens: list[TokenInfo]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("ID", "SCOPE", "NAMESPACE", "STATE", "EXPIRES", "LABEL"):
        table.add_column(col)
    for t in tokens:
        expires = t.expires_at.strftime("%Y-%m-%d %H:%M") if t.expires_at else "never"
        table.add_row(*(clean(c) for c in (t.id, t.scope, t.namespace, t.state(), expires, t.label or "-")))
    out.print(table)


@token_app.command("create")
@handle_errors
def token_create(
    scope: Annotated[str, typer.Option("--scope", metavar="SCOPE", help="read, write or admin.")],
    namespace: Annotated[
        str, typer.Option("--namespace", metavar="PATTERN", help="Namespace, glob (acme-*) or * for all.")
    ],
    expires: Annotated[
        str | None, typer.Option("--expires", metavar="DURATION", help="e.g. 90m, 12h, 30d, 1y (default: never).")
    ] = None,
    label: Annotated[str | None, typer.Option("--label", metavar="TEXT", help="What the token is for.")] = None,
    json: JsonOpt = False,
) -> None:
    """Create an API token. Its secret is printed once: the catalog keeps only its sha256.

    read: pull, list, show. write: also push, tag, metrics, rm. admin: also gc (with --namespace *).

    Example: lorahub token create --scope write --namespace acme --expires 90d
    """
    with ServingHub() as h:
        created = h.token_create(scope, namespace, expires=expires, label=label)
    if json:
        print_json(created)
        return
    t = created.token
    say(created.secret)
    expiry = f", expires {t.expires_at:%Y-%m-%d %H:%M} UTC" if t.expires_at else ", never expires"
    say(f"token {t.id}: {t.scope} on {t.namespace}{expiry}")
    say("this secret is shown once; keep it (e.g. `lorahub login URL --token SECRET`)")


@token_app.command("list")
@handle_errors
def token_list(json: JsonOpt = False) -> None:
    """List API tokens (never their secrets)."""
    with ServingHub() as h:
        tokens = h.token_list()
    if json:
        print_json(tokens)
        return
    if not tokens:
        say("no tokens")
        return
    _print_tokens(tokens)


@token_app.command("revoke")
@handle_errors
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (`lorahub token list`).")],
    json: JsonOpt = False,
) -> None:
    """Revoke a token: every server refuses it from its next request on."""
    with ServingHub() as h:
        t = h.token_revoke(token_id)
    if json:
        print_json(t)
    else:
        say(f"revoked token {t.id} ({t.scope} on {t.namespace})")


@handle_errors
def login(
    url: Annotated[str, typer.Argument(metavar="URL", help="The server, e.g. http://lorahub.internal:8080.")],
    token: Annotated[str, typer.Option("--token", metavar="TOKEN", help="A token from `lorahub token create`.")],
    json: JsonOpt = False,
) -> None:
    """Check a token against a server and save it for that URL (used when LORAHUB_URL is that URL).

    Example: lorahub login http://127.0.0.1:8080 --token lh_...
    """
    from lora_hub.remote import RemoteHub, save_token

    base = Settings.from_env()
    settings = Settings(**{**base.__dict__, "server_url": url.rstrip("/"), "token": token})
    with RemoteHub(settings) as remote:
        seen = remote.whoami()
    path = save_token(base, url, token)
    if json:
        print_json({"url": url.rstrip("/"), "token": seen, "token_file": str(path)})
        return
    who = f"token {seen['id']} ({seen['scope']} on {seen['namespace']})" if seen else "an anonymous caller"
    say(f"logged in to {url.rstrip('/')} as {who}; saved in {path}")
    say(f"set LORAHUB_URL={url.rstrip('/')} to use it")
