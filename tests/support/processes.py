"""Runs fieldbridge as a real subprocess (`fieldbridge --config PATH run`) for process tests."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

# The console script installed next to the interpreter running the tests (.venv/bin/fieldbridge).
FIELDBRIDGE = str(Path(sys.executable).with_name("fieldbridge"))
READY_TIMEOUT = 20.0  # seconds from spawn until GET /healthz must answer 200
START_ATTEMPTS = 3  # a freshly picked port can be taken by someone else before we bind it


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def to_toml(config: Mapping[str, Mapping[str, Any]]) -> str:
    """Settings as TOML text: one table per section, arrays of tables for sources and sinks.

    Hand-written because the standard library only reads TOML, and the shapes here are few.
    """
    lines: list[str] = []
    for section, body in config.items():
        if section in ("sources", "sinks"):
            for type_name, entries in body.items():
                for entry in entries:
                    lines.append(f"[[{section}.{type_name}]]")
                    lines.extend(f"{key} = {_toml_value(v)}" for key, v in entry.items())
                    lines.append("")
            continue
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(v)}" for key, v in body.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        pairs = (f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def run_cli(
    *args: str,
    config: Path | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
    fieldbridge: str = FIELDBRIDGE,
) -> subprocess.CompletedProcess[str]:
    """Run one `fieldbridge` command to completion and capture its output."""
    command = [fieldbridge]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=cwd,
        check=False,
    )


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a fieldbridge child: settings from its file (and `extra`) alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDBRIDGE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"  # rich wraps error messages at 80 columns when not on a terminal
    env.update(extra or {})
    return env


class FieldbridgeProcess:
    """One fieldbridge service in a subprocess, on a SQLite file and a free port.

    The settings file, the database and the log (stdout and stderr of every start, appended)
    live in `workdir`; restarting keeps all three, so a restart finds the same store.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "fieldbridge",
        sinks: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        sources: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        log: Mapping[str, Any] | None = None,
        ingest: Mapping[str, Any] | None = None,
        http: Mapping[str, Any] | None = None,
        store: Mapping[str, Any] | None = None,
        port: int | None = None,
        fieldbridge: str = FIELDBRIDGE,
        open_files: int | None = None,
        run_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        use_config: bool = True,
    ) -> None:
        """`run_args` follow `run` (e.g. --preset NAME); `env` is added to the child's
        environment; without `use_config` no --config is given (the store and HTTP port then
        come from FIELDBRIDGE_STORE__URL and FIELDBRIDGE_HTTP__LISTEN, set here)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.run_args = list(run_args)
        self.use_config = use_config
        self.env = dict(env or {})
        self.open_files = open_files  # the child's RLIMIT_NOFILE (soft and hard), as `ulimit -n`
        self.workdir = workdir
        self.fieldbridge = fieldbridge  # the console script to run: another install's, say
        self.config_path = workdir / f"{name}.toml"
        self.db_path = workdir / f"{name}.db"
        self.log_path = workdir / f"{name}.log"
        self.port = port if port is not None else free_port()
        self._sinks = dict(sinks or {})
        self._sources = dict(sources or {})
        self._log = dict(log or {"level": "info"})
        self._ingest = dict(ingest or {})
        self._http = dict(http or {})
        self._store = dict(store or {})
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0
        self.write_config()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ingest_url(self) -> str:
        return f"{self.base_url}/api/v1/ingest"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def write_config(self) -> None:
        config: dict[str, Mapping[str, Any]] = {
            "store": {"url": f"sqlite:///{self.db_path}", **self._store},
            "http": {"listen": f"127.0.0.1:{self.port}", **self._http},
            "log": self._log,
        }
        if self._ingest:
            config["ingest"] = self._ingest
        if self._sources:
            config["sources"] = self._sources
        if self._sinks:
            config["sinks"] = self._sinks
        self.config_path.write_text(to_toml(config))

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Spawn `fieldbridge run` and return once GET /healthz answers 200."""
        for attempt in range(START_ATTEMPTS):
            self.spawn()
            try:
                self._wait_ready(timeout)
                return
            except _PortTaken:
                if attempt == START_ATTEMPTS - 1:
                    raise
                self.port = free_port()
                self.write_config()

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready."""
        if self.running:
            raise RuntimeError(f"fieldbridge is already running (pid {self.pid})")
        self._close_log()
        self._log_file = self.log_path.open("ab")
        self._log_offset = self._log_file.tell()
        config = ["--config", str(self.config_path)] if self.use_config else []
        env = dict(self.env)
        if not self.use_config:
            env["FIELDBRIDGE_STORE__URL"] = f"sqlite:///{self.db_path}"
            env["FIELDBRIDGE_HTTP__LISTEN"] = f"127.0.0.1:{self.port}"
        self._popen = subprocess.Popen(
            [self.fieldbridge, *config, "run", *self.run_args],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=child_env(env),
            cwd=self.workdir,
            preexec_fn=self._limit_open_files if self.open_files is not None else None,
        )

    def _limit_open_files(self) -> None:
        """Runs in the child between fork and exec."""
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                code = self._popen.poll() if self._popen is not None else None
                if code is not None:
                    output = self.output_since_start()
                    if "cannot listen" in output:
                        raise _PortTaken(output)
                    raise RuntimeError(
                        f"fieldbridge exited with {code} while starting:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.base_url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.kill()
        raise TimeoutError(
            f"fieldbridge did not answer GET /healthz within {timeout:.0f}s:\n{self.log_tail()}"
        )

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def send(self, sig: signal.Signals) -> None:
        if self._popen is None:
            raise RuntimeError("fieldbridge was never started")
        self._popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush or answer anything."""
        if self.running:
            self.send(signal.SIGKILL)
            self.wait(10.0)

    def terminate(self) -> None:
        """SIGTERM: the graceful stop operators use."""
        self.send(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """The exit code; raises subprocess.TimeoutExpired if the process is still running."""
        if self._popen is None:
            raise RuntimeError("fieldbridge was never started")
        code = self._popen.wait(timeout)
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log_file is not None and (self._popen is None or self._popen.poll() is not None):
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> FieldbridgeProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
        self._close_log()

    # --- what it said and stored -------------------------------------------------------------

    def output(self) -> str:
        """Everything every start of the process printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output_since_start(self) -> str:
        """What the latest start printed."""
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `fieldbridge --config <this config> ARGS...` beside the service."""
        return run_cli(
            *args,
            config=self.config_path,
            cwd=self.workdir,
            timeout=timeout,
            fieldbridge=self.fieldbridge,
        )

    def sinks_status(self) -> list[dict[str, Any]]:
        """`fieldbridge sinks status --json`, parsed."""
        done = self.cli("sinks", "status", "--json")
        if done.returncode != 0:
            raise RuntimeError(f"sinks status failed ({done.returncode}): {done.stderr}")
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Read the store directly; read-only, so it never competes with the service's writer."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10.0)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


class _PortTaken(RuntimeError):
    """The chosen port was taken between picking and binding it."""


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A sender killed mid-request resets its connection; that is the test working.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class WebhookReceiver:
    """A minimal destination for the webhook sink: records the message ids it is sent.

    A real HTTP server on 127.0.0.1 (a free port), answering 200 to every valid batch; with
    `hang`, it reads each request and never answers, like a destination that stopped responding.
    """

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang  # hold every request unanswered until the receiver closes
        self.held = 0  # requests read and held unanswered (with `hang`)
        self._released = threading.Event()
        self.received: Counter[int] = Counter()  # journal id -> times delivered
        self.batches = 0
        self.errors: list[str] = []  # bodies that broke the documented schema
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def ids(self) -> set[int]:
        with self._lock:
            return set(self.received)

    def duplicates(self) -> int:
        """Deliveries beyond the first of each message (allowed: at-least-once)."""
        with self._lock:
            return sum(n - 1 for n in self.received.values())

    def _record(self, body: bytes) -> None:
        try:
            batch = json.loads(body)
            if batch.get("schema") != "fieldbridge.webhook/1":
                raise ValueError(f"schema {batch.get('schema')!r}")
            ids = [int(m["id"]) for m in batch["messages"]]
        except (ValueError, KeyError, TypeError) as exc:
            with self._lock:
                self.errors.append(f"{exc}: {body[:200]!r}")
            return
        with self._lock:
            self.batches += 1
            self.received.update(ids)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sender was killed mid-request: nothing was delivered
                if receiver.hang:
                    with receiver._lock:
                        receiver.held += 1
                    receiver._released.wait(60.0)
                    return
                receiver._record(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test prints its own summary

        return Handler

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
