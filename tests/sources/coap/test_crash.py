"""fieldbridge SIGKILLed again and again while sensors keep sending CON /m frames with retries:
every frame that got a 2.01 is stored, each reading exactly once."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

from tests.support.efento_sim import Sensor, free_udp_port, measurements, serial_bytes
from tests.support.processes import FieldbridgeProcess

T0 = 1_700_000_000
SENSORS = 4
SAMPLES = 5
KILLS = 4
ANSWER_WAIT = 0.25  # seconds a sensor waits for an ACK before retransmitting
RETRANSMITS = 2  # same message id; then the frame is retried as a new message


class SimulatedSensor(threading.Thread):
    """Sends frame after frame; a frame is retried (new message, same samples, retry count
    up) until it gets a 2.01, like the firmware does."""

    def __init__(self, index: int, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.serial = serial_bytes(0xC000 + index)
        self.port = port
        self.stop = stop
        self.acked: list[int] = []  # start times of frames that got a 2.01
        self.answers: Counter[str] = Counter()
        self.sends = 0

    def run(self) -> None:
        with Sensor(self.port) as sensor:
            frame_no = 0
            while not self.stop.is_set():
                start = T0 + frame_no * SAMPLES * 60
                retry = 0
                while True:
                    frame = measurements(self.serial, start, samples=SAMPLES, retry=min(retry, 31))
                    self.sends += 1
                    answer = sensor.exchange(
                        "m", frame, timeout=ANSWER_WAIT, retransmits=RETRANSMITS
                    )
                    if answer is not None:
                        self.answers[answer.code_text] += 1
                        if answer.code_text == "2.01":
                            self.acked.append(start)
                            break
                    retry += 1
                    time.sleep(0.05)
                frame_no += 1


def test_every_acknowledged_frame_is_stored_once_across_kills(tmp_path: Path) -> None:
    udp = free_udp_port()
    source = {"name": "efento", "listen": f"127.0.0.1:{udp}"}
    stop = threading.Event()
    sensors = [SimulatedSensor(i, udp, stop) for i in range(SENSORS)]
    rng = random.Random(4)
    with FieldbridgeProcess(tmp_path, sources={"efento": [source]}) as service:
        service.start()
        for sensor in sensors:
            sensor.start()
        for _ in range(KILLS):
            time.sleep(
                rng.uniform(0.4, 1.0)
            )  # load runs meanwhile: pacing, not waiting for a condition
            service.kill()
            time.sleep(
                rng.uniform(0.0, 0.3)
            )  # load runs meanwhile: pacing, not waiting for a condition
            service.start()
        time.sleep(0.5)  # load runs meanwhile: pacing, not waiting for a condition
        stop.set()
        for sensor in sensors:
            sensor.join(30.0)
            assert not sensor.is_alive(), "a sensor never got its last frame acknowledged"
        service.terminate()
        assert service.wait(20.0) == 0

        acked = sum(len(s.acked) for s in sensors)
        assert acked >= 20, f"too few frames got through: {acked}"
        for sensor in sensors:
            device = sensor.serial.hex().upper()
            rows = service.query(
                "SELECT reading_key, COUNT(*) FROM readings WHERE device = ? GROUP BY reading_key",
                (device,),
            )
            counts = dict(rows)
            assert all(n == 1 for n in counts.values()), "a reading was stored twice"
            expected = {
                f"ch{ch}@{start + k * 60}"
                for start in sensor.acked
                for k in range(SAMPLES)
                for ch in (1, 2)
            }
            assert expected <= set(counts), f"{device}: acknowledged readings are missing"
            # Every frame was retried until acknowledged, so nothing else was stored.
            assert set(counts) == expected
        retries = sum(s.sends for s in sensors) - acked
        print(f"{acked} frames acknowledged, {retries} retries, {KILLS} kills")
