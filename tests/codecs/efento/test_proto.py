"""The committed Efento protobuf modules are what `make proto` generates from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import paths

ROOT = paths.ROOT
SRC = ROOT / "src"
PROTO_DIR = SRC / "fieldbridge" / "codecs" / "efento" / "proto"


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    protos = sorted(PROTO_DIR.glob("*.proto"))
    assert [p.stem for p in protos] == [
        "config",
        "device_info",
        "extended_configuration",
        "measurement_types",
        "measurements",
    ]
    plugin = Path(sys.executable).with_name("protoc-gen-mypy")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{SRC}",
            f"--python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--plugin=protoc-gen-mypy={plugin}",
            *map(str, protos),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    generated = tmp_path / "fieldbridge" / "codecs" / "efento" / "proto"
    fresh = {p.name: p.read_text() for p in generated.iterdir()}
    committed = {p.name: p.read_text() for p in PROTO_DIR.glob("*_pb2.py*")}
    assert sorted(fresh) == sorted(committed), "run `make proto` and commit the result"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated modules {stale}: run `make proto` and commit the result"
