"""fieldbridge spy: prints what the running service ingests, live, from its HTTP server."""

from __future__ import annotations

import sys
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import orjson
import typer
from rich.markup import escape as escape_markup

from fieldbridge.cli.context import settings_of
from fieldbridge.cli.output import console, errors, fail
from fieldbridge.printable import escape as escape_unprintable
from fieldbridge.web.spy import HEARTBEAT_S

SHOWN_READINGS = 12  # per message in the text view; --json has them all

TOKEN_ENV = "FIELDBRIDGE_TOKEN"


def spy(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Option(help="Only payloads from this source.")] = None,
    topic: Annotated[
        str | None,
        typer.Option(help="Only MQTT topics matching this filter (+ and # wildcards)."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per line (NDJSON).")
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=TOKEN_ENV,
            help=f"An API token (fieldbridge tokens create --scope read). Default: ${TOKEN_ENV}, "
            "else the first of http.tokens.",
        ),
    ] = None,
) -> None:
    """Watch payloads as the running service ingests them: device, readings or why refused.

    Reads from the service's HTTP server, never a second MQTT subscription. Ctrl-C stops.
    """
    http = settings_of(ctx).http
    if not http.enabled:
        fail("the spy reads from the service's HTTP server, and http.enabled is false", code=2)
    url = f"{_base_url(http.listen)}/api/v1/spy"
    query = {k: v for k, v in (("source", source), ("topic", topic)) if v}
    if query:
        url += "?" + urlencode(query)
    token = token or (http.tokens[0] if http.tokens else None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        _watch(url, headers, json_out)
    except KeyboardInterrupt:
        # On stderr: Ctrl-C may land inside a print to stdout, whose buffer the next print
        # to stdout would write a second time.
        errors.print("stopped", style="dim")


def _watch(url: str, headers: dict[str, str], json_out: bool) -> None:
    # A heartbeat comes every HEARTBEAT_S; three missed ones mean the service is gone.
    timeout = httpx.Timeout(5.0, read=3 * HEARTBEAT_S)
    base = url.split("/api/", 1)[0]
    try:
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code != 200:
                response.read()
                fail(_refusal(response))
            for line in response.iter_lines():
                if line:
                    _show(line, json_out)
    except httpx.ConnectError:
        fail(
            f"fieldbridge is not running at {base} (start it with `fieldbridge run`, or point "
            "http.listen at the running service)"
        )
    except httpx.ReadTimeout:
        fail(f"fieldbridge at {base} stopped answering")
    except httpx.RemoteProtocolError:
        pass
    fail("the service closed the stream (it is stopping or restarting)")


def _show(line: str, json_out: bool) -> None:
    event: dict[str, Any] = orjson.loads(line)
    kind = event.get("type")
    if json_out:
        if kind != "heartbeat":
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        return
    if kind == "hello":
        filters = ", ".join(f"{k} {event[k]}" for k in ("source", "topic") if event.get(k))
        console.print(f"[dim]watching {filters or 'every source'}; Ctrl-C stops[/dim]")
    elif kind == "dropped":
        console.print(f"[yellow]... {event['count']} messages dropped (too slow to show)[/yellow]")
    elif kind == "message":
        console.print(_text(event), highlight=False, soft_wrap=True)


def _text(event: dict[str, Any]) -> str:
    time = str(event["time"])[11:23]
    where = escape(" ".join(str(x) for x in (event["source"], event.get("topic")) if x))
    if event["outcome"] == "rejected":
        reason = escape(str(event["reason"]))
        return f"{time} {where} [red]refused[/red] {reason} (quarantine {event['quarantine_id']})"
    parts = []
    for message in event.get("messages", []):
        readings = message["readings"]
        shown = " ".join(
            f"{r['quantity']}={_number(r['value'])}{r['unit'] or ''}"
            for r in readings[:SHOWN_READINGS]
        )
        more = f" (+{len(readings) - SHOWN_READINGS})" if len(readings) > SHOWN_READINGS else ""
        attrs = "attributes " + ",".join(message["attributes"]) if message["attributes"] else ""
        text = " ".join(x for x in (shown + more, attrs) if x)
        parts.append(
            f"[bold]{escape(message['device'])}[/bold]" + (f" {escape(text)}" if text else "")
        )
    mark = " [dim](duplicate)[/dim]" if event["outcome"] == "duplicate" else ""
    for part in event.get("quarantined", []):  # items refused beside the stored ones
        reason = escape(str(part["reason"]))
        mark += f"; [red]refused[/red] {reason} (quarantine {part['quarantine_id']})"
    return f"{time} {where} " + "; ".join(parts) + mark


def escape(text: str) -> str:
    """Text fit for console.print: no markup, and unprintable characters shown as escapes."""
    return escape_markup(escape_unprintable(text))


def _number(value: object) -> str:
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _refusal(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        detail = str(error.get("message") if isinstance(error, dict) else error)
    except ValueError:
        detail = response.text[:200]
    if response.status_code == 401:
        return (
            f"the service refused the spy: {detail} (pass an API token with --token or "
            f"${TOKEN_ENV}: fieldbridge tokens create --name spy --scope read)"
        )
    if response.status_code == 404:
        return "the service at http.listen has no spy endpoint (an older fieldbridge?)"
    return f"the service refused the spy ({response.status_code}): {detail}"


def _base_url(listen: str) -> str:
    """Where to reach the service that listens on `listen` (a wildcard means this machine)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
