"""Block allocation tables as numpy arrays: decode, lazy loading and mapping.

Every block-based format (VHDX, VHD, and raw or fixed files seen as one big
block run) is reduced to one :class:`BlockTable`: an ``int64`` code per virtual
block, where a code ``>= 0`` is the file offset of the block's data and a
negative code says what the block reads as. :meth:`BlockTable.map` turns a
virtual range into coalesced runs in a handful of vectorized numpy steps, so no
per-block Python loop sits on the path of a large read (DESIGN.md "Layers").

VHDX BAT decoding implements MS-VHDX 2.5 (entry layout 2.5.1, interleaved
sector bitmap entries, chunk ratio); VHD BAT decoding the VHD spec's "Block
Allocation Table".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from .constants import (
    VHD_BAT_UNUSED,
    VHDX_BAT_OFFSET_MASK,
    VHDX_BAT_STATE_MASK,
    PayloadState,
    RunKind,
)
from .errors import InvalidImageError, UnsupportedFeatureError

__all__ = [
    "CODE_PARENT",
    "CODE_PARTIAL",
    "CODE_UNMAPPED",
    "CODE_ZERO",
    "BlockTable",
    "Runs",
    "chunk_ratio",
    "decode_vhd_bat",
    "decode_vhdx_payload_entries",
    "first_true",
    "merge_zero_runs",
    "vhdx_bat_entry_count",
    "vhdx_entry_error",
    "vhdx_payload_index",
    "vhdx_sector_bitmap_index",
]

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

# Negative block codes (a code >= 0 is the file offset of the block's data).
CODE_UNMAPPED = -1  # not allocated: zeros (a differencing format maps it to CODE_PARENT)
CODE_ZERO = -2  # explicitly zero
CODE_PARENT = -3  # read from the parent
CODE_PARTIAL = -4  # some sectors here, some in the parent: ask the sector bitmap

# Index by -code (0 for a data block) to get the RunKind of a block.
_KIND_OF = np.array(
    [RunKind.DATA, RunKind.UNMAPPED, RunKind.ZERO, RunKind.PARENT, 255], dtype=np.uint8
)
KIND_PARTIAL = 255

LOAD_CHUNK_SHIFT = 12  # blocks decoded per lazy load: 4096 entries (32 KiB of VHDX BAT)
LOAD_CHUNK_MASK = (1 << LOAD_CHUNK_SHIFT) - 1
MAX_CACHED_CHUNKS = 4096  # 128 MiB of codes: 16 Mi blocks, 512 TiB at 32 MiB blocks
_MAX_FILE_OFFSET = (1 << 63) - 1  # the largest file offset (off_t)


class Runs(NamedTuple):
    """Coalesced runs covering a virtual range, as parallel numpy arrays.

    ``file_offset`` is -1 for runs that are not DATA.
    """

    start: I64
    length: I64
    kind: U8
    file_offset: I64

    def __len__(self) -> int:  # number of runs
        return int(self.start.shape[0])

    def rows(self) -> Iterator[tuple[int, int, int, int]]:
        """Each run as Python ints: ``(start, length, kind, file_offset)``."""
        columns = (self.start, self.length, self.kind, self.file_offset)
        return zip(*(column.tolist() for column in columns), strict=True)


# --- VHDX (MS-VHDX 2.5) ---------------------------------------------------------


def chunk_ratio(logical_sector_size: int, block_size: int) -> int:
    """Payload blocks described by one sector bitmap block (MS-VHDX 2.5)."""
    return ((1 << 23) * logical_sector_size) // block_size


def vhdx_bat_entry_count(
    virtual_size: int, block_size: int, logical_sector_size: int, differencing: bool
) -> int:
    """Total BAT entries, payload and sector bitmap (MS-VHDX 2.5)."""
    ratio = chunk_ratio(logical_sector_size, block_size)
    payload = -(-virtual_size // block_size)
    sb_blocks = -(-payload // ratio)
    if differencing:
        return sb_blocks * (ratio + 1)
    return payload + (payload - 1) // ratio if payload else 0


def vhdx_payload_index(block: int, ratio: int) -> int:
    """BAT index of payload block ``block``: sector bitmap entries interleave (2.5)."""
    return block + block // ratio


def vhdx_sector_bitmap_index(chunk: int, ratio: int) -> int:
    """BAT index of the sector bitmap entry of chunk ``chunk`` (MS-VHDX 2.5)."""
    return (chunk + 1) * ratio + chunk


def first_true(mask: npt.NDArray[np.bool_]) -> int | None:
    """The first position where ``mask`` is true, or None."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def vhdx_entry_error(
    message: str, *, bat_offset: int, block: int, ratio: int, field: str = "FileOffsetMB"
) -> InvalidImageError:
    """The error about payload block ``block``'s BAT entry (MS-VHDX 2.5), at its offset."""
    return InvalidImageError(
        message,
        structure="BAT",
        field=field,
        offset=bat_offset + 8 * vhdx_payload_index(block, ratio),
    )


