"""How commands print: JSON for --json, a readable table otherwise, errors on stderr."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import orjson
from rich.console import Console
from rich.table import Table

console = Console()
errors = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if not rows:
        console.print(f"[dim]no {title}[/dim]")
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print("[bold red]error:[/bold red] ", end="", highlight=False)
    errors.print(message, markup=False, highlight=False)
    raise SystemExit(code)
