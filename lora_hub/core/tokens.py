"""API tokens of ``lorahub serve`` (``lora_hub.catalog.tokens`` says how they are kept)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from lora_hub._context import Context
from lora_hub.catalog.tokens import CreatedToken, TokenInfo
from lora_hub.errors import InvalidArgumentError

_DURATION = re.compile(r"^\s*(\d+)\s*(m|min|h|d|w|y)\s*$")
_UNIT_S = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> timedelta:
    """``90m``, ``12h``, ``30d``, ``2w``, ``1y`` -> a positive ``timedelta``."""
    m = _DURATION.match(text.lower())
    if not m or int(m.group(1)) < 1:
        raise InvalidArgumentError(
            f"{text[:40]!r} is not a duration", hint="use a number and a unit: 90m, 12h, 30d, 2w or 1y"
        )
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


def create(
    ctx: Context, scope: str, namespace: str, *, expires: str | timedelta | None = None, label: str | None = None
) -> CreatedToken:
    """A new token (its secret is in the result only). ``expires``: a duration from now."""
    delta = parse_duration(expires) if isinstance(expires, str) else expires
    expires_at = datetime.now(UTC) + delta if delta is not None else None
    return ctx.catalog.tokens.create(scope, namespace, expires_at=expires_at, label=label)


def list_tokens(ctx: Context) -> list[TokenInfo]:
    return ctx.catalog.tokens.all()


def revoke(ctx: Context, token_id: str) -> TokenInfo:
    return ctx.catalog.tokens.revoke(token_id)


def authenticate(ctx: Context, secret: str) -> TokenInfo | None:
    """The token of ``secret`` (any state), or None; read from the catalog on every call."""
    return ctx.catalog.tokens.authenticate(secret)
