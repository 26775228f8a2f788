"""Parses store URLs (sqlite:///path, postgresql://...) into what each backend needs."""

from __future__ import annotations

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
            f"store.url {url!r} has no scheme; use sqlite:///PATH or postgresql://..."
        )
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(f"store.url {url!r}: write sqlite:///relative/path or sqlite:////abs")
        return StoreUrl("sqlite", url, Path(rest[1:]))
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return StoreUrl("postgresql", url)
    raise ConfigError(f"store.url {url!r}: unsupported scheme {scheme!r}; use sqlite or postgresql")


def mask_url(url: str) -> str:
    """Hide the password of a URL such as postgresql://user:secret@host/db."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, has_password, _ = creds.partition(":")
    return f"{scheme}://{user}{':**********' if has_password else ''}@{host}"
