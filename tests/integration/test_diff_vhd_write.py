"""Writes into a differencing VHD (VHD spec "Block Allocation Table and Data Blocks":
a sector bitmap per block, MSB first, 1 = this file, 0 = the parent).

* A partial-block write marks only the sectors it touches; a new block gets a
  bitmap of zeros except those sectors (never all ones: SPEC-NOTES pitfall 18).
* A write not aligned to 512 bytes first takes the rest of its boundary sectors
  from the parent (read-modify-write); zeros written over the parent's data are
  stored.
* Checked against a ``bytearray`` model and libvhdi (``pyvhdi`` with
  ``set_parent``), and by crash injection at every write, truncate and flush.

libvhdi (checked with libvhdi-python 20260901) misreads VHD sector bitmaps: it
decodes bit ``i`` of a byte as ``byte >> (7 - i)`` without masking
(``libvhdi_block_descriptor_read_sector_bitmap_data``), so every clear bit that
follows a set bit in the same byte counts as "in this file" and libvhdi returns
the file's bytes there (zeros for a sector never written) instead of the
parent's. It also returns the parent's data for some sectors the child holds
when one read spans many blocks from the start of the disk. The oracle here
therefore reads one block at a time and compares with :func:`libvhdi_view`,
which models the first defect exactly from the files; where libvhdi agrees with
the model outright (a fixed libvhdi), that passes too.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pyvhdx
from pyvhdx.errors import UnsupportedFeatureError
from tests.conftest import import_pyvhdi
from tests.crashfile import CrashFile, SimulatedCrash

KiB = 1 << 10
MiB = 1 << 20
SECTOR = 512
BLOCK = 64 * KiB


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rand(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# --- reading the files directly (spec "Dynamic Disk Header Format") -----------------


def vhd_blocks(path: Path) -> tuple[int, int, dict[int, int]]:
    """``(block_size, bitmap_size, {block: bitmap file offset})`` of a sparse VHD."""
    data = path.read_bytes()
    footer = data[-512:]
    header_offset = int.from_bytes(footer[16:24], "big")
    header = data[header_offset : header_offset + 1024]
    table_offset = int.from_bytes(header[16:24], "big")
    entries = int.from_bytes(header[28:32], "big")
    block_size = int.from_bytes(header[32:36], "big")
    bitmap_size = -(-(block_size // SECTOR // 8) // SECTOR) * SECTOR
    bat = np.frombuffer(data[table_offset : table_offset + 4 * entries], ">u4")
    used = {int(b): int(bat[b]) * SECTOR for b in np.flatnonzero(bat != 0xFFFFFFFF)}
    return block_size, bitmap_size, used


def sector_bits(path: Path, block: int) -> np.ndarray:
    """The sector bitmap of ``block`` as stored (one bool per sector, MSB first)."""
    block_size, _, used = vhd_blocks(path)
    raw = path.read_bytes()[used[block] : used[block] + block_size // SECTOR // 8]
    return np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="big").astype(bool)


def libvhdi_view(levels: Sequence[tuple[Path, bytes]]) -> bytes:
    """What libvhdi reads from a chain of VHDs ``[(base, its content), (child, its
    content), ...]``: each child's present sectors hold its content; the sectors
    libvhdi wrongly takes as present (a clear bit after a set bit in the same
    bitmap byte) hold the child file's bytes; the rest comes from the level below.
    """
    view = bytearray(levels[0][1])
    size = len(view)
    for path, content in levels[1:]:
        block_size, bitmap_size, used = vhd_blocks(path)
        data = path.read_bytes()
        per_block = block_size // SECTOR
        for block, bitmap_offset in used.items():
            raw = data[bitmap_offset : bitmap_offset + per_block // 8]
            bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="big").astype(bool)
            smear = np.maximum.accumulate(bits.reshape(-1, 8), axis=1).reshape(-1) & ~bits
            base = block * block_size
            data_offset = bitmap_offset + bitmap_size
            for s in np.flatnonzero(bits | smear).tolist():
                lo = base + s * SECTOR
                if lo >= size:
                    break
                hi = min(lo + SECTOR, size)
                if bits[s]:
                    view[lo:hi] = content[lo:hi]
                else:
                    pos = data_offset + s * SECTOR
                    view[lo:hi] = data[pos : pos + hi - lo].ljust(hi - lo, b"\0")
    return bytes(view)


def pyvhdi_chain(paths: Sequence[Path]) -> tuple[Any, list[Any]]:
    """Open ``paths`` (base first) with pyvhdi, each ``set_parent`` to the one below.
    Returns the top file and every handle (keep them alive while reading)."""
    pyvhdi = import_pyvhdi()
    handles: list[Any] = []
    for path in paths:
        f = pyvhdi.file()
        f.open(str(path))
        if handles:
            f.set_parent(handles[-1])
        handles.append(f)
    return handles[-1], handles


def pyvhdi_read(top: Any, size: int, step: int) -> bytes:
    """The whole disk, read ``step`` bytes (one block) per call."""
    return b"".join(top.read_buffer_at_offset(min(step, size - o), o) for o in range(0, size, step))


def assert_libvhdi_reads(levels: Sequence[tuple[Path, bytes]], step: int = BLOCK) -> None:
    """libvhdi reads the top of the chain as :func:`libvhdi_view` (or the content itself)."""
    top, handles = pyvhdi_chain([p for p, _ in levels])
    content = levels[-1][1]
    theirs = pyvhdi_read(top, len(content), step)
    for h in reversed(handles):
        h.close()
    if theirs != content:
        view = libvhdi_view(levels)
        assert theirs == view, "libvhdi reads neither the content nor its known misreading"


# --- a parent and a child -----------------------------------------------------------


SIZE = 40 * BLOCK + 1024  # 41 blocks, the last one partial


def make_parent(tmp_path: Path, size: int = SIZE) -> tuple[Path, bytes]:
    """A dynamic VHD with data in most blocks (blocks 20-23 and the last stay empty)."""
    base = tmp_path / "base.vhd"
    pyvhdx.create(base, size, block_size=BLOCK)
    content = bytearray(size)
    with pyvhdx.open(base, "r+") as img:
        for lo, hi in ((0, 20 * BLOCK), (24 * BLOCK + 300, 40 * BLOCK)):
            data = rand(hi - lo, lo + 1)
            img.write_at(lo, data)
            content[lo:hi] = data
    return base, bytes(content)


def test_writes_against_model_and_libvhdi(tmp_path: Path) -> None:
    base, parent_content = make_parent(tmp_path)
    child = tmp_path / "child.avhd"
    pyvhdx.create(child, parent=base, block_size=BLOCK)
    base_hash = sha(base)
    model = bytearray(parent_content)
    rng = np.random.default_rng(5)
    writes: list[tuple[int, bytes]] = [
        (BLOCK + 100, rand(300, 1)),  # inside one sector of a new block
        (BLOCK + 5 * SECTOR, rand(3 * SECTOR, 2)),  # aligned, same block, absent sectors
        (BLOCK + 5 * SECTOR + 17, rand(SECTOR, 3)),  # over present sectors, in place
        (3 * BLOCK - 1000, rand(2000, 4)),  # crossing a block boundary: two new blocks
        (5 * BLOCK, rand(BLOCK, 5)),  # a whole block: bitmap all ones
        (5 * BLOCK + 4000, rand(100, 6)),  # in place in that full block
        (7 * BLOCK + 513, bytes(4000)),  # zeros over the parent's data
        (21 * BLOCK + 7, rand(9, 7)),  # the parent has no data here
        (9 * BLOCK - 3, rand(3 * BLOCK + 6, 8)),  # four blocks, new and unaligned at both ends
        (SIZE - 700, rand(700, 9)),  # the partial last block
        (0, b"x"),  # one byte
    ]
    for _ in range(40):  # random ones, often over earlier writes
        off = int(rng.integers(0, SIZE - 1))
        n = int(rng.integers(1, min(3 * BLOCK, SIZE - off) + 1))
        data = bytes(n) if rng.random() < 0.2 else rand(n, int(rng.integers(1 << 30)))
        writes.append((off, data))
    with pyvhdx.open(child, "r+") as img:
        for off, data in writes:
            img.write_at(off, data)
            model[off : off + len(data)] = data
        assert img.read_at(0, SIZE) == model
    assert sha(base) == base_hash
    with pyvhdx.open(child, strict=True) as img:
        assert not img.info().problems
        assert img.read_at(0, SIZE) == model
    assert_libvhdi_reads([(base, parent_content), (child, bytes(model))])


def test_new_block_bitmap_marks_only_written_sectors(tmp_path: Path) -> None:
    """Pitfall 18: a new block's bitmap is zeros except the written sectors."""
    base, parent_content = make_parent(tmp_path)
    child = tmp_path / "child.vhd"
    pyvhdx.create(child, parent=base, block_size=BLOCK)
    with pyvhdx.open(child, "r+") as img:
        img.write_at(2 * BLOCK + 1000, b"\xaa" * 1100)  # sectors 1..4, unaligned both ends
        img.write_at(4 * BLOCK, bytes(SECTOR))  # zeros over parent data: sector 0
    bits = sector_bits(child, 2)
    assert np.flatnonzero(bits).tolist() == [1, 2, 3, 4]
    assert np.flatnonzero(sector_bits(child, 4)).tolist() == [0]
    model = bytearray(parent_content)
    model[2 * BLOCK + 1000 : 2 * BLOCK + 2100] = b"\xaa" * 1100
    model[4 * BLOCK : 4 * BLOCK + SECTOR] = bytes(SECTOR)
    with pyvhdx.open(child) as img:
        # the boundary sectors keep the parent's bytes around the write
        assert img.read_at(2 * BLOCK, 3 * SECTOR) == model[2 * BLOCK : 2 * BLOCK + 3 * SECTOR]
        assert img.read_at(0, SIZE) == model
        runs = [(e.start, e.length, e.kind) for e in img.extents(2 * BLOCK, BLOCK)]
    assert runs == [
        (2 * BLOCK, SECTOR, pyvhdx.RunKind.PARENT),
        (2 * BLOCK + SECTOR, 4 * SECTOR, pyvhdx.RunKind.DATA),
        (2 * BLOCK + 5 * SECTOR, BLOCK - 5 * SECTOR, pyvhdx.RunKind.PARENT),
    ]


