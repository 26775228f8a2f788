"""devices, readings and quarantine commands."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from fieldbridge.cli.context import settings_of, with_store
from fieldbridge.cli.output import console, fail, print_json, print_table
from fieldbridge.cli.records import device_json, links_json, quarantine_json, stored_reading_json
from fieldbridge.errors import DecodeError
from fieldbridge.ingest import Ingest
from fieldbridge.model import (
    Device,
    DeviceStatus,
    QuarantineEntry,
    Role,
    Subscriber,
    check_device_id,
)
from fieldbridge.reingest import CannotReingest, Reingested, reingest
from fieldbridge.store import Store
from fieldbridge.store.devicechange import (
    ChangeRefused,
    DeviceChange,
    change_device,
    location,
    parse_subscriber,
)
from fieldbridge.timefmt import iso, parse_iso

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

devices = typer.Typer(
    help="The device registry: every device fieldbridge has seen.", no_args_is_help=True
)
readings = typer.Typer(help="Stored readings.", no_args_is_help=True)
quarantine = typer.Typer(
    help="Payloads that did not decode, kept with the reason.", no_args_is_help=True
)


@devices.command("list")
def devices_list(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Option(help="Only devices of this kind.")] = None,
    source: Annotated[
        str | None, typer.Option(help="Only devices first seen on this source.")
    ] = None,
    status: Annotated[
        DeviceStatus | None, typer.Option(help="Only devices current, down or in maintenance.")
    ] = None,
    search: Annotated[
        str | None, typer.Option(help="Only devices whose id or name holds this (any case).")
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(help="Start after this id (the last one of the previous page)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 1000,
    json_out: JsonFlag = False,
) -> None:
    """List devices, by id."""
    found = with_store(
        ctx,
        lambda s: s.search_devices(
            kind=kind, source=source, status=status, q=search, after=after, limit=limit
        ),
    )
    if json_out:
        print_json([device_json(d) for d in found])
        return
    print_table(
        "devices",
        ["id", "kind", "source", "last seen", "messages", "flags"],
        [
            (
                d.id,
                d.kind,
                d.source,
                iso(d.last_seen),
                d.message_count,
                ",".join(k for k, v in d.flags.items() if v),
            )
            for d in found
        ],
    )


@devices.command("show")
def devices_show(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="The device id.")],
    json_out: JsonFlag = False,
) -> None:
    """Show one device with its attributes, flags, role, status and relaying gateways."""

    async def get(store: Store) -> dict[str, Any] | None:
        found = await store.get_device(device_id)
        return None if found is None else await _full_json(store, found)

    data = with_store(ctx, get)
    if data is None:
        fail(f"no device {device_id!r}; `fieldbridge devices list` shows the known ones")
    if json_out:
        print_json(data)
        return
    print_table(f"device {device_id}", ["field", "value"], _shown(data))


async def _full_json(store: Store, device: Device) -> dict[str, Any]:
    """A device as `devices show` prints it: the list entry plus who relayed it, and what."""
    links = await store.device_links(device.id)
    relayed = await store.relayed_by(device.id)
    subscribers = (await store.subscribers([device.id])).get(device.id, [])
    return {
        **device_json(device),
        **links_json(links),
        "relayed": [{"device": r.via, "last_seen": iso(r.last_seen)} for r in relayed],
        "notify": [str(s) for s in subscribers],
        "transitions": [
            {
                "from": t.from_status.value,
                "to": t.to_status.value,
                "at": iso(t.at),
                "reason": t.reason,
                "notified_at": None if t.notified_at is None else iso(t.notified_at),
            }
            for t in await store.transitions(device.id)
        ],
    }


def _shown(data: dict[str, Any]) -> list[tuple[str, Any]]:
    """`devices show` as table rows: who is notified and each status change (`AT from -> to
    (reason)`, newest first, and whether its notifications are still owed) one row each."""
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        if key == "notify":
            lines = list(value)
        elif key == "transitions":
            lines = [
                f"{t['at']} {t['from']} -> {t['to']} ({t['reason']})"
                + ("" if t["notified_at"] else ", notification owed")
                for t in value
            ]
        else:
            rows.append((key, value))
            continue
        rows += [(key if i == 0 else "", line) for i, line in enumerate(lines or [""])]
    return rows


def _parse_subscribers(values: list[str], option: str) -> tuple[Subscriber, ...]:
    try:
        return tuple(parse_subscriber(value, option) for value in values)
    except ChangeRefused as exc:
        fail(str(exc), code=2)


def _parse_pairs(values: list[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            fail(f"{option} {value!r}: write KEY=VALUE", code=2)
        pairs[key] = rest
    return pairs


def _parse_flags(values: list[str]) -> dict[str, bool]:
    flags: dict[str, bool] = {}
    for key, value in _parse_pairs(values, "--flag").items():
        if value.lower() not in ("on", "off"):
            fail(f"--flag {key}={value}: the value must be on or off", code=2)
        flags[key] = value.lower() == "on"
    return flags


def _parse_location(text: str) -> dict[str, float]:
    lat_text, sep, lon_text = text.partition(",")
    try:
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:
        lat = lon = float("nan")
    if not sep or lat != lat or lon != lon:
        fail(f"--location {text!r}: write LAT,LON in degrees, e.g. -36.83,174.83", code=2)
    try:
        return location(lat, lon, f"--location {text!r}")
    except ChangeRefused as exc:
        fail(str(exc), code=2)


@devices.command("add")
def devices_add(
    ctx: typer.Context,
    device_id: Annotated[
        str, typer.Argument(metavar="ID", help="The device id, e.g. a kit token.")
    ],
    kind: Annotated[str | None, typer.Option(help="The device kind, e.g. smartcitizen.")] = None,
    name: Annotated[str | None, typer.Option(help="A human name for the device.")] = None,
    attr: Annotated[list[str] | None, typer.Option("--attr", help="KEY=VALUE.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Register a device before it sends anything (needed by codec_options.registered_only)."""
    if not device_id.strip():
        fail("ID must be non-empty text", code=2)
    try:
        check_device_id(device_id, "ID")  # the rule every codec's ids follow
    except DecodeError as exc:
        fail(exc.reason, code=2)
    attrs = _parse_pairs(attr or [], "--attr")

    async def add(store: Store) -> Device | None:
        return await store.add_device(device_id, kind=kind, name=name, attributes=attrs)

    device = with_store(ctx, add)
    if device is None:
        fail(
            f"device {device_id!r} is already registered; change it with `fieldbridge devices set`"
        )
    if json_out:
        print_json(device_json(device))
    else:
        print_table(f"device {device_id}", ["field", "value"], list(device_json(device).items()))


