"""The first start: an `admin` user with a random password, shown once on the console."""

from __future__ import annotations

import sys

from fieldbridge.store import Store
from fieldbridge.web.security.audit import record
from fieldbridge.web.security.passwords import hash_password_async, random_password
from fieldbridge.web.security.principal import Role

FIRST_ADMIN = "admin"


async def ensure_first_admin(store: Store) -> str | None:
    """With no users at all, add `admin` and return its password (else None)."""
    if await store.count_users():
        return None
    password = random_password()
    if not await store.add_user(FIRST_ADMIN, Role.ADMIN, await hash_password_async(password)):
        return None  # another process sharing the store made it first
    await record(store, "fieldbridge", "user.create", FIRST_ADMIN, {"role": "admin"})
    return password


def announce(password: str, url: str) -> None:
    """Straight to the terminal, never through the logs (which may be kept or shipped)."""
    print(
        "\n"
        f"  Created the console's first user: {FIRST_ADMIN}\n"
        f"  Password (shown only this once): {password}\n"
        f"  Log in at {url}/login; change it with: fieldbridge users passwd {FIRST_ADMIN}\n",
        file=sys.stderr,
        flush=True,
    )
