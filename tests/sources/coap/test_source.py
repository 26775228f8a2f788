"""The Efento CoAP source over real UDP: aiocoap's client, libcoap's coap-client and a raw
simulated sensor send CON and NON frames; answers and what the store holds are checked."""

from __future__ import annotations

import asyncio
import logging
import re
import statistics
import struct
import time
from pathlib import Path

import pytest
from aiocoap.numbers.codes import Code

from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.sources.coap.transport import ACK_TIMEOUT
from tests.conftest import eventually
from tests.support.coap_harness import (
    Harness,
    answers_in,
    coap_client,
    seed_frames,
    serve,
)
from tests.support.efento_sim import ACK, CON, Sensor, configuration, measurements, serial_bytes
from tests.support.locks import sqlite_write_locked

T0 = 1_700_000_000
SERIAL = serial_bytes(0x0101)
SERIAL_HEX = SERIAL.hex().upper()


async def journal_count(h: Harness) -> int:
    rows = await h.store.db.fetchall("SELECT COUNT(*) FROM journal")
    return int(rows[0][0])


async def readings_count(h: Harness, device: str) -> int:
    rows = await h.store.db.fetchall("SELECT COUNT(*) FROM readings WHERE device = ?", (device,))
    return int(rows[0][0])


def config_of(payload: bytes) -> ProtoConfig:
    return ProtoConfig.FromString(payload)


async def test_seed_frames_are_stored_and_acknowledged(tmp_path: Path) -> None:
    frames = seed_frames()
    async with serve(tmp_path / "s.db", path_prefix=["", "efento"]) as h:
        answer = await h.post("m", frames["m"])
        assert answer.code == Code.CREATED
        # No /c of this sensor is stored yet, so the 2.01 asks for it, with the clock.
        downlink = config_of(answer.payload)
        assert downlink.configuration_request
        assert abs(downlink.current_time - time.time()) < 5
        assert set(f.name for f, _ in downlink.ListFields()) == {
            "configuration_request",
            "current_time",
        }
        info = await h.post("efento/i", frames["i"])
        assert (info.code, info.payload) == (Code.CREATED, b"")
        config = await h.post("efento/c", frames["c"])
        assert (config.code, config.payload) == (Code.CREATED, b"")

        assert await readings_count(h, "282C024156AF") == 25
        sensor = await h.store.get_device("282C024156AF")
        assert sensor is not None and sensor.kind == "efento"
        assert sensor.attributes["firmware"] == "06.10"
        assert sensor.attributes["measurement_configuration_hash"] == 119
        other = await h.store.get_device("282C0240FD34")
        assert other is not None and other.attributes["configuration_hash"] == 204
        assert other.attributes["configuration"]["dataServerPort"] == 4040


