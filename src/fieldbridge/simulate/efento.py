"""Simulated Efento NB-IoT sensors: their frames, and their CoAP exchanges with fieldbridge.

Frames are the codec's own protobuf messages (codecs/efento/proto), samples encoded with the
codec's type table (resolution per measurement type, spec §5), so what the simulator sends is
exactly what the decoder reads; tests/test_simulate.py decodes them back. Each sensor behaves
as the firmware does (spec §2): every message is confirmable (ack_interval "always", as the
seed sensor had), device info first after start-up, then measurements; the ProtoConfig in a
2.01 is obeyed: a configuration request gets /c, a device info request gets /i, and new
settings are applied (a new configuration hash, then /c), so a downlink queued in the console
or with `fieldbridge efento config` reaches a simulated sensor as it would a real one. Samples
of an unacknowledged /m are sent again with the next one, with the retry count in
transfer_reason bits 3-7.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption
from google.protobuf.message import DecodeError

from fieldbridge.codecs.efento import changes_configuration
from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.codecs.efento.proto.device_info_pb2 import ProtoDeviceInfo, ProtoRuntime
from fieldbridge.codecs.efento.proto.measurements_pb2 import ProtoChannel, ProtoMeasurements
from fieldbridge.codecs.efento.types import type_info
from fieldbridge.simulate.drift import Battery, Drift
from fieldbridge.simulate.tally import SendFailed, Tally

KIND = "efento"
TEMPERATURE, HUMIDITY, PRESSURE, OK_ALARM = 1, 2, 3, 5  # MeasurementType numbers
# What each simulated sensor measures, in turn: Efento's THERMOMETER-HYGROMETER, the same with
# a barometer, and a door sensor (open/close) with a thermometer.
MODELS: tuple[tuple[int, ...], ...] = (
    (TEMPERATURE, HUMIDITY),
    (TEMPERATURE, HUMIDITY, PRESSURE),
    (OK_ALARM, TEMPERATURE),
)
SW_VERSION = (7 << 8) | 2  # firmware 07.02
ALWAYS = 0xFFFFFFFF  # ack_interval: every message confirmable
FIRST_AFTER_RESET = 1  # transfer_reason bit 0
MAX_HELD_SAMPLES = 500  # per sensor, while fieldbridge does not acknowledge
TIMEOUT = 15.0  # seconds one exchange may take (aiocoap retransmits within it)


def serial_for(seed: int, index: int) -> bytes:
    """The 6-byte serial of sensor `index`: Efento's 282C02 prefix, the rest from the seed."""
    rng = random.Random(f"{seed}/efento/{index}")
    return bytes.fromhex("282C02") + rng.randbytes(3)


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement instant: Unix seconds and a value per channel (binary: 1 open, 0 closed)."""

    at: int
    values: tuple[float, ...]


class EfentoSensor:
    """One sensor's state and frames; no I/O (EfentoDevice does the CoAP)."""

    def __init__(
        self,
        serial: bytes,
        model: tuple[int, ...],
        rng: random.Random,
        *,
        measure_every: int,
        transmit_every: float,
        token: str | None = None,
    ) -> None:
        self.serial = serial
        self.model = model
        self._rng = rng
        self.token = token  # sent in the payload (cloud_token_coap_option 65000)
        self.battery = Battery(rng)
        self._drifts = [self._drift(t) for t in model]
        self._door_open = False
        self.config = ProtoConfig(
            serial_number=serial,
            configuration_hash=rng.randrange(1, 1000),
            measurement_period_base=max(1, measure_every),
            measurement_period_factor=1,
            transmission_interval=max(1, round(transmit_every)),
            ack_interval=ALWAYS,
            channel_types=list(model),  # type: ignore[arg-type]  # enum values, by number
        )
        self._transmit_every = transmit_every
        self._held: list[Sample] = []  # measured, not yet acknowledged
        self._next_sample: int | None = None
        self.retries = 0
        self.started_at = time.time()
        self.first = True

    @property
    def id(self) -> str:
        """The device id fieldbridge stores it under: the serial in upper-case hex."""
        return self.serial.hex().upper()

    @property
    def transmit_every(self) -> float:
        """Seconds between transmissions (the configured interval once a downlink set it)."""
        return self._transmit_every

    @property
    def held(self) -> tuple[Sample, ...]:
        """The samples measured and not yet acknowledged, oldest first."""
        return tuple(self._held)

    @property
    def measure_every(self) -> int:
        return self.config.measurement_period_base * max(1, self.config.measurement_period_factor)

    def _drift(self, measurement_type: int) -> Drift | None:
        rng = self._rng
        if measurement_type == TEMPERATURE:
            return Drift(
                rng, centre=rng.uniform(17, 23), swing=2.5, wander=1.5, noise=0.05,
                low=-20, high=50,
            )  # fmt: skip
        if measurement_type == HUMIDITY:
            return Drift(
                rng, centre=rng.uniform(40, 65), swing=-8, wander=5, noise=0.4,
                low=5, high=100, digits=0,
            )  # fmt: skip
        if measurement_type == PRESSURE:
            return Drift(
                rng, centre=rng.uniform(1005, 1022), swing=0.8, wander=4, noise=0.05,
                low=950, high=1050,
            )  # fmt: skip
        return None  # open/close: a state, see _door

    # --- frames ------------------------------------------------------------------------------

    def measure(self, now: float) -> None:
        """Take the samples due up to `now`, every measurement period from the first."""
        if self._next_sample is None:
            self._next_sample = int(now)
        while self._next_sample <= now:
            at = self._next_sample
            values = tuple(
                self._door() if drift is None else drift.value(at) for drift in self._drifts
            )
            self._held.append(Sample(at, values))
            self._next_sample += self.measure_every
        del self._held[:-MAX_HELD_SAMPLES]  # the oldest go, as a full sensor memory does

    def _door(self) -> float:
        if self._door_open:
            self._door_open = self._rng.random() >= 0.4
        else:
            self._door_open = self._rng.random() < 0.05
        return 1.0 if self._door_open else 0.0

    def measurements(self, now: float) -> bytes:
        """The /m frame of every held sample (measuring up to `now` first)."""
        self.measure(now)
        reason = (FIRST_AFTER_RESET if self.first else 0) | (min(self.retries, 31) << 3)
        frame = ProtoMeasurements(
            serial_number=self.serial,
            battery_status=not self.battery.low,
            measurement_period_base=self.config.measurement_period_base,
            measurement_period_factor=max(1, self.config.measurement_period_factor),
            next_transmission_at=int(now + self.transmit_every),
            transfer_reason=reason,
            configuration_hash=self.config.configuration_hash,
            battery_level=round(self.battery.volts * 100) * 6,  # power source 0: battery
        )
        if self.token:
            frame.cloud_token = self.token
        for number, measurement_type in enumerate(self.model):
            samples = [(s.at, s.values[number]) for s in self._held]
            frame.channels.append(_channel(measurement_type, samples))
        return frame.SerializeToString()

    def acknowledged(self) -> None:
        """fieldbridge answered 2.01 to the /m: its samples are delivered."""
        self._held.clear()
        self.retries = 0
        self.first = False
        self.battery.drain()

    def not_acknowledged(self) -> None:
        self.retries += 1

    def device_info(self, now: float) -> bytes:
        """The /i frame: firmware, uptime, battery voltage, MCU temperature."""
        info = ProtoDeviceInfo(
            serial_number=self.serial,
            sw_version=SW_VERSION,
            commit_id="07c1a2b",
            runtime_info=ProtoRuntime(
                up_time=int(now - self.started_at),
                mcu_temperature=round(self._drifts_value(TEMPERATURE, now, 21.0)),
                battery_voltage=round(self.battery.volts * 1000),
            ),
        )
        if self.token:
            info.cloud_token = self.token
        return info.SerializeToString()

    def _drifts_value(self, measurement_type: int, now: float, default: float) -> float:
        for number, drift in zip(self.model, self._drifts, strict=True):
            if number == measurement_type and drift is not None:
                return drift.value(now)
        return default

    def configuration(self) -> bytes:
        """The /c frame: the sensor's whole configuration, with its current hash."""
        return self.config.SerializeToString(deterministic=True)

    def obey(self, answer: bytes) -> list[str]:
        """Apply the ProtoConfig of a 2.01; the endpoints to POST next ("c", "i"), in order."""
        if not answer:
            return []
        downlink = ProtoConfig()
        try:
            downlink.ParseFromString(answer)
        except DecodeError:  # a 2.01 payload that is no ProtoConfig: ignored
            return []
        follow: list[str] = []
        if changes_configuration(answer):
            # Settings replace the sensor's own, field by field (a `rules` list as a whole);
            # the requests and the clock are not settings.
            changed = ProtoConfig()
            changed.CopyFrom(downlink)
            for field, _ in downlink.ListFields():
                if field.name == "current_time" or field.name.endswith("_request"):
                    changed.ClearField(field.name)  # type: ignore[arg-type]  # a proto name
                else:
                    self.config.ClearField(field.name)  # type: ignore[arg-type]
            self.config.MergeFrom(changed)
            if changed.transmission_interval:  # proto3: 0 is "not sent"
                self._transmit_every = float(changed.transmission_interval)
            self.config.configuration_hash = (self.config.configuration_hash + 1) & 0xFFFFFFFF
            follow.append("c")  # a changed configuration is uploaded (spec §2.4)
        elif downlink.configuration_request:
            follow.append("c")
        if downlink.device_info_request:
            follow.append("i")
        return follow


