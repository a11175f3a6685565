"""Checksums: CRC-32C for VHDX (MS-VHDX 2.2.2) and the VHD one's-complement sum.

The CRC is taken over a whole structure with its checksum field read as zero.
The ``crc32c`` package is imported on the first CRC: a VHD never needs it, and
importing it takes 30 ms (it reads its own version with ``importlib.metadata``).
"""

from __future__ import annotations

__all__ = ["crc32c", "crc32c_with_zeroed_field", "vhd_checksum"]


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, as used by every VHDX structure.

    ``value`` continues a CRC computed over the preceding bytes.
    """
    import crc32c as _crc32c

    return int(_crc32c.crc32c(data, value))


def crc32c_with_zeroed_field(data: bytes | bytearray | memoryview, field_offset: int) -> int:
    """CRC-32C of ``data`` with the 4-byte field at ``field_offset`` read as zero.

    MS-VHDX 2.2.2: "the checksum field is set to zero" while it is computed.
    """
    import crc32c as _crc32c

    mv = memoryview(data)
    crc = _crc32c.crc32c(mv[:field_offset])
    crc = _crc32c.crc32c(b"\0\0\0\0", crc)
    return int(_crc32c.crc32c(mv[field_offset + 4 :], crc))


def vhd_checksum(data: bytes | bytearray | memoryview, field_offset: int) -> int:
    """One's complement of the byte sum of ``data``, skipping the 4-byte checksum field.

    VHD spec, "Hard Disk Footer Format", Checksum.
    """
    mv = memoryview(data)
    total = sum(mv[:field_offset]) + sum(mv[field_offset + 4 :])
    return (~total) & 0xFFFFFFFF
