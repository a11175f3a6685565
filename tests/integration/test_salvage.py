"""Truncated dynamic images: an error by default, readable with ``salvage=True`` (issue 7).

The contract these tests pin down:

* ``pyvhdx.open(path)`` of a dynamic VHDX or VHD whose file ends before some of its
  data blocks raises :class:`~pyvhdx.errors.TruncatedImageError` naming how many
  bytes of block data are missing.
* ``pyvhdx.open(path, salvage=True)`` (read-only) opens it: every byte still in the
  file reads as stored, the missing bytes read as zeros, and ``info().problems``
  lists each lost range with its virtual offset, its length and the file offset it
  would be at: a problem whose ``offset`` is that file offset and whose message
  holds the virtual offset and the length in hex (``0x800000``, ``0x100000``).
* Salvage never writes: the file is unchanged afterwards.

Until the format handlers implement the option, the tests that need it are strict
xfails; ``inspect`` already lists the lost blocks and is tested without xfail.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import pyvhdx
from pyvhdx.constants import RunKind
from pyvhdx.errors import InvalidArgumentError, PyvhdxWarning, TruncatedImageError
from pyvhdx.inspect import inspect_image
from tests.conftest import MiB, make_raw, qemu_convert, sha256_of_file

SIZE = 12 * MiB


class Lost(NamedTuple):
    """A range of the disk whose bytes lie past the end of the truncated file."""

    virtual_offset: int
    length: int
    file_offset: int


class Truncated(NamedTuple):
    raw: bytes  # the disk content before truncation
    path: Path
    lost: list[Lost]
    missing: int  # bytes of block data past the end of the file


def _data_blocks(path: Path) -> list[tuple[int, int, int]]:
    """``(virtual_offset, length, file_offset)`` of every stored run of an intact image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PyvhdxWarning)
        with pyvhdx.open(path) as img:
            return [
                (e.start, e.length, e.file_offset)
                for e in img.extents()
                if e.kind is RunKind.DATA and e.file_offset is not None
            ]