def _channel(measurement_type: int, samples: list[tuple[int, float]]) -> ProtoChannel:
    """One channel of samples, encoded as spec §4 says a sensor does."""
    if not samples:
        return ProtoChannel(type=measurement_type)  # type: ignore[arg-type]
    start = samples[0][0]
    info = type_info(measurement_type)
    if info.binary:
        # State samples at start + |offset| - 1, + = ALARM (open), - = OK (closed): the state
        # at the start, every change, and the last sample closing the range.
        def signed(at: int, on: float) -> int:
            return (at - start + 1) * (1 if on else -1)

        offsets = [signed(start, samples[0][1])]
        for (_, before), (at, now) in itertools.pairwise(samples):
            if now != before:
                offsets.append(signed(at, now))
        last_at, last = samples[-1]
        if len(samples) > 1 and abs(offsets[-1]) != last_at - start + 1:
            offsets.append(signed(last_at, last))
        return ProtoChannel(type=measurement_type, timestamp=start, sample_offsets=offsets)  # type: ignore[arg-type]
    raws = [round(value * info.divisor) for _, value in samples]
    return ProtoChannel(
        type=measurement_type,  # type: ignore[arg-type]
        timestamp=start,
        start_point=raws[0],
        sample_offsets=[raw - raws[0] for raw in raws],
    )


