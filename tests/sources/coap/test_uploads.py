"""Split /c uploads over real UDP are bounded (sources/coap/uploads.py): a sensor sending part
after large part gets 4.13 and quarantine rows past the limit, an unfinished upload is dropped
by the timer, and a fieldbridge process under that attack stays within 20 MB."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.sources.coap.settings import EfentoCoapSettings
from tests.conftest import eventually, wait_until
from tests.support.coap_harness import serve
from tests.support.efento_sim import Sensor, free_udp_port, serial_bytes
from tests.support.processes import FieldbridgeProcess

SERIAL = serial_bytes(0x5151)
PART_BYTES = 60_000  # the attack: parts of 60 KB
ATTACK_PARTS = 600  # 36 MB sent: well over the 20 MB the process may grow by
RSS_GROWTH_LIMIT = 20 * 1024 * 1024


def large_part(index: int, size: int = PART_BYTES, serial: bytes = SERIAL) -> bytes:
    """Part `index` (1-based, not the last) of a split /c upload, padded to about `size`."""
    config = ProtoConfig(serial_number=serial, payload_split_info=-index, cloud_token="x" * size)
    return config.SerializeToString()


async def test_large_parts_past_the_limit_get_413_and_are_quarantined(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db") as h:
        with Sensor(h.port) as sensor:
            codes = []
            for index in range(1, 8):
                answer = await asyncio.to_thread(sensor.exchange, "c", large_part(index))
                assert answer is not None, f"part {index} got no answer"
                codes.append(answer.code_text)
            # 4 parts of 60 KB fit in split_max_upload_bytes (256 KiB); the 5th does not, and
            # the rest of that upload is refused too.
            assert codes == ["2.01"] * 4 + ["4.13"] * 3
            assert b"split_max_upload_bytes" in answer.payload
        assert h.source.split_uploads_held == (1, 0)  # the refusal is kept, no bytes
        kept = await h.store.list_quarantine()
        assert len(kept) == 3
        assert all("split_max_upload_bytes" in q.reason for q in kept)
        assert "part 5 makes the upload" in kept[-1].reason  # the oldest row: part 5
        assert {q.payload for q in kept} == {large_part(i) for i in (5, 6, 7)}
        rows = await h.store.db.fetchall("SELECT COUNT(*) FROM journal")
        assert rows[0][0] == 4  # the parts within the limit, stored as they came


async def test_a_part_beyond_split_max_parts_gets_413(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db", split_max_parts=2) as h:
        with Sensor(h.port) as sensor:
            for index, code in ((1, "2.01"), (2, "2.01"), (3, "4.13")):
                answer = await asyncio.to_thread(sensor.exchange, "c", large_part(index, 10))
                assert answer is not None and answer.code_text == code
            # A NON part over the limit is quarantined the same way, and gets no answer.
            sensor.send_non("c", large_part(4, 10))
            assert await asyncio.to_thread(sensor.silent_for, 0.3)

        async def both() -> bool:
            return len(await h.store.list_quarantine()) == 2

        await eventually(both, "both refused parts are quarantined")
        kept = await h.store.list_quarantine()
        assert all("split_max_parts" in q.reason for q in kept)
        assert [q.meta["type"] for q in kept] == ["NON", "CON"]


def test_split_bounds_are_checked_at_start() -> None:
    with pytest.raises(ValidationError, match=r"split_max_upload_bytes .* split_max_bytes"):
        EfentoCoapSettings(name="e", split_max_upload_bytes=4096, split_max_bytes=2048)
    with pytest.raises(ValidationError, match="split_max_parts"):
        EfentoCoapSettings(name="e", split_max_parts=1)


async def test_an_unfinished_upload_is_dropped_by_the_timer(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db", split_timeout=0.5) as h:
        with Sensor(h.port) as sensor:
            answer = await asyncio.to_thread(sensor.exchange, "c", large_part(1, 1000))
            assert answer is not None and answer.code_text == "2.01"
        uploads, held = h.source.split_uploads_held
        assert uploads == 1 and held > 1000
        # Nothing else is sent: only the timer can forget the upload.

        async def forgotten() -> bool:
            return h.source.split_uploads_held == (0, 0)

        await eventually(forgotten, "the expired upload is dropped", timeout=10.0)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


@pytest.mark.timeout(180)
def test_a_process_under_the_split_upload_attack_grows_less_than_20_mb(tmp_path: Path) -> None:
    """One serial sends part after 60 KB part (CON, one at a time like a sensor); the process's
    RSS is read before and after. Without the bounds it held every part (36 MB here)."""
    udp = free_udp_port()
    source = {"name": "efento", "listen": f"127.0.0.1:{udp}"}
    with FieldbridgeProcess(tmp_path, sources={"efento": [source]}) as service:
        service.start()
        assert service.pid is not None
        payloads = [large_part(i) for i in range(1, ATTACK_PARTS + 1)]
        answers: dict[str, int] = {}
        before = rss_bytes(service.pid)
        peak = before
        done = threading.Event()

        def sample() -> None:  # the peak, not only the end, must stay within the bound
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, rss_bytes(service.pid or 0))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        try:
            with Sensor(udp) as sensor:
                for payload in payloads:
                    answer = sensor.exchange("c", payload, timeout=5.0)
                    code = answer.code_text if answer is not None else "none"
                    answers[code] = answers.get(code, 0) + 1
        finally:
            done.set()
            sampler.join(5.0)
        after = rss_bytes(service.pid)
        elapsed = time.monotonic() - started
        print(
            f"{ATTACK_PARTS} parts of {PART_BYTES} B in {elapsed:.1f}s: answers {answers}; "
            f"RSS {before / 2**20:.1f} MB before, {peak / 2**20:.1f} MB peak, "
            f"{after / 2**20:.1f} MB after"
        )
        assert answers == {"2.01": 4, "4.13": ATTACK_PARTS - 4}
        assert peak - before < RSS_GROWTH_LIMIT, f"grew by {(peak - before) / 2**20:.1f} MB"

        def all_quarantined() -> bool:
            rows = service.query("SELECT COUNT(*) FROM quarantine")
            return bool(rows[0][0] == ATTACK_PARTS - 4)

        wait_until(all_quarantined, "every refused part is in quarantine", timeout=10.0)
