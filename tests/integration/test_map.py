"""``pyvhdx map``: the allocation map, against ``qemu-img map --output=json``.

Oracles:

* VHD (qemu ``vpc``, dynamic and fixed) and raw: qemu reports block status with
  file offsets, so the data coverage (every range with ``data: true`` and its
  ``offset``) must equal qemu's; for VHD the whole entry list is equal.
* VHDX: qemu 7.2's vhdx driver has no block-status callback, so ``qemu-img map``
  calls the whole disk data without offsets. The oracle is then qemu's content
  (``qemu-img convert -O raw``) plus a BAT decoded here with ``struct``: each
  data run's bytes, read from the VHDX *file* at the run's offset, equal qemu's
  content at the run's start; every other range is zeros in qemu's content; and
  the data runs are exactly the FULLY_PRESENT blocks of the BAT.

The empty 64 TiB VHDX maps in a second or so as one run: the map is streamed
window by window. A 64 TiB VHDX whose BAT cycles through NOT_PRESENT, ZERO and
UNMAPPED (2 Mi blocks, each its own run before they were merged) maps to the
entries ``qemu-img map`` gives for a qcow2 with the same data ranges, in the
time of an empty one: runs are merged with numpy, not block by block.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyvhdx
from pyvhdx.bat import (
    CODE_PARENT,
    CODE_UNMAPPED,
    CODE_ZERO,
    BlockTable,
    chunk_ratio,
    merge_zero_runs,
    vhdx_payload_index,
)
from pyvhdx.cli import main
from pyvhdx.compare import allocation_map
from pyvhdx.constants import PayloadState, RunKind
from pyvhdx.vhdx import VHDXFile
from tests.conftest import MiB, TiB, find_qemu_img, qemu_convert, qemu_create, qemu_to_raw

pytestmark = pytest.mark.oracle

SIZE = 12 * MiB
BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le


def our_map(
    capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]
) -> list[dict[str, Any]]:
    status = main(["map", "--json", *[os.fspath(a) for a in args]])
    out = capsys.readouterr().out
    assert status == 0
    result: list[dict[str, Any]] = json.loads(out)
    return result


def qemu_map(path: Path, fmt: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [find_qemu_img(), "map", "-f", fmt, "--output=json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: list[dict[str, Any]] = json.loads(out)
    return result


def data_coverage(entries: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(start, length, offset) of the data ranges, adjacent contiguous ones merged."""
    out: list[list[int]] = []
    for e in entries:
        if not e["data"]:
            continue
        if out and out[-1][0] + out[-1][1] == e["start"] and out[-1][2] + out[-1][1] == e["offset"]:
            out[-1][1] += e["length"]
        else:
            out.append([e["start"], e["length"], e["offset"]])
    return [(s, n, o) for s, n, o in out]


def assert_tiles(entries: list[dict[str, Any]], start: int, end: int) -> None:
    """The entries cover [start, end) exactly, in order, without gaps."""
    pos = start
    for e in entries:
        assert e["start"] == pos and e["length"] > 0
        pos += e["length"]
    assert pos == end


