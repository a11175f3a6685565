"""VHD structures (big-endian) and the CHS geometry algorithm.

* Every structure round-trips both ways under hypothesis: ``build(parse(x)) == x``
  for any bytes with the right cookie, and ``parse(build(obj)) == obj``.
* Field placement is pinned against the spec offsets, written by hand with
  ``struct`` (an independent encoder), so a swapped field cannot round-trip unseen.
* ``chs_geometry`` is checked against known values (the spec appendix, the
  real-world images' footers) and against the geometry qemu-img stores in the
  footers it writes (QEMU ``calculate_geometry``), for sizes on every branch edge.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path
from typing import Any

import construct
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvhdx.structures.vhd import (
    UUIDBE,
    VHDDynamicHeader,
    VHDFooter,
    VHDParentLocatorEntry,
)
from pyvhdx.vhd import CHSGeometry, chs_geometry, vhd_bitmap_size
from tests.conftest import MiB, qemu_create, qemu_info

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)


def plain(value: Any) -> Any:
    """A parse result as plain dicts and lists, without construct's ``_io`` keys."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# --- strategies -------------------------------------------------------------------

footers = st.fixed_dictionaries(
    {
        "cookie": st.just(b"conectix"),
        "features": u32,
        "file_format_version": u32,
        "data_offset": u64,
        "time_stamp": u32,
        "creator_application": st.binary(min_size=4, max_size=4),
        "creator_version": u32,
        "creator_host_os": st.binary(min_size=4, max_size=4),
        "original_size": u64,
        "current_size": u64,
        "disk_geometry": st.fixed_dictionaries(
            {"cylinders": u16, "heads": u8, "sectors_per_track": u8}
        ),
        "disk_type": u32,
        "checksum": u32,
        "unique_id": st.uuids(),
        "saved_state": u8,
        "reserved": st.binary(min_size=427, max_size=427),
    }
)

locators = st.fixed_dictionaries(
    {
        "platform_code": st.binary(min_size=4, max_size=4),
        "platform_data_space": u32,
        "platform_data_length": u32,
        "reserved": u32,
        "platform_data_offset": u64,
    }
)

dynamic_headers = st.fixed_dictionaries(
    {
        "cookie": st.just(b"cxsparse"),
        "data_offset": u64,
        "table_offset": u64,
        "header_version": u32,
        "max_table_entries": u32,
        "block_size": u32,
        "checksum": u32,
        "parent_unique_id": st.uuids(),
        "parent_time_stamp": u32,
        "reserved1": st.binary(min_size=4, max_size=4),
        "parent_unicode_name": st.binary(min_size=512, max_size=512),
        "parent_locator_entries": st.lists(locators, min_size=8, max_size=8),
        "reserved2": st.binary(min_size=256, max_size=256),
    }
)


# --- sizes and round trips -----------------------------------------------------------


def test_sizes() -> None:
    assert VHDFooter.sizeof() == 512
    assert VHDDynamicHeader.sizeof() == 1024
    assert VHDParentLocatorEntry.sizeof() == 24


@given(st.binary(min_size=504, max_size=504))
def test_footer_bytes_round_trip(rest: bytes) -> None:
    raw = b"conectix" + rest
    assert VHDFooter.build(VHDFooter.parse(raw)) == raw


@given(footers)
def test_footer_object_round_trip(obj: dict[str, Any]) -> None:
    assert plain(VHDFooter.parse(VHDFooter.build(obj))) == obj


@given(st.binary(min_size=1016, max_size=1016))
def test_dynamic_header_bytes_round_trip(rest: bytes) -> None:
    raw = b"cxsparse" + rest
    assert VHDDynamicHeader.build(VHDDynamicHeader.parse(raw)) == raw


@given(dynamic_headers)
def test_dynamic_header_object_round_trip(obj: dict[str, Any]) -> None:
    assert plain(VHDDynamicHeader.parse(VHDDynamicHeader.build(obj))) == obj


@given(st.binary(min_size=24, max_size=24))
def test_locator_bytes_round_trip(raw: bytes) -> None:
    assert VHDParentLocatorEntry.build(VHDParentLocatorEntry.parse(raw)) == raw


@given(locators)
def test_locator_object_round_trip(obj: dict[str, Any]) -> None:
    assert plain(VHDParentLocatorEntry.parse(VHDParentLocatorEntry.build(obj))) == obj


@given(st.uuids())
def test_uuid_is_big_endian(u: uuid.UUID) -> None:
    assert UUIDBE.build(u) == u.bytes  # RFC 4122 byte order, not bytes_le
    assert UUIDBE.parse(u.bytes) == u


def test_bad_cookies_do_not_parse() -> None:
    with pytest.raises(construct.ConstructError):
        VHDFooter.parse(b"conectiX" + bytes(504))
    with pytest.raises(construct.ConstructError):
        VHDDynamicHeader.parse(b"cxsparsE" + bytes(1016))