def decode_vhdx_payload_entries(
    raw: npt.NDArray[np.uint64],
    *,
    first_block: int,
    bat_offset: int,
    block_size: int,
    virtual_size: int,
    file_size: int,
    differencing: bool,
    min_data_offset: int,
    ratio: int,
    allow_past_eof: bool = False,
) -> I64:
    """Decode payload BAT entries into block codes, validating every offset.

    Args:
        raw: the payload entries (sector bitmap entries already removed), in order.
        first_block: the payload block number of ``raw[0]``.
        bat_offset: file offset of the BAT region, for error messages.
        block_size: the payload block size.
        virtual_size: the virtual disk size (bounds the last block).
        file_size: the file size; data blocks must lie within it.
        differencing: NOT_PRESENT means "ask the parent" (MS-VHDX 2.5.1.1).
        min_data_offset: data may not start below this (the 1 MiB header area).
        ratio: the chunk ratio, to name the offset of a bad entry.

    Raises:
        InvalidImageError: a reserved state, or a data block outside the file.
    """
    state = (raw & np.uint64(VHDX_BAT_STATE_MASK)).astype(np.int64)
    offsets = (raw & np.uint64(VHDX_BAT_OFFSET_MASK)).astype(np.int64)
    codes = np.full(raw.shape, CODE_UNMAPPED, dtype=np.int64)
    present = (state == PayloadState.FULLY_PRESENT) | (state == PayloadState.PARTIALLY_PRESENT)
    codes[state == PayloadState.ZERO] = CODE_ZERO
    # NOT_PRESENT/UNDEFINED/UNMAPPED (3, and 5 from spec v0.95, pitfall 6)
    absent = (state == PayloadState.NOT_PRESENT) | (state == PayloadState.UNDEFINED)
    unmapped = (state == PayloadState.UNMAPPED) | (state == PayloadState.UNMAPPED_V095)
    if differencing:
        codes[absent] = CODE_PARENT
        codes[unmapped] = CODE_ZERO  # UNMAPPED never falls through to the parent (pitfall 7)
    bad = ~(present | absent | unmapped | (state == PayloadState.ZERO))
    if (i := first_true(bad)) is not None:
        raise vhdx_entry_error(
            f"payload block {first_block + i} has reserved state {int(state[i])}",
            bat_offset=bat_offset,
            block=first_block + i,
            ratio=ratio,
            field="State",
        )
    if present.any():
        blocks = np.arange(first_block, first_block + raw.shape[0], dtype=np.int64)
        # Only the part of the last block inside the virtual disk need be in the file.
        need = np.minimum(block_size, virtual_size - blocks * block_size)
        past_eof = (offsets > file_size - need) & (not allow_past_eof)
        # No file reaches 2**63 (off_t): a block ending there is outside any file
        # (and offset + need would overflow int64).
        beyond = offsets > _MAX_FILE_OFFSET - block_size
        out = present & ((offsets < min_data_offset) | past_eof | beyond)
        if (i := first_true(out)) is not None:
            raise vhdx_entry_error(
                f"payload block {first_block + i} points at {int(offsets[i]):#x}, outside the "
                f"data area of a {file_size:#x}-byte file",
                bat_offset=bat_offset,
                block=first_block + i,
                ratio=ratio,
            )
        codes[present] = offsets[present]
        # In a non-differencing file a partially present block is read as fully
        # present, as real files have them (SPEC-NOTES pitfall 6).
        if differencing:
            codes[state == PayloadState.PARTIALLY_PRESENT] = CODE_PARTIAL
    return codes


# --- VHD (spec "Block Allocation Table and Data Blocks") -------------------------


