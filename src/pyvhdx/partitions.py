"""Where a disk's partitions end: the MBR (partition table at byte 446 of sector 0)
and the GPT (UEFI 2.10 section 5.3: header at LBA 1, entries, backup header).

Used to find the smallest size a disk can be shrunk to without cutting into a
partition or the GPT's backup header (:func:`pyvhdx.resize.minimum_size`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PartitionTable", "read_partition_table"]

_MBR_ENTRIES = 446
_GPT_SIGNATURE = b"EFI PART"
_PROTECTIVE = 0xEE
_MAX_GPT_ENTRIES = 1024  # more than any tool writes (128 is the default); bounds the read


@dataclass(frozen=True)
class PartitionTable:
    """A partition table as found: its kind (``"mbr"``, ``"gpt"``) and its extent."""

    kind: str
    partitions: int
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
    ends: list[int] = []
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
        ends.append((first + count) * sector_size)  # an extended partition holds its logicals
    if gpt:
        table = _gpt(read, size, sector_size)
        if table is not None:
            return table
    if not ends:
        return None
    return PartitionTable("mbr", len(ends), max(ends))


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
    found = 0
    if 128 <= entry_size <= 4096 and (entries_lba * ss + count * entry_size) <= size:
        raw = read(entries_lba * ss, count * entry_size)
        for i in range(count):
            e = raw[i * entry_size : (i + 1) * entry_size]
            if any(e[:16]):  # a used entry: its partition type GUID is not zero
                found += 1
                end = max(end, (int.from_bytes(e[40:48], "little") + 1) * ss)
    return PartitionTable("gpt", found, min(end, size))
