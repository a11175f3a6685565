"""The ``pyvhdx`` command line: ``main([...])`` in process, ``python -m pyvhdx`` once.

Images are made in the test: a deterministic raw file and its qemu-img VHDX
conversion (skipped when qemu-img is missing, a failure under CI=true).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pyvhdx
from pyvhdx.cli import format_size, main, render_fields
from pyvhdx.image import open_image
from tests.conftest import (
    MiB,
    decompress_realworld,
    load_expected,
    make_raw,
    qemu_convert,
    qemu_info,
    require_realworld,
)

RAW_SIZE = 6 * MiB
BLOCK_SIZE = 1 * MiB
HEADER_OFFSETS = (64 * 1024, 128 * 1024)
DIFFERENCING = "dissect.hypervisor/differencing.avhdx.gz"


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def raw_image(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "disk.img", RAW_SIZE, seed=7)


@pytest.fixture
def vhdx_image(qemu_img: str, raw_image: Path, tmp_path: Path) -> Path:
    """``qemu-img convert -f raw -O vhdx -o subformat=dynamic,block_size=1M``."""
    return qemu_convert(
        raw_image, tmp_path / "disk.vhdx", "vhdx", {"subformat": "dynamic", "block_size": "1M"}
    )


@pytest.fixture
def broken_vhdx(vhdx_image: Path) -> Path:
    """Both VHDX headers zeroed: the image cannot be opened."""
    with open(vhdx_image, "r+b") as f:
        for offset in HEADER_OFFSETS:
            f.seek(offset)
            f.write(bytes(4096))
    return vhdx_image


def run(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    status = main([os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def fields(out: str) -> dict[str, str]:
    """Top-level ``key: value`` lines of the human output."""
    result = {}
    for line in out.splitlines():
        if line and not line.startswith(" ") and ": " in line:
            key, _, value = line.partition(":")
            result[key] = value.strip()
    return result


# -- info, human output ---------------------------------------------------------------


def test_info_raw(capsys: pytest.CaptureFixture[str], raw_image: Path) -> None:
    status, out, err = run(capsys, "info", raw_image)
    assert (status, err) == (0, "")
    f = fields(out)
    assert f["file format"] == "raw"
    assert f["virtual size"] == f"6 MiB ({RAW_SIZE} bytes)"
    assert "block size" not in f


def test_info_vhdx(capsys: pytest.CaptureFixture[str], vhdx_image: Path) -> None:
    status, out, err = run(capsys, "info", vhdx_image)
    assert (status, err) == (0, "")
    f = fields(out)
    assert f["image"] == str(vhdx_image)
    assert f["file format"] == "vhdx"
    assert f["disk type"] == "dynamic"
    assert f["virtual size"] == f"6 MiB ({RAW_SIZE} bytes)"
    assert f["block size"] == f"1 MiB ({BLOCK_SIZE} bytes)"
    assert f["logical sector size"] == "512 bytes"
    assert f["creator"].startswith("QEMU")
    uuid.UUID(f["page 83 id"])
    assert f["log replayed"] == "no"
    assert f["header copy"] in {"1", "2"}
    assert f["failed copies"] == "none"
    assert f["problems"] == "none"
    lines = out.splitlines()
    assert "allocation:" in lines
    assert "format specific information:" in lines
    assert any(line.strip().startswith("sequence number:") for line in lines)
    # Top-level values are aligned in one column.
    columns = {
        len(line) - len(line.split(":", 1)[1].lstrip())
        for line in lines
        if not line.startswith(" ") and not line.endswith(":")
    }
    assert len(columns) == 1


def test_info_reports_failed_copy(capsys: pytest.CaptureFixture[str], vhdx_image: Path) -> None:
    with open(vhdx_image, "r+b") as f:
        f.seek(HEADER_OFFSETS[0] + 100)  # inside header 1: its checksum no longer matches
        f.write(b"\xff" * 8)
    status, out, err = run(capsys, "info", vhdx_image)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    i = lines.index("failed copies:")
    assert lines[i + 1].strip() == "header 1"
    j = lines.index("problems:")
    assert lines[j + 1].startswith("    header 1")
    assert fields(out)["header copy"] == "2"


def test_info_format_option(capsys: pytest.CaptureFixture[str], vhdx_image: Path) -> None:
    status, out, _ = run(capsys, "info", "-f", "raw", "--strict", vhdx_image)
    assert status == 0
    size = vhdx_image.stat().st_size
    assert fields(out)["file format"] == "raw"
    assert fields(out)["virtual size"].endswith(f"({size} bytes)")


# -- info --json ----------------------------------------------------------------------


def test_info_json_matches_qemu(capsys: pytest.CaptureFixture[str], vhdx_image: Path) -> None:
    status, out, err = run(capsys, "info", "--json", vhdx_image)
    assert (status, err) == (0, "")
    data = json.loads(out)
    qemu = qemu_info(vhdx_image)
    assert data["format"] == qemu["format"] == "vhdx"
    assert data["virtual-size"] == qemu["virtual-size"] == RAW_SIZE
    assert data["cluster-size"] == qemu["cluster-size"] == BLOCK_SIZE
    assert data["dirty-flag"] is False
    assert data["format-specific"]["type"] == "vhdx"
    assert list(data)[:3] == ["filename", "format", "disk-type"]  # not sorted


def test_info_json_raw(capsys: pytest.CaptureFixture[str], raw_image: Path) -> None:
    status, out, _ = run(capsys, "info", "--json", raw_image)
    assert status == 0
    data = json.loads(out)
    assert data["format"] == "raw"
    assert data["virtual-size"] == RAW_SIZE


def test_to_dict_is_json_serializable(vhdx_image: Path) -> None:
    """The library's dict needs no ``default=`` hook for a VHDX (the CLI has one anyway)."""
    with pyvhdx.open(vhdx_image) as img:
        json.dumps(img.info().to_dict())


