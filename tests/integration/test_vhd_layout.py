"""One VHD layout model (issue 14): the reader, ``check`` and ``inspect`` see the
same defects, because :mod:`pyvhdx.vhd.layout` is the one place that finds them.

Parent locator data below offset 512 (over the footer copy) is outside the data
area: ``check`` warns, the reader reports it and does not use the path, ``inspect``
marks the entry, and ``set_parent`` refuses to write there.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.check import check_image
from pyvhdx.checksum import vhd_checksum
from pyvhdx.inspect import inspect_image
from pyvhdx.setparent import set_parent
from pyvhdx.source import FileSource
from pyvhdx.vhd.file import choose_footer
from pyvhdx.vhd.layout import read_footers

MiB = 1 << 20
HEADER = 512  # pyvhdx puts the dynamic header right after the footer copy
ENTRIES = HEADER + 576  # parent locator entries, 24 bytes each


def _child(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "base.vhd"
    child = tmp_path / "child.vhd"
    pyvhdx.create(base, 4 * MiB, block_size=MiB)
    pyvhdx.create(child, parent=base, block_size=MiB)
    return base, child


def _move_locator_data(path: Path, index: int, offset: int) -> str:
    """Point locator entry ``index`` at ``offset`` (header checksum fixed); its code."""
    data = bytearray(path.read_bytes())
    entry = ENTRIES + 24 * index
    data[entry + 16 : entry + 24] = struct.pack(">Q", offset)
    data[HEADER + 36 : HEADER + 40] = struct.pack(
        ">I", vhd_checksum(data[HEADER : HEADER + 1024], 36)
    )
    path.write_bytes(bytes(data))
    return data[entry : entry + 4].decode("ascii")


def test_locator_data_below_512_is_outside_for_every_reader(tmp_path: Path) -> None:
    base, child = _child(tmp_path)
    code = _move_locator_data(child, 0, 0x100)  # inside the footer copy at offset 0

    report = check_image(child)
    found = [f for f in report.warnings if f.field == "PlatformDataOffset"]
    assert len(found) == 1 and "outside the data area" in found[0].message
    assert found[0].offset == ENTRIES + 16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pyvhdx.open(child, allow_missing_parent=True) as img:
            problems = [p for p in img.info().problems if p.structure == "VHD parent locator"]
            assert [p.offset for p in problems] == [ENTRIES + 16]
            parent_info = img.info().parent
            assert parent_info is not None
            locs = {loc["platform-code"]: loc for loc in parent_info["locators"]}
            assert locs[code]["path"] is None  # not read from the footer copy
            assert code not in [name for name, _ in img.handler.parent_locations()]
        # The other locator still finds the parent.
        with pyvhdx.open(child) as img:
            assert img.parent is not None

    inspected = inspect_image(child)
    entry = next(e for e in inspected["parent-locators"] if e["index"] == 0)
    assert "outside" in entry["error"] and "path" not in entry

    before = child.read_bytes()
    with pytest.raises(pyvhdx.InvalidArgumentError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        set_parent(child, base)
    assert child.read_bytes()[:512] == before[:512]  # the footer copy is untouched


def test_one_footer_decision(tmp_path: Path) -> None:
    """The copy the reader uses is the one check and inspect name as in use."""
    _, child = _child(tmp_path)
    data = bytearray(child.read_bytes())
    data[-512 + 100] ^= 1  # the footer at the end: a bad checksum
    child.write_bytes(bytes(data))
    source = FileSource(child)
    try:
        choice = choose_footer(read_footers(source))
    finally:
        source.close()
    assert choice.chosen.where == "start"
    assert inspect_image(child)["footer-in-use"] == "start"
    report = check_image(child)
    assert any(f.message == "readers use the footer copy at offset 0" for f in report.findings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pyvhdx.open(child, allow_missing_parent=True) as img:
            assert img.info().format_specific["footer-copy"] == "start"
