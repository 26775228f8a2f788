"""Split /c uploads (ProtoConfig field 44) put back together in memory; the clock is passed in."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from fieldbridge.codecs.efento.frames import FrameSummary, summary
from fieldbridge.errors import DecodeError

# Defaults far above what a sensor sends: a whole configuration is a few hundred bytes to a
# few KB (24 rules, 6 calendars, strings of at most 48 characters), split into a few parts
# only because NB-IoT datagrams are small.
MAX_PARTS = 64  # parts of one upload
MAX_UPLOAD_BYTES = 262_144  # bytes of one upload's parts, the last one included
MAX_BYTES = 8_388_608  # bytes of all unfinished uploads held together
MAX_UPLOADS = 10_000  # sensors whose unfinished uploads are kept in memory

Limit = Literal["max_parts", "max_upload_bytes", "max_bytes"]


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


@dataclass(frozen=True, slots=True)
class Refused:
    """The part is over a limit and not kept; the sensor's upload is dropped, and its further
    parts are refused too until a part 1 starts a new upload."""

    limit: Limit  # the SplitUploads argument that was exceeded
    reason: str


Step = Part | Whole | Missing | Refused


@dataclass(slots=True)
class _Upload:
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)  # part index (1-based) -> bytes
    size: int = 0  # bytes of `parts`
    refused: Refused | None = None  # set: parts are dropped, later ones refused


class SplitUploads:
    """Per sensor, the parts of its current split upload, bounded in count, bytes and age.

    A part with split info -k is part k; the last part has +n, the number of parts. The whole
    configuration is the parts' bytes concatenated in order (protobuf merges concatenated
    messages, so repeated fields such as rules continue across parts). An upload is forgotten
    `max_age` seconds after its first part (`expire` does it on a timer, `add` on the way); at
    most `max_uploads` sensors are kept, the oldest upload going first. A part beyond
    `max_parts`, or one that takes its upload past `max_upload_bytes` or all uploads held past
    `max_bytes`, is `Refused`.
    """

    def __init__(
        self,
        max_age: float,
        *,
        max_parts: int = MAX_PARTS,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_bytes: int = MAX_BYTES,
        max_uploads: int = MAX_UPLOADS,
    ) -> None:
        self._max_age = max_age
        self._max_parts = max_parts
        self._max_upload_bytes = max_upload_bytes
        self._max_bytes = max_bytes
        self._max_uploads = max_uploads
        # Oldest first: an upload is (re-)inserted only when it starts, so this is start order.
        self._uploads: OrderedDict[str, _Upload] = OrderedDict()
        self._bytes = 0

    @property
    def held_uploads(self) -> int:
        """Sensors with an unfinished (or refused) upload in memory."""
        return len(self._uploads)

    @property
    def held_bytes(self) -> int:
        """Bytes of all parts held in memory."""
        return self._bytes

    def add(self, frame: FrameSummary, payload: bytes, now: float) -> Step:
        """Take one /c frame: a part to keep, a whole configuration, a last part whose
        earlier parts are not all in memory, or a part over a limit."""
        split = frame.split_info or 0
        if split < 0:
            return self._keep(frame.serial, -split, payload, now)
        if split <= 1:
            return Whole(payload, frame, 1)
        self.expire(now)
        upload = self._uploads.get(frame.serial)
        if upload is not None and upload.refused is not None:
            self._drop(frame.serial)  # the refused upload ends with its last part
            earlier = upload.refused
            return Refused(
                earlier.limit, f"the last part of an upload refused before: {earlier.reason}"
            )
        if split > self._max_parts:
            self._drop(frame.serial)
            return Refused(
                "max_parts", f"the last part says {split} parts; at most {self._max_parts}"
            )
        held = {} if upload is None else {i: p for i, p in upload.parts.items() if i < split}
        refused = self._too_large(held, payload)
        if refused is not None:
            self._drop(frame.serial)
            return refused
        if _missing(held, split):
            return Missing(frame, payload, split, held)
        return self._whole(frame.serial, held, payload, split)

    def complete(self, step: Missing, found: Mapping[int, bytes]) -> Whole | Incomplete | Refused:
        """A last part with earlier parts `found` elsewhere (those in memory win)."""
        parts = {i: p for i, p in {**found, **step.held}.items() if 1 <= i < step.total}
        absent = _missing(parts, step.total)
        if absent:
            self._drop(step.frame.serial)  # the last part ends the upload, whole or not
            return Incomplete(step.frame, step.payload, tuple(absent))
        refused = self._too_large(parts, step.payload)
        if refused is not None:
            self._drop(step.frame.serial)
            return refused
        return self._whole(step.frame.serial, parts, step.payload, step.total)

    def expire(self, now: float) -> int:
        """Forget uploads whose first part came over `max_age` seconds before `now`; returns
        how many were forgotten."""
        expired = 0
        while self._uploads:
            serial, upload = next(iter(self._uploads.items()))
            if now - upload.started <= self._max_age:
                break
            self._drop(serial)
            expired += 1
        return expired

    def _whole(self, serial: str, parts: Mapping[int, bytes], last: bytes, total: int) -> Whole:
        whole = b"".join([*(parts[i] for i in range(1, total)), last])
        self._drop(serial)
        return Whole(whole, summary("c", whole), total)

    def _keep(self, serial: str, index: int, payload: bytes, now: float) -> Part | Refused:
        """Keep part `index` of a sensor's upload; part 1 starts a new upload."""
        self.expire(now)
        upload = self._uploads.get(serial)
        if upload is not None and index == 1:
            self._drop(serial)
            upload = None
        if upload is None:
            upload = _Upload(now)
            self._uploads[serial] = upload
            while len(self._uploads) > self._max_uploads:
                self._drop(next(iter(self._uploads)))
        if upload.refused is not None:
            earlier = upload.refused
            return Refused(
                earlier.limit, f"part {index} of an upload refused before: {earlier.reason}"
            )
        previous = len(upload.parts.get(index, b""))  # the same part again replaces it
        grown = upload.size - previous + len(payload)
        total = self._bytes - previous + len(payload)
        refused: Refused | None = None
        if index > self._max_parts:
            refused = Refused("max_parts", f"part {index}; at most {self._max_parts} parts")
        elif grown > self._max_upload_bytes:
            refused = Refused(
                "max_upload_bytes",
                f"part {index} makes the upload {grown} bytes; at most {self._max_upload_bytes}",
            )
        elif total > self._max_bytes:
            refused = Refused(
                "max_bytes",
                f"part {index} makes the unfinished uploads of all sensors {total} bytes; "
                f"at most {self._max_bytes}",
            )
        if refused is not None:
            self._bytes -= upload.size
            upload.parts.clear()
            upload.size = 0
            upload.refused = refused
            return refused
        upload.parts[index] = payload
        upload.size = grown
        self._bytes = total
        return Part(index)

    def _too_large(self, parts: Mapping[int, bytes], last: bytes) -> Refused | None:
        size = sum(len(p) for p in parts.values()) + len(last)
        if size <= self._max_upload_bytes:
            return None
        return Refused(
            "max_upload_bytes",
            f"the last part makes the upload {size} bytes; at most {self._max_upload_bytes}",
        )

    def _drop(self, serial: str) -> None:
        upload = self._uploads.pop(serial, None)
        if upload is not None:
            self._bytes -= upload.size


def part_index(payload: bytes) -> int | None:
    """The index of a stored /c part that is not the last (split info -k: k); else None."""
    try:
        split = summary("c", payload).split_info or 0
    except DecodeError:
        return None
    return -split if split < 0 else None


def _missing(parts: Mapping[int, bytes], total: int) -> list[int]:
    return [i for i in range(1, total) if i not in parts]