def test_missing_parent_allows_whole_sector_writes_only(tmp_path: Path) -> None:
    base, _ = make_parent(tmp_path)
    child = tmp_path / "child.vhd"
    pyvhdx.create(child, parent=base, block_size=BLOCK)
    alone = tmp_path / "alone"
    alone.mkdir()
    moved = alone / "child.vhd"
    shutil.move(child, moved)
    with pytest.raises(pyvhdx.ParentError):
        pyvhdx.open(moved, "r+")
    with pyvhdx.open(moved, "r+", allow_missing_parent=True) as img:
        img.write_at(BLOCK, b"s" * SECTOR)  # whole sectors need nothing from the parent
        with pytest.raises(UnsupportedFeatureError, match="parent"):
            img.write_at(3 * BLOCK + 10, b"partial")
        assert img.read_at(BLOCK, SECTOR) == b"s" * SECTOR


def test_merge_into_a_differencing_parent(tmp_path: Path) -> None:
    """Merging a grandchild writes into a differencing VHD (this write path)."""
    base, parent_content = make_parent(tmp_path)
    mid = tmp_path / "mid.vhd"
    top = tmp_path / "top.vhd"
    pyvhdx.create(mid, parent=base, block_size=BLOCK)
    model = bytearray(parent_content)
    with pyvhdx.open(mid, "r+") as img:
        for off, data in ((BLOCK + 7, rand(5000, 1)), (30 * BLOCK, rand(2 * BLOCK, 2))):
            img.write_at(off, data)
            model[off : off + len(data)] = data
    pyvhdx.create(top, parent=mid, block_size=2 * BLOCK)
    with pyvhdx.open(top, "r+") as img:
        for off, data in ((BLOCK + 3000, bytes(4000)), (10 * BLOCK - 5, rand(BLOCK, 3))):
            img.write_at(off, data)
            model[off : off + len(data)] = data
    base_hash = sha(base)
    pyvhdx.merge(top)
    assert not top.exists() and sha(base) == base_hash
    with pyvhdx.open(mid) as img:
        assert img.read_at(0, SIZE) == model
    assert_libvhdi_reads([(base, parent_content), (mid, bytes(model))])


