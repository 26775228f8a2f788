"""The embedded broker of the default run: a Mosquitto subprocess when none answers.

Mosquitto, not amqtt: amqtt 0.12 pins websockets==15.0.1 while uvicorn[standard] brings
websockets 17, and Mosquitto is the broker users deploy anyway (persistence, the same
configuration knobs the docs describe). Without the mosquitto binary the source logs how to
install it and keeps retrying the configured url.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import getpass
import logging
import shutil
import signal
from pathlib import Path
from types import TracebackType

from fieldbridge.sources.mqtt.settings import Endpoint

log = logging.getLogger("fieldbridge.sources.mqtt")

STATE_DIR = Path("var/mosquitto")  # next to the default store, var/fieldbridge.db
CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH, else where distributions put it (not on users' PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((c for c in CANDIDATES if Path(c).is_file()), None)


async def answers(host: str, port: int, within: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port within `within` seconds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def broker_config(host: str, port: int, state_dir: Path) -> str:
    """mosquitto.conf of the embedded broker: persistent, and no silent drops under bursts."""
    return "\n".join(
        [
            f"listener {port} {host}",
            "allow_anonymous true",
            # Mosquitto started as root switches to the user "mosquitto", which could not
            # write the persistence file here.
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {state_dir.resolve()}/",
            "autosave_interval 10",
            # The defaults (1000 queued, 20 in flight) drop messages silently during a burst
            # and throttle acknowledgement after commit; see docs/integrations/mqtt.md.
            "max_queued_messages 1000000",
            "max_inflight_messages 1000",
            "",
        ]
    )


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when fieldbridge dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedBroker:
    """`async with EmbeddedBroker(host, port)`: Mosquitto runs until the block ends."""

    def __init__(self, host: str, port: int, binary: str, state_dir: Path = STATE_DIR) -> None:
        self.host = host
        self.port = port
        self.binary = binary
        self.state_dir = state_dir
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def __aenter__(self) -> EmbeddedBroker:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / "mosquitto.conf"
        conf.write_text(broker_config(self.host, self.port, self.state_dir))
        logfile = self.state_dir / "mosquitto.log"
        with logfile.open("ab") as output:  # the child keeps its own descriptor
            start = output.tell()
            self._process = await asyncio.create_subprocess_exec(
                self.binary,
                "-c",
                str(conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                preexec_fn=_die_with_parent,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            if self._process.returncode is not None:
                break
            if await answers(self.host, self.port, 0.2):
                return self
            await asyncio.sleep(0.05)
        await self._stop()
        with logfile.open("rb") as output:
            output.seek(start)
            said = output.read().decode(errors="replace").strip().splitlines()[-3:]
        raise OSError(
            f"mosquitto ({self.binary}) did not start on {self.host}:{self.port}: "
            f"{' / '.join(said) or 'no output'} (log: {logfile})"
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()  # mosquitto saves its persistence file on SIGTERM
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()


async def start_if_absent(endpoint: Endpoint, where: str) -> EmbeddedBroker | None:
    """embedded_broker = "auto": a started Mosquitto, or None when one answers (or cannot run).

    Every outcome is logged, so the startup log says which broker is used.
    """
    address = f"{endpoint.host}:{endpoint.port}"
    if endpoint.tls or not endpoint.loopback:
        log.info(
            "%s: embedded_broker = auto starts a broker only for mqtt:// on this machine; "
            "using the one at %s",
            where,
            address,
        )
        return None
    if await answers(endpoint.host, endpoint.port):
        log.info("%s: using the MQTT broker that answers on %s", where, address)
        return None
    binary = find_mosquitto()
    if binary is None:
        log.error(
            "%s: no MQTT broker answers on %s and mosquitto is not installed to start one; "
            "install it (apt install mosquitto / brew install mosquitto) or point %s.url at a "
            "broker",
            where,
            address,
            where,
        )
        return None
    broker = EmbeddedBroker(endpoint.host, endpoint.port, binary)
    try:
        await broker.__aenter__()
    except OSError as exc:
        if await answers(endpoint.host, endpoint.port):  # another process was quicker
            log.info("%s: using the MQTT broker that now answers on %s", where, address)
        else:
            log.error("%s: could not start the embedded broker: %s", where, exc)
        return None
    log.info(
        "%s: no MQTT broker answered on %s; started an embedded Mosquitto (%s, pid %s, state "
        "in %s) that stops with fieldbridge",
        where,
        address,
        binary,
        broker.pid,
        broker.state_dir,
    )
    return broker
