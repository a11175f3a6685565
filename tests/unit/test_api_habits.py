"""Issue 19: the everyday API takes what Python users write.

``pyvhdx.open`` takes ``"rb"``/``"r+b"`` and bytes paths, and refuses at open a
file object open read-only for ``mode="r+"``; a file with no VHD or VHDX
signature is not read as raw in silence (``info().problems``, ``check``);
sizes may be strings (``"64G"``) wherever the library takes one, and anything
else is an InvalidArgumentError, never a bare TypeError.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.check import check_image
from pyvhdx.cli import main
from pyvhdx.create import azure_vhd_size, create_vhd, create_vhdx, create_vhdx_child
from pyvhdx.errors import InvalidArgumentError
from pyvhdx.image import NO_SIGNATURE
from pyvhdx.resize import resize_image
from tests.conftest import MiB, qemu_info, qemu_to_raw

# -- open: modes, bytes paths, read-only file objects -----------------------------------


@pytest.fixture
def vhdx(tmp_path: Path) -> Path:
    path = tmp_path / "d.vhdx"
    pyvhdx.create(path, 4 * MiB, block_size=MiB)
    return path


@pytest.mark.parametrize(("mode", "normal"), [("rb", "r"), ("r+b", "r+"), ("rb+", "r+")])
def test_binary_modes_are_the_plain_ones(
    vhdx: Path, tmp_path: Path, mode: str, normal: str
) -> None:
    text = b"written through " + mode.encode()
    with pyvhdx.open(vhdx, mode=mode) as img:
        assert img.mode == normal
        if normal == "r+":
            img.write_at(MiB, text)
        else:
            with pytest.raises(pyvhdx.ReadOnlyError):
                img.write_at(0, b"x")
    if normal == "r+":  # qemu reads what was written
        data = qemu_to_raw(vhdx, tmp_path / "out.raw", "vhdx").read_bytes()
        assert data[MiB : MiB + len(text)] == text


def test_bytes_path(vhdx: Path) -> None:
    with pyvhdx.open(os.fsencode(vhdx), mode="rb") as img:
        assert img.name == str(vhdx)
        assert img.format is pyvhdx.ImageFormat.VHDX
        assert img.virtual_size == 4 * MiB


@pytest.mark.parametrize("mode", ["w", "rw", "a", "R", "", "r+t"])
def test_other_modes_are_refused(vhdx: Path, mode: str) -> None:
    with pytest.raises(InvalidArgumentError, match="mode"):
        pyvhdx.open(vhdx, mode=mode)


def test_read_only_file_object_refused_for_r_plus(vhdx: Path) -> None:
    """Before: the open succeeded and the first write or flush failed with EBADF."""
    with open(vhdx, "rb") as f:
        with pytest.raises(InvalidArgumentError, match=r"read-only.*'rb'") as err:
            pyvhdx.open(f, mode="r+")
        assert str(vhdx) in str(err.value)
        with pyvhdx.open(f, mode="rb") as img:  # reading it is fine
            assert img.virtual_size == 4 * MiB
    with open(vhdx, "r+b") as g, pyvhdx.open(g, mode="r+") as img:
        img.write_at(0, b"ok")
        img.flush()
    with pyvhdx.open(vhdx) as img:
        assert img.read_at(0, 2) == b"ok"


# -- a file with no signature --------------------------------------------------------------


@pytest.mark.parametrize("content", [os.urandom(1 << 16), b""], ids=["random", "empty"])
def test_no_signature_is_reported(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unknown.bin"
    path.write_bytes(content)
    with pyvhdx.open(path) as img:  # still opens, as raw
        assert img.format is pyvhdx.ImageFormat.RAW
        problems = img.info().problems
    assert [p.code for p in problems] == [NO_SIGNATURE]
    assert "no VHD or VHDX signature" in problems[0].message
    report = check_image(path)
    assert report.exit_code == 1
    assert [f.code for f in report.errors] == [NO_SIGNATURE]
    with pyvhdx.open(path) as img:  # an open image tells the same
        assert check_image(img).exit_code == 1
    assert main(["check", str(path)]) == 1
    assert "no VHD or VHDX signature" in capsys.readouterr().out

    # Said to be raw: nothing to report.
    with pyvhdx.open(path, format="raw") as img:
        assert img.info().problems == []
        assert check_image(img).exit_code == 0
    assert check_image(path, format="raw").exit_code == 0


def test_detected_images_carry_no_such_problem(vhdx: Path) -> None:
    with pyvhdx.open(vhdx) as img:
        assert img.info().problems == []
    assert check_image(vhdx).exit_code == 0


# -- sizes as strings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "size", "expected"),
    [("vhdx", "64G", 64 << 30), ("vhd", "1.5GiB", 3 << 29), ("vhdx", "10m", 10 * MiB)],
)
def test_create_takes_sizes_as_strings(tmp_path: Path, fmt: str, size: str, expected: int) -> None:
    """Before: ``pyvhdx.create(path, "64G")`` failed with a bare TypeError."""
    path = tmp_path / f"d.{fmt}"
    assert pyvhdx.create(path, size) == expected
    assert qemu_info(path)["virtual-size"] == expected
    with pyvhdx.open(path) as img:
        assert img.virtual_size == expected


def test_create_functions_take_sizes_as_strings(tmp_path: Path) -> None:
    vhdx = create_vhdx(tmp_path / "a.vhdx", "64M", block_size="1M", logical_sector_size="4K")
    with pyvhdx.open(vhdx) as img:
        assert (img.virtual_size, img.block_size, img.logical_sector_size) == (
            64 * MiB,
            MiB,
            4096,
        )
    vhd = create_vhd(tmp_path / "a.vhd", "8M", block_size="512K")
    assert qemu_info(vhd)["virtual-size"] == 8 * MiB
    assert azure_vhd_size("20.5M") == 21 * MiB
    child = create_vhdx_child(tmp_path / "c.avhdx", vhdx, block_size="4M")
    with pyvhdx.open(child) as img:
        assert img.block_size == 4 * MiB
    assert pyvhdx.create(tmp_path / "b.vhdx", "16M", block_size="2M") == 16 * MiB


def test_resize_takes_a_size_as_a_string(tmp_path: Path) -> None:
    path = tmp_path / "r.vhdx"
    pyvhdx.create(path, 8 * MiB, block_size=MiB)
    assert resize_image(path, "16M").new_size == 16 * MiB
    assert qemu_info(path)["virtual-size"] == 16 * MiB


_BAD_SIZES = [1.5, 64.0 * MiB, None, [64], True, "64X", "-1M", "1.0001K", b"64M"]


@pytest.mark.parametrize("bad", _BAD_SIZES)
def test_bad_sizes_are_invalid_arguments(tmp_path: Path, bad: object) -> None:
    """A float, None, a list...: an InvalidArgumentError naming the size, never a TypeError."""
    path = tmp_path / "bad.vhdx"
    calls: list[Callable[[], object]] = [
        lambda: create_vhdx(path, bad),  # type: ignore[arg-type]
        lambda: create_vhd(tmp_path / "bad.vhd", bad),  # type: ignore[arg-type]
        lambda: azure_vhd_size(bad),  # type: ignore[arg-type]
    ]
    if bad is not None:  # None is the default block size, and create's "no size" error
        calls.append(lambda: create_vhdx(path, MiB, block_size=bad))  # type: ignore[arg-type]
        calls.append(lambda: pyvhdx.create(path, bad))  # type: ignore[arg-type]
    for call in calls:
        with pytest.raises(InvalidArgumentError, match="size"):
            call()
    assert not path.exists()
