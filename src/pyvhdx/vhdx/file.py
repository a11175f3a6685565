"""VHDX images, read side (MS-VHDX 2.2-2.6): :mod:`pyvhdx.vhdx.layout` reads each copy,
this module chooses the copy that counts, decides what is fatal, replays the log (2.3)
in memory and maps the BAT (2.5); every offset is checked before use.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import constants as K
from ..base import FormatHandler
from ..bat import (
    CODE_PARTIAL,
    LOAD_CHUNK_SHIFT,
    BlockTable,
    chunk_ratio,
    decode_vhdx_payload_entries,
    first_true,
    lost_totals,
    vhdx_bat_entry_count,
    vhdx_entry_error,
    vhdx_payload_index,
    vhdx_sector_bitmap_index,
)
from ..constants import DiskType, ImageFormat, MiB, SectorBitmapState
from ..errors import (
    ChecksumError,
    InvalidImageError,
    TruncatedImageError,
    UnsupportedFeatureError,
)
from ..info import Problem
from .layout import (
    Defect,
    MetadataItem,
    RegionEntry,
    RegionTableCopy,
    header_field_error,
    parse_file_parameters,
    parse_parent_locator,
    read_file_identifier,
    read_header,
    read_metadata_table,
    read_region_table,
)
from .writer import _VHDXWriter

if TYPE_CHECKING:
    from ..log import LogState

__all__ = ["VHDXFile"]


class VHDXFile(_VHDXWriter, FormatHandler):
    """A VHDX image (MS-VHDX); ``strict`` refuses any defect, even one a good copy hides.

    Raises InvalidImageError (ChecksumError, TruncatedImageError), UnsupportedFeatureError
    (an unknown required region or item) or LogReplayError.
    """

    supports_write = True

    def _load(self) -> None:
        """Open the image (the constructor's arguments are FormatHandler's)."""
        self.format = ImageFormat.VHDX
        self.file_size = self.source.physical_size
        self._read_file_identifier()
        self.header = self._choose_header()
        self.log_state: LogState | None = None
        self._replay_log()
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
        if self.writable:
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
        ident = read_file_identifier(self.source)
        self.creator = ident.creator
        for d in ident.defects:
            if d.code == "truncated":
                raise TruncatedImageError(
                    f"file ends at {self.source.size:#x}, before the end of the VHDX file "
                    "identifier",
                    structure="VHDX file identifier",
                    offset=0,
                )
            self._problem(d.structure, d.message, d.offset, d.field)

    # -- 2.2.2 headers -------------------------------------------------------------

    def _choose_header(self) -> dict[str, Any]:
        """The current header: the valid one with the larger SequenceNumber (2.2.2.1)."""
        self.headers = [read_header(self.source, i) for i in (1, 2)]
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
            if not any(h.signature_valid for h in self.headers):
                raise InvalidImageError(
                    message, structure="header", field="Signature", offset=first.offset
                )
            raise ChecksumError(message, structure="header", field="Checksum", offset=first.offset)
        # Equal sequence numbers (Disk2vhd writes two identical headers): take header 1.
        best = max(valid, key=lambda h: (h.fields["sequence_number"] if h.fields else 0, -h.index))
        self.header_copy = best.index
        header: dict[str, Any] | None = best.fields
        assert header is not None
        self._validate_header_fields(header, best.offset)
        return header

    def _validate_header_fields(self, h: dict[str, Any], offset: int) -> None:
        if h["log_version"] != 0:
            raise header_field_error(
                f"log version {h['log_version']} (only 0 is defined)",
                self.header_copy or 1,
                "LogVersion",
                UnsupportedFeatureError,
            )
        start, length, size = h["log_offset"], h["log_length"], self.source.size
        wrong = None
        if length % K.VHDX_ALIGNMENT or start % K.VHDX_ALIGNMENT:
            wrong = "is not 1 MiB aligned"
        elif length and (start < K.VHDX_HEADER_AREA_SIZE or start + length > size):
            wrong = f"lies outside the {size:#x}-byte file"
        if wrong is not None:
            raise InvalidImageError(
                f"log at {start:#x}+{length:#x} {wrong}",
                structure=f"header {self.header_copy}",
                field="LogOffset",
                offset=offset,
            )

    # -- 2.3 log ---------------------------------------------------------------------

    def _replay_log(self) -> None:
        h = self.header
        if h["log_guid"] == K.NIL_GUID:
            return
        if h["log_length"] == 0:
            raise header_field_error(
                "the header names a log (LogGuid is set) but the log has no length",
                self.header_copy or 1,
                "LogLength",
            )
        from ..log import load_log, replay_in_memory

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

    def _choose_region_table(self) -> dict[uuid.UUID, RegionEntry]:
        """The first valid region table; its entries checked against each other."""
        self.region_tables = [read_region_table(self.source, i) for i in (1, 2)]
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
            self._check_region(table, i, e, regions, spans)
            spans.append((e.file_offset, e.length, e.name))
            regions[e.guid] = e
        for guid in (K.REGION_BAT, K.REGION_METADATA):
            if guid not in regions:
                raise InvalidImageError(
                    f"the region table has no {K.KNOWN_REGIONS[guid]} region",
                    structure=f"region table {table.index}",
                    offset=table.offset,
                )
        self.reserved_spans = spans
        return regions

    def _check_region(
        self,
        table: RegionTableCopy,
        i: int,
        e: RegionEntry,
        regions: dict[uuid.UUID, RegionEntry],
        spans: list[tuple[int, int, str]],
    ) -> None:
        """Raise if entry ``i`` is unusable: a duplicate, unknown and required, misplaced."""
        where: dict[str, Any] = {
            "structure": f"region table {table.index} entry {i} ({e.name})",
            "offset": e.entry_offset,
        }
        if e.guid in regions:
            raise InvalidImageError(f"region {e.guid} appears twice", field="Guid", **where)
        if e.guid not in K.KNOWN_REGIONS:
            if e.required:
                raise UnsupportedFeatureError(
                    f"unknown required region {e.guid}", field="Required", **where
                )
            self._problem(where["structure"], f"unknown optional region {e.guid} ignored")
        start, end, size = e.file_offset, e.file_offset + e.length, self.source.data_size
        overlap = next((what for s, ln, what in spans if start < s + ln and s < end), None)
        wrong, field = None, "FileOffset"
        aligned = not (start % K.VHDX_ALIGNMENT or e.length % K.VHDX_ALIGNMENT)
        if not aligned or e.length == 0 or start < K.VHDX_HEADER_AREA_SIZE:
            wrong = "is not 1 MiB aligned or lies in the header area"
        elif end > size:  # not source.size: a log replay may extend the file with zeros far out
            wrong = f"lies beyond the end of the {size:#x} bytes of the file (and its log)"
            field = "Length"
        elif overlap is not None:
            wrong = f"overlaps the {overlap}"
        if wrong is not None:
            message = f"region at {start:#x}+{e.length:#x} {wrong}"
            raise InvalidImageError(message, field=field, **where)

    # -- 2.6 metadata -------------------------------------------------------------------

    def _read_metadata(self) -> None:
        region = self.regions[K.REGION_METADATA]
        table = read_metadata_table(self.source, region.file_offset, region.length)
        for d in table.defects:
            self._raise_defect(d, d.offset)
        for item in table.items:
            for d in item.defects:
                if d.code != "overlap":  # the reader is not confused by shared bytes
                    self._raise_defect(d, item.entry_offset)
        self.metadata_order: list[MetadataItem] = table.items
        self.metadata: dict[uuid.UUID, MetadataItem] = dict(table.known)
        self._decode_metadata()

    def _raise_defect(self, d: Defect, offset: int | None) -> None:
        """A defect of the metadata table or an item (at ``offset``) is fatal for a reader."""
        if d.code == "truncated":
            raise TruncatedImageError(
                f"file ends at {self.source.size:#x}, before the end of {d.structure}",
                structure=d.structure,
                offset=d.offset,
            )
        cls = UnsupportedFeatureError if d.code == "unknown-required" else InvalidImageError
        raise d.error(cls, offset=offset)

    def _item(self, guid: uuid.UUID, size: int | None) -> MetadataItem:
        item = self.metadata.get(guid)
        name = K.KNOWN_METADATA[guid]
        base = self.regions[K.REGION_METADATA].file_offset
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
        base = self.regions[K.REGION_METADATA].file_offset
        fp_item = self._item(K.META_FILE_PARAMETERS, 8)
        fp = parse_file_parameters(fp_item.data, base)

        def where(item: MetadataItem, field: str) -> dict[str, Any]:
            return {
                "structure": f"metadata item {item.name}",
                "field": field,
                "offset": base + item.offset,
            }

        bs = fp.block_size
        if not (K.VHDX_MIN_BLOCK_SIZE <= bs <= K.VHDX_MAX_BLOCK_SIZE and bs.bit_count() == 1):
            raise InvalidImageError(
                f"block size {fp.block_size} is not a power of two from 1 to 256 MiB",
                **where(fp_item, "BlockSize"),
            )
        self.block_size = self.payload_block_size = fp.block_size
        self.leave_block_allocated = fp.leave_block_allocated
        self.has_parent = fp.has_parent

        vs_item = self._item(K.META_VIRTUAL_DISK_SIZE, 8)
        ls_item = self._item(K.META_LOGICAL_SECTOR_SIZE, 4)
        ps_item = self._item(K.META_PHYSICAL_SECTOR_SIZE, 4)
        self.logical_sector_size = int.from_bytes(ls_item.data[:4], "little")
        self.physical_sector_size = int.from_bytes(ps_item.data[:4], "little")
        for item, value, fld in (
            (ls_item, self.logical_sector_size, "LogicalSectorSize"),
            (ps_item, self.physical_sector_size, "PhysicalSectorSize"),
        ):
            if value not in K.VHDX_SECTOR_SIZES:
                raise InvalidImageError(
                    f"sector size {value} is not 512 or 4096", **where(item, fld)
                )
        self.virtual_size = int.from_bytes(vs_item.data[:8], "little")
        if (
            self.virtual_size == 0
            or self.virtual_size > K.VHDX_MAX_VIRTUAL_SIZE
            or self.virtual_size % self.logical_sector_size
        ):
            raise InvalidImageError(
                f"virtual size {self.virtual_size} is not a multiple of the "
                f"{self.logical_sector_size}-byte sector from 1 sector to 64 TiB",
                **where(vs_item, "VirtualDiskSize"),
            )
        p83 = self.metadata.get(K.META_PAGE83_DATA)
        if p83 is not None and p83.length >= 16:
            self.identifier = uuid.UUID(bytes_le=p83.data[:16])
        else:
            self.identifier = None
            self._problem("metadata", "Page 83 Data item is missing", base)

        self.parent_locator: dict[str, str] | None = None
        self.parent_locator_type: uuid.UUID | None = None
        if self.has_parent:
            self.disk_type = DiskType.DIFFERENCING
            self._decode_parent_locator(self._item(K.META_PARENT_LOCATOR, 20))
        elif self.leave_block_allocated:
            self.disk_type = DiskType.FIXED
        else:
            self.disk_type = DiskType.DYNAMIC

    def _decode_parent_locator(self, item: MetadataItem) -> None:
        """MS-VHDX 2.6.2.6: key/value offsets are relative to the locator item."""
        offset = self.regions[K.REGION_METADATA].file_offset + item.offset
        loc = parse_parent_locator(item.data, offset)
        self.parent_locator_type = loc.locator_type
        for d in loc.defects:
            if d.code in ("too-short", "key-value-count", "text"):
                raise d.error()
            if d.code in ("type", "no-linkage"):
                self._problem("parent locator", d.message, offset)
        self.parent_locator = loc.values

    # -- 2.5 BAT -------------------------------------------------------------------------

    def _setup_bat(self) -> None:
        region = self.regions[K.REGION_BAT]
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
        differencing = self.disk_type is DiskType.DIFFERENCING
        codes = self._decode_payload(first, count, self.source.size, differencing)
        self._check_overlaps(codes, first)
        if not differencing:
            self._note_lost(
                codes,
                first,
                self.source.size,
                lambda b: self.bat_offset + 8 * vhdx_payload_index(b, self.chunk_ratio),
            )
        return codes

    def _decode_payload(
        self, first: int, count: int, file_size: int, differencing: bool
    ) -> np.ndarray:
        """Block codes of the payload entries of blocks ``first .. first + count - 1``."""
        ratio = self.chunk_ratio
        i0 = vhdx_payload_index(first, ratio)
        i1 = vhdx_payload_index(first + count - 1, ratio)
        raw = self.source.read_exact(self.bat_offset + 8 * i0, 8 * (i1 - i0 + 1), "BAT")
        entries = np.frombuffer(raw, dtype="<u8")
        blocks = np.arange(first, first + count, dtype=np.int64)
        return decode_vhdx_payload_entries(
            entries[blocks + blocks // ratio - i0],
            first_block=first,
            bat_offset=self.bat_offset,
            block_size=self.payload_block_size,
            virtual_size=self.virtual_size,
            file_size=file_size,
            differencing=differencing,
            min_data_offset=K.VHDX_HEADER_AREA_SIZE,
            ratio=ratio,
            allow_past_eof=True,
        )

    def _lost_totals(self, file_size: int) -> tuple[int, int]:
        """(bytes, blocks) of payload data past ``file_size``, over the whole BAT."""
        step = 1 << LOAD_CHUNK_SHIFT
        blocks = self.table.block_count
        chunks = (
            (first, self._decode_payload(first, min(step, blocks - first), file_size, False))
            for first in range(0, blocks, step)
        )
        return lost_totals(
            chunks,
            block_size=self.payload_block_size,
            virtual_size=self.virtual_size,
            file_size=file_size,
        )

    # -- 2.5.1.2 sector bitmaps (differencing) -------------------------------------------

    def _raw_entry(self, index: int, what: str) -> int:
        off = self.bat_offset + 8 * index
        return int.from_bytes(self.source.read_exact(off, 8, what), "little")

    def _partial_offset(self, block: int) -> int:
        """File offset of a partially present block's data."""
        entry = self._raw_entry(vhdx_payload_index(block, self.chunk_ratio), "BAT")
        return entry & K.VHDX_BAT_OFFSET_MASK

    def _sector_bitmap(self, block: int) -> np.ndarray:
        """Per logical sector of ``block``: stored in this file (MS-VHDX 2.5.1.2, LSB first)."""
        ratio = self.chunk_ratio
        chunk = block // ratio
        bits = self._bitmap_cache.get(chunk)
        if bits is None:
            index = vhdx_sector_bitmap_index(chunk, ratio)
            entry = self._raw_entry(index, "BAT")
            state = entry & K.VHDX_BAT_STATE_MASK
            offset = entry & K.VHDX_BAT_OFFSET_MASK
            wrong = None
            if state != SectorBitmapState.PRESENT:
                wrong = (
                    f"block {block} is partially present but its sector bitmap "
                    f"(chunk {chunk}) is not (state {state})"
                )
            elif offset < K.VHDX_HEADER_AREA_SIZE or offset + MiB > self.source.size:
                wrong = f"sector bitmap of chunk {chunk} at {offset:#x} lies outside the file"
            if wrong is not None:
                field, at = f"sector bitmap entry {chunk}", self.bat_offset + 8 * index
                raise InvalidImageError(wrong, structure="BAT", field=field, offset=at)
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
        """Payload blocks may not overlap each other, the log or a region (SPEC-NOTES
        pitfall 10)."""
        found = self._first_overlap(codes, first)
        if found is not None:
            block, message = found
            raise vhdx_entry_error(
                message, bat_offset=self.bat_offset, block=block, ratio=self.chunk_ratio
            )

    def _first_overlap(self, codes: np.ndarray, first: int) -> tuple[int, str] | None:
        """The first block of ``codes`` (block ``first`` on) that overlaps another
        block of them, the log or a region, and what it overlaps."""
        present = (codes >= 0) | (codes == CODE_PARTIAL)
        if not present.any():
            return None
        # two blocks sharing file space (checked within each decoded chunk)
        idx = np.flatnonzero(codes >= 0)
        order = np.argsort(codes[idx], kind="stable")
        clash = np.flatnonzero(np.diff(codes[idx][order]) < self.payload_block_size)
        if clash.size:
            a, b = sorted(int(x) for x in idx[order][clash[0] : clash[0] + 2])
            return first + b, (
                f"payload blocks {first + a} and {first + b} overlap in the file at "
                f"{int(codes[b]):#x}"
            )
        for start, length, what in self.reserved_spans:
            hit = (
                (codes >= 0) & (codes < start + length) & (codes + self.payload_block_size > start)
            )
            if (i := first_true(hit)) is not None:
                return first + i, (
                    f"payload block {first + i} at {int(codes[i]):#x} overlaps the {what} "
                    f"at {start:#x}+{length:#x}"
                )
        return None

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
