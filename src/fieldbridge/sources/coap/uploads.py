"""Split /c uploads as the source receives them: parts from memory, or from the journal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fieldbridge.codecs import efento
from fieldbridge.codecs.efento import FrameSummary, Incomplete, Missing, Part, Refused, Whole
from fieldbridge.errors import DecodeError, StoreError
from fieldbridge.model import Codec, Decoded
from fieldbridge.sources.access import JournalReader
from fieldbridge.sources.coap.settings import EfentoCoapSettings

SPLIT_LIMIT = "split_limit"  # the quarantine cause metrics count refused parts by


class ConfigUploads:
    """Puts split uploads together (codecs.efento.SplitUploads, bounded by the source's
    split_* settings); when parts are not in memory (the upload began before a restart), reads
    those this source stored from the journal."""

    def __init__(self, journal: JournalReader, settings: EfentoCoapSettings) -> None:
        self._journal = journal
        self._source = settings.name
        self._where = settings.where
        self._max_age = settings.split_timeout
        self._splits = efento.SplitUploads(
            settings.split_timeout,
            max_parts=settings.split_max_parts,
            max_upload_bytes=settings.split_max_upload_bytes,
            max_bytes=settings.split_max_bytes,
        )

    @property
    def held(self) -> tuple[int, int]:
        """(sensors, bytes) of the unfinished uploads in memory."""
        return self._splits.held_uploads, self._splits.held_bytes

    def expire(self, now: float) -> int:
        """Forget uploads older than split_timeout; how many were forgotten."""
        return self._splits.expire(now)

    async def take(
        self, frame: FrameSummary, payload: bytes, now: float
    ) -> Part | Whole | Incomplete | Refused:
        """A part to store alone, the whole configuration to store, a last part whose
        earlier parts are lost, or a part over a limit."""
        step = self._splits.add(frame, payload, now)
        if not isinstance(step, Missing):
            return step
        found = await self._from_journal(frame.serial, step.total, now)
        return self._splits.complete(step, found)

    def reason(self, serial: str, refused: Refused) -> str:
        """Why a part was refused, naming the setting; the quarantine reason and the 4.13's
        diagnostic payload."""
        return (
            f"split configuration upload of {serial} over {self._where}.split_{refused.limit}: "
            f"{refused.reason}; the sensor's upload is dropped"
        )

    async def _from_journal(self, serial: str, total: int, now: float) -> dict[int, bytes]:
        """Earlier parts this source stored, for an upload that began before a restart."""
        try:
            entries = await self._journal.recent_messages(
                serial,
                since=now - self._max_age,
                kind=efento.KIND_CONFIG_PART,
                source=self._source,
                limit=4 * total,  # total is at most split_max_parts
            )
        except StoreError:
            return {}
        found: dict[int, bytes] = {}
        for entry in entries:  # newest first: the current upload wins over older ones
            index = efento.part_index(entry.payload)
            if index is not None and index < total:
                found.setdefault(index, entry.payload)
        return found


def refusing(reason: str) -> Codec:
    """The codec a refused part is committed with: into quarantine with `reason`."""

    def refuse(payload: bytes, meta: Mapping[str, Any], received_at: float) -> list[Decoded]:
        raise DecodeError(reason, cause=SPLIT_LIMIT)

    return refuse
