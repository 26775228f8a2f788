"""Configuration downlinks end to end over CoAP, on SQLite and PostgreSQL: queued, carried by
the 2.01 to a CON /m or /i, confirmed by the next /c with a new hash, resent or given up."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiocoap.numbers.codes import Code

from fieldbridge.codecs.efento import encode_config
from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.model import Decoded
from fieldbridge.store import Pending
from tests.conftest import eventually
from tests.support.coap_harness import seed_frames, serve
from tests.support.efento_sim import Sensor, configuration, measurements, serial_bytes

T0 = 1_700_000_000
SERIAL = serial_bytes(0x0A0B)
DEVICE = SERIAL.hex().upper()


def fields_of(payload: bytes) -> dict[str, Any]:
    config = ProtoConfig.FromString(payload)
    return {f.name: v for f, v in config.ListFields()}


async def test_queued_configuration_reaches_the_sensor_and_is_confirmed(store_url: str) -> None:
    async with serve(store_url) as h:
        await h.post("c", configuration(SERIAL, 7))
        plain = await h.post("m", measurements(SERIAL, T0, config_hash=7))
        assert plain.payload == b""  # nothing queued, hash known: no downlink

        payload = encode_config({"measurement_period_base": 60, "transmission_interval": 900})
        did = await h.store.queue_downlink(DEVICE, payload, origin="test")
        await h.refresh()
        answer = await h.post("m", measurements(SERIAL, T0 + 300, config_hash=7))
        assert answer.code == Code.CREATED
        sent = fields_of(answer.payload)
        assert sent["measurement_period_base"] == 60 and sent["transmission_interval"] == 900
        assert abs(sent["current_time"] - time.time()) < 5
        assert "configuration_request" not in sent  # the hash still matches the stored /c
        (pending,) = await h.store.pending_downlinks(DEVICE)
        assert (pending.id, pending.state) == (did, "sent")
        assert pending.sent_hash == 7 and pending.expect_hash_change is True

        # The sensor applied it: its new configuration comes with a new hash.
        await h.post("c", configuration(SERIAL, 8, period=60))
        assert await h.store.pending_downlinks() == []
        (done,) = await h.store.list_downlinks(device=DEVICE)
        assert done.state == "confirmed" and done.confirmed_at is not None
        after = await h.post("m", measurements(SERIAL, T0 + 600, config_hash=8))
        assert after.payload == b""


async def test_a_downlink_queued_in_this_process_rides_on_the_very_next_answer(
    store_url: str,
) -> None:
    """A downlink this process queues (the ThingWorx sink's RemoteConfiguration, say) needs
    no poll: the store tells the source when it commits. The poll is an hour here."""
    async with serve(store_url, downlink_poll=3600) as h:
        await h.post("c", configuration(SERIAL, 7))
        assert (await h.post("m", measurements(SERIAL, T0, config_hash=7))).payload == b""
        payload = encode_config({"measurement_period_base": 60, "transmission_interval": 900})
        did = await h.store.queue_downlink(DEVICE, payload, origin="test")
        answer = await h.post("m", measurements(SERIAL, T0 + 300, config_hash=7))
        assert fields_of(answer.payload)["measurement_period_base"] == 60
        (pending,) = await h.store.pending_downlinks(DEVICE)
        assert (pending.id, pending.state) == (did, "sent")
        # A refresh under way while another is queued (its snapshot may lack it, whichever
        # of the two reaches the store first) must not hide it.
        second = encode_config({"transmission_interval": 600})
        refreshing = asyncio.create_task(h.source.planner.refresh())
        await asyncio.sleep(0)  # the refresh starts: its read is handed to the store
        await h.store.queue_downlink(DEVICE, second, origin="test")
        await refreshing
        answer = await h.post("m", measurements(SERIAL, T0 + 600, config_hash=7))
        assert fields_of(answer.payload)["transmission_interval"] == 600


async def test_a_frame_without_a_hash_records_the_stored_one_read_afresh(store_url: str) -> None:
    async with serve(store_url) as h:
        await h.post("c", configuration(SERIAL, 204))
        # Another fieldbridge process stored a newer /c: this source's cache still says 204.
        newer = Decoded(DEVICE, kind="efento", attributes={"configuration_hash": 205})
        await h.store.commit([Pending("efento-2", time.time(), "{}", b"c", [newer])])
        await h.store.queue_downlink(DEVICE, encode_config({"transmission_interval": 600}))
        await h.refresh()
        answer = await h.post("m", measurements(SERIAL, T0, config_hash=None))
        assert fields_of(answer.payload)["transmission_interval"] == 600
        (sent,) = await h.store.pending_downlinks(DEVICE)
        assert (sent.state, sent.sent_hash, sent.attempts) == ("sent", 205, 1)


async def test_downlinks_are_merged_later_ones_winning(store_url: str) -> None:
    async with serve(store_url) as h:
        await h.post("c", configuration(SERIAL, 7))
        first = encode_config(
            {"transmission_interval": 600, "rules": [{"condition": 2}, {"condition": 2}]}
        )
        second = encode_config({"transmission_interval": 1200, "rules": [{"condition": 1}]})
        await h.store.queue_downlink(DEVICE, first)
        await h.store.queue_downlink(DEVICE, second)
        await h.refresh()
        answer = await h.post("m", measurements(SERIAL, T0, config_hash=3))
        merged = ProtoConfig.FromString(answer.payload)
        assert merged.transmission_interval == 1200
        assert [r.condition for r in merged.rules] == [1]  # replaced, not appended
        assert merged.configuration_request  # hash 3 differs from the stored 7
        assert [d.state for d in await h.store.pending_downlinks(DEVICE)] == ["sent", "sent"]


async def test_non_frames_do_not_take_downlinks(store_url: str) -> None:
    async with serve(store_url) as h:
        await h.store.queue_downlink(DEVICE, encode_config({"ack_interval": 3600}))
        await h.refresh()
        with Sensor(h.port) as sensor:
            sensor.send_non("m", measurements(SERIAL, T0))
            assert await asyncio.to_thread(sensor.silent_for, 0.3)
        assert [d.state for d in await h.store.pending_downlinks(DEVICE)] == ["queued"]
        # The next CON takes it.
        answer = await h.post("m", measurements(SERIAL, T0 + 60))
        assert fields_of(answer.payload)["ack_interval"] == 3600


async def test_device_info_request_rides_on_i_and_is_confirmed_by_the_upload(
    store_url: str,
) -> None:
    async with serve(store_url) as h:
        await h.store.queue_downlink(DEVICE, encode_config({"device_info_request": True}))
        info = seed_frames()["i"]  # serial 282C024156AF
        await h.store.queue_downlink("282C024156AF", encode_config({"device_info_request": True}))
        await h.refresh()
        answer = await h.post("i", info)
        assert fields_of(answer.payload).keys() == {"device_info_request", "current_time"}
        (sent,) = await h.store.pending_downlinks("282C024156AF")
        assert sent.expect_hash_change is False  # a request changes no setting
        # The sensor answers the request with a (NON) /i upload: that confirms it.
        with Sensor(h.port) as sensor:
            sensor.send_non("i", info)

            async def confirmed() -> bool:
                return await h.store.pending_downlinks("282C024156AF") == []

            await eventually(confirmed, "the /i upload confirms the request")
        # The other sensor's request is untouched.
        assert [d.state for d in await h.store.pending_downlinks(DEVICE)] == ["queued"]


async def test_unapplied_configuration_is_resent_then_given_up(store_url: str) -> None:
    async with serve(store_url, downlink_attempts=2) as h:
        await h.post("c", configuration(SERIAL, 7))
        did = await h.store.queue_downlink(
            DEVICE, encode_config({"transmission_interval": 300}), origin="test"
        )
        await h.refresh()
        sends = []
        for n in range(4):
            answer = await h.post("m", measurements(SERIAL, T0 + 300 * n, config_hash=7))
            sends.append("transmission_interval" in fields_of(answer.payload))
        # Sent, then again because the hash stayed 7; then no more.
        assert sends == [True, True, False, False]
        (gone,) = await h.store.list_downlinks(device=DEVICE)
        assert (gone.id, gone.state, gone.attempts) == (did, "failed", 2)
        assert "hash still 7" in str(gone.failed_reason)
        assert await h.store.pending_downlinks() == []


async def test_a_broken_queued_payload_does_not_block_the_answers(store_url: str) -> None:
    async with serve(store_url) as h:
        await h.store.queue_downlink(DEVICE, b"\xff\xff\xff", origin="test")
        await h.store.queue_downlink(DEVICE, encode_config({"transmission_interval": 600}))
        await h.refresh()
        answer = await h.post("m", measurements(SERIAL, T0, config_hash=None))
        assert answer.code == Code.CREATED
        assert fields_of(answer.payload)["transmission_interval"] == 600
        states = sorted(d.state for d in await h.store.list_downlinks(device=DEVICE))
        assert states == ["failed", "sent"]
