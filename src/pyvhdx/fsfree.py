"""Space a guest file system marks free, read through the virtual disk: what
``compact --mode full`` may give back (the ranges read as zeros afterwards, as
if the guest had TRIMmed them).

ext2/3/4 (the ext4 disk layout: superblock at byte 1024, group descriptors in
the block after it, one block bitmap a group). Only what the file system says
for sure counts: a group whose bitmap is not initialised (BLOCK_UNINIT), or a
file system that was not cleanly unmounted or has a journal to recover, gives
nothing back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .partitions import partition_ranges

__all__ = ["ext4_free_ranges", "free_ranges"]

Reader = Callable[[int, int], bytes]

_EXT4_MAGIC = 0xEF53
_VALID_FS = 0x1  # s_state: cleanly unmounted
_ERROR_FS = 0x2
_INCOMPAT_RECOVER = 0x4  # the journal must be replayed first
_INCOMPAT_64BIT = 0x80
_BG_BLOCK_UNINIT = 0x2
_MAX_GROUPS = 1 << 24


def _u(raw: bytes, at: int, n: int) -> int:
    return int.from_bytes(raw[at : at + n], "little")


def ext4_free_ranges(read: Reader, start: int, length: int) -> list[tuple[int, int]]:
    """Free ``(offset, length)`` byte ranges of the ext2/3/4 file system at ``start``
    (disk offsets); empty when there is none or it cannot be trusted."""
    if length < 2048:
        return []
    sb = read(start + 1024, 1024)
    if _u(sb, 56, 2) != _EXT4_MAGIC:
        return []
    state, incompat = _u(sb, 58, 2), _u(sb, 96, 4)
    if not state & _VALID_FS or state & _ERROR_FS or incompat & _INCOMPAT_RECOVER:
        return []
    log_bs = _u(sb, 24, 4)
    if log_bs > 6:
        return []
    bs = 1024 << log_bs
    first_data = _u(sb, 20, 4)
    per_group = _u(sb, 32, 4)
    count = _u(sb, 4, 4) | (_u(sb, 336, 4) << 32 if incompat & _INCOMPAT_64BIT else 0)
    desc_size = _u(sb, 254, 2) if incompat & _INCOMPAT_64BIT else 32
    if per_group == 0 or per_group > 8 * bs or desc_size < 32 or count * bs > length:
        return []
    groups = -(-(count - first_data) // per_group)
    if groups > _MAX_GROUPS:
        return []
    descs = read(start + (first_data + 1) * bs, groups * desc_size)
    return list(
        _merge(_group_runs(read, start, bs, descs, desc_size, first_data, per_group, count))
    )


def _group_runs(
    read: Reader,
    start: int,
    bs: int,
    descs: bytes,
    desc_size: int,
    first_data: int,
    per_group: int,
    count: int,
) -> Iterator[tuple[int, int]]:
    for g in range(len(descs) // desc_size):
        d = descs[g * desc_size : (g + 1) * desc_size]
        if _u(d, 18, 2) & _BG_BLOCK_UNINIT:
            continue
        bitmap = _u(d, 0, 4) | (_u(d, 32, 4) << 32 if desc_size >= 64 else 0)
        if bitmap == 0 or bitmap >= count:
            continue
        first = first_data + g * per_group
        n = min(per_group, count - first)
        bits = np.unpackbits(
            np.frombuffer(read(start + bitmap * bs, bs), np.uint8), bitorder="little"
        )
        free = np.concatenate(([0], (bits[:n] == 0).view(np.int8), [0]))
        edges = np.flatnonzero(np.diff(free))
        for a, z in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            yield start + (first + a) * bs, (z - a) * bs


def _merge(runs: Iterator[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    cur: tuple[int, int] | None = None
    for s, n in runs:
        if cur is not None and s == cur[0] + cur[1]:
            cur = (cur[0], cur[1] + n)
            continue
        if cur is not None:
            yield cur
        cur = (s, n)
    if cur is not None:
        yield cur


def free_ranges(read: Reader, size: int, sector_size: int = 512) -> list[tuple[int, int]]:
    """Free byte ranges of every file system pyvhdx knows, in each partition (or the
    whole disk without a partition table), sorted."""
    out: list[tuple[int, int]] = []
    for start, length in partition_ranges(read, size, sector_size):
        out += ext4_free_ranges(read, start, length)
    return sorted(out)
