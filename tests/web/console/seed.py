"""Devices, readings and refusals sent to a running fieldbridge the way devices send them."""

from __future__ import annotations

import math
import time
from typing import Any

import httpx

EFENTO_SERIAL = "282C024156AF"
KIT = "kit-ak-0042"
TRAP = "trap-node-17"


def post(ingest_url: str, body: object) -> httpx.Response:
    return httpx.post(ingest_url, json=body, timeout=10.0)


def history(device: str, kind: str, minutes: int, now: float) -> list[dict[str, Any]]:
    """A reading a minute for the last `minutes`: a day-like temperature and humidity curve."""
    out = []
    for i in range(minutes, 0, -1):
        at = now - i * 60
        phase = 2 * math.pi * i / 180
        out.append(
            {
                "device": device,
                "kind": kind,
                "ts": at,
                "readings": {
                    "temperature": {"value": round(14 + 4 * math.sin(phase), 2), "unit": "C"},
                    "humidity": {"value": round(70 - 12 * math.cos(phase), 1), "unit": "%"},
                },
            }
        )
    return out


def seed(ingest_url: str) -> None:
    """Three devices with an hour of readings each, and one payload that does not decode."""
    now = time.time()
    for device, kind in ((KIT, "smartcitizen"), (EFENTO_SERIAL, "efento"), (TRAP, "trapnet")):
        answer = post(ingest_url, history(device, kind, 60, now))
        assert answer.status_code == 200, answer.text
    refused = post(ingest_url, {"device": KIT, "readings": {"temperature": "warm"}})
    assert refused.status_code == 422, refused.text
