"""API tokens of ``lorahub serve``.

A token is ``lh_`` + 43 URL-safe characters (32 random bytes). The catalog keeps only
``sha256(secret)``, so the secret is shown once, by ``create``; ``authenticate`` hashes what a
request carries and looks it up by that unique index on every request, so ``revoke`` holds at
once on every server process (no cache to go stale, unlike MLflow's per-worker credential cache).

A token has one scope and one namespace pattern. Scopes nest: ``read`` (pull, list, show) ⊂
``write`` (push, tag, metrics, rm) ⊂ ``admin`` (tokens, gc, bases). The pattern is ``*`` (every
namespace, and names without one), a namespace (``acme``), or a glob (``acme-*``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from lora_hub.catalog.convert import aware
from lora_hub.catalog.db import Database
from lora_hub.catalog.tables import TokenRow, utcnow
from lora_hub.errors import InvalidArgumentError, NotFoundError

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")
PREFIX = "lh_"
_PATTERN = re.compile(r"^(\*|[a-z0-9*][a-z0-9._*-]{0,95})$")


class TokenInfo(BaseModel):
    """A token as listed: never its secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    scope: Scope
    namespace: str = Field(description="namespace pattern: *, a namespace, or a glob such as acme-*")
    label: str | None = None
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def state(self, now: datetime | None = None) -> Literal["active", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"

    def covers(self, namespace: str) -> bool:
        """Whether the pattern takes in ``namespace`` ("" = names without a namespace: ``*`` only)."""
        if self.namespace == "*":
            return True
        return bool(namespace) and fnmatch.fnmatchcase(namespace, self.namespace)

    def allows(self, namespace: str, scope: Scope) -> bool:
        """Whether this token may do ``scope``-level work in ``namespace``."""
        return self.covers(namespace) and SCOPES.index(self.scope) >= SCOPES.index(scope)


class CreatedToken(BaseModel):
    """What ``token create`` returns: the secret, shown this once, and the token."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: str
    token: TokenInfo


def hash_secret(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def check_pattern(pattern: str) -> str:
    if not _PATTERN.match(pattern) or ".." in pattern or "--" in pattern:
        raise InvalidArgumentError(
            f"namespace pattern {pattern[:100]!r} is not valid",
            hint="use * (every namespace), a namespace such as acme, or a glob such as acme-*",
        )
    return pattern


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        scope=row.scope,  # checked when written
        namespace=row.namespace,
        label=row.label,
        created_at=aware(row.created_at),
        expires_at=aware(row.expires_at) if row.expires_at else None,
        revoked_at=aware(row.revoked_at) if row.revoked_at else None,
    )


class Tokens:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, scope: str, namespace: str, *, expires_at: datetime | None = None, label: str | None = None
    ) -> CreatedToken:
        if scope not in SCOPES:
            raise InvalidArgumentError(f"scope {scope[:20]!r} is not one of {', '.join(SCOPES)}")
        check_pattern(namespace)
        if label is not None and (len(label) > 200 or not label.isprintable()):
            raise InvalidArgumentError("a token label is printable text of at most 200 characters")
        secret = PREFIX + secrets.token_urlsafe(32)
        with self.db.session(write=True) as s:
            row = TokenRow(
                id=secrets.token_hex(6),
                secret_hash=hash_secret(secret),
                scope=scope,
                namespace=namespace,
                label=label,
                created_at=utcnow(),
                expires_at=expires_at,
            )
            s.add(row)
            s.flush()
            return CreatedToken(secret=secret, token=_info(row))

    def all(self) -> list[TokenInfo]:
        with self.db.session() as s:
            return [_info(r) for r in s.scalars(select(TokenRow).order_by(TokenRow.created_at, TokenRow.id))]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token (kept, marked revoked, so ``token list`` still shows it); idempotent."""
        with self.db.session(write=True) as s:
            row = s.get(TokenRow, token_id)
            if row is None:
                raise NotFoundError(f"no token with id {token_id[:40]!r}", hint="`lorahub token list` shows the ids")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            s.flush()
            return _info(row)

    def authenticate(self, secret: str) -> TokenInfo | None:
        """The token whose secret this is, whatever its state (the caller checks ``state()``), or
        None when no token has this secret."""
        if not secret.startswith(PREFIX) or len(secret) > 100:
            return None
        with self.db.session() as s:
            row = s.scalars(select(TokenRow).where(TokenRow.secret_hash == hash_secret(secret))).first()
            return _info(row) if row is not None else None
