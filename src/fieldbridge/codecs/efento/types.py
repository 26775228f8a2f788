"""The Efento measurement types: label, unit and how a raw sample becomes a value (spec §5)."""

from __future__ import annotations

from dataclasses import dataclass

from fieldbridge.codecs.efento.proto.measurement_types_pb2 import MeasurementType

# Offsets in this range are sensor error codes, not values (spec §4.3).
ERROR_CODE_MIN = 8355840
ERROR_CODE_MAX = 8388607


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """How samples of one measurement type decode."""

    number: int
    label: str  # the reading's quantity and the JSON "type"
    unit: str | None
    binary: bool = False
    divisor: int = 1  # value = raw / divisor (1: the raw integer itself)
    modulus: int = 0  # metadata types: value = raw div modulus, metadata = raw mod modulus
    on: str = "ALARM"  # binary state of a positive sample
    off: str = "OK"  # binary state of a negative sample


def _continuous(number: int, unit: str | None, divisor: int = 1, modulus: int = 0) -> TypeInfo:
    return TypeInfo(number, _label(number), unit, divisor=divisor, modulus=modulus)


def _label(number: int) -> str:
    return MeasurementType.Name(number).removeprefix("MEASUREMENT_TYPE_").lower()  # type: ignore[arg-type]


_TYPES = (
    _continuous(1, "°C", divisor=10),
    _continuous(2, "%RH"),
    _continuous(3, "hPa", divisor=10),
    _continuous(4, "Pa"),
    TypeInfo(5, "open-close", None, binary=True),
    _continuous(6, "IAQ", modulus=3),
    TypeInfo(7, "flooding", None, binary=True),
    _continuous(8, "pulses"),
    _continuous(9, "Wh"),
    _continuous(10, "l"),
    _continuous(11, "kPa"),
    _continuous(12, "ppm"),
    _continuous(13, "ppm"),
    _continuous(14, "ppm", divisor=100),
    _continuous(15, "lx", divisor=10),
    _continuous(16, "µg/m³"),
    _continuous(17, "µg/m³"),
    _continuous(18, "µg/m³"),
    _continuous(19, "dB", divisor=10),
    _continuous(20, "ppm"),
    _continuous(21, "ppm"),
    _continuous(22, "kPa"),
    _continuous(23, "mm"),
    _continuous(24, "l", modulus=6),
    _continuous(25, "hl", modulus=4),
    _continuous(26, "ppm", modulus=3),
    _continuous(27, "%RH", divisor=10),
    _continuous(28, "sIAQ", modulus=3),
    _continuous(29, "ppm", modulus=3),
    _continuous(30, "ppm", modulus=3),
    _continuous(31, None),
    _continuous(32, "%", divisor=100),
    _continuous(33, "mV", divisor=10),
    _continuous(34, "mA", divisor=100),
    _continuous(35, "pulses", modulus=6),
    _continuous(36, "kilopulses", modulus=4),
    _continuous(37, "Wh", modulus=6),
    _continuous(38, "kWh", modulus=4),
    _continuous(39, "pulses", modulus=6),
    _continuous(40, "megapulses", modulus=4),
    _continuous(41, "mA", divisor=1000),
    TypeInfo(42, "output_control", None, binary=True, on="ON", off="OFF"),
    _continuous(43, "Ω"),
)
TYPES: dict[int, TypeInfo] = {info.number: info for info in _TYPES}
BINARY_TYPES = frozenset(n for n, info in TYPES.items() if info.binary)


def type_info(number: int) -> TypeInfo:
    """The decoding of type `number`; a type newer than this table decodes as raw integers."""
    info = TYPES.get(number)
    if info is None:
        # Newer firmware may add types: keep the raw value rather than lose the channel.
        info = TypeInfo(number, f"type_{number}", None)
    return info
