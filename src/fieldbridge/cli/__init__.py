"""The fieldbridge command line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from fieldbridge import __version__
from fieldbridge.cli.context import run_async, settings_of, with_store
from fieldbridge.cli.dunedb_cmds import dunedb
from fieldbridge.cli.efento_cmds import decode_app, encode_app
from fieldbridge.cli.efento_downlink_cmds import efento_app
from fieldbridge.cli.messagetype_cmds import messagetypes
from fieldbridge.cli.output import console, fail, print_json, print_table
from fieldbridge.cli.registry_cmds import devices, quarantine, readings
from fieldbridge.cli.simulate_cmd import simulate
from fieldbridge.cli.sink_cmds import deadletters, sinks
from fieldbridge.cli.spy_cmd import spy
from fieldbridge.cli.user_cmds import tokens, users
from fieldbridge.config import CONFIG_ENV, Settings
from fieldbridge.retention import RetentionReport, prune_once
from fieldbridge.store.lock import StoreInUse
from fieldbridge.store.migrate import head_revision
from fieldbridge.store.urls import mask_url
from fieldbridge.timefmt import iso

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

app = typer.Typer(
    help="fieldbridge: takes data from field sensors, keeps it, delivers it to platforms.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Check and show the settings.", no_args_is_help=True)
db_app = typer.Typer(help="The store's schema and retention.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(devices, name="devices")
app.add_typer(messagetypes, name="messagetypes")
app.add_typer(readings, name="readings")
app.add_typer(quarantine, name="quarantine")
app.add_typer(sinks, name="sinks")
app.add_typer(deadletters, name="deadletters")
app.add_typer(decode_app, name="decode")
app.add_typer(encode_app, name="encode")
app.add_typer(efento_app, name="efento")
app.add_typer(dunedb, name="dunedb")
app.add_typer(users, name="users")
app.add_typer(tokens, name="tokens")
app.command("spy")(spy)
app.command("simulate")(simulate)


def _version(value: bool) -> None:
    if value:
        console.print(f"fieldbridge {__version__} (schema revision {head_revision()})")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar=CONFIG_ENV,
            help=f"Settings file (TOML). Default: ${CONFIG_ENV}, else built-in defaults.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and the schema revision it ships, then exit.",
        ),
    ] = False,
) -> None:
    ctx.obj = {"config": config}


@app.command("run")
def run(
    ctx: typer.Context,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="Stand in for a replaced program, from its environment variables alone: "
            "mqtt-handler (docs/integrations/edge-mqtt-handler.md).",
        ),
    ] = None,
) -> None:
    """Migrate the store, then serve until SIGTERM or Ctrl-C."""
    from fieldbridge.app import Service, install_stop_signals
    from fieldbridge.logs import setup_logging

    if preset is not None:
        ctx.obj = {**(ctx.obj or {}), "preset": preset}
    settings = settings_of(ctx)
    setup_logging(settings.log)

    exit_code = 0

    async def main() -> str | None:
        nonlocal exit_code
        stop = asyncio.Event()
        install_stop_signals(stop)
        service = Service(settings)
        try:
            await service.run(stop)
        except StoreInUse as exc:  # not run_async's hint: the store is fine, another has it
            return str(exc)
        exit_code = service.exit_code  # a remote reboot: the supervisor starts us again
        return None

    try:
        import uvloop
    except ImportError:  # uvloop is optional; the standard loop works the same, slower
        refused = run_async(main())
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        refused = run_async(main())
    if refused is not None:
        fail(refused)
    if exit_code:
        raise typer.Exit(exit_code)


@config_app.command("check")
def config_check(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """Validate the settings; exit 2 naming every bad key."""
    settings = settings_of(ctx)
    sources = [f"{t}:{s.name}" for t, s in settings.source_settings]
    sink_names = [f"{t}:{s.name}" for t, s in settings.sink_settings]
    if json_out:
        print_json({"ok": True, "sources": sources, "sinks": sink_names})
    else:
        console.print(
            f"settings are valid: {len(sources)} sources, {len(sink_names)} sinks, "
            f"store {mask_url(settings.store.url)}"
        )


@config_app.command("show")
def config_show(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """Show the effective settings (file, environment, defaults), secrets masked."""
    data = settings_of(ctx).public_dict()
    if json_out:
        print_json(data)
        return
    rows: list[tuple[str, object]] = []
    for section, values in data.items():
        if isinstance(values, dict):
            rows.extend((f"{section}.{k}", v) for k, v in values.items())
    print_table("settings", ["key", "value"], rows)


@db_app.command("migrate")
def db_migrate(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """Apply pending schema migrations (run also does this at start)."""
    from fieldbridge.app import migrate, pending_migrations

    settings: Settings = settings_of(ctx)

    async def go() -> list[str]:
        pending = await pending_migrations(settings)
        if not pending or json_out or not sys.stderr.isatty():
            return await migrate(settings)
        with Progress(
            TextColumn("migrating"), BarColumn(), MofNCompleteColumn(), console=console
        ) as bar:
            task = bar.add_task("migrate", total=len(pending))
            return await migrate(settings, lambda _: bar.advance(task))

    applied = run_async(go())
    if json_out:
        print_json({"applied": applied, "store": mask_url(settings.store.url)})
    elif applied:
        console.print(f"applied {len(applied)} migrations; schema at revision {applied[-1]}")
    else:
        console.print("schema is up to date")


@db_app.command("prune")
def db_prune(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be removed; remove nothing.")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Run retention once: remove what is past its age and delivered by every sink."""
    settings = settings_of(ctx)
    report = with_store(ctx, lambda store: prune_once(settings, store, dry_run=dry_run))
    if json_out:
        print_json(_report_json(report))
        return
    verb = "would remove" if dry_run else "removed"
    rows = [("journal", report.journal, iso(report.journal_older_than))]
    if report.readings is not None and report.readings_older_than is not None:
        rows.append(("readings", report.readings, iso(report.readings_older_than)))
    print_table("tables", ["table", verb, "older than"], rows)
    if not report.sinks:
        console.print("no sinks: rows go by age alone")
        return
    yes_no = {True: "yes", False: "no"}
    print_table(
        "sinks",
        ["sink", "in settings", "enabled", "cursor", "holds back"],
        [
            (h.name, yes_no[h.configured], yes_no[h.enabled], h.cursor, h.held_back)
            for h in report.sinks
        ],
    )


def _report_json(report: RetentionReport) -> dict[str, object]:
    tables: dict[str, object] = {
        "journal": {"removed": report.journal, "older_than": iso(report.journal_older_than)}
    }
    if report.readings is not None and report.readings_older_than is not None:
        tables["readings"] = {
            "removed": report.readings,
            "older_than": iso(report.readings_older_than),
        }
    return {
        "dry_run": report.dry_run,
        "delivered_upto": report.delivered_upto,
        "tables": tables,
        "sinks": [
            {
                "name": h.name,
                "in_settings": h.configured,
                "enabled": h.enabled,
                "cursor": h.cursor,
                "held_back": h.held_back,
            }
            for h in report.sinks
        ],
    }


def main() -> None:
    app()
