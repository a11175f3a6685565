"""Writes to VHD images (spec "Block Allocation Table and Data Blocks"; SPEC-NOTES
pitfalls 17 and 18).

:class:`VHDWriter` is the write side of :class:`~pyvhdx.vhd.file.VHDFile`: fixed
disks are written in place; dynamic and differencing disks in place, or into
blocks allocated where the footer stands, in an order that leaves a valid image
after a crash at any point (:meth:`VHDWriter.write_at`; for differencing disks,
with per-sector bitmaps, :meth:`VHDWriter._write_differencing`). It also points a
differencing disk at another parent (:meth:`VHDWriter.set_parent`).
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
    """The write side of a VHD handler (mixed into :class:`~pyvhdx.vhd.file.VHDFile`,
    which sets the attributes declared here when it opens the image).
    """

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
        #: Skip the flushes that order writes for crash consistency (for a
        #: temporary file, as ``convert`` writes); close still flushes.
        self.bulk = False
        self._alloc_end: int | None = None  # where the next new block goes
        self._full_bitmaps: set[int] = set()  # blocks whose sector bitmap is all ones
        self._layout_checked = False  # block layout verified for writing (first write)

    # -- writes (spec "Block Allocation Table and Data Blocks") -----------------

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at virtual ``offset`` (checked by ``DiskImage`` to lie
        inside the disk).

        A fixed disk is written in place. In a dynamic disk, a write into an
        allocated block goes in place, after which the written sectors' bits of
        the block's sector bitmap are set if they were not. Unallocated blocks
        touched by the write are allocated where the footer stands (or after the
        last block, if that is further), in this order, so that a crash at any
        point leaves an image every reader opens with each sector old or new:

        1. the footer, unchanged, at the new end of the file; flush. The old
           footer still stands, so the file ends with a valid footer throughout;
        2. each new block's sector bitmap, all ones as QEMU writes it (right for
           a dynamic disk, SPEC-NOTES pitfall 18), the first one over the old
           footer; then the data, the rest of each new block reading as zeros
           (it lies past the old end of the file); flush;
        3. the BAT entries of the new blocks, one read-modify-write per BAT
           sector. Until then the new blocks are unreferenced space that
           readers (QEMU included) skip; the footer copy at offset 0 never
           changes.

        A write whose new blocks' BAT entries share one 512-byte BAT sector, and
        that touches no allocated block, is all-or-nothing; others are so per
        block.

        A differencing disk keeps its sector bitmaps exact and its parent's data
        under partial sectors: see :meth:`_write_differencing`.
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
        """Refuse to write into an image whose blocks share file space.

        Reading such an image is allowed (``check`` reports it), but a write into
        a block that overlaps another block or the metadata (the footer copy at
        offset 0, the dynamic header, the BAT, parent locator data, the footer)
        would change that too. Run once, before the first write of a session,
        over the raw BAT entries (block bitmap plus the part of the data inside
        the disk).

        Raises:
            InvalidImageError: naming the BAT entry of the first such block.
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
        """Choose where ``blocks`` go, move the footer past them (flushed) and
        return each block's file offset (of its bitmap).

        Raises:
            UnsupportedFeatureError: the blocks would lie beyond the 2 TiB that
                the BAT's u32 sector numbers address.
        """
        assert self.block_size is not None and self.bitmap_size is not None
        if self._alloc_end is None:
            # After the footer, the BAT, and every block (a last block may reach
            # past the footer, its tail being outside the disk).
            assert self.table_offset is not None and self.max_table_entries is not None
            assert self.dynamic_header_offset is not None
            last = 0
            if self._differencing:
                last = self._blocks_end()
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
        self.data_end = new_end
        self.footer_offset = new_end
        self.footer_copy = "end"
        self._alloc_end = new_end
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

    def _blocks_end(self) -> int:
        """End of the furthest block the BAT points at (bitmap and data)."""
        assert self.block_size is not None and self.bitmap_size is not None
        starts = self._used_blocks()[1]
        if not starts.size:
            return 0
        return int(starts.max()) + self.bitmap_size + self.block_size

    # -- differencing writes (spec "Block Allocation Table and Data Blocks",
    #    sector bitmap; SPEC-NOTES pitfalls 17 and 18) ------------------------------

    def _write_differencing(self, offset: int, data: memoryview) -> None:
        """Write into a differencing disk: each sector written is stored here and its
        bit set in its block's sector bitmap (1 = this file, 0 = the parent; MSB
        first, spec "Block Allocation Table and Data Blocks").

        * Only the sectors a write touches are marked; the rest of a block keeps
          reading from the parent.
        * A new block is allocated as in a dynamic disk (at the end, the footer
          moved first), but its bitmap is all zeros except the written sectors:
          all ones, as QEMU writes for dynamic disks, would hide the parent
          under zeros (SPEC-NOTES pitfall 18).
        * A write that starts or ends inside a 512-byte sector not yet stored
          here first takes the rest of that sector from the parent
          (read-modify-write), so the whole sector can be marked present.
        * Zeros are stored like any data, so zeros written over the parent's
          data read as zeros (pitfall 18, dosbox-x#4545).

        Order, so that a crash at any point leaves an image that opens with each
        sector old or new:

        1. new blocks: the footer, unchanged, at the new end of the file;
           flush (:meth:`_place`, as for dynamic disks);
        2. the data: in place into allocated blocks (a sector already marked
           present changes in place; one not marked is invisible until its bit
           is set) and into the new blocks, with each new block's bitmap (which
           nothing references yet); flush;
        3. the new bits of the allocated blocks' bitmaps (a byte range of one
           bitmap each): now the data they expose is durable;
        4. the BAT entries of the new blocks (:meth:`_write_bat_entries`).

        Steps 3 and 4 touch different blocks, so their order does not matter;
        neither is reached before the data it exposes was flushed. A write
        that stays in one allocated block, or whose new blocks' BAT entries
        share one BAT sector and that touches no allocated block, is
        all-or-nothing; others are so per block.

        Raises:
            UnsupportedFeatureError: a partial-sector write over a sector this
                file does not hold, with no parent attached.
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
        """Step 2 of :meth:`_write_differencing` for one block: its part of ``data``
        (at virtual ``offset``), and a new block's whole bitmap.

        Returns:
            The bitmap bytes an allocated block still needs set (step 3), and
            whether the block's bitmap is all ones now.
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
        """Write ``piece``, bytes ``[lo, hi)`` of ``block``, as whole sectors: the rest
        of a boundary sector as it reads now (this file or the parent).
        """
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
        """Read sector ``sector`` of ``block`` as the disk reads it now into sector
        ``index`` of ``buf``: from this file if its bit is set, else from the parent.
        """
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
        """Point the BAT entries of ``placed`` blocks at them: one write per 512-byte
        BAT sector, each covering only the entries it changes.
        """
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
        """Mark the sectors of ``[lo, hi)`` (bytes into ``block``) as holding data in
        the block's sector bitmap (MSB first, SPEC-NOTES pitfall 17), if they were not.

        Blocks pyvhdx allocated, and blocks found all ones, are remembered and not
        read again.
        """
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
        """Point this differencing VHD at another parent (spec "Dynamic Disk Header").

        ``paths`` maps locator codes (``W2ru``, ``W2ku``) to the new paths; each
        replaces the path of the existing entry with that code, in the space
        that entry reserves (no locator is added or moved). Order: the locator
        data first (flush), then the header in one write (flush). Until the
        header is written it still names the old parent (Parent Unique ID and
        Parent Unicode Name), which a reader finds by name while it exists.

        Raises:
            InvalidArgumentError: not a writable differencing disk, or a new
                path longer than its entry's reserved space (checked before
                anything is written).
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

    def _room(self, loc: LocatorEntry) -> int:
        """Bytes of the data area a new path for ``loc`` may take in place."""
        return 0 if loc.problem is not None else min(loc.room, self.data_end - loc.data_offset)

    def _new_locator_data(self, loc: LocatorEntry, paths: dict[str, str]) -> bytes | None:
        """The new path of ``loc`` as stored, or None if ``paths`` has none for its code.

        Raises:
            InvalidArgumentError: the path does not fit in the room the entry
                reserves inside the data area (none if its data lies outside).
        """
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

    def flush(self) -> None:
        """Make every write so far durable."""
        self.source.flush()

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
    """Set sectors ``[s0, s1)`` in ``bits``, the sector bitmap at ``bitmap_offset``
    (MSB first); return the bitmap bytes that change, with their file offset.
    """
    if bits[s0:s1].all():
        return []
    bits[s0:s1] = True
    b0, b1 = s0 // 8, (s1 - 1) // 8 + 1
    return [(bitmap_offset + b0, np.packbits(bits[8 * b0 : 8 * b1], bitorder="big").tobytes())]