@devices.command("set")
def devices_set(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="The device id.")],
    flag: Annotated[
        list[str] | None, typer.Option("--flag", help="KEY=on|off, e.g. upload_trapnz=on.")
    ] = None,
    attr: Annotated[list[str] | None, typer.Option("--attr", help="KEY=VALUE.")] = None,
    name: Annotated[str | None, typer.Option(help="A human name for the device.")] = None,
    message_type: Annotated[
        str | None,
        typer.Option(
            "--message-type",
            help="Name its CSV values with this message type; '' detaches it.",
        ),
    ] = None,
    status: Annotated[
        DeviceStatus | None,
        typer.Option(
            help="current or maintenance (never marked down; messages do not bring it up)."
        ),
    ] = None,
    allowed_downtime: Annotated[
        int | None,
        typer.Option(
            "--allowed-downtime", min=1, help="Minutes it may stay silent before it is down."
        ),
    ] = None,
    role: Annotated[Role | None, typer.Option(help="node, repeater or gateway.")] = None,
    team: Annotated[
        str | None, typer.Option(help="The team (project) it belongs to; '' clears it.")
    ] = None,
    location: Annotated[
        str | None,
        typer.Option(
            help="LAT,LON: a fixed location shown instead of what it reports; '' removes it."
        ),
    ] = None,
    notify: Annotated[
        list[str] | None,
        typer.Option(
            "--notify",
            help="email:ADDRESS or sms:NUMBER told when it goes down or comes back up.",
        ),
    ] = None,
    no_notify: Annotated[
        list[str] | None,
        typer.Option("--no-notify", help="email:ADDRESS or sms:NUMBER no longer told."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Set flags (routing switches such as influx), attributes, name, message type, status,
    allowed downtime, role, team, a location override or who is notified of a device."""
    fixed = None if location is None or not location.strip() else _parse_location(location)
    change = DeviceChange(
        flags=_parse_flags(flag or []),
        attributes=dict(_parse_pairs(attr or [], "--attr")),
        name=name,
        message_type=message_type,
        status=status,
        allowed_downtime_min=allowed_downtime,
        role=role,
        team=team,
        location=fixed,
        remove_location=location is not None and fixed is None,
        notify=_parse_subscribers(notify or [], "--notify"),
        no_notify=_parse_subscribers(no_notify or [], "--no-notify"),
    )
    if change.empty:
        fail(
            "nothing to set; give --flag KEY=on|off, --attr KEY=VALUE, --name, --message-type, "
            "--status, --allowed-downtime, --role, --team, --location, --notify or --no-notify",
            code=2,
        )
    if status is DeviceStatus.DOWN:
        fail(
            "--status down: a device goes down by itself when it stays silent past its "
            "allowed downtime; set current or maintenance",
            code=2,
        )

    async def update(store: Store) -> dict[str, Any] | None:
        try:
            device = await change_device(store, device_id, change)
        except ChangeRefused as exc:
            fail(str(exc))
        return None if device is None else await _full_json(store, device)

    data = with_store(ctx, update)
    if data is None:
        fail(f"no device {device_id!r}; devices appear once they sent a message")
    if json_out:
        print_json(data)
    else:
        print_table(f"device {device_id}", ["field", "value"], _shown(data))


@readings.command("list")
def readings_list(
    ctx: typer.Context,
    device: Annotated[str, typer.Option(help="The device id.")],
    since: Annotated[
        str | None, typer.Option(help="ISO 8601 time; readings measured from then on.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 100,
    json_out: JsonFlag = False,
) -> None:
    """List readings of one device in time order (the latest ones without --since)."""
    start = None
    if since is not None:
        try:
            start = parse_iso(since)
        except ValueError:
            fail(f"--since {since!r} is not ISO 8601 (e.g. 2026-11-23T08:00:00Z)", code=2)
    found = with_store(ctx, lambda s: s.list_readings(device, since=start, limit=limit))
    rows = [stored_reading_json(r) for r in found]
    if json_out:
        print_json(rows)
        return
    print_table(
        f"readings of {device}",
        ["measured_at", "quantity", "channel", "value", "unit"],
        [(r["measured_at"], r["quantity"], r["channel"], r["value"], r["unit"]) for r in rows],
    )


@quarantine.command("list")
def quarantine_list(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Option(help="Only payloads from this source.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    json_out: JsonFlag = False,
) -> None:
    """List quarantined payloads, newest first, with the reason each was refused."""
    found = with_store(ctx, lambda s: s.list_quarantine(source=source, limit=limit))
    rows = [quarantine_json(q) for q in found]
    if json_out:
        print_json(rows)
        return
    print_table(
        "quarantined payloads",
        ["id", "received_at", "source", "reason", "payload"],
        [
            (
                r["id"],
                r["received_at"],
                r["source"],
                r["reason"],
                (r["payload_text"] or "<binary>")[:60],
            )
            for r in rows
        ],
    )


def _quarantine_id(value: int) -> int:
    if value < 1:
        fail(f"ID {value}: quarantine ids start at 1 (`fieldbridge quarantine list`)", code=2)
    return value


def quarantine_detail_json(q: QuarantineEntry) -> dict[str, Any]:
    """A quarantined payload as `quarantine show` prints it: the raw bytes as hex too."""
    return {**quarantine_json(q), "size": len(q.payload), "payload_hex": q.payload.hex()}


QuarantineId = Annotated[
    int, typer.Argument(metavar="ID", help="The quarantined payload's id (quarantine list).")
]


@quarantine.command("show")
def quarantine_show(ctx: typer.Context, qid: QuarantineId, json_out: JsonFlag = False) -> None:
    """Show one quarantined payload: the reason, its metadata, the raw bytes as hex and text."""
    found = with_store(ctx, lambda s: s.get_quarantined(_quarantine_id(qid)))
    if found is None:
        fail(f"no quarantined payload {qid}; `fieldbridge quarantine list` shows them")
    data = quarantine_detail_json(found)
    if json_out:
        print_json(data)
        return
    rows: list[tuple[str, Any]] = [
        (key, data[key]) for key in ("id", "received_at", "source", "reason", "size")
    ]
    rows.append(("meta", orjson.dumps(data["meta"]).decode()))
    rows.append(("text", data["payload_text"] if data["payload_text"] is not None else "<binary>"))
    hex_text = data["payload_hex"]
    rows += [("hex" if i == 0 else "", hex_text[i : i + 64]) for i in range(0, len(hex_text), 64)]
    print_table(f"quarantined payload {qid}", ["field", "value"], rows)


@quarantine.command("reingest")
def quarantine_reingest(ctx: typer.Context, qid: QuarantineId, json_out: JsonFlag = False) -> None:
    """Decode a quarantined payload again with its source's current codec (after a codec fix)
    and store it as ingest does; it leaves the quarantine once stored. The running service's
    sinks deliver it."""
    settings = settings_of(ctx)

    async def go(store: Store) -> Reingested:
        async with Ingest(store) as ingest:
            return await reingest(store, ingest, settings.source_settings, _quarantine_id(qid))

    try:
        done = with_store(ctx, go)
    except CannotReingest as exc:
        fail(f"quarantined payload {qid} not stored: {exc.message}")
    if json_out:
        print_json(
            {
                "quarantine_id": done.quarantine_id,
                "source": done.source,
                "message_ids": list(done.message_ids),
                "duplicates": done.duplicates,
                "quarantined": list(done.quarantined),
            }
        )
        return
    ids = ", ".join(str(i) for i in done.message_ids)
    console.print(f"quarantined payload {qid} stored as message {ids}; removed from quarantine")
    if done.quarantined:
        parts = ", ".join(str(i) for i in done.quarantined)
        console.print(f"parts still refused, quarantined anew: {parts}")


@quarantine.command("drop")
def quarantine_drop(ctx: typer.Context, qid: QuarantineId, json_out: JsonFlag = False) -> None:
    """Delete a quarantined payload for good."""
    if not with_store(ctx, lambda s: s.drop_quarantined(_quarantine_id(qid))):
        fail(f"no quarantined payload {qid}; `fieldbridge quarantine list` shows them")
    if json_out:
        print_json({"id": qid, "dropped": True})
    else:
        console.print(f"quarantined payload {qid} dropped")
