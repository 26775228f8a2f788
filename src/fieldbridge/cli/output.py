"""How commands print: JSON for --json, a readable table otherwise, errors on stderr."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import orjson
from rich.console import Console
from rich.markup import escape as escape_markup
from rich.table import Table
from rich.text import Text

from fieldbridge.printable import escape

console = Console()
errors = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table; every value is shown as plain text with unprintable characters escaped, so a
    stored value (a device id written by an older version) cannot drive the terminal."""
    if not rows:
        console.print(f"[dim]no {escape_markup(escape(title))}[/dim]")
        return
    table = Table(title=Text(escape(title)), title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text("" if v is None else escape(str(v))) for v in row))
    console.print(table)


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print("[bold red]error:[/bold red] ", end="", highlight=False)
    errors.print(escape(message, keep="\n"), markup=False, highlight=False)
    raise SystemExit(code)
