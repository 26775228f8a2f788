"""`fieldbridge spy` as a subprocess for tests: its output lines arrive on a queue."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.support.processes import FIELDBRIDGE, child_env
from tests.support.web import cli_token

WAIT = 30.0  # seconds; only guards against a hang (a CLI start takes seconds on a loaded machine)


class Spy:
    """`fieldbridge spy` in a subprocess; its stdout lines arrive on a queue."""

    def __init__(self, config: Path, *args: str, token: str | None = None) -> None:
        """`token`: sent with --token; unset, a new read token is made for this spy."""
        token = token if token is not None else cli_token(config)
        self.popen = subprocess.Popen(
            [
                FIELDBRIDGE,
                "--config",
                str(config),
                "spy",
                *args,
                *(["--token", token] if token else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, timeout: float = WAIT) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.popen.kill()
            _, err = self.popen.communicate()
            raise AssertionError(f"spy printed nothing within {timeout}s; stderr: {err}") from None

    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.line())
        return event

    def finish(self, timeout: float = WAIT) -> tuple[int, list[str], str]:
        """Exit code, the lines not read yet, and stderr."""
        code = self.popen.wait(timeout)
        assert self.popen.stderr is not None
        err = self.popen.stderr.read()
        self._reader.join(timeout)  # it ends at the end of stdout, every line handed over
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return code, rest, err

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
