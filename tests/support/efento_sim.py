"""A simulated Efento sensor for tests: real frames, and CoAP over a plain UDP socket.

CoAP is hand-encoded here (RFC 7252 §3) because the simulator must control what a CoAP
library hides: message ids of retransmissions, NON messages that get no answer, and giving up
on an exchange to retry with a new message like the sensor firmware does.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig, ProtoRule
from fieldbridge.codecs.efento.proto.measurements_pb2 import ProtoChannel, ProtoMeasurements

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST = 1, 2
TEMPERATURE, HUMIDITY = 1, 2  # MeasurementType numbers


def code_text(code: int) -> str:
    return f"{code >> 5}.{code & 31:02d}"


def serial_bytes(index: int) -> bytes:
    return b"\x28\x2c" + index.to_bytes(4, "big")


def measurements(
    serial: bytes,
    start: int,
    *,
    samples: int = 5,
    period: int = 60,
    config_hash: int | None = 7,
    token: str = "",
    retry: int = 0,
) -> bytes:
    """A /m frame: temperature (ch1) and humidity (ch2), `samples` each from `start`."""
    frame = ProtoMeasurements(
        serial_number=serial,
        battery_status=True,
        measurement_period_base=period,
        measurement_period_factor=1,
        next_transmission_at=start + samples * period,
        transfer_reason=retry << 3,
        cloud_token=token,
    )
    if config_hash is not None:
        frame.configuration_hash = config_hash
    frame.channels.append(
        ProtoChannel(
            type=TEMPERATURE,
            timestamp=start,
            start_point=215,
            sample_offsets=[i % 7 for i in range(samples)],
        )
    )
    frame.channels.append(
        ProtoChannel(type=HUMIDITY, timestamp=start, start_point=45, sample_offsets=[0] * samples)
    )
    return frame.SerializeToString()


def configuration(
    serial: bytes,
    config_hash: int,
    *,
    split: int = 0,
    period: int | None = 60,
    rules: int = 0,
) -> bytes:
    """A /c frame (or one part of a split upload when `split` != 0)."""
    config = ProtoConfig(serial_number=serial, configuration_hash=config_hash)
    if split:
        config.payload_split_info = split
    if period is not None:
        config.measurement_period_base = period
    for _ in range(rules):
        config.rules.append(ProtoRule(condition=1))
    return config.SerializeToString()


@dataclass(frozen=True, slots=True)
class Answer:
    mtype: int
    code: int
    mid: int
    token: bytes
    payload: bytes

    @property
    def code_text(self) -> str:
        return code_text(self.code)


def encode(
    mtype: int,
    code: int,
    mid: int,
    token: bytes,
    path: str,
    payload: bytes = b"",
    options: dict[int, bytes] | None = None,
) -> bytes:
    """One CoAP message with Uri-Path options (11) and any extra options, in number order."""
    opts = [(11, seg.encode()) for seg in path.strip("/").split("/") if seg]
    opts += sorted((options or {}).items())
    out = bytearray([0x40 | (mtype << 4) | len(token), code])
    out += struct.pack(">H", mid) + token
    last = 0
    for number, value in sorted(opts, key=lambda o: o[0]):
        out += _option_header(number - last, len(value)) + value
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def _option_header(delta: int, length: int) -> bytes:
    def nibble(v: int) -> tuple[int, bytes]:
        if v < 13:
            return v, b""
        if v < 269:
            return 13, bytes([v - 13])
        return 14, struct.pack(">H", v - 269)

    d, dx = nibble(delta)
    n, lx = nibble(length)
    return bytes([(d << 4) | n]) + dx + lx


def decode(data: bytes) -> Answer:
    """The parts of a CoAP message a sensor looks at (options are skipped)."""
    mtype = (data[0] >> 4) & 3
    tkl = data[0] & 15
    code = data[1]
    mid = struct.unpack(">H", data[2:4])[0]
    token = data[4 : 4 + tkl]
    pos = 4 + tkl
    while pos < len(data) and data[pos] != 0xFF:
        delta, length = data[pos] >> 4, data[pos] & 15
        pos += 1
        pos += {13: 1, 14: 2}.get(delta, 0)
        if length == 13:
            length = data[pos] + 13
            pos += 1
        elif length == 14:
            length = int(struct.unpack(">H", data[pos : pos + 2])[0]) + 269
            pos += 2
        pos += length
    payload = data[pos + 1 :] if pos < len(data) else b""
    return Answer(mtype, code, mid, token, payload)


class Sensor:
    """One UDP socket speaking CoAP like an Efento sensor."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.address = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self._mid = int.from_bytes(os.urandom(2), "big")
        self._sent_at = 0.0
        # Seconds from the last exchange's first send to its empty ACK; None: none came.
        self.empty_ack_after: float | None = None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Sensor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def exchange(
        self,
        path: str,
        payload: bytes = b"",
        *,
        code: int = POST,
        options: dict[int, bytes] | None = None,
        timeout: float = 2.0,
        retransmits: int = 0,
    ) -> Answer | None:
        """Send a CON and wait for its piggy-backed answer (or a separate one after an empty
        ACK); resend the same message id `retransmits` times; None when nothing came."""
        mid = self.next_mid()
        token = os.urandom(4)
        message = encode(CON, code, mid, token, path, payload, options)
        self._sent_at = time.monotonic()
        self.empty_ack_after = None
        for _ in range(retransmits + 1):
            self.sock.sendto(message, self.address)
            answer = self._wait(mid, token, timeout)
            if answer is not None:
                return answer
        return None

    def _wait(self, mid: int, token: bytes, timeout: float) -> Answer | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(2048)
            except (TimeoutError, ConnectionRefusedError):
                continue
            answer = decode(data)
            if answer.mtype == ACK and answer.code == 0:  # an empty ACK has no token
                if answer.mid == mid and self.empty_ack_after is None:
                    self.empty_ack_after = time.monotonic() - self._sent_at
                continue  # the separate response follows
            if answer.token != token:
                continue  # a late answer to an earlier exchange
            if answer.mtype == CON:  # a separate response must be acknowledged
                self.sock.sendto(encode(ACK, 0, answer.mid, b"", ""), self.address)
            return answer
        return None

    def send_non(self, path: str, payload: bytes) -> None:
        message = encode(NON, POST, self.next_mid(), os.urandom(4), path, payload)
        self.sock.sendto(message, self.address)

    def silent_for(self, seconds: float) -> bool:
        """True when nothing arrives for `seconds`."""
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(2048)
        except TimeoutError:
            return True
        return False


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
