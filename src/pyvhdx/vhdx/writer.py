"""The write side of a VHDX (MS-VHDX 2.2.2.1 header updates, 2.3 log, 2.5 BAT).

:class:`_VHDXWriter` is mixed into :class:`~pyvhdx.vhdx.file.VHDXFile`; every
structure it writes is built by :mod:`pyvhdx.vhdx.layout` or :mod:`pyvhdx.log`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from ..bat import CODE_PARENT, CODE_PARTIAL, BlockTable, shared_space, vhdx_payload_index
from ..constants import (
    META_PARENT_LOCATOR,
    NIL_GUID,
    REGION_METADATA,
    VHDX_ALIGNMENT,
    VHDX_BAT_OFFSET_MASK,
    VHDX_BAT_STATE_MASK,
    VHDX_HEADER_AREA_SIZE,
    VHDX_HEADER_OFFSETS,
    DiskType,
    MiB,
    PayloadState,
    SectorBitmapState,
)
from ..errors import (
    InvalidArgumentError,
    InvalidImageError,
    LogReplayError,
    UnsupportedFeatureError,
)
from ..log import build_log_entry
from ..source import FileSource
from .layout import (
    MetadataItem,
    RegionEntry,
    header_field_error,
    vhdx_header,
    vhdx_parent_locator,
)

__all__ = ["MAX_REPLAYED_FILE_SIZE"]

# 64 TiB of payload plus its BAT, metadata and log fit well below this.
MAX_REPLAYED_FILE_SIZE = 1 << 47

_U64_MAX = (1 << 64) - 1
# An r+ open refuses a header sequence number this close to 2**64: the updates
# of a session (two per header update) could not all be numbered.
_MAX_WRITABLE_SEQUENCE = _U64_MAX - (1 << 32)


class _VHDXWriter:
    """The write side of :class:`VHDXFile` (MS-VHDX 2.3, 2.5): data is flushed before the
    BAT changes, and the BAT changes only through a flushed log entry (DESIGN.md "Writes")."""

    source: FileSource
    header: dict[str, Any]
    header_copy: int | None
    table: BlockTable
    payload_block_size: int
    logical_sector_size: int
    virtual_size: int
    chunk_ratio: int
    _partial_offset: Callable[[int], int]
    _sector_bitmap: Callable[[int], np.ndarray]
    _decode_parent_locator: Callable[[MetadataItem], None]
    bat_offset: int
    bat_entry_count: int
    reserved_spans: list[tuple[int, int, str]]
    disk_type: DiskType

    parent_reader: Any = None  # DiskImage.readinto_at of the parent, set by attach_parent
    metadata: dict[uuid.UUID, MetadataItem]
    metadata_order: list[MetadataItem]
    regions: dict[uuid.UUID, RegionEntry]

    def _init_writer(self) -> None:
        # bulk: a new image being filled by convert, deleted if anything fails;
        # BAT changes go straight to the file and only close() flushes.
        self.bulk = False
        self._session_started = self._data_changed = False
        self.next_data_write_guid: uuid.UUID | None = None
        self._log_seq = self._log_pos = 0  # last log entry's sequence number; next entry's place
        self._log_guid = NIL_GUID
        # A logged change not (known to be) applied in place: an error or Ctrl-C stopped
        # it. The log then stays named in the headers, so the next open replays it.
        self._log_unapplied = False
        current = self.header_copy or 1
        if self.header["sequence_number"] > _MAX_WRITABLE_SEQUENCE:
            # each header update adds 2: a session could wrap the u64 (MS-VHDX 2.2.2)
            raise header_field_error(
                f"header SequenceNumber {self.header['sequence_number']:#x} is too close to "
                "2**64 for writes: updating the headers would wrap it",
                current,
                "SequenceNumber",
            )
        if self.header["log_length"] < MiB:
            # every BAT change goes through a log entry (MS-VHDX 2.3): no room, no writes
            raise header_field_error(
                f"header LogLength {self.header['log_length']:#x} leaves no room for the "
                "log entries that writes go through",
                current,
                "LogLength",
            )
        if self.source.overlay is not None:
            self._commit_overlay()

    # -- headers ------------------------------------------------------------

    def _update_headers(self, **changes: Any) -> None:
        """Write the header twice, non-current slot first, each flushed (MS-VHDX 2.2.2.1)."""
        h = dict(self.header)
        h.update(changes)
        current = self.header_copy or 1
        for slot in (3 - current, current):
            h["sequence_number"] += 1
            raw = vhdx_header(
                h["sequence_number"],
                file_write_guid=h["file_write_guid"],
                data_write_guid=h["data_write_guid"],
                log_guid=h["log_guid"],
                log_offset=h["log_offset"],
                log_length=h["log_length"],
            )
            self.source.pwrite(raw, VHDX_HEADER_OFFSETS[slot - 1])
            self.source.flush()
            self.header_copy = slot
        self.header = h

    def _begin_session(self, *, data: bool = True) -> None:
        """First write of this open: new FileWriteGuid, and DataWriteGuid unless ``data=False``
        (MS-VHDX 2.2.2; a merge picks :attr:`next_data_write_guid` in advance)."""
        if self._session_started and (self._data_changed or not data):
            return
        changes: dict[str, Any] = {}
        if not self._session_started:
            self._check_layout_for_writing()
            changes["file_write_guid"] = uuid.uuid4()
        if data:
            changes["data_write_guid"] = self.next_data_write_guid or uuid.uuid4()
            self._data_changed = True
        self._update_headers(**changes)
        self._session_started = True

    def _check_layout_for_writing(self) -> None:
        """Refuse (InvalidImageError) to write where blocks share file space with each other or
        the headers, regions, log and metadata (SPEC-NOTES pitfall 10; MS-VHDX 2.5)."""
        ratio = self.chunk_ratio
        bs = self.payload_block_size
        differencing = self.disk_type is DiskType.DIFFERENCING
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # BAT index, start, end
        step = 1 << 16
        for first in range(0, self.bat_entry_count, step):
            n = min(step, self.bat_entry_count - first)
            raw = np.frombuffer(
                self.source.read_exact(self.bat_offset + 8 * first, 8 * n, "BAT"), dtype="<u8"
            )
            index = np.arange(first, first + n, dtype=np.int64)
            state = (raw & np.uint64(VHDX_BAT_STATE_MASK)).astype(np.int64)
            offset = (raw & np.uint64(VHDX_BAT_OFFSET_MASK)).astype(np.int64)
            is_sb = (index + 1) % (ratio + 1) == 0
            block = index - index // (ratio + 1)
            inside = np.clip(self.virtual_size - block * bs, 0, bs)
            payload = ~is_sb & (state >= PayloadState.FULLY_PRESENT)
            bitmap = is_sb & (state == SectorBitmapState.PRESENT) & differencing
            keep = np.flatnonzero(payload | bitmap)
            ends = offset[keep] + np.where(is_sb[keep], MiB, inside[keep])
            parts.append((index[keep], offset[keep], ends))
        if not any(len(part[0]) for part in parts):
            return
        index, starts, ends = (np.concatenate(column) for column in zip(*parts, strict=True))

        spans = [(0, VHDX_HEADER_AREA_SIZE, "header area"), *self.reserved_spans]
        found = shared_space(starts, ends, spans, file_end=self.source.physical_size)
        if found is not None:
            i, mate, what = found
            if mate is not None:
                what = f"BAT entry {int(index[mate])} at {int(starts[mate]):#x}"
            raise InvalidImageError(
                f"BAT entry {int(index[i])} at {int(starts[i]):#x} shares file space with "
                f"{what}; writing into this image would change both (pyvhdx check reports it)",
                structure="BAT",
                field=f"entry {int(index[i])}",
                offset=self.bat_offset + 8 * int(index[i]),
            )

    # -- replaying a pending log onto the file ----------------------------------

    def _commit_overlay(self) -> None:
        """Write the in-memory log replay to the file, then clear LogGuid (2.3.3)."""
        overlay = self.source.overlay
        assert overlay is not None
        size = overlay.size
        physical = self.source.physical_size
        if size > MAX_REPLAYED_FILE_SIZE:
            raise LogReplayError(
                f"the log would grow the file to {size:#x} bytes, beyond any valid VHDX",
                structure="log",
                field="LastFileOffset",
                offset=self.header["log_offset"],
            )
        self.source.set_overlay(None)
        for start, end in overlay.zero_ranges:
            # Past the physical end the file is extended with zeros by truncate.
            end = min(end, physical)
            if end <= start:
                continue
            for pos in range(start, end, MiB):
                self.source.pwrite(bytes(min(MiB, end - pos)), pos)
        for off in overlay.sector_offsets:
            data = overlay.sector(off)
            assert data is not None
            self.source.pwrite(data, off)
        if self.source.physical_size < size:
            self.source.truncate(size)
        self.source.flush()
        self._update_headers(log_guid=NIL_GUID)
        self.log_replayed = True

    # -- the log ---------------------------------------------------------------

    def _log_and_apply(self, sectors: dict[int, bytes]) -> None:
        """Change file sectors (the BAT) through one log entry, then in place."""
        if not sectors:
            return
        if self.bulk:
            for off, data in sectors.items():
                self.source.pwrite(data, off)
            return
        # The first entry of a session is written under a new LogGuid before the
        # headers name it: until they do, a crash leaves the log ignored (old BAT).
        announce = self._log_guid == NIL_GUID
        if announce:
            self._log_guid = uuid.uuid4()
        items = sorted(sectors.items())
        log_offset, log_length = self.header["log_offset"], self.header["log_length"]
        max_per_entry = (log_length // 4096) - 2
        for i in range(0, len(items), max(1, max_per_entry)):
            chunk = items[i : i + max_per_entry]
            size = self.source.physical_size
            self._log_seq += 1
            desc_sectors = 1 if len(chunk) <= 126 else 1 + -(-(len(chunk) - 126) // 128)
            length = 4096 * (desc_sectors + len(chunk))
            if self._log_pos + length > log_length:
                self._log_pos = 0
            entry = build_log_entry(
                sequence_number=self._log_seq,
                log_guid=self._log_guid,
                sectors=chunk,
                flushed_file_offset=size,
                last_file_offset=size,
                tail=self._log_pos,
            )
            self.source.pwrite(entry, log_offset + self._log_pos)
            self.source.flush()
            if announce:
                self._update_headers(log_guid=self._log_guid)
                announce = False
            self._log_pos += length
            self._log_unapplied = True
            for off, data in chunk:
                self.source.pwrite(data, off)
            self.source.flush()
            self._log_unapplied = False

    def _patch(self, sectors: dict[int, bytearray], at: int, data: bytes, what: str) -> None:
        """Put ``data`` at file offset ``at`` into ``sectors`` (4 KiB file sectors, read
        on first use), for :meth:`_log_and_apply`."""
        pos = 0
        while pos < len(data):
            sector = (at + pos) & ~0xFFF
            if sector not in sectors:
                sectors[sector] = bytearray(self.source.read_exact(sector, 4096, what))
            n = min(len(data) - pos, sector + 4096 - (at + pos))
            lo = at + pos - sector
            sectors[sector][lo : lo + n] = data[pos : pos + n]
            pos += n

    # -- data --------------------------------------------------------------------

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write user data; allocate missing blocks at the end of the file (MS-VHDX 2.5.1).

        A differencing block becomes FULLY_PRESENT, the rest copied from the parent first.
        """
        self._begin_session()
        table = self.table
        bs = self.payload_block_size
        end = offset + len(data)
        first, last = offset // bs, (end - 1) // bs
        codes = table.codes(first, last + 1).copy()
        old = codes.copy()
        new_blocks = [
            first + i for i, c in enumerate(codes.tolist()) if c < 0 and c != CODE_PARTIAL
        ]
        partial = [first + i for i, c in enumerate(codes.tolist()) if c == CODE_PARTIAL]
        if new_blocks:
            base = -(-self.source.physical_size // VHDX_ALIGNMENT) * VHDX_ALIGNMENT
            self.source.truncate(base + len(new_blocks) * bs)
            for k, b in enumerate(new_blocks):
                codes[b - first] = base + k * bs
        for b in partial:
            codes[b - first] = self._partial_offset(b)
        # parent data under what this write leaves of each block
        for b in new_blocks + partial:
            if old[b - first] in (CODE_PARENT, CODE_PARTIAL):
                keep = self._sector_bitmap(b) if old[b - first] == CODE_PARTIAL else None
                self._copy_from_parent(b, int(codes[b - first]), offset, end, keep)
        # user data, in place or into the new blocks
        pos = offset
        while pos < end:
            b = pos // bs
            stop = min(end, (b + 1) * bs)
            foff = int(codes[b - first]) + (pos - b * bs)
            self.source.pwrite(data[pos - offset : stop - offset], foff)
            pos = stop
        changed = new_blocks + partial
        if not changed:
            return
        if not self.bulk:
            self.source.flush()
        # BAT entries of the new blocks, through the log
        sectors: dict[int, bytearray] = {}
        for b in changed:
            entry_off = self.bat_offset + 8 * vhdx_payload_index(b, self.chunk_ratio)
            value = int(codes[b - first]) | PayloadState.FULLY_PRESENT
            self._patch(sectors, entry_off, value.to_bytes(8, "little"), "BAT")
        self._log_and_apply({k: bytes(v) for k, v in sectors.items()})
        for b in changed:
            table.set_code(b, int(codes[b - first]))

    def _copy_from_parent(
        self, block: int, file_offset: int, wstart: int, wend: int, keep: np.ndarray | None
    ) -> None:
        """Copy the parent's bytes of ``block`` outside the write and ``keep`` (zeros skipped)."""
        reader = self.parent_reader
        if reader is None:
            raise UnsupportedFeatureError(
                "writing into a differencing disk needs its parent open",
                structure="parent locator",
            )
        bs = self.payload_block_size
        ss = self.logical_sector_size
        lo = block * bs
        hi = min(lo + bs, self.virtual_size)
        buf = bytearray(hi - lo)
        reader(lo, buf)
        need = np.ones((hi - lo) // ss, dtype=bool)
        if keep is not None:
            need &= ~keep[: need.shape[0]]
        # sectors wholly inside the write are overwritten anyway
        s0 = -(-(max(wstart, lo) - lo) // ss)
        s1 = (min(wend, hi) - lo) // ss
        if s1 > s0:
            need[s0:s1] = False
        if not need.any():
            return
        edges = np.flatnonzero(np.diff(np.concatenate(([0], need.view(np.int8), [0]))))
        mv = memoryview(buf)
        for a, z in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            piece = mv[a * ss : z * ss]
            if np.any(np.frombuffer(piece, np.uint8)):
                self.source.pwrite(piece, file_offset + a * ss)

    def set_parent_locator(self, entries: list[tuple[str, str]]) -> None:
        """Replace the parent locator item (MS-VHDX 2.6.2.6) through one log entry (2.3).

        Only the FileWriteGuid changes. Raises InvalidArgumentError: not differencing, no room.
        """
        old = self.metadata.get(META_PARENT_LOCATOR)
        if old is None or self.disk_type is not DiskType.DIFFERENCING:
            raise InvalidArgumentError(f"{self.source.name} is not a differencing VHDX")
        region = self.regions[REGION_METADATA]
        item = vhdx_parent_locator(entries)
        index = next(
            i
            for i, it in enumerate(self.metadata_order)
            if it.item_id == META_PARENT_LOCATOR and not it.is_user
        )
        if len(item) <= old.length:
            offset = old.offset
        else:
            end = max(it.offset + it.length for it in self.metadata_order)
            offset = -(-end // 8) * 8
            if offset + len(item) > region.length:
                raise InvalidArgumentError(
                    f"{self.source.name}: no room for a {len(item)}-byte parent locator in the "
                    f"{region.length:#x}-byte metadata region",
                    offset=region.file_offset,
                )
        self._begin_session(data=False)
        sectors: dict[int, bytearray] = {}
        base = region.file_offset
        padding = bytes(old.length - len(item)) if offset == old.offset else b""
        self._patch(sectors, base + offset, item + padding, "metadata region")
        entry = base + 32 + 32 * index
        where = offset.to_bytes(4, "little") + len(item).to_bytes(4, "little")
        self._patch(sectors, entry + 16, where, "metadata region")
        self._log_and_apply({k: bytes(v) for k, v in sectors.items()})
        new = dataclasses.replace(old, offset=offset, length=len(item), data=item)
        self.metadata[META_PARENT_LOCATOR] = new
        self.metadata_order[index] = new
        self._decode_parent_locator(new)

    def close_writer(self) -> None:
        """Leave a clean image: no pending log (LogGuid cleared), everything flushed; but
        a log entry whose in-place writes were interrupted stays pending, to be replayed
        by the next open (MS-VHDX 2.3.3), as after a crash."""
        if self._log_guid != NIL_GUID and not self._log_unapplied:
            self._update_headers(log_guid=NIL_GUID)
            self._log_guid = NIL_GUID
        self.source.flush()
