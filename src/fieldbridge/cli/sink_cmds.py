"""sinks and deadletters commands."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.prompt import Confirm

from fieldbridge.app import build_store, migrate
from fieldbridge.cli.context import run_async, settings_of, with_store
from fieldbridge.cli.output import console, errors, fail, print_json, print_table
from fieldbridge.cli.records import dead_letter_json
from fieldbridge.config import Settings
from fieldbridge.model import DeadLetterState
from fieldbridge.sinks.status import sink_rows
from fieldbridge.store import Store
from fieldbridge.timefmt import parse_iso

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
STALL_AFTER = 30.0  # seconds without progress before replay stops watching

sinks = typer.Typer(
    help="Sinks: status, pause, resume, replay; forget one removed from the settings.",
    no_args_is_help=True,
)
deadletters = typer.Typer(help="Messages a destination refused for good.", no_args_is_help=True)


def _sink_type(settings: Settings, name: str) -> str:
    for type_name, s in settings.sink_settings:
        if s.name == name:
            return type_name
    known = ", ".join(s.name for _, s in settings.sink_settings) or "none configured"
    fail(f"no sink named {name!r} in the settings (sinks: {known})")


async def _status(settings: Settings, store: Store) -> list[dict[str, Any]]:
    return await sink_rows(settings.sink_settings, store)


def _skipped(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items())


@sinks.command("status")
def sinks_status(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """Each sink's state, cursor, backlog and dead letters."""
    settings = settings_of(ctx)
    rows = with_store(ctx, lambda store: _status(settings, store))
    if json_out:
        print_json(rows)
        return
    print_table(
        "sinks",
        ["name", "type", "state", "cursor", "lag", "lag s", "dead", "skipped", "last error"],
        [
            (
                r["name"],
                r["type"],
                r["state"],
                r["cursor"],
                r["lag_messages"],
                r["lag_seconds"],
                r["dead_letters"],
                _skipped(r["skipped"]),
                _last_error(r),
            )
            for r in rows
        ],
    )


def _last_error(row: dict[str, Any]) -> str | None:
    auth = row["auth"]
    if auth and auth["failures"]:
        return f"token: {auth['last_error']} ({auth['failures']} failures in a row)"
    return row["last_error"]  # type: ignore[no-any-return]


def _set_paused(ctx: typer.Context, name: str, paused: bool, json_out: bool) -> None:
    _sink_type(settings_of(ctx), name)
    with_store(ctx, lambda store: store.set_paused(name, paused))
    word = "paused" if paused else "resumed"
    if json_out:
        print_json({"name": name, "paused": paused})
    else:
        console.print(f"sink {name} {word}")


@sinks.command("pause")
def sinks_pause(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The sink's name.")],
    json_out: JsonFlag = False,
) -> None:
    """Stop sending; messages keep arriving in the journal and wait."""
    _set_paused(ctx, name, True, json_out)


@sinks.command("resume")
def sinks_resume(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The sink's name.")],
    json_out: JsonFlag = False,
) -> None:
    """Send again, starting where the sink stopped."""
    _set_paused(ctx, name, False, json_out)


