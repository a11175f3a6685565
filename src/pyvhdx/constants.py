"""GUIDs, enumerations and limits of the VHDX and VHD formats.

Values are from MS-VHDX (sections cited per item) and the Virtual Hard Disk
Image Format Specification (2006); see ../shared/SPEC-NOTES.md.
"""

from __future__ import annotations

import enum
import uuid
from typing import Final

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB
TiB: Final = 1024 * GiB

#: The nil GUID: an unset LogGuid (MS-VHDX 2.2.2), an unset GUID field anywhere.
NIL_GUID: Final = uuid.UUID(int=0)


class ImageFormat(str, enum.Enum):
    """On-disk container format, detected by content."""

    VHDX = "vhdx"
    VHD = "vhd"
    RAW = "raw"


class DiskType(str, enum.Enum):
    """Allocation model of a virtual disk."""

    FIXED = "fixed"
    DYNAMIC = "dynamic"
    DIFFERENCING = "differencing"


class PayloadState(enum.IntEnum):
    """VHDX payload BAT entry states (MS-VHDX 2.5.1.1)."""

    NOT_PRESENT = 0
    UNDEFINED = 1
    ZERO = 2
    UNMAPPED = 3
    UNMAPPED_V095 = 5  # value of UNMAPPED in spec v0.95 (SPEC-NOTES pitfall 6)
    FULLY_PRESENT = 6
    PARTIALLY_PRESENT = 7


class SectorBitmapState(enum.IntEnum):
    """VHDX sector bitmap BAT entry states (MS-VHDX 2.5.1.2)."""

    NOT_PRESENT = 0
    PRESENT = 6


class RunKind(enum.IntEnum):
    """What a run of the virtual disk maps to (the block-map protocol, DESIGN.md)."""

    DATA = 0  # bytes stored in this file at file_offset
    ZERO = 1  # reads as zeros; the image says so explicitly
    UNMAPPED = 2  # not allocated; reads as zeros in a non-differencing image
    PARENT = 3  # ask the parent image


# --- VHDX (MS-VHDX 2.2) -------------------------------------------------------

VHDX_SIGNATURE: Final = b"vhdxfile"
VHDX_HEADER_SIGNATURE: Final = b"head"
VHDX_REGION_SIGNATURE: Final = b"regi"
VHDX_METADATA_SIGNATURE: Final = b"metadata"
VHDX_LOG_ENTRY_SIGNATURE: Final = b"loge"
VHDX_ZERO_DESC_SIGNATURE: Final = b"zero"
VHDX_DATA_DESC_SIGNATURE: Final = b"desc"
VHDX_DATA_SECTOR_SIGNATURE: Final = b"data"

VHDX_FILE_ID_OFFSET: Final = 0
VHDX_HEADER_OFFSETS: Final = (64 * KiB, 128 * KiB)
VHDX_REGION_TABLE_OFFSETS: Final = (192 * KiB, 256 * KiB)
VHDX_HEADER_SIZE: Final = 4 * KiB
VHDX_REGION_TABLE_SIZE: Final = 64 * KiB
VHDX_HEADER_AREA_SIZE: Final = 1 * MiB
VHDX_METADATA_TABLE_SIZE: Final = 64 * KiB
VHDX_LOG_SECTOR_SIZE: Final = 4 * KiB
VHDX_SECTOR_BITMAP_BLOCK_SIZE: Final = 1 * MiB
VHDX_ALIGNMENT: Final = 1 * MiB

VHDX_MAX_REGION_ENTRIES: Final = 2047
VHDX_MAX_METADATA_ENTRIES: Final = 2047
VHDX_MAX_METADATA_ITEM_SIZE: Final = 1 * MiB
VHDX_MIN_BLOCK_SIZE: Final = 1 * MiB
VHDX_MAX_BLOCK_SIZE: Final = 256 * MiB
VHDX_DEFAULT_BLOCK_SIZE: Final = 32 * MiB
VHDX_MAX_VIRTUAL_SIZE: Final = 64 * TiB
VHDX_SECTOR_SIZES: Final = (512, 4096)
VHDX_CHUNK_SECTORS: Final = 1 << 23  # sectors described by one sector bitmap block

VHDX_BAT_STATE_MASK: Final = 0x7
VHDX_BAT_OFFSET_MASK: Final = 0xFFFFFFFFFFF00000

# Region GUIDs (MS-VHDX 2.2.3.1)
REGION_BAT: Final = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
REGION_METADATA: Final = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
KNOWN_REGIONS: Final = {REGION_BAT: "BAT", REGION_METADATA: "Metadata"}

# Metadata item GUIDs (MS-VHDX 2.6.2)
META_FILE_PARAMETERS: Final = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
META_VIRTUAL_DISK_SIZE: Final = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
META_PAGE83_DATA: Final = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
META_LOGICAL_SECTOR_SIZE: Final = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
META_PHYSICAL_SECTOR_SIZE: Final = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
META_PARENT_LOCATOR: Final = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
KNOWN_METADATA: Final = {
    META_FILE_PARAMETERS: "file_parameters",
    META_VIRTUAL_DISK_SIZE: "virtual_disk_size",
    META_PAGE83_DATA: "page83_data",
    META_LOGICAL_SECTOR_SIZE: "logical_sector_size",
    META_PHYSICAL_SECTOR_SIZE: "physical_sector_size",
    META_PARENT_LOCATOR: "parent_locator",
}

# Parent locator type (MS-VHDX 2.6.2.6)
PARENT_LOCATOR_TYPE_VHDX: Final = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

# --- VHD (Virtual Hard Disk Image Format Specification, 2006) -----------------

VHD_FOOTER_COOKIE: Final = b"conectix"
VHD_DYNAMIC_COOKIE: Final = b"cxsparse"
VHD_FOOTER_SIZE: Final = 512
VHD_OLD_FOOTER_SIZE: Final = 511
VHD_DYNAMIC_HEADER_SIZE: Final = 1024
VHD_SECTOR_SIZE: Final = 512
VHD_BAT_UNUSED: Final = 0xFFFFFFFF
VHD_FIXED_DATA_OFFSET: Final = 0xFFFFFFFFFFFFFFFF
VHD_DEFAULT_BLOCK_SIZE: Final = 2 * MiB
VHD_MAX_SECTORS: Final = 0xFF000000  # 2040 GiB
VHD_MAX_SIZE: Final = VHD_MAX_SECTORS * VHD_SECTOR_SIZE
VHD_TIMESTAMP_EPOCH: Final = 946684800  # 2000-01-01T00:00:00Z as a Unix time


class VHDDiskType(enum.IntEnum):
    """VHD footer Disk Type field."""

    NONE = 0
    RESERVED_1 = 1
    FIXED = 2
    DYNAMIC = 3
    DIFFERENCING = 4
    RESERVED_5 = 5
    RESERVED_6 = 6
