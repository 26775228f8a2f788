"""Secrets handed out once (API tokens, session cookies) and the hashes the store keeps."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "fb_"  # lets secret scanners and people recognise a fieldbridge token


def digest(secret: str) -> str:
    """SHA-256, hex: these secrets carry 256 random bits, so no slow hash is needed."""
    return hashlib.sha256(secret.encode()).hexdigest()


def mint_token() -> tuple[str, str]:
    """A new API token and its hash: the token is shown once, only the hash is kept."""
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return plain, digest(plain)


def mint_secret() -> str:
    """A session id or CSRF token."""
    return secrets.token_urlsafe(32)
