"""Ctrl-C at every write: the operation stops there, the image is closed as usual
(``with`` blocks unwind, writers close), and what is left must open, pass ``check``
and read as before or after.

Unlike :mod:`tests.crashfile` (a crash: nothing is written after the point), the
writes that closing makes still happen here, so this finds a close that makes a
half-done change final (a VHDX writer clearing LogGuid over a logged change whose
in-place writes were stopped was one).
"""

from __future__ import annotations

import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.check import check_image
from pyvhdx.compact import compact_image
from pyvhdx.resize import resize_image
from pyvhdx.source import FileSource

MiB = 1 << 20


def _image(tmp_path: Path, ext: str) -> tuple[Path, bytes]:
    path = tmp_path / f"pristine{ext}"
    pyvhdx.create(path, 24 * MiB, block_size=MiB if ext == ".vhdx" else 512 * 1024)
    rng = random.Random(8)
    with pyvhdx.open(path, "r+") as img:
        for off in range(0, 24 * MiB, 2 * MiB):
            img.write_at(off, rng.randbytes(MiB) if off % (8 * MiB) else bytes(MiB))
        return path, img.read_at(0, 24 * MiB)


def _write_more(path: Path) -> None:
    with pyvhdx.open(path, "r+") as img:
        img.write_at(MiB + 4096, b"\x77" * (3 * MiB))  # new blocks and a partial one


class _InterruptAt:
    """A ``FileSource.pwrite`` that raises KeyboardInterrupt instead of its write ``n``
    (counted from 0), once, and writes everything else."""

    def __init__(self, n: int, real: Callable[..., None]) -> None:
        self.n, self.real, self.seen = n, real, 0

    def __get__(self, source: FileSource, owner: type) -> Callable[[bytes, int], None]:
        def pwrite(data: bytes, offset: int) -> None:
            self.seen += 1
            if self.seen == self.n + 1:
                raise KeyboardInterrupt
            self.real(source, data, offset)

        return pwrite


OPERATIONS: dict[str, Callable[[Path], object]] = {
    "write": _write_more,
    "grow": lambda p: resize_image(p, (3 << 40) if p.suffix == ".vhdx" else 64 << 30),
    "shrink": lambda p: resize_image(p, 23 * MiB, shrink=True),  # the data ends at 23 MiB
    "compact": lambda p: compact_image(p, mode="quick"),
}


CASES = [(n, e) for n in OPERATIONS for e in (".vhdx", ".vhd") if (n, e) != ("shrink", ".vhd")]


@pytest.mark.parametrize(("name", "ext"), CASES)
def test_ctrl_c_at_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, ext: str
) -> None:
    pristine, before = _image(tmp_path, ext)
    after_path = tmp_path / f"after{ext}"
    shutil.copyfile(pristine, after_path)
    OPERATIONS[name](after_path)
    with pyvhdx.open(after_path) as img:
        after = img.read_at(0, min(img.get_size(), len(before)))
    real = FileSource.pwrite
    n = 0
    while True:
        path = tmp_path / f"work{ext}"
        shutil.copyfile(pristine, path)

        monkeypatch.setattr(FileSource, "pwrite", _InterruptAt(n, real))
        try:
            OPERATIONS[name](path)
            done = True
        except KeyboardInterrupt:
            done = False
        finally:
            monkeypatch.setattr(FileSource, "pwrite", real)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pyvhdx.PyvhdxWarning)
            with pyvhdx.open(path) as img:
                now = img.read_at(0, min(img.get_size(), len(before)))
        if name == "write":  # a write is not atomic: each sector old or new
            assert all(
                now[i : i + 512] in (before[i : i + 512], after[i : i + 512])
                for i in range(0, len(now), 512)
            ), (name, n)
        else:
            assert now in (before[: len(now)], after), (name, n)
        report = check_image(path)
        assert report.ok, (name, n, [str(e) for e in report.errors])
        n += 1
        if done:
            break
    assert n > 3
