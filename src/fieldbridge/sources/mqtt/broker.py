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
