"""VHDX written by both sides: qemu-io writes into pyvhdx images and pyvhdx writes
into qemu-img images, each read back by the other; and a pyvhdx writer killed
with SIGKILL at random moments leaves an image both sides open."""

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

MiB = 1 << 20
SIZE = 24 * MiB + 3 * 512
SECTOR = 512


def qemu_io(path: Path, writes: list[tuple[int, int, int]]) -> None:
    qemu_io_bin = str(Path(find_qemu_img()).with_name("qemu-io"))
    cmds: list[str] = []
    for off, ln, pat in writes:
        cmds += ["-c", f"write -P {pat:#x} {off} {ln}"]
    subprocess.run([qemu_io_bin, "-f", "vhdx", *cmds, str(path)], check=True, capture_output=True)


def qemu_raw(path: Path, tmp: Path) -> bytes:
    out = tmp / "q.raw"
    subprocess.run(
        [find_qemu_img(), "convert", "-f", "vhdx", "-O", "raw", str(path), str(out)], check=True
    )
    return out.read_bytes()


WRITES_A = [
    (0, 4096, 0x11),
    (3 * MiB - 512, 1024, 0x22),
    (9 * MiB, 2 * MiB + 512, 0x33),
    (SIZE - 512, 512, 0x44),
]
WRITES_B = [(512, 512, 0x55), (9 * MiB + MiB, 4096, 0x66), (20 * MiB + 7 * 512, 3 * 512, 0x77)]


def apply(model: bytearray, writes: list[tuple[int, int, int]]) -> None:
    for off, ln, pat in writes:
        model[off : off + ln] = bytes([pat]) * ln


@pytest.mark.parametrize("disk_type", ["dynamic", "fixed"])
def test_qemu_writes_into_pyvhdx_image(tmp_path: Path, disk_type: str) -> None:
    path = tmp_path / "p.vhdx"
    pyvhdx.create(path, SIZE, disk_type=disk_type, block_size=MiB)
    model = bytearray(SIZE)
    with pyvhdx.open(path, "r+") as img:
        for off, ln, pat in WRITES_A:
            img.write_at(off, bytes([pat]) * ln)
    apply(model, WRITES_A)
    qemu_io(path, WRITES_B)
    apply(model, WRITES_B)
    with pyvhdx.open(path, strict=True) as img:
        assert img.read_at(0, SIZE) == bytes(model)
    # and pyvhdx writes again on top of qemu's allocations
    with pyvhdx.open(path, "r+") as img:
        img.write_at(9 * MiB + 100, b"\x99" * 300)
    model[9 * MiB + 100 : 9 * MiB + 400] = b"\x99" * 300
    subprocess.run([find_qemu_img(), "check", str(path)], check=True, capture_output=True)
    assert qemu_raw(path, tmp_path) == bytes(model)


@pytest.mark.parametrize(
    "options",
    [
        "subformat=dynamic,block_size=1M",
        "subformat=fixed,block_state_zero=on,block_size=2M",
        "subformat=fixed,block_state_zero=off,block_size=1M",
    ],
)
def test_pyvhdx_writes_into_qemu_image(tmp_path: Path, options: str) -> None:
    path = tmp_path / "q.vhdx"
    subprocess.run(
        [find_qemu_img(), "create", "-q", "-f", "vhdx", "-o", options, str(path), str(SIZE)],
        check=True,
    )
    qemu_io(path, WRITES_B)
    model = bytearray(SIZE)
    apply(model, WRITES_B)
    with pyvhdx.open(path, "r+") as img:
        for off, ln, pat in WRITES_A:
            img.write_at(off, bytes([pat]) * ln)
    apply(model, WRITES_A)
    subprocess.run([find_qemu_img(), "check", str(path)], check=True, capture_output=True)
    assert qemu_raw(path, tmp_path) == bytes(model)
    with pyvhdx.open(path) as img:
        assert img.read_at(0, SIZE) == bytes(model)


CHILD = r"""
import sys
import numpy as np
import pyvhdx

path, size, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(int(sys.argv[4]))
with pyvhdx.open(path, "r+") as img:
    print("ready", flush=True)
    for i in range(100_000):
        n = int(rng.integers(0, size // block))
        img.write_at(n * block, bytes([i % 251 + 1]) * block)
"""


def test_sigkill_while_writing(tmp_path: Path) -> None:
    """Whole 64 KiB writes of one byte value each, killed at random moments: the
    image opens (replaying the log if one is pending), no sector is torn, and
    qemu-img replays a copy to the same content."""
    block = 64 << 10
    size = 16 * MiB
    path = tmp_path / "k.vhdx"
    pyvhdx.create(path, size, block_size=MiB)
    rng = np.random.default_rng(5)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for round_ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(size), str(block), str(round_)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.02, 0.3)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        where = f"kill {round_}"
        with pyvhdx.open(path, strict=True) as img:
            content = img.read_at(0, size)
        sectors = np.frombuffer(content, np.uint8).reshape(-1, SECTOR)
        assert (sectors == sectors[:, :1]).all(), f"{where}: a torn sector"
        copy = tmp_path / "copy.vhdx"
        shutil.copy(path, copy)
        r = subprocess.run(
            [find_qemu_img(), "check", "-r", "all", str(copy)], capture_output=True, text=True
        )
        assert r.returncode == 0, f"{where}: {r.stdout} {r.stderr}"
        assert qemu_raw(copy, tmp_path) == content, where