# --- field placement (spec "Hard Disk Footer Format", "Dynamic Disk Header Format") -


def test_footer_field_offsets() -> None:
    uid = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    raw = bytearray(512)
    raw[0:8] = b"conectix"
    struct.pack_into(">IIQI", raw, 8, 0x2, 0x00010000, 0x200, 0x12345678)
    raw[28:32] = b"win "
    struct.pack_into(">I", raw, 32, 0x000A0000)
    raw[36:40] = b"Wi2k"
    struct.pack_into(">QQHBBII", raw, 40, 1111 * 512, 2222 * 512, 301, 4, 17, 3, 0xCAFEBABE)
    raw[68:84] = bytes.fromhex("00112233445566778899aabbccddeeff")
    raw[84] = 1
    f = VHDFooter.parse(bytes(raw))
    assert f.features == 2 and f.file_format_version == 0x00010000
    assert f.data_offset == 0x200 and f.time_stamp == 0x12345678
    assert f.creator_application == b"win " and f.creator_version == 0x000A0000
    assert f.creator_host_os == b"Wi2k"
    assert f.original_size == 1111 * 512 and f.current_size == 2222 * 512
    assert (f.disk_geometry.cylinders, f.disk_geometry.heads) == (301, 4)
    assert f.disk_geometry.sectors_per_track == 17
    assert f.disk_type == 3 and f.checksum == 0xCAFEBABE
    assert f.unique_id == uid and f.saved_state == 1
    assert VHDFooter.build(f) == bytes(raw)


def test_dynamic_header_field_offsets() -> None:
    raw = bytearray(1024)
    raw[0:8] = b"cxsparse"
    struct.pack_into(">QQIIII", raw, 8, 2**64 - 1, 1536, 0x00010000, 5, 2 * MiB, 0xDEADBEEF)
    raw[40:56] = bytes(range(16))
    struct.pack_into(">I", raw, 56, 777)
    raw[64 : 64 + 18] = "parent.vhd".encode("utf-16-be")[:18]
    for i in range(8):
        struct.pack_into(">4sIIIQ", raw, 576 + 24 * i, b"W2ru", 512 * i, 20 + i, 0, 4096 * i)
    raw[1023] = 0x5A
    h = VHDDynamicHeader.parse(bytes(raw))
    assert h.data_offset == 2**64 - 1 and h.table_offset == 1536
    assert h.header_version == 0x00010000 and h.max_table_entries == 5
    assert h.block_size == 2 * MiB and h.checksum == 0xDEADBEEF
    assert h.parent_unique_id == uuid.UUID(bytes=bytes(range(16)))
    assert h.parent_time_stamp == 777
    assert h.parent_unicode_name[:18] == "parent.vhd".encode("utf-16-be")[:18]
    for i, e in enumerate(h.parent_locator_entries):
        assert e.platform_code == b"W2ru" and e.platform_data_space == 512 * i
        assert e.platform_data_length == 20 + i and e.platform_data_offset == 4096 * i
    assert h.reserved2[-1] == 0x5A
    assert VHDDynamicHeader.build(h) == bytes(raw)


def test_defaults_are_zeros_and_spec_values() -> None:
    """Reserved fields and checksums build as zeros; the versions and the dynamic
    header's unused Data Offset as the values the spec fixes (0x00010000, all ones)."""
    footer = VHDFooter.parse(
        VHDFooter.build(
            dict(
                features=2,
                data_offset=512,
                time_stamp=1,
                creator_application=b"pyvh",
                creator_version=1,
                creator_host_os=b"Wi2k",
                original_size=MiB,
                current_size=MiB,
                disk_geometry=dict(cylinders=20, heads=4, sectors_per_track=17),
                disk_type=3,
                unique_id=uuid.UUID(int=1),
                saved_state=0,
            )
        )
    )
    assert footer.file_format_version == 0x00010000
    assert footer.checksum == 0 and footer.reserved == bytes(427)
    entry = dict(
        platform_code=b"W2ru",
        platform_data_space=512,
        platform_data_length=20,
        platform_data_offset=0,
    )
    header = VHDDynamicHeader.parse(
        VHDDynamicHeader.build(
            dict(
                table_offset=1536,
                max_table_entries=5,
                block_size=2 * MiB,
                parent_unique_id=uuid.UUID(int=0),
                parent_time_stamp=0,
                parent_unicode_name=bytes(512),
                parent_locator_entries=[entry] * 8,
            )
        )
    )
    assert header.data_offset == 2**64 - 1 and header.header_version == 0x00010000
    assert header.checksum == 0 and header.reserved1 == bytes(4)
    assert header.reserved2 == bytes(256)
    assert all(e.reserved == 0 for e in header.parent_locator_entries)


# --- sector bitmaps (spec "Block Allocation Table and Data Blocks") -------------------


