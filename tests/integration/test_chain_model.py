"""Hypothesis: random writes at every level of a differencing chain, each level
read back against its own bytearray model (issue 6)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyvhdx

MiB = 1 << 20
SIZE = 6 * MiB + 4096

writes = st.lists(
    st.tuples(st.integers(0, SIZE - 1), st.integers(1, 3 * MiB), st.integers(0, 255)),
    min_size=0,
    max_size=4,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from([("vhdx", 512), ("vhdx", 4096), ("vhd", 512)]),
    levels=st.lists(writes, min_size=2, max_size=4),
)
def test_chain_levels_match_their_models(
    fmt: tuple[str, int], levels: list[list[tuple[int, int, int]]]
) -> None:
    ext, sector = fmt
    with tempfile.TemporaryDirectory() as d:
        paths: list[Path] = []
        models: list[bytes] = []
        model = bytearray(SIZE)
        for level, level_writes in enumerate(levels):
            path = Path(d) / f"l{level}.{ext}"
            if level == 0:
                kw: dict[str, Any] = {"logical_sector_size": sector} if ext == "vhdx" else {}
                pyvhdx.create(path, SIZE, block_size=MiB, **kw)
            else:
                pyvhdx.create(path, parent=paths[-1])
            with pyvhdx.open(path, "r+") as img:
                for off, ln, pat in level_writes:
                    ln = min(ln, SIZE - off)
                    data = bytes([pat]) * ln
                    img.write_at(off, data)
                    model[off : off + ln] = data
            paths.append(path)
            models.append(bytes(model))
        for level, (path, want) in enumerate(zip(paths, models, strict=True)):
            with pyvhdx.open(path) as img:
                assert img.read_at(0, SIZE) == want, f"level {level}"
