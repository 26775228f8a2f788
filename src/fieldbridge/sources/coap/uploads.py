"""Split /c uploads as the source receives them: parts from memory, or from the journal."""

from __future__ import annotations

from fieldbridge.codecs import efento
from fieldbridge.codecs.efento import FrameSummary, Incomplete, Missing, Part, Whole
from fieldbridge.errors import StoreError
from fieldbridge.sources.access import JournalReader


class ConfigUploads:
    """Puts split uploads together (codecs.efento.SplitUploads); when parts are not in memory
    (the upload began before a restart), reads those this source stored from the journal."""

    def __init__(self, journal: JournalReader, source: str, max_age: float) -> None:
        self._journal = journal
        self._source = source
        self._max_age = max_age
        self._splits = efento.SplitUploads(max_age)

    async def take(
        self, frame: FrameSummary, payload: bytes, now: float
    ) -> Part | Whole | Incomplete:
        """A part to store alone, the whole configuration to store, or a last part whose
        earlier parts are lost."""
        step = self._splits.add(frame, payload, now)
        if not isinstance(step, Missing):
            return step
        found = await self._from_journal(frame.serial, step.total, now)
        return self._splits.complete(step, found)

    async def _from_journal(self, serial: str, total: int, now: float) -> dict[int, bytes]:
        """Earlier parts this source stored, for an upload that began before a restart."""
        try:
            entries = await self._journal.recent_messages(
                serial,
                since=now - self._max_age,
                kind=efento.KIND_CONFIG_PART,
                source=self._source,
                limit=4 * total,
            )
        except StoreError:
            return {}
        found: dict[int, bytes] = {}
        for entry in entries:  # newest first: the current upload wins over older ones
            index = efento.part_index(entry.payload)
            if index is not None and index < total:
                found.setdefault(index, entry.payload)
        return found