def _truncate(path: Path, cut: int, block_size: int) -> list[Lost]:
    """Cut the file at ``cut``; return the lost ranges, one per block, in disk order."""
    lost = []
    for start, length, foff in _data_blocks(path):
        pos = start
        while pos < start + length:  # split runs at block boundaries
            stop = min(start + length, (pos // block_size + 1) * block_size)
            f0, f1 = foff + (pos - start), foff + (stop - start)
            if f1 > cut:
                first = max(f0, cut)
                lost.append(Lost(pos + (first - f0), f1 - first, first))
            pos = stop
    os.truncate(path, cut)
    return lost


@pytest.fixture(params=["vhdx", "vhd"])
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _make(qemu_img: str, tmp_path: Path, fmt: str, mid_block: bool) -> Truncated:
    raw_path = make_raw(tmp_path / "src.raw", SIZE, seed=17, pattern="random")
    if fmt == "vhdx":
        path = qemu_convert(
            raw_path, tmp_path / "t.vhdx", "vhdx", {"subformat": "dynamic", "block_size": "1M"}
        )
        block = 1 * MiB
    else:
        path = qemu_convert(
            raw_path, tmp_path / "t.vhd", "vpc", {"subformat": "dynamic", "force_size": True}
        )
        block = 2 * MiB
    extent = block if fmt == "vhdx" else block + 512  # a VHD block starts with its bitmap
    blocks = _data_blocks(path)
    data_end = max(f + n for _, n, f in blocks)
    cut = data_end - 3 * extent - (1536 if mid_block else 0)
    lost = _truncate(path, cut, block)
    assert len(lost) == (4 if mid_block else 3)
    return Truncated(raw_path.read_bytes(), path, lost, sum(x.length for x in lost))


@pytest.fixture
def truncated(qemu_img: str, tmp_path: Path, fmt: str) -> Truncated:
    """Three whole blocks cut off the end."""
    return _make(qemu_img, tmp_path, fmt, mid_block=False)


@pytest.fixture
def truncated_mid_block(qemu_img: str, tmp_path: Path, fmt: str) -> Truncated:
    """Three blocks and 1536 bytes of a fourth cut off the end."""
    return _make(qemu_img, tmp_path, fmt, mid_block=True)


def _open(path: Path, **kw: Any) -> pyvhdx.DiskImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PyvhdxWarning)
        return pyvhdx.open(path, **kw)


def _expected_content(t: Truncated) -> bytes:
    content = bytearray(t.raw)
    for x in t.lost:
        content[x.virtual_offset : x.virtual_offset + x.length] = bytes(x.length)
    return bytes(content)


# -- without salvage ---------------------------------------------------------------------


def test_truncated_image_is_an_error_naming_what_is_missing(truncated: Truncated) -> None:
    with pytest.raises(TruncatedImageError) as info:
        _open(truncated.path).read_at(0, SIZE)
    message = str(info.value)
    assert str(truncated.missing) in message or f"{truncated.missing:#x}" in message
    assert "salvage" in message


# -- with salvage -------------------------------------------------------------------------


def test_salvage_reads_surviving_blocks_and_lists_lost_ones(truncated: Truncated) -> None:
    before = (sha256_of_file(truncated.path), os.stat(truncated.path).st_mtime_ns)
    with _open(truncated.path, salvage=True) as img:
        assert img.read_at(0, SIZE) == _expected_content(truncated)
        problems = img.info().problems
    for lost in truncated.lost:
        match = [
            p
            for p in problems
            if p.offset == lost.file_offset
            and f"{lost.virtual_offset:#x}" in p.message
            and f"{lost.length:#x}" in p.message
        ]
        assert match, f"{lost} is not listed in {[str(p) for p in problems]}"
    assert (sha256_of_file(truncated.path), os.stat(truncated.path).st_mtime_ns) == before


def test_salvage_block_cut_in_the_middle(truncated_mid_block: Truncated) -> None:
    t = truncated_mid_block
    partial = [x for x in t.lost if x.length == 1536]
    assert len(partial) == 1
    with _open(t.path, salvage=True) as img:
        content = img.read_at(0, SIZE)
        problems = img.info().problems
    assert content == _expected_content(t)
    # The bytes of the cut block that are still in the file read as stored.
    start = partial[0].virtual_offset
    assert content[start - 4096 : start] == t.raw[start - 4096 : start]
    assert any(p.offset == partial[0].file_offset and f"{start:#x}" in p.message for p in problems)


def test_salvage_on_an_intact_image_changes_nothing(
    qemu_img: str, tmp_path: Path, fmt: str
) -> None:
    raw = make_raw(tmp_path / "i.raw", 4 * MiB, seed=3, pattern="half", run_size=MiB)
    qfmt = "vhdx" if fmt == "vhdx" else "vpc"
    path = qemu_convert(
        raw, tmp_path / f"i.{fmt}", qfmt, {"force_size": True} if fmt == "vhd" else {}
    )
    with _open(path) as plain, _open(path, salvage=True) as salvaged:
        assert salvaged.read_at(0, plain.virtual_size) == plain.read_at(0, plain.virtual_size)
        assert salvaged.info().problems == plain.info().problems


def test_salvage_is_read_only(truncated: Truncated) -> None:
    with pytest.raises(InvalidArgumentError):
        pyvhdx.open(truncated.path, "r+", salvage=True)


# -- inspect already lists the lost blocks ------------------------------------------------


def test_inspect_lists_the_lost_blocks(truncated_mid_block: Truncated) -> None:
    t = truncated_mid_block
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PyvhdxWarning)
        report = inspect_image(t.path)
    past = report["bat"]["beyond-end-of-file"]
    assert past["count"] == len(t.lost)
    assert past["missing-bytes"] == t.missing
    block = report["bat"]["block-size"]
    got = {(x["block"], x["missing-bytes"]) for x in past["examples"]}
    assert got == {(x.virtual_offset // block, x.length) for x in t.lost}
