"""Facts Get-VHD gives (issue 15): MinimumSize, FragmentationPercentage, Alignment and
the file's size against what it occupies on storage, in ``info`` and ``info --json``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyvhdx
from tests.conftest import require

MiB = 1 << 20


def _info(path: Path) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-m", "pyvhdx", "info", "--json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    data: dict[str, object] = json.loads(r.stdout)
    return data


def test_fragmentation_counts_blocks_stored_out_of_order(tmp_path: Path) -> None:
    path = tmp_path / "frag.vhdx"
    pyvhdx.create(path, 16 * MiB, block_size=MiB)
    with pyvhdx.open(path, "r+") as img:
        for block in (0, 1, 2, 3):  # in order
            img.write_at(block * MiB, b"x")
    assert _info(path)["allocation"]["fragmentation-percentage"] == 0  # type: ignore[index]
    with pyvhdx.open(path, "r+") as img:
        for block in (15, 14, 13, 12):  # each one stored after the block that follows it
            img.write_at(block * MiB, b"y")
    alloc = _info(path)["allocation"]
    assert alloc["data-blocks"] == 8  # type: ignore[index]
    # in disk order 12, 13, 14, 15: each of 13, 14, 15 lies in the file before its predecessor
    assert alloc["fragmentation-percentage"] == round(100 * 3 / 8)  # type: ignore[index]
    assert alloc["alignment"] == 1  # type: ignore[index]


def test_vhd_blocks_follow_512_byte_bitmaps(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    pyvhdx.create(path, 16 * MiB)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, b"x")
    with pyvhdx.open(path) as img:
        data_offset = next(e.file_offset for e in img.extents() if e.data)
        summary = img.allocation_summary()
    assert data_offset is not None
    assert summary.alignment == int(data_offset % 4096 == 0)


def test_minimum_size_and_storage(tmp_path: Path) -> None:
    sfdisk = shutil.which("sfdisk")
    if sfdisk is None:
        require("sfdisk", "sfdisk (util-linux fdisk) makes the partition table")
    raw = tmp_path / "p.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(
        [sfdisk, "-q", str(raw)],
        input="label: dos\nstart=2048, size=40960\n",
        text=True,
        check=True,
    )
    path = pyvhdx.convert(raw, tmp_path / "p.vhdx").destination
    info = _info(path)
    assert info["minimum-size"] == (2048 + 40960) * 512
    assert info["actual-size"] == path.stat().st_blocks * 512
    assert info["file-size"] == path.stat().st_size
    empty = tmp_path / "e.vhdx"
    pyvhdx.create(empty, 64 * MiB)
    assert "minimum-size" not in _info(empty)  # no partition table: Get-VHD has none either