class CoapLink:
    """Confirmable POSTs (and the /t GET) to one Efento CoAP source, over one aiocoap client."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        prefix: str = "",
        token_option: int | None = None,
        token: str | None = None,
    ) -> None:
        self.where = f"coap://{host}:{port}" if ":" not in host else f"coap://[{host}]:{port}"
        self._base = self.where + ("/" + prefix.strip("/") if prefix.strip("/") else "")
        self._token_option = token_option
        self._token = token
        self._context: aiocoap.Context | None = None

    async def __aenter__(self) -> CoapLink:
        self._context = await aiocoap.Context.create_client_context()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._context is not None:
            await self._context.shutdown()

    async def clock(self) -> int:
        """GET /t: the source's time, as a sensor without network time asks for it."""
        answer = await self._request(Code.GET, "t", b"")
        if answer.code != Code.CONTENT or len(answer.payload) != 4:
            raise SendFailed(f"{self._base}/t answered {answer.code} (no Efento CoAP source?)")
        return int.from_bytes(answer.payload, "big")

    async def post(self, endpoint: str, payload: bytes) -> bytes:
        """A CON POST; the 2.01's payload, or SendFailed naming the answer."""
        answer = await self._request(Code.POST, endpoint, payload)
        if answer.code != Code.CREATED:
            detail = answer.payload.decode("utf-8", "replace")[:200]
            raise SendFailed(
                f"{self._base}/{endpoint} answered {answer.code}"
                + (f": {detail}" if detail else "")
            )
        return bytes(answer.payload)

    async def _request(self, code: Code, endpoint: str, payload: bytes) -> aiocoap.Message:
        assert self._context is not None, "use `async with CoapLink(...)`"
        message = aiocoap.Message(code=code, uri=f"{self._base}/{endpoint}", payload=payload)
        if self._token_option is not None and self._token:
            message.opt.add_option(OpaqueOption(self._token_option, self._token.encode()))
        request = self._context.request(message)
        try:
            return await asyncio.wait_for(request.response, TIMEOUT)
        except TimeoutError:
            raise SendFailed(f"{self._base}/{endpoint}: no answer within {TIMEOUT:g} s") from None
        except aiocoap.error.Error as exc:
            raise SendFailed(
                f"{self._base}/{endpoint}: unreachable ({type(exc).__name__}; is an Efento "
                f"CoAP source listening at {self.where}?)"
            ) from None


class EfentoDevice:
    """A sensor on its link: device info first, then a measurements frame per turn."""

    kind = KIND

    def __init__(self, sensor: EfentoSensor, link: CoapLink, tally: Tally) -> None:
        self.sensor = sensor
        self.link = link
        self.tally = tally

    @property
    def id(self) -> str:
        return self.sensor.id

    def period(self) -> float:
        return self.sensor.transmit_every

    async def turn(self) -> None:
        """One transmission, and what fieldbridge's answers ask for."""
        now = time.time()
        if self.sensor.first:
            await self._post("i", self.sensor.device_info(now))
        self.sensor.measure(now)
        if not self.sensor.held:
            return  # nothing measured since the last transmission: a sensor stays asleep
        answer = await self.tally.answer(self.link.post("m", self.sensor.measurements(now)))
        if answer is None:
            self.sensor.not_acknowledged()
            return
        self.sensor.acknowledged()
        for endpoint in self.sensor.obey(answer):
            if endpoint == "c":
                await self._post("c", self.sensor.configuration())
            else:
                await self._post("i", self.sensor.device_info(time.time()))

    async def _post(self, endpoint: str, payload: bytes) -> None:
        answer = await self.tally.answer(self.link.post(endpoint, payload))
        if answer:  # a downlink may ride on any 2.01 (Efento's 2-way example answers /i too)
            self.sensor.obey(answer)
