"""The `decode efento` and `encode efento-config` commands: Efento frames by hand, no store."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fieldbridge.cli.output import fail
from fieldbridge.errors import DecodeError

decode_app = typer.Typer(help="Decode a device payload and print it; no store needed.")
encode_app = typer.Typer(help="Build a device downlink payload and print it; no store needed.")


def _payload(hex_text: str | None, file: Path | None) -> bytes:
    if (hex_text is None) == (file is None):
        fail("give the frame either as --hex HEX or as --file PATH (raw bytes), not both", code=2)
    if file is not None:
        try:
            return file.read_bytes()
        except OSError as exc:
            fail(f"--file {file}: cannot read it ({exc.strerror or exc})", code=2)
    assert hex_text is not None
    cleaned = "".join(hex_text.split()).removeprefix("0x").removeprefix("0X")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        fail(
            f"--hex: {hex_text[:40]!r} is not hexadecimal bytes "
            "(two hex digits per byte, e.g. 0a06282c024156af...)"
        )


@decode_app.command("efento")
def decode_efento(
    endpoint: Annotated[
        str,
        typer.Option(
            "--endpoint",
            "-e",
            help="What the frame is: m (measurements), i (device info) or c (configuration).",
        ),
    ],
    hex_text: Annotated[
        str | None, typer.Option("--hex", help="The CoAP payload as hex (spaces allowed).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="A file holding the raw payload bytes.")
    ] = None,
    seed_compat: Annotated[
        bool,
        typer.Option(
            "--seed-compat",
            help="Repeat the seed server's two bugs (Lisbon time labelled UTC, signal 0).",
        ),
    ] = False,
    compact: Annotated[
        bool, typer.Option("--compact", help="One line, as the seed server printed it.")
    ] = False,
) -> None:
    """Print an Efento frame as the seed server's JSON (the output is always JSON).

    Exit 1 when the bytes are not a valid frame for the endpoint, 2 for bad usage.
    """
    from fieldbridge.codecs.efento import to_json
    from fieldbridge.codecs.efento.frames import endpoint_of

    try:
        which = endpoint_of(endpoint)
    except DecodeError as exc:
        fail(f"--endpoint: {exc}", code=2)
    payload = _payload(hex_text, file)
    try:
        data = to_json(which, payload, seed_compat=seed_compat)
    except DecodeError as exc:
        fail(f"not a valid Efento /{which} frame: {exc}")
    sys.stdout.write((json.dumps(data) if compact else json.dumps(data, indent=2)) + "\n")


def _config_input(text: str) -> dict[str, Any]:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            fail(f"--json {text}: cannot read the file ({exc.strerror or exc})", code=2)
    try:
        fields = json.loads(text)
    except ValueError as exc:
        fail(f"--json: not valid JSON ({exc})", code=2)
    if not isinstance(fields, dict):
        fail("--json: must be a JSON object of field: value", code=2)
    return fields


@encode_app.command("efento-config")
def encode_efento_config(
    config_json: Annotated[
        str,
        typer.Option(
            "--json",
            help="The fields to set, as a JSON object (or @FILE, or - for stdin), e.g. "
            '\'{"measurement_period_base": 60, "transmission_interval": 900}\'. Names as '
            "`decode efento --endpoint c` prints them, or the proto field names.",
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="hex (default): the payload as hex; json: {hex, bytes, configuration}.",
        ),
    ] = "hex",
) -> None:
    """Print the hex of a ProtoConfig downlink (what a sensor gets in its 2.01).

    --json is the input here; --output json prints JSON.

    Exit 1 for device-only fields (serial, hash, errors, channel types, split info), unknown
    fields or values out of range; exit 2 for bad usage.
    """
    if output not in ("hex", "json"):
        fail(f"--output: {output!r} is not hex or json", code=2)
    from fieldbridge.codecs.efento import encode_config, to_json

    fields = _config_input(config_json)
    try:
        payload = encode_config(fields)
    except ValueError as exc:
        fail(f"--json: {exc}")
    if output == "hex":
        sys.stdout.write(payload.hex() + "\n")
        return
    result = {"hex": payload.hex(), "bytes": len(payload), "configuration": to_json("c", payload)}
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
