"""API tokens of ``lorahub serve`` (``lora_hub.catalog.tokens`` says how they are kept)."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from lora_hub._context import Context
from lora_hub.catalog.tokens import CreatedToken, TokenInfo, hash_secret
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


class TokenCache:
    """``authenticate`` by (catalog generation, the secret's hash): a server looks a token up
    in the catalog again only when the catalog generation moved, and every token change
    (creation, revocation) moves it in its own transaction, so a revoked token is refused by
    the very next request on every process. Expiry is a matter of the clock: the caller checks
    ``TokenInfo.state()`` on each request. Bounded: the oldest entries go first."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._found: OrderedDict[tuple[int, str], TokenInfo | None] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, secret: str, generation: int) -> tuple[bool, TokenInfo | None]:
        """(True, what ``lookup`` would answer) when it is kept here, else (False, None):
        no catalog read, for a caller that must not block (a server's event loop)."""
        key = (generation, hash_secret(secret))
        with self._lock:
            if key in self._found:
                self._found.move_to_end(key)
                return True, self._found[key]
        return False, None

    def lookup(self, ctx: Context, secret: str, generation: int) -> TokenInfo | None:
        kept, found = self.peek(secret, generation)
        if kept:
            return found
        key = (generation, hash_secret(secret))
        found = authenticate(ctx, secret)
        with self._lock:
            self._found[key] = found
            while len(self._found) > self.limit:
                self._found.popitem(last=False)
        return found
