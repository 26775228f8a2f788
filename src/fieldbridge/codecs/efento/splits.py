"""Split /c uploads (ProtoConfig field 44) put back together in memory; the clock is passed in."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from fieldbridge.codecs.efento.frames import FrameSummary, summary
from fieldbridge.errors import DecodeError

MAX_UPLOADS = 10_000  # sensors whose unfinished uploads are kept in memory


@dataclass(frozen=True, slots=True)
class Part:
    """A part that is not the last: stored alone; nothing follows until the last part."""

    index: int  # 1-based


@dataclass(frozen=True, slots=True)
class Whole:
    """A whole configuration, to store and follow up as a /c."""

    payload: bytes
    frame: FrameSummary
    parts: int  # how many parts it was put together from; 1: it came whole


@dataclass(frozen=True, slots=True)
class Missing:
    """The last part came but earlier ones are not in memory (e.g. after a restart): find
    them elsewhere and hand them to `SplitUploads.complete`."""

    frame: FrameSummary  # of the last part
    payload: bytes  # the last part
    total: int
    held: Mapping[int, bytes]  # the earlier parts that are in memory


@dataclass(frozen=True, slots=True)
class Incomplete:
    """Parts are missing for good: the last part is stored alone and the sensor asked again."""

    frame: FrameSummary  # of the last part
    payload: bytes
    missing: tuple[int, ...]


Step = Part | Whole | Missing


@dataclass(slots=True)
class _Upload:
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)  # part index (1-based) -> bytes


class SplitUploads:
    """Per sensor, the parts of its current split upload.

    A part with split info -k is part k; the last part has +n, the number of parts. The whole
    configuration is the parts' bytes concatenated in order (protobuf merges concatenated
    messages, so repeated fields such as rules continue across parts). Parts older than
    `max_age` seconds are forgotten; at most `max_uploads` sensors are kept.
    """

    def __init__(self, max_age: float, max_uploads: int = MAX_UPLOADS) -> None:
        self._max_age = max_age
        self._max_uploads = max_uploads
        self._uploads: OrderedDict[str, _Upload] = OrderedDict()

    def add(self, frame: FrameSummary, payload: bytes, now: float) -> Step:
        """Take one /c frame: a part to keep, a whole configuration, or a last part whose
        earlier parts are not all in memory."""
        split = frame.split_info or 0
        if split < 0:
            self._keep(frame.serial, -split, payload, now)
            return Part(-split)
        if split <= 1:
            return Whole(payload, frame, 1)
        held = self._earlier(frame.serial, split, now)
        if _missing(held, split):
            return Missing(frame, payload, split, held)
        return self._whole(frame.serial, held, payload, split)

    def complete(self, step: Missing, found: Mapping[int, bytes]) -> Whole | Incomplete:
        """A last part with earlier parts `found` elsewhere (those in memory win)."""
        parts = {**found, **step.held}
        absent = _missing(parts, step.total)
        if absent:
            return Incomplete(step.frame, step.payload, tuple(absent))
        return self._whole(step.frame.serial, parts, step.payload, step.total)

    def _whole(self, serial: str, parts: Mapping[int, bytes], last: bytes, total: int) -> Whole:
        whole = b"".join([*(parts[i] for i in range(1, total)), last])
        self._uploads.pop(serial, None)
        return Whole(whole, summary("c", whole), total)

    def _keep(self, serial: str, index: int, payload: bytes, now: float) -> None:
        """Keep part `index` of a sensor's upload; part 1 starts a new upload."""
        upload = self._uploads.get(serial)
        if upload is None or index == 1 or now - upload.started > self._max_age:
            upload = _Upload(now)
            self._uploads[serial] = upload
        self._uploads.move_to_end(serial)
        upload.parts[index] = payload
        while len(self._uploads) > self._max_uploads:
            self._uploads.popitem(last=False)

    def _earlier(self, serial: str, total: int, now: float) -> dict[int, bytes]:
        """The parts 1..total-1 held for a sensor (some may be missing)."""
        upload = self._uploads.get(serial)
        if upload is None or now - upload.started > self._max_age:
            return {}
        return {i: p for i, p in upload.parts.items() if 1 <= i < total}


def part_index(payload: bytes) -> int | None:
    """The index of a stored /c part that is not the last (split info -k: k); else None."""
    try:
        split = summary("c", payload).split_info or 0
    except DecodeError:
        return None
    return -split if split < 0 else None


def _missing(parts: Mapping[int, bytes], total: int) -> list[int]:
    return [i for i in range(1, total) if i not in parts]