#: Data runs of the test disk (the rest are holes): with 2 MiB VHD blocks, blocks
#: 3 and 4 are empty; with 1 MiB VHDX blocks, 0, 2, 3, 5 and 11 hold data. Runs
#: start and end inside blocks too.
DATA_RUNS = [
    (0, MiB),
    (2 * MiB + 512 * 1024, 512 * 1024 + 4096),
    (5 * MiB + 4096, 8192),
    (11 * MiB, MiB),
]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 MiB, sparse: random data in :data:`DATA_RUNS`, holes elsewhere."""
    path = tmp_path_factory.mktemp("map") / "src.img"
    rng = np.random.default_rng(11)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for start, length in DATA_RUNS:
            f.seek(start)
            f.write(rng.bytes(length))
    return path


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_vhd_map_equals_qemu(
    raw: Path, tmp_path: Path, subformat: str, capsys: pytest.CaptureFixture[str]
) -> None:
    vhd = qemu_convert(raw, tmp_path / "d.vhd", "vpc", {"subformat": subformat, "force_size": True})
    ours = our_map(capsys, vhd)
    theirs = qemu_map(vhd, "vpc")
    assert data_coverage(ours) == data_coverage(theirs)
    assert ours == theirs
    assert any(e["data"] for e in ours) and any(e["zero"] for e in ours)


def test_raw_map_data_coverage_equals_qemu(raw: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ours = our_map(capsys, raw)
    theirs = qemu_map(raw, "raw")
    assert data_coverage(ours) == data_coverage(theirs)
    assert_tiles(ours, 0, SIZE)
    # qemu also gives an offset for holes; we give one for data only.
    assert [{k: v for k, v in e.items() if k != "offset"} for e in theirs] == [
        {k: v for k, v in e.items() if k != "offset"} for e in ours
    ]


def naive_vhdx_blocks(path: Path) -> dict[int, int]:
    """Block -> file offset of FULLY_PRESENT payload blocks, from the raw BAT bytes.

    Region table 1 is parsed here; the images of this module have 1 MiB blocks
    and 512-byte sectors (chunk ratio 4096) and fewer blocks than that, so the
    first entries of the BAT are payload entries 0, 1, 2...
    """
    data = path.read_bytes()
    count = struct.unpack_from("<I", data, 192 * 1024 + 8)[0]
    for i in range(count):
        at = 192 * 1024 + 16 + 32 * i
        if data[at : at + 16] == BAT_GUID:
            bat = struct.unpack_from("<Q", data, at + 16)[0]
            break
    else:
        raise AssertionError("no BAT region")
    blocks = {}
    for b in range(SIZE // MiB):
        entry = struct.unpack_from("<Q", data, bat + 8 * b)[0]
        if entry & 7 == 6:
            blocks[b] = entry & 0xFFFFFFFFFFF00000
    return blocks


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_vhdx_map_against_qemu_content_and_bat(
    raw: Path, tmp_path: Path, subformat: str, capsys: pytest.CaptureFixture[str]
) -> None:
    vhdx = qemu_convert(
        raw, tmp_path / "d.vhdx", "vhdx", {"subformat": subformat, "block_size": "1M"}
    )
    theirs = qemu_map(vhdx, "vhdx")
    assert all(e["data"] and "offset" not in e for e in theirs)  # no block status in qemu
    content = qemu_to_raw(vhdx, tmp_path / "content.img").read_bytes()
    file = vhdx.read_bytes()
    ours = our_map(capsys, vhdx)
    assert_tiles(ours, 0, SIZE)
    for e in ours:
        s, n = e["start"], e["length"]
        if e["data"]:
            assert file[e["offset"] : e["offset"] + n] == content[s : s + n], e
        else:
            assert e["zero"] and content[s : s + n] == bytes(n), e
    blocks = naive_vhdx_blocks(vhdx)
    covered = {
        (e["start"] + k * MiB) // MiB: e["offset"] + k * MiB
        for e in ours
        if e["data"]
        for k in range(e["length"] // MiB)
    }
    assert covered == blocks
    if subformat == "dynamic":
        assert sorted(blocks) == [0, 2, 3, 5, 11]


def test_offset_and_length_window(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vhd = qemu_convert(raw, tmp_path / "d.vhd", "vpc", {"subformat": "dynamic", "force_size": True})
    full = our_map(capsys, vhd)
    start, length = 3 * MiB + 512, 5 * MiB
    part = our_map(capsys, "--offset", str(start), "--length", "5M", vhd)
    assert_tiles(part, start, start + length)
    for e in part:  # each piece is the clip of a full-map entry
        owner = next(f for f in full if f["start"] <= e["start"] < f["start"] + f["length"])
        assert (owner["data"], owner["zero"]) == (e["data"], e["zero"])
        if e["data"]:
            assert e["offset"] == owner["offset"] + e["start"] - owner["start"]
    assert our_map(capsys, "--offset", str(SIZE), vhd) == []


def test_human_table(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vhd = qemu_convert(raw, tmp_path / "d.vhd", "vpc", {"subformat": "dynamic", "force_size": True})
    entries = our_map(capsys, vhd)
    assert main(["map", str(vhd)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["Offset", "Length", "Mapped", "to", "Kind", "File"]
    assert len(lines) == 1 + len(entries)
    for line, e in zip(lines[1:], entries, strict=True):
        cols = line.split()
        assert int(cols[0], 16) == e["start"] and int(cols[1], 16) == e["length"]
        if e["data"]:
            assert int(cols[2], 16) == e["offset"] and cols[3] == "data"
        else:
            assert cols[2] == "-" and cols[3] == "unallocated"


@pytest.mark.parametrize("maker", ["qemu", "pyvhdx"])
def test_empty_64_tib_vhdx_maps_quickly(
    tmp_path: Path, maker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.vhdx"
    if maker == "qemu":
        qemu_create(path, "vhdx", "64T")
    else:
        pyvhdx.create(path, 64 * TiB)
    t = time.perf_counter()
    entries = our_map(capsys, path)
    elapsed = time.perf_counter() - t
    assert entries == [
        {"start": 0, "length": 64 * TiB, "depth": 0, "present": True, "zero": True, "data": False}
    ]
    assert elapsed < 5, f"mapping an empty 64 TiB VHDX took {elapsed:.2f} s"


def test_map_streams(tmp_path: Path) -> None:
    """Runs come window by window: the first one before most of the BAT is decoded."""
    path = tmp_path / "big.vhdx"
    pyvhdx.create(path, 64 * TiB)
    with pyvhdx.open(path, "r+") as img:
        for offset in (0, 10 * TiB, 64 * TiB - 5):
            img.write_at(offset, b"data!")
    with pyvhdx.open(path) as img:
        runs = allocation_map(img)
        first = next(runs)
        assert first.kind is pyvhdx.RunKind.DATA and first.start == 0
        assert not img.handler.table.all_loaded
        rest = list(runs)
    kinds = [r.kind for r in rest]
    assert kinds == [pyvhdx.RunKind.UNMAPPED, pyvhdx.RunKind.DATA] * 2
    assert rest[-1].start + rest[-1].length == 64 * TiB


def cycling_vhdx(path: Path, data_blocks: list[int], block_size: int = 32 * MiB) -> Path:
    """A 64 TiB VHDX (pyvhdx.create) whose payload BAT entries cycle through
    NOT_PRESENT, ZERO and UNMAPPED, written here with numpy; ``data_blocks`` are
    FULLY_PRESENT, stored one after another past the end of the file."""
    pyvhdx.create(path, 64 * TiB, block_size=block_size)
    with pyvhdx.open(path) as img:
        assert isinstance(img.handler, VHDXFile)
        bat = img.handler.bat_offset
    n = 64 * TiB // block_size
    blocks = np.arange(n, dtype=np.int64)
    states = [PayloadState.NOT_PRESENT, PayloadState.ZERO, PayloadState.UNMAPPED]
    entries = np.zeros(vhdx_payload_index(n - 1, chunk_ratio(512, block_size)) + 1, np.uint64)
    where = blocks + blocks // chunk_ratio(512, block_size)
    entries[where] = np.array(states, dtype=np.uint64)[blocks % 3]
    end = path.stat().st_size
    for i, b in enumerate(data_blocks):
        entries[where[b]] = (end + i * block_size) | PayloadState.FULLY_PRESENT
    with open(path, "r+b") as f:
        f.seek(bat)
        f.write(entries.tobytes())
        f.truncate(end + len(data_blocks) * block_size)
    return path


def test_cycling_zero_states_map_as_qemu_merges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bs = 32 * MiB
    last = 64 * TiB // bs - 1
    data = [5, 1000, last]
    vhdx = cycling_vhdx(tmp_path / "cycling.vhdx", data, bs)
    oracle = tmp_path / "same-data.qcow2"
    # 2 MiB clusters: qemu maps a cluster with a sector written as data, and
    # its block status walks an empty 64 TiB in 128 steps (one per L2 table)
    qemu_create(oracle, "qcow2", "64T", {"cluster_size": "2M"})
    writes = [
        a
        for b in data
        for at in range(b * bs, (b + 1) * bs, 2 * MiB)
        for a in ("-c", f"write -P 1 {at} 512")
    ]
    subprocess.run(
        ["qemu-io", "-f", "qcow2", *writes, str(oracle)], check=True, capture_output=True
    )

    ours = our_map(capsys, vhdx)
    # A qcow2 without a backing file calls its unallocated ranges not present;
    # qemu's offsets are the qcow2's. Everything else must be equal.
    same = ("start", "length", "depth", "zero", "data")
    assert [{k: e[k] for k in same} for e in ours] == [
        {k: e[k] for k in same} for e in qemu_map(oracle, "qcow2")
    ]
    assert len(ours) == 6 and all(e["present"] for e in ours)
    assert [e["offset"] for e in ours if e["data"]] == [
        vhdx.stat().st_size - (len(data) - i) * bs for i in range(len(data))
    ]
    # the human map: the same runs, a merged zero run named by its ZERO part
    assert main(["map", str(vhdx)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[3] for line in lines] == ["zero", "data"] * 3
    with pyvhdx.open(vhdx) as img:  # the extents themselves keep every state
        kinds = [e.kind for e in img.extents(0, 4 * bs)]
        assert kinds == [RunKind.UNMAPPED, RunKind.ZERO, RunKind.UNMAPPED]
        assert len(list(img.extents(0, 4 * bs, merge_zero=True))) == 1


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    codes=st.lists(
        st.sampled_from([CODE_UNMAPPED, CODE_ZERO, CODE_PARENT, 0]), min_size=1, max_size=40
    ),
    window=st.tuples(st.integers(0, 39 * 512), st.integers(1, 40 * 512)),
)
def test_merge_zero_runs_against_block_by_block(codes: list[int], window: tuple[int, int]) -> None:
    """Mapping then merging zero runs equals merging block by block in Python."""
    bs = 512
    size = len(codes) * bs
    # data blocks (code 0) are stored at their own virtual offsets + 1 MiB, so
    # neighbours are contiguous in the file
    arr = np.array([c if c < 0 else MiB + i * bs for i, c in enumerate(codes)], np.int64)
    table = BlockTable(size, bs, lambda first, count: arr[first : first + count])
    start = min(window[0], size - 1)
    length = min(window[1], size - start)
    runs = merge_zero_runs(table.map(start, length))
    kind_of = {
        CODE_UNMAPPED: RunKind.UNMAPPED,
        CODE_ZERO: RunKind.ZERO,
        CODE_PARENT: RunKind.PARENT,
    }
    zeros = (RunKind.UNMAPPED, RunKind.ZERO)
    naive: list[list[Any]] = []  # start, length, kind
    for b in range(start // bs, (start + length - 1) // bs + 1):
        lo, hi = max(start, b * bs), min(start + length, (b + 1) * bs)
        kind = kind_of.get(int(arr[b]), RunKind.DATA)
        if naive and (naive[-1][2] == kind or (naive[-1][2] in zeros and kind in zeros)):
            naive[-1][1] += hi - lo
            naive[-1][2] = RunKind.ZERO if RunKind.ZERO in (kind, naive[-1][2]) else kind
        else:
            naive.append([lo, hi - lo, kind])
    assert [(s, n, k) for s, n, k, _ in runs.rows()] == [tuple(r) for r in naive]


def test_zero_runs_merge_across_extent_windows(tmp_path: Path) -> None:
    """``extents(merge_zero=True)`` maps a window of table chunks at a time: a zero run
    that a window's edge cuts is one run all the same, ZERO if any part of it is,
    whatever lies on either side (ZERO then UNMAPPED, UNMAPPED then ZERO, UNMAPPED on
    both), and so is the map."""
    from pyvhdx.bat import LOAD_CHUNK_SHIFT
    from pyvhdx.image import _EXTENT_WINDOW_SHIFT

    bs = 32 * MiB
    per = 1 << (LOAD_CHUNK_SHIFT + _EXTENT_WINDOW_SHIFT)  # blocks one window maps
    edges = [per, 2 * per, 3 * per]
    # cycling_vhdx: block b is NOT_PRESENT, ZERO or UNMAPPED as b % 3 is 0, 1 or 2; each
    # edge gets a zero run of two blocks, the last of one window and the first of the next
    sides = {((e - 1) % 3 == 1, e % 3 == 1) for e in edges}
    assert sides == {(True, False), (False, True), (False, False)}
    data = sorted({b for e in edges for b in (e - 2, e + 1)})
    vhdx = cycling_vhdx(tmp_path / "edges.vhdx", data, bs)
    expected: list[tuple[int, int, RunKind]] = []
    pos = 0
    for b in [*data, 64 * TiB // bs]:
        if b * bs > pos:
            zero = any(x % 3 == 1 for x in range(pos // bs, min(b, pos // bs + 3)))
            expected.append((pos, b * bs - pos, RunKind.ZERO if zero else RunKind.UNMAPPED))
        if b < 64 * TiB // bs:
            expected.append((b * bs, bs, RunKind.DATA))
        pos = (b + 1) * bs
    with pyvhdx.open(vhdx) as img:
        merged = [(e.start, e.length, e.kind) for e in img.extents(merge_zero=True)]
        mapped = [(a.start, a.length, a.kind) for a in allocation_map(img)]
    assert merged == expected
    assert mapped == expected
