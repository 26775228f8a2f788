"""fieldbridge simulate: demo traffic from simulated devices to a running fieldbridge."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape as escape_markup
from rich.table import Table

from fieldbridge.cli.context import settings_of
from fieldbridge.cli.output import console, errors, fail, print_json
from fieldbridge.printable import escape as escape_unprintable
from fieldbridge.simulate import KINDS, Fleet, Plan, Tally, Targets, Unreachable, resolve

REFRESH = 4  # progress redraws a second
LABELS = {
    "efento": "Efento (CoAP)",
    "smartcitizen": "Smart Citizen (MQTT)",
    "trapnet": "trap network (MQTT)",
}


def simulate(
    ctx: typer.Context,
    efento: Annotated[
        int,
        typer.Option(
            "--efento", min=0, max=1000, help="Efento NB-IoT sensors (CoAP to the Efento source)."
        ),
    ] = 3,
    smartcitizen: Annotated[
        int,
        typer.Option(
            "--smartcitizen", min=0, max=1000, help="Smart Citizen Kits (MQTT, device/sck/...)."
        ),
    ] = 2,
    trapnet: Annotated[
        int,
        typer.Option(
            "--trapnet",
            min=0,
            max=1000,
            help="Trap nodes (MQTT, AKLC/... and EnvironmentalServices/...), with a gateway "
            "for every four.",
        ),
    ] = 3,
    duration: Annotated[
        float,
        typer.Option("--duration", min=0, help="Seconds to send for; 0 sends until Ctrl-C."),
    ] = 120.0,
    rate: Annotated[
        float,
        typer.Option(
            "--rate",
            min=0.01,
            max=1000,
            help="Messages a second, all devices together (each device sends every "
            "devices/rate seconds).",
        ),
    ] = 1.0,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", help="Device ids and values come from it: the same seed, the same devices."
        ),
    ] = 1,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="URL",
            help="fieldbridge's HTTP server, checked before sending. Default: http.listen of "
            "the settings (http://127.0.0.1:8080).",
        ),
    ] = None,
    mqtt: Annotated[
        str | None,
        typer.Option(
            "--mqtt",
            metavar="HOST:PORT",
            help="The MQTT broker fieldbridge reads. Default: the url of the settings' "
            "Smart Citizen and trapnet sources (127.0.0.1:1883).",
        ),
    ] = None,
    coap: Annotated[
        str | None,
        typer.Option(
            "--coap",
            metavar="HOST:PORT",
            help="fieldbridge's Efento CoAP source. Default: listen of the settings' Efento "
            "source (sources.efento).",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON; no progress display.")
    ] = False,
) -> None:
    """Send demo traffic to a running fieldbridge over the real protocols.

    Simulated Efento sensors (CoAP), Smart Citizen Kits and a trap network (MQTT) report
    plausible, drifting values, so devices, charts and sinks move. Give the same --config as
    the running service: its sources say where to send. Ctrl-C stops; the summary counts what
    each kind sent, got acknowledged, and saw fail (exit 1 if any failed).
    """
    settings = settings_of(ctx)
    try:
        targets = resolve(settings, http=http, mqtt=mqtt, coap=coap)
    except ValueError as exc:
        fail(str(exc), code=2)
    plan = Plan(
        efento=efento,
        smartcitizen=smartcitizen,
        trapnet=trapnet,
        duration=duration or None,
        rate=rate,
        seed=seed,
    )
    wanted = [k for k in KINDS if plan.count(k)]
    if not wanted:
        fail("nothing to simulate: give --efento, --smartcitizen or --trapnet a number", code=2)
    skipped = {k: why for k, why in targets.missing.items() if k in wanted}
    for kind, why in skipped.items():
        errors.print(f"[yellow]{kind} skipped:[/yellow] {_plain(why)}", highlight=False)
    for note in targets.notes:
        if note.split(":", 1)[0] in wanted:
            errors.print(f"[yellow]note:[/yellow] {_plain(note)}", highlight=False)
    if len(skipped) == len(wanted):
        fail("nothing to send: no source of the settings takes the kinds asked for", code=2)

    fleet = Fleet(plan, targets)
    live = not json_out and console.is_terminal
    tallies, stopped, started = _run(fleet, targets, live)
    elapsed = time.monotonic() - started
    if json_out:
        print_json(_summary(fleet, tallies, targets, elapsed, stopped))
    else:
        if not live:
            console.print(_table(fleet, elapsed))
        _print_next_steps(tallies, targets, stopped)
    if any(t.failed for t in tallies.values()):
        raise typer.Exit(1)


def _run(fleet: Fleet, targets: Targets, live: bool) -> tuple[dict[str, Tally], bool, float]:
    """Run the fleet with a progress display; (tallies, stopped by Ctrl-C, start time)."""
    started = time.monotonic()
    stopped = False

    async def main() -> dict[str, Tally]:
        nonlocal stopped
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def interrupted() -> None:
            nonlocal stopped
            stopped = True
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, interrupted)
        if not live:
            return await fleet.run(stop)
        with Live(_table(fleet, 0.0), console=console, refresh_per_second=REFRESH) as view:
            running = asyncio.create_task(fleet.run(stop))
            while not running.done():
                await asyncio.wait([running], timeout=1 / REFRESH)
                view.update(_table(fleet, time.monotonic() - started))
            return running.result()

    try:
        tallies = asyncio.run(main())
    except Unreachable as exc:
        fail(str(exc))
    return tallies, stopped, started


def _table(fleet: Fleet, elapsed: float) -> Table:
    plan = fleet.plan
    if plan.duration is None:
        title = f"simulating for {elapsed:.0f} s (Ctrl-C stops)"
    else:
        title = f"simulating: {min(elapsed, plan.duration):.0f} of {plan.duration:g} s"
    table = Table(title=title, title_justify="left")
    for column in ("kind", "devices", "sent", "acknowledged", "failed", "last error"):
        table.add_column(column, justify="right" if column in ("sent", "acknowledged") else "left")
    for kind, tally in fleet.tallies.items():
        table.add_row(
            LABELS[kind],
            str(len(tally.devices) or plan.count(kind)),
            str(tally.sent),
            str(tally.acknowledged),
            f"[red]{tally.failed}[/red]" if tally.failed else "0",
            _plain((tally.last_error or "")[:80]),
        )
    return table


def _print_next_steps(tallies: dict[str, Tally], targets: Targets, stopped: bool) -> None:
    if stopped:
        console.print("[dim]stopped[/dim]")
    shown = ", ".join(
        f"{kind} {' '.join(t.devices[:4])}{' ...' if len(t.devices) > 4 else ''}"
        for kind, t in tallies.items()
        if t.devices
    )
    if shown:
        console.print(f"devices: {_plain(shown)}", highlight=False)
    first = next((t.devices[0] for t in tallies.values() if t.devices), None)
    hints = ["fieldbridge devices list"]
    if first is not None:
        hints.append(f"fieldbridge readings list --device {first}")
    if targets.http is not None:
        hints.append(f"the console at {targets.http}/")
    console.print("look at them: " + _plain("; ".join(hints)), highlight=False)


def _summary(
    fleet: Fleet, tallies: dict[str, Tally], targets: Targets, elapsed: float, stopped: bool
) -> dict[str, Any]:
    where = {
        "http": targets.http,
        "efento": targets.efento.where if targets.efento is not None else None,
        "smartcitizen": targets.smartcitizen.where if targets.smartcitizen is not None else None,
        "trapnet": targets.trapnet.where if targets.trapnet is not None else None,
    }
    return {
        "seconds": round(elapsed, 3),
        "stopped": stopped,
        "seed": fleet.plan.seed,
        "rate": fleet.plan.rate,
        "targets": where,
        "skipped": {k: v for k, v in targets.missing.items() if fleet.plan.count(k)},
        "kinds": {kind: tally.as_json() for kind, tally in tallies.items()},
    }


def _plain(text: str) -> str:
    """Text fit for console.print: no markup, and unprintable characters shown as escapes."""
    return escape_markup(escape_unprintable(text, keep="\n"))
