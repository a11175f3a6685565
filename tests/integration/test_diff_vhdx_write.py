"""Writes into a differencing VHDX: blocks become FULLY_PRESENT with the parent's
data copied under the write; the parent is never touched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

import pyvhdx
from tests.conftest import import_pyvhdi
from tests.integration.test_diff_vhdx_read import make_chain

MiB = 1 << 20


def test_writes_into_child_against_model_and_libvhdi(tmp_path: Path) -> None:
    parent, child, model_bytes = make_chain(tmp_path)
    model = bytearray(model_bytes)
    parent_hash = hashlib.sha256(parent.read_bytes()).hexdigest()
    rng = np.random.default_rng(17)
    writes = [
        (0, 4096),
        (3 * MiB + 1000, 700),
        (4 * MiB - 512, 2 * MiB),
        (2 * MiB + 5, 10),
        (5 * MiB, 512),
        (6 * MiB + 100, 100),
        (7 * MiB + MiB - 4096, 4096),
    ]
    with pyvhdx.open(child, "r+") as img:
        for off, n in writes:
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            img.write_at(off, data)
            model[off : off + n] = data
        img.write_at(7 * MiB, bytes(512))  # zeros over parent data are stored
        model[7 * MiB : 7 * MiB + 512] = bytes(512)
        assert img.read_at(0, len(model)) == bytes(model)
    assert hashlib.sha256(parent.read_bytes()).hexdigest() == parent_hash
    with pyvhdx.open(child) as img:
        assert img.read_at(0, len(model)) == bytes(model)
        summary = img.info().allocation
        assert summary is not None and summary.partial_blocks == 0  # all written blocks full
    pyvhdi = import_pyvhdi()
    p = pyvhdi.file()
    p.open(str(parent))
    c = pyvhdi.file()
    c.open(str(child))
    c.set_parent(p)
    theirs = c.read_buffer_at_offset(len(model), 0)
    # every block was written, so no ZERO/UNMAPPED state remains for libvhdi to misread
    assert theirs == bytes(model)
