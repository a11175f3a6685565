"""Resizing a VHDX in place (as Hyper-V's Resize-VHD; MS-VHDX 2.2.3 region table,
2.5 BAT, 2.6.2.2 Virtual Disk Size), crash-safe through the log (2.3).

Growing writes everything new where no reader looks yet: BAT entries past the
current entry count (their blocks, for a fixed disk, past the end of the file),
zeros over the stale tail of the last block, or a whole new BAT region at the
end of the file when the old one is too small. Then one log entry changes the
Virtual Disk Size item (and, for a moved BAT, both region tables): a crash
before that entry is complete leaves the old disk, after it the new one.

Shrinking changes the Virtual Disk Size item through one log entry, closes the
log, then clears the BAT entries past the new count (no reader looks at them)
and cuts the file after the last structure still in use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import constants as K
from ..bat import vhdx_bat_entry_count, vhdx_payload_index
from ..constants import NIL_GUID, DiskType, MiB, PayloadState
from ..errors import InvalidArgumentError, UnsupportedFeatureError
from .edit import SectorPatch
from .layout import vhdx_region_table

if TYPE_CHECKING:
    from .file import VHDXFile

__all__ = ["check_new_size", "resize"]

_COPY_STEP = 8 * MiB  # BAT bytes copied per step when the BAT moves


def _align(n: int, to: int = MiB) -> int:
    return -(-n // to) * to


def check_new_size(f: VHDXFile, size: int) -> None:
    """Refuse a size the VHDX cannot have (MS-VHDX 2.6.2.2) or a disk pyvhdx cannot resize."""
    if f.disk_type is DiskType.DIFFERENCING:
        raise UnsupportedFeatureError(
            f"{f.source.name} is a differencing disk: merge it into its parent and resize that"
        )
    ss = f.logical_sector_size
    if not 0 < size <= K.VHDX_MAX_VIRTUAL_SIZE or size % ss:
        raise InvalidArgumentError(
            f"size must be a multiple of the {ss}-byte sector from one sector to 64 TiB, not {size}"
        )


def resize(f: VHDXFile, size: int) -> None:
    """Give the open (writable) VHDX ``f`` the virtual size ``size``; close it afterwards."""
    check_new_size(f, size)
    if size == f.virtual_size:
        return
    f._begin_session()
    patch = SectorPatch(f)
    if size > f.virtual_size:
        old_end = f.source.physical_size
        try:
            _grow(f, size, patch)
        except OSError:  # a full disk, say: nothing names the new space yet, give it back
            f.source.truncate(old_end)
            raise
    item = f.metadata[K.META_VIRTUAL_DISK_SIZE]
    at = f.regions[K.REGION_METADATA].file_offset + item.offset
    patch.patch(at, size.to_bytes(8, "little"), "metadata region")
    patch.apply()
    if size < f.virtual_size:
        _after_shrink(f, size)
    f.virtual_size = size


def _entries(f: VHDXFile, size: int) -> int:
    return vhdx_bat_entry_count(size, f.payload_block_size, f.logical_sector_size, False)


def _grow(f: VHDXFile, size: int, patch: SectorPatch) -> None:
    """Everything a grow writes before the log entry that makes it count."""
    bs, ratio = f.payload_block_size, f.chunk_ratio
    old, old_count, new_count = f.virtual_size, f.bat_entry_count, _entries(f, size)
    region = f.regions[K.REGION_BAT]
    end = _align(f.source.physical_size)
    bat_offset = region.file_offset
    moved = new_count * 8 > region.length
    if moved:  # a new BAT region at the end of the file, the old entries copied
        bat_offset, length = end, _align(new_count * 8)
        end += length
        f.source.truncate(end)
        for pos in range(0, old_count * 8, _COPY_STEP):
            n = min(_COPY_STEP, old_count * 8 - pos)
            f.source.pwrite(
                f.source.read_exact(region.file_offset + pos, n, "BAT"), bat_offset + pos
            )
    end = _zero_tail(f, old, size, end, patch, bat_offset if moved else None)
    new = np.zeros(new_count - old_count, dtype="<u8")
    if f.disk_type is DiskType.FIXED:  # every new block allocated, FULLY_PRESENT
        first, last = -(-old // bs), -(-size // bs)
        blocks = np.arange(first, last, dtype=np.int64)
        offsets = np.uint64(end) + (blocks - first).astype(np.uint64) * np.uint64(bs)
        new[blocks + blocks // ratio - old_count] = offsets | np.uint64(PayloadState.FULLY_PRESENT)
        end += (last - first) * bs
    if f.source.physical_size < end:
        f.source.truncate(end)
    if not moved or new.any():  # a moved BAT's new entries lie past the old end: zeros
        f.source.pwrite(new.tobytes(), bat_offset + 8 * old_count)
    f.source.flush()
    if moved:
        entries = [
            (
                e.guid,
                bat_offset if e.guid == K.REGION_BAT else e.file_offset,
                _align(new_count * 8) if e.guid == K.REGION_BAT else e.length,
                e.required,
            )
            for e in f.regions.values()
        ]
        table = vhdx_region_table(entries)
        for offset in K.VHDX_REGION_TABLE_OFFSETS:  # the 4 KiB sectors that change
            now = f.source.read_exact(offset, len(table), "region table")
            for pos in range(0, len(table), 4096):
                if table[pos : pos + 4096] != now[pos : pos + 4096]:
                    patch.patch(offset + pos, table[pos : pos + 4096], "region table")


def _zero_tail(
    f: VHDXFile, old: int, size: int, end: int, patch: SectorPatch, moved_bat: int | None
) -> int:
    """Zeros after the old end of the disk in its last block, which may hold stale data.

    A block whose tail is not its own in the file (another structure follows its
    used part) is copied to the end of the file instead; returns the new file end.
    """
    bs = f.payload_block_size
    used = old % bs
    block = old // bs
    if not used:
        return end
    code = f.table.code(block)
    if code < 0:
        return end
    stop = min(bs, size - block * bs)
    if _tail_is_free(f, code + used, code + stop, code):
        # a step at a time (a block may be 256 MiB); zeros (a hole, often) are not
        # written again
        zeros = bytes(min(_COPY_STEP, stop - used))
        for pos in range(code + used, code + stop, _COPY_STEP):
            step = zeros[: code + stop - pos]
            if f.source.read_exact(pos, len(step), "payload block") != step:
                f.source.pwrite(step, pos)
        return end
    data = f.source.read_exact(code, used, "payload block")
    f.source.pwrite(data + bytes(bs - used), end)
    value = (end | PayloadState.FULLY_PRESENT).to_bytes(8, "little")
    index = vhdx_payload_index(block, f.chunk_ratio)
    if moved_bat is not None:
        f.source.pwrite(value, moved_bat + 8 * index)
    else:
        patch.patch(f.bat_offset + 8 * index, value, "BAT")
    return end + bs


def _tail_is_free(f: VHDXFile, start: int, stop: int, own: int) -> bool:
    """No structure and no other block lies in the file between ``start`` and ``stop``."""
    spans = [(0, K.VHDX_HEADER_AREA_SIZE), *((s, n) for s, n, _ in f.reserved_spans)]
    if any(s < stop and start < s + n for s, n in spans):
        return False
    bs = f.payload_block_size
    for _first, codes in f.table.iter_chunks():
        hit = (codes >= 0) & (codes != own) & (codes < stop) & (codes + bs > start)
        if hit.any():
            return False
    return True


def _after_shrink(f: VHDXFile, size: int) -> None:
    """Close the log, clear the BAT entries past the new count, cut the file's tail."""
    if f._log_guid != NIL_GUID:  # a replay after the cut would find the file too short
        f._update_headers(log_guid=NIL_GUID)
        f._log_guid = NIL_GUID
    new_count, old_count = _entries(f, size), f.bat_entry_count
    f.source.pwrite(bytes(8 * (old_count - new_count)), f.bat_offset + 8 * new_count)
    f.source.flush()
    bs = f.payload_block_size
    last = -(-size // bs)  # blocks the disk keeps
    keep = max([K.VHDX_HEADER_AREA_SIZE, *(s + n for s, n, _ in f.reserved_spans)])
    for first, codes in f.table.iter_chunks():
        kept = codes[: max(0, last - first)]
        if (kept >= 0).any():
            keep = max(keep, int(kept[kept >= 0].max()) + bs)
    if _align(keep) < f.source.physical_size:
        f.source.truncate(_align(keep))
        f.source.flush()
