"""The `efento config`, `efento pending` and `efento cancel` commands: Efento downlinks."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer

from fieldbridge.cli.context import with_store
from fieldbridge.cli.output import console, fail, print_json, print_table
from fieldbridge.cli.user_cmds import actor
from fieldbridge.codecs.efento import encode_config
from fieldbridge.efento_queue import queue_config
from fieldbridge.model import Device, Downlink
from fieldbridge.store import Store
from fieldbridge.timefmt import iso

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
SERIAL = re.compile(r"^[0-9A-Fa-f]{12}$")
REQUESTS = {"device-info": "device_info_request", "configuration": "configuration_request"}

efento_app = typer.Typer(
    help="Efento sensors: queue configuration downlinks and see which are pending.",
    no_args_is_help=True,
)


def _serial(value: str) -> str:
    if not SERIAL.match(value):
        fail(
            f"SERIAL {value!r}: an Efento serial is 12 hex digits, e.g. 282C024156AF "
            "(`fieldbridge devices list --kind efento` shows them)",
            code=2,
        )
    return value.upper()


def _value(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, true, lists, objects), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_settings(pairs: list[str], requests: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            fail(f"--set {pair!r}: write NAME=VALUE, e.g. --set transmission_interval=900", code=2)
        if name in fields:
            fail(f"--set {name}: given twice", code=2)
        fields[name] = _value(text)
    for request in requests:
        field = REQUESTS.get(request)
        if field is None:
            fail(f"--request {request!r}: use one of {', '.join(REQUESTS)}", code=2)
        fields[field] = True
    if not fields:
        fail("nothing to send: give --set NAME=VALUE and/or --request", code=2)
    return fields


@efento_app.command("config")
def efento_config(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(metavar="SERIAL", help="The sensor's serial (hex).")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="NAME=VALUE of a ProtoConfig setting, e.g. measurement_period_base=60 "
            "(names as `fieldbridge decode efento --endpoint c` prints them, or snake_case); "
            "repeatable. VALUE is JSON if it parses, else text.",
        ),
    ] = None,
    request: Annotated[
        list[str] | None,
        typer.Option(
            "--request",
            help="Ask the sensor to upload: device-info (/i) or configuration (/c); repeatable.",
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Queue a configuration downlink; it leaves in the 2.01 to the sensor's next CON /m or /i."""
    device = _serial(serial)
    fields = parse_settings(set_ or [], request or [])
    try:
        payload = encode_config(fields)
    except ValueError as exc:
        fail(f"--set {exc}", code=2)

    async def queue(store: Store) -> tuple[int, Device | None]:
        downlink_id = await queue_config(store, device, payload, fields, "cli")
        return downlink_id, await store.get_device(device)

    downlink_id, known = with_store(ctx, queue)
    if json_out:
        print_json(
            {
                "id": downlink_id,
                "device": device,
                "payload_hex": payload.hex(),
                "fields": fields,
                "device_known": known is not None,
            }
        )
        return
    console.print(
        f"queued downlink {downlink_id} for {device} ({len(payload)} bytes: {payload.hex()}); "
        "it is sent with the sensor's next confirmable /m or /i"
    )
    if known is None:
        console.print(
            f"[yellow]note:[/yellow] {device} has not sent anything yet; check the serial",
            highlight=False,
        )


def downlink_json(d: Downlink) -> dict[str, Any]:
    return {
        "id": d.id,
        "device": d.device,
        "state": d.state,
        "payload_hex": d.payload.hex(),
        "origin": d.origin,
        "fields": dict(d.fields) if d.fields is not None else None,
        "expect_hash_change": d.expect_hash_change,
        "attempts": d.attempts,
        "sent_hash": d.sent_hash,
        "failed_reason": d.failed_reason,
        "meta": dict(d.meta),
        "created_at": iso(d.created_at),
        "sent_at": _iso_or_none(d.sent_at),
        "confirmed_at": _iso_or_none(d.confirmed_at),
        "failed_at": _iso_or_none(d.failed_at),
    }


def _iso_or_none(at: float | None) -> str | None:
    return iso(at) if at is not None else None


@efento_app.command("pending")
def efento_pending(
    ctx: typer.Context,
    serial: Annotated[
        str | None, typer.Argument(metavar="SERIAL", help="Only this sensor's downlinks.")
    ] = None,
    all_states: Annotated[
        bool,
        typer.Option("--all", help="Also confirmed and failed downlinks (newest first)."),
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """List downlinks not yet confirmed (queued, or sent and waiting for the new hash)."""
    device = _serial(serial) if serial is not None else None
    if all_states:
        found = with_store(ctx, lambda s: s.list_downlinks(device=device))
    else:
        found = with_store(ctx, lambda s: s.pending_downlinks(device))
    if json_out:
        print_json([downlink_json(d) for d in found])
        return
    print_table(
        "downlinks" if all_states else "pending downlinks",
        ["id", "device", "state", "created", "sent", "attempts", "origin", "fields"],
        [
            (
                d.id,
                d.device,
                d.state,
                iso(d.created_at),
                iso(d.sent_at) if d.sent_at is not None else None,
                d.attempts,
                d.origin,
                _fields_text(d),
            )
            for d in found
        ],
    )


def _fields_text(d: Downlink) -> str:
    if d.fields is None:
        return f"{len(d.payload)} bytes"
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in d.fields.items())


@efento_app.command("cancel")
def efento_cancel(
    ctx: typer.Context,
    downlink_id: Annotated[
        int, typer.Argument(metavar="ID", help="The downlink's id (efento pending).")
    ],
    json_out: JsonFlag = False,
) -> None:
    """Give up a queued or sent (unconfirmed) downlink: it is never sent (again) and shows as
    failed, cancelled."""

    async def cancel(store: Store) -> tuple[Downlink | None, Downlink | None]:
        done = await store.cancel_downlink(downlink_id, f"cancelled by {actor()}")
        return done, (await store.get_downlink(downlink_id) if done is None else None)

    done, found = with_store(ctx, cancel)
    if done is None:
        if found is None:
            fail(f"no downlink {downlink_id}; `fieldbridge efento pending --all` lists them")
        fail(f"downlink {downlink_id} is {found.state}; nothing to cancel")
    if json_out:
        print_json(downlink_json(done))
    else:
        console.print(f"downlink {downlink_id} for {done.device} cancelled")
