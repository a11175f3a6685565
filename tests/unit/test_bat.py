"""The numpy block table against a naive per-sector model (MS-VHDX 2.5)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvhdx.bat import (
    CODE_PARENT,
    CODE_UNMAPPED,
    CODE_ZERO,
    LOAD_CHUNK_SHIFT,
    BlockTable,
    chunk_ratio,
    decode_vhdx_payload_entries,
    vhdx_bat_entry_count,
    vhdx_payload_index,
    vhdx_sector_bitmap_index,
)
from pyvhdx.constants import PayloadState, RunKind

SECTOR = 512


def naive_map(codes: list[int], block_size: int, offset: int, length: int) -> list[tuple[int, int]]:
    """(kind, file offset or -1) for every sector of the range."""
    out = []
    for pos in range(offset, offset + length, SECTOR):
        code = codes[pos // block_size]
        if code >= 0:
            out.append((int(RunKind.DATA), code + pos % block_size))
        else:
            kind = {
                CODE_UNMAPPED: RunKind.UNMAPPED,
                CODE_ZERO: RunKind.ZERO,
                CODE_PARENT: RunKind.PARENT,
            }[code]
            out.append((int(kind), -1))
    return out


def expand(runs: object, offset: int, length: int) -> list[tuple[int, int]]:
    out = []
    pos = offset
    for s, ln, k, f in zip(runs.start, runs.length, runs.kind, runs.file_offset, strict=True):  # type: ignore[attr-defined]
        assert s == pos and ln > 0
        for p in range(int(s), int(s + ln), SECTOR):
            out.append((int(k), int(f) + (p - int(s)) if k == RunKind.DATA else -1))
        pos += int(ln)
    assert pos == offset + length
    return out


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[int], int, int, int, int]:
    shift = draw(st.integers(12, 16))
    block_size = 1 << shift
    nblocks = draw(st.integers(1, 40))
    virtual = nblocks * block_size - draw(st.integers(0, block_size // SECTOR - 1)) * SECTOR
    kinds = st.one_of(
        st.sampled_from([CODE_UNMAPPED, CODE_ZERO, CODE_PARENT]),
        st.integers(0, 64).map(lambda m: m * block_size),  # data, often contiguous
    )
    codes = draw(st.lists(kinds, min_size=nblocks, max_size=nblocks))
    start = draw(st.integers(0, virtual // SECTOR - 1)) * SECTOR
    length = draw(st.integers(1, (virtual - start) // SECTOR)) * SECTOR
    return codes, block_size, virtual, start, length


@settings(max_examples=300)
@given(tables())
def test_map_equals_naive_model(t: tuple[list[int], int, int, int, int]) -> None:
    codes, block_size, virtual, start, length = t
    arr = np.array(codes, dtype=np.int64)
    table = BlockTable(virtual, block_size, lambda first, count: arr[first : first + count])
    runs = table.map(start, length)
    assert expand(runs, start, length) == naive_map(codes, block_size, start, length)
    # coalesced: no two neighbours could have been merged
    for i in range(1, len(runs)):
        same = runs.kind[i] == runs.kind[i - 1]
        contiguous = runs.file_offset[i] == runs.file_offset[i - 1] + runs.length[i - 1]
        assert not (same and (runs.kind[i] != RunKind.DATA or contiguous))


def test_lazy_loading_reads_only_needed_chunks() -> None:
    calls: list[tuple[int, int]] = []

    def loader(first: int, count: int) -> np.ndarray:
        calls.append((first, count))
        return np.full(count, CODE_UNMAPPED, dtype=np.int64)

    table = BlockTable(1 << 46, 1 << 25, loader)  # 64 TiB, 32 MiB blocks: 2 Mi blocks
    assert calls == []
    assert table.code(0) == CODE_UNMAPPED
    assert table.code(table.block_count - 1) == CODE_UNMAPPED
    n = 1 << LOAD_CHUNK_SHIFT
    assert calls == [(0, n), (table.block_count - n, n)]


@given(st.sampled_from([512, 4096]), st.integers(20, 28), st.integers(1, 10**7))
def test_bat_geometry_matches_spec_formulas(sector: int, shift: int, blocks: int) -> None:
    block_size = 1 << shift
    ratio = chunk_ratio(sector, block_size)
    assert ratio == (2**23 * sector) // block_size
    virtual = blocks * block_size
    total = vhdx_bat_entry_count(virtual, block_size, sector, False)
    assert total == blocks + (blocks - 1) // ratio
    # the last payload block's index is the last entry when no SB entry follows it
    assert vhdx_payload_index(blocks - 1, ratio) == total - 1
    diff_total = vhdx_bat_entry_count(virtual, block_size, sector, True)
    chunks = -(-blocks // ratio)
    assert diff_total == chunks * (ratio + 1)
    assert vhdx_sector_bitmap_index(chunks - 1, ratio) == diff_total - 1


def test_sector_bitmap_entries_interleave() -> None:
    """Chunk ratio 4 (e.g. 4096-byte blocks would be too small; use the formula directly)."""
    ratio = 4
    payload = [vhdx_payload_index(b, ratio) for b in range(10)]
    sb = [vhdx_sector_bitmap_index(c, ratio) for c in range(2)]
    assert payload == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]
    assert sb == [4, 9]


def test_decode_states() -> None:
    mib = 1 << 20
    states = [
        PayloadState.NOT_PRESENT,
        PayloadState.UNDEFINED,
        PayloadState.ZERO,
        PayloadState.UNMAPPED,
        PayloadState.UNMAPPED_V095,
        PayloadState.FULLY_PRESENT,
        PayloadState.PARTIALLY_PRESENT,
    ]
    raw = np.array(
        [s | ((10 + i) * mib if s >= 6 else 0) for i, s in enumerate(states)], dtype=np.uint64
    )
    kw = dict(
        first_block=0,
        bat_offset=0,
        block_size=mib,
        virtual_size=7 * mib,
        file_size=100 * mib,
        min_data_offset=mib,
        ratio=4096,
    )
    plain = decode_vhdx_payload_entries(raw, differencing=False, **kw)  # type: ignore[arg-type]
    assert plain.tolist() == [
        CODE_UNMAPPED,
        CODE_UNMAPPED,
        CODE_ZERO,
        CODE_UNMAPPED,
        CODE_UNMAPPED,
        15 * mib,
        16 * mib,
    ]
    diff = decode_vhdx_payload_entries(raw, differencing=True, **kw)  # type: ignore[arg-type]
    # NOT_PRESENT goes to the parent; ZERO and UNMAPPED never do (SPEC-NOTES pitfall 7)
    assert diff.tolist()[:5] == [CODE_PARENT, CODE_PARENT, CODE_ZERO, CODE_ZERO, CODE_ZERO]


@settings(max_examples=300, deadline=None)
@given(
    ranges=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)), max_size=12),
    spans=st.lists(st.tuples(st.integers(0, 240), st.integers(1, 30)), max_size=3),
)
def test_shared_space_matches_brute_force(
    ranges: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> None:
    """shared_space finds a clash exactly when one exists, and the one it names is real."""
    from pyvhdx.bat import shared_space

    starts = np.array([a for a, _ in ranges], dtype=np.int64)
    ends = np.array([a + n for a, n in ranges], dtype=np.int64)
    named = [(a, n, f"span{k}") for k, (a, n) in enumerate(spans)]

    def hits(i: int, a: int, n: int) -> bool:
        return bool(starts[i] < a + n and ends[i] > a)

    def overlap(i: int, j: int) -> bool:
        nonempty = ends[i] > starts[i] and ends[j] > starts[j]
        return bool(nonempty and starts[i] < ends[j] and starts[j] < ends[i])

    any_span = any(hits(i, a, n) for i in range(len(ranges)) for a, n, _ in named)
    any_pair = any(overlap(i, j) for i in range(len(ranges)) for j in range(i))
    found = shared_space(starts, ends, named)
    assert (found is not None) == (any_span or any_pair)
    if found is not None:
        i, mate, what = found
        if mate is None:
            k = int(what.split()[1][4:])
            assert hits(i, *named[k][:2])
        else:
            assert not any_span and i != mate and overlap(i, mate)