def test_info_json_robust_to_odd_values(
    capsys: pytest.CaptureFixture[str], raw_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_info = pyvhdx.DiskImage.info

    def info(self: pyvhdx.DiskImage) -> pyvhdx.ImageInfo:
        result = real_info(self)
        result.format_specific = {
            "count": np.int64(3),
            "flags": {pyvhdx.DiskType.FIXED},
            "guid": uuid.UUID(int=1),
            "raw": bytearray(b"\x01\x02"),
            "path": Path("a"),
        }
        return result

    monkeypatch.setattr(pyvhdx.DiskImage, "info", info)
    status, out, err = run(capsys, "info", "--json", raw_image)
    assert (status, err) == (0, "")
    data = json.loads(out)["format-specific"]["data"]
    assert data == {
        "count": 3,
        "flags": ["fixed"],
        "guid": str(uuid.UUID(int=1)),
        "raw": "0102",
        "path": "a",
    }
    status, out, err = run(capsys, "info", raw_image)
    assert (status, err) == (0, "")
    assert "    raw:   0102" in out.splitlines()


# -- errors and exit codes ------------------------------------------------------------


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run(capsys, "info", tmp_path / "nope.vhdx")
    assert status == 2  # as for any argument that names nothing
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("pyvhdx: error:")
    assert "nope.vhdx" in err


def test_corrupt_headers(capsys: pytest.CaptureFixture[str], broken_vhdx: Path) -> None:
    status, out, err = run(capsys, "info", broken_vhdx)
    assert status == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("pyvhdx: error:")
    assert "header" in err.lower()
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_traceback(
    capsys: pytest.CaptureFixture[str], broken_vhdx: Path, where: str
) -> None:
    image = str(broken_vhdx)
    argv = ["--debug", "info", image] if where == "before" else ["info", "--debug", image]
    status, out, err = run(capsys, *argv)
    assert status == 1
    assert out == ""
    assert "Traceback (most recent call last)" in err
    assert "InvalidImageError" in err or "ChecksumError" in err


@pytest.mark.parametrize(
    "argv",
    [[], ["info"], ["frobnicate"], ["info", "--bogus", "x"], ["info", "-f", "qcow2", "x"]],
)
def test_usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert "usage:" in err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--version")
    assert (status, out.strip()) == (0, f"pyvhdx {pyvhdx.__version__}")
    status, out, _ = run(capsys, "info", "--help")
    assert status == 0
    assert "--json" in out


def test_library_warning_is_one_line(
    capsys: pytest.CaptureFixture[str], raw_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def open_with_warning(*args: Any, **kwargs: Any) -> pyvhdx.DiskImage:
        warnings.warn("disk.vhd: footer checksum 0x1 does not match\n0x2", stacklevel=2)
        return open_image(*args, **kwargs)

    monkeypatch.setattr(pyvhdx.image, "open_image", open_with_warning)  # imported when used
    status, out, err = run(capsys, "info", raw_image)
    assert status == 0
    assert err == "pyvhdx: warning: disk.vhd: footer checksum 0x1 does not match 0x2\n"
    assert "virtual size:" in out


# -- rendering helpers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (512, "512 bytes"),
        (4096, "4 KiB (4096 bytes)"),
        (10 * MiB, "10 MiB (10485760 bytes)"),
        (3 * MiB // 2 * 1024, "1.5 GiB (1610612736 bytes)"),
        (10_514_432, "10 MiB (10514432 bytes)"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


def test_render_fields() -> None:
    lines = render_fields(
        [
            ("name", "a\x1b[31mb"),
            ("long-key", True),
            ("items", ["x", "y"]),
            ("numbers", [1, 2]),
            ("empty", []),
            ("section", {"file-offset": 4096, "length": 2048, "sub": [{"k": None}]}),
        ]
    )
    assert lines == [
        "name:     a\\x1b[31mb",
        "long key: yes",
        "items:",
        "    x",
        "    y",
        "numbers:  1, 2",
        "empty:    none",
        "section:",
        "    file offset: 0x1000",
        "    length:      2 KiB (2048 bytes)",
        "    sub:",
        "        [0]:",
        "            k: none",
    ]


# -- python -m pyvhdx -----------------------------------------------------------------


def test_python_m(vhdx_image: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pyvhdx", "info", "--json", str(vhdx_image)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["virtual-size"] == RAW_SIZE


def test_python_m_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pyvhdx", "info", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("pyvhdx: error:")
    assert len(result.stderr.splitlines()) == 1


def test_closed_stdout_is_quiet(raw_image: Path) -> None:
    """``pyvhdx info --json x | head -0``: EPIPE on stdout, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before pyvhdx writes anything
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pyvhdx", "info", "--json", str(raw_image)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 0  # the reader has what it wanted: not a failure


# -- real-world image -----------------------------------------------------------------


def test_realworld_differencing_parent_locator(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    require_realworld()
    entry = next(e for e in load_expected() if e["file"] == DIFFERENCING)
    match = re.search(r'relative_path "((?:[^"\\]|\\.)*)"', entry["facts"])
    assert match is not None, entry["facts"]
    relative_path = json.loads(f'"{match.group(1)}"')  # facts escape the backslash
    image = decompress_realworld(entry, tmp_path)

    status, out, err = run(capsys, "info", "--json", image)
    assert (status, err) == (0, "")
    data = json.loads(out)
    assert data["disk-type"] == "differencing"
    locator = data["parent"]["locator"]  # backing-image is the parent's info, as qemu-img
    assert locator["parent_linkage"] == "{ff34003b-11ed-4cf8-a166-b2be05e20b80}"
    assert locator["relative_path"] == relative_path

    status, out, err = run(capsys, "info", image)
    assert (status, err) == (0, "")
    assert any(
        line.split() == ["parent_linkage:", "{ff34003b-11ed-4cf8-a166-b2be05e20b80}"]
        for line in out.splitlines()
    )
