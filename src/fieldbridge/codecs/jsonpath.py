"""Dotted JSON paths (`meta.id`, `data[0].t`, `$.a["b.c"]`): parsed once, looked up per message.

Hand-written rather than jsonpath-ng: the codecs need only one value per path, and a tuple of
keys walked by a loop is many times faster per message than a JSONPath engine and has no
dependency; filters and wildcards are not needed.
"""

from __future__ import annotations

import re
from typing import Any

Path = tuple[str | int, ...]

_STEP = re.compile(
    r'\.?(?P<key>[^.\[\]"]+)|\[(?P<index>-?\d{1,9})\]|\["(?P<quoted>(?:[^"\\]|\\.)*)"\]', re.ASCII
)
MISSING: Any = object()  # what `lookup` returns when the path leads nowhere


def parse_path(text: str) -> Path:
    """`data.t` -> ("data", "t"); `a[0]` -> ("a", 0); `["a.b"]` -> ("a.b",); ValueError if bad."""
    body = text.strip()
    if body in ("", "$"):
        raise ValueError(f"{text!r} is not a path; write e.g. meta.id or data[0].t")
    body = body.removeprefix("$.").removeprefix("$")
    steps: list[str | int] = []
    pos = 0
    while pos < len(body):
        match = _STEP.match(body, pos)
        if match is None or (pos == 0 and body.startswith(".")):
            raise ValueError(
                f"{text!r}: cannot read the path at {body[pos:][:20]!r}; write keys with dots "
                'and list positions as [0], e.g. data.values[0] or ["key.with.dots"]'
            )
        if match.group("key") is not None:
            steps.append(match.group("key"))
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        else:
            steps.append(re.sub(r"\\(.)", r"\1", match.group("quoted")))
        pos = match.end()
    return tuple(steps)


def lookup(data: object, path: Path) -> Any:
    """The value at `path` in parsed JSON, or MISSING."""
    for step in path:
        if type(step) is str:
            if type(data) is not dict:
                return MISSING
            data = data.get(step, MISSING)
            if data is MISSING:
                return MISSING
        else:
            if type(data) is not list:
                return MISSING
            try:
                data = data[step]  # type: ignore[index]
            except IndexError:
                return MISSING
    return data


def show(path: Path) -> str:
    """A path as users write it."""
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif re.fullmatch(r'[^.\[\]"]+', step):
            out += f".{step}" if out else step
        else:
            escaped = step.replace("\\", "\\\\").replace('"', '\\"')
            out += f'["{escaped}"]'
    return out