# --- crash injection (as tests/integration/test_vhd_crash.py) -----------------------


def crash_scenario() -> list[tuple[int, bytes, bool]]:
    """``(offset, data, atomic)``, disjoint. Before it, the child holds sectors
    10-20 of block 1 and all of block 3. ``atomic``: all-or-nothing by design
    (see ``VHDFile._write_differencing``)."""
    spots = [
        (BLOCK + 100, 300, True),  # absent sector of an allocated block: RMW, bitmap
        (BLOCK + 10 * SECTOR + 7, 1000, True),  # present sectors: in place
        (5 * BLOCK + 1000, 3000, True),  # a new block, unaligned
        (7 * BLOCK - 700, 1400, True),  # two new blocks, one BAT sector
        (3 * BLOCK - 300, 600, False),  # new block 2 and the full block 3
        (8 * BLOCK + 512, 4096, True),  # zeros over parent data (below)
        (10 * BLOCK, 3 * BLOCK, True),  # three new whole blocks
        (SIZE - 600, 600, True),  # the partial last block
        (5 * BLOCK + 8192, 8192, True),  # absent sectors of a block made above
        (BLOCK + 30 * SECTOR, 4 * SECTOR, True),  # aligned, absent sectors
    ]
    out = []
    for i, (off, n, atomic) in enumerate(spots):
        data = bytes(n) if off == 8 * BLOCK + 512 else rand(n, 100 + i)
        out.append((off, data, atomic))
    return out


