"""convert keeps the source's sector sizes (issue 15): a 4096-byte-sector VHDX stays
one; a VHD, which has 512-byte sectors only, is made with a warning. libvhdi reads
the sector size of the result (its ``bytes_per_sector``)."""

from __future__ import annotations

from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.errors import InvalidArgumentError, PyvhdxWarning
from tests.conftest import import_pyvhdi

MiB = 1 << 20


def _libvhdi_sector(path: Path) -> int:
    h = import_pyvhdi().file()
    h.open(str(path))
    try:
        return int(h.get_bytes_per_sector())
    finally:
        h.close()


@pytest.fixture
def native_4k(tmp_path: Path) -> Path:
    path = tmp_path / "4k.vhdx"
    pyvhdx.create(path, 64 * MiB, logical_sector_size=4096, physical_sector_size=4096)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, b"\x42" * 8192)
    return path


@pytest.mark.oracle
def test_vhdx_to_vhdx_keeps_4096_byte_sectors(native_4k: Path, tmp_path: Path) -> None:
    out = pyvhdx.convert(native_4k, tmp_path / "copy.vhdx").destination
    with pyvhdx.open(out) as img:
        assert (img.logical_sector_size, img.physical_sector_size) == (4096, 4096)
        assert img.read_at(0, 8192) == b"\x42" * 8192
    assert _libvhdi_sector(out) == 4096
    told = pyvhdx.convert(native_4k, tmp_path / "told.vhdx", logical_sector_size=512)
    with pyvhdx.open(told.destination) as img:
        assert (img.logical_sector_size, img.physical_sector_size) == (512, 4096)


@pytest.mark.oracle
def test_vhdx_to_vhdx_keeps_512e(tmp_path: Path) -> None:
    src = tmp_path / "512e.vhdx"
    pyvhdx.create(src, 16 * MiB, logical_sector_size=512, physical_sector_size=512)
    out = pyvhdx.convert(src, tmp_path / "copy.vhdx").destination
    with pyvhdx.open(out) as img:
        assert (img.logical_sector_size, img.physical_sector_size) == (512, 512)
    assert _libvhdi_sector(out) == 512


def test_4k_vhdx_to_vhd_warns(native_4k: Path, tmp_path: Path) -> None:
    with pytest.warns(PyvhdxWarning, match="4096-byte logical sectors"):
        out = pyvhdx.convert(native_4k, tmp_path / "out.vhd").destination
    with pyvhdx.open(out) as img:
        assert img.logical_sector_size == 512
        assert img.read_at(0, 8192) == b"\x42" * 8192
    with pytest.raises(InvalidArgumentError, match="512-byte sectors"):
        pyvhdx.convert(native_4k, tmp_path / "bad.vhd", logical_sector_size=4096)
