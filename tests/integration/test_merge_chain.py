"""Merge a chain down to an ancestor (issue 15, Merge-VHD -DestinationPath).

The ancestor ends up holding what the child showed; every disk between them is
gone; qemu-img and libvhdi (reading the standalone result) agree, and an interrupted
chain merge resumes when called again.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.errors import InvalidArgumentError
from pyvhdx.merge import MergeResult, merge_chain
from tests.conftest import import_pyvhdi, qemu_to_raw

MiB = 1 << 20
merge_mod = importlib.import_module("pyvhdx.merge")  # pyvhdx.merge is the function


def _chain(folder: Path, ext: str, depth: int) -> tuple[list[Path], bytes]:
    """base <- d1 <- ... <- d{depth}; each level writes its own 1 MiB pieces."""
    rng = random.Random(depth)
    paths = [folder / f"base{ext}"]
    pyvhdx.create(paths[0], 24 * MiB)
    for level in range(depth + 1):
        if level:
            paths.append(folder / f"d{level}{ext}")
            pyvhdx.create(paths[-1], 24 * MiB, parent=paths[-2])
        with pyvhdx.open(paths[-1], "r+") as img:
            for k in range(4):
                img.write_at((level * 5 + k * 3) % 23 * MiB, rng.randbytes(MiB))
    with pyvhdx.open(paths[-1]) as img:
        return paths, img.read_at(0, 24 * MiB)


@pytest.mark.oracle
@pytest.mark.parametrize("ext", [".vhdx", ".vhd"])
def test_chain_merges_into_the_ancestor(tmp_path: Path, ext: str) -> None:
    paths, content = _chain(tmp_path, ext, 3)
    results = merge_chain(paths[-1], paths[0])
    assert [r.child.name for r in results] == [p.name for p in paths[1:]]
    assert all(not p.exists() for p in paths[1:])
    with pyvhdx.open(paths[0]) as img:
        assert img.read_at(0, 24 * MiB) == content
    fmt = "vhdx" if ext == ".vhdx" else "vpc"
    assert qemu_to_raw(paths[0], tmp_path / "base.raw", fmt).read_bytes() == content
    h = import_pyvhdi().file()
    h.open(str(paths[0]))
    try:
        assert h.read_buffer_at_offset(len(content), 0) == content
    finally:
        h.close()


@pytest.mark.parametrize("ext", [".vhdx", ".vhd"])
def test_chain_merge_into_a_middle_disk(tmp_path: Path, ext: str) -> None:
    paths, content = _chain(tmp_path, ext, 3)
    merge_chain(paths[-1], paths[1])
    assert paths[0].exists() and paths[1].exists()
    assert not paths[2].exists() and not paths[3].exists()
    with pyvhdx.open(paths[1]) as img:  # still a child of base, now showing it all
        assert img.read_at(0, 24 * MiB) == content


def test_interrupted_chain_merge_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, content = _chain(tmp_path, ".vhdx", 3)
    real: Callable[..., MergeResult] = merge_mod.merge_image
    calls: list[object] = []

    def stop_after_one(*args: object, **kw: object) -> MergeResult:
        if calls:
            raise KeyboardInterrupt
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(merge_mod, "merge_image", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        merge_chain(paths[-1], paths[0])
    monkeypatch.setattr(merge_mod, "merge_image", real)
    with pyvhdx.open(paths[-1]) as img:  # a whole chain, one disk shorter
        assert img.read_at(0, 24 * MiB) == content
    assert not paths[1].exists()
    merge_chain(paths[-1], paths[0])
    with pyvhdx.open(paths[0]) as img:
        assert img.read_at(0, 24 * MiB) == content


def test_not_an_ancestor_is_refused(tmp_path: Path) -> None:
    paths, _ = _chain(tmp_path, ".vhdx", 1)
    other = tmp_path / "other.vhdx"
    pyvhdx.create(other, 24 * MiB)
    with pytest.raises(InvalidArgumentError, match="not an ancestor"):
        merge_chain(paths[-1], other)
    assert all(p.exists() for p in paths)