def decode_vhd_bat(
    raw: npt.NDArray[np.uint32],
    *,
    first_block: int,
    bat_offset: int,
    block_size: int,
    bitmap_size: int,
    virtual_size: int,
    file_size: int,
    differencing: bool,
    allow_past_eof: bool = False,
) -> I64:
    """Decode big-endian VHD BAT entries (sector numbers) into block codes.

    A block's data starts after its sector bitmap: ``bitmap_size`` is its size
    already padded to a multiple of 512 (this function does not pad it).
    Entries of 0xFFFFFFFF are unallocated.

    Raises:
        InvalidImageError: a block whose bitmap or data lies outside the file.
    """
    sectors = raw.astype(np.int64)
    codes = np.full(raw.shape, CODE_PARENT if differencing else CODE_UNMAPPED, dtype=np.int64)
    used = raw != np.uint32(VHD_BAT_UNUSED)
    if used.any():
        blocks = np.arange(first_block, first_block + raw.shape[0], dtype=np.int64)
        data = sectors * 512 + bitmap_size
        need = np.minimum(block_size, virtual_size - blocks * block_size)
        out = used & ((sectors == 0) | ((data + need > file_size) & (not allow_past_eof)))
        if (i := first_true(out)) is not None:
            raise InvalidImageError(
                f"block {first_block + i} points at sector {int(sectors[i])} "
                f"({int(sectors[i]) * 512:#x}), beyond the {file_size:#x}-byte file",
                structure="VHD BAT",
                field=f"BAT[{first_block + i}]",
                offset=bat_offset + 4 * (first_block + i),
            )
        codes[used] = CODE_PARTIAL if differencing else data[used]
    return codes


# --- the table --------------------------------------------------------------------

Loader = Callable[[int, int], I64]
BitmapReader = Callable[[int], npt.NDArray[np.bool_]]


