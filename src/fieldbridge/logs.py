"""Logging setup: readable text by default, JSON lines on request, optional rotating file."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

from fieldbridge.config import LogSettings

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(settings: LogSettings) -> None:
    """Configure the root logger from [log]; per-component levels come from log.levels."""
    formatter: logging.Formatter
    if settings.format == "json":
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
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
    for name, level in settings.levels.items():
        logging.getLogger(name).setLevel(level.upper())
    # Access logs of every request would drown the service's own messages.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # fieldbridge logs its own
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
