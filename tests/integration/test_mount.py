"""pyvhdx mount (issue 17): an image or chain as the file DIR/disk, through FUSE.

Runs where this user can mount FUSE file systems (/dev/fuse, fusermount, the
``mount`` extra); elsewhere the tests skip and say why. The content of DIR/disk
is checked with sha256sum against ``pyvhdx hash``; a read-only mount refuses a
write; Ctrl-C unmounts.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.check import check_image

MiB = 1 << 20


def _can_mount() -> str | None:
    """Why FUSE cannot be used here, or None."""
    if importlib.util.find_spec("mfusepy") is None:
        return "the 'mount' extra (mfusepy) is not installed"
    if not os.path.exists("/dev/fuse") or (
        shutil.which("fusermount3") is None and (shutil.which("fusermount") is None)
    ):
        return "no /dev/fuse or fusermount"
    return None


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[object]:
    why = _can_mount()
    if why is not None:
        pytest.skip(f"FUSE: {why}")
    procs: list[subprocess.Popen[str]] = []

    def start(image: Path, *extra: str) -> Path:
        where = tmp_path / f"mnt{len(procs)}"
        where.mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyvhdx", "mount", str(image), str(where), *extra],
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 20
        while not (where / "disk").exists():
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                pytest.skip(f"FUSE cannot be mounted here: {err.strip()}")
            if time.monotonic() > deadline:
                pytest.fail("the mount did not appear")
            time.sleep(0.05)
        return where

    def interrupt(where: Path) -> int:
        """Ctrl-C the mount of ``where``; its exit status once it is gone."""
        proc = procs[int(where.name[3:])]
        proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
        assert not (where / "disk").exists()  # unmounted
        return code

    start.interrupt = interrupt  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _sha(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def _hash(image: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pyvhdx", "hash", str(image)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[0]


def test_a_chain_reads_as_pyvhdx_hash_says_and_refuses_writes(
    tmp_path: Path, mounted: object
) -> None:
    base, child = tmp_path / "base.vhdx", tmp_path / "child.avhdx"
    pyvhdx.create(base, 24 * MiB)
    with pyvhdx.open(base, "r+") as img:
        img.write_at(MiB, os.urandom(2 * MiB))
    pyvhdx.create(child, parent=base)
    with pyvhdx.open(child, "r+") as img:
        img.write_at(2 * MiB + 512, b"c" * 5000)
    before = _sha(child)
    where = mounted(child)  # type: ignore[operator]
    assert (where / "disk").stat().st_size == 24 * MiB
    assert _sha(where / "disk") == _hash(child)
    with pytest.raises(OSError), open(where / "disk", "r+b") as f:
        f.write(b"x")
    assert _sha(child) == before
    assert mounted.interrupt(where) == 0  # type: ignore[attr-defined]


def test_writable_mount_writes_through_and_unmounts_on_ctrl_c(
    tmp_path: Path, mounted: object
) -> None:
    image = tmp_path / "w.vhd"
    pyvhdx.create(image, 16 * MiB)
    where = mounted(image, "--writable")  # type: ignore[operator]
    with open(where / "disk", "r+b") as f:
        f.seek(3 * MiB)
        f.write(b"\x37" * 8192)
        f.flush()
        os.fsync(f.fileno())
    subprocess.run(
        ["fusermount3" if shutil.which("fusermount3") else "fusermount", "-u", str(where)],
        check=True,
    )
    deadline = time.monotonic() + 20
    while (where / "disk").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the mount process closes the image
    with pyvhdx.open(image) as img:
        assert img.read_at(3 * MiB, 8192) == b"\x37" * 8192
    assert check_image(image).ok
