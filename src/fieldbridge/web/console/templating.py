"""Renders the console's Jinja2 templates, with the caller and the filters every page uses."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse

from fieldbridge.printable import escape as printable
from fieldbridge.timefmt import iso
from fieldbridge.web.security.principal import principal_of

TEMPLATES = Path(__file__).with_name("templates")


def ago(ts: float | None, now: float | None = None) -> str:
    """'3 min ago' style: how long before now a time was."""
    if ts is None:
        return "never"
    seconds = (time.time() if now is None else now) - ts
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def when(ts: float | None) -> str:
    """A time as the console shows it: ISO 8601 UTC to the second."""
    if ts is None:
        return ""
    return iso(float(int(ts)))


def hexdump(data: bytes, limit: int = 512) -> str:
    """Bytes as spaced hex pairs, 16 to a line, cut after `limit` bytes."""
    shown = data[:limit]
    lines = [shown[i : i + 16].hex(" ") for i in range(0, len(shown), 16)]
    if len(data) > limit:
        lines.append(f"... {len(data) - limit} more bytes")
    return "\n".join(lines)


def as_text(data: bytes, limit: int = 2048) -> str | None:
    """Bytes as UTF-8 text with unprintable characters escaped; None if not UTF-8."""
    try:
        text = data[:limit].decode()
    except UnicodeDecodeError:
        return None
    return printable(text, keep="\n") + ("..." if len(data) > limit else "")


def battery(attributes: Mapping[str, Any]) -> str:
    """The battery as a device last reported it (volts, or Efento's ok/low); '' if it does not."""
    value = attributes.get("battery")
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g} V"
    return str(value)


def shown(value: Any) -> str:
    """An attribute as its owner would write it: JSON for lists and objects, else text."""
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def device_url(device_id: str) -> str:
    return "/devices/" + quote(device_id, safe="")


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(
    ago=ago,
    when=when,
    hexdump=hexdump,
    as_text=as_text,
    device_url=device_url,
    battery=battery,
    shown=shown,
)


def render(
    request: Request, template: str, values: Mapping[str, Any], status_code: int = 200
) -> HTMLResponse:
    """A page or fragment; every template sees `me` (the caller) and `path`."""
    html = _env.get_template(template).render(
        me=principal_of(request), path=request.url.path, **values
    )
    return HTMLResponse(html, status_code=status_code)
