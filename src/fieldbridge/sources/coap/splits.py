"""The parts of split /c uploads (ProtoConfig field 44), kept until the last part arrives."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

MAX_UPLOADS = 10_000  # sensors whose unfinished uploads are kept in memory


@dataclass(slots=True)
class _Upload:
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)  # part index (1-based) -> bytes


class ConfigParts:
    """Per sensor, the parts of its current split upload.

    A part with split info -k is part k; the last part has +n, the number of parts. The whole
    configuration is the parts' bytes concatenated in order (protobuf merges concatenated
    messages, so repeated fields such as rules continue across parts).
    """

    def __init__(self, max_age: float) -> None:
        self._max_age = max_age
        self._uploads: OrderedDict[str, _Upload] = OrderedDict()

    def add(self, serial: str, index: int, payload: bytes, now: float) -> None:
        """Keep part `index` (1-based) of a sensor's upload; part 1 starts a new upload."""
        upload = self._uploads.get(serial)
        if upload is None or index == 1 or now - upload.started > self._max_age:
            upload = _Upload(now)
            self._uploads[serial] = upload
        self._uploads.move_to_end(serial)
        upload.parts[index] = payload
        while len(self._uploads) > MAX_UPLOADS:
            self._uploads.popitem(last=False)

    def earlier(self, serial: str, total: int, now: float) -> dict[int, bytes]:
        """The parts 1..total-1 held for a sensor (some may be missing)."""
        upload = self._uploads.get(serial)
        if upload is None or now - upload.started > self._max_age:
            return {}
        return {i: p for i, p in upload.parts.items() if 1 <= i < total}

    def forget(self, serial: str) -> None:
        self._uploads.pop(serial, None)


def assemble(parts: dict[int, bytes], last: bytes, total: int) -> bytes | None:
    """The whole configuration, or None while a part 1..total-1 is missing."""
    if any(i not in parts for i in range(1, total)):
        return None
    return b"".join([*(parts[i] for i in range(1, total)), last])


def missing(parts: dict[int, bytes], total: int) -> list[int]:
    return [i for i in range(1, total) if i not in parts]
