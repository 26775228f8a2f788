"""A real InfluxDB 1.x (`influxd` from Debian's influxdb package) of the tests' own: free ports,
data in a temp folder, optional auth; stop and start again on the same port for outages."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.support.processes import free_port

START_TIMEOUT = 30.0
START_ATTEMPTS = 4  # a start that finds a port in use tries again with a fresh RPC port
ADMIN = ("admin", "admin-secret")


class Influxd:
    """influxd on 127.0.0.1:<free port>; `auth=True` turns on auth with the ADMIN user."""

    def __init__(self, workdir: Path, *, auth: bool = False, start: bool = True) -> None:
        binary = shutil.which("influxd")
        if binary is None:
            raise RuntimeError("influxd is not installed (scripts/system-deps.sh: influxdb)")
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.rpc_port = free_port()
        self.auth = auth
        self.log_path = workdir / "influxd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._admin_made = False
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        d = self.workdir
        return (
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{d}/meta"\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n'
            '  query-log-enabled = false\n  wal-fsync-delay = "0s"\n'
            "[monitor]\n  store-enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            f"  auth-enabled = {'true' if self.auth else 'false'}\n"
            "[continuous_queries]\n  enabled = false\n"
        )

    def start(self) -> None:
        """Start influxd on its HTTP port. Between a stop and a start another process's
        connection may hold one of its ports (a free port is an ephemeral port too): the RPC
        port is taken afresh each start, and a start that finds the HTTP port in use waits
        and tries again."""
        for attempt in range(START_ATTEMPTS):
            if attempt:
                self.rpc_port = free_port()
                time.sleep(0.5 * attempt)
            if self._start_once():
                break
        else:
            raise RuntimeError(f"influxd did not start:\n{self.log_path.read_text()[-3000:]}")
        if self.auth and not self._admin_made:
            # With auth on and no user yet, InfluxDB lets exactly one CREATE USER through.
            self._query(f"CREATE USER {ADMIN[0]} WITH PASSWORD '{ADMIN[1]}' WITH ALL PRIVILEGES")
            self._admin_made = True

    def _start_once(self) -> bool:
        """True once influxd answers; False when it exited for a port in use."""
        conf = self.workdir / "influxd.conf"
        conf.write_text(self.config())
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._pings():
            if self._proc.poll() is not None:
                with self.log_path.open("rb") as log:
                    log.seek(logged)
                    if b"address already in use" in log.read():
                        return False
                raise RuntimeError(f"influxd exited:\n{self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"influxd did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        return True

    def _pings(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ping", timeout=1.0).status_code == 204
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)

    @property
    def pid(self) -> int:
        """The running influxd's process id (benchmarks read its CPU time)."""
        assert self._proc is not None, "influxd is not running"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _query(self, q: str, database: str | None = None) -> dict[str, Any]:
        params = {"q": q, "epoch": "ns"}
        if database:
            params["db"] = database
        auth = ADMIN if self.auth and self._admin_made else None
        if self._client is None:  # one client: a new one per query builds an SSL context each time
            self._client = httpx.Client(timeout=30.0)
        response = self._client.post(f"{self.url}/query", params=params, auth=auth)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        for result in body.get("results", []):
            if "error" in result:
                raise RuntimeError(f"InfluxQL {q!r}: {result['error']}")
        return body

    def create_database(self, name: str) -> None:
        self._query(f'CREATE DATABASE "{name}"')

    def query(self, database: str, q: str) -> list[list[Any]]:
        """The rows of the first series (time as integer ns), [] when there is none."""
        series = self._query(q, database)["results"][0].get("series", [])
        return list(series[0]["values"]) if series else []

    def series(self, database: str, q: str) -> list[dict[str, Any]]:
        """Every series of the first statement: name, tags, columns, values."""
        return list(self._query(q, database)["results"][0].get("series", []))

    def __enter__(self) -> Influxd:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
