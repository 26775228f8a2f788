"""Resident memory of a process (Linux /proc/<pid>/status), for the memory-limit tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

MB = 1024 * 1024


def status_mb(pid: int, key: str) -> float:
    """`VmRSS` (now) or `VmHWM` (the peak since the process started) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{key} is not in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    return status_mb(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_mb(pid: int) -> float:
    return status_mb(pid, "VmHWM")


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def idle_spy(port: int, token: str, timeout: float = 10.0) -> socket.socket:
    """GET /api/v1/spy on a socket that is never read past its first bytes: a watcher that
    stopped reading (a small receive buffer, so the server's side is what fills)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /api/v1/spy HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    sock.recv(1, socket.MSG_PEEK)  # the answer started: the watcher is registered
    return sock
