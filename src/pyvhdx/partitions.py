"""Where a disk's partitions end: the MBR (partition table at byte 446 of sector 0)
and the GPT (UEFI 2.10 section 5.3: header at LBA 1, entries, backup header).

Used to find the smallest size a disk can be shrunk to without cutting into a
partition or the GPT's backup header (:func:`pyvhdx.resize.minimum_size`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PartitionTable", "partition_ranges", "read_partition_table"]

_MBR_ENTRIES = 446
_GPT_SIGNATURE = b"EFI PART"
_PROTECTIVE = 0xEE
_MAX_GPT_ENTRIES = 1024  # more than any tool writes (128 is the default); bounds the read


@dataclass(frozen=True)
class PartitionTable:
    """A partition table as found: its kind (``"mbr"``, ``"gpt"``) and its extent."""

    kind: str
    ranges: tuple[tuple[int, int], ...]  # (offset, length) of each partition, in bytes
    end: int  # byte after the last partition, and the backup GPT header for a GPT


def read_partition_table(
    read: Callable[[int, int], bytes], size: int, sector_size: int = 512
) -> PartitionTable | None:
    """The MBR or GPT of a ``size``-byte disk read through ``read(offset, length)``;
    None when sector 0 holds no partition table (no 0x55AA signature)."""
    if size < 2 * sector_size:
        return None
    mbr = read(0, 512)
    if mbr[510:512] != b"\x55\xaa":
        return None
    ranges: list[tuple[int, int]] = []
    gpt = False
    for i in range(4):
        entry = mbr[_MBR_ENTRIES + 16 * i : _MBR_ENTRIES + 16 * (i + 1)]
        kind = entry[4]
        first = int.from_bytes(entry[8:12], "little")
        count = int.from_bytes(entry[12:16], "little")
        if kind == 0 or count == 0:
            continue
        if kind == _PROTECTIVE:
            gpt = True
            continue
        # an extended partition holds its logical ones (not listed apart)
        ranges.append((first * sector_size, count * sector_size))
    if gpt:
        table = _gpt(read, size, sector_size)
        if table is not None:
            return table
    if not ranges:
        return None
    return PartitionTable("mbr", tuple(ranges), max(s + n for s, n in ranges))


def _gpt(read: Callable[[int, int], bytes], size: int, ss: int) -> PartitionTable | None:
    """The GPT whose header is at LBA 1 (UEFI 5.3.2), if its signature is there."""
    header = read(ss, 92)
    if header[:8] != _GPT_SIGNATURE:
        return None
    alternate = int.from_bytes(header[32:40], "little")
    entries_lba = int.from_bytes(header[72:80], "little")
    count = min(int.from_bytes(header[80:84], "little"), _MAX_GPT_ENTRIES)
    entry_size = int.from_bytes(header[84:88], "little")
    end = (alternate + 1) * ss if (alternate + 1) * ss <= size else 2 * ss
    found: list[tuple[int, int]] = []
    if 128 <= entry_size <= 4096 and (entries_lba * ss + count * entry_size) <= size:
        raw = read(entries_lba * ss, count * entry_size)
        for i in range(count):
            e = raw[i * entry_size : (i + 1) * entry_size]
            if any(e[:16]):  # a used entry: its partition type GUID is not zero
                first = int.from_bytes(e[32:40], "little")
                last = int.from_bytes(e[40:48], "little")
                if first <= last:
                    found.append((first * ss, (last + 1 - first) * ss))
                    end = max(end, (last + 1) * ss)
    return PartitionTable("gpt", tuple(found), min(end, size))


def partition_ranges(
    read: Callable[[int, int], bytes], size: int, sector_size: int = 512
) -> list[tuple[int, int]]:
    """``(offset, length)`` of each partition inside the disk, or of the whole disk
    when it has no partition table."""
    table = read_partition_table(read, size, sector_size)
    if table is None:
        return [(0, size)]
    return [(s, min(n, size - s)) for s, n in table.ranges if s < size]
