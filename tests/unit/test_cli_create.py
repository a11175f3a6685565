"""``pyvhdx create``: sizes with suffixes, format from -f or the name, every
option, human and JSON output, and the error conventions (one line; exit 1 for
what the library refuses, 2 for usage).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.cli import main, parse_size

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# -- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512),
        ("0", 0),
        ("512B", 512),
        ("4K", 4 * KiB),
        ("4k", 4 * KiB),
        ("4KiB", 4 * KiB),
        ("10M", 10 * MiB),
        ("10m", 10 * MiB),
        ("64G", 64 * GiB),
        ("1T", TiB),
        ("2P", 2 << 50),
        ("1.5G", 3 * GiB // 2),
        ("0.5K", 512),
        (" 7M ", 7 * MiB),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "M", "-1", "10X", "10GB", "1.3", "1.0001K", "1e6", "0x100", "5 M B", "2Bib"]
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


# -- creating ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("d.vhd", "vhd"), ("d.VHD", "vhd"), ("d.vhdx", "vhdx"), ("d.avhdx", "vhdx")],
)
def test_format_from_the_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, fmt: str
) -> None:
    path = tmp_path / name
    status, out, err = run(capsys, "create", str(path), "10M")
    assert (status, err) == (0, "")
    with pyvhdx.open(path) as img:
        assert (img.format.value, img.disk_type.value, img.virtual_size) == (
            fmt,
            "dynamic",
            10 * MiB,
        )
        block = img.block_size
    assert block == (2 * MiB if fmt == "vhd" else 32 * MiB)
    lines = out.splitlines()
    assert lines[0].split() == ["created:", str(path)]
    assert f"file format:          {fmt}" in lines
    assert "virtual size:         10 MiB (10485760 bytes)" in lines


def test_format_option_wins_over_the_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "odd.vhdx"
    assert run(capsys, "create", "-f", "vhd", str(path), "1M")[0] == 0
    with pyvhdx.open(path) as img:
        assert img.format.value == "vhd"
    other = tmp_path / "disk.img"
    assert run(capsys, "create", "--format", "vhdx", str(other), "1M")[0] == 0
    with pyvhdx.open(other) as img:
        assert img.format.value == "vhdx"


def test_unknown_name_without_format_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "disk.img"
    status, out, err = run(capsys, "create", str(path), "1M")
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and "use -f vhdx or -f vhd" in err
    assert not path.exists()


def test_vhd_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    status, out, _ = run(capsys, "create", "--block-size", "512K", str(path), "3M")
    assert status == 0
    assert "block size:           512 KiB (524288 bytes)" in out.splitlines()
    with pyvhdx.open(path) as img:
        assert img.block_size == 512 * KiB
    fixed = tmp_path / "f.vhd"
    status, out, _ = run(capsys, "create", "--type", "fixed", "--preallocate", str(fixed), "2M")
    assert status == 0
    assert "block size" not in out
    assert fixed.stat().st_size == 2 * MiB + 512
    assert fixed.stat().st_blocks * 512 >= 2 * MiB  # written out, not sparse
    with pyvhdx.open(fixed) as img:
        assert img.disk_type.value == "fixed"


def test_vhdx_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    status, _, _ = run(
        capsys,
        "create",
        "--type",
        "fixed",
        "--block-size",
        "1M",
        "--logical-sector-size",
        "4096",
        "--physical-sector-size",
        "512",
        str(path),
        "8M",
    )
    assert status == 0
    with pyvhdx.open(path) as img:
        assert (img.disk_type.value, img.block_size) == ("fixed", MiB)
        assert (img.logical_sector_size, img.physical_sector_size) == (4096, 512)


def test_azure(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "azure.vhd"
    status, out, err = run(capsys, "create", "--azure", str(path), "30000000")
    assert status == 0
    rounded = 29 * MiB  # 30,000,000 bytes rounded up to whole MiB
    assert f"virtual size:         29 MiB ({rounded} bytes)" in out.splitlines()
    assert "requested size:       28.6 MiB (30000000 bytes)" in out.splitlines()
    note = f"size rounded up from 30000000 to {rounded} bytes (Azure takes whole MiB)"
    assert err == f"pyvhdx: note: {note}\n"
    assert path.stat().st_size == rounded + 512
    with pyvhdx.open(path) as img:
        assert (img.format.value, img.disk_type.value, img.virtual_size) == (
            "vhd",
            "fixed",
            rounded,
        )
    # already whole MiB: no note; the name need not say .vhd with --azure
    other = tmp_path / "azure.disk"
    status, out, err = run(capsys, "create", "--azure", str(other), "20M")
    assert (status, err) == (0, "")
    assert "requested size" not in out


@pytest.mark.parametrize(
    "args",
    [
        ["--azure", "-f", "vhdx"],
        ["--azure", "--name", "x.vhdx"],
        ["--azure", "--type", "dynamic"],
        ["--azure", "--size-is", "19M"],
        ["-f", "vhd", "--logical-sector-size", "4096"],
        ["-f", "vhd", "--physical-sector-size", "4096"],
        ["-f", "vhd", "--block-size", "3M"],
        ["-f", "vhdx", "--block-size", "512K"],
        ["-f", "vhd", "--size-is", "3T"],
        ["-f", "vhd", "--size-is", "1000"],
        ["-f", "vhdx", "--size-is", "0"],
    ],
    ids=lambda a: " ".join(a),
)
def test_refused_parameters_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str]
) -> None:
    size = "10M"
    if "--size-is" in args:
        i = args.index("--size-is")
        size = args[i + 1]
        args = args[:i] + args[i + 2 :]
    path = tmp_path / "x.img"
    if "--name" in args:
        i = args.index("--name")
        path = tmp_path / args[i + 1]
        args = args[:i] + args[i + 2 :]
    status, out, err = run(capsys, "create", *args, str(path), size)
    assert status == 1, err
    assert out == ""
    assert err.startswith("pyvhdx: error: ") and err.count("\n") == 1
    assert not path.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["x.vhd", "10X"],
        ["x.vhd"],
        ["--type", "sparse", "x.vhd", "1M"],
        ["--logical-sector-size", "1024", "x.vhdx", "1M"],
        ["--block-size", "lots", "x.vhd", "1M"],
        ["-f", "raw", "x.img", "1M"],
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, _ = run(capsys, "create", *args)
    assert status == 2
    assert out == ""
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    path.write_bytes(b"precious")
    status, out, err = run(capsys, "create", str(path), "1M")
    assert status == 1
    assert out == ""
    assert err == f"pyvhdx: error: {path}: exists (use --force to replace it)\n"
    assert path.read_bytes() == b"precious"
    # a refused parameter with --overwrite leaves the file too
    status, _, _ = run(capsys, "create", "--overwrite", "--block-size", "3M", str(path), "1M")
    assert status == 1
    assert path.read_bytes() == b"precious"
    status, _, _ = run(capsys, "create", "--overwrite", str(path), "1M")
    assert status == 0
    with pyvhdx.open(path) as img:
        assert img.virtual_size == MiB


def test_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    status, out, err = run(capsys, "create", "--json", "--azure", str(path), "20971000")
    assert status == 0
    assert err.startswith("pyvhdx: note: size rounded up")  # diagnostics stay on stderr
    data = json.loads(out)
    assert data["filename"] == str(path)
    assert data["format"] == "vhd"
    assert data["disk-type"] == "fixed"
    assert data["virtual-size"] == 20 * MiB
    assert data["requested-size"] == 20971000
    assert data["file-size"] == 20 * MiB + 512
    assert data["format-specific"]["data"]["creator-application"] == "win "
    # the same keys as pyvhdx info --json
    status, info_out, _ = run(capsys, "info", "--json", str(path))
    info = json.loads(info_out)
    assert {k: v for k, v in data.items() if k != "requested-size"}.keys() == info.keys()


def test_python_m_pyvhdx_create(tmp_path: Path) -> None:
    path = tmp_path / "m.vhd"
    r = subprocess.run(
        [sys.executable, "-m", "pyvhdx", "create", "--type", "fixed", str(path), "1M"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("created:")
    assert (
        hashlib.sha256(path.read_bytes()[:MiB]).hexdigest()
        == hashlib.sha256(bytes(MiB)).hexdigest()
    )