def apply(content: bytes) -> bytes:
    new = bytearray(content)
    for off, data, _ in crash_scenario():
        new[off : off + len(data)] = data
    return bytes(new)


@pytest.fixture(scope="module")
def crash_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes, bytes]:
    """A parent, a child holding some sectors, the parent's content and the chain's."""
    tmp = tmp_path_factory.mktemp("vhdchild")
    base, parent_content = make_parent(tmp)
    child = tmp / "child.vhd"
    pyvhdx.create(child, parent=base, block_size=BLOCK)
    old = bytearray(parent_content)
    with pyvhdx.open(child, "r+") as img:
        for off, data in (
            (BLOCK + 10 * SECTOR, rand(11 * SECTOR, 50)),
            (3 * BLOCK, rand(BLOCK, 51)),
        ):
            img.write_at(off, data)
            old[off : off + len(data)] = data
    return base, child, parent_content, bytes(old)


def run_scenario(path: Path, crash_at: int | None, lose: bool) -> int:
    f = CrashFile(path, crash_at, lose_unflushed=lose)
    try:
        img = pyvhdx.open(f, "r+")  # type: ignore[arg-type]  # a RawIOBase
        for off, data, _ in crash_scenario():
            img.write_at(off, data)
        img.close()
    except SimulatedCrash:
        pass
    finally:
        f.close()
    return f.steps


def check_old_or_new(path: Path, old: bytes, where: str) -> bytes:
    with pyvhdx.open(path, strict=True) as img:
        assert not img.info().problems, f"{where}: {img.info().problems}"
        content = img.read_at(0, SIZE)
    got = np.frombuffer(content, np.uint8)
    before = np.frombuffer(old, np.uint8)
    touched = np.zeros(SIZE, dtype=bool)
    for off, data, atomic in crash_scenario():
        n = len(data)
        is_old = got[off : off + n] == before[off : off + n]
        is_new = got[off : off + n] == np.frombuffer(data, np.uint8)
        if atomic:
            assert is_old.all() or is_new.all(), f"{where}: write at {off:#x} is torn"
        for s in range(off // SECTOR, (off + n - 1) // SECTOR + 1):
            lo, hi = max(off, s * SECTOR) - off, min(off + n, (s + 1) * SECTOR) - off
            assert is_old[lo:hi].all() or is_new[lo:hi].all(), (
                f"{where}: sector {s} of the write at {off:#x} is torn"
            )
        touched[off : off + n] = True
    # untouched bytes, the rest of each boundary sector included, keep their content
    assert (got[~touched] == before[~touched]).all(), f"{where}: bytes outside the writes changed"
    return content


@pytest.mark.oracle
@pytest.mark.parametrize("lose", [False, True], ids=["keep-unflushed", "lose-unflushed"])
def test_crash_at_every_step(
    tmp_path: Path, crash_chain: tuple[Path, Path, bytes, bytes], lose: bool
) -> None:
    base, child, parent_content, old = crash_chain
    new = apply(old)
    shutil.copy(base, tmp_path / "base.vhd")
    base_hash = sha(tmp_path / "base.vhd")
    full = tmp_path / "child.vhd"
    shutil.copy(child, full)
    total = run_scenario(full, None, lose)
    assert check_old_or_new(full, old, "no crash") == new
    assert total > 30, total
    for n in range(total + 1):
        path = tmp_path / "child.vhd"
        shutil.copy(child, path)
        assert run_scenario(path, n, lose) == min(n, total)
        where = f"crash at step {n} of {total}"
        content = check_old_or_new(path, old, where)
        assert_libvhdi_reads([(tmp_path / "base.vhd", parent_content), (path, content)])
        with pyvhdx.open(path, "r+") as img:  # still writable: finish the scenario
            for off, data, _ in crash_scenario():
                img.write_at(off, data)
        with pyvhdx.open(path, strict=True) as img:
            assert img.read_at(0, SIZE) == new, f"{where}: recovery"
    assert sha(tmp_path / "base.vhd") == base_hash