@pytest.mark.parametrize(
    ("block_size", "bitmap"),
    [(512, 512), (4096, 512), (2 * MiB, 512), (4 * MiB, 1024), (16 * MiB, 4096), (1 << 31, 524288)],
)
def test_bitmap_size(block_size: int, bitmap: int) -> None:
    assert vhd_bitmap_size(block_size) == bitmap


# --- CHS geometry (spec appendix; QEMU calculate_geometry) ---------------------------

KNOWN_GEOMETRY = [
    # sectors, (C, H, S): from the real-world images' footers (expected.json)
    (10 * MiB // 512, (301, 4, 17)),  # Windows, 10 MiB
    (512 * MiB // 512, (1040, 16, 63)),  # Windows (node-vhd), 512 MiB
    (4 * MiB // 512, (120, 4, 17)),  # Windows diskpart, 4 MiB
    (4212736 // 512, (121, 4, 17)),  # qemu, dfvfs ext2.vhd
    (104448 // 512, (3, 4, 17)),  # qemu, dfvfs image.vhd
    # worked by hand from the spec appendix (C = cylinders x heads // heads)
    (0, (0, 4, 17)),
    (4096 * 17 - 1, (1023, 4, 17)),  # cylinders x heads = 4095 < 4 x 1024
    (4096 * 17, (140, 16, 31)),  # 4096 >= 4 x 1024: 31 sectors, 69632 // 31 = 2246
    (16384 * 17 - 1, (1023, 16, 17)),  # last 17-sector geometry with 16 heads
    (16384 * 17, (561, 16, 31)),  # 278528 // 31 = 8984 cylinders x heads
    (16384 * 31, (503, 16, 63)),  # 16384 >= 16 x 1024: 63 sectors, 507904 // 63 = 8061
    (65535 * 16 * 63 - 1, (65534, 16, 63)),
    (65535 * 16 * 63, (16191, 16, 255)),  # 255 sectors from here: 66059280 // 255 // 16
    (65535 * 16 * 255, (65535, 16, 255)),  # the maximum
    (65535 * 16 * 255 + 12345, (65535, 16, 255)),  # capped
    (0xFF000000, (65535, 16, 255)),  # 2040 GiB
]


@pytest.mark.parametrize(("sectors", "chs"), KNOWN_GEOMETRY)
def test_chs_known_values(sectors: int, chs: tuple[int, int, int]) -> None:
    geometry = chs_geometry(sectors)
    assert tuple(geometry) == chs
    assert geometry.capacity == chs[0] * chs[1] * chs[2] * 512
    assert geometry.capacity <= max(sectors, 0) * 512  # never more than asked


@given(st.integers(0, 65535 * 16 * 255))
def test_chs_properties(sectors: int) -> None:
    c, h, s = chs_geometry(sectors)
    assert 0 <= c <= 65535 and 4 <= h <= 16 and s in (17, 31, 63, 255)
    assert c * h * s <= sectors
    if s == 255:
        assert sectors >= 65535 * 16 * 63


def test_chs_rejects_negative() -> None:
    with pytest.raises(ValueError):
        chs_geometry(-1)


def _qemu_geometry_for(sectors: int) -> CHSGeometry:
    """What qemu-img create (without force_size) stores for ``sectors``: it applies
    calculate_geometry to sectors, sectors + 1, ... until the capacity covers them.
    """
    i = 0
    while True:
        geometry = chs_geometry(sectors + i)
        if geometry.sectors >= sectors or geometry.sectors == 65535 * 16 * 255:
            return geometry
        i += 1


# Sizes (in sectors) on both sides of every branch of the algorithm.
QEMU_SIZES = sorted(
    {
        1,
        2048,
        4096 * 17 - 1,
        4096 * 17 + 1,
        20480,
        16384 * 17 - 1,
        16384 * 17,
        16384 * 17 + 5,
        16384 * 31 - 1,
        16384 * 31,
        1048576,
        65535 * 16 * 63 - 100,
        65535 * 16 * 63 - 1,
        65535 * 16 * 63,
        65535 * 16 * 63 + 1,
        65535 * 16 * 255 - 1,
        65535 * 16 * 255,
    }
)


@pytest.mark.oracle
@pytest.mark.parametrize("sectors", QEMU_SIZES)
def test_chs_against_qemu(sectors: int, tmp_path: Path) -> None:
    path = qemu_create(tmp_path / "d.vhd", "vpc", sectors * 512, {"subformat": "dynamic"})
    footer = VHDFooter.parse(path.read_bytes()[-512:])
    stored = CHSGeometry(
        footer.disk_geometry.cylinders,
        footer.disk_geometry.heads,
        footer.disk_geometry.sectors_per_track,
    )
    assert stored == _qemu_geometry_for(sectors)
    if stored.sectors != 65535 * 16 * 255:
        # creator "qemu": qemu's size is the CHS capacity, which it stores as CurrentSize
        assert footer.current_size == stored.capacity
        assert qemu_info(path)["virtual-size"] == stored.capacity
