"""Short UUIDs as the DUNE DB writes them: a UUID's 128 bits in base 58 (or 57), 22 characters.

The DB's npm `short-uuid` 4.2.0 uses the flickr base-58 alphabet, most significant digit
first, left-padded to 22 characters with the alphabet's first symbol; its later server also
tries the base-57 alphabet of Python's `shortuuid` (1.x, same digit order). Neither library is
used here: `shortuuid` knows only its own alphabet, and the npm one is JavaScript. The
arithmetic is a few lines (integers are arbitrary precision).
"""

from __future__ import annotations

import re
import uuid

FLICKR_BASE58 = "123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
BASE57 = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
LENGTH = 22  # characters a 128-bit value takes in base 58 (and 57)
# What the DB's /convertShortUUID/ route takes (db642cd relaxed it from exactly 22).
ROUTE = re.compile(r"[123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ-]{20,22}")


def encode(value: uuid.UUID, alphabet: str = FLICKR_BASE58) -> str:
    """The short form of a UUID, padded to 22 characters."""
    number = value.int
    base = len(alphabet)
    digits: list[str] = []
    while number:
        number, digit = divmod(number, base)
        digits.append(alphabet[digit])
    return "".join(reversed(digits)).rjust(LENGTH, alphabet[0])


def decode(short: str, alphabet: str = FLICKR_BASE58) -> uuid.UUID:
    """The UUID of a short form (padded or not); ValueError names what is wrong."""
    if not short or len(short) > LENGTH:
        raise ValueError(f"short UUID {short[:40]!r} must be 1 to {LENGTH} characters")
    base = len(alphabet)
    number = 0
    for position, char in enumerate(short):
        digit = alphabet.find(char)
        if digit < 0:
            raise ValueError(
                f"short UUID {short!r}: {char!r} at position {position} is not in the "
                f"base-{base} alphabet"
            )
        number = number * base + digit
    if number >= 1 << 128:
        raise ValueError(f"short UUID {short!r} is larger than 128 bits")
    return uuid.UUID(int=number)
