"""Every buffer kind and every read shape gives the same bytes through both read paths.

``DiskImage.readinto_at`` and ``read_at`` have per-image closures for small
reads (one table lookup, or none for the block read last; one ``preadv`` or
``pread``, or a zero fill) and a general path for everything else; the stream's
``read`` is ``read_at``.
Oracle: the raw disk qemu-img converted the images from. The property draws the
offset, the length and the buffer type; the buffer types include those the fast
path must hand over to the general path (non-contiguous, multi-byte items,
read-only).
"""

from __future__ import annotations

import array
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import pyvhdx
from tests.conftest import MiB, make_raw, qemu_convert

pytestmark = pytest.mark.oracle

SIZE = 16 * MiB + 4096

KINDS: dict[str, tuple[str, dict[str, object]]] = {
    "vhdx-dynamic-1M": ("vhdx", {"subformat": "dynamic", "block_size": "1M"}),
    "vhdx-fixed": ("vhdx", {"subformat": "fixed", "block_state_zero": False, "block_size": "1M"}),
    "vhd-dynamic": ("vpc", {"subformat": "dynamic", "force_size": True}),
    "vhd-fixed": ("vpc", {"subformat": "fixed", "force_size": True}),
}


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("read-paths")
    # 2 MiB runs, half zeros: whole blocks come out allocated and unallocated
    raw = make_raw(tmp / "disk.raw", SIZE, seed=11, pattern="half", run_size=2 * MiB)
    images = {}
    for kind, (fmt, opts) in KINDS.items():
        ext = "vhdx" if fmt == "vhdx" else "vhd"
        images[kind] = qemu_convert(raw, tmp / f"{kind}.{ext}", fmt, opts)
    return raw.read_bytes(), images


def _buffers(n: int) -> dict[str, Callable[[], tuple[Any, Callable[[], bytes]]]]:
    """Buffer factories: each returns (buffer to read into, how to get its bytes)."""

    def ba() -> tuple[Any, Callable[[], bytes]]:
        b = bytearray(n)
        return b, lambda: bytes(b)

    def mv() -> tuple[Any, Callable[[], bytes]]:
        b = bytearray(n)
        return memoryview(b), lambda: bytes(b)

    def mv_inner() -> tuple[Any, Callable[[], bytes]]:
        b = bytearray(n + 7)
        return memoryview(b)[3 : 3 + n], lambda: bytes(b[3 : 3 + n])

    def mv_signed() -> tuple[Any, Callable[[], bytes]]:
        b = bytearray(n)
        return memoryview(b).cast("b"), lambda: bytes(b)

    def np_array() -> tuple[Any, Callable[[], bytes]]:
        a = np.zeros(n, dtype=np.uint8)
        return a, lambda: a.tobytes()

    def arr() -> tuple[Any, Callable[[], bytes]]:
        a = array.array("B", bytes(n))
        return a, lambda: a.tobytes()

    out = {"bytearray": ba, "memoryview": mv, "memoryview-slice": mv_inner}
    out.update({"memoryview-signed": mv_signed, "numpy": np_array, "array": arr})
    if n % 4 == 0:

        def mv_words() -> tuple[Any, Callable[[], bytes]]:
            b = bytearray(n)
            return memoryview(b).cast("I"), lambda: bytes(b)

        out["memoryview-u32"] = mv_words
    return out


