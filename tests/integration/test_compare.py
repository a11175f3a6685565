"""``pyvhdx compare`` and :func:`pyvhdx.compare.compare_images`, against ``qemu-img compare``.

The same content is made into VHDX, VHD and raw by ``qemu-img convert``; every
pair compares equal (exit 0). One byte changed gives exit 1 and its exact
offset, and ``qemu-img compare`` agrees (qemu reports the start of the 512-byte
sector holding it). Reads are counted by wrapping :meth:`DiskImage.readinto_at`:
ranges unallocated in both images are never read, so two empty 64 TiB images
compare without a single read.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pyvhdx
from pyvhdx.cli import main
from pyvhdx.compare import allocation_map, compare_images, find_difference
from pyvhdx.constants import RunKind
from pyvhdx.image import DiskImage
from tests.conftest import MiB, TiB, find_qemu_img, make_raw, qemu_convert, qemu_create

pytestmark = pytest.mark.oracle

SIZE = 10 * MiB


def run(capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]) -> tuple[int, str]:
    status = main(["compare", *[os.fspath(a) for a in args]])
    return status, capsys.readouterr().out


def qemu_compare(a: Path, b: Path, fa: str, fb: str) -> tuple[int, str]:
    r = subprocess.run(
        [find_qemu_img(), "compare", "-f", fa, "-F", fb, str(a), str(b)],
        capture_output=True,
        text=True,
    )
    return r.returncode, r.stdout


def mismatch_offset(text: str) -> int:
    match = re.search(r"Content mismatch at offset (\d+)!", text)
    assert match, text
    return int(match.group(1))


class ReadCounter:
    """Counts the bytes read through DiskImage.readinto_at."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.bytes = 0
        original = DiskImage.readinto_at

        def counted(img: DiskImage, offset: int, buffer: Any) -> int:
            n = original(img, offset, buffer)
            self.calls += 1
            self.bytes += n
            return n

        monkeypatch.setattr(DiskImage, "readinto_at", counted)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """One content in every format qemu makes: name -> (path, qemu format name)."""
    d = tmp_path_factory.mktemp("compare")
    raw = make_raw(d / "src.img", SIZE, seed=21, pattern="mixed", run_size=MiB)
    out = {"raw": (raw, "raw")}
    variants: list[tuple[str, str, dict[str, object]]] = [
        ("vhdx-dynamic", "vhdx", {"subformat": "dynamic", "block_size": "1M"}),
        ("vhdx-fixed", "vhdx", {"subformat": "fixed", "block_size": "2M"}),
        ("vhd-dynamic", "vpc", {"subformat": "dynamic", "force_size": True}),
        ("vhd-fixed", "vpc", {"subformat": "fixed", "force_size": True}),
    ]
    for name, fmt, opts in variants:
        ext = "vhdx" if fmt == "vhdx" else "vhd"
        out[name] = (qemu_convert(raw, d / f"{name}.{ext}", fmt, opts), fmt)
    return out


NAMES = ["raw", "vhdx-dynamic", "vhdx-fixed", "vhd-dynamic", "vhd-fixed"]


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(NAMES, 2)))
def test_same_content_across_formats(
    images: dict[str, tuple[Path, str]], a: str, b: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pa, fa = images[a]
    pb, fb = images[b]
    assert qemu_compare(pa, pb, fa, fb)[0] == 0  # the oracle agrees they are equal
    status, out = run(capsys, pa, pb)
    assert (status, out) == (0, "Images are identical.\n")
    assert compare_images(pa, pb) is None


@pytest.mark.parametrize("offset", [3 * MiB, 7 * MiB + 4097, SIZE - 1])
@pytest.mark.parametrize("fmt", ["vhdx", "vpc"])
def test_one_byte_changed(
    images: dict[str, tuple[Path, str]],
    tmp_path: Path,
    offset: int,
    fmt: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw = images["raw"][0]
    changed = Path(shutil.copy(raw, tmp_path / "changed.img"))
    with open(changed, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0x5A]))
    other = qemu_convert(
        changed,
        tmp_path / "changed.img.x",
        fmt,
        {"subformat": "dynamic", "force_size": True} if fmt == "vpc" else {"subformat": "dynamic"},
    )
    status, out = run(capsys, raw, other)
    assert status == 1
    assert mismatch_offset(out) == offset
    assert compare_images(raw, other) == offset
    q_status, q_out = qemu_compare(raw, other, "raw", fmt)
    assert q_status == 1
    assert mismatch_offset(q_out) == offset - offset % 512  # qemu: the sector's start


def test_data_where_the_other_is_unallocated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = tmp_path / "a.vhdx"
    b = tmp_path / "b.vhd"
    pyvhdx.create(a, 64 * MiB)
    qemu_create(b, "vpc", 64 * MiB)
    with pyvhdx.open(a, "r+") as img:
        img.write_at(40 * MiB + 123, b"\0\0\0x")  # the first three bytes stay zero
    status, out = run(capsys, a, b)
    assert status == 1
    assert mismatch_offset(out) == 40 * MiB + 126


