"""Crash injection for VHD writes (issue 4: "data, bitmap, BAT entry and the moved
footer are written in the order that keeps the image valid after a crash at any
point").

A write scenario runs on a :class:`~tests.crashfile.CrashFile` that fails at its
N-th write, truncate or flush, for every N; with ``lose_unflushed`` the crash also
undoes every write since the last flush. After each crash:

* pyvhdx opens the image read-only with ``strict=True`` and reports no problem
  (the footer at the end of the file is valid at every step, not only the copy
  at offset 0);
* qemu opens it and reads what pyvhdx reads (``qemu-img convert -f vpc -O raw``;
  qemu 7.2 has no ``check`` for VHD, but its open refuses a bad footer checksum
  and a block reaching past the end of file);
* every sector of every write holds its old or its new content, writes that are
  all-or-nothing by design (see ``VHDFile.write_at``) hold wholly one or the
  other, and nothing outside the writes changed;
* pyvhdx can reopen it read-write and finish the scenario, ending with the new
  content.

A last test kills a child process that writes with SIGKILL at random moments.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pyvhdx
from tests.conftest import find_qemu_img
from tests.crashfile import CrashFile, SimulatedCrash

pytestmark = pytest.mark.oracle

KiB = 1 << 10
BLOCK = 64 * KiB
SIZE = 130 * BLOCK + 1024  # 131 blocks, the last one partial; BAT spans two sectors
SECTOR = 512


def scenario() -> list[tuple[int, bytes, bool]]:
    """``(offset, data, atomic)``, disjoint: in place, into new blocks, across block
    boundaries and BAT sectors. ``atomic``: all-or-nothing by design (in place in
    one block, or only new blocks whose BAT entries share one BAT sector)."""
    rng = np.random.default_rng(42)
    spots = [
        (0, 4096, True),  # block 0, allocated in the base image: in place
        (3 * BLOCK - 1000, 5000, True),  # allocates blocks 2 and 3
        (5 * BLOCK + 512, 512, True),  # allocates block 5
        (BLOCK + 100, 200, True),  # block 1 in place
        (7 * BLOCK, 3 * BLOCK, True),  # three new blocks in one write
        (4 * BLOCK - 100, 300, False),  # block 3 in place + new block 4
        (128 * BLOCK - 300, 600, False),  # new blocks 127 and 128: two BAT sectors
        (SIZE - 600, 600, True),  # the partial last block
        (5 * BLOCK + 4096, 8192, True),  # in place in a block this scenario made
    ]
    return [(off, rng.integers(1, 256, n, dtype=np.uint8).tobytes(), a) for off, n, a in spots]


def new_content(old: bytes) -> bytes:
    new = bytearray(old)
    for off, data, _ in scenario():
        new[off : off + len(data)] = data
    return bytes(new)


@pytest.fixture(scope="module", params=["dynamic", "fixed"])
def base_image(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("vhdcrash") / f"base-{request.param}.vhd"
    block = BLOCK if request.param == "dynamic" else None
    pyvhdx.create(path, SIZE, disk_type=request.param, block_size=block)
    old = bytearray(SIZE)
    rng = np.random.default_rng(1)
    with pyvhdx.open(path, "r+") as img:
        for off, n in ((0, 2 * BLOCK), (11 * BLOCK + 4096 - 100, 50)):  # blocks 0, 1, 11
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            img.write_at(off, data)
            old[off : off + n] = data
    return path, bytes(old)


def run(path: Path, crash_at: int | None, lose: bool) -> int:
    f = CrashFile(path, crash_at, lose_unflushed=lose)
    try:
        img = pyvhdx.open(f, "r+")  # type: ignore[arg-type]  # a RawIOBase, not a BinaryIO
        for off, data, _ in scenario():
            img.write_at(off, data)
        img.close()
    except SimulatedCrash:
        pass
    finally:
        f.close()
    return f.steps


def check(path: Path, old: bytes, where: str) -> bytes:
    with pyvhdx.open(path, strict=True) as img:
        assert not img.info().problems, f"{where}: {img.info().problems}"
        content = img.read_at(0, SIZE)
    got = np.frombuffer(content, np.uint8)
    before = np.frombuffer(old, np.uint8)
    touched = np.zeros(SIZE, dtype=bool)
    for off, data, atomic in scenario():
        n = len(data)
        now = got[off : off + n]
        is_old = now == before[off : off + n]
        is_new = now == np.frombuffer(data, np.uint8)
        if atomic:
            assert is_old.all() or is_new.all(), f"{where}: write at {off:#x} is torn"
        # per sector: every 512-byte sector (of the disk) is wholly old or wholly new
        first, last = off // SECTOR, (off + n - 1) // SECTOR
        for s in range(first, last + 1):
            lo, hi = max(off, s * SECTOR) - off, min(off + n, (s + 1) * SECTOR) - off
            assert is_old[lo:hi].all() or is_new[lo:hi].all(), (
                f"{where}: sector {s} of the write at {off:#x} is torn"
            )
        touched[off : off + n] = True
    assert (got[~touched] == before[~touched]).all(), f"{where}: bytes outside the writes changed"
    return content


def qemu_agrees(path: Path, content: bytes, tmp_path: Path, where: str) -> None:
    """qemu opens the image (``convert`` opens as ``info`` does) and reads ``content``."""
    raw = tmp_path / "qemu.raw"
    r = subprocess.run(
        [find_qemu_img(), "convert", "-f", "vpc", "-O", "raw", str(path), str(raw)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"{where}: qemu-img convert: {r.stderr}"
    assert raw.read_bytes() == content, f"{where}: qemu-img reads other content"


@pytest.mark.parametrize("lose", [False, True], ids=["keep-unflushed", "lose-unflushed"])
def test_crash_at_every_step(tmp_path: Path, base_image: tuple[Path, bytes], lose: bool) -> None:
    base, old = base_image
    full = tmp_path / "full.vhd"
    shutil.copy(base, full)
    total = run(full, None, lose)
    assert check(full, old, "no crash") == new_content(old)
    dynamic = base.read_bytes()[:8] == b"conectix"
    assert total > (40 if dynamic else 8), total
    for n in range(total + 1):
        path = tmp_path / f"c{n}.vhd"
        shutil.copy(base, path)
        steps = run(path, n, lose)
        assert steps == min(n, total)
        where = f"crash at step {n} of {total}"
        content = check(path, old, where)
        qemu_agrees(path, content, tmp_path, where)
        # the image stays writable: finish the scenario
        with pyvhdx.open(path, "r+") as img:
            for off, data, _ in scenario():
                img.write_at(off, data)
        with pyvhdx.open(path, strict=True) as img:
            assert img.read_at(0, SIZE) == new_content(old), f"{where}: recovery"
        path.unlink()


CHILD = r"""
import sys
import numpy as np
import pyvhdx

