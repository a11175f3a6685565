"""Construct declarations of the VHDX on-disk structures (MS-VHDX section 2).

Declarations only: parsing and building are symmetric and round-trip tested.
Field names follow the specification in snake_case. Reserved fields and checksums
build as zeros when not given (a checksum is then computed over the built bytes).
GUIDs are ``uuid.UUID`` in the Windows mixed-endian layout (MS-VHDX 1.3.1 /
[MS-DTYP] GUID; SPEC-NOTES pitfall 4). Parsers are never ``compile()``d: they
read untrusted evidence.
"""

from __future__ import annotations

import uuid
from typing import Any

from construct import Adapter, Bytes, Const, Default, Int16ul, Int32ul, Int64ul, Struct

__all__ = [
    "DATA_DESCRIPTOR",
    "DATA_SECTOR",
    "FILE_IDENTIFIER",
    "FILE_PARAMETERS",
    "GUID",
    "HEADER",
    "LOG_ENTRY_HEADER",
    "METADATA_ENTRY",
    "METADATA_TABLE_HEADER",
    "PARENT_LOCATOR_ENTRY",
    "PARENT_LOCATOR_HEADER",
    "REGION_TABLE_ENTRY",
    "REGION_TABLE_HEADER",
    "ZERO_DESCRIPTOR",
]


class _GuidAdapter(Adapter):  # type: ignore[misc]
    """16 bytes in the mixed-endian Windows GUID layout <-> ``uuid.UUID``."""

    def _decode(self, obj: bytes, context: Any, path: str) -> uuid.UUID:
        return uuid.UUID(bytes_le=bytes(obj))

    def _encode(self, obj: uuid.UUID, context: Any, path: str) -> bytes:
        return obj.bytes_le


GUID = _GuidAdapter(Bytes(16))


class _Utf16Adapter(Adapter):  # type: ignore[misc]
    """Fixed-size UTF-16LE text, NUL padded (the creator field, MS-VHDX 2.2.1)."""

    def _decode(self, obj: bytes, context: Any, path: str) -> str:
        text = bytes(obj).decode("utf-16-le", errors="replace")
        return text.split("\0", 1)[0]

    def _encode(self, obj: str, context: Any, path: str) -> bytes:
        raw = obj.encode("utf-16-le")
        return raw + bytes(512 - len(raw))


# Reserved fields and checksums: zeros unless given.
_ZERO16 = Default(Int16ul, 0)
_ZERO32 = Default(Int32ul, 0)


def _reserved(size: int) -> Any:
    return Default(Bytes(size), bytes(size))


def _checksummed(signature: bytes, *fields: Any) -> Any:
    """A structure that opens with its signature and, at offset 4, its CRC-32C computed
    over the structure with the field zeroed (the header, the region table and the log
    entry: MS-VHDX 2.2.2, 2.2.3, 2.3.1.1)."""
    return Struct("signature" / Const(signature), "checksum" / _ZERO32, *fields)


# MS-VHDX 2.2.1 File Type Identifier: at offset 0, 64 KiB reserved in all.
FILE_IDENTIFIER = Struct(
    "signature" / Const(b"vhdxfile"),
    "creator" / _Utf16Adapter(Bytes(512)),
)

# MS-VHDX 2.2.2 Header: 4 KiB; the checksum covers all 4 KiB with the field zeroed.
HEADER = _checksummed(
    b"head",
    "sequence_number" / Int64ul,
    "file_write_guid" / GUID,
    "data_write_guid" / GUID,
    "log_guid" / GUID,
    "log_version" / Int16ul,
    "version" / Int16ul,
    "log_length" / Int32ul,
    "log_offset" / Int64ul,
    "reserved" / _reserved(4016),
)

# MS-VHDX 2.2.3 Region Table: a 16-byte header then 32-byte entries, in 64 KiB.
REGION_TABLE_HEADER = _checksummed(b"regi", "entry_count" / Int32ul, "reserved" / _ZERO32)

REGION_TABLE_ENTRY = Struct(
    "guid" / GUID,
    "file_offset" / Int64ul,
    "length" / Int32ul,
    "flags" / Int32ul,  # bit 0: Required
)

# MS-VHDX 2.6.1 Metadata Table: a 32-byte header then 32-byte entries, in 64 KiB.
METADATA_TABLE_HEADER = Struct(
    "signature" / Const(b"metadata"),
    "reserved" / _ZERO16,
    "entry_count" / Int16ul,
    "reserved2" / _reserved(20),
)

METADATA_ENTRY = Struct(
    "item_id" / GUID,
    "offset" / Int32ul,  # from the start of the metadata region
    "length" / Int32ul,
    "flags" / Int32ul,  # bit 0 IsUser, bit 1 IsVirtualDisk, bit 2 IsRequired
    "reserved" / _ZERO32,
)

# MS-VHDX 2.6.2.1 File Parameters.
FILE_PARAMETERS = Struct(
    "block_size" / Int32ul,
    "flags" / Int32ul,  # bit 0 LeaveBlockAllocated, bit 1 HasParent
)

# MS-VHDX 2.6.2.6 Parent Locator: header, then key/value entries; offsets are
# relative to the start of the locator item (SPEC-NOTES pitfall 13).
PARENT_LOCATOR_HEADER = Struct(
    "locator_type" / GUID,
    "reserved" / _ZERO16,
    "key_value_count" / Int16ul,
)

PARENT_LOCATOR_ENTRY = Struct(
    "key_offset" / Int32ul,
    "value_offset" / Int32ul,
    "key_length" / Int16ul,
    "value_length" / Int16ul,
)

# MS-VHDX 2.3.1.1 Log Entry Header (64 bytes).
LOG_ENTRY_HEADER = _checksummed(
    b"loge",
    "entry_length" / Int32ul,
    "tail" / Int32ul,
    "sequence_number" / Int64ul,
    "descriptor_count" / Int32ul,
    "reserved" / _ZERO32,
    "log_guid" / GUID,
    "flushed_file_offset" / Int64ul,
    "last_file_offset" / Int64ul,
)


def _descriptor(signature: bytes, field4: Any, field8: str) -> Any:
    """A 32-byte log descriptor: the zero and data descriptors share one layout and
    differ in their signature and the meaning of bytes 4-15."""
    return Struct(
        "signature" / Const(signature),
        field4,
        field8 / Int64ul,
        "file_offset" / Int64ul,
        "sequence_number" / Int64ul,
    )


# MS-VHDX 2.3.1.2 Zero Descriptor; 2.3.1.3 Data Descriptor.
ZERO_DESCRIPTOR = _descriptor(b"zero", "reserved" / _ZERO32, "zero_length")
DATA_DESCRIPTOR = _descriptor(b"desc", "trailing_bytes" / Int32ul, "leading_bytes")

# MS-VHDX 2.3.1.4 Data Sector (4 KiB): 4084 of the 4096 target bytes; the first 8
# and last 4 are in the data descriptor (leading and trailing bytes).
DATA_SECTOR = Struct(
    "signature" / Const(b"data"),
    "sequence_high" / Int32ul,
    "data" / Bytes(4084),
    "sequence_low" / Int32ul,
)
