"""Crash injection for VHDX writes: a crash after any write, truncate or flush
leaves an image that opens, replays its log (pyvhdx in memory; qemu-img on a
copy), and holds each write either wholly old or wholly new."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import pytest

import pyvhdx
from tests.conftest import find_qemu_img
from tests.crashfile import CrashFile, SimulatedCrash

MiB = 1 << 20
SIZE = 12 * MiB


def scenario() -> list[tuple[int, bytes]]:
    """Disjoint writes: in place, into new blocks, across block boundaries."""
    rng = np.random.default_rng(42)
    spots = [
        (0, 4096),  # allocated block, in place
        (3 * MiB - 1000, 5000),  # allocates blocks 2 and 3 (across the boundary)
        (5 * MiB + 512, 512),  # allocates block 5
        (MiB + 100, 200),  # block 1 in place
        (7 * MiB, 3 * MiB),  # three new blocks in one write
        (11 * MiB + 4096, 8192),
    ]
    return [(off, rng.integers(1, 256, n, dtype=np.uint8).tobytes()) for off, n in spots]


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("crash") / "base.vhdx"
    pyvhdx.create(path, SIZE, block_size=MiB)
    old = bytearray(SIZE)
    rng = np.random.default_rng(1)
    with pyvhdx.open(path, "r+") as img:
        for off, n in ((0, 2 * MiB), (11 * MiB + 4096 - 100, 50)):  # blocks 0, 1 and 11
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            img.write_at(off, data)
            old[off : off + n] = data
    return path, bytes(old)


def run(path: Path, crash_at: int | None, lose: bool) -> int:
    f = CrashFile(path, crash_at, lose_unflushed=lose)
    try:
        img = pyvhdx.open(cast(BinaryIO, f), "r+")
        for off, data in scenario():
            img.write_at(off, data)
        img.close()
    except SimulatedCrash:
        pass
    finally:
        f.close()
    return f.steps


def check(path: Path, old: bytes, where: str) -> bytes:
    with pyvhdx.open(path, strict=True) as img:  # no defect at any crash point
        content = img.read_at(0, SIZE)
    new = bytearray(old)
    for off, data in scenario():
        got = content[off : off + len(data)]
        assert got in (old[off : off + len(data)], data), f"{where}: write at {off:#x} is torn"
        new[off : off + len(data)] = data
    # nothing outside the written ranges changed
    mask = np.ones(SIZE, dtype=bool)
    for off, data in scenario():
        mask[off : off + len(data)] = False
    diff = np.frombuffer(content, np.uint8)[mask] != np.frombuffer(old, np.uint8)[mask]
    assert not diff.any(), f"{where}: bytes outside the writes changed"
    return content


@pytest.mark.parametrize("lose", [False, True], ids=["keep-unflushed", "lose-unflushed"])
def test_crash_at_every_step(tmp_path: Path, base_image: tuple[Path, bytes], lose: bool) -> None:
    base, old = base_image
    full = tmp_path / "full.vhdx"
    shutil.copy(base, full)
    total = run(full, None, lose)
    final = check(full, old, "no crash")
    new = bytearray(old)
    for off, data in scenario():
        new[off : off + len(data)] = data
    assert final == bytes(new)
    assert total > 10
    qemu_img = find_qemu_img()
    for n in range(total + 1):
        path = tmp_path / f"c{n}.vhdx"
        shutil.copy(base, path)
        run(path, n, lose)
        ours = check(path, old, f"crash at step {n}")
        # qemu-img replays the log on a read-write open of a copy; then it must agree
        copy = tmp_path / "qemu.vhdx"
        shutil.copy(path, copy)
        r = subprocess.run(
            [qemu_img, "check", "-r", "all", str(copy)], capture_output=True, text=True
        )
        assert r.returncode == 0, f"step {n}: {r.stdout} {r.stderr}"
        raw = tmp_path / "qemu.raw"
        subprocess.run([qemu_img, "convert", "-O", "raw", str(copy), str(raw)], check=True)
        assert raw.read_bytes() == ours, f"step {n}: qemu-img reads other content"
        path.unlink()