def test_size_difference(
    images: dict[str, tuple[Path, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = images["raw"][0]
    longer = Path(shutil.copy(raw, tmp_path / "longer.img"))
    with open(longer, "r+b") as f:
        f.truncate(SIZE + MiB)  # the extra part reads as zeros
    status, out = run(capsys, raw, longer)
    assert (status, out) == (0, "Warning: Image size mismatch!\nImages are identical.\n")
    assert qemu_compare(raw, longer, "raw", "raw")[0] == 0
    status, out = run(capsys, "-s", raw, longer)
    assert (status, out) == (1, "Strict mode: Image size mismatch!\n")
    with open(longer, "r+b") as f:
        f.seek(SIZE + 1000)
        f.write(b"!")
    status, out = run(capsys, longer, raw)
    assert status == 1 and mismatch_offset(out) == SIZE + 1000
    assert mismatch_offset(qemu_compare(longer, raw, "raw", "raw")[1]) == SIZE + 512


def test_forced_formats(
    images: dict[str, tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A fixed VHD read as raw has its 512-byte footer as extra, non-zero content."""
    raw = images["raw"][0]
    vhd = images["vhd-fixed"][0]
    status, out = run(capsys, "-f", "raw", "-F", "vhd", raw, vhd)
    assert (status, out) == (0, "Images are identical.\n")
    status, out = run(capsys, "-f", "raw", "-F", "raw", raw, vhd)
    assert status == 1
    assert out.startswith("Warning: Image size mismatch!\n")
    assert mismatch_offset(out) == SIZE  # 'conectix'


def test_unallocated_in_both_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = tmp_path / "a.vhdx"
    b = tmp_path / "b.vhd"
    pyvhdx.create(a, 1024 * MiB, block_size=MiB)
    data = np.random.default_rng(3).bytes(3 * MiB)
    with pyvhdx.open(a, "r+") as img:
        img.write_at(500 * MiB, data)
    qemu_convert(a, b, "vpc", {"subformat": "dynamic", "force_size": True}, src_fmt="vhdx")
    counter = ReadCounter(monkeypatch)
    status, out = run(capsys, a, b)
    assert (status, out) == (0, "Images are identical.\n")
    # Only ranges stored in either image are read, never the empty rest: the VHDX
    # stores 500..503 MiB (1 MiB blocks), the VHD 500..504 MiB (2 MiB blocks). Both
    # are read where both store; 503..504 only in the VHD, checked to be zeros.
    assert counter.bytes == 3 * MiB + 4 * MiB


@pytest.mark.parametrize("maker", ["pyvhdx", "qemu"])
def test_two_empty_64_tib_images_read_nothing(
    tmp_path: Path, maker: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = tmp_path / "a.vhdx"
    b = tmp_path / "b.vhdx"
    pyvhdx.create(a, 64 * TiB)
    if maker == "qemu":
        qemu_create(b, "vhdx", "64T")
    else:
        pyvhdx.create(b, 64 * TiB, block_size=256 * MiB)
    counter = ReadCounter(monkeypatch)
    t = time.perf_counter()
    status, out = run(capsys, a, b)
    elapsed = time.perf_counter() - t
    assert (status, out) == (0, "Images are identical.\n")
    assert counter.calls == 0
    assert elapsed < 5, f"comparing two empty 64 TiB images took {elapsed:.2f} s"


def test_errors_exit_2(
    images: dict[str, tuple[Path, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = images["raw"][0]
    status = main(["compare", str(raw), str(tmp_path / "missing.vhdx")])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == "" and "missing.vhdx" in captured.err
    broken = Path(shutil.copy(images["vhdx-dynamic"][0], tmp_path / "broken.vhdx"))
    with open(broken, "r+b") as f:
        for off in (64 * 1024, 128 * 1024):
            f.seek(off + 100)
            f.write(b"\xff")
    assert main(["compare", str(raw), str(broken)]) == 2
    assert main(["compare", "-q", str(raw), str(raw)]) == 0
    assert capsys.readouterr().out == ""


def test_api_on_open_images(images: dict[str, tuple[Path, str]]) -> None:
    with pyvhdx.open(images["vhdx-dynamic"][0]) as a, pyvhdx.open(images["raw"][0]) as b:
        assert find_difference(a, b) is None
        assert find_difference(a, a, strict=True) is None
        # Strict: the raw file stores data where the dynamic VHDX has no block.
        first_gap = next(r.start for r in allocation_map(a) if r.kind is not RunKind.DATA)
        raw_data = [r for r in allocation_map(b) if r.kind is RunKind.DATA]
        diff = find_difference(a, b, strict=True)
        assert diff is not None and diff.reason == "allocation"
        assert diff.offset <= first_gap and raw_data
        assert not a.closed and not b.closed
