"""A full disk (ENOSPC) during resize and compact: the old state or the new one, and a
way forward (DESIGN.md "Writes").

Each operation runs, through the command line in process, on an image on a small
tmpfs filled by another file until only ``free`` bytes are left, for ``free`` from
0 up, a step at a time, until the operation fits: each step moves the failure one
write later. The images are copied sparse (zeros as holes, as ``cp --sparse``
leaves them), so the log's first entry and a block moved into a hole take new
space too. After a failure: one ``pyvhdx: error:`` line that says what the image
holds and what to do; the image reads as the disk of before or of after (content
hashed), ``check`` passes; and, with the space freed, the same command finishes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.check import check_image
from pyvhdx.cli import main
from tests.conftest import require

MiB = 1 << 20
_DISK = 16 * MiB  # the tmpfs


class FullDisk:
    """A mounted tmpfs that a filler file fills up to all but a chosen number of bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def put(self, image: Path) -> Path:
        """A sparse copy of ``image`` on the disk, the disk emptied first."""
        for entry in self.root.iterdir():
            entry.unlink()
        dst = self.root / image.name
        subprocess.run(["cp", "--sparse=always", str(image), str(dst)], check=True)
        return dst

    def fill(self, free: int) -> None:
        """Leave ``free`` bytes (whole pages) free."""
        st = os.statvfs(self.root)
        with open(self.filler, "wb") as f, contextlib.suppress(OSError):
            f.write(b"\xff" * max(0, st.f_bavail * st.f_frsize - free))

    def empty(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[FullDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={_DISK}", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        require("a tmpfs mount", f"mount failed (root and CAP_SYS_ADMIN needed): {r.stderr}")
    try:
        yield FullDisk(root)
    finally:
        subprocess.run(["umount", str(root)], check=True)


def _digest(path: Path) -> tuple[int, str]:
    with pyvhdx.open(path) as img:
        size = img.get_size()
        return size, hashlib.sha256(img.read_at(0, min(size, 32 * MiB))).hexdigest()


def _sparse(path: Path) -> None:
    subprocess.run(["fallocate", "--dig-holes", str(path)], check=True)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().err


def _until_it_fits(
    disk: FullDisk,
    capsys: pytest.CaptureFixture[str],
    pristine: Path,
    argv: list[str],
    step: int,
    forward: str,
) -> tuple[int, set[tuple[int, str]], set[int]]:
    """Run ``argv`` (``{}`` is the image) with 0, ``step``, 2 ``step``... bytes free until
    it succeeds; after each failure check the error line and the image, and that the
    command finishes once the disk has room. Returns the number of failures, the
    states (virtual size, hash) and the file lengths they left."""
    before = _digest(pristine)
    seen, lengths = set(), set()
    failures = 0
    for free in range(0, _DISK, step):
        image = disk.put(pristine)
        disk.fill(free)
        status, err = _run(capsys, *(str(image) if a == "{}" else a for a in argv))
        if status == 0:
            break
        failures += 1
        assert status == 1, (free, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pyvhdx: error: {image}: "), err
        assert "No space left on device" in err and forward in err, err
        seen.add(_digest(image))
        lengths.add(image.stat().st_size)
        report = check_image(image)
        assert report.ok, (free, [str(e) for e in report.errors])
        disk.empty()  # the way forward: with room, the same command finishes
        status, err = _run(capsys, *(str(image) if a == "{}" else a for a in argv))
        assert status == 0, (free, err)
        assert check_image(image).ok
        assert not list(disk.root.glob("*.pyvhdx-*"))  # no record of it left behind
    else:
        pytest.fail(f"{argv} does not fit in {_DISK} bytes")
    assert before in seen or not failures
    return failures, seen, lengths


def test_vhdx_grow_with_a_moved_bat(
    full_disk: FullDisk, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """1 MiB blocks: 256 GiB needs a BAT larger than its 1 MiB region; it moves."""
    pristine = tmp_path / "d.vhdx"
    pyvhdx.create(pristine, 20 * MiB + 512, disk_type="dynamic", block_size=MiB)
    with pyvhdx.open(pristine, "r+") as img:
        img.write_at(0, os.urandom(3 * MiB))
        img.write_at(20 * MiB, b"\xa5" * 512)  # the last sector: its block is stored
        header = img.handler.header  # type: ignore[attr-defined]
        log_offset, log_length = header["log_offset"], header["log_length"]
        last_block = img.handler.table.code(20)
    with open(pristine, "r+b") as f:  # an empty log (LogGuid is nil): a hole once sparse
        f.seek(log_offset)
        f.write(bytes(log_length))
        f.seek(last_block + 4096)  # stale bytes past the disk's end: the grow zeros them
        f.write(b"\x5a" * 4096)
    _sparse(pristine)
    old = _digest(pristine)
    with pyvhdx.open(pristine) as img:
        grown = img.read_at(0, img.get_size()) + bytes(32 * MiB - img.get_size())
    failures, seen, lengths = _until_it_fits(
        full_disk, capsys, pristine, ["resize", "{}", str(256 << 30)], 4096, "run the resize again"
    )
    # the resize that fitted: the old disk, then zeros (not the stale bytes)
    assert _digest(full_disk.root / pristine.name) == (256 << 30, hashlib.sha256(grown).hexdigest())
    assert failures >= 2  # the BAT copy, then the log entry (its region is a hole)
    assert seen == {old}  # before the log entry is whole, the disk is the old one
    # a failure before the log entry gives the new space back (after it, the file keeps
    # the new BAT region the entry may name: a write in place could still replay it)
    assert pristine.stat().st_size in lengths


def test_vhd_grow(full_disk: FullDisk, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The BAT grows past the footer: new BAT sectors, then the footer at the new end."""
    pristine = tmp_path / "d.vhd"
    pyvhdx.create(pristine, 4 * MiB + 512, disk_type="dynamic")
    with pyvhdx.open(pristine, "r+") as img:
        img.write_at(0, os.urandom(MiB))
    _sparse(pristine)
    old = _digest(pristine)
    failures, seen, _ = _until_it_fits(
        full_disk, capsys, pristine, ["resize", "{}", str(300 * MiB)], 4096, "run the resize again"
    )
    assert failures >= 1
    assert old in seen


@pytest.mark.parametrize("ext", [".vhdx", ".vhd"])
def test_compact_quick(
    full_disk: FullDisk, capsys: pytest.CaptureFixture[str], tmp_path: Path, ext: str
) -> None:
    """Blocks that read as zeros are released and the blocks furthest out move into
    their place, which is a hole in the host file: each copy takes space."""
    pristine = tmp_path / f"d{ext}"
    pyvhdx.create(pristine, 12 * MiB, disk_type="dynamic", block_size=MiB)
    with pyvhdx.open(pristine, "r+") as img:
        for i in range(12):
            img.write_at(i * MiB, bytes(MiB) if i % 3 == 0 else bytes([i]) * MiB)
    _sparse(pristine)
    old = _digest(pristine)
    failures, seen, _ = _until_it_fits(
        full_disk, capsys, pristine, ["compact", "--mode", "quick", "{}"], MiB, "--mode zero"
    )
    assert failures >= 2
    assert seen == {old}  # compacting never changes what the disk reads
    # the way forward the message names: --mode zero fits on the full disk
    image = full_disk.put(pristine)
    full_disk.fill(0)
    status, err = _run(capsys, "compact", "--mode", "zero", str(image))
    assert status == 0, err
    assert _digest(image) == old and check_image(image).ok