@st.composite
def reads(draw: st.DrawFn) -> tuple[int, int, str]:
    sector = 512
    if draw(st.booleans()):  # small aligned reads: the fast path
        length = draw(st.sampled_from([512, 4096, 8192, 65536]))
        offset = draw(st.integers(0, (SIZE - length) // sector)) * sector
    else:  # anything, including reads across blocks and past the end
        offset = draw(st.integers(0, SIZE + 4096))
        length = draw(st.integers(1, 3 * MiB))
    return offset, length, draw(st.sampled_from(sorted(_buffers(4))))


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(read=reads())
def test_reads_match_raw(
    disks: tuple[bytes, dict[str, Path]], kind: str, read: tuple[int, int, str]
) -> None:
    raw, images = disks
    offset, length, bufkind = read
    factories = _buffers(length)
    if bufkind not in factories:
        bufkind = "bytearray"
    expected = raw[offset : offset + length]
    with pyvhdx.open(images[kind]) as img:
        buf, contents = factories[bufkind]()
        got = img.readinto_at(offset, buf)
        assert got == len(expected)
        assert contents()[:got] == expected
        assert img.read_at(offset, length) == expected
        stream = img.stream()
        stream.seek(offset)
        assert stream.read(length) == expected
        assert stream.tell() == offset + len(expected)


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    # no explain phase: tracing every line of the read path over the shrunk example
    # took minutes, so a failure never got reported
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)
@given(
    reads=st.lists(
        st.tuples(
            st.integers(0, SIZE // MiB),  # few blocks: the next read is often a neighbour's
            st.integers(0, MiB // 512 - 1),
            st.sampled_from([512, 4096, 65536]),
        ),
        min_size=2,
        max_size=12,
    ),
    mode=st.sampled_from(["r", "r+"]),
)
def test_read_sequences_match_raw(
    disks: tuple[bytes, dict[str, Path]], kind: str, reads: list[tuple[int, int, int]], mode: str
) -> None:
    """Reads in turn on one image, both methods mixed: the block read last (kept
    by read-only images) never serves another block's bytes."""
    raw, images = disks
    with pyvhdx.open(images[kind], mode) as img:
        for i, (mib, sector, length) in enumerate(reads):
            offset = min(mib * MiB + sector * 512, SIZE)
            expected = raw[offset : offset + length]
            if i % 2:
                got = img.read_at(offset, length)
            else:
                buf = bytearray(length)
                assert img.readinto_at(offset, buf) == len(expected)
                got = bytes(buf[: len(expected)])
            # a bool, not the bytes: pytest's diff of two 64 KiB values takes minutes
            same = got == expected
            assert same, f"read {i} ({'read_at' if i % 2 else 'readinto_at'}) at {offset:#x}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_read_only_buffer_is_refused(disks: tuple[bytes, dict[str, Path]], kind: str) -> None:
    _, images = disks
    with pyvhdx.open(images[kind]) as img:
        kinds = {e.kind for e in img.extents()}
        assert len(kinds) > 1 or kind.endswith("fixed")
        for offset in range(0, SIZE, 256 * 1024):  # data, zero and unallocated ranges
            for buf in (memoryview(bytes(4096)), bytes(4096)):
                with pytest.raises(pyvhdx.InvalidArgumentError, match="read-only"):
                    img.readinto_at(offset, buf)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bound_reader_fails_after_close(disks: tuple[bytes, dict[str, Path]], kind: str) -> None:
    """A ``readinto_at`` taken before close must not read a recycled descriptor."""
    raw, images = disks
    img = pyvhdx.open(images[kind])
    read = img.readinto_at
    read_bytes = img.read_at
    buf = bytearray(4096)
    assert read(0, buf) == 4096 and bytes(buf) == raw[:4096]
    assert read_bytes(0, 4096) == raw[:4096]
    stream = img.stream()
    assert stream.read(4096) == raw[:4096]
    stream.close()
    with pytest.raises(ValueError, match="closed"):
        stream.read(4096)
    img.close()
    other = os.open(images[kind], os.O_RDONLY)  # likely reuses the closed descriptor number
    try:
        with pytest.raises(ValueError, match="closed"):
            read(0, buf)
        with pytest.raises(ValueError, match="closed"):
            read_bytes(0, 4096)
    finally:
        os.close(other)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_subclass_readinto_at_is_what_read_at_reads_through(
    disks: tuple[bytes, dict[str, Path]], kind: str
) -> None:
    """The fast ``read_at`` (and the large read's direct ``pread``) are the general
    method's shortcuts: a subclass that reads otherwise (here: decrypts, modelled as
    inverting every byte) gets its own ``readinto_at`` under ``read_at`` too."""
    raw, images = disks

    class Inverted(pyvhdx.DiskImage):
        def readinto_at(self, offset: int, buffer: Any) -> int:
            n = super().readinto_at(offset, buffer)
            view = memoryview(buffer).cast("B")
            view[:n] = bytes(255 - b for b in view[:n])
            return n

    with pyvhdx.open(images[kind]) as base:
        img = Inverted(base._h)  # a second image on the same handler, closed with it
        for offset, length in ((0, 4096), (4 * MiB, 3 * MiB), (SIZE - 512, 512)):
            want = bytes(255 - b for b in raw[offset : offset + length])
            assert img.read_at(offset, length) == want, (offset, length)
