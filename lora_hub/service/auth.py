"""Who is asking, and may they: bearer tokens looked up in the catalog on every request.

A request without ``Authorization`` is anonymous: it may read only where the server allows
anonymous reading (``LORAHUB_ANONYMOUS_READ=1``), else it gets 401. A token that is unknown,
expired or revoked always gets 401. A token that cannot read a namespace is told that what it
asked for does not exist (404, exactly as for a name that does not exist), so that existence does
not leak; one that can read it but not change it gets 403.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lora_hub.api import TokenInfo
from lora_hub.errors import LoraHubError, PermissionDeniedError, UnauthorizedError

Scope = str  # "read" | "write" | "admin"
_LOGIN_HINT = (
    "set LORAHUB_TOKEN, or run `lorahub login URL --token TOKEN` (an admin creates one with `lorahub token create`)"
)


@dataclass(frozen=True)
class Principal:
    token: TokenInfo | None
    anonymous_read: bool

    @property
    def sees_everything(self) -> bool:
        """Whether this caller may read every namespace (anonymous reading, or a ``*`` token)."""
        return self.token.namespace == "*" if self.token else self.anonymous_read

    def need(self, namespace: str, scope: Scope, hidden: Callable[[], LoraHubError]) -> None:
        """Raise unless this caller may do ``scope``-level work in ``namespace``; ``hidden`` makes
        the not-found error of the thing asked for, given when the namespace is unreadable."""
        if self.token is None:
            if scope == "read" and self.anonymous_read:
                return
            raise UnauthorizedError("this lorahub server needs a token", hint=_LOGIN_HINT)
        if not self.token.covers(namespace):
            raise hidden()
        if not self.token.allows(namespace, scope):  # type: ignore[arg-type]
            where = f"namespace {namespace}" if namespace else "names without a namespace"
            raise PermissionDeniedError(
                f"this token ({self.token.scope}) may not {scope} in {where}",
                hint=f"ask an admin for a {scope} token for it",
            )

    def need_any(self) -> None:
        """Any valid token (or anonymous reading): for what belongs to no namespace (bases, methods)."""
        if self.token is None and not self.anonymous_read:
            raise UnauthorizedError("this lorahub server needs a token", hint=_LOGIN_HINT)

    def need_admin(self) -> None:
        """An admin token over every namespace (``*``)."""
        if self.token is None:
            raise UnauthorizedError("this lorahub server needs a token", hint=_LOGIN_HINT)
        if not (self.token.scope == "admin" and self.token.namespace == "*"):
            raise PermissionDeniedError("this needs an admin token for namespace *", hint="ask an admin")


def bearer_secret(authorization: str | None) -> str | None:
    """The token secret of an ``Authorization`` header (``Bearer <token>``); None without one."""
    if not authorization:
        return None
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise UnauthorizedError("the Authorization header is not `Bearer <token>`", hint=_LOGIN_HINT)
    return secret.strip()


def principal_for(secret: str | None, token: TokenInfo | None, anonymous_read: bool) -> Principal:
    """The caller who sent ``secret`` (None: no ``Authorization``), whose token the catalog
    holds as ``token`` (None: unknown)."""
    if secret is None:
        return Principal(None, anonymous_read)
    if token is None:
        raise UnauthorizedError("this token is not known to the server", hint=_LOGIN_HINT)
    state = token.state()
    if state != "active":
        raise UnauthorizedError(f"this token ({token.id}) is {state}", hint=_LOGIN_HINT)
    return Principal(token, anonymous_read)
