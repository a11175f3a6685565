"""Compact (issue 15, Optimize-VHD): zero, quick and full modes on dynamic VHDX and VHD.

Oracles: qemu-img reads the same content after compaction (``convert -O raw``;
``check`` for VHDX), libvhdi too; for ``--mode full`` an ext4 file system made by
mkfs.ext4 and filled and emptied by debugfs: ``e2fsck -fn`` passes afterwards and
the file kept reads the same through ``debugfs dump``. Crash safety: compaction
runs on a :class:`~tests.crashfile.CrashFile` that fails at every step in turn.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import shutil
import subprocess
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyvhdx
from pyvhdx.check import check_image
from pyvhdx.compact import compact_image
from pyvhdx.errors import UnsupportedFeatureError
from pyvhdx.packing import plan_moves
from tests import resizekill
from tests.conftest import import_pyvhdi, qemu_to_raw, require
from tests.crashfile import CrashFile, SimulatedCrash

MiB = 1 << 20


def _holey(tmp_path: Path, ext: str, size: int = 96 * MiB, **kw: int) -> tuple[Path, bytes]:
    """A dynamic image with data in every other 2 MiB and zeros written over some of it."""
    path = tmp_path / f"holey{ext}"
    pyvhdx.create(path, size, **kw)  # type: ignore[arg-type]
    rng = random.Random(5)
    with pyvhdx.open(path, "r+") as img:
        for off in range(0, size, 4 * MiB):
            img.write_at(off, rng.randbytes(2 * MiB))
        for off in range(0, size * 3 // 4, 8 * MiB):
            img.write_at(off, bytes(2 * MiB))  # allocated, now all zeros
        return path, img.read_at(0, size)


def _readers_agree(path: Path, expected: bytes, tmp_path: Path) -> None:
    with pyvhdx.open(path) as img:
        assert img.read_at(0, img.get_size()) == expected
    fmt = "vhdx" if path.suffix == ".vhdx" else "vpc"
    assert qemu_to_raw(path, tmp_path / "q.raw", fmt).read_bytes() == expected
    h = import_pyvhdi().file()
    h.open(str(path))
    try:
        assert h.read_buffer_at_offset(len(expected), 0) == expected
    finally:
        h.close()
    if fmt == "vhdx":
        r = subprocess.run(["qemu-img", "check", "-f", "vhdx", str(path)], capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr
    report = check_image(path)
    assert report.ok, [str(e) for e in report.errors]


@pytest.mark.oracle
@pytest.mark.parametrize("ext", [".vhdx", ".vhd"])
@pytest.mark.parametrize("mode", ["zero", "quick"])
def test_compact_keeps_the_content_and_shrinks_the_file(
    tmp_path: Path, ext: str, mode: str
) -> None:
    kw = {"block_size": MiB} if ext == ".vhdx" else {}
    path, expected = _holey(tmp_path, ext, **kw)
    before = path.stat().st_size
    used_before = path.stat().st_blocks * 512
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    dry = compact_image(path, mode=mode, dry_run=True)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # a dry run writes nothing
    result = compact_image(path, mode=mode)
    assert result.blocks_released > 0
    assert (result.file_size_after, result.blocks_released, result.bytes_punched) == (
        dry.file_size_after,
        dry.blocks_released,
        dry.bytes_punched,
    )
    assert result.file_size_after == path.stat().st_size <= before
    assert result.bytes_reclaimed > 0
    # the host file system got the space back: the file's allocated bytes shrank
    assert path.stat().st_blocks * 512 <= used_before - result.bytes_reclaimed + MiB
    if mode == "quick":  # every hole filled: the file holds the stored data and metadata
        assert result.blocks_moved > 0
        with pyvhdx.open(path) as img:
            stored = sum(e.length for e in img.extents() if e.data)
        assert path.stat().st_size < stored + 8 * MiB
    _readers_agree(path, expected, tmp_path)


def _ext4_image(tmp_path: Path, ext: str, **kw: int) -> tuple[Path, Path, int]:
    """A 512 MiB ext4 disk: 300 MiB of files written then deleted, 30 MiB kept."""
    for tool in ("mkfs.ext4", "debugfs", "e2fsck"):
        if shutil.which(tool) is None:
            require(tool, "e2fsprogs builds and checks the ext4 of the full-mode test")
    raw = tmp_path / "fs.raw"
    with open(raw, "wb") as f:
        f.truncate(512 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(raw)], check=True)
    rng = np.random.default_rng(9)
    files = {"gone1": 150 * MiB, "keep": 30 * MiB, "gone2": 150 * MiB}
    for name, size in files.items():
        (tmp_path / name).write_bytes(rng.bytes(size))
        subprocess.run(
            ["debugfs", "-w", "-R", f"write {tmp_path / name} {name}", str(raw)],
            check=True,
            capture_output=True,
        )
    for name in ("gone1", "gone2"):
        subprocess.run(
            ["debugfs", "-w", "-R", f"rm {name}", str(raw)], check=True, capture_output=True
        )
    path = tmp_path / f"fs{ext}"
    pyvhdx.convert(raw, path, **kw)  # type: ignore[arg-type]
    raw.unlink()
    return path, tmp_path / "keep", 300 * MiB


@pytest.mark.oracle
@pytest.mark.parametrize(("ext", "block_size"), [(".vhdx", MiB), (".vhd", None)])
def test_full_mode_gives_back_deleted_ext4_files(
    tmp_path: Path, ext: str, block_size: int | None
) -> None:
    kw = {} if block_size is None else {"block_size": block_size}
    path, kept, deleted = _ext4_image(tmp_path, ext, **kw)
    before = path.stat().st_size
    quick = compact_image(path, mode="quick", dry_run=True)
    result = compact_image(path, mode="full")
    assert result.blocks_released > quick.blocks_released  # the file system's free blocks
    reclaimed = before - path.stat().st_size
    assert reclaimed >= 0.8 * deleted, f"{reclaimed / deleted:.1%} of the deleted bytes"
    fmt = "vhdx" if ext == ".vhdx" else "vpc"
    raw = qemu_to_raw(path, tmp_path / "after.raw", fmt)
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    out = tmp_path / "keep.out"
    subprocess.run(["debugfs", "-R", f"dump keep {out}", str(raw)], check=True, capture_output=True)
    assert out.read_bytes() == kept.read_bytes()
    assert check_image(path).ok


@pytest.mark.oracle
@pytest.mark.parametrize(("ext", "block_size"), [(".vhdx", MiB), (".vhd", None)])
def test_full_mode_gives_back_ntfs_free_space(
    tmp_path: Path, ext: str, block_size: int | None
) -> None:
    """An NTFS volume (mkntfs -Q over 256 MiB of old random data, as deleted files
    leave it) holding one 40 MiB file: its free clusters are given back; ntfsfix
    finds the volume sound and ntfscat reads the file the same."""
    for tool in ("mkntfs", "ntfscp", "ntfscat", "ntfsfix"):
        if shutil.which(tool) is None:
            require(tool, "ntfs-3g builds and checks the NTFS of the full-mode test")
    raw = tmp_path / "ntfs.raw"
    rng = np.random.default_rng(11)
    raw.write_bytes(rng.bytes(256 * MiB))
    subprocess.run(["mkntfs", "-Q", "-F", "-q", str(raw)], check=True, capture_output=True)
    kept = tmp_path / "keep.bin"
    kept.write_bytes(rng.bytes(40 * MiB))
    subprocess.run(["ntfscp", "-q", str(raw), str(kept), "keep.bin"], check=True)
    kw = {} if block_size is None else {"block_size": block_size}
    path = pyvhdx.convert(raw, tmp_path / f"ntfs{ext}", **kw).destination  # type: ignore[arg-type]
    before = path.stat().st_size
    assert compact_image(path, mode="quick").blocks_released == 0  # the garbage is not zeros
    compact_image(path, mode="full")
    assert path.stat().st_size < before - 180 * MiB  # 256 MiB, 40 MiB used, NTFS metadata
    fmt = "vhdx" if ext == ".vhdx" else "vpc"
    after = qemu_to_raw(path, tmp_path / "after.raw", fmt)
    fix = subprocess.run(["ntfsfix", "-n", str(after)], capture_output=True, text=True)
    assert fix.returncode == 0, fix.stdout + fix.stderr
    cat = subprocess.run(["ntfscat", str(after), "keep.bin"], capture_output=True, check=True)
    assert cat.stdout == kept.read_bytes()
    assert check_image(path).ok


@pytest.mark.parametrize("ext", [".vhdx", ".vhd"])
def test_fixed_and_differencing_are_refused(tmp_path: Path, ext: str) -> None:
    fixed = tmp_path / f"fixed{ext}"
    pyvhdx.create(fixed, 8 * MiB, disk_type="fixed")
    with pytest.raises(UnsupportedFeatureError, match="only dynamic"):
        compact_image(fixed)
    base = tmp_path / f"base{ext}"
    pyvhdx.create(base, 8 * MiB)
    child = tmp_path / f"child{ext}"
    pyvhdx.create(child, 8 * MiB, parent=base)
    with pytest.raises(UnsupportedFeatureError, match="only dynamic"):
        compact_image(child)


@pytest.mark.parametrize("ext", [".vhdx", ".vhd"])
def test_crash_at_every_step_keeps_the_content(tmp_path: Path, ext: str) -> None:
    kw = {"block_size": MiB} if ext == ".vhdx" else {"block_size": 512 * 1024}
    pristine, expected = _holey(tmp_path, ext, size=24 * MiB, **kw)
    step = 0
    while True:
        path = tmp_path / f"crash{ext}"
        shutil.copyfile(pristine, path)
        f = CrashFile(path, step, lose_unflushed=step % 2 == 1)
        try:
            compact_image(cast(BinaryIO, f), mode="quick")
            done = True
        except SimulatedCrash:
            done = False
        finally:
            f.close()
        with pyvhdx.open(path) as img:
            assert img.read_at(0, len(expected)) == expected, step
        report = check_image(path)
        assert report.ok, (step, [str(e) for e in report.errors])
        step += 1
        if done:
            break
    assert step > 10
    assert path.stat().st_size < pristine.stat().st_size


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 80), st.integers(1, 3), st.booleans()), max_size=30),
    st.sampled_from([1, 2, 4]),
)
def test_plan_moves_packs_without_overlap(items: list[tuple[int, int, bool]], length: int) -> None:
    """Property: after the moves no two ranges (blocks, fixed structures) share a byte,
    every move goes down to an aligned place, and the end covers everything."""
    fixed: list[tuple[int, int]] = []
    blocks: list[int] = []
    taken: list[tuple[int, int]] = []
    for slot, n, is_fixed in items:
        at, ln = slot * 4, (n if is_fixed else length) * 4
        if any(at < b and a < at + ln for a, b in taken):
            continue
        taken.append((at, at + ln))
        if is_fixed:
            fixed.append((at, ln))
        else:
            blocks.append(at)
    arr = np.array(blocks, np.int64)
    moves, end = plan_moves(fixed, arr, length * 4, 4)
    new = arr.copy()
    for i, where in moves:
        assert where < arr[i] and where % 4 == 0
        new[i] = where
    spans = sorted([(s, s + n) for s, n in fixed] + [(int(b), int(b) + length * 4) for b in new])
    for (_a, a_end), (b_start, _b) in itertools.pairwise(spans):
        assert a_end <= b_start
    assert end >= max([b for _, b in spans], default=0)
    if moves:  # a moved block was the one furthest out of those that could move
        assert int(new.max()) <= int(arr.max())


@pytest.mark.parametrize("case", resizekill.COMPACT_CASES, ids=lambda c: c.name)
def test_sigkill_through_the_cli_keeps_the_content(tmp_path: Path, case: resizekill.Case) -> None:
    """A bounded run of tools/resize_kill.py: one SIGKILL at a random point of
    ``pyvhdx compact --mode quick``; the disk reads the same, checks clean, and
    compacting again finishes (the campaign runs 30 points a case)."""
    outcomes = resizekill.campaign(case, tmp_path, points=1, seed=3)
    assert all(o.ok for o in outcomes), [(o.delay, o.state, o.detail) for o in outcomes]
