"""The first start: an `admin` user with a random password, shown once on the console."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import orjson

from fieldbridge.store import Store
from fieldbridge.web.security.audit import record
from fieldbridge.web.security.passwords import hash_password_async, random_password
from fieldbridge.web.security.principal import Role

FIRST_ADMIN = "admin"
FIELDBRIDGE_ADMIN_HINT = (
    f"{FIRST_ADMIN}; its password is in this line only: set another with "
    f"fieldbridge users passwd {FIRST_ADMIN}"
)


async def ensure_first_admin(store: Store) -> str | None:
    """With no users at all, add `admin` and return its password (else None)."""
    if await store.count_users():
        return None
    password = random_password()
    if not await store.add_user(FIRST_ADMIN, Role.ADMIN, await hash_password_async(password)):
        return None  # another process sharing the store made it first
    await record(store, "fieldbridge", "user.create", FIRST_ADMIN, {"role": "admin"})
    return password


def announce(password: str, url: str, *, json_lines: bool = False) -> None:
    """Straight to standard error, never through the log handlers (a log file, a level filter);
    with JSON logs, as one JSON object like theirs, so the stream stays parseable."""
    if json_lines:
        line = {
            "time": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "level": "WARNING",
            "logger": "fieldbridge.security",
            "message": f"created the console's first user {FIELDBRIDGE_ADMIN_HINT}",
            "user": FIRST_ADMIN,
            "password": password,
            "login": f"{url}/login",
        }
        print(orjson.dumps(line).decode(), file=sys.stderr, flush=True)
        return
    print(
        "\n"
        f"  Created the console's first user: {FIRST_ADMIN}\n"
        f"  Password (shown only this once): {password}\n"
        f"  Log in at {url}/login; change it with: fieldbridge users passwd {FIRST_ADMIN}\n",
        file=sys.stderr,
        flush=True,
    )
