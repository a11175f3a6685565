"""Where blocks go when an image file is compacted: the blocks lying furthest out
move into the lowest holes that fit them, so the file can be cut after the last
used byte. Pure arithmetic over file ranges; :mod:`pyvhdx.vhdx.compact` and
:mod:`pyvhdx.vhd.compact` do the moves.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Plan", "move_blocks", "plan_moves"]

_BATCH = 256 << 20  # bytes copied before the entries of the copies are written
_STEP = 8 << 20  # bytes copied per read

I64 = npt.NDArray[np.int64]
#: A format's compaction plan: (stored blocks, their file offsets, the moves
#: ``(index, new offset)``, the file end after them).
Plan = tuple[I64, I64, list[tuple[int, int]], int]


def _merged(starts: I64, ends: I64) -> list[tuple[int, int]]:
    order = np.argsort(starts, kind="stable")
    out: list[tuple[int, int]] = []
    for s, e in zip(starts[order].tolist(), ends[order].tolist(), strict=True):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def plan_moves(
    fixed: Sequence[tuple[int, int]], blocks: I64, length: int, align: int, *, move: bool = True
) -> tuple[list[tuple[int, int]], int]:
    """Moves that pack ``blocks`` (file offsets of ``length``-byte blocks) downwards.

    ``fixed`` holds the ``(start, length)`` ranges that stay where they are. A block
    moves to the lowest ``align``-aligned slot of a hole (space used by nothing)
    that lies wholly below it, the blocks furthest out first. Returns the moves
    ``(index into blocks, new offset)`` and the end of the used space afterwards
    (with ``move`` false: no moves, the end as it is).
    """
    starts = np.concatenate([np.array([s for s, _ in fixed], np.int64), blocks])
    ends = np.concatenate([np.array([s + n for s, n in fixed], np.int64), blocks + length])
    used = _merged(starts, ends)
    holes = [(a[1], b[0]) for a, b in itertools.pairwise(used)]
    moves: list[tuple[int, int]] = []
    new_offsets = blocks.copy()
    h = 0
    for i in np.argsort(-blocks, kind="stable").tolist() if move else []:
        at = int(blocks[i])
        slot = None
        while h < len(holes):
            lo, hi = holes[h]
            s = -(-lo // align) * align
            if s + length <= hi:
                slot = s
                break
            h += 1
        if slot is None or slot >= at:
            break
        moves.append((i, slot))
        new_offsets[i] = slot
        holes[h] = (slot + length, holes[h][1])
    fixed_end = max((s + n for s, n in fixed), default=0)
    block_end = int(new_offsets.max()) + length if new_offsets.size else 0
    return moves, max(fixed_end, block_end)


def move_blocks(
    source: Any,
    moves: Sequence[tuple[int, int, int, int]],
    commit: Callable[[list[tuple[int, int]]], None],
    progress: Callable[[int], None] | None,
    what: str,
) -> None:
    """Copy each ``(block, old offset, new offset, length)`` of ``moves`` in
    ``source`` (a :class:`~pyvhdx.source.FileSource`); after every 256 MiB copied
    and at the end, flush, then ``commit`` the ``(block, new offset)`` pairs copied
    since (the format writes their entries): a crash leaves each block where its
    entry says, at its old place or its new one."""
    pending: list[tuple[int, int]] = []
    copied = 0
    last = len(moves) - 1
    for k, (block, old, new, length) in enumerate(moves):
        pos = 0
        while pos < length:
            n = min(_STEP, length - pos)
            source.pwrite(source.read_exact(old + pos, n, what), new + pos)
            pos += n
        pending.append((block, new))
        copied += length
        if progress is not None:
            progress(length)
        if copied >= _BATCH or k == last:
            source.flush()
            commit(pending)
            pending, copied = [], 0
