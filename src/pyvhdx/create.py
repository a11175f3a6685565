"""Create new, empty VHDX and VHD images.

VHDX layout written (MS-VHDX 2.1, every object 1 MiB aligned):

======== =========================================================
0        file type identifier (2.2.1)
64 KiB   header 1, 128 KiB header 2 (2.2.2), both valid
192 KiB  region table 1, 256 KiB region table 2 (2.2.3), identical
1 MiB    log (1 MiB, empty: LogGuid is zero) (2.3)
2 MiB    metadata region (1 MiB) (2.6)
3 MiB    BAT region, rounded up to 1 MiB (2.5)
...      payload blocks (fixed: all, in order; dynamic: none yet)
======== =========================================================

VHD layout written (Virtual Hard Disk Image Format Specification, 2006;
SPEC-NOTES.md "VHD"), as QEMU ``vpc`` and Hyper-V write it:

============ ==================================================================
fixed        the disk data (``size`` bytes, sparse), then the 512-byte footer
dynamic 0    footer copy (512 bytes)
dynamic 512  dynamic header (1024 bytes), DataOffset all ones (pitfall 20)
dynamic 1536 BAT: ceil(size / block) entries of 0xFFFFFFFF, padded with
             0xFFFFFFFF to a 512-byte multiple
dynamic end  footer (blocks are added before it as they are written)
============ ==================================================================
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from ._version import __version__ as _version
from .bat import chunk_ratio, vhdx_bat_entry_count
from .checksum import crc32c_with_zeroed_field
from .constants import (
    META_FILE_PARAMETERS,
    META_LOGICAL_SECTOR_SIZE,
    META_PAGE83_DATA,
    META_PHYSICAL_SECTOR_SIZE,
    META_VIRTUAL_DISK_SIZE,
    REGION_BAT,
    REGION_METADATA,
    VHDX_DEFAULT_BLOCK_SIZE,
    VHDX_MAX_BLOCK_SIZE,
    VHDX_MAX_VIRTUAL_SIZE,
    VHDX_MIN_BLOCK_SIZE,
    VHDX_SECTOR_SIZES,
    DiskType,
    MiB,
    PayloadState,
)
from .errors import InvalidArgumentError
from .structures.vhdx import (
    FILE_IDENTIFIER,
    HEADER,
    METADATA_ENTRY,
    METADATA_TABLE_HEADER,
    REGION_TABLE_ENTRY,
    REGION_TABLE_HEADER,
)

__all__ = ["VHDXLayout", "create_vhdx", "vhdx_layout"]

KiB = 1024
NIL_GUID = uuid.UUID(int=0)
LOG_OFFSET = 1 * MiB
LOG_LENGTH = 1 * MiB
METADATA_OFFSET = 2 * MiB
METADATA_LENGTH = 1 * MiB
BAT_OFFSET = 3 * MiB


class VHDXLayout:
    """Offsets of a VHDX that :func:`create_vhdx` writes."""

    def __init__(
        self, virtual_size: int, block_size: int, logical_sector_size: int, differencing: bool
    ) -> None:
        self.block_count = -(-virtual_size // block_size)
        self.chunk_ratio = chunk_ratio(logical_sector_size, block_size)
        self.bat_entries = vhdx_bat_entry_count(
            virtual_size, block_size, logical_sector_size, differencing
        )
        self.bat_length = max(MiB, -(-self.bat_entries * 8 // MiB) * MiB)
        self.data_offset = BAT_OFFSET + self.bat_length


def vhdx_layout(
    virtual_size: int, block_size: int, logical_sector_size: int, differencing: bool = False
) -> VHDXLayout:
    """The layout :func:`create_vhdx` uses for these parameters."""
    return VHDXLayout(virtual_size, block_size, logical_sector_size, differencing)


def _with_crc(raw: bytearray) -> bytes:
    raw[4:8] = crc32c_with_zeroed_field(raw, 4).to_bytes(4, "little")
    return bytes(raw)


def vhdx_header(
    sequence_number: int,
    *,
    file_write_guid: uuid.UUID,
    data_write_guid: uuid.UUID,
    log_guid: uuid.UUID = NIL_GUID,
    log_offset: int = LOG_OFFSET,
    log_length: int = LOG_LENGTH,
) -> bytes:
    """A 4 KiB header with its CRC-32C (MS-VHDX 2.2.2)."""
    raw = bytearray(
        HEADER.build(
            dict(
                checksum=0,
                sequence_number=sequence_number,
                file_write_guid=file_write_guid,
                data_write_guid=data_write_guid,
                log_guid=log_guid,
                log_version=0,
                version=1,
                log_length=log_length,
                log_offset=log_offset,
                reserved=bytes(4016),
            )
        )
    )
    return _with_crc(raw)


def vhdx_region_table(entries: list[tuple[uuid.UUID, int, int, bool]]) -> bytes:
    """A 64 KiB region table with its CRC-32C (MS-VHDX 2.2.3)."""
    raw = bytearray(64 * KiB)
    raw[:16] = REGION_TABLE_HEADER.build(dict(checksum=0, entry_count=len(entries), reserved=0))
    for i, (guid, offset, length, required) in enumerate(entries):
        raw[16 + 32 * i : 48 + 32 * i] = REGION_TABLE_ENTRY.build(
            dict(guid=guid, file_offset=offset, length=length, flags=int(required))
        )
    return _with_crc(raw)


def vhdx_metadata_region(items: list[tuple[uuid.UUID, bytes, int]]) -> bytes:
    """The metadata table and items, ``(guid, data, flags)`` each (MS-VHDX 2.6)."""
    raw = bytearray(METADATA_LENGTH)
    raw[:32] = METADATA_TABLE_HEADER.build(
        dict(reserved=0, entry_count=len(items), reserved2=bytes(20))
    )
    pos = 64 * KiB
    for i, (guid, data, flags) in enumerate(items):
        raw[32 + 32 * i : 64 + 32 * i] = METADATA_ENTRY.build(
            dict(item_id=guid, offset=pos, length=len(data), flags=flags, reserved=0)
        )
        raw[pos : pos + len(data)] = data
        pos += max(8, -(-len(data) // 8) * 8)
    return bytes(raw)


def _check_vhdx_args(
    size: int, block_size: int, logical_sector_size: int, physical_sector_size: int
) -> None:
    if logical_sector_size not in VHDX_SECTOR_SIZES:
        raise InvalidArgumentError(
            f"logical sector size must be 512 or 4096, not {logical_sector_size}"
        )
    if physical_sector_size not in VHDX_SECTOR_SIZES:
        raise InvalidArgumentError(
            f"physical sector size must be 512 or 4096, not {physical_sector_size}"
        )
    if not (
        VHDX_MIN_BLOCK_SIZE <= block_size <= VHDX_MAX_BLOCK_SIZE
        and block_size & (block_size - 1) == 0
    ):
        raise InvalidArgumentError(
            f"block size must be a power of two from 1 MiB to 256 MiB, not {block_size}"
        )
    if not 0 < size <= VHDX_MAX_VIRTUAL_SIZE or size % logical_sector_size:
        raise InvalidArgumentError(
            f"size must be a multiple of the {logical_sector_size}-byte sector "
            f"from one sector to 64 TiB, not {size}"
        )


def create_vhdx(
    path: str | os.PathLike[str],
    size: int,
    *,
    disk_type: DiskType | str = DiskType.DYNAMIC,
    block_size: int | None = None,
    logical_sector_size: int = 512,
    physical_sector_size: int = 4096,
    overwrite: bool = False,
    preallocate: bool = False,
) -> Path:
    """Create an empty fixed or dynamic VHDX.

    Args:
        path: the new file.
        size: virtual size in bytes (a multiple of the logical sector, ≤ 64 TiB).
        disk_type: ``"dynamic"`` (blocks allocated on write) or ``"fixed"`` (every
            block allocated now, FULLY_PRESENT; the file is sparse unless
            ``preallocate``).
        block_size: 1 MiB to 256 MiB, a power of two; default 32 MiB as Hyper-V.
        logical_sector_size, physical_sector_size: 512 or 4096.
        overwrite: replace an existing file (otherwise it is an error).
        preallocate: write out the data area of a fixed image.

    Raises:
        InvalidArgumentError: a parameter out of the spec's limits.
        FileExistsError: the file exists and ``overwrite`` is false.
    """
    disk_type = DiskType(disk_type)
    if disk_type is DiskType.DIFFERENCING:
        raise InvalidArgumentError("differencing images are created with a parent (not yet)")
    block_size = VHDX_DEFAULT_BLOCK_SIZE if block_size is None else block_size
    _check_vhdx_args(size, block_size, logical_sector_size, physical_sector_size)
    layout = vhdx_layout(size, block_size, logical_sector_size)
    fixed = disk_type is DiskType.FIXED

    bat = np.zeros(layout.bat_length // 8, dtype="<u8")
    end = layout.data_offset
    if fixed:
        blocks = np.arange(layout.block_count, dtype=np.uint64)
        offsets = np.uint64(layout.data_offset) + blocks * np.uint64(block_size)
        bat[blocks + blocks // np.uint64(layout.chunk_ratio)] = offsets | np.uint64(
            PayloadState.FULLY_PRESENT
        )
        end = layout.data_offset + layout.block_count * block_size

    items = [
        (
            META_FILE_PARAMETERS,
            block_size.to_bytes(4, "little") + int(fixed).to_bytes(4, "little"),
            4,  # IsRequired
        ),
        (META_VIRTUAL_DISK_SIZE, size.to_bytes(8, "little"), 6),  # IsVirtualDisk|IsRequired
        (META_LOGICAL_SECTOR_SIZE, logical_sector_size.to_bytes(4, "little"), 6),
        (META_PHYSICAL_SECTOR_SIZE, physical_sector_size.to_bytes(4, "little"), 6),
        (META_PAGE83_DATA, uuid.uuid4().bytes_le, 6),
    ]
    regions = [
        (REGION_BAT, BAT_OFFSET, layout.bat_length, True),
        (REGION_METADATA, METADATA_OFFSET, METADATA_LENGTH, True),
    ]
    file_write_guid, data_write_guid = uuid.uuid4(), uuid.uuid4()
    head = bytearray(1 * MiB)
    head[0:520] = FILE_IDENTIFIER.build(dict(creator=f"pyvhdx {_version}"))
    for i, off in enumerate((64 * KiB, 128 * KiB)):
        head[off : off + 4 * KiB] = vhdx_header(
            i, file_write_guid=file_write_guid, data_write_guid=data_write_guid
        )
    table = vhdx_region_table(regions)
    head[192 * KiB : 256 * KiB] = table
    head[256 * KiB : 320 * KiB] = table

    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(target, flags | getattr(os, "O_BINARY", 0), 0o644)
    try:
        os.pwrite(fd, head, 0)
        os.pwrite(fd, vhdx_metadata_region(items), METADATA_OFFSET)
        if fixed:  # a dynamic BAT is all zeros (NOT_PRESENT): the truncate below makes it
            os.pwrite(fd, bat.tobytes(), BAT_OFFSET)
        if preallocate and fixed:
            zeros = bytes(min(block_size, 8 * MiB))
            pos = layout.data_offset
            while pos < end:
                pos += os.pwrite(fd, zeros[: min(len(zeros), end - pos)], pos)
        os.ftruncate(fd, end)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)
    return target
