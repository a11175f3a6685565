"""Compacting a dynamic VHDX in place (as Hyper-V's Optimize-VHD; MS-VHDX 2.5 BAT,
2.3 log).

1. Release: the payload entries of the blocks to give back become NOT_PRESENT
   (read as zeros), through log entries; each is safe alone, as those blocks
   read as zeros already (or hold space the guest freed, for ``--mode full``).
2. Pack: the blocks furthest out are copied into the lowest holes (space no
   entry names), flushed, then their entries point there through the log: a
   crash leaves each block at its old place or its new one.
3. Cut: the log is closed (LogGuid cleared), then the file is cut after the
   last structure or block in use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import constants as K
from ..bat import CODE_UNMAPPED, vhdx_payload_index
from ..constants import NIL_GUID, DiskType, MiB, PayloadState
from ..errors import UnsupportedFeatureError
from ..packing import Plan, move_blocks, plan_moves
from .edit import SectorPatch

if TYPE_CHECKING:
    from .file import VHDXFile

__all__ = ["check_compactable", "pack", "plan", "release"]

_SECTORS_PER_ENTRY = 128  # BAT sectors a log entry carries (512 KiB of a 1 MiB log)


def check_compactable(f: VHDXFile) -> None:
    """A fixed disk keeps every block, and a child's zeros hide its parent: refused."""
    if f.disk_type is not DiskType.DYNAMIC:
        raise UnsupportedFeatureError(
            f"{f.source.name} is a {f.disk_type.value} VHDX: only dynamic disks are compacted "
            "(convert a fixed disk to dynamic; merge a differencing disk)"
        )


def _set_entries(f: VHDXFile, values: Sequence[tuple[int, int]]) -> None:
    """Write ``(block, entry value)`` pairs through log entries of bounded size."""
    patch = SectorPatch(f)
    for block, value in values:
        at = f.bat_offset + 8 * vhdx_payload_index(block, f.chunk_ratio)
        patch.patch(at, value.to_bytes(8, "little"), "BAT")
        if len(patch.sectors) >= _SECTORS_PER_ENTRY:
            patch.apply()
            patch = SectorPatch(f)
    patch.apply()


def release(f: VHDXFile, blocks: Sequence[int]) -> None:
    """Step 1: ``blocks`` become NOT_PRESENT (MS-VHDX 2.5.1.1)."""
    if not blocks:
        return
    f._begin_session()
    _set_entries(f, [(b, int(PayloadState.NOT_PRESENT)) for b in blocks])
    for b in blocks:
        f.table.set_code(b, CODE_UNMAPPED)


def _payload_blocks(f: VHDXFile) -> tuple[np.ndarray, np.ndarray]:
    """``(block numbers, file offsets)`` of every stored payload block."""
    ids, offs = [], []
    for first, codes in f.table.iter_chunks():
        held = np.flatnonzero(codes >= 0)
        ids.append(held + first)
        offs.append(codes[held])
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ids).astype(np.int64), np.concatenate(offs).astype(np.int64)


def plan(f: VHDXFile, skip: Sequence[int] = (), move: bool = True) -> Plan:
    """``(blocks, offsets, moves, end)``: the stored blocks but ``skip``, where
    :func:`pyvhdx.packing.plan_moves` sends them (none unless ``move``), the file end."""
    blocks, offsets = _payload_blocks(f)
    if len(skip):
        keep = ~np.isin(blocks, np.asarray(skip, np.int64))
        blocks, offsets = blocks[keep], offsets[keep]
    fixed = [(0, K.VHDX_HEADER_AREA_SIZE), *((s, n) for s, n, _ in f.reserved_spans)]
    moves, end = plan_moves(fixed, offsets, f.payload_block_size, MiB, move=move)
    return blocks, offsets, moves, -(-end // MiB) * MiB


def pack(f: VHDXFile, planned: Plan, progress: Callable[[int], None] | None = None) -> int:
    """Steps 2 and 3, as :func:`plan` planned them (no moves: step 3 only); returns the
    new file size."""
    bs = f.payload_block_size
    blocks, offsets, moves, end = planned
    if moves:
        f._begin_session(data=False)
    moving = []
    for i, new in moves:
        block, old = int(blocks[i]), int(offsets[i])
        moving.append((block, old, new, min(bs, f.virtual_size - block * bs)))
    move_blocks(f.source, moving, lambda moved: _commit_moves(f, moved), progress, "data block")
    return _cut(f, end)


def _commit_moves(f: VHDXFile, moved: list[tuple[int, int]]) -> None:
    """Point the entries of the flushed copies at them (through the log)."""
    _set_entries(f, [(b, new | PayloadState.FULLY_PRESENT) for b, new in moved])
    for b, new in moved:
        f.table.set_code(b, new)


def _cut(f: VHDXFile, end: int) -> int:
    """Close the log (a replay would find the file shorter than it was), cut the file."""
    if f._log_guid != NIL_GUID:
        f._update_headers(log_guid=NIL_GUID)
        f._log_guid = NIL_GUID
    if end < f.source.physical_size:
        f.source.flush()
        f.source.truncate(end)
        f.source.flush()
    return f.source.physical_size
