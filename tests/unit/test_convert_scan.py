"""Properties of convert's two skipping rules: the zero-grain scan and file holes.

Neither may ever drop a non-zero byte: whatever they leave out must read as
zeros. The zero scan is checked against a plain per-grain model; the hole scan
against the bytes of a sparse file written with hypothesis-chosen extents.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pyvhdx.source import data_spans as _file_data
from pyvhdx.transfer import ZERO_GRAIN, nonzero_runs


def _model(buf: bytes, n: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for pos in range(0, n, ZERO_GRAIN):
        end = min(n, pos + ZERO_GRAIN)
        if any(buf[pos:end]):
            if runs and runs[-1][1] == pos:
                runs[-1] = (runs[-1][0], end)
            else:
                runs.append((pos, end))
    return runs


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 5 * ZERO_GRAIN + 3),
    extra=st.integers(0, 64),
    marks=st.lists(st.tuples(st.integers(0, 6 * ZERO_GRAIN), st.integers(1, 255)), max_size=8),
)
def test_nonzero_runs_match_model(n: int, extra: int, marks: list[tuple[int, int]]) -> None:
    buf = bytearray(n + extra)  # bytes past n must not count
    for pos, value in marks:
        if pos < len(buf):
            buf[pos] = value
    runs = nonzero_runs(buf, n)
    assert runs == _model(bytes(buf), n)
    kept = bytearray(n)
    for a, z in runs:
        kept[a:z] = buf[a:z]
    assert kept == buf[:n]  # nothing non-zero is left out


@settings(max_examples=40, deadline=None)
@given(
    extents=st.lists(st.tuples(st.integers(0, 63), st.integers(1, 300_000)), max_size=6),
    window=st.tuples(st.integers(0, 70 * 65536), st.integers(0, 70 * 65536)),
)
def test_file_data_covers_every_written_byte(
    extents: list[tuple[int, int]], window: tuple[int, int]
) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sparse"
        size = 72 * 65536
        with open(path, "wb") as f:
            f.truncate(size)
            for slot, length in extents:
                f.seek(slot * 65536)
                f.write(b"\x5a" * min(length, size - slot * 65536))
        data = path.read_bytes()
        start, end = min(window), max(window)
        fd = os.open(path, os.O_RDONLY)
        try:
            found = list(_file_data(fd, start, end))
        finally:
            os.close(fd)
    covered = bytearray(end - start)
    last = start
    for a, z in found:
        assert last <= a < z <= end  # ordered, inside the window
        covered[a - start : z - start] = data[a:z]
        last = z
    assert covered == data[start:end]  # what was skipped reads as zeros
