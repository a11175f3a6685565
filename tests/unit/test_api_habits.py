"""Issue 19: the everyday API takes what Python users write.

``pyvhdx.open`` takes ``"rb"``/``"r+b"`` and bytes paths, and refuses at open a
file object open read-only for ``mode="r+"``; a file with no VHD or VHDX
signature is not read as raw in silence (``info().problems``, ``check``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.check import check_image
from pyvhdx.cli import main
from pyvhdx.errors import InvalidArgumentError
from pyvhdx.image import NO_SIGNATURE
from tests.conftest import MiB, qemu_to_raw

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
