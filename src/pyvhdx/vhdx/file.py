"""VHDX images: open, validate, choose copies, replay the log, map the BAT.

Implements the read side of MS-VHDX: the file type identifier (2.2.1), the two
headers (2.2.2) and region tables (2.2.3) with the choice of the current copy,
the log (2.3, replayed in memory for read-only opens), the BAT (2.5) and the
metadata region (2.6). Every offset and length read from the file is checked
against the file size and the specification's alignment and limits before use.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import FormatHandler
from .bat import (
    CODE_PARENT,
    CODE_PARTIAL,
    BlockTable,
    chunk_ratio,
    decode_vhdx_payload_entries,
    shared_space,
    vhdx_bat_entry_count,
    vhdx_payload_index,
    vhdx_sector_bitmap_index,
)
from .checksum import crc32c_with_zeroed_field
from .constants import (
    KNOWN_METADATA,
    KNOWN_REGIONS,
    META_FILE_PARAMETERS,
    META_LOGICAL_SECTOR_SIZE,
    META_PAGE83_DATA,
    META_PARENT_LOCATOR,
    META_PHYSICAL_SECTOR_SIZE,
    META_VIRTUAL_DISK_SIZE,
    PARENT_LOCATOR_TYPE_VHDX,
    REGION_BAT,
    REGION_METADATA,
    VHDX_ALIGNMENT,
    VHDX_HEADER_AREA_SIZE,
    VHDX_HEADER_OFFSETS,
    VHDX_HEADER_SIZE,
    VHDX_MAX_BLOCK_SIZE,
    VHDX_MAX_METADATA_ENTRIES,
    VHDX_MAX_METADATA_ITEM_SIZE,
    VHDX_MAX_REGION_ENTRIES,
    VHDX_MAX_VIRTUAL_SIZE,
    VHDX_METADATA_TABLE_SIZE,
    VHDX_MIN_BLOCK_SIZE,
    VHDX_REGION_TABLE_OFFSETS,
    VHDX_REGION_TABLE_SIZE,
    VHDX_SECTOR_SIZES,
    VHDX_SIGNATURE,
    DiskType,
    ImageFormat,
    MiB,
    PayloadState,
    SectorBitmapState,
)
from .errors import (
    ChecksumError,
    InvalidArgumentError,
    InvalidImageError,
    LogReplayError,
    PyvhdxError,
    UnsupportedFeatureError,
)
from .info import Problem
from .source import FileSource
from .structures import parse
from .structures.vhdx import (
    FILE_IDENTIFIER,
    FILE_PARAMETERS,
    HEADER,
    METADATA_ENTRY,
    METADATA_TABLE_HEADER,
    PARENT_LOCATOR_ENTRY,
    PARENT_LOCATOR_HEADER,
    REGION_TABLE_ENTRY,
    REGION_TABLE_HEADER,
)

if TYPE_CHECKING:
    from .log import LogState

__all__ = ["HeaderCopy", "MetadataItem", "RegionEntry", "RegionTableCopy", "VHDXFile"]

NIL_GUID = uuid.UUID(int=0)
# 64 TiB of payload plus its BAT, metadata and log fit well below this.
MAX_REPLAYED_FILE_SIZE = 1 << 47

# MS-VHDX 2.6.1.2 metadata entry flags
META_IS_USER = 1
META_IS_VIRTUAL_DISK = 2
META_IS_REQUIRED = 4


@dataclasses.dataclass
class HeaderCopy:
    """One of the two headers, with the result of its validation (MS-VHDX 2.2.2)."""

    index: int  # 1 or 2
    offset: int
    fields: dict[str, Any] | None  # parsed fields, None if unparsable
    valid: bool
    error: str | None
    stored_checksum: int | None = None
    computed_checksum: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "copy": self.index,
            "offset": self.offset,
            "valid": self.valid,
        }
        if self.error:
            d["error"] = self.error
        if self.stored_checksum is not None:
            d["checksum"] = self.stored_checksum
            d["computed-checksum"] = self.computed_checksum
        if self.fields is not None:
            d.update({k.replace("_", "-"): v for k, v in self.fields.items() if k != "reserved"})
        return d


@dataclasses.dataclass(frozen=True)
class RegionEntry:
    """A region table entry (MS-VHDX 2.2.3.2)."""

    guid: uuid.UUID
    file_offset: int
    length: int
    required: bool

    @property
    def name(self) -> str:
        return KNOWN_REGIONS.get(self.guid, "unknown")

    def to_dict(self) -> dict[str, Any]:
        return {
            "guid": str(self.guid),
            "name": self.name,
            "file-offset": self.file_offset,
            "length": self.length,
            "required": self.required,
        }


@dataclasses.dataclass
class RegionTableCopy:
    """One of the two region tables, validated (MS-VHDX 2.2.3)."""

    index: int
    offset: int
    valid: bool
    error: str | None
    entries: list[RegionEntry]
    stored_checksum: int | None = None
    computed_checksum: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"copy": self.index, "offset": self.offset, "valid": self.valid}
        if self.error:
            d["error"] = self.error
        if self.stored_checksum is not None:
            d["checksum"] = self.stored_checksum
            d["computed-checksum"] = self.computed_checksum
        d["entries"] = [e.to_dict() for e in self.entries]
        return d


@dataclasses.dataclass(frozen=True)
class MetadataItem:
    """A metadata table entry and its raw bytes (MS-VHDX 2.6.1.2)."""

    item_id: uuid.UUID
    offset: int  # relative to the metadata region
    length: int
    is_user: bool
    is_virtual_disk: bool
    is_required: bool
    data: bytes

    @property
    def name(self) -> str:
        return KNOWN_METADATA.get(self.item_id, "user" if self.is_user else "unknown")

    def to_dict(self) -> dict[str, Any]:
        return {
            "item-id": str(self.item_id),
            "name": self.name,
            "offset": self.offset,
            "length": self.length,
            "is-user": self.is_user,
            "is-virtual-disk": self.is_virtual_disk,
            "is-required": self.is_required,
        }


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# -- writing (MS-VHDX 2.2.2.1 header updates, 2.3 log, 2.5 BAT) ---------------------


def build_log_entry(
    *,
    sequence_number: int,
    log_guid: uuid.UUID,
    sectors: list[tuple[int, bytes]],
    flushed_file_offset: int,
    last_file_offset: int,
    tail: int,
) -> bytes:
    """One log entry carrying whole 4 KiB ``sectors`` ``(file_offset, data)``.

    MS-VHDX 2.3.1: a 64-byte entry header and 32-byte data descriptors fill the
    descriptor sectors (126 in the first, 128 in each later one), then one data
    sector per descriptor holds bytes 8..4091 of its target; the first 8 and the
    last 4 bytes ride in the descriptor. The CRC-32C covers the whole entry.
    """
    from .structures.vhdx import DATA_DESCRIPTOR, DATA_SECTOR, LOG_ENTRY_HEADER

    count = len(sectors)
    desc_sectors = 1 if count <= 126 else 1 + -(-(count - 126) // 128)
    length = 4096 * (desc_sectors + count)
    out = bytearray(length)
    out[:64] = LOG_ENTRY_HEADER.build(
        dict(
            checksum=0,
            entry_length=length,
            tail=tail,
            sequence_number=sequence_number,
            descriptor_count=count,
            reserved=0,
            log_guid=log_guid,
            flushed_file_offset=flushed_file_offset,
            last_file_offset=last_file_offset,
        )
    )
    for i, (offset, data) in enumerate(sectors):
        pos = 64 + 32 * i if i < 126 else 4096 * (1 + (i - 126) // 128) + 32 * ((i - 126) % 128)
        out[pos : pos + 32] = DATA_DESCRIPTOR.build(
            dict(
                trailing_bytes=int.from_bytes(data[4092:4096], "little"),
                leading_bytes=int.from_bytes(data[0:8], "little"),
                file_offset=offset,
                sequence_number=sequence_number,
            )
        )
        spos = 4096 * (desc_sectors + i)
        out[spos : spos + 4096] = DATA_SECTOR.build(
            dict(
                sequence_high=sequence_number >> 32,
                data=data[8:4092],
                sequence_low=sequence_number & 0xFFFFFFFF,
            )
        )
    out[4:8] = crc32c_with_zeroed_field(out, 4).to_bytes(4, "little")
    return bytes(out)


_U64_MAX = (1 << 64) - 1
# An r+ open refuses a header sequence number this close to 2**64: the updates
# of a session (two per header update) could not all be numbered.
_MAX_WRITABLE_SEQUENCE = _U64_MAX - (1 << 32)


class _VHDXWriter:
    """The write side of :class:`VHDXFile` (mixed in; state lives on the file object).

    Crash consistency (DESIGN.md "Writes"; SPEC-NOTES pitfall 12): user data is
    written in place, or into a new block at the 1 MiB-aligned end of the file,
    and flushed; only then is the BAT changed, through a log entry that is
    flushed before the BAT sectors are written in place and flushed again. A
    crash anywhere leaves either the old mapping or a log whose replay gives
    the new one.
    """

    source: FileSource
    header: dict[str, Any]
    header_copy: int | None
    table: BlockTable
    payload_block_size: int
    logical_sector_size: int
    virtual_size: int
    chunk_ratio: int

    def _partial_offset(self, block: int) -> int:
        raise NotImplementedError

    def _sector_bitmap(self, block: int) -> np.ndarray:
        raise NotImplementedError

    bat_offset: int
    bat_entry_count: int
    reserved_spans: list[tuple[int, int, str]]
    disk_type: DiskType

    parent_reader: Any = None  # DiskImage.readinto_at of the parent, set by attach_parent
    metadata: dict[uuid.UUID, MetadataItem]
    metadata_order: list[MetadataItem]
    regions: dict[uuid.UUID, RegionEntry]

    def _decode_parent_locator(self, item: MetadataItem) -> None:
        raise NotImplementedError

    def _init_writer(self) -> None:
        # bulk: a new image being filled by convert, deleted if anything fails;
        # BAT changes go straight to the file and only close() flushes.
        self.bulk = False
        self._session_started = False
        self._data_changed = False
        self.next_data_write_guid: uuid.UUID | None = None
        self._log_seq = 0
        self._log_pos = 0
        self._log_guid = NIL_GUID
        current = self.header_copy or 1
        if self.header["sequence_number"] > _MAX_WRITABLE_SEQUENCE:
            # each header update adds 2: a session could wrap the u64 (MS-VHDX 2.2.2)
            raise InvalidImageError(
                f"header SequenceNumber {self.header['sequence_number']:#x} is too close to "
                "2**64 for writes: updating the headers would wrap it",
                structure=f"header {current}",
                field="SequenceNumber",
                offset=VHDX_HEADER_OFFSETS[current - 1] + 8,
            )
        if self.header["log_length"] < MiB:
            # every BAT change goes through a log entry (MS-VHDX 2.3): no room, no writes
            raise InvalidImageError(
                f"header LogLength {self.header['log_length']:#x} leaves no room for the "
                "log entries that writes go through",
                structure=f"header {current}",
                field="LogLength",
                offset=VHDX_HEADER_OFFSETS[current - 1] + 68,
            )
        if self.source.overlay is not None:
            self._commit_overlay()

    # -- headers ------------------------------------------------------------

    def _update_headers(self, **changes: Any) -> None:
        """Write the header twice, to the non-current slot first (MS-VHDX 2.2.2.1).

        After both writes the two copies are identical and current, each step
        flushed, so a crash leaves at least one valid header with either the
        old or the new fields.
        """
        from .create import vhdx_header

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
        """First write of this open: new FileWriteGuid and DataWriteGuid (2.2.2).

        ``data=False`` (a change that leaves the disk's content as it was, such
        as a new parent locator) changes the FileWriteGuid only, so children
        linked to this disk's DataWriteGuid stay linked. A merge chooses the new
        DataWriteGuid in advance (:attr:`next_data_write_guid`) so that it can
        record it before the first write (:mod:`pyvhdx.journal`).
        """
        if self._session_started and (self._data_changed or not data):
            return
        if not self._session_started:
            self._check_layout_for_writing()
        changes: dict[str, Any] = {}
        if not self._session_started:
            changes["file_write_guid"] = uuid.uuid4()
        if data:
            changes["data_write_guid"] = self.next_data_write_guid or uuid.uuid4()
            self._data_changed = True
        self._update_headers(**changes)
        self._session_started = True

    def _check_layout_for_writing(self) -> None:
        """Refuse to write into an image whose blocks share file space.

        Reads check overlaps within each decoded chunk of the BAT; before the
        first write every present payload block (the part inside the disk) and,
        in a differencing disk, every present sector bitmap block is checked
        against all the others and against the headers, regions, log and
        metadata (SPEC-NOTES pitfall 10): a write into shared space would change
        both owners.

        Raises:
            InvalidImageError: naming the BAT entry of the first such block.
        """
        ratio = self.chunk_ratio
        bs = self.payload_block_size
        differencing = self.disk_type is DiskType.DIFFERENCING
        idx_parts: list[np.ndarray] = []
        start_parts: list[np.ndarray] = []
        end_parts: list[np.ndarray] = []
        step = 1 << 16
        for first in range(0, self.bat_entry_count, step):
            n = min(step, self.bat_entry_count - first)
            raw = np.frombuffer(
                self.source.read_exact(self.bat_offset + 8 * first, 8 * n, "BAT"), dtype="<u8"
            )
            index = np.arange(first, first + n, dtype=np.int64)
            state = (raw & np.uint64(7)).astype(np.int64)
            offset = (raw & np.uint64(0xFFFFFFFFFFF00000)).astype(np.int64)
            is_sb = (index + 1) % (ratio + 1) == 0
            block = index - index // (ratio + 1)
            inside = np.clip(self.virtual_size - block * bs, 0, bs)
            payload = ~is_sb & (state >= PayloadState.FULLY_PRESENT)
            bitmap = is_sb & (state == SectorBitmapState.PRESENT) & differencing
            keep = np.flatnonzero(payload | bitmap)
            idx_parts.append(index[keep])
            start_parts.append(offset[keep])
            end_parts.append(offset[keep] + np.where(is_sb[keep], MiB, inside[keep]))
        index = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
        if not index.size:
            return
        starts = np.concatenate(start_parts)
        ends = np.concatenate(end_parts)

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
            zeros = bytes(min(end - start, 1 << 20))
            pos = start
            while pos < end:
                n = min(len(zeros), end - pos)
                self.source.pwrite(zeros[:n], pos)
                pos += n
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
            for off, data in chunk:
                self.source.pwrite(data, off)
            self.source.flush()

    # -- data --------------------------------------------------------------------

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write user data; allocate missing blocks at the end of the file.

        In a differencing disk a block that is not (or only partly) stored here
        becomes FULLY_PRESENT: the sectors the write does not cover are copied
        from the parent first, so one BAT entry switches the whole block
        atomically and no sector bitmap has to change (MS-VHDX 2.5.1.1 allows
        either; this keeps every change a single logged BAT update).
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
            if old[b - first] == CODE_PARENT or old[b - first] == CODE_PARTIAL:
                keep = None
                if old[b - first] == CODE_PARTIAL:
                    keep = self._sector_bitmap(b)
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
            sector = entry_off & ~0xFFF
            if sector not in sectors:
                sectors[sector] = bytearray(self.source.read_exact(sector, 4096, "BAT"))
            value = int(codes[b - first]) | PayloadState.FULLY_PRESENT
            sectors[sector][entry_off - sector : entry_off - sector + 8] = value.to_bytes(
                8, "little"
            )
        self._log_and_apply({k: bytes(v) for k, v in sectors.items()})
        for b in changed:
            table.set_code(b, int(codes[b - first]))

    def _copy_from_parent(
        self, block: int, file_offset: int, wstart: int, wend: int, keep: np.ndarray | None
    ) -> None:
        """Copy the parent's bytes of ``block`` that the write does not cover.

        ``keep`` (sectors already stored here) are left alone. All-zero runs are
        not written: the new block area reads as zeros already.
        """
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
        """Replace the parent locator item (MS-VHDX 2.6.2.6) with ``entries``.

        The new item goes where the old one was if it fits, else after the last
        item of the metadata region; the item bytes and its table entry change
        through one log entry (2.3), so a crash leaves the old locator or the
        new one. The disk's content is unchanged: the FileWriteGuid changes,
        the DataWriteGuid does not (children of this disk stay linked).

        Raises:
            InvalidArgumentError: not a differencing disk, or no room left in
                the metadata region.
        """
        from .create import vhdx_parent_locator

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

        def patch(at: int, data: bytes) -> None:
            pos = 0
            while pos < len(data):
                sector = (at + pos) & ~0xFFF
                if sector not in sectors:
                    raw = self.source.read_exact(sector, 4096, "metadata region")
                    sectors[sector] = bytearray(raw)
                n = min(len(data) - pos, sector + 4096 - (at + pos))
                lo = at + pos - sector
                sectors[sector][lo : lo + n] = data[pos : pos + n]
                pos += n

        base = region.file_offset
        if offset == old.offset:
            patch(base + old.offset, item + bytes(old.length - len(item)))
        else:
            patch(base + offset, item)
        entry = base + 32 + 32 * index
        patch(entry + 16, offset.to_bytes(4, "little") + len(item).to_bytes(4, "little"))
        self._log_and_apply({k: bytes(v) for k, v in sectors.items()})
        new = dataclasses.replace(old, offset=offset, length=len(item), data=item)
        self.metadata[META_PARENT_LOCATOR] = new
        self.metadata_order[index] = new
        self._decode_parent_locator(new)

    def flush(self) -> None:
        self.source.flush()

    def close_writer(self) -> None:
        """Leave a clean image: no pending log (LogGuid cleared), everything flushed."""
        if self._log_guid != NIL_GUID:
            self._update_headers(log_guid=NIL_GUID)
            self._log_guid = NIL_GUID
        self.source.flush()


class VHDXFile(_VHDXWriter, FormatHandler):
    """A VHDX image opened for reading.

    Args:
        source: the image file.
        strict: refuse an image with any defect, even one a good copy hides.

    Raises:
        InvalidImageError: a malformed structure (``ChecksumError`` when no valid
            copy of a checksummed structure is left, ``TruncatedImageError`` when
            the file ends too early).
        UnsupportedFeatureError: an unknown required region or metadata item.
        LogReplayError: a pending log that cannot be replayed.
    """

    supports_write = True

    def __init__(
        self,
        source: FileSource,
        *,
        strict: bool = False,
        writable: bool = False,
        salvage: bool = False,
    ) -> None:
        super().__init__()
        self.salvage = salvage
        self.source = source
        self.writable = writable
        self.strict = strict
        self.format = ImageFormat.VHDX
        self.read_error: PyvhdxError | None = None
        self.file_size = source.physical_size
        self._read_file_identifier()
        self.headers = [self._read_header(i) for i in (1, 2)]
        self.header = self._choose_header()
        self.log_state: LogState | None = None
        self._replay_log()
        self.region_tables = [self._read_region_table(i) for i in (1, 2)]
        self.regions = self._choose_region_table()
        self._read_metadata()
        self._setup_bat()
        if self.strict and self.problems:
            raise InvalidImageError(
                f"strict open refused: {self.problems[0]}",
                structure=self.problems[0].structure,
                field=self.problems[0].field,
                offset=self.problems[0].offset,
            )
        if writable:
            self._init_writer()

    def close(self) -> None:
        try:
            if self.writable:
                self.close_writer()
        finally:
            self.source.close()

    # -- problems --------------------------------------------------------------

    def _problem(
        self, structure: str, message: str, offset: int | None = None, field: str | None = None
    ) -> None:
        self.problems.append(Problem(structure, message, offset, field))

    # -- 2.2.1 file type identifier ----------------------------------------------

    def _read_file_identifier(self) -> None:
        data = self.source.read_exact(0, FILE_IDENTIFIER.sizeof(), "VHDX file identifier")
        if data[:8] != VHDX_SIGNATURE:
            self.creator = None
            self._problem(
                "file identifier",
                f"signature is {data[:8]!r}, not {VHDX_SIGNATURE!r}",
                0,
                "Signature",
            )
            return
        self.creator = parse(FILE_IDENTIFIER, data, structure="file identifier", offset=0).creator

    # -- 2.2.2 headers -------------------------------------------------------------

    def _read_header(self, index: int) -> HeaderCopy:
        offset = VHDX_HEADER_OFFSETS[index - 1]
        name = f"header {index}"
        if offset + VHDX_HEADER_SIZE > self.source.size:
            return HeaderCopy(index, offset, None, False, "beyond the end of the file")
        data = self.source.read(offset, VHDX_HEADER_SIZE)
        if data[:4] != b"head":
            return HeaderCopy(index, offset, None, False, f"signature is {data[:4]!r}, not b'head'")
        stored = int.from_bytes(data[4:8], "little")
        computed = crc32c_with_zeroed_field(data, 4)
        fields = dict(parse(HEADER, data, structure=name, offset=offset))
        fields.pop("_io", None)
        copy = HeaderCopy(index, offset, fields, False, None, stored, computed)
        if stored != computed:
            copy.error = f"checksum {stored:#010x} does not match {computed:#010x}"
        elif fields["version"] != 1:
            copy.error = f"version {fields['version']} is not 1"
        else:
            copy.valid = True
        return copy

    def _choose_header(self) -> dict[str, Any]:
        """The current header: the valid one with the larger SequenceNumber (2.2.2.1)."""
        valid = [h for h in self.headers if h.valid]
        for h in self.headers:
            if not h.valid:
                self.failed_copies.append(f"header {h.index}")
                self._problem(f"header {h.index}", h.error or "invalid", h.offset)
        if not valid:
            first = self.headers[0]
            message = (
                f"no valid VHDX header: header 1: {first.error}; header 2: {self.headers[1].error}"
            )
            if all(h.fields is None for h in self.headers):
                raise InvalidImageError(
                    message, structure="header", field="Signature", offset=first.offset
                )
            raise ChecksumError(message, structure="header", field="Checksum", offset=first.offset)
        # Equal sequence numbers (Disk2vhd writes two identical headers): take header 1.
        best = max(valid, key=lambda h: (h.fields["sequence_number"], -h.index))  # type: ignore[index]
        self.header_copy = best.index
        header = best.fields
        assert header is not None
        self._validate_header_fields(header, best.offset)
        return header

    def _validate_header_fields(self, h: dict[str, Any], offset: int) -> None:
        if h["log_version"] != 0:
            raise UnsupportedFeatureError(
                f"log version {h['log_version']} (only 0 is defined)",
                structure=f"header {self.header_copy}",
                field="LogVersion",
                offset=offset + 64,
            )
        log_offset, log_length = h["log_offset"], h["log_length"]
        where = {"structure": f"header {self.header_copy}", "offset": offset}
        if log_length % VHDX_ALIGNMENT or log_offset % VHDX_ALIGNMENT:
            raise InvalidImageError(
                f"log at {log_offset:#x}+{log_length:#x} is not 1 MiB aligned",
                field="LogOffset",
                **where,  # type: ignore[arg-type]
            )
        if log_length and (
            log_offset < VHDX_HEADER_AREA_SIZE or log_offset + log_length > self.source.size
        ):
            raise InvalidImageError(
                f"log at {log_offset:#x}+{log_length:#x} lies outside the "
                f"{self.source.size:#x}-byte file",
                field="LogOffset",
                **where,  # type: ignore[arg-type]
            )

    # -- 2.3 log ---------------------------------------------------------------------

    def _replay_log(self) -> None:
        h = self.header
        if h["log_guid"] == NIL_GUID:
            return
        if h["log_length"] == 0:
            raise InvalidImageError(
                "the header names a log (LogGuid is set) but the log has no length",
                structure=f"header {self.header_copy}",
                field="LogLength",
                offset=VHDX_HEADER_OFFSETS[(self.header_copy or 1) - 1] + 68,
            )
        from .log import load_log, replay_in_memory

        state = load_log(
            self.source,
            log_offset=h["log_offset"],
            log_length=h["log_length"],
            log_guid=h["log_guid"],
        )
        self.log_state = state
        if not state.active:
            self._problem(
                "log",
                "LogGuid is set but the log holds no valid sequence to replay",
                h["log_offset"],
            )
            return
        replay_in_memory(self.source, state)
        self.log_replayed = True

    # -- 2.2.3 region tables ------------------------------------------------------------

    def _read_region_table(self, index: int) -> RegionTableCopy:
        offset = VHDX_REGION_TABLE_OFFSETS[index - 1]
        if offset + VHDX_REGION_TABLE_SIZE > self.source.size:
            return RegionTableCopy(index, offset, False, "beyond the end of the file", [])
        data = self.source.read(offset, VHDX_REGION_TABLE_SIZE)
        if data[:4] != b"regi":
            return RegionTableCopy(
                index, offset, False, f"signature is {data[:4]!r}, not b'regi'", []
            )
        stored = int.from_bytes(data[4:8], "little")
        computed = crc32c_with_zeroed_field(data, 4)
        table = RegionTableCopy(index, offset, False, None, [], stored, computed)
        if stored != computed:
            table.error = f"checksum {stored:#010x} does not match {computed:#010x}"
            return table
        head = parse(
            REGION_TABLE_HEADER, data[:16], structure=f"region table {index}", offset=offset
        )
        if head.entry_count > VHDX_MAX_REGION_ENTRIES:
            table.error = f"EntryCount {head.entry_count} exceeds {VHDX_MAX_REGION_ENTRIES}"
            return table
        for i in range(head.entry_count):
            pos = 16 + 32 * i
            e = parse(
                REGION_TABLE_ENTRY,
                data[pos : pos + 32],
                structure=f"region table {index} entry {i}",
                offset=offset + pos,
            )
            table.entries.append(RegionEntry(e.guid, e.file_offset, e.length, bool(e.flags & 1)))
        table.valid = True
        return table

    def _choose_region_table(self) -> dict[uuid.UUID, RegionEntry]:
        for t in self.region_tables:
            if not t.valid:
                self.failed_copies.append(f"region table {t.index}")
                self._problem(f"region table {t.index}", t.error or "invalid", t.offset)
        valid = [t for t in self.region_tables if t.valid]
        if not valid:
            t1, t2 = self.region_tables
            raise ChecksumError(
                f"no valid region table: table 1: {t1.error}; table 2: {t2.error}",
                structure="region table",
                field="Checksum",
                offset=t1.offset,
            )
        table = valid[0]
        self.region_table_copy = table.index
        regions: dict[uuid.UUID, RegionEntry] = {}
        spans: list[tuple[int, int, str]] = []
        if self.header["log_length"]:
            spans.append((self.header["log_offset"], self.header["log_length"], "log"))
        for i, e in enumerate(table.entries):
            where = {
                "structure": f"region table {table.index} entry {i} ({e.name})",
                "offset": table.offset + 16 + 32 * i,
            }
            if e.guid in regions:
                raise InvalidImageError(f"region {e.guid} appears twice", field="Guid", **where)  # type: ignore[arg-type]
            if e.guid not in KNOWN_REGIONS:
                if e.required:
                    raise UnsupportedFeatureError(
                        f"unknown required region {e.guid}",
                        field="Required",
                        **where,  # type: ignore[arg-type]
                    )
                self._problem(where["structure"], f"unknown optional region {e.guid} ignored")  # type: ignore[arg-type]
            if (
                e.file_offset % VHDX_ALIGNMENT
                or e.length % VHDX_ALIGNMENT
                or e.length == 0
                or e.file_offset < VHDX_HEADER_AREA_SIZE
            ):
                raise InvalidImageError(
                    f"region at {e.file_offset:#x}+{e.length:#x} is not 1 MiB aligned "
                    "or lies in the header area",
                    field="FileOffset",
                    **where,  # type: ignore[arg-type]
                )
            # Not source.size: a log replay may extend the file with zeros far out.
            if e.file_offset + e.length > self.source.data_size:
                raise InvalidImageError(
                    f"region at {e.file_offset:#x}+{e.length:#x} lies beyond the end of the "
                    f"{self.source.data_size:#x} bytes of the file (and its log)",
                    field="Length",
                    **where,  # type: ignore[arg-type]
                )
            for s, ln, what in spans:
                if e.file_offset < s + ln and s < e.file_offset + e.length:
                    raise InvalidImageError(
                        f"region at {e.file_offset:#x}+{e.length:#x} overlaps the {what}",
                        field="FileOffset",
                        **where,  # type: ignore[arg-type]
                    )
            spans.append((e.file_offset, e.length, e.name))
            regions[e.guid] = e
        for guid in (REGION_BAT, REGION_METADATA):
            if guid not in regions:
                raise InvalidImageError(
                    f"the region table has no {KNOWN_REGIONS[guid]} region",
                    structure=f"region table {table.index}",
                    offset=table.offset,
                )
        self.reserved_spans = spans
        return regions

    # -- 2.6 metadata -------------------------------------------------------------------

    def _read_metadata(self) -> None:
        region = self.regions[REGION_METADATA]
        base = region.file_offset
        if region.length < VHDX_METADATA_TABLE_SIZE:
            raise InvalidImageError(
                "metadata region is smaller than its 64 KiB table",
                structure="metadata region",
                field="Length",
                offset=base,
            )
        table = self.source.read_exact(base, VHDX_METADATA_TABLE_SIZE, "metadata table")
        head = parse(METADATA_TABLE_HEADER, table[:32], structure="metadata table", offset=base)
        if head.entry_count > VHDX_MAX_METADATA_ENTRIES:
            raise InvalidImageError(
                f"EntryCount {head.entry_count} exceeds {VHDX_MAX_METADATA_ENTRIES}",
                structure="metadata table",
                field="EntryCount",
                offset=base + 10,
            )
        self.metadata: dict[uuid.UUID, MetadataItem] = {}
        self.metadata_order: list[MetadataItem] = []
        for i in range(head.entry_count):
            pos = 32 + 32 * i
            name = f"metadata entry {i}"
            e = parse(METADATA_ENTRY, table[pos : pos + 32], structure=name, offset=base + pos)
            if e.length > VHDX_MAX_METADATA_ITEM_SIZE or (
                e.length
                and (e.offset < VHDX_METADATA_TABLE_SIZE or e.offset + e.length > region.length)
            ):
                raise InvalidImageError(
                    f"item {e.item_id} at {e.offset:#x}+{e.length:#x} lies outside the "
                    f"{region.length:#x}-byte metadata region (or in its table)",
                    structure=name,
                    field="Offset",
                    offset=base + pos,
                )
            key = (e.item_id, bool(e.flags & META_IS_USER))
            if e.item_id in self.metadata and not key[1]:
                raise InvalidImageError(
                    f"metadata item {e.item_id} appears twice",
                    structure=name,
                    field="ItemId",
                    offset=base + pos,
                )
            data = self.source.read_exact(base + e.offset, e.length, name) if e.length else b""
            item = MetadataItem(
                e.item_id,
                e.offset,
                e.length,
                bool(e.flags & META_IS_USER),
                bool(e.flags & META_IS_VIRTUAL_DISK),
                bool(e.flags & META_IS_REQUIRED),
                data,
            )
            self.metadata_order.append(item)
            if item.item_id not in KNOWN_METADATA:
                if item.is_required and not item.is_user:
                    raise UnsupportedFeatureError(
                        f"unknown required metadata item {item.item_id}",
                        structure=name,
                        field="IsRequired",
                        offset=base + pos,
                    )
                continue
            self.metadata[item.item_id] = item
        self._decode_metadata()

    def _item(self, guid: uuid.UUID, size: int | None) -> MetadataItem:
        item = self.metadata.get(guid)
        name = KNOWN_METADATA[guid]
        base = self.regions[REGION_METADATA].file_offset
        if item is None:
            raise InvalidImageError(
                f"required metadata item {name} is missing",
                structure="metadata table",
                field=name,
                offset=base,
            )
        if size is not None and item.length < size:
            raise InvalidImageError(
                f"metadata item {name} is {item.length} bytes, expected {size}",
                structure=f"metadata item {name}",
                field="Length",
                offset=base + item.offset,
            )
        return item

    def _decode_metadata(self) -> None:
        base = self.regions[REGION_METADATA].file_offset
        fp_item = self._item(META_FILE_PARAMETERS, 8)
        fp = parse(FILE_PARAMETERS, fp_item.data[:8], structure="file parameters", offset=base)

        def where(item: MetadataItem, field: str) -> dict[str, Any]:
            return {
                "structure": f"metadata item {item.name}",
                "field": field,
                "offset": base + item.offset,
            }

        if not (
            _is_power_of_two(fp.block_size)
            and VHDX_MIN_BLOCK_SIZE <= fp.block_size <= VHDX_MAX_BLOCK_SIZE
        ):
            raise InvalidImageError(
                f"block size {fp.block_size} is not a power of two from 1 to 256 MiB",
                **where(fp_item, "BlockSize"),
            )
        self.block_size = self.payload_block_size = fp.block_size
        self.leave_block_allocated = bool(fp.flags & 1)
        self.has_parent = bool(fp.flags & 2)

        vs_item = self._item(META_VIRTUAL_DISK_SIZE, 8)
        ls_item = self._item(META_LOGICAL_SECTOR_SIZE, 4)
        ps_item = self._item(META_PHYSICAL_SECTOR_SIZE, 4)
        self.logical_sector_size = int.from_bytes(ls_item.data[:4], "little")
        self.physical_sector_size = int.from_bytes(ps_item.data[:4], "little")
        for item, value, fld in (
            (ls_item, self.logical_sector_size, "LogicalSectorSize"),
            (ps_item, self.physical_sector_size, "PhysicalSectorSize"),
        ):
            if value not in VHDX_SECTOR_SIZES:
                raise InvalidImageError(
                    f"sector size {value} is not 512 or 4096", **where(item, fld)
                )
        self.virtual_size = int.from_bytes(vs_item.data[:8], "little")
        if (
            self.virtual_size == 0
            or self.virtual_size > VHDX_MAX_VIRTUAL_SIZE
            or self.virtual_size % self.logical_sector_size
        ):
            raise InvalidImageError(
                f"virtual size {self.virtual_size} is not a multiple of the "
                f"{self.logical_sector_size}-byte sector from 1 sector to 64 TiB",
                **where(vs_item, "VirtualDiskSize"),
            )
        p83 = self.metadata.get(META_PAGE83_DATA)
        if p83 is not None and p83.length >= 16:
            self.identifier = uuid.UUID(bytes_le=p83.data[:16])
        else:
            self.identifier = None
            self._problem("metadata", "Page 83 Data item is missing", base)

        self.parent_locator: dict[str, str] | None = None
        self.parent_locator_type: uuid.UUID | None = None
        if self.has_parent:
            self.disk_type = DiskType.DIFFERENCING
            self._decode_parent_locator(self._item(META_PARENT_LOCATOR, 20))
        elif self.leave_block_allocated:
            self.disk_type = DiskType.FIXED
        else:
            self.disk_type = DiskType.DYNAMIC

    def _decode_parent_locator(self, item: MetadataItem) -> None:
        """MS-VHDX 2.6.2.6: key/value offsets are relative to the locator item."""
        offset = self.regions[REGION_METADATA].file_offset + item.offset
        head = parse(
            PARENT_LOCATOR_HEADER, item.data[:20], structure="parent locator", offset=offset
        )
        self.parent_locator_type = head.locator_type
        if 20 + 12 * head.key_value_count > item.length:
            raise InvalidImageError(
                f"{head.key_value_count} key/value entries do not fit in the "
                f"{item.length}-byte parent locator",
                structure="parent locator",
                field="KeyValueCount",
                offset=offset + 18,
            )
        kv: dict[str, str] = {}
        for i in range(head.key_value_count):
            pos = 20 + 12 * i
            e = parse(
                PARENT_LOCATOR_ENTRY,
                item.data[pos : pos + 12],
                structure=f"parent locator entry {i}",
                offset=offset + pos,
            )
            texts = []
            for fld, off, ln in (
                ("Key", e.key_offset, e.key_length),
                ("Value", e.value_offset, e.value_length),
            ):
                if off + ln > item.length or ln % 2:
                    raise InvalidImageError(
                        f"{fld.lower()} at {off:#x}+{ln:#x} lies outside the "
                        f"{item.length}-byte parent locator",
                        structure=f"parent locator entry {i}",
                        field=f"{fld}Offset",
                        offset=offset + pos,
                    )
                texts.append(item.data[off : off + ln].decode("utf-16-le", errors="surrogatepass"))
            kv[texts[0]] = texts[1]
        if head.locator_type != PARENT_LOCATOR_TYPE_VHDX:
            self._problem("parent locator", f"unknown locator type {head.locator_type}", offset)
        if "parent_linkage" not in kv:
            self._problem("parent locator", "parent_linkage key is missing", offset)
        self.parent_locator = kv

    # -- 2.5 BAT -------------------------------------------------------------------------

    def _setup_bat(self) -> None:
        region = self.regions[REGION_BAT]
        differencing = self.disk_type is DiskType.DIFFERENCING
        self.chunk_ratio = chunk_ratio(self.logical_sector_size, self.payload_block_size)
        self.bat_entry_count = vhdx_bat_entry_count(
            self.virtual_size, self.payload_block_size, self.logical_sector_size, differencing
        )
        if self.bat_entry_count * 8 > region.length:
            raise InvalidImageError(
                f"the BAT region ({region.length:#x} bytes) is too small for "
                f"{self.bat_entry_count} entries",
                structure="BAT region",
                field="Length",
                offset=region.file_offset,
            )
        self.bat_offset = region.file_offset
        self.table = BlockTable(
            self.virtual_size,
            self.payload_block_size,
            self._load_bat,
            sector_size=self.logical_sector_size,
        )
        if differencing:
            self.table.set_partial_reader(self._sector_bitmap, self._partial_offset)
            self._bitmap_cache: dict[int, np.ndarray] = {}
        if self.table.block_count <= 1 << 16 or self.salvage:
            self.table.load_all()

    def _load_bat(self, first: int, count: int) -> np.ndarray:
        """Decode payload entries of blocks ``first .. first + count - 1``."""
        ratio = self.chunk_ratio
        i0 = vhdx_payload_index(first, ratio)
        i1 = vhdx_payload_index(first + count - 1, ratio)
        raw = self.source.read_exact(self.bat_offset + 8 * i0, 8 * (i1 - i0 + 1), "BAT")
        entries = np.frombuffer(raw, dtype="<u8")
        blocks = np.arange(first, first + count, dtype=np.int64)
        payload = entries[blocks + blocks // ratio - i0]
        codes = decode_vhdx_payload_entries(
            payload,
            first_block=first,
            bat_offset=self.bat_offset,
            block_size=self.payload_block_size,
            virtual_size=self.virtual_size,
            file_size=self.source.size,
            differencing=self.disk_type is DiskType.DIFFERENCING,
            min_data_offset=VHDX_HEADER_AREA_SIZE,
            ratio=ratio,
            allow_past_eof=True,
        )
        self._check_overlaps(codes, first)
        if self.disk_type is not DiskType.DIFFERENCING:
            self._note_lost(
                codes,
                first,
                self.source.size,
                lambda b: self.bat_offset + 8 * vhdx_payload_index(b, self.chunk_ratio),
            )
        return codes

    def _lost_totals(self, file_size: int) -> tuple[int, int]:
        """(bytes, blocks) of payload data past ``file_size``, over the whole BAT."""
        from .bat import LOAD_CHUNK_SHIFT, lost_ranges

        total = count = 0
        step = 1 << LOAD_CHUNK_SHIFT
        for first in range(0, self.table.block_count, step):
            n = min(step, self.table.block_count - first)
            ratio = self.chunk_ratio
            i0 = vhdx_payload_index(first, ratio)
            i1 = vhdx_payload_index(first + n - 1, ratio)
            raw = self.source.read_exact(self.bat_offset + 8 * i0, 8 * (i1 - i0 + 1), "BAT")
            entries = np.frombuffer(raw, dtype="<u8")
            blocks = np.arange(first, first + n, dtype=np.int64)
            codes = decode_vhdx_payload_entries(
                entries[blocks + blocks // ratio - i0],
                first_block=first,
                bat_offset=self.bat_offset,
                block_size=self.payload_block_size,
                virtual_size=self.virtual_size,
                file_size=file_size,
                differencing=False,
                min_data_offset=VHDX_HEADER_AREA_SIZE,
                ratio=ratio,
                allow_past_eof=True,
            )
            lost = lost_ranges(
                codes,
                first_block=first,
                block_size=self.payload_block_size,
                virtual_size=self.virtual_size,
                file_size=file_size,
            )
            total += sum(x[1] for x in lost)
            count += len(lost)
        return total, count

    # -- 2.5.1.2 sector bitmaps (differencing) -------------------------------------------

    def _raw_entry(self, index: int, what: str) -> int:
        off = self.bat_offset + 8 * index
        return int.from_bytes(self.source.read_exact(off, 8, what), "little")

    def _partial_offset(self, block: int) -> int:
        """File offset of a partially present block's data."""
        return self._raw_entry(vhdx_payload_index(block, self.chunk_ratio), "BAT") & (
            0xFFFFFFFFFFF00000
        )

    def _sector_bitmap(self, block: int) -> np.ndarray:
        """One bool per logical sector of ``block``: True if stored in this file.

        MS-VHDX 2.5.1.2 / 2.6: a 1 MiB sector bitmap block per chunk, one bit per
        sector, least significant bit first (SPEC-NOTES pitfall 17).
        """
        ratio = self.chunk_ratio
        chunk = block // ratio
        bits = self._bitmap_cache.get(chunk)
        if bits is None:
            index = vhdx_sector_bitmap_index(chunk, ratio)
            entry = self._raw_entry(index, "BAT")
            state = entry & 7
            offset = entry & 0xFFFFFFFFFFF00000
            where = {
                "structure": "BAT",
                "field": f"sector bitmap entry {chunk}",
                "offset": self.bat_offset + 8 * index,
            }
            if state != SectorBitmapState.PRESENT:
                raise InvalidImageError(
                    f"block {block} is partially present but its sector bitmap "
                    f"(chunk {chunk}) is not (state {state})",
                    **where,  # type: ignore[arg-type]
                )
            if offset < VHDX_HEADER_AREA_SIZE or offset + MiB > self.source.size:
                raise InvalidImageError(
                    f"sector bitmap of chunk {chunk} at {offset:#x} lies outside the file",
                    **where,  # type: ignore[arg-type]
                )
            bits = np.frombuffer(self.source.read_exact(offset, MiB, "sector bitmap"), np.uint8)
            if len(self._bitmap_cache) >= 8:
                self._bitmap_cache.pop(next(iter(self._bitmap_cache)))
            self._bitmap_cache[chunk] = bits
        per_block = self.payload_block_size // self.logical_sector_size  # a multiple of 8
        first = (block % ratio) * per_block // 8
        return np.unpackbits(bits[first : first + per_block // 8], bitorder="little").astype(bool)

    # -- parents (MS-VHDX 2.6.2.6) ----------------------------------------------------------

    def parent_locations(self) -> list[tuple[str, str]]:
        kv = self.parent_locator or {}
        return [
            (k, kv[k]) for k in ("relative_path", "volume_path", "absolute_win32_path") if kv.get(k)
        ]

    def identity_as_parent(self) -> str:
        return str(self.header["data_write_guid"])

    def parent_identity_matches(self, parent: FormatHandler) -> tuple[bool, str]:
        """parent_linkage (or parent_linkage2) must name the parent's DataWriteGuid."""
        want = parent.identity_as_parent().lower()
        kv = self.parent_locator or {}
        seen = []
        for key in ("parent_linkage", "parent_linkage2"):
            value = kv.get(key)
            if value is None:
                continue
            seen.append(f"{key} {value}")
            try:
                if str(uuid.UUID(value.strip().strip("{}"))) == want:
                    return True, ""
            except ValueError:
                continue
        return False, f"{'; '.join(seen) or 'no parent_linkage'} != parent DataWriteGuid {{{want}}}"

    def _check_overlaps(self, codes: np.ndarray, first: int) -> None:
        """Payload blocks may not overlap the log or a region (SPEC-NOTES pitfall 10)."""
        present = (codes >= 0) | (codes == CODE_PARTIAL)
        if not present.any():
            return
        offs = codes
        # two blocks sharing file space (checked within each decoded chunk)
        idx = np.flatnonzero(codes >= 0)
        order = np.argsort(codes[idx], kind="stable")
        sorted_offs = codes[idx][order]
        clash = np.flatnonzero(np.diff(sorted_offs) < self.payload_block_size)
        if clash.size:
            a, b = sorted(int(x) for x in idx[order][clash[0] : clash[0] + 2])
            raise InvalidImageError(
                f"payload blocks {first + a} and {first + b} overlap in the file at "
                f"{int(codes[b]):#x}",
                structure="BAT",
                field="FileOffsetMB",
                offset=self.bat_offset + 8 * vhdx_payload_index(first + b, self.chunk_ratio),
            )
        for start, length, what in self.reserved_spans:
            hit = (codes >= 0) & (offs < start + length) & (offs + self.payload_block_size > start)
            if hit.any():
                i = int(np.flatnonzero(hit)[0])
                raise InvalidImageError(
                    f"payload block {first + i} at {int(offs[i]):#x} overlaps the {what} "
                    f"at {start:#x}+{length:#x}",
                    structure="BAT",
                    field="FileOffsetMB",
                    offset=self.bat_offset + 8 * vhdx_payload_index(first + i, self.chunk_ratio),
                )

    # -- reporting -----------------------------------------------------------------------

    def parent_info(self) -> dict[str, Any] | None:
        if self.disk_type is not DiskType.DIFFERENCING:
            return None
        return {
            "locator-type": str(self.parent_locator_type),
            "locator": dict(self.parent_locator or {}),
        }

    def format_specific(self) -> dict[str, Any]:
        h = self.header
        d: dict[str, Any] = {
            "creator": self.creator,
            "header-copy": self.header_copy,
            "sequence-number": h["sequence_number"],
            "file-write-guid": str(h["file_write_guid"]),
            "data-write-guid": str(h["data_write_guid"]),
            "log-guid": str(h["log_guid"]),
            "log-offset": h["log_offset"],
            "log-length": h["log_length"],
            "log-replayed": self.log_replayed,
            "region-table-copy": self.region_table_copy,
            "regions": [e.to_dict() for e in self.regions.values()],
            "block-size": self.block_size,
            "leave-block-allocated": self.leave_block_allocated,
            "has-parent": self.has_parent,
            "chunk-ratio": self.chunk_ratio,
            "bat-entries": self.bat_entry_count,
            "page83-data": str(self.identifier) if self.identifier else None,
            "metadata-items": [m.to_dict() for m in self.metadata_order],
        }
        if self.log_state is not None:
            d["log-entries"] = len(self.log_state.entries)
            d["log-active-sequence"] = [e.sequence_number for e in self.log_state.active]
        if self.parent_locator is not None:
            d["parent-locator"] = dict(self.parent_locator)
        return d