async def test_configuration_is_requested_only_when_the_hash_differs(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db") as h:
        first = await h.post("m", measurements(SERIAL, T0, config_hash=7))
        assert config_of(first.payload).configuration_request  # nothing stored to compare
        stored = await h.post("c", configuration(SERIAL, 7))
        assert (stored.code, stored.payload) == (Code.CREATED, b"")
        same = await h.post("m", measurements(SERIAL, T0 + 300, config_hash=7))
        assert (same.code, same.payload) == (Code.CREATED, b"")  # nothing to say: no payload
        changed = await h.post("m", measurements(SERIAL, T0 + 600, config_hash=8))
        assert changed.code == Code.CREATED
        assert config_of(changed.payload).configuration_request
        no_hash = await h.post("m", measurements(SERIAL, T0 + 900, config_hash=None))
        assert no_hash.payload == b""


async def test_config_request_always_and_never(tmp_path: Path) -> None:
    async with serve(tmp_path / "a.db", config_request="always") as h:
        await h.post("c", configuration(SERIAL, 7))
        answer = await h.post("m", measurements(SERIAL, T0, config_hash=7))
        assert config_of(answer.payload).configuration_request
    async with serve(tmp_path / "n.db", config_request="never") as h:
        answer = await h.post("m", measurements(SERIAL, T0, config_hash=7))
        assert answer.payload == b""


async def test_non_frames_are_stored_and_get_no_answer(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db") as h:
        with Sensor(h.port) as sensor:
            sensor.send_non("m", measurements(SERIAL, T0))
            sensor.send_non("c", configuration(SERIAL, 5))
            assert await asyncio.to_thread(sensor.silent_for, 0.4)

        async def stored() -> bool:
            return await journal_count(h) == 2

        await eventually(stored, "both NON frames are committed")
        assert await readings_count(h, SERIAL_HEX) == 10
        device = await h.store.get_device(SERIAL_HEX)
        assert device is not None and device.attributes["configuration_hash"] == 5
        # A NON answer cannot carry a downlink, so nothing was taken from the queue.
        assert await h.store.list_downlinks() == []


async def test_time_on_get_and_post(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db", path_prefix=["", "efento"]) as h:
        for answer in (await h.get("t"), await h.post("t", b""), await h.get("efento/t")):
            assert answer.code == Code.CONTENT
            assert len(answer.payload) == 4
            assert abs(struct.unpack(">I", answer.payload)[0] - time.time()) <= 2
        log, payload = await coap_client("-m", "get", h.uri("t"))
        assert answers_in(log) == ["2.05"]
        assert abs(struct.unpack(">I", payload)[0] - time.time()) <= 2
        assert await journal_count(h) == 0


async def test_garbage_gets_400_and_is_quarantined(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db") as h:
        answer = await h.post("m", b"\xff\xfe garbage")
        assert answer.code == Code.BAD_REQUEST
        assert b"ProtoMeasurements" in answer.payload  # the reason, as diagnostic payload
        with Sensor(h.port) as sensor:
            sensor.send_non("i", b"\x0a\xff\xff")
            assert await asyncio.to_thread(sensor.silent_for, 0.3)

        async def both() -> bool:
            return len(await h.store.list_quarantine()) == 2

        await eventually(both, "both bad payloads are quarantined")
        kept = await h.store.list_quarantine()
        assert {q.payload for q in kept} == {b"\xff\xfe garbage", b"\x0a\xff\xff"}
        assert {q.meta["endpoint"] for q in kept} == {"m", "i"}
        assert await journal_count(h) == 0


async def test_unknown_paths_and_methods(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db") as h:
        assert (await h.post("x", b"1")).code == Code.NOT_FOUND
        assert (await h.post("efento/m", b"1")).code == Code.NOT_FOUND  # prefix not configured
        assert (await h.get("m")).code == Code.METHOD_NOT_ALLOWED


async def test_coap_client_con_and_non(tmp_path: Path) -> None:
    frames = seed_frames()
    frame = tmp_path / "m.bin"
    frame.write_bytes(frames["m"])
    info = tmp_path / "i.bin"
    info.write_bytes(frames["i"])
    async with serve(tmp_path / "s.db") as h:
        log, payload = await coap_client("-m", "post", "-f", str(frame), h.uri("m"))
        assert answers_in(log) == ["2.01"]
        assert config_of(payload).configuration_request
        log, payload = await coap_client("-m", "post", "-N", "-B", "1", "-f", str(info), h.uri("i"))
        assert answers_in(log) == [] and payload == b""

        async def both() -> bool:
            return await journal_count(h) == 2

        await eventually(both, "the NON /i is committed")
        log, _ = await coap_client("-m", "post", "-e", "not a frame", h.uri("m"))
        assert answers_in(log) == ["4.00"]
        assert await readings_count(h, "282C024156AF") == 25


async def test_tokens_from_settings_and_registry(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db", tokens=["s3cret"]) as h:
        refused = await h.post("m", measurements(SERIAL, T0))
        assert refused.code == Code.UNAUTHORIZED
        assert refused.payload == b"no cloud token"
        wrong = await h.post("m", measurements(SERIAL, T0, token="guess"))
        assert (wrong.code, wrong.payload) == (Code.UNAUTHORIZED, b"unknown cloud token")
        assert await journal_count(h) == 0 and await h.store.list_quarantine() == []

        ok = await h.post("m", measurements(SERIAL, T0, token="s3cret"))
        assert ok.code == Code.CREATED

        other = serial_bytes(0x0202)
        await h.store.add_device(
            other.hex().upper(), kind="efento", attributes={"allowed_cloud_token": "own-token"}
        )
        mine = await h.post("m", measurements(other, T0, token="own-token"))
        assert mine.code == Code.CREATED
        # A device's own token is not a key to the others.
        borrowed = await h.post("m", measurements(SERIAL, T0 + 300, token="own-token"))
        assert borrowed.code == Code.UNAUTHORIZED
        assert await journal_count(h) == 2
        # Without a token garbage cannot prove where it comes from: refused, not kept.
        assert (await h.post("m", b"\xff garbage")).code == Code.UNAUTHORIZED
        assert await h.store.list_quarantine() == []


async def test_token_in_a_coap_option(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db", tokens=["opt-token"], token_option=2048) as h:
        with Sensor(h.port) as sensor:
            frame = measurements(SERIAL, T0, token="opt-token")  # payload token is ignored
            refused = await asyncio.to_thread(sensor.exchange, "m", frame)
            good = await asyncio.to_thread(
                sensor.exchange, "m", measurements(SERIAL, T0), options={2048: b"opt-token"}
            )
            garbage = await asyncio.to_thread(
                sensor.exchange, "m", b"\xff", options={2048: b"opt-token"}
            )
        assert refused is not None and refused.code_text == "4.01"
        assert good is not None and good.code_text == "2.01"
        # A frame with a good token that does not decode is quarantined like any other.
        assert garbage is not None and garbage.code_text == "4.00"
        assert len(await h.store.list_quarantine()) == 1


async def test_split_configuration_is_reassembled(tmp_path: Path) -> None:
    parts = [
        configuration(SERIAL, 0, split=-1, period=60, rules=2),
        configuration(SERIAL, 0, split=-2, period=None, rules=2),
        configuration(SERIAL, 9, split=3, period=None, rules=1),
    ]
    async with serve(tmp_path / "s.db") as h:
        for part in parts:
            assert (await h.post("c", part)).code == Code.CREATED
        device = await h.store.get_device(SERIAL_HEX)
        assert device is not None
        assert device.attributes["configuration_hash"] == 9
        assert device.attributes["configuration"]["measurementPeriodBase"] == 60
        assert len(device.attributes["configuration"]["rules"]) == 5
        rows = await h.store.db.fetchall("SELECT kind, payload, meta FROM journal ORDER BY id")
        assert [r[0] for r in rows] == ["efento-config-part", "efento-config-part", "efento"]
        assert [bytes(r[1]) for r in rows] == [parts[0], parts[1], b"".join(parts)]
        assert '"split_parts":3' in rows[2][2]
        # The sensor's hash now matches: no configuration request.
        answer = await h.post("m", measurements(SERIAL, T0, config_hash=9))
        assert answer.payload == b""


async def test_split_configuration_survives_a_restart(tmp_path: Path) -> None:
    parts = [
        configuration(SERIAL, 0, split=-1, period=30, rules=3),
        configuration(SERIAL, 11, split=2, period=None, rules=3),
    ]
    async with serve(tmp_path / "s.db") as h:
        assert (await h.post("c", parts[0])).code == Code.CREATED
    async with serve(tmp_path / "s.db") as h:  # a new process: the first part is in the journal
        assert (await h.post("c", parts[1])).code == Code.CREATED
        device = await h.store.get_device(SERIAL_HEX)
        assert device is not None
        assert device.attributes["configuration_hash"] == 11
        assert device.attributes["configuration"]["measurementPeriodBase"] == 30
        assert len(device.attributes["configuration"]["rules"]) == 6


async def test_incomplete_split_configuration_is_asked_for_again(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db") as h:
        middle = configuration(SERIAL, 0, split=-2, period=None, rules=1)
        last = configuration(SERIAL, 4, split=3, period=None, rules=1)
        assert (await h.post("c", middle)).code == Code.CREATED
        assert (await h.post("c", last)).code == Code.CREATED  # stored as it came
        answer = await h.post("m", measurements(SERIAL, T0, config_hash=4))
        assert config_of(answer.payload).configuration_request
        whole = configuration(SERIAL, 4)
        assert (await h.post("c", whole)).code == Code.CREATED
        again = await h.post("m", measurements(SERIAL, T0 + 300, config_hash=4))
        assert again.payload == b""


async def test_answers_are_fast_enough_to_stay_piggy_backed(tmp_path: Path) -> None:
    """Answers leave within one commit, so they stay piggy-backed (an empty ACK and a separate
    response only follow after separate_after, 1 s). A loose bound: this machine is shared."""
    async with serve(tmp_path / "s.db") as h:
        with Sensor(h.port) as sensor:
            await h.post("c", configuration(SERIAL, 7))
            times, kinds = [], []
            for n in range(40):
                frame = measurements(SERIAL, T0 + 300 * n, config_hash=7)
                started = time.perf_counter()
                answer = await asyncio.to_thread(sensor.exchange, "m", frame)
                times.append(time.perf_counter() - started)
                assert answer is not None and answer.code_text == "2.01"
                kinds.append(answer.mtype)
    assert statistics.median(times) < 0.05, f"median {statistics.median(times) * 1000:.1f} ms"
    assert kinds.count(ACK) >= 36, f"only {kinds.count(ACK)} of 40 answers piggy-backed"


async def test_store_failure_gives_500_then_the_retry_is_stored_once(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    frame = measurements(SERIAL, T0)
    async with serve(db, busy_timeout_ms=50) as h:
        # The store's writer connects on first use; it must be open before the lock is taken.
        warm = await h.post("m", measurements(serial_bytes(0x0909), T0))
        assert warm.code == Code.CREATED
        with sqlite_write_locked(db):
            failed = await h.post("m", frame)
            assert failed.code == Code.INTERNAL_SERVER_ERROR
        # Nothing of the failed transaction is left.
        assert await journal_count(h) == 1
        assert await readings_count(h, SERIAL_HEX) == 0
        assert await h.store.get_device(SERIAL_HEX) is None
        retried = await h.post("m", frame)
        assert retried.code == Code.CREATED
        again = await h.post("m", measurements(SERIAL, T0, retry=1))  # a later retry, too
        assert again.code == Code.CREATED
        assert await readings_count(h, SERIAL_HEX) == 10


async def test_a_store_stalled_5s_gets_empty_ack_then_separate_201(tmp_path: Path) -> None:
    """Another process holds the SQLite write lock for 5 s (within busy_timeout_ms): the sensor
    gets an empty ACK before its ACK timeout, then its 2.01 as a CON that it ACKs, and the
    frame is stored once."""
    db = tmp_path / "s.db"
    async with serve(db, busy_timeout_ms=20_000) as h:
        # The store's writer connects on first use; it must be open before the lock is taken.
        assert (await h.post("m", measurements(serial_bytes(0x0909), T0))).code == Code.CREATED
        with Sensor(h.port) as sensor:
            frame = measurements(SERIAL, T0)
            with sqlite_write_locked(db):
                stalled = time.monotonic()
                exchange = asyncio.create_task(
                    asyncio.to_thread(sensor.exchange, "m", frame, timeout=30.0)
                )

                async def empty_acked() -> bool:
                    return sensor.empty_ack_after is not None

                await eventually(empty_acked, "the sensor has its empty ACK")
                waited = sensor.empty_ack_after or 0.0
                assert 1.0 <= waited < ACK_TIMEOUT, f"empty ACK after {waited:.2f} s"
                # A window in which nothing may happen: the store stalls for 5 s in all.
                await asyncio.sleep(5.0 - (time.monotonic() - stalled))
                assert not exchange.done()
            answer = await exchange
        assert answer is not None  # the simulator ACKed it: it was a CON
        assert (answer.mtype, answer.code_text) == (CON, "2.01")
        assert await journal_count(h) == 2
        assert await readings_count(h, SERIAL_HEX) == 10


async def test_coap_client_takes_a_separate_response(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """libcoap's coap-client gets the empty ACK, then the 2.01 as a CON, and ACKs it."""
    caplog.set_level(logging.DEBUG, logger="fieldbridge.coap")
    db = tmp_path / "s.db"
    frame = tmp_path / "m.bin"
    frame.write_bytes(measurements(SERIAL, T0))
    async with serve(db, busy_timeout_ms=20_000, separate_after=0.3) as h:
        assert (await h.post("m", measurements(serial_bytes(0x0909), T0))).code == Code.CREATED
        with sqlite_write_locked(db):
            client = asyncio.create_task(coap_client("-m", "post", "-f", str(frame), h.uri("m")))

            async def empty_acked() -> bool:
                return any("empty ACK" in r.getMessage() for r in caplog.records)

            await eventually(empty_acked, "the server sent its empty ACK")
        log, payload = await client
        assert answers_in(log) == ["2.01"]
        separate = re.search(r"t:CON c:2\.01 i:([0-9a-f]+)", log)
        assert separate is not None, log
        assert "t:ACK c:0.00 i:" + separate.group(1) in log  # coap-client ACKed it
        assert log.index("t:ACK c:0.00") < separate.start()  # the empty ACK came first
        assert config_of(payload).current_time > 0
        assert await readings_count(h, SERIAL_HEX) == 10
