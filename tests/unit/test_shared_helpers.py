"""The helpers several operations share: data ranges of a file (SEEK_DATA/SEEK_HOLE),
the format a name suggests, progress callbacks.

A SEEK_DATA that fails with anything but ENXIO (EINVAL from a file system that
does not support it) means "all data" everywhere: compare, convert and
``map`` read the range instead of failing.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.compare import allocation_map, compare_images
from pyvhdx.constants import ImageFormat, RunKind
from pyvhdx.progress import reporting
from pyvhdx.source import data_spans
from pyvhdx.suffix import format_from_suffix

MiB = 1 << 20


def _sparse(path: Path, size: int, marks: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in marks.items():
            f.seek(off)
            f.write(data)
    return path


def _refuse_seek_data(monkeypatch: pytest.MonkeyPatch, code: int = errno.EINVAL) -> list[int]:
    """Make lseek(SEEK_DATA/SEEK_HOLE) fail with ``code``; returns the calls seen."""
    real = os.lseek
    calls: list[int] = []

    def lseek(fd: int, pos: int, how: int) -> int:
        if how in (getattr(os, "SEEK_DATA", -1), getattr(os, "SEEK_HOLE", -1)):
            calls.append(how)
            raise OSError(code, os.strerror(code))
        return real(fd, pos, how)

    monkeypatch.setattr(os, "lseek", lseek)
    return calls


needs_seek_data = pytest.mark.skipif(
    not hasattr(os, "SEEK_DATA"), reason="the system has no SEEK_DATA"
)


@needs_seek_data
def test_data_spans_falls_back_to_all_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _sparse(tmp_path / "f", 4 * MiB, {3 * MiB: b"x"})
    fd = os.open(path, os.O_RDONLY)
    try:
        calls = _refuse_seek_data(monkeypatch)
        assert list(data_spans(fd, 100, 4 * MiB)) == [(100, 4 * MiB)]
        assert calls
    finally:
        os.close(fd)


def test_data_spans_without_a_descriptor() -> None:
    assert list(data_spans(None, 5, 9)) == [(5, 9)]
    assert list(data_spans(None, 9, 9)) == []


@needs_seek_data
def test_data_spans_enxio_is_a_hole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _sparse(tmp_path / "f", 2 * MiB, {})
    fd = os.open(path, os.O_RDONLY)
    try:
        _refuse_seek_data(monkeypatch, errno.ENXIO)
        assert list(data_spans(fd, 0, 2 * MiB)) == []
    finally:
        os.close(fd)


@needs_seek_data
@pytest.mark.parametrize("fmt", ["raw", "vhd"])
def test_compare_and_map_fall_back_when_seek_data_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """compare (and map, built on allocation_map) read what SEEK_DATA cannot tell."""
    a = _sparse(tmp_path / "a.img", 4 * MiB, {MiB: b"same", 3 * MiB: b"a"})
    b = _sparse(tmp_path / "b.img", 4 * MiB, {MiB: b"same", 3 * MiB: b"b"})
    if fmt == "vhd":
        pyvhdx.convert(a, tmp_path / "a.vhd", disk_type="fixed")
        a = tmp_path / "a.vhd"
    calls = _refuse_seek_data(monkeypatch)
    assert compare_images(a, b) == 3 * MiB
    assert calls  # SEEK_DATA was asked, failed, and the range was read instead
    with pyvhdx.open(a) as img:
        runs = list(allocation_map(img))
    assert [(r.kind, r.hole) for r in runs] == [(RunKind.DATA, False)]


@needs_seek_data
def test_convert_falls_back_when_seek_data_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _sparse(tmp_path / "src.img", 4 * MiB, {2 * MiB + 5: b"data"})
    calls = _refuse_seek_data(monkeypatch)
    pyvhdx.convert(src, tmp_path / "out.vhdx")
    assert calls
    assert compare_images(src, tmp_path / "out.vhdx") is None


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.vhdx", ImageFormat.VHDX),
        ("A.AVHDX", ImageFormat.VHDX),
        ("dir.vhd/a.vhd", ImageFormat.VHD),
        ("a.avhd", ImageFormat.VHD),
        ("a.img", ImageFormat.RAW),
        ("a.raw", ImageFormat.RAW),
        ("a.qcow2", None),
        ("vhdx", None),
    ],
)
def test_format_from_suffix(name: str, fmt: ImageFormat | None) -> None:
    assert format_from_suffix(name) is fmt


def test_reporting_passes_callbacks_and_draws_bars_only_when_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[int] = []
    with reporting(seen.append, 10) as update:
        update(4)
    assert seen == [4]
    for quiet in (None, False):
        with reporting(quiet, 10) as update:
            update(10)
    assert capsys.readouterr().err == ""
    with reporting(True, 10, desc="testing") as update:
        update(10)
    assert "testing" in capsys.readouterr().err


def test_library_progress_is_quiet_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the command line decides to draw a bar on a terminal; the library does not."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    src = _sparse(tmp_path / "src.img", MiB, {5: b"x"})
    pyvhdx.convert(src, tmp_path / "out.vhdx")
    from pyvhdx.hashing import hash_image

    hash_image(src)
    assert capsys.readouterr().err == ""
