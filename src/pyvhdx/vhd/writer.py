"""Writes to VHD images, crash-consistent (spec "Block Allocation Table and Data
Blocks"; SPEC-NOTES pitfalls 17 and 18), and a differencing disk's new parent.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt

from ..bat import CODE_PARTIAL, BlockTable, shared_space
from ..constants import (
    VHD_BAT_UNUSED,
    VHD_DYNAMIC_HEADER_SIZE,
    VHD_SECTOR_SIZE,
    DiskType,
)
from ..errors import (
    InvalidArgumentError,
    InvalidImageError,
    TruncatedImageError,
    UnsupportedFeatureError,
)
from ..source import FileSource
from .layout import LOCATOR_ENCODINGS, LocatorEntry, bat_chunks, with_parent

__all__ = ["VHDWriter"]


class VHDWriter:
    """The write side of :class:`~pyvhdx.vhd.file.VHDFile` (which sets these attributes)."""

    source: FileSource
    writable: bool
    disk_type: DiskType
    table: BlockTable
    virtual_size: int
    block_size: int | None
    bitmap_size: int | None
    table_offset: int | None
    max_table_entries: int | None
    dynamic_header_offset: int | None
    parent_locators: list[LocatorEntry]
    parent_unique_id: uuid.UUID | None
    parent_name: str | None
    parent_reader: Any
    data_end: int
    footer_raw: bytes
    footer_offset: int
    footer_copy: str
    _differencing: bool

    def _init_writes(self) -> None:
        """The write state of a newly opened image."""
        self.bulk = False  # skip the ordering flushes (a temporary file); close flushes
        self._alloc_end: int | None = None  # where the next new block goes
        self._full_bitmaps: set[int] = set()  # blocks whose sector bitmap is all ones
        self._layout_checked = False  # block layout verified for writing (first write)

    # -- writes (spec "Block Allocation Table and Data Blocks") -----------------

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at virtual ``offset`` (spec "Block Allocation Table and Data
        Blocks"). New blocks go where the footer stands, so a crash leaves each
        sector old or new: 1. the footer moved past them, flush; 2. their bitmaps
        (all ones, pitfall 18) and the data, flush; 3. their BAT entries.
        """
        if self.disk_type is DiskType.FIXED:
            self.source.pwrite(data, offset)
            return
        if not self._layout_checked:
            self._check_layout_for_writing()
        if self.disk_type is DiskType.DIFFERENCING:
            self._write_differencing(offset, data)
            return
        assert self.block_size is not None and self.bitmap_size is not None
        table = self.table
        shift = table.block_shift
        end = offset + len(data)
        first = offset >> shift
        codes = table.codes(first, ((end - 1) >> shift) + 1).copy()
        new_blocks = [first + i for i, code in enumerate(codes.tolist()) if code < 0]
        placed: dict[int, int] = {}
        if new_blocks:
            placed = self._place(new_blocks)  # step 1
            ones = b"\xff" * self.bitmap_size
            for block, pos in placed.items():
                self.source.pwrite(ones, pos)
                codes[block - first] = pos + self.bitmap_size
        pos = offset
        while pos < end:
            block = pos >> shift
            stop = min(end, (block + 1) << shift)
            data_offset = int(codes[block - first])
            self.source.pwrite(
                data[pos - offset : stop - offset], data_offset + (pos & table.block_mask)
            )
            if block not in placed:
                self._set_bitmap_bits(
                    block, data_offset, pos & table.block_mask, stop - (block << shift)
                )
            pos = stop
        if placed:
            self._sync()
            self._write_bat_entries(placed)  # step 3
            for block, pos in placed.items():
                table.set_code(block, pos + self.bitmap_size)
                self._full_bitmaps.add(block)

    def _check_layout_for_writing(self) -> None:
        """Refuse (InvalidImageError) to write into an image whose blocks share file
        space with each other or the metadata (spec "Block Allocation Table").
        """
        assert self.table_offset is not None and self.block_size is not None
        assert self.bitmap_size is not None and self.dynamic_header_offset is not None
        assert self.max_table_entries is not None
        blocks, starts = self._used_blocks()
        inside = np.minimum(self.block_size, self.virtual_size - blocks * self.block_size)
        ends = starts + self.bitmap_size + np.maximum(inside, 0)
        reserved = [
            (self.dynamic_header_offset, VHD_DYNAMIC_HEADER_SIZE, "dynamic header"),
            (self.table_offset, 4 * self.max_table_entries, "BAT"),
            (self.data_end, VHD_SECTOR_SIZE, "footer"),
            (0, VHD_SECTOR_SIZE, "footer copy"),
        ]
        for loc in self.parent_locators:
            if loc.data_length:
                reserved.append((loc.data_offset, loc.data_length, "parent locator data"))

        found = shared_space(starts, ends, reserved, file_end=self.data_end)
        if found is not None:
            i, mate, what = found
            if mate is not None:
                what = f"block {int(blocks[mate])} at {int(starts[mate]):#x}"
            block = int(blocks[i])
            raise InvalidImageError(
                f"block {block} at {int(starts[i]):#x} shares file space with {what}; "
                "writing into this image would change both (pyvhdx check reports it)",
                structure="VHD BAT",
                field=f"BAT[{block}]",
                offset=self.table_offset + 4 * block,
            )
        self._layout_checked = True

    def _sync(self) -> None:
        if not self.bulk:
            self.source.flush()

    def _place(self, blocks: list[int]) -> dict[int, int]:
        """Each new block's file offset (of its bitmap), the footer moved past them
        (flushed); UnsupportedFeatureError past the 2 TiB u32 BAT entries address.
        """
        assert self.block_size is not None and self.bitmap_size is not None
        if self._alloc_end is None:
            # After the footer, the BAT, and every block (a last block may reach
            # past the footer, its tail being outside the disk).
            assert self.table_offset is not None and self.max_table_entries is not None
            assert self.dynamic_header_offset is not None
            last = 0
            if self._differencing:  # the end of the furthest block the BAT points at
                starts = self._used_blocks()[1]
                if starts.size:
                    last = int(starts.max()) + self.bitmap_size + self.block_size
            for _first, codes in self.table.iter_chunks():
                used = codes[codes >= 0]
                if used.size:
                    last = max(last, int(used.max()) + self.block_size)
            self._alloc_end = max(
                self.data_end,
                last,
                self.table_offset + 4 * self.max_table_entries,
                self.dynamic_header_offset + VHD_DYNAMIC_HEADER_SIZE,
            )
        start = -(-self._alloc_end // VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE
        stride = self.bitmap_size + self.block_size
        new_end = start + len(blocks) * stride
        if (new_end - stride) // VHD_SECTOR_SIZE >= VHD_BAT_UNUSED:
            raise UnsupportedFeatureError(
                f"a new block at {new_end - stride:#x} would lie beyond the 2 TiB that VHD "
                "BAT entries (u32 sector numbers) address",
                structure="VHD BAT",
                offset=self.table_offset,
            )
        self.source.pwrite(self.footer_raw, new_end)
        self._sync()
        self.data_end = self.footer_offset = self._alloc_end = new_end
        self.footer_copy = "end"
        return {block: start + k * stride for k, block in enumerate(blocks)}

    def _used_blocks(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(block, file offset of its bitmap)`` of every allocated BAT entry, from
        the raw entries (a differencing disk's block codes do not hold offsets).
        """
        assert self.table_offset is not None
        parts_i: list[npt.NDArray[np.int64]] = [np.zeros(0, np.int64)]
        parts_s: list[npt.NDArray[np.int64]] = [np.zeros(0, np.int64)]
        for first, raw in bat_chunks(self.source, self.table_offset, self.table.block_count):
            idx = np.flatnonzero(raw != np.uint32(VHD_BAT_UNUSED))
            parts_i.append(idx.astype(np.int64) + first)
            parts_s.append(raw[idx].astype(np.int64) * VHD_SECTOR_SIZE)
        return np.concatenate(parts_i), np.concatenate(parts_s)

    # -- differencing writes (spec "Block Allocation Table and Data Blocks",
    #    sector bitmap; SPEC-NOTES pitfalls 17 and 18) ------------------------------

    def _write_differencing(self, offset: int, data: memoryview) -> None:
        """Write into a differencing disk, marking exactly the sectors written in the
        block's bitmap (spec "Block Allocation Table and Data Blocks"; pitfalls 17,
        18); partial sectors take the rest from the parent. Order: 1. new blocks
        placed (:meth:`_place`); 2. data and new bitmaps, flush; 3. allocated
        blocks' new bits; 4. new BAT entries.
        """
        assert self.table_offset is not None
        shift = self.table.block_shift
        end = offset + len(data)
        first, last = offset >> shift, (end - 1) >> shift
        raw = self.source.read_exact(
            self.table_offset + 4 * first, 4 * (last - first + 1), "VHD BAT"
        )
        entries = np.frombuffer(raw, dtype=">u4").astype(np.int64).tolist()
        new_blocks = [first + i for i, e in enumerate(entries) if e == VHD_BAT_UNUSED]
        placed = self._place(new_blocks) if new_blocks else {}  # step 1
        bitmap_updates: list[tuple[int, bytes]] = []
        full: list[int] = []
        for block in range(first, last + 1):
            new = block in placed
            bitmap_offset = placed[block] if new else entries[block - first] * VHD_SECTOR_SIZE
            update, all_ones = self._write_into_block(block, offset, data, bitmap_offset, new)
            bitmap_updates += update
            if all_ones:
                full.append(block)
        if not placed and not bitmap_updates:
            return  # in place only: nothing to expose
        self._sync()  # end of step 2
        for pos, packed in bitmap_updates:  # step 3
            self.source.pwrite(packed, pos)
        if placed:
            self._write_bat_entries(placed)  # step 4
            for block in placed:
                self.table.set_code(block, CODE_PARTIAL)
        self._full_bitmaps.update(full)

    def _write_into_block(
        self, block: int, offset: int, data: memoryview, bitmap_offset: int, new: bool
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """Step 2 of :meth:`_write_differencing` for one block; returns the bitmap bytes
        still to set (step 3) and whether its bitmap is all ones now.
        """
        assert self.block_size is not None and self.bitmap_size is not None
        base = block << self.table.block_shift
        lo = max(offset, base) - base
        hi = min(offset + len(data), base + self.block_size) - base
        bits: npt.NDArray[np.bool_] | None
        if new:
            bits = np.zeros(self.block_size // VHD_SECTOR_SIZE, dtype=bool)
        else:
            bits = None if block in self._full_bitmaps else self._read_bits(bitmap_offset)
        piece = data[base + lo - offset : base + hi - offset]
        self._write_sectors(block, lo, hi, piece, bitmap_offset + self.bitmap_size, bits)
        if bits is None:
            return [], False  # every sector of the block is stored here already
        s0, s1 = lo // VHD_SECTOR_SIZE, -(-hi // VHD_SECTOR_SIZE)
        updates: list[tuple[int, bytes]] = []
        if new:
            bits[s0:s1] = True
            self.source.pwrite(self._pack_bits(bits), bitmap_offset)
        else:
            updates = _set_bits(bits, bitmap_offset, s0, s1)
        return updates, bool(bits.all())

    def _write_sectors(
        self,
        block: int,
        lo: int,
        hi: int,
        piece: memoryview,
        data_offset: int,
        bits: npt.NDArray[np.bool_] | None,
    ) -> None:
        """Write ``piece``, bytes ``[lo, hi)`` of ``block``, as whole sectors."""
        s0, s1 = lo // VHD_SECTOR_SIZE, -(-hi // VHD_SECTOR_SIZE)
        head, tail = lo - s0 * VHD_SECTOR_SIZE, s1 * VHD_SECTOR_SIZE - hi
        if not (head or tail):
            self.source.pwrite(piece, data_offset + lo)
            return
        buf = bytearray((s1 - s0) * VHD_SECTOR_SIZE)
        edges = ({s0} if head else set()) | ({s1 - 1} if tail else set())
        for s in edges:
            self._read_sector(block, s, data_offset, bits, buf, s - s0)
        buf[head : head + len(piece)] = piece
        self.source.pwrite(buf, data_offset + s0 * VHD_SECTOR_SIZE)

    def _read_bits(self, bitmap_offset: int) -> npt.NDArray[np.bool_]:
        """The sector bitmap at ``bitmap_offset``: one bool per sector (MSB first)."""
        assert self.block_size is not None
        count = self.block_size // VHD_SECTOR_SIZE
        raw = self.source.read_exact(bitmap_offset, -(-count // 8), "VHD sector bitmap")
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="big")
        return bits[:count].astype(bool)

    def _pack_bits(self, bits: npt.NDArray[np.bool_]) -> bytes:
        """A whole sector bitmap (MSB first), padded with zeros to its 512-byte size."""
        assert self.bitmap_size is not None
        packed = np.packbits(bits, bitorder="big").tobytes()
        return packed + bytes(self.bitmap_size - len(packed))

    def _read_sector(
        self,
        block: int,
        sector: int,
        data_offset: int,
        bits: npt.NDArray[np.bool_] | None,
        buf: bytearray,
        index: int,
    ) -> None:
        """Sector ``sector`` of ``block`` as it reads now, into sector ``index`` of ``buf``."""
        out = memoryview(buf)[index * VHD_SECTOR_SIZE : (index + 1) * VHD_SECTOR_SIZE]
        if bits is None or bits[sector]:
            got = self.source.readinto(out, data_offset + sector * VHD_SECTOR_SIZE)
            if got != VHD_SECTOR_SIZE:
                raise TruncatedImageError(
                    f"file ends inside sector {sector} of block {block}",
                    structure="data block",
                    offset=data_offset + sector * VHD_SECTOR_SIZE,
                )
            return
        if self.parent_reader is None:
            raise UnsupportedFeatureError(
                "a write that covers part of a sector stored in the parent needs the parent open",
                structure="VHD dynamic header",
                field="ParentUniqueId",
            )
        assert self.block_size is not None
        self.parent_reader((block << self.table.block_shift) + sector * VHD_SECTOR_SIZE, out)

    def _write_bat_entries(self, placed: dict[int, int]) -> None:
        """Point the BAT entries of ``placed`` blocks at them, one write per BAT sector."""
        assert self.table_offset is not None
        by_sector: dict[int, list[tuple[int, int]]] = {}
        for block, pos in sorted(placed.items()):
            entry = self.table_offset + 4 * block
            by_sector.setdefault(entry // VHD_SECTOR_SIZE, []).append(
                (entry, pos // VHD_SECTOR_SIZE)
            )
        for entries in by_sector.values():
            lo, hi = entries[0][0], entries[-1][0] + 4
            span = bytearray(self.source.read_exact(lo, hi - lo, "VHD BAT"))
            for entry, sector in entries:
                span[entry - lo : entry - lo + 4] = sector.to_bytes(4, "big")
            self.source.pwrite(span, lo)

    def _set_bitmap_bits(self, block: int, data_offset: int, lo: int, hi: int) -> None:
        """Mark bytes ``[lo, hi)`` of ``block`` present in its bitmap (pitfall 17)."""
        if block in self._full_bitmaps:
            return
        assert self.bitmap_size is not None
        bitmap_offset = data_offset - self.bitmap_size
        bits = self._read_bits(bitmap_offset)
        s0, s1 = lo // VHD_SECTOR_SIZE, -(-hi // VHD_SECTOR_SIZE)
        for pos, packed in _set_bits(bits, bitmap_offset, s0, s1):
            self.source.pwrite(packed, pos)
        if bits.all():
            self._full_bitmaps.add(block)

    def set_parent(
        self, *, unique_id: uuid.UUID, time_stamp: int, name: str, paths: dict[str, str]
    ) -> None:
        """Point this differencing VHD at another parent (spec "Dynamic Disk Header"):
        ``paths`` (by locator code) replace the paths in place, then the header is
        rewritten in one write. InvalidArgumentError before any write if it cannot.
        """
        if not self.writable or self.disk_type is not DiskType.DIFFERENCING:
            raise InvalidArgumentError(f"{self.source.name} is not a writable differencing VHD")
        assert self.dynamic_header_offset is not None
        hdr_off = self.dynamic_header_offset
        new = {loc.index: self._new_locator_data(loc, paths) for loc in self.parent_locators}
        changed = {i: raw for i, raw in new.items() if raw is not None}
        header = self.source.read_exact(hdr_off, VHD_DYNAMIC_HEADER_SIZE, "VHD dynamic header")
        for loc in self.parent_locators:
            if loc.index in changed:
                raw = changed[loc.index]
                self.source.pwrite(raw + bytes(self._room(loc) - len(raw)), loc.data_offset)
        self.source.flush()
        lengths = {i: len(raw) for i, raw in changed.items()}
        header = with_parent(
            header, unique_id=unique_id, time_stamp=time_stamp, name=name, lengths=lengths
        )
        self.source.pwrite(header, hdr_off)
        self.source.flush()
        self.parent_unique_id = unique_id
        self.parent_name = name
        self.parent_locators = [
            dataclasses.replace(loc, data_length=lengths[loc.index], data=changed[loc.index])
            if loc.index in changed
            else loc
            for loc in self.parent_locators
        ]

    def check_parent_paths(self, paths: dict[str, str]) -> None:
        """Raise now, writing nothing, if :meth:`set_parent` could not store ``paths``."""
        for loc in self.parent_locators:
            self._new_locator_data(loc, paths)

    def _room(self, loc: LocatorEntry) -> int:
        """Bytes of the data area a new path for ``loc`` may take in place."""
        return 0 if loc.problem is not None else min(loc.room, self.data_end - loc.data_offset)

    def _new_locator_data(self, loc: LocatorEntry, paths: dict[str, str]) -> bytes | None:
        """The new path of ``loc`` as stored (None if none), checked to fit its room."""
        text = paths.get(loc.platform_code)
        encoding = LOCATOR_ENCODINGS.get(loc.platform_code)
        if text is None or encoding is None:
            return None
        raw = text.encode(encoding, errors="surrogatepass")
        room = self._room(loc)
        if len(raw) > room:
            raise InvalidArgumentError(
                f"{self.source.name}: the new parent path ({len(raw)} bytes) does not fit "
                f"in the {room} bytes locator entry {loc.index} ({loc.platform_code}) "
                "reserves",
                offset=loc.entry_offset,
            )
        return raw

    def close(self) -> None:
        """Flush (when writable) and release the file."""
        try:
            if self.writable:
                self.source.flush()
        finally:
            self.source.close()


def _set_bits(
    bits: npt.NDArray[np.bool_], bitmap_offset: int, s0: int, s1: int
) -> list[tuple[int, bytes]]:
    """Set sectors ``[s0, s1)`` of the bitmap at ``bitmap_offset``; the bytes to write."""
    if bits[s0:s1].all():
        return []
    bits[s0:s1] = True
    b0, b1 = s0 // 8, (s1 - 1) // 8 + 1
    return [(bitmap_offset + b0, np.packbits(bits[8 * b0 : 8 * b1], bitorder="big").tobytes())]
