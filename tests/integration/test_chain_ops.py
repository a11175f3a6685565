"""Chain operations: flatten (convert), merge, and the chain's allocation map."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.constants import RunKind
from tests.integration.test_diff_vhdx_read import make_chain

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_flatten_and_merge_give_the_same_content(tmp_path: Path) -> None:
    parent, child, model = make_chain(tmp_path)
    flat = tmp_path / "flat.vhdx"
    pyvhdx.convert(child, flat)
    with pyvhdx.open(flat) as img:
        assert img.disk_type.value == "dynamic" and img.parent is None
        assert sha(img.read_at(0, img.virtual_size)) == sha(model)
    pyvhdx.merge(child)
    assert not child.exists()
    with pyvhdx.open(parent) as img:
        assert sha(img.read_at(0, img.virtual_size)) == sha(model)


def test_merge_keep_child_and_refuse_non_differencing(tmp_path: Path) -> None:
    parent, child, model = make_chain(tmp_path)
    pyvhdx.merge(child, keep_child=True)
    assert child.exists()
    with pytest.raises(pyvhdx.ParentError):  # the parent's DataWriteGuid moved on
        pyvhdx.open(child)
    with pyvhdx.open(child, verify_parent=False) as img:
        assert sha(img.read_at(0, img.virtual_size)) == sha(model)
    with pytest.raises(pyvhdx.InvalidArgumentError):
        pyvhdx.merge(parent)


def test_chain_extents_name_the_holder(tmp_path: Path) -> None:
    parent, child, _ = make_chain(tmp_path)
    with pyvhdx.open(child) as img:
        runs = list(img.chain_extents())
    assert sum(r.length for r in runs) == 8 * MiB
    by_block = {}
    for r in runs:
        if r.length >= MiB and r.start % MiB == 0:
            by_block[r.start // MiB] = (r.depth, r.kind)
    assert by_block[0] == (1, RunKind.DATA)  # NOT_PRESENT: the parent holds it
    assert by_block[1] == (0, RunKind.DATA)  # FULLY_PRESENT in the child
    assert by_block[2] == (0, RunKind.ZERO)  # ZERO in the child hides the parent
    holders = {r.image for r in runs}
    assert holders == {str(child.resolve()), str(parent.resolve())} or holders == {
        str(child),
        str(parent.resolve()),
    }
