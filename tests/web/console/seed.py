"""Devices, readings and refusals sent to a running fieldbridge the way devices send them."""

from __future__ import annotations

import math
import time
from typing import Any

import httpx

from fieldbridge.model import Decoded, DeviceStatus, Reading
from fieldbridge.store import Pending, Store

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


def past_hour(now: float) -> list[Pending]:
    """An hour of traffic from three sources as ingest commits it (received over the hour, not
    all now), so the overview's rate chart has a shape; none of these devices is seeded above."""
    out = []
    for minute in range(60, 0, -1):
        at = now - minute * 60
        for source, device, per_minute in (
            ("coap", "282C02415700", 40 + 25 * (minute % 4 == 0)),
            ("mqtt", "kit-ak-0007", 90 + 5 * ((minute // 7) % 5)),
            ("trapnet", "gw-01", 15 + 30 * (minute % 10 == 0)),
        ):
            for i in range(per_minute):
                reading = Reading("temperature", 15.0, at + i / 100, 0, "C")
                decoded = Decoded(device=device, readings=(reading,), kind=source)
                out.append(Pending(source, at + i / 100, "{}", b"{}", decoded=[decoded]))
    return out


async def describe(store: Store) -> None:
    """What operators and the devices' own reports add: names, batteries, a maintenance."""
    await store.update_device(KIT, name="Orchard north")
    await store.update_device(EFENTO_SERIAL, name="Cool store 2", attributes={"battery": "ok"})
    await store.update_device(TRAP, attributes={"battery": 3.71}, status=DeviceStatus.MAINTENANCE)
