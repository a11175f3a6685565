"""Compacting a dynamic VHD in place (as Hyper-V's Optimize-VHD; VHD spec "Block
Allocation Table and Data Blocks"). There is no log: each write is flushed before
the next one that depends on it.

1. Release: the BAT entries of the blocks to give back become unused
   (0xFFFFFFFF, read as zeros): one 4-byte write each, safe alone as the blocks
   read as zeros already (or hold space the guest freed, for ``--mode full``).
2. Pack: the blocks furthest out (bitmap and data) are copied into the lowest
   holes, flushed, then their BAT entries point there, flushed.
3. Cut: the footer is written after the last block in use, flushed, then the
   file is cut after it. Between the two the old footer still ends the file:
   readers use it, and it describes the same disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..bat import CODE_UNMAPPED
from ..constants import VHD_BAT_UNUSED, VHD_DYNAMIC_HEADER_SIZE, VHD_SECTOR_SIZE, DiskType
from ..errors import UnsupportedFeatureError
from ..packing import Plan, move_blocks, plan_moves

if TYPE_CHECKING:
    from .file import VHDFile

__all__ = ["check_compactable", "pack", "plan", "release"]


def check_compactable(f: VHDFile) -> None:
    """Only dynamic disks are compacted (a fixed disk has no blocks to give back)."""
    if f.disk_type is not DiskType.DYNAMIC:
        raise UnsupportedFeatureError(
            f"{f.source.name} is a {f.disk_type.value} VHD: only dynamic disks are compacted "
            "(convert a fixed disk to dynamic; merge a differencing disk)"
        )
    f._check_layout_for_writing()


def _write_entries(f: VHDFile, values: Sequence[tuple[int, int]]) -> None:
    """BAT entries ``(block, sector number)``, each a 4-byte big-endian write; flushed."""
    assert f.table_offset is not None
    for block, sector in values:
        f.source.pwrite(sector.to_bytes(4, "big"), f.table_offset + 4 * block)
    f.source.flush()


def release(f: VHDFile, blocks: Sequence[int]) -> None:
    """Step 1: ``blocks`` become unused."""
    _write_entries(f, [(b, VHD_BAT_UNUSED) for b in blocks])
    for b in blocks:
        f.table.set_code(b, CODE_UNMAPPED)


def _fixed_spans(f: VHDFile) -> list[tuple[int, int]]:
    assert f.dynamic_header_offset is not None and f.table_offset is not None
    assert f.max_table_entries is not None
    spans = [
        (0, VHD_SECTOR_SIZE),
        (f.dynamic_header_offset, VHD_DYNAMIC_HEADER_SIZE),
        (f.table_offset, 4 * f.max_table_entries),
    ]
    spans += [(loc.data_offset, loc.data_length) for loc in f.parent_locators if loc.data_length]
    return spans


def plan(f: VHDFile, skip: Sequence[int] = (), move: bool = True) -> Plan:
    """``(blocks, bitmap offsets, moves, end)``: the stored blocks but ``skip``, where
    :func:`pyvhdx.packing.plan_moves` sends them (none unless ``move``), the file end
    (the footer follows)."""
    assert f.block_size is not None and f.bitmap_size is not None
    ids, starts = [], []
    for first, codes in f.table.iter_chunks():
        held = np.flatnonzero(codes >= 0)
        ids.append(held + first)
        starts.append(codes[held] - f.bitmap_size)
    blocks = np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64)
    offsets = np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)
    if len(skip):
        keep = ~np.isin(blocks, np.asarray(skip, np.int64))
        blocks, offsets = blocks[keep], offsets[keep]
    stride = f.bitmap_size + f.block_size
    moves, end = plan_moves(_fixed_spans(f), offsets, stride, VHD_SECTOR_SIZE, move=move)
    return blocks, offsets, moves, -(-end // VHD_SECTOR_SIZE) * VHD_SECTOR_SIZE


def pack(f: VHDFile, planned: Plan, progress: Callable[[int], None] | None = None) -> int:
    """Steps 2 and 3, as :func:`plan` planned them (no moves: step 3 only); returns the
    new file size."""
    assert f.block_size is not None and f.bitmap_size is not None
    stride = f.bitmap_size + f.block_size
    blocks, offsets, moves, end = planned
    moving = [(int(blocks[i]), int(offsets[i]), new, stride) for i, new in moves]
    move_blocks(f.source, moving, lambda moved: _commit_moves(f, moved), progress, "VHD block")
    return _cut(f, end)


def _commit_moves(f: VHDFile, moved: list[tuple[int, int]]) -> None:
    assert f.bitmap_size is not None
    _write_entries(f, [(b, new // VHD_SECTOR_SIZE) for b, new in moved])
    for b, new in moved:
        f.table.set_code(b, new + f.bitmap_size)


def _cut(f: VHDFile, end: int) -> int:
    if end < f.data_end:
        footer = f.footer_raw[: f.footer_size]
        f.source.pwrite(footer, end)
        f.source.flush()
        f.source.truncate(end + len(footer))
        f.source.flush()
        f.data_end = end
    return f.source.physical_size
