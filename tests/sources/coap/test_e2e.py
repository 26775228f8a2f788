"""fieldbridge as operators run it: libcoap's coap-client posts the seed frames to a running
service, the CLI shows them and queues a configuration, and the sensor gets it in its 2.01."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from tests.support.coap_harness import answers_in, coap_client, seed_frames
from tests.support.efento_sim import configuration, free_udp_port
from tests.support.processes import FieldbridgeProcess

SENSOR = "282C024156AF"  # the seed's /m and /i sensor


async def test_seed_frames_cli_and_a_queued_configuration(tmp_path: Path) -> None:
    udp = free_udp_port()
    source = {
        "name": "efento",
        "listen": f"127.0.0.1:{udp}",
        "path_prefix": ["", "efento"],
        "downlink_poll": 0.1,
    }
    files = {}
    for endpoint, frame in seed_frames().items():
        files[endpoint] = tmp_path / f"seed_{endpoint}.bin"
        files[endpoint].write_bytes(frame)
    new_config = tmp_path / "c_new.bin"
    new_config.write_bytes(configuration(bytes.fromhex(SENSOR), 120, period=60))
    uri = f"coap://127.0.0.1:{udp}"

    with FieldbridgeProcess(tmp_path, sources={"efento": [source]}) as service:
        await asyncio.to_thread(service.start)
        log, payload = await coap_client("-m", "post", "-f", str(files["m"]), f"{uri}/m")
        assert answers_in(log) == ["2.01"]
        assert ProtoConfig.FromString(payload).configuration_request
        log, _ = await coap_client("-m", "post", "-f", str(files["i"]), f"{uri}/efento/i")
        assert answers_in(log) == ["2.01"]
        log, _ = await coap_client("-m", "post", "-N", "-B", "1", "-f", str(files["c"]), f"{uri}/c")
        assert answers_in(log) == []

        listed = service.cli("readings", "list", "--device", SENSOR, "--json")
        assert listed.returncode == 0, listed.stderr
        readings = json.loads(listed.stdout)
        assert len(readings) == 25
        assert {r["quantity"] for r in readings} == {"open-close"}
        shown = json.loads(service.cli("devices", "show", SENSOR, "--json").stdout)
        assert shown["kind"] == "efento"

        queued = service.cli(
            "efento", "config", SENSOR,
            "--set", "measurement_period_base=60", "--set", "transmission_interval=900", "--json",
        )  # fmt: skip
        assert queued.returncode == 0, queued.stderr
        downlink_id = json.loads(queued.stdout)["id"]
        refused = service.cli("efento", "config", SENSOR, "--set", "serial_number=1")
        assert refused.returncode == 2 and "serial_number" in refused.stderr

        # The service looks for new downlinks every 0.1 s and has no signal of having looked:
        # ten of its polls pass before the frame that must carry the downlink.
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        log, payload = await coap_client("-m", "post", "-f", str(files["m"]), f"{uri}/m")
        assert answers_in(log) == ["2.01"]
        assert time.perf_counter() - started < 5
        sent = ProtoConfig.FromString(payload)
        assert (sent.measurement_period_base, sent.transmission_interval) == (60, 900)
        assert sent.current_time > 0
        pending = json.loads(service.cli("efento", "pending", SENSOR, "--json").stdout)
        assert [(d["id"], d["state"]) for d in pending] == [(downlink_id, "sent")]
        fields = {"measurement_period_base": 60, "transmission_interval": 900}
        assert [(d["origin"], d["fields"], d["expect_hash_change"]) for d in pending] == [
            ("cli", fields, True)
        ]
        assert [(d["attempts"], d["sent_hash"]) for d in pending] == [(1, 119)]  # the seed /m's

        # The sensor applied it and uploads its configuration with a new hash.
        log, _ = await coap_client("-m", "post", "-f", str(new_config), f"{uri}/c")
        assert answers_in(log) == ["2.01"]
        assert json.loads(service.cli("efento", "pending", "--json").stdout) == []
        every = json.loads(service.cli("efento", "pending", "--all", "--json").stdout)
        assert [(d["id"], d["state"]) for d in every] == [(downlink_id, "confirmed")]
        # Readings are unchanged by the repeated seed frame (same samples, same keys).
        again = json.loads(service.cli("readings", "list", "--device", SENSOR, "--json").stdout)
        assert len(again) == 25
