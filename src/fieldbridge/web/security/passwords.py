"""Password hashes (argon2id) and the first admin's random password."""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 8
MAX_LENGTH = 1024  # argon2 takes any length; a cap keeps a login form from costing more
# RFC 9106's second recommended option and OWASP's: argon2id, 19 MiB, 2 passes, 1 lane; less
# memory than argon2-cffi's default (64 MiB) suits the small machines fieldbridge runs on.
_hasher = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
# A hash costs tens of ms of CPU and 19 MiB: at most two at once, off the event loop.
_slots = asyncio.Semaphore(2)


def check_strength(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_LENGTH:
        return f"a password needs at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"a password has at most {MAX_LENGTH} characters"
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def verify_password_async(stored_hash: str, password: str) -> bool:
    async with _slots:
        return await asyncio.to_thread(verify_password, stored_hash, password)


async def hash_password_async(password: str) -> str:
    async with _slots:
        return await asyncio.to_thread(hash_password, password)


def random_password() -> str:
    return secrets.token_urlsafe(15)  # 20 characters, 120 bits
