"""Space a guest file system marks free, read through the virtual disk: what
``compact --mode full`` may give back (the ranges read as zeros afterwards, as
if the guest had TRIMmed them).

ext2/3/4 (the ext4 disk layout: superblock at byte 1024, group descriptors in
the block after it, one block bitmap a group) and NTFS (boot sector, the MFT
record of ``$Bitmap``, its data runs: one bit a cluster). Only what the file
system says for sure counts: an ext4 group whose bitmap is not initialised
(BLOCK_UNINIT), a file system that was not cleanly unmounted (ext4 state, NTFS
dirty flag) or has a journal to recover, or any structure that does not parse,
gives nothing back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .partitions import partition_ranges

__all__ = ["ext4_free_ranges", "free_ranges", "ntfs_free_ranges"]

Reader = Callable[[int, int], bytes]

_EXT4_MAGIC = 0xEF53
_VALID_FS = 0x1  # s_state: cleanly unmounted
_ERROR_FS = 0x2
_INCOMPAT_RECOVER = 0x4  # the journal must be replayed first
_INCOMPAT_64BIT = 0x80
_BG_BLOCK_UNINIT = 0x2
_MAX_GROUPS = 1 << 24


def _u(raw: bytes | bytearray, at: int, n: int) -> int:
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


# -- NTFS -------------------------------------------------------------------------------

_NTFS_OEM = b"NTFS    "
_MFT_BITMAP = 6  # MFT record number of $Bitmap
_MFT_VOLUME = 3  # ... and of $Volume
_ATTR_DATA = 0x80
_ATTR_VOLUME_INFORMATION = 0x70
_ATTR_END = 0xFFFFFFFF
_VOLUME_DIRTY = 0x0001


def _ntfs_record(read: Reader, at: int, size: int, sector: int) -> bytes | None:
    """An MFT record with its update sequence fixups applied, or None if damaged."""
    rec = bytearray(read(at, size))
    if rec[:4] != b"FILE":
        return None
    usa, count = _u(rec, 4, 2), _u(rec, 6, 2)
    if count < 1 or usa + 2 * count > size or (count - 1) * sector > size:
        return None
    check = rec[usa : usa + 2]
    for i in range(1, count):
        end = i * sector
        if rec[end - 2 : end] != check:
            return None
        rec[end - 2 : end] = rec[usa + 2 * i : usa + 2 * i + 2]
    return bytes(rec)


def _attribute(rec: bytes, kind: int) -> bytes | None:
    """The first unnamed attribute of type ``kind`` of an MFT record."""
    pos = _u(rec, 20, 2)
    while pos + 16 <= len(rec):
        atype, length = _u(rec, pos, 4), _u(rec, pos + 4, 4)
        if atype == _ATTR_END or length < 16 or pos + length > len(rec):
            return None
        if atype == kind and rec[pos + 9] == 0:  # name length 0
            return rec[pos : pos + length]
        pos += length
    return None


def _data_runs(attr: bytes) -> list[tuple[int, int]] | None:
    """``(first cluster, cluster count)`` of a non-resident attribute's runs."""
    if attr[8] != 1:
        return None
    pos = _u(attr, 32, 2)
    runs: list[tuple[int, int]] = []
    lcn = 0
    while pos < len(attr) and attr[pos]:
        head = attr[pos]
        nlen, noff = head & 0xF, head >> 4
        if not 1 <= nlen <= 8 or noff > 8 or pos + 1 + nlen + noff > len(attr):
            return None
        count = _u(attr, pos + 1, nlen)
        if noff == 0:
            return None  # a sparse run: $Bitmap never has one
        lcn += int.from_bytes(attr[pos + 1 + nlen : pos + 1 + nlen + noff], "little", signed=True)
        runs.append((lcn, count))
        pos += 1 + nlen + noff
    return runs


def ntfs_free_ranges(read: Reader, start: int, length: int) -> list[tuple[int, int]]:
    """Free ``(offset, length)`` byte ranges of the NTFS volume at ``start``; empty
    when there is none, it is marked dirty, or its structures do not parse."""
    if length < 4096:
        return []
    boot = read(start, 512)
    if boot[3:11] != _NTFS_OEM:
        return []
    sector, spc = _u(boot, 11, 2), boot[13]
    spc = 1 << (256 - spc) if spc > 0x80 else spc
    if sector not in (512, 1024, 2048, 4096) or spc == 0:
        return []
    cluster = sector * spc
    clusters = _u(boot, 40, 8) // spc
    raw_rec = int.from_bytes(boot[64:65], "little", signed=True)
    rec_size = 1 << -raw_rec if raw_rec < 0 else raw_rec * cluster
    mft = start + _u(boot, 48, 8) * cluster
    if clusters * cluster > length or not 512 <= rec_size <= 65536:
        return []
    volume = _ntfs_record(read, mft + _MFT_VOLUME * rec_size, rec_size, sector)
    info = None if volume is None else _attribute(volume, _ATTR_VOLUME_INFORMATION)
    if info is None or info[8] != 0 or _u(info, _u(info, 20, 2) + 10, 2) & _VOLUME_DIRTY:
        return []
    record = _ntfs_record(read, mft + _MFT_BITMAP * rec_size, rec_size, sector)
    data = None if record is None else _attribute(record, _ATTR_DATA)
    runs = None if data is None else _data_runs(data)
    if not runs or sum(n for _, n in runs) * cluster * 8 < clusters:
        return []
    bitmap = b"".join(read(start + lcn * cluster, n * cluster) for lcn, n in runs)
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")[:clusters]
    free = np.concatenate(([0], (bits == 0).view(np.int8), [0]))
    edges = np.flatnonzero(np.diff(free))
    return [
        (start + a * cluster, (z - a) * cluster)
        for a, z in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True)
    ]


def free_ranges(read: Reader, size: int, sector_size: int = 512) -> list[tuple[int, int]]:
    """Free byte ranges of every file system pyvhdx knows, in each partition (or the
    whole disk without a partition table), sorted."""
    out: list[tuple[int, int]] = []
    for start, length in partition_ranges(read, size, sector_size):
        out += ext4_free_ranges(read, start, length) or ntfs_free_ranges(read, start, length)
    return sorted(out)
