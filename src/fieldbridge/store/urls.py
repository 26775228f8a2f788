"""Parses store URLs (sqlite:///path, postgresql://...) into what each backend needs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fieldbridge.errors import ConfigError


@dataclass(frozen=True)
class StoreUrl:
    """A parsed store URL."""

    backend: str  # "sqlite" or "postgresql"
    url: str
    sqlite_path: Path | None = None

    @property
    def sqlalchemy_url(self) -> str:
        if self.sqlite_path is not None:
            return f"sqlite:///{self.sqlite_path}"
        return "postgresql+psycopg://" + self.url.split("://", 1)[1]

    @property
    def libpq_url(self) -> str:
        return "postgresql://" + self.url.split("://", 1)[1]


def parse_store_url(url: str) -> StoreUrl:
    """sqlite:///relative/path, sqlite:////absolute/path, postgresql://user@host/db."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(
            f"store.url {mask_url(url)!r} has no scheme; use sqlite:///PATH or postgresql://..."
        )
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(
                f"store.url {mask_url(url)!r}: write sqlite:///relative/path or sqlite:////abs"
            )
        return StoreUrl("sqlite", url, Path(rest[1:]))
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return StoreUrl("postgresql", url)
    raise ConfigError(
        f"store.url {mask_url(url)!r}: unsupported scheme {scheme!r}; use sqlite or postgresql"
    )


MASK = "**********"

# A query parameter (or libpq keyword) whose name holds one of these is a secret: sslpassword,
# api_key, access_token, client_secret, auth, ... Generous on purpose: hiding a harmless value
# costs nothing, printing a password cannot be undone.
SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "key", "auth", "credential")

# name=value in a query string (separated by & or ;) or in a libpq conninfo (by spaces); a
# conninfo value may be quoted.
_PAIR = re.compile(r"(?P<name>[^\s=&;?#]+)(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s&;#]*)")


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def _mask_pairs(text: str) -> str:
    def hide(match: re.Match[str]) -> str:
        if not _is_secret(match["name"]) or not match["value"]:
            return match[0]
        return f"{match['name']}{match['eq']}{MASK}"

    return _PAIR.sub(hide, text)


def mask_url(url: str) -> str:
    """The URL with its secrets hidden: the password of user:secret@host, and every query
    parameter (or conninfo keyword) named like a secret, e.g. ?sslpassword=, ?api_key=."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # a conninfo such as "host=db password=x", or a URL missing its scheme
        scheme, rest = "", url
    # Credentials end before the query: a password written raw may hold '/', '#' or '@', and
    # the last '@' before the '?' ends it.
    head, query, tail = rest.partition("?")
    tail = query + tail
    if "@" in head:
        creds, _, host = head.rpartition("@")
        user, has_password, _ = creds.partition(":")
        head = f"{user}{':' + MASK if has_password else ''}@{host}"
    if sep:
        return f"{scheme}://{head}{_mask_pairs(tail)}"
    return _mask_pairs(f"{head}{tail}")
