"""Shared bits of the benchmarks: tables, the closing JSON line, throwaway databases."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterator, Sequence

import psycopg

PG_ADMIN = os.environ.get("FIELDBRIDGE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in columns]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        aligned = (v.rjust(w) if n else v.ljust(w) for v, w in zip(row, widths, strict=True))
        print("  " + "  ".join(aligned))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def final_line(
    name: str, value: float, unit: str, reference: float | None, ratio: float | None
) -> None:
    print(
        json.dumps(
            {
                "bench": name,
                "value": round(value, 1),
                "unit": unit,
                "reference": None if reference is None else round(reference, 1),
                "ratio": None if ratio is None else round(ratio, 3),
            }
        )
    )


@contextlib.contextmanager
def throwaway_pg() -> Iterator[str]:
    """A uniquely named database on the machine's PostgreSQL, dropped afterwards."""
    name = f"fieldbridge_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
