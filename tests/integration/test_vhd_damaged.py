"""Damaged VHD images: each test damages a qemu-img-made VHD in one precise way.

The undamaged image reads byte-identically to its raw source (checked first, so a
damage test that raises cannot pass because the image was never readable). The
damage is applied with ``struct`` at the spec's offsets and, unless the test is
about checksums, the checksum is fixed with an independent one's-complement sum,
so the error comes from the field under test. Expectations:

* a field out of bounds raises ``InvalidImageError`` naming the field and offset,
  and allocates nothing sized by it;
* a bad checksum opens, warns and is reported; ``strict=True`` raises
  ``ChecksumError``, unless a valid footer copy was used instead;
* a missing or cut-off footer at the end of a dynamic disk falls back to the copy
  at offset 0 (reported); with no copy, ``TruncatedImageError``;
* a differencing footer opens (info, parent locators) and refuses reads;
* truncations and byte flips raise ``PyvhdxError`` subclasses only.
"""

from __future__ import annotations

import io
import os
import struct
import time
import tracemalloc
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyvhdx
import pyvhdx.vhd  # imported before tracemalloc starts
from pyvhdx.errors import (
    ChecksumError,
    InvalidImageError,
    PyvhdxError,
    TruncatedImageError,
    UnsupportedFeatureError,
)
from tests.conftest import GiB, MiB, make_raw, qemu_convert, qemu_create

pytestmark = pytest.mark.oracle

FOOTER = 512
HEADER_OFFSET = 512  # qemu: dynamic header right after the footer copy
TABLE_OFFSET = 1536  # qemu: BAT right after the dynamic header
BLOCK = 2 * MiB
# 7 MiB + 1 KiB: four blocks, the last one partial. Block 2 is all zeros, so qemu
# leaves it unallocated.
SIZE = 7 * MiB + 1024


# --- helpers ------------------------------------------------------------------------


def vhd_sum(data: bytes | bytearray, field: int) -> int:
    """One's complement of the byte sum, the 4-byte field at ``field`` skipped."""
    return ~(sum(data[:field]) + sum(data[field + 4 :])) & 0xFFFFFFFF


def put(buf: bytearray, offset: int, fmt: str, value: Any) -> None:
    struct.pack_into(">" + fmt, buf, offset, value)


def get(buf: bytes | bytearray, offset: int, fmt: str) -> Any:
    return struct.unpack_from(">" + fmt, buf, offset)[0]


def fix_footer(buf: bytearray, at: int) -> None:
    footer = buf[at : at + FOOTER]
    put(buf, at + 64, "I", vhd_sum(footer, 64))


def fix_header(buf: bytearray, at: int = HEADER_OFFSET) -> None:
    put(buf, at + 36, "I", vhd_sum(buf[at : at + 1024], 36))


def patch_footers(buf: bytearray, offset: int, fmt: str, value: Any) -> None:
    """Set a footer field in both copies (offset 0 and end) and fix both checksums."""
    for at in (0, len(buf) - FOOTER):
        put(buf, at + offset, fmt, value)
        fix_footer(buf, at)


def patch_header(buf: bytearray, offset: int, fmt: str, value: Any) -> None:
    put(buf, HEADER_OFFSET + offset, fmt, value)
    fix_header(buf)


def write(tmp_path: Path, buf: bytes | bytearray, name: str = "damaged.vhd") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(buf))
    return path


