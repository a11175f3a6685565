"""Growing a VHD in place (as Hyper-V's Resize-VHD, which cannot shrink a VHD either;
VHD spec "Hard Disk Footer Format", "Dynamic Disk Header Format", "Block Allocation
Table and Data Blocks").

A VHD has no log, so the writes are ordered and each is flushed before the next.
Dynamic: (1) what no reader looks at yet: BAT entries past MaxTableEntries, or a
whole new BAT after the footer (the footer first moved past it), zeros over the
stale tail of the last block; (2) the dynamic header naming the larger BAT (the
old size still reads the same through it); (3) the footer at the end with the new
Current Size, which readers use: from here on the disk has its new size; (4) the
footer copy at offset 0. A crash between (3) and (4) leaves copies that differ
in their sizes and geometry; readers use the one at the end (the new size).
:func:`pyvhdx.resize.resize_image` records the resize beside the image first
(``IMAGE.pyvhdx-resize``), so ``pyvhdx check`` warns of the interrupted resize
instead of failing, and running it again rewrites the copy.

Fixed: (1) a copy of the current footer at the new end of the file: readers
take the old size from it and the bytes before it are not part of the disk
(``pyvhdx check`` warns of them); (2) zeros over the old footer's sector, which
no reader looks at now; (3) the new footer over the copy: from here on the disk
has its new size, zeros after the old end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..constants import VHD_BAT_UNUSED, VHD_MAX_SIZE, VHD_SECTOR_SIZE, DiskType
from ..errors import InvalidArgumentError, UnsupportedFeatureError
from ..structures.vhd import DYNAMIC_HEADER_CHECKSUM_OFFSET, FOOTER_CHECKSUM_OFFSET
from .layout import (
    FOOTER_FIELDS,
    HEADER_FIELDS,
    chs_geometry,
    vhd_bat_bytes,
    with_checksum,
)

if TYPE_CHECKING:
    from .file import VHDFile

__all__ = ["check_new_size", "resize", "resized_footer"]


def check_new_size(f: VHDFile, size: int) -> None:
    """Refuse a size this VHD cannot take: smaller (VHDs are not shrunk, as by Hyper-V),
    not a whole sector, or past 2040 GiB (spec; QEMU's limit)."""
    if f.disk_type is DiskType.DIFFERENCING:
        raise UnsupportedFeatureError(
            f"{f.source.name} is a differencing disk: merge it into its parent and resize that"
        )
    if size < f.virtual_size:
        raise InvalidArgumentError(
            f"a VHD cannot be shrunk ({size} < {f.virtual_size}), as with Hyper-V: convert it "
            "to VHDX and shrink that"
        )
    if size > VHD_MAX_SIZE or size % VHD_SECTOR_SIZE:
        raise InvalidArgumentError(
            f"size must be a multiple of {VHD_SECTOR_SIZE} bytes up to "
            f"{VHD_MAX_SIZE >> 30} GiB for a VHD, not {size}"
        )


def resized_footer(raw: bytes, size: int) -> bytes:
    """The footer ``raw`` with Current Size ``size`` and its CHS geometry (spec
    appendix, pitfall 19). Original Size too: libvhdi takes a disk's size from it."""
    out = bytearray(raw)
    for name in ("OriginalSize", "CurrentSize"):
        at = FOOTER_FIELDS[name]
        out[at : at + 8] = size.to_bytes(8, "big")
    c, h, s = chs_geometry(size // VHD_SECTOR_SIZE)
    at = FOOTER_FIELDS["DiskGeometry"]
    out[at : at + 4] = c.to_bytes(2, "big") + bytes((h, s))
    return with_checksum(out, FOOTER_CHECKSUM_OFFSET)


def resize(f: VHDFile, size: int) -> None:
    """Grow the open (writable) VHD ``f`` to ``size`` bytes; close it afterwards."""
    check_new_size(f, size)
    if size == f.virtual_size:
        _finish_copy(f)
        return
    footer = resized_footer(f.footer_raw[: f.footer_size].ljust(VHD_SECTOR_SIZE, b"\0"), size)
    if f.disk_type is DiskType.FIXED:
        _grow_fixed(f, size, footer)
        return
    f._check_layout_for_writing()
    _zero_tail(f, size)
    _grow_bat(f, size)
    f.source.pwrite(footer, f.data_end)  # (3) readers take the new size from here
    f.source.flush()
    f.source.pwrite(footer, 0)  # (4)
    f.source.flush()
    f.virtual_size = size


def _finish_copy(f: VHDFile) -> None:
    """After a crash between (3) and (4): the footer copy at offset 0 made equal to the
    footer at the end that readers use (running the same resize again does this)."""
    if f.disk_type is DiskType.FIXED or f.footer_copy != "end" or not f.footer_checksum_ok:
        return
    footer = f.footer_raw[: f.footer_size].ljust(VHD_SECTOR_SIZE, b"\0")
    if f.source.read_exact(0, VHD_SECTOR_SIZE, "VHD footer copy") != footer:
        f.source.pwrite(footer, 0)
        f.source.flush()


def _grow_fixed(f: VHDFile, size: int, footer: bytes) -> None:
    old = f.virtual_size
    if f.data_end != old:
        raise UnsupportedFeatureError(
            f"{f.source.name}: the footer is at {f.data_end:#x}, not after the "
            f"{old}-byte disk (pyvhdx check reports it); repair the image first"
        )
    f.source.pwrite(f.footer_raw[: f.footer_size], size)  # (1)
    f.source.flush()
    f.source.pwrite(bytes(VHD_SECTOR_SIZE), old)  # (2)
    f.source.flush()
    f.source.pwrite(footer, size)  # (3)
    f.source.flush()
    f.virtual_size = size


def _zero_tail(f: VHDFile, size: int) -> None:
    """Zeros after the old end of the disk in its last block (a crash-safe write: no
    reader looks past the old size yet)."""
    assert f.block_size is not None
    bs, old = f.block_size, f.virtual_size
    used, block = old % bs, old // bs
    if not used or (code := f.table.code(block)) < 0:
        return
    stop = min(bs, size - block * bs)
    if code + stop > f.data_end:
        raise UnsupportedFeatureError(
            f"{f.source.name}: the last block at {code:#x} is cut short by the footer; "
            "pyvhdx cannot grow this image in place (convert it instead)"
        )
    f.source.pwrite(bytes(stop - used), code + used)
    f.source.flush()


def _grow_bat(f: VHDFile, size: int) -> None:
    """(1) and (2): room in the BAT for every block of ``size``."""
    assert f.block_size is not None and f.max_table_entries is not None
    assert f.table_offset is not None and f.header is not None
    old_entries, entries = f.max_table_entries, -(-size // f.block_size)
    if entries <= old_entries:
        return
    unused = np.full(entries - old_entries, VHD_BAT_UNUSED, dtype=">u4").tobytes()
    if entries * 4 <= vhd_bat_bytes(old_entries):  # the BAT's last sector has room
        table = f.table_offset
        f.source.pwrite(unused, table + 4 * old_entries)
    else:  # a new BAT after the footer, the footer moved past it first
        table = f.data_end + VHD_SECTOR_SIZE
        end = table + vhd_bat_bytes(entries)
        f.source.pwrite(f.footer_raw[: f.footer_size], end)
        f.source.flush()
        old = f.source.read_exact(f.table_offset, 4 * old_entries, "VHD BAT")
        f.source.pwrite(old + unused, table)
        f.data_end = end
    f.source.flush()
    header = bytearray(f.header.raw)
    at = HEADER_FIELDS["TableOffset"]
    header[at : at + 8] = table.to_bytes(8, "big")
    at = HEADER_FIELDS["MaxTableEntries"]
    header[at : at + 4] = entries.to_bytes(4, "big")
    assert f.dynamic_header_offset is not None
    f.source.pwrite(with_checksum(header, DYNAMIC_HEADER_CHECKSUM_OFFSET), f.dynamic_header_offset)
    f.source.flush()