@sinks.command("replay")
def sinks_replay(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The sink's name.")],
    from_id: Annotated[
        int | None, typer.Option("--from-id", min=1, help="First message id to send again.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="ISO 8601 time; send again what was received from then on.")
    ] = None,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="Follow the replay until it caught up (default: on a terminal).",
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Send messages again from an id or a time; the running service does the sending."""
    settings = settings_of(ctx)
    _sink_type(settings, name)
    if (from_id is None) == (since is None):
        fail("give exactly one of --from-id N or --since ISO", code=2)
    start_time = None
    if since is not None:
        try:
            start_time = parse_iso(since)
        except ValueError:
            fail(f"--since {since!r} is not ISO 8601 (e.g. 2026-11-23T08:00:00Z)", code=2)
    follow = wait if wait is not None else (sys.stdout.isatty() and not json_out)
    result = run_async(_replay(settings, name, from_id, start_time, follow))
    if json_out:
        print_json(result)
    elif not follow:
        console.print(
            f"sink {name} will send again from message {result['from_id']} "
            f"({result['messages']} messages)"
        )


async def _replay(
    settings: Settings, name: str, from_id: int | None, since: float | None, follow: bool
) -> dict[str, Any]:
    await migrate(settings)
    async with build_store(settings) as store:
        replay = await store.replay(name, from_id=from_id, since=since)  # as the API and console
        result: dict[str, Any] = {
            "name": name,
            "from_id": replay.from_id,
            "head_id": replay.head_id,
            "messages": replay.messages,
            "caught_up": None,
        }
        if follow:
            result["caught_up"] = await _follow(store, name, replay.from_id - 1, replay.head_id)
        return result


async def _follow(store: Store, name: str, start: int, head: int) -> bool:
    """Show a progress bar until the sink's cursor reaches `head`; False if it stalls."""
    columns = (
        TextColumn("replay {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    # On stderr: stdout carries only the result, so `--wait --json` stays parseable JSON.
    with Progress(*columns, console=errors, transient=False) as bar:
        task = bar.add_task(name, total=max(head - start, 0))
        last_cursor, last_move = -1, time.monotonic()
        while True:
            state = await store.sink_state(name)
            cursor = state.cursor if state.replay_from is None else start
            bar.update(task, completed=max(0, min(cursor, head) - start))
            if state.replay_from is None and cursor >= head:
                return True
            if cursor != last_cursor:
                last_cursor, last_move = cursor, time.monotonic()
            elif time.monotonic() - last_move > STALL_AFTER:
                errors.print(
                    f"[yellow]sink {name} has not moved for {STALL_AFTER:.0f}s; is "
                    "fieldbridge running? The replay goes on when it runs.[/yellow]"
                )
                return False
            await asyncio.sleep(0.5)


@sinks.command("forget")
def sinks_forget(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The removed sink's name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Delete the cursor and dead letters of a sink removed from the settings, so retention
    no longer keeps the messages it never delivered."""
    settings = settings_of(ctx)
    if any(s.name == name for _, s in settings.sink_settings):
        fail(
            f"sink {name!r} is still in the settings; remove its [[sinks.*]] entry first "
            "(set enabled = false to only stop it)"
        )
    found = with_store(ctx, lambda store: _stored_sink(store, name))
    if found is None:
        stored = with_store(ctx, lambda store: store.sink_states())
        known = ", ".join(s.name for s in stored) or "none"
        fail(f"no stored state for a sink named {name!r} (stored sinks: {known})")
    cursor, lag, dead = found
    if not yes:
        question = (
            f"forget sink {name}: its cursor ({cursor}) and {dead} dead letters are deleted, "
            f"and retention no longer keeps the {lag} messages after its cursor. Continue?"
        )
        if not _confirm(question):
            fail(f"sink {name} not forgotten")
    _, dropped = with_store(ctx, lambda store: store.forget_sink(name))
    if json_out:
        print_json({"name": name, "cursor": cursor, "dead_letters_dropped": dropped})
    else:
        console.print(f"sink {name} forgotten ({dropped} dead letters dropped)")


def _confirm(question: str) -> bool:
    """Ask on stderr, so stdout carries only the result; no answer (end of input) is no."""
    try:
        return Confirm.ask(question, default=False, console=errors)
    except EOFError:
        return False


async def _stored_sink(store: Store, name: str) -> tuple[int, int, int] | None:
    """A stored sink's cursor, messages after it and dead letters; None if nothing is stored."""
    states = {s.name: s for s in await store.sink_states()}
    dead = await store.count_dead_letters(name)
    if name not in states and not dead:
        return None
    cursor = states[name].cursor if name in states else 0
    lag, _ = await store.lag(cursor)
    return cursor, lag, dead


@deadletters.command("list")
def deadletters_list(
    ctx: typer.Context,
    sink: Annotated[str | None, typer.Option(help="Only this sink's.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 1000,
    json_out: JsonFlag = False,
) -> None:
    """List dead letters with the destination's answer."""
    found = with_store(ctx, lambda s: s.list_dead_letters(sink=sink, limit=limit))
    rows = [dead_letter_json(d) for d in found]
    if json_out:
        print_json(rows)
        return
    print_table(
        "dead letters",
        ["id", "sink", "message", "attempts", "status", "state", "body"],
        [
            (
                r["id"],
                r["sink"],
                r["message_id"],
                r["attempts"],
                r["status"],
                r["state"],
                (r["body"] or "")[:60],
            )
            for r in rows
        ],
    )


def _selection(sink: str | None, ids: list[int] | None, everything: bool) -> None:
    if not sink and not ids and not everything:
        fail("choose what: --sink NAME, --id N (repeatable) or --all", code=2)


@deadletters.command("retry")
def deadletters_retry(
    ctx: typer.Context,
    sink: Annotated[str | None, typer.Option(help="This sink's dead letters.")] = None,
    ids: Annotated[list[int] | None, typer.Option("--id", help="A dead letter id.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Ask the running sinks to send these messages once more."""
    _selection(sink, ids, everything)
    count = with_store(
        ctx, lambda s: s.mark_dead_letters(state=DeadLetterState.RETRY, sink=sink, ids=ids or [])
    )
    if json_out:
        print_json({"retrying": count})
    else:
        console.print(f"{count} dead letters will be sent again by the running service")


@deadletters.command("drop")
def deadletters_drop(
    ctx: typer.Context,
    sink: Annotated[str | None, typer.Option(help="This sink's dead letters.")] = None,
    ids: Annotated[list[int] | None, typer.Option("--id", help="A dead letter id.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Forget dead letters (the messages stay in the journal until retention)."""
    _selection(sink, ids, everything)
    count = with_store(ctx, lambda s: s.drop_dead_letters(sink=sink, ids=ids or []))
    if json_out:
        print_json({"dropped": count})
    else:
        console.print(f"{count} dead letters dropped")