def open_quiet(path: Path | io.BytesIO, **kw: Any) -> pyvhdx.DiskImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pyvhdx.open(path, **kw)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A raw disk with data in blocks 0, 1, 3, zeros in block 2; its dynamic and fixed
    VHDs (``force_size`` keeps CurrentSize = the raw size).
    """
    d = tmp_path_factory.mktemp("vhd-damaged")
    raw = make_raw(d / "src.raw", SIZE, seed=7, pattern="random")
    with open(raw, "r+b") as f:
        f.seek(2 * BLOCK)
        f.write(bytes(BLOCK))
    dynamic = qemu_convert(raw, d / "dyn.vhd", "vpc", {"subformat": "dynamic", "force_size": True})
    fixed = qemu_convert(raw, d / "fixed.vhd", "vpc", {"subformat": "fixed", "force_size": True})
    return {
        "raw": raw.read_bytes(),
        "dynamic": dynamic.read_bytes(),
        "fixed": fixed.read_bytes(),
    }


@pytest.fixture
def dyn(made: dict[str, Any]) -> bytearray:
    return bytearray(made["dynamic"])


@pytest.fixture
def fixed(made: dict[str, Any]) -> bytearray:
    return bytearray(made["fixed"])


# --- baseline: the undamaged images -------------------------------------------------


def test_undamaged_images_read_like_raw(made: dict[str, Any], tmp_path: Path) -> None:
    dyn = made["dynamic"]
    # The layout the damage tests rely on (QEMU create_dynamic_disk).
    assert dyn[:8] == b"conectix" and dyn[-FOOTER:] == dyn[:FOOTER]
    assert dyn[HEADER_OFFSET : HEADER_OFFSET + 8] == b"cxsparse"
    assert get(dyn, HEADER_OFFSET + 16, "Q") == TABLE_OFFSET
    bat = struct.unpack_from(">4I", dyn, TABLE_OFFSET)
    assert bat[2] == 0xFFFFFFFF and 0xFFFFFFFF not in (bat[0], bat[1], bat[3])
    for kind in ("dynamic", "fixed"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning for a clean image
            with pyvhdx.open(write(tmp_path, made[kind], f"{kind}.vhd"), strict=True) as img:
                assert img.format.value == "vhd" and img.disk_type.value == kind
                assert img.virtual_size == SIZE
                assert img.read_at(0, SIZE) == made["raw"]
                info = img.info()
                assert info.problems == [] and info.failed_copies == []


# --- fields out of bounds -----------------------------------------------------------


def test_bat_entry_beyond_eof(dyn: bytearray, tmp_path: Path) -> None:
    put(dyn, TABLE_OFFSET + 4 * 3, "I", len(dyn) // 512 + 100)
    with open_quiet(write(tmp_path, dyn)) as img:  # the BAT is read lazily: open works
        assert img.info().allocation is None  # the BAT cannot be summarized
        with pytest.raises(InvalidImageError) as exc:
            img.read_at(3 * BLOCK, 512)
    assert exc.value.field == "BAT[3]"
    assert exc.value.offset == TABLE_OFFSET + 12


def test_bat_entry_overlapping_footer(dyn: bytearray, tmp_path: Path) -> None:
    # Place block 3 (SIZE - 3 * BLOCK bytes of it are inside the disk) so that its
    # data ends exactly at EOF: its last 512 bytes would be the footer.
    need = SIZE - 3 * BLOCK
    put(dyn, TABLE_OFFSET + 4 * 3, "I", (len(dyn) - need - 512) // 512)
    with open_quiet(write(tmp_path, dyn)) as img, pytest.raises(InvalidImageError) as exc:
        img.read_at(3 * BLOCK, need)
    assert exc.value.field == "BAT[3]"


def test_bat_entry_zero(dyn: bytearray, tmp_path: Path) -> None:
    put(dyn, TABLE_OFFSET, "I", 0)  # sector 0 holds the footer copy
    with open_quiet(write(tmp_path, dyn)) as img, pytest.raises(InvalidImageError) as exc:
        img.read_at(0, 4096)
    assert exc.value.field == "BAT[0]" and exc.value.offset == TABLE_OFFSET


def test_max_table_entries_absurd_allocates_nothing(dyn: bytearray, tmp_path: Path) -> None:
    patch_header(dyn, 28, "I", 0xFFFFFFFF)
    path = write(tmp_path, dyn)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidImageError) as exc:
            pyvhdx.open(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.value.field == "MaxTableEntries"
    assert exc.value.offset == HEADER_OFFSET + 28
    assert peak < 16 * MiB, f"peak {peak} bytes: something was sized by MaxTableEntries"


def test_max_table_entries_too_small(dyn: bytearray, tmp_path: Path) -> None:
    patch_header(dyn, 28, "I", 3)  # the disk needs 4 blocks
    with pytest.raises(InvalidImageError) as exc:
        pyvhdx.open(write(tmp_path, dyn))
    assert exc.value.field == "MaxTableEntries" and exc.value.offset == HEADER_OFFSET + 28


@pytest.mark.parametrize("block_size", [3 * MiB, 0, 256, 2 * MiB + 512, 0xFFFFFFFF])
def test_block_size_invalid(dyn: bytearray, tmp_path: Path, block_size: int) -> None:
    patch_header(dyn, 32, "I", block_size)
    with pytest.raises(InvalidImageError) as exc:
        pyvhdx.open(write(tmp_path, dyn))
    assert exc.value.field == "BlockSize" and exc.value.offset == HEADER_OFFSET + 32


@pytest.mark.parametrize("table_offset", [0, 100, 600, 2**40, 2**64 - 1])
def test_table_offset_invalid(dyn: bytearray, tmp_path: Path, table_offset: int) -> None:
    patch_header(dyn, 16, "Q", table_offset)
    with pytest.raises(InvalidImageError) as exc:
        pyvhdx.open(write(tmp_path, dyn))
    assert exc.value.field == "TableOffset" and exc.value.offset == HEADER_OFFSET + 16


@pytest.mark.parametrize("data_offset", [0, 100, 2**40, 2**64 - 1])
def test_data_offset_invalid(dyn: bytearray, tmp_path: Path, data_offset: int) -> None:
    patch_footers(dyn, 16, "Q", data_offset)
    with pytest.raises(InvalidImageError) as exc:
        pyvhdx.open(write(tmp_path, dyn))
    assert exc.value.field == "DataOffset"
    assert exc.value.offset == len(dyn) - FOOTER + 16


def test_dynamic_header_cookie(dyn: bytearray, tmp_path: Path) -> None:
    dyn[HEADER_OFFSET : HEADER_OFFSET + 8] = b"cxsparsX"
    fix_header(dyn)
    with pytest.raises(InvalidImageError) as exc:
        pyvhdx.open(write(tmp_path, dyn))
    assert exc.value.field == "Cookie" and exc.value.offset == HEADER_OFFSET


@pytest.mark.parametrize("disk_type", [0, 1, 5, 6, 0xFFFFFFFF])
def test_unknown_disk_type(dyn: bytearray, tmp_path: Path, disk_type: int) -> None:
    patch_footers(dyn, 60, "I", disk_type)
    with pytest.raises(InvalidImageError) as exc:
        pyvhdx.open(write(tmp_path, dyn))
    assert exc.value.field == "DiskType" and exc.value.offset == len(dyn) - FOOTER + 60


def test_current_size_beyond_bat(dyn: bytearray, tmp_path: Path) -> None:
    patch_footers(dyn, 48, "Q", 64 * GiB)  # the 4-entry BAT maps 8 MiB
    with pytest.raises(InvalidImageError) as exc:
        pyvhdx.open(write(tmp_path, dyn))
    assert exc.value.field == "MaxTableEntries"


def test_no_footer_at_all(dyn: bytearray, tmp_path: Path) -> None:
    dyn[0:8] = b"XXXXXXXX"
    dyn[-FOOTER : -FOOTER + 8] = b"XXXXXXXX"
    with pytest.raises(InvalidImageError) as exc:
        pyvhdx.open(write(tmp_path, dyn), format="vhd")
    assert exc.value.field == "Cookie"


# --- footer copies ------------------------------------------------------------------


# (A cut of 1 byte leaves a valid 511-byte footer: see test_old_511_byte_footer.)
@pytest.mark.parametrize("cut", [2, 200, 504, 511])
def test_footer_cut_dynamic_uses_copy(
    made: dict[str, Any], dyn: bytearray, tmp_path: Path, cut: int
) -> None:
    """The file ends ``512 - cut`` bytes into the footer at the end."""
    path = write(tmp_path, dyn[: len(dyn) - cut])
    with pytest.warns(UserWarning, match="offset 0"):
        img = pyvhdx.open(path, strict=True)  # a valid copy was used: not fatal
    with img:
        assert img.virtual_size == SIZE
        assert img.read_at(0, SIZE) == made["raw"]
        info = img.info()
        assert info.format_specific["footer-copy"] == "start"
        assert "footer at end of file" in info.failed_copies
        assert any("end of file" in p.structure for p in info.problems)


def test_footer_missing_dynamic_uses_copy(
    made: dict[str, Any], dyn: bytearray, tmp_path: Path
) -> None:
    with pytest.warns(UserWarning):
        img = pyvhdx.open(write(tmp_path, dyn[:-FOOTER]))
    with img:
        assert img.read_at(0, SIZE) == made["raw"]
        assert img.info().problems


def test_footer_cut_without_copy(dyn: bytearray, tmp_path: Path) -> None:
    dyn[0:8] = b"XXXXXXXX"  # no copy at offset 0 either
    with pytest.raises(TruncatedImageError) as exc:
        pyvhdx.open(write(tmp_path, dyn[:-100]), format="vhd")
    assert exc.value.offset == len(dyn) - FOOTER


def test_fixed_cut_in_footer(fixed: bytearray, tmp_path: Path) -> None:
    # A fixed disk has no footer copy; the cut file looks raw to detection.
    path = write(tmp_path, fixed[:-300])
    with pyvhdx.open(path) as img:
        assert img.format.value == "raw"
    with pytest.raises(TruncatedImageError) as exc:
        pyvhdx.open(path, format="vhd")
    assert exc.value.offset == len(fixed) - FOOTER


def test_fixed_data_short(fixed: bytearray, tmp_path: Path) -> None:
    short = fixed[: SIZE - 4096] + fixed[-FOOTER:]  # 4 KiB of data lost, footer kept
    with pytest.raises(TruncatedImageError) as exc:
        pyvhdx.open(write(tmp_path, short))
    assert exc.value.field == "CurrentSize" and "4096" in str(exc.value)
    assert exc.value.offset == len(short) - FOOTER + 48


def test_fixed_extra_bytes_reported(made: dict[str, Any], fixed: bytearray, tmp_path: Path) -> None:
    padded = fixed[:SIZE] + bytes(1024) + fixed[-FOOTER:]
    with open_quiet(write(tmp_path, padded)) as img:
        assert img.virtual_size == SIZE
        assert img.read_at(0, SIZE) == made["raw"]
        assert any(p.field == "CurrentSize" for p in img.info().problems)


def test_old_511_byte_footer(made: dict[str, Any], fixed: bytearray, tmp_path: Path) -> None:
    """Virtual PC before 2004 wrote 511-byte footers (the last reserved byte absent)."""
    assert fixed[-1] == 0
    with pyvhdx.open(write(tmp_path, fixed[:-1]), strict=True) as img:
        assert img.format.value == "vhd" and img.disk_type.value == "fixed"
        assert img.virtual_size == SIZE
        assert img.read_at(0, SIZE) == made["raw"]
        assert img.info().format_specific["footer-size"] == 511


# --- checksums -------------------------------------------------------------------------


def test_bad_footer_checksum_both_copies(
    made: dict[str, Any], dyn: bytearray, tmp_path: Path
) -> None:
    for at in (0, len(dyn) - FOOTER):
        put(dyn, at + 64, "I", get(dyn, at + 64, "I") ^ 0x10)  # recompute nothing
    path = write(tmp_path, dyn)
    with pytest.warns(UserWarning, match="checksum"):
        img = pyvhdx.open(path)
    with img:
        assert img.read_at(0, SIZE) == made["raw"]
        info = img.info()
        assert any(p.field == "Checksum" for p in info.problems)
        assert info.format_specific["checksum-valid"] is False
    with pytest.raises(ChecksumError) as exc, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pyvhdx.open(path, strict=True)
    assert exc.value.field == "Checksum" and exc.value.offset == len(dyn) - FOOTER + 64


def test_bad_end_footer_checksum_uses_copy(
    made: dict[str, Any], dyn: bytearray, tmp_path: Path
) -> None:
    end = len(dyn) - FOOTER
    put(dyn, end + 48, "Q", SIZE + 512)  # damage a field, keep the old checksum
    path = write(tmp_path, dyn)
    with pytest.warns(UserWarning):
        img = pyvhdx.open(path, strict=True)
    with img:
        assert img.virtual_size == SIZE  # from the copy at offset 0
        assert img.read_at(0, SIZE) == made["raw"]
        info = img.info()
        assert info.format_specific["footer-copy"] == "start"
        assert info.failed_copies == ["footer at end of file"]
        assert [p.offset for p in info.problems] == [end]


def test_bad_copy_at_start_reported(dyn: bytearray, tmp_path: Path) -> None:
    put(dyn, 64, "I", get(dyn, 64, "I") ^ 1)
    with pytest.warns(UserWarning):
        img = pyvhdx.open(write(tmp_path, dyn), strict=True)
    with img:
        info = img.info()
        assert info.format_specific["footer-copy"] == "end"
        assert info.failed_copies == ["footer copy at offset 0"]


def test_footer_copies_differ(dyn: bytearray, tmp_path: Path) -> None:
    put(dyn, 24, "I", 12345)  # timestamp of the copy at 0
    fix_footer(dyn, 0)
    with pytest.warns(UserWarning, match="time_stamp"):
        img = pyvhdx.open(write(tmp_path, dyn))
    with img:
        assert img.info().format_specific["footer-copy"] == "end"


def test_bad_fixed_footer_checksum(made: dict[str, Any], fixed: bytearray, tmp_path: Path) -> None:
    put(fixed, len(fixed) - FOOTER + 64, "I", 0)
    path = write(tmp_path, fixed)
    with pytest.warns(UserWarning, match="checksum"):
        img = pyvhdx.open(path)
    with img:
        assert img.read_at(0, SIZE) == made["raw"]
        assert img.info().problems
    with pytest.raises(ChecksumError):
        pyvhdx.open(path, strict=True)


def test_bad_dynamic_header_checksum(made: dict[str, Any], dyn: bytearray, tmp_path: Path) -> None:
    put(dyn, HEADER_OFFSET + 36, "I", get(dyn, HEADER_OFFSET + 36, "I") + 1)
    path = write(tmp_path, dyn)
    with pytest.warns(UserWarning, match="dynamic header"):
        img = pyvhdx.open(path)
    with img:
        assert img.read_at(0, SIZE) == made["raw"]
        info = img.info()
        assert [(p.field, p.offset) for p in info.problems] == [("Checksum", HEADER_OFFSET + 36)]
        assert info.format_specific["dynamic-header"]["checksum-valid"] is False
    with pytest.raises(ChecksumError) as exc:
        pyvhdx.open(path, strict=True)
    assert exc.value.offset == HEADER_OFFSET + 36


# --- differencing -----------------------------------------------------------------------


def test_differencing_opens_but_refuses_reads(dyn: bytearray, tmp_path: Path) -> None:
    parent_id = uuid.UUID("5fa21a55-f394-aa4d-9958-1951a67d5540")
    patch_footers(dyn, 60, "I", 4)
    dyn[HEADER_OFFSET + 40 : HEADER_OFFSET + 56] = parent_id.bytes
    put(dyn, HEADER_OFFSET + 56, "I", 86400)  # 2000-01-02
    name = "C:\\disks\\parent.vhd".encode("utf-16-be")
    dyn[HEADER_OFFSET + 64 : HEADER_OFFSET + 64 + len(name)] = name
    # A W2ru locator whose data sits in the BAT's sector padding (1552..2048),
    # and a W2ku one whose data lies beyond the end of the file.
    rel = ".\\parent.vhd".encode("utf-16-le")
    dyn[1800 : 1800 + len(rel)] = rel
    struct.pack_into(">4sIIIQ", dyn, HEADER_OFFSET + 576, b"W2ru", 512, len(rel), 0, 1800)
    struct.pack_into(">4sIIIQ", dyn, HEADER_OFFSET + 600, b"W2ku", 512, 40, 0, 2**40)
    fix_header(dyn)
    path = write(tmp_path, dyn)
    with pytest.raises(pyvhdx.ParentError) as err:  # no parent.vhd beside it
        pyvhdx.open(path)
    assert str(tmp_path.resolve() / "parent.vhd") in err.value.tried
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = pyvhdx.open(path, strict=True, resolve_parent=False)
    with img:
        assert img.disk_type.value == "differencing" and img.virtual_size == SIZE
        # block 0 is stored here with every bitmap bit set: it reads without the parent
        assert len(img.read_at(0, 512)) == 512
        with pytest.raises(UnsupportedFeatureError):
            img.read_at(2 * BLOCK, 512)  # an unallocated block: never zeros
        info = img.info()
        parent = info.parent
        assert parent is not None
        assert parent["parent-name"] == "C:\\disks\\parent.vhd"
        assert parent["parent-unique-id"] == parent_id
        assert parent["parent-timestamp"] == "2000-01-02T00:00:00Z"
        locators = {loc["platform-code"]: loc for loc in parent["locators"]}
        assert locators["W2ru"]["path"] == ".\\parent.vhd"
        assert locators["W2ku"]["path"] is None  # outside the file: reported, not read
        assert any(p.structure == "VHD parent locator" for p in info.problems)
        assert info.to_dict()["backing-image"]["parent-unique-id"] == str(parent_id)
        assert info.allocation is not None
        assert (info.allocation.partial_blocks, info.allocation.parent_blocks) == (3, 1)


# --- robustness: O(1) open, truncations and byte flips ---------------------------------


class CountingFile(io.RawIOBase):
    """A read-only file object that counts the bytes read through it."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(b) or 0
        self.bytes_read += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def test_open_of_empty_2040_gib_disk_is_cheap(tmp_path: Path) -> None:
    path = qemu_create(tmp_path / "big.vhd", "vpc", "2040G", {"subformat": "dynamic"})
    assert path.stat().st_size > 1044480 * 4  # a 1044480-entry BAT
    f = CountingFile(path)
    try:
        start = time.perf_counter()
        with pyvhdx.open(f) as img:  # type: ignore[arg-type]
            elapsed = time.perf_counter() - start
            opened_with = f.bytes_read
            assert img.virtual_size == 0xFF000000 * 512
            assert img.read_at(img.virtual_size - 4096, 4096) == bytes(4096)
            tail_read = f.bytes_read - opened_with
    finally:
        f.close()
    assert opened_with < 8192, f"open read {opened_with} bytes"
    assert tail_read <= 256 * 1024 + 4096, "the BAT is read in chunks, not whole"
    assert elapsed < 1.0


