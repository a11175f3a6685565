"""Damaged VHDX images: the surviving copy is used and reported, or a pyvhdx error
names the structure, field and offset (DESIGN.md "Copies", "Bad input")."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import pyvhdx
from pyvhdx.errors import ChecksumError, InvalidImageError, PyvhdxError, TruncatedImageError
from tests.vhdxbuild import Layout, build_vhdx

KiB = 1 << 10
MiB = 1 << 20


def make(tmp_path: Path, name: str = "d.vhdx") -> tuple[Layout, bytes]:
    rng = np.random.default_rng(5)
    data = bytearray(rng.integers(0, 256, 6 * MiB, dtype=np.uint8).tobytes())
    data[MiB : 2 * MiB] = bytes(MiB)
    layout = build_vhdx(tmp_path / name, bytes(data))
    return layout, bytes(data)


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


@pytest.mark.parametrize("damaged", [1, 2])
def test_one_header_damaged_opens_from_the_other(tmp_path: Path, damaged: int) -> None:
    layout, data = make(tmp_path)
    patch(layout.path, damaged * 64 * KiB + 100, b"\xff\xfe")
    before = fingerprint(layout.path)
    with pyvhdx.open(layout.path) as img:
        info = img.info()
        assert info.header_copy == 3 - damaged
        assert f"header {damaged}" in info.failed_copies
        assert any("checksum" in p.message for p in info.problems)
        assert img.read_at(0, len(data)) == data
    assert fingerprint(layout.path) == before
    with pytest.raises(InvalidImageError):
        pyvhdx.open(layout.path, strict=True)


def test_both_headers_damaged_is_a_checksum_error(tmp_path: Path) -> None:
    layout, _ = make(tmp_path)
    patch(layout.path, 64 * KiB + 100, b"\xff")
    patch(layout.path, 128 * KiB + 100, b"\xff")
    with pytest.raises(ChecksumError) as err:
        pyvhdx.open(layout.path)
    assert err.value.offset == 64 * KiB
    assert "header" in str(err.value)


def test_bad_signature_header(tmp_path: Path) -> None:
    layout, data = make(tmp_path)
    patch(layout.path, 128 * KiB, b"HEAD")
    with pyvhdx.open(layout.path) as img:
        assert img.info().header_copy == 1
        assert img.read_at(0, len(data)) == data


@pytest.mark.parametrize("damaged", [1, 2])
def test_one_region_table_damaged(tmp_path: Path, damaged: int) -> None:
    layout, data = make(tmp_path)
    patch(layout.path, (128 + 64 * damaged) * KiB + 1000, b"\x01")
    with pyvhdx.open(layout.path) as img:
        info = img.info()
        assert info.region_table_copy == 3 - damaged
        assert f"region table {damaged}" in info.failed_copies
        assert img.read_at(0, len(data)) == data


def test_both_region_tables_damaged(tmp_path: Path) -> None:
    layout, _ = make(tmp_path)
    patch(layout.path, 192 * KiB + 1000, b"\x01")
    patch(layout.path, 256 * KiB + 1000, b"\x01")
    with pytest.raises(ChecksumError) as err:
        pyvhdx.open(layout.path)
    assert "region table" in str(err.value)


def test_bat_entry_beyond_end_of_file(tmp_path: Path) -> None:
    layout, _ = make(tmp_path)
    entry = (10 * 1024 * MiB) | 6  # FULLY_PRESENT at 10 GiB
    patch(layout.path, layout.bat_offset + 8 * 3, entry.to_bytes(8, "little"))
    with pytest.raises(InvalidImageError) as err:
        pyvhdx.open(layout.path)
    assert err.value.offset == layout.bat_offset + 24
    assert err.value.field == "FileOffsetMB"


def test_bat_entry_overlapping_metadata(tmp_path: Path) -> None:
    layout, _ = make(tmp_path)
    entry = layout.metadata_offset | 6
    patch(layout.path, layout.bat_offset, entry.to_bytes(8, "little"))
    with pytest.raises(InvalidImageError) as err:
        pyvhdx.open(layout.path)
    assert "overlaps" in str(err.value)
    assert err.value.offset == layout.bat_offset


def test_bat_entry_in_header_area(tmp_path: Path) -> None:
    layout, _ = make(tmp_path)
    patch(layout.path, layout.bat_offset, (0 | 6).to_bytes(8, "little"))
    with pytest.raises(InvalidImageError) as err:
        pyvhdx.open(layout.path)
    assert err.value.offset == layout.bat_offset


@pytest.mark.parametrize(
    "cut",
    [
        0,
        7,
        100,
        64 * KiB + 10,
        130 * KiB,
        200 * KiB,
        300 * KiB,
        MiB,
        2 * MiB + 10,
        3 * MiB + 100,
        4 * MiB + 3,
        7 * MiB,
    ],
)
def test_truncated_file_raises_a_pyvhdx_error(tmp_path: Path, cut: int) -> None:
    layout, _ = make(tmp_path)
    with layout.path.open("r+b") as f:
        f.truncate(cut)
    try:
        img = pyvhdx.open(layout.path)
    except PyvhdxError as exc:
        assert isinstance(exc, (InvalidImageError, TruncatedImageError))
        return
    # Files cut before the first VHDX byte are not VHDX any more (read as raw).
    assert img.format is pyvhdx.ImageFormat.RAW and cut < 8
    img.close()


def test_truncated_inside_data_names_the_bat_entry(tmp_path: Path) -> None:
    layout, _ = make(tmp_path)
    last = max(layout.block_offsets)
    with layout.path.open("r+b") as f:
        f.truncate(layout.block_offsets[last] + 1000)
    with pytest.raises(InvalidImageError) as err:
        pyvhdx.open(layout.path)
    assert err.value.structure == "BAT"
    assert err.value.offset == layout.bat_offset + 8 * last


@pytest.mark.parametrize(
    ("field_offset", "value", "field"),
    [
        (0, (3 * MiB).to_bytes(4, "little"), "BlockSize"),  # not a power of two
        (0, (512 * MiB).to_bytes(4, "little"), "BlockSize"),  # above 256 MiB
    ],
)
def test_bad_file_parameters(tmp_path: Path, field_offset: int, value: bytes, field: str) -> None:
    layout, _ = make(tmp_path)
    patch(layout.path, layout.metadata_offset + 64 * KiB + field_offset, value)
    with pytest.raises(InvalidImageError) as err:
        pyvhdx.open(layout.path)
    assert err.value.field == field
    assert err.value.offset == layout.metadata_offset + 64 * KiB


def test_metadata_item_out_of_region(tmp_path: Path) -> None:
    layout, _ = make(tmp_path)
    # entry 0 offset field: table header 32 bytes, GUID 16 bytes
    patch(layout.path, layout.metadata_offset + 32 + 16, (5 * MiB).to_bytes(4, "little"))
    with pytest.raises(InvalidImageError) as err:
        pyvhdx.open(layout.path)
    assert err.value.offset == layout.metadata_offset + 32
    assert err.value.field == "Offset"


def test_region_beyond_end_of_file(tmp_path: Path) -> None:
    layout, _ = make(tmp_path)
    from pyvhdx.constants import REGION_BAT, REGION_METADATA
    from tests.vhdxbuild import region_table_bytes

    table = region_table_bytes(
        [
            (REGION_BAT, layout.bat_offset, 1024 * MiB, True),
            (REGION_METADATA, layout.metadata_offset, MiB, True),
        ]
    )
    patch(layout.path, 192 * KiB, bytes(table))
    patch(layout.path, 256 * KiB, bytes(table))
    with pytest.raises(InvalidImageError) as err:
        pyvhdx.open(layout.path)
    assert err.value.field == "Length"
    assert err.value.offset == 192 * KiB + 16


def test_open_and_read_never_write(tmp_path: Path) -> None:
    layout, data = make(tmp_path)
    before = fingerprint(layout.path)
    with pyvhdx.open(layout.path) as img:
        img.read_at(0, len(data))
        img.info()
        list(img.extents())
    assert fingerprint(layout.path) == before


def test_two_bat_entries_share_a_block(tmp_path: Path) -> None:
    layout, _ = make(tmp_path)
    blocks = sorted(layout.block_offsets)
    entry = layout.block_offsets[blocks[0]] | 6
    patch(layout.path, layout.bat_offset + 8 * blocks[-1], entry.to_bytes(8, "little"))
    with pytest.raises(InvalidImageError) as err:
        pyvhdx.open(layout.path)
    assert "overlap" in str(err.value)
    assert err.value.offset == layout.bat_offset + 8 * blocks[-1]
