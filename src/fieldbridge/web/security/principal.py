"""The authenticated caller of a request, as the security middleware resolved it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from starlette.requests import HTTPConnection


class Role(StrEnum):
    ADMIN = "admin"
    VIEWER = "viewer"


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class Principal:
    """A user logged in with a session cookie, or a script with an API token."""

    name: str  # the user name, or the token's name for a token
    via: Literal["session", "token"]
    role: Role | None = None  # users only
    scope: Scope | None = None  # tokens only
    csrf_token: str | None = None  # sessions only: what unsafe requests must echo

    @property
    def can_write(self) -> bool:
        """Admins and write-scoped tokens change things; viewers and read tokens only look."""
        return self.role is Role.ADMIN or self.scope is Scope.WRITE

    @property
    def is_admin(self) -> bool:
        """Users, tokens and the audit log are for admins logged in as themselves."""
        return self.role is Role.ADMIN

    @property
    def actor(self) -> str:
        """How the audit log names who did something."""
        return self.name if self.via == "session" else f"token:{self.name}"


PRINCIPAL_KEY = "fieldbridge.principal"


def principal_of(conn: HTTPConnection) -> Principal:
    """The caller; the middleware lets no anonymous request reach a protected route."""
    found = conn.scope.get(PRINCIPAL_KEY)
    if not isinstance(found, Principal):
        raise RuntimeError(f"{conn.url.path} is not behind the security middleware")
    return found