def cut_points(size: int) -> Iterator[int]:
    yield from (0, 8, 100, 511, 512, 513, 1000, 1535, 1536, 1540, 2047, 2048, 4096)
    yield from (BLOCK, BLOCK + 2560, 3 * BLOCK, size - 513, size - 512, size - 256, size - 1)


def test_truncations_raise_pyvhdx_errors_only(made: dict[str, Any]) -> None:
    for kind in ("dynamic", "fixed"):
        data = made[kind]
        for cut in cut_points(len(data)):
            try:
                with open_quiet(io.BytesIO(data[:cut]), format="vhd") as img:
                    img.read_at(0, img.virtual_size)
                    img.info()
            except PyvhdxError:
                pass


def _flip_targets(size: int) -> st.SearchStrategy[int]:
    # the footer copy, dynamic header and BAT, and the footer at the end
    return st.one_of(st.integers(0, 2047), st.integers(size - FOOTER, size - 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_byte_flips_raise_pyvhdx_errors_only(made: dict[str, Any], data: st.DataObject) -> None:
    buf = bytearray(made["dynamic"])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(_flip_targets(len(buf)))
        buf[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):  # also fix the checksums, to get past them
        fix_footer(buf, 0)
        fix_footer(buf, len(buf) - FOOTER)
        fix_header(buf)
    try:
        with open_quiet(io.BytesIO(bytes(buf)), format="vhd") as img:
            n = min(img.virtual_size, 16 * MiB)
            img.read_at(0, n)
            img.read_at(img.virtual_size - n, n)
            img.info().to_dict()
    except PyvhdxError:
        pass
