"""Write-side benchmarks: image creation time, and sequential write throughput
against writing a raw file of the same size in the same run (issue 4).

Run with ``python -m pytest benchmarks -k write`` (or ``-k create``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pyvhdx

MiB = 1 << 20
WRITE_SIZE = 128 * MiB
CHUNK = MiB
CASES = [("vhdx", "dynamic"), ("vhdx", "fixed"), ("vhd", "dynamic"), ("vhd", "fixed")]


@pytest.fixture(scope="module")
def payload() -> bytes:
    return np.random.default_rng(11).integers(0, 256, CHUNK, dtype=np.uint8).tobytes()


@pytest.mark.benchmark(group="create-64GiB")
@pytest.mark.parametrize(("fmt", "disk_type"), CASES)
def test_create(benchmark: Any, tmp_path: Path, fmt: str, disk_type: str) -> None:
    path = tmp_path / f"c.{fmt}"
    size = 64 << 30

    def run() -> None:
        pyvhdx.create(path, size, format=fmt, disk_type=disk_type, overwrite=True)

    benchmark.pedantic(run, rounds=5, iterations=1)
    with pyvhdx.open(path) as img:
        assert img.virtual_size == size


def _sequential_write(write: Any) -> None:
    for off in range(0, WRITE_SIZE, CHUNK):
        write(off)


@pytest.mark.benchmark(group="seq-write-1MiB")
def test_write_raw(benchmark: Any, tmp_path: Path, payload: bytes) -> None:
    """The reference: the same bytes into a plain file."""
    path = tmp_path / "w.raw"

    def setup() -> tuple[tuple[int], dict[str, Any]]:
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        os.ftruncate(fd, WRITE_SIZE)
        return (fd,), {}

    def run(fd: int) -> None:
        _sequential_write(lambda off: os.pwrite(fd, payload, off))
        os.fsync(fd)
        os.close(fd)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)


@pytest.mark.benchmark(group="seq-write-1MiB")
@pytest.mark.parametrize(("fmt", "disk_type"), CASES)
def test_write_pyvhdx(
    benchmark: Any, tmp_path: Path, payload: bytes, fmt: str, disk_type: str
) -> None:
    """Crash-consistent writes (every allocation logged and flushed), then close."""
    path = tmp_path / f"w.{fmt}"

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        pyvhdx.create(path, WRITE_SIZE, format=fmt, disk_type=disk_type, overwrite=True)
        return (pyvhdx.open(path, "r+"),), {}

    def run(img: Any) -> None:
        _sequential_write(lambda off: img.write_at(off, payload))
        img.close()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    with pyvhdx.open(path) as img:
        assert img.read_at(WRITE_SIZE - CHUNK, CHUNK) == payload
