"""What answers without a login: the way in, health, static files, and the sources' own
endpoints (sensors do not log in; http.tokens guards those)."""

from __future__ import annotations

from collections.abc import Callable, Collection

ALWAYS = frozenset({"/login", "/logout", "/healthz", "/favicon.ico"})
STATIC = "/static/"


def public_paths(source_paths: Collection[str], metrics_public: bool) -> Callable[[str, str], bool]:
    exact = set(ALWAYS) | set(source_paths)
    if metrics_public:
        exact.add("/metrics")

    def is_public(method: str, path: str) -> bool:
        return path in exact or path.startswith(STATIC)

    return is_public
