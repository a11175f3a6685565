"""Session fixtures for the read benchmarks: one 256 MiB disk as raw, VHDX and VHD.

Built once per session in a temporary directory: a seeded raw disk with half of its
1 MiB runs random and half zero, converted by qemu-img to a dynamic VHDX (32 MiB
blocks) and a dynamic VHD (2 MiB blocks, force_size=on so that the VHD's size is
exactly the raw size).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import MiB, make_raw, qemu_convert, sha256_of_file

BENCH_SIZE = 256 * MiB
RANDOM_READ_COUNT = 2000
RANDOM_READ_SIZE = 4096


@dataclass(frozen=True)
class BenchImages:
    size: int
    raw: Path
    raw_sha256: str
    images: dict[str, Path]  # "vhdx" / "vhd" -> path


@pytest.fixture(scope="session")
def bench_images(tmp_path_factory: pytest.TempPathFactory) -> BenchImages:
    tmp = tmp_path_factory.mktemp("bench")
    raw = make_raw(tmp / "disk.raw", BENCH_SIZE, seed=20240601, pattern="half", run_size=MiB)
    vhdx = qemu_convert(
        raw, tmp / "disk.vhdx", "vhdx", {"subformat": "dynamic", "block_size": "32M"}
    )
    vhd = qemu_convert(raw, tmp / "disk.vhd", "vpc", {"subformat": "dynamic", "force_size": True})
    return BenchImages(BENCH_SIZE, raw, sha256_of_file(raw), {"vhdx": vhdx, "vhd": vhd})


@pytest.fixture(scope="session")
def random_offsets() -> list[int]:
    """2,000 seeded 4 KiB-aligned offsets inside the benchmark disk."""
    rng = np.random.default_rng(4096)
    blocks = rng.integers(0, BENCH_SIZE // RANDOM_READ_SIZE, size=RANDOM_READ_COUNT)
    return [int(b) * RANDOM_READ_SIZE for b in blocks]


@pytest.fixture(scope="session")
def pyvhdi() -> Any:
    """libvhdi-python, for comparison; the pyvhdi benchmarks skip without it."""
    return pytest.importorskip("pyvhdi", reason="libvhdi-python not installed")
