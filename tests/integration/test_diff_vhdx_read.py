"""Reading differencing VHDX chains: every payload state, sector bitmaps (LSB
first, per chunk), parent resolution and identity, against a per-sector model
and libvhdi (pyvhdi with set_parent)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pyvhdx
from pyvhdx.constants import PayloadState
from pyvhdx.errors import ParentError
from tests.conftest import import_pyvhdi
from tests.vhdxbuild import build_vhdx

MiB = 1 << 20


def rand(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def make_chain(tmp_path: Path, sector: int = 512) -> tuple[Path, Path, bytes]:
    """A parent with data everywhere and a child using every state; returns the model."""
    size = 8 * MiB
    parent_data = rand(size, 1)
    parent = tmp_path / "parent.vhdx"
    playout = build_vhdx(parent, parent_data, logical_sector_size=sector)
    child_data = rand(size, 2)
    per_block = MiB // sector
    rng = np.random.default_rng(3)
    bitmaps = {
        3: [bool(b) for b in rng.integers(0, 2, per_block)],
        4: [i % 3 == 0 for i in range(per_block)],
        6: [i >= per_block - 5 for i in range(per_block)],
    }
    states = {
        0: PayloadState.NOT_PRESENT,
        1: PayloadState.FULLY_PRESENT,
        2: PayloadState.ZERO,
        3: PayloadState.PARTIALLY_PRESENT,
        4: PayloadState.PARTIALLY_PRESENT,
        5: PayloadState.UNMAPPED,
        6: PayloadState.PARTIALLY_PRESENT,
        7: PayloadState.NOT_PRESENT,
    }
    child = tmp_path / "child.avhdx"
    build_vhdx(
        child,
        child_data,
        disk_type="differencing",
        logical_sector_size=sector,
        states=states,
        sector_bitmaps=bitmaps,
        parent_locator={
            "parent_linkage": "{" + str(playout.data_write_guid) + "}",
            "relative_path": r".\parent.vhdx",
            "absolute_win32_path": r"C:\Hyper-V\parent.vhdx",
        },
    )
    model = bytearray(parent_data)
    for b, state in states.items():
        lo = b * MiB
        if state == PayloadState.FULLY_PRESENT:
            model[lo : lo + MiB] = child_data[lo : lo + MiB]
        elif state in (PayloadState.ZERO, PayloadState.UNMAPPED):
            model[lo : lo + MiB] = bytes(MiB)
        elif state == PayloadState.PARTIALLY_PRESENT:
            for i, bit in enumerate(bitmaps[b]):
                if bit:
                    s = lo + i * sector
                    model[s : s + sector] = child_data[s : s + sector]
    return parent, child, bytes(model)


@pytest.mark.parametrize("sector", [512, 4096])
def test_chain_reads_as_model_and_libvhdi(tmp_path: Path, sector: int) -> None:
    parent, child, model = make_chain(tmp_path, sector)
    with pyvhdx.open(child) as img:
        assert img.parent is not None and Path(img.parent.name) == parent.resolve()
        assert img.read_at(0, len(model)) == model
        # unaligned reads crossing block and bitmap-run boundaries (pitfall 8)
        rng = np.random.default_rng(9)
        for _ in range(300):
            off = int(rng.integers(0, len(model)))
            n = int(rng.integers(1, 3 * MiB))
            assert img.read_at(off, n) == model[off : off + n]
    pyvhdi = import_pyvhdi()
    p = pyvhdi.file()
    p.open(str(parent))
    c = pyvhdi.file()
    c.open(str(child))
    c.set_parent(p)
    # libvhdi sends ZERO/UNMAPPED blocks to the parent (SPEC-NOTES pitfall 7), so
    # compare it only where the child does not use those states.
    theirs = c.read_buffer_at_offset(len(model), 0)
    for b in (0, 1, 3, 4, 6, 7):
        assert theirs[b * MiB : (b + 1) * MiB] == model[b * MiB : (b + 1) * MiB], b


def test_explicit_parent_and_identity(tmp_path: Path) -> None:
    parent, child, model = make_chain(tmp_path)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    new_parent = moved / "renamed.vhdx"
    parent.rename(new_parent)
    with pytest.raises(ParentError) as err:
        pyvhdx.open(child)
    assert str(tmp_path / "parent.vhdx") in err.value.tried
    with pyvhdx.open(child, parent=new_parent) as img:
        assert img.read_at(0, len(model)) == model
    with pyvhdx.open(new_parent) as p, pyvhdx.open(child, parent=p) as img:
        assert img.read_at(0, len(model)) == model
        assert not p.closed
    # a parent with another DataWriteGuid is refused unless verification is off
    other = tmp_path / "other.vhdx"
    build_vhdx(other, bytes(8 * MiB))
    with pytest.raises(ParentError, match="identity"):
        pyvhdx.open(child, parent=other)
    with pyvhdx.open(child, parent=other, verify_parent=False) as img:
        assert img.read_at(0, MiB) == bytes(MiB)


def test_missing_parent_opt_in_reads_zeros(tmp_path: Path) -> None:
    parent, child, model = make_chain(tmp_path)
    parent.unlink()
    with pyvhdx.open(child, allow_missing_parent=True) as img:
        assert img.missing_parent
        assert any(p.structure == "parent" for p in img.info().problems)
        assert img.read_at(0, MiB) == bytes(MiB)  # block 0 is NOT_PRESENT
        assert img.read_at(MiB, MiB) == model[MiB : 2 * MiB]  # block 1 is in the child
    with (
        pyvhdx.open(child, resolve_parent=False) as img,
        pytest.raises(pyvhdx.UnsupportedFeatureError),
    ):
        img.read_at(0, 512)


def test_chain_cycle_and_self_parent(tmp_path: Path) -> None:
    a = tmp_path / "a.avhdx"
    b = tmp_path / "b.avhdx"
    guid_a, guid_b = uuid.uuid4(), uuid.uuid4()
    build_vhdx(
        a,
        bytes(4 * MiB),
        disk_type="differencing",
        parent_locator={"parent_linkage": f"{{{guid_b}}}", "relative_path": "b.avhdx"},
    )
    build_vhdx(
        b,
        bytes(4 * MiB),
        disk_type="differencing",
        parent_locator={"parent_linkage": f"{{{guid_a}}}", "relative_path": "a.avhdx"},
    )
    with pytest.raises(ParentError, match="loops"):
        pyvhdx.open(a, verify_parent=False)
    selfish = tmp_path / "self.avhdx"
    build_vhdx(
        selfish,
        bytes(4 * MiB),
        disk_type="differencing",
        parent_locator={"parent_linkage": f"{{{guid_a}}}", "relative_path": "self.avhdx"},
    )
    with pytest.raises(ParentError, match="loops"):
        pyvhdx.open(selfish, verify_parent=False)


def test_locators_never_leave_the_child_directory(tmp_path: Path) -> None:
    outside = tmp_path / "secret.vhdx"
    build_vhdx(outside, bytes(4 * MiB))
    inner = tmp_path / "case"
    inner.mkdir()
    child = inner / "c.avhdx"
    build_vhdx(
        child,
        bytes(4 * MiB),
        disk_type="differencing",
        parent_locator={
            "parent_linkage": f"{{{uuid.uuid4()}}}",
            "relative_path": r"..\secret.vhdx",
            "absolute_win32_path": str(outside),
        },
    )
    with pytest.raises(ParentError) as err:
        pyvhdx.open(child, verify_parent=False)
    assert all(Path(t).parent == inner.resolve() for t in err.value.tried)


def test_realworld_differencing_without_parent(
    realworld_image: Any, expected_images: list[dict[str, Any]]
) -> None:
    entry = next(
        e for e in expected_images if e["file"] == "dissect.hypervisor/differencing.avhdx.gz"
    )
    path = realworld_image(entry)
    with pytest.raises(ParentError) as err:
        pyvhdx.open(path)
    assert err.value.tried and "Generation 1_49C4BAF3" in err.value.tried[0]