path, size, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(7)
with pyvhdx.open(path, "r+") as img:
    print("ready", flush=True)
    for i in range(10_000):
        block_no = int(rng.integers(0, size // block))
        img.write_at(block_no * block, bytes([i % 251 + 1]) * block)
"""


def test_sigkill_while_writing(tmp_path: Path) -> None:
    """A writer killed with SIGKILL at random moments (it writes whole blocks of
    one byte value each): the image opens everywhere, no sector is torn."""
    size = 64 * BLOCK
    path = tmp_path / "k.vhd"
    pyvhdx.create(path, size, block_size=BLOCK)
    rng = np.random.default_rng(3)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for round_ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(size), str(BLOCK)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.01, 0.25)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        where = f"kill {round_}"
        with pyvhdx.open(path, strict=True) as img:
            assert not img.info().problems, where
            content = img.read_at(0, size)
        # A killed pwrite may stop at a page boundary (Linux checks for a fatal
        # signal between pages), so a block may hold the old and the new value,
        # but never a torn sector.
        sectors = np.frombuffer(content, np.uint8).reshape(-1, SECTOR)
        assert (sectors == sectors[:, :1]).all(), f"{where}: a torn sector"
        for b, values in enumerate(sectors[:, 0].reshape(-1, BLOCK // SECTOR)):
            assert len(set(values.tolist())) <= 2, f"{where}: block {b} holds three writes"
        qemu_agrees(path, content, tmp_path, where)