class BlockTable:
    """Per-block codes of a virtual disk, loaded lazily by chunks of blocks.

    Args:
        virtual_size: the virtual disk size in bytes.
        block_size: bytes per block; a power of two.
        loader: ``loader(first_block, count)`` returns the codes of those blocks.
        sector_size: the sector size of sector bitmaps (for partial blocks; their
            readers are installed by :meth:`set_partial_reader`).
    """

    def __init__(
        self, virtual_size: int, block_size: int, loader: Loader, *, sector_size: int = 512
    ) -> None:
        if block_size <= 0 or block_size & (block_size - 1):
            raise InvalidImageError(f"block size {block_size} is not a power of two")
        self.virtual_size = virtual_size
        self.block_size = block_size
        self.block_shift = block_size.bit_length() - 1
        self.block_mask = block_size - 1
        self.block_count = -(-virtual_size // block_size)
        self.sector_size = sector_size
        self._loader = loader
        self._bitmap_reader: BitmapReader | None = None
        self._partial_offset: Callable[[int], int] | None = None
        self._chunks: dict[int, I64] = {}  # loaded chunks, oldest load first
        # set for a table that maps block b to linear_base + b * block_size (raw, fixed VHD)
        self.linear_base: int | None = None
        self.chunk_count = -(-self.block_count // (1 << LOAD_CHUNK_SHIFT))
        self.all_loaded = self.chunk_count == 0

    # -- loading --------------------------------------------------------------

    def set_partial_reader(
        self, bitmap_reader: BitmapReader, partial_offset: Callable[[int], int]
    ) -> None:
        """Install the readers of CODE_PARTIAL blocks (differencing): ``bitmap_reader(block)``
        gives one bool per sector (True: the sector is in this file), ``partial_offset(block)``
        the file offset of the block's data; without them partial blocks are unsupported.
        """
        self._bitmap_reader = bitmap_reader
        self._partial_offset = partial_offset

    def _chunk(self, c: int) -> I64:
        """The codes of chunk ``c`` (1 << LOAD_CHUNK_SHIFT blocks), loading it if needed.

        At most MAX_CACHED_CHUNKS chunks stay in memory; past that the oldest
        loaded one is dropped (first in, first out; the file holds every change,
        so it reloads the same). Not LRU on purpose: a hit stays one plain dict
        lookup, which the read fast path (:meth:`pyvhdx.image.DiskImage._fast_reader`)
        does on ``_chunks`` directly; the cap is only reached past 16 Mi blocks.
        """
        arr = self._chunks.get(c)
        if arr is not None:
            return arr
        first = c << LOAD_CHUNK_SHIFT
        count = min(1 << LOAD_CHUNK_SHIFT, self.block_count - first)
        arr = np.ascontiguousarray(self._loader(first, count), dtype=np.int64)
        if len(self._chunks) >= MAX_CACHED_CHUNKS:
            del self._chunks[next(iter(self._chunks))]
        self._chunks[c] = arr
        self.all_loaded = len(self._chunks) == self.chunk_count
        return arr

    def load_all(self) -> None:
        """Decode (and so validate) every entry now (kept if they fit the cache)."""
        for c in range(self.chunk_count):
            self._chunk(c)

    def iter_chunks(self) -> Iterator[tuple[int, I64]]:
        """``(first_block, codes)`` for the whole table, chunk by chunk (bounded memory)."""
        for c in range(self.chunk_count):
            yield c << LOAD_CHUNK_SHIFT, self._chunk(c)

    def code(self, block: int) -> int:
        """The code of one block (scalar path)."""
        return int(self._chunk(block >> LOAD_CHUNK_SHIFT)[block & LOAD_CHUNK_MASK])

    def codes(self, first: int, stop: int) -> I64:
        """Codes of blocks ``first`` up to ``stop`` (exclusive); do not modify."""
        c0 = first >> LOAD_CHUNK_SHIFT
        c1 = (stop - 1) >> LOAD_CHUNK_SHIFT
        if stop <= first:
            return np.zeros(0, dtype=np.int64)
        if c0 == c1:
            base = c0 << LOAD_CHUNK_SHIFT
            return self._chunk(c0)[first - base : stop - base]
        parts = []
        for c in range(c0, c1 + 1):
            base = c << LOAD_CHUNK_SHIFT
            arr = self._chunk(c)
            parts.append(arr[max(first, base) - base : min(stop, base + arr.shape[0]) - base])
        return np.concatenate(parts)

    def set_code(self, block: int, code: int) -> None:
        """Record a new code for ``block`` (after an allocation)."""
        self._chunk(block >> LOAD_CHUNK_SHIFT)[block & LOAD_CHUNK_MASK] = code

    # -- mapping --------------------------------------------------------------

    def map(self, offset: int, length: int) -> Runs:
        """Map ``[offset, offset + length)`` (inside the disk) to coalesced runs."""
        end = offset + length
        shift = self.block_shift
        b0 = offset >> shift
        b1 = (end - 1) >> shift
        codes = self.codes(b0, b1 + 1)
        block_start = np.arange(b0, b1 + 1, dtype=np.int64) << shift
        vstart = block_start.copy()
        vstart[0] = offset
        vend = block_start + self.block_size
        vend[-1] = end
        lens = vend - vstart
        kinds = _KIND_OF[np.where(codes >= 0, 0, -codes)]
        fo = np.where(codes >= 0, codes + (vstart - block_start), -1)
        if (kinds == KIND_PARTIAL).any():
            vstart, lens, kinds, fo = self._expand_partial(vstart, lens, kinds, fo, b0)
        return coalesce(vstart, lens, kinds, fo)

    def _expand_partial(
        self, vstart: I64, lens: I64, kinds: U8, fo: I64, b0: int
    ) -> tuple[I64, I64, U8, I64]:
        """Split partially present blocks into DATA/PARENT sector runs."""
        if self._bitmap_reader is None or self._partial_offset is None:
            raise UnsupportedFeatureError(
                "reading partially present blocks of a differencing disk is not supported yet"
            )
        parts: list[tuple[I64, I64, U8, I64]] = []
        ss = self.sector_size
        for i in range(len(vstart)):
            if kinds[i] != KIND_PARTIAL:
                parts.append((vstart[i : i + 1], lens[i : i + 1], kinds[i : i + 1], fo[i : i + 1]))
                continue
            block = b0 + i
            base = block << self.block_shift
            bits = self._bitmap_reader(block)
            data_off = self._partial_offset(block)
            s0 = (int(vstart[i]) - base) // ss
            s1 = -(-(int(vstart[i]) + int(lens[i]) - base) // ss)
            sel = bits[s0:s1]
            edges = np.flatnonzero(np.diff(sel.astype(np.int8))) + 1
            starts = np.concatenate(([0], edges)) + s0
            stops = np.concatenate((edges, [len(sel)])) + s0
            rs = np.maximum(starts * ss + base, int(vstart[i]))
            re = np.minimum(stops * ss + base, int(vstart[i]) + int(lens[i]))
            here = sel[starts - s0]
            kind = np.where(here, RunKind.DATA, RunKind.PARENT).astype(np.uint8)
            parts.append((rs, re - rs, kind, np.where(here, data_off + (rs - base), -1)))
        s, ln, k, f = (np.concatenate(column) for column in zip(*parts, strict=True))
        return s, ln, k, f


def lost_ranges(
    codes: I64, *, first_block: int, block_size: int, virtual_size: int, file_size: int
) -> list[tuple[int, int, int]]:
    """``(virtual_offset, length, file_offset)`` of data blocks' bytes past ``file_size``.

    ``codes`` are block codes (>= 0: the file offset of the block's data).
    """
    data = codes >= 0
    if not data.any():
        return []
    blocks = np.arange(first_block, first_block + codes.shape[0], dtype=np.int64)
    need = np.minimum(block_size, virtual_size - blocks * block_size)
    first = np.maximum(codes, file_size)
    lost = data & (codes > file_size - need)  # not codes + need: that may overflow int64
    columns = (column[lost].tolist() for column in (blocks, codes, first, need))
    return [(b * block_size + (f - c), c + n - f, f) for b, c, f, n in zip(*columns, strict=True)]


def shared_space(
    starts: I64, ends: I64, spans: list[tuple[int, int, str]], file_end: int | None = None
) -> tuple[int, int | None, str] | None:
    """The first of the file ranges ``[starts, ends)`` that shares space, if any.

    Checks each range against ``file_end`` (a range past it would grow the
    file, or could not be written at all), against the ``(start, length,
    name)`` spans (metadata that blocks may not cover), then all ranges against
    each other (sorted by start, a range overlaps an earlier one when it starts
    before the furthest end so far). Returns ``(position, partner position,
    "")`` for two ranges, ``(position, None, description)`` for a range past
    the end or over a span, else None.
    """
    if file_end is not None:
        past = np.flatnonzero(ends > file_end)
        if past.size:
            return int(past[0]), None, f"nothing: it ends past the end of the file at {file_end:#x}"
    for span_start, span_len, name in spans:
        hit = np.flatnonzero((starts < span_start + span_len) & (ends > span_start))
        if hit.size:
            return int(hit[0]), None, f"the {name} at {span_start:#x}+{span_len:#x}"
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    clash = np.flatnonzero((s[1:] < reach[:-1]) & (e[1:] > s[1:]))
    if not clash.size:
        return None
    k = int(clash[0]) + 1
    mate = int(order[int(np.flatnonzero(e[:k] > s[k])[0])])
    return int(order[k]), mate, ""


def coalesce(vstart: I64, lens: I64, kinds: U8, fo: I64) -> Runs:
    """Merge adjacent runs of the same kind (and, for DATA, contiguous in the file)."""
    n = vstart.shape[0]
    if n <= 1:
        return Runs(vstart, lens, kinds, fo)
    brk = np.empty(n, dtype=bool)
    brk[0] = True
    np.not_equal(kinds[1:], kinds[:-1], out=brk[1:])
    brk[1:] |= (kinds[1:] == RunKind.DATA) & (fo[1:] != fo[:-1] + lens[:-1])
    idx = np.flatnonzero(brk)
    if idx.shape[0] == n:
        return Runs(vstart, lens, kinds, fo)
    return Runs(vstart[idx], np.add.reduceat(lens, idx), kinds[idx], fo[idx])


def merge_zero_runs(runs: Runs) -> Runs:
    """Merge neighbouring ZERO and UNMAPPED runs, which both read as zeros, into one run.

    A merged run is ZERO if any part of it is ZERO, else UNMAPPED. ``runs`` is
    coalesced (:func:`coalesce`), so equal kinds are never neighbours.
    """
    n = len(runs)
    if n <= 1:
        return runs
    kinds = runs.kind
    zero = (kinds == RunKind.ZERO) | (kinds == RunKind.UNMAPPED)
    brk = np.empty(n, dtype=bool)
    brk[0] = True
    np.logical_not(zero[1:] & zero[:-1], out=brk[1:])
    idx = np.flatnonzero(brk)
    if idx.shape[0] == n:
        return runs
    any_zero = np.logical_or.reduceat(kinds == RunKind.ZERO, idx)
    merged = np.where(zero[idx], np.where(any_zero, RunKind.ZERO, RunKind.UNMAPPED), kinds[idx])
    return Runs(
        runs.start[idx],
        np.add.reduceat(runs.length, idx),
        merged.astype(np.uint8),
        runs.file_offset[idx],
    )


def lost_totals(
    chunks: Iterable[tuple[int, I64]], *, block_size: int, virtual_size: int, file_size: int
) -> tuple[int, int]:
    """``(bytes, blocks)`` of data past ``file_size`` over ``(first_block, codes)``
    chunks of a whole BAT (codes decoded with past-EOF offsets allowed).
    """
    total = count = 0
    for first, codes in chunks:
        lost = lost_ranges(
            codes,
            first_block=first,
            block_size=block_size,
            virtual_size=virtual_size,
            file_size=file_size,
        )
        total += sum(length for _, length, _ in lost)
        count += len(lost)
    return total, count
