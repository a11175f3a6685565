"""VHD on-disk structures (Virtual Hard Disk Image Format Specification, 2006).

Declarations only: every structure is big-endian, fixed-size, and parses and
builds symmetrically (reserved areas are kept as bytes so that a build of a
parse gives back the same bytes). Fields build as zeros when not given if they are
reserved or a checksum (computed over the built bytes), and as the value the spec
fixes if it fixes one (the versions, the unused Data Offset). Field names are the spec's names in
snake_case. Validation of the values is the job of :mod:`pyvhdx.vhd.layout`.
"""

from __future__ import annotations

import uuid
from typing import Any

from construct import (
    Adapter,
    Array,
    Bytes,
    Const,
    Default,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Struct,
)

from ..constants import VHD_DYNAMIC_COOKIE, VHD_FIXED_DATA_OFFSET, VHD_FOOTER_COOKIE

__all__ = [
    "DYNAMIC_HEADER_CHECKSUM_OFFSET",
    "FOOTER_CHECKSUM_OFFSET",
    "PARENT_LOCATOR_COUNT",
    "UUIDBE",
    "VERSION_1_0",
    "VHDDiskGeometry",
    "VHDDynamicHeader",
    "VHDFooter",
    "VHDParentLocatorEntry",
]

FOOTER_CHECKSUM_OFFSET = 64  # spec "Hard Disk Footer Format", Checksum
DYNAMIC_HEADER_CHECKSUM_OFFSET = 36  # spec "Dynamic Disk Header Format", Checksum
PARENT_LOCATOR_COUNT = 8
VERSION_1_0 = 0x00010000  # File Format Version and Header Version


class _UUIDBigEndian(Adapter):  # type: ignore[misc]  # construct is untyped
    """16 bytes as a big-endian (RFC 4122 byte order) :class:`uuid.UUID`.

    VHD Unique Id and Parent Unique Id are stored in network byte order
    (libvhdi VHD format notes), unlike the mixed-endian GUIDs of VHDX.
    """

    def _decode(self, obj: bytes, context: Any, path: str) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(obj))

    def _encode(self, obj: uuid.UUID, context: Any, path: str) -> bytes:
        return obj.bytes


UUIDBE = _UUIDBigEndian(Bytes(16))
_ZERO32 = Default(Int32ub, 0)  # a checksum or a reserved field: zero unless given


def _reserved(size: int) -> Any:
    """``size`` reserved bytes, zeros unless given."""
    return Default(Bytes(size), bytes(size))


#: Disk Geometry (footer offset 56): cylinders, heads, sectors per track.
VHDDiskGeometry = Struct(
    "cylinders" / Int16ub,
    "heads" / Int8ub,
    "sectors_per_track" / Int8ub,
)

#: Hard Disk Footer, 512 bytes (spec "Hard Disk Footer Format"). Files made
#: before Virtual PC 2004 have a 511-byte footer: pad it with one zero byte.
VHDFooter = Struct(
    "cookie" / Const(VHD_FOOTER_COOKIE),
    "features" / Int32ub,
    "file_format_version" / Default(Int32ub, VERSION_1_0),
    "data_offset" / Int64ub,
    "time_stamp" / Int32ub,  # seconds since 2000-01-01 00:00:00 UTC
    "creator_application" / Bytes(4),
    "creator_version" / Int32ub,
    "creator_host_os" / Bytes(4),
    "original_size" / Int64ub,
    "current_size" / Int64ub,
    "disk_geometry" / VHDDiskGeometry,
    "disk_type" / Int32ub,
    "checksum" / _ZERO32,
    "unique_id" / UUIDBE,
    "saved_state" / Int8ub,
    "reserved" / _reserved(427),
)

#: Parent Locator Entry, 24 bytes (spec "Dynamic Disk Header Format").
VHDParentLocatorEntry = Struct(
    "platform_code" / Bytes(4),
    "platform_data_space" / Int32ub,
    "platform_data_length" / Int32ub,
    "reserved" / _ZERO32,
    "platform_data_offset" / Int64ub,
)

#: Dynamic Disk Header, 1024 bytes (spec "Dynamic Disk Header Format").
#: ``parent_unicode_name`` stays raw: it is UTF-16BE and may hold unpaired
#: surrogates, so decoding it here would break the build/parse symmetry.
VHDDynamicHeader = Struct(
    "cookie" / Const(VHD_DYNAMIC_COOKIE),
    "data_offset" / Default(Int64ub, VHD_FIXED_DATA_OFFSET),  # unused
    "table_offset" / Int64ub,
    "header_version" / Default(Int32ub, VERSION_1_0),
    "max_table_entries" / Int32ub,
    "block_size" / Int32ub,
    "checksum" / _ZERO32,
    "parent_unique_id" / UUIDBE,
    "parent_time_stamp" / Int32ub,
    "reserved1" / _reserved(4),
    "parent_unicode_name" / Bytes(512),
    "parent_locator_entries" / Array(PARENT_LOCATOR_COUNT, VHDParentLocatorEntry),
    "reserved2" / _reserved(256),
)
