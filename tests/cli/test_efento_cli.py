"""`fieldbridge decode efento` and `fieldbridge encode efento-config`: output and exit codes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fieldbridge.cli import app
from fieldbridge.codecs.efento import to_json
from tests.support import paths
from tests.support.processes import run_cli

FIXTURES = paths.FIXTURES / "efento"
VECTORS: list[dict[str, Any]] = json.loads((FIXTURES / "vectors.json").read_text())
SEED: list[dict[str, Any]] = json.loads((FIXTURES / "seed_frames.json").read_text())["frames"]
SEED_M = next(f for f in SEED if f["endpoint"] == "m")
SEED_C = next(f for f in SEED if f["endpoint"] == "c")


def cli(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_console_script_decodes_a_vector_exactly() -> None:
    vector = VECTORS[0]
    done = run_cli("decode", "efento", "--endpoint", "m", "--hex", vector["hex"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == json.dumps(vector["expected"], indent=2) + "\n"


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_decode_prints_the_json_of_to_json(vector: dict[str, Any]) -> None:
    code, out, err = cli("decode", "efento", "-e", vector["endpoint"], "--hex", vector["hex"])
    assert code == 0, err
    assert json.loads(out) == vector["expected"]
    assert list(json.loads(out)) == list(vector["expected"])


def test_decode_seed_compat_compact_is_the_seed_output_byte_for_byte() -> None:
    code, out, _ = cli(
        "decode", "efento", "--endpoint", "/m", "--hex", SEED_M["hex"], "--seed-compat", "--compact"
    )
    assert code == 0
    assert out == SEED_M["seed_output"] + "\n"


def test_decode_from_a_file_of_raw_bytes(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    path.write_bytes(bytes.fromhex(SEED_C["hex"]))
    code, out, _ = cli("decode", "efento", "--endpoint", "c", "--file", str(path))
    assert code == 0
    assert json.loads(out) == json.loads(SEED_C["seed_output"])
    assert '"apn": "\\u007f"' in out  # escaped as the seed's json.dumps did


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--endpoint", "m", "--hex", "0a06zz"], 1, "--hex: '0a06zz' is not hexadecimal"),
        (["--endpoint", "m", "--hex", "0a06282c"], 1, "not a valid Efento /m frame"),
        (["--endpoint", "c", "--hex", "ffff"], 1, "not a valid ProtoConfig protobuf"),
        (["--endpoint", "m", "--hex", "1801"], 1, "no serial_number"),
        (["--endpoint", "t", "--hex", "00"], 2, "--endpoint: endpoint 't' is not an Efento"),
        (["--endpoint", "m"], 2, "either as --hex HEX or as --file PATH"),
        (["--endpoint", "m", "--hex", "00", "--file", "x"], 2, "not both"),
        (["--endpoint", "m", "--file", "/nonexistent/frame.bin"], 2, "cannot read it"),
    ],
)
def test_decode_errors(args: list[str], code: int, message: str) -> None:
    exit_code, out, err = cli("decode", "efento", *args)
    assert exit_code == code
    assert out == ""
    assert message in " ".join(err.split())


def test_encode_prints_the_hex_of_the_downlink() -> None:
    code, out, _ = cli("encode", "efento-config", "--json", '{"requestConfiguration": true}')
    assert (code, out) == (0, "980101\n")
    fields = '{"measurement_period_base": 60, "transmission_interval": 900}'
    code, out, _ = cli("encode", "efento-config", "--json", fields, "--output", "json")
    assert code == 0
    result = json.loads(out)
    assert result == {
        "hex": result["hex"],
        "bytes": len(bytes.fromhex(result["hex"])),
        "configuration": {"measurementPeriodBase": 60, "transmissionInterval": 900},
    }
    assert to_json("c", bytes.fromhex(result["hex"])) == result["configuration"]


def test_encode_reads_a_file_or_stdin(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"device_info_request": true}')
    assert cli("encode", "efento-config", "--json", f"@{path}")[:2] == (0, "3001\n")
    assert cli("encode", "efento-config", "--json", "-", stdin='{"ble_tx_power_level": 2}')[:2] == (
        0,
        "a00202\n",
    )


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ('{"serialNumber": "282C0240FD34"}', 1, "serialNumber: device-only field"),
        ('{"hash": 204}', 1, "hash: device-only field"),
        ('{"transmission_interval": 10}', 1, "transmission_interval: 10 is out of range"),
        ('{"colour": 1}', 1, "colour: unknown ProtoConfig field"),
        ("{not json", 2, "--json: not valid JSON"),
        ("[1, 2]", 2, "must be a JSON object"),
        ("@/nonexistent/config.json", 2, "cannot read the file"),
    ],
)
def test_encode_refusals(text: str, code: int, message: str) -> None:
    exit_code, out, err = cli("encode", "efento-config", "--json", text)
    assert exit_code == code
    assert out == ""
    assert message in " ".join(err.split())


def test_encode_output_must_be_hex_or_json() -> None:
    code, _, err = cli("encode", "efento-config", "--json", "{}", "--output", "xml")
    assert code == 2 and "--output" in err


@pytest.mark.parametrize("command", [["decode", "efento"], ["encode", "efento-config"]])
def test_help(command: list[str]) -> None:
    code, out, _ = cli(*command, "--help")
    assert code == 0 and "Usage:" in out
    assert "--hex" in out if command[0] == "decode" else "--output" in out


DOC = paths.DOCS / "integrations" / "efento-decoding.md"


def doc_examples() -> list[tuple[list[str], str]]:
    """Every `$ fieldbridge ...` line of the doc's console blocks with the output shown."""
    examples: list[tuple[list[str], str]] = []
    for block in DOC.read_text().split("```console\n")[1:]:
        for chunk in block.split("```")[0].split("$ fieldbridge ")[1:]:
            command, _, output = chunk.partition("\n")
            examples.append((shlex.split(command), output))
    return examples


def test_the_doc_examples_print_what_the_doc_shows() -> None:
    examples = doc_examples()
    assert len(examples) == 3
    assert examples[0][0][:4] == ["decode", "efento", "--endpoint", "m"]
    for args, shown in examples:
        code, out, err = cli(*args)
        if shown.startswith("error:"):
            assert code == 1
            assert " ".join(err.split()) == " ".join(shown.split())
        else:
            assert (code, out) == (0, shown)
