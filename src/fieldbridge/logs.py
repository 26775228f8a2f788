"""Logging setup: readable text by default, JSON lines on request, optional rotating file."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

from fieldbridge.config import LogSettings
from fieldbridge.timefmt import iso

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _iso_utc(record: logging.LogRecord, datefmt: str | None = None) -> str:
    return iso(record.created)


def setup_logging(settings: LogSettings) -> None:
    """Configure the root logger from [log]; per-component levels come from log.levels."""
    formatter: logging.Formatter
    if settings.format == "json":
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
        formatter.formatTime = _iso_utc  # type: ignore[method-assign]
    else:
        formatter = logging.Formatter(TEXT_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if settings.file:
        Path(settings.file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                settings.file, maxBytes=settings.max_bytes, backupCount=settings.backup_count
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # Libraries that log every request or step speak up only for warnings, unless log.levels
    # (applied after) says otherwise; fieldbridge logs its own start, stop and sends.
    for noisy in ("uvicorn.access", "uvicorn.error", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name, level in settings.levels.items():
        logging.getLogger(name).setLevel(level.upper())
