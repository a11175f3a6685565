"""Differencing chains made by pyvhdx: a base and three children, written at every
level, read identically by pyvhdx and libvhdi (``pyvhdi`` with ``set_parent`` at
each level) and equal to a ``bytearray`` model per level; flattening (convert)
and merging (child into parent, level by level) give the model's hash;
``chain_extents`` names the image that holds each run; reads never change a file
and the DataWriteGuid/unique-id linkage holds at every level (DESIGN.md
"Parents"; MS-VHDX 2.6.2.6; VHD spec "Dynamic Disk Header Format").

pyvhdx children only ever use NOT_PRESENT and FULLY_PRESENT (VHDX) or sector
bitmaps (VHD), never ZERO or UNMAPPED, which libvhdi would send to the parent
(SPEC-NOTES pitfall 7), so libvhdi's VHDX reads are compared in full. VHD reads
go through :func:`tests.integration.test_diff_vhd_write.assert_libvhdi_reads`,
which knows libvhdi's VHD bitmap misreading.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import pyvhdx
from pyvhdx.bat import chunk_ratio
from pyvhdx.constants import RunKind
from pyvhdx.create import VHDX_CHILD_BLOCK_SIZE, parent_locator_paths
from tests.integration.test_diff_vhd_write import assert_libvhdi_reads, pyvhdi_chain

KiB = 1 << 10
MiB = 1 << 20
SIZE = 12 * MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Config:
    fmt: str  # "vhdx" or "vhd"
    sector: int  # logical sector size
    base_block: int
    child_blocks: tuple[int | None, int | None, int | None]  # None: the default


CONFIGS = {
    "vhdx-512": Config("vhdx", 512, MiB, (None, MiB, 4 * MiB)),
    "vhdx-4096": Config("vhdx", 4096, 2 * MiB, (MiB, None, 4 * MiB)),
    "vhd": Config("vhd", 512, 64 * KiB, (128 * KiB, None, 32 * KiB)),
}


#: Where each level writes: deeper levels stay visible around the upper ones.
WINDOWS = {1: (0, 10 * MiB), 2: (2 * MiB, 8 * MiB), 3: (4 * MiB, 8 * MiB)}


def level_writes(level: int, sector: int) -> list[tuple[int, bytes]]:
    """Seeded writes for one level, inside its window: aligned, unaligned, across
    block boundaries of every size in use, zeros over earlier data, one byte, and
    a write over this level's own."""
    rng = np.random.default_rng(1000 + level)

    def data(n: int) -> bytes:
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    if level == 0:  # the base: data over most of the disk, some holes
        return [(0, data(3 * MiB)), (4 * MiB + 5, data(3 * MiB)), (9 * MiB, data(2 * MiB))]
    lo, hi = WINDOWS[level]
    out: list[tuple[int, bytes]] = []
    for _ in range(5):  # sector aligned
        off = int(rng.integers(lo // sector, (hi - 70000) // sector)) * sector
        out.append((off, data(int(rng.integers(1, 70000 // sector)) * sector)))
    for _ in range(5):  # unaligned
        off = int(rng.integers(lo, hi - 70000))
        out.append((off, data(int(rng.integers(1, 70000)))))
    for boundary in (32 * KiB, 64 * KiB, 128 * KiB, MiB, 2 * MiB, 4 * MiB):
        first, last = -(-(lo + 5000) // boundary), (hi - 20000) // boundary
        if first > last:
            continue  # no such boundary inside the window
        start = int(rng.integers(first, last + 1)) * boundary - int(rng.integers(1, 5000))
        out.append((start, data(int(rng.integers(5001, 20000)))))
    # zeros over data of the levels below (the base holds data at 4 MiB + 5 on)
    for start in (int(rng.integers(lo, hi - 9000)), 4 * MiB + 12345):
        out.append((start, bytes(int(rng.integers(1, 9000)))))
    out.append((int(rng.integers(lo, hi)), b"\x01"))
    first_off, first_data = out[0]
    out.append((first_off + 3, data(len(first_data))))  # over this level's own write
    assert all(lo <= o and o + len(d) <= hi for o, d in out[:-1])
    return out


@dataclasses.dataclass
class Chain:
    paths: list[Path]  # base first
    models: list[bytes]  # content of each level
    holder: np.ndarray  # per 512-byte sector: the highest level that stores it (0: base)


def build_chain(tmp_path: Path, cfg: Config) -> Chain:
    ext = cfg.fmt
    base = tmp_path / f"base.{ext}"
    if cfg.fmt == "vhdx":
        pyvhdx.create(base, SIZE, block_size=cfg.base_block, logical_sector_size=cfg.sector)
    else:
        pyvhdx.create(base, SIZE, block_size=cfg.base_block)
    paths = [base]
    model = bytearray(SIZE)
    holder = np.zeros(SIZE // 512, dtype=np.int64)
    with pyvhdx.open(base, "r+") as img:
        for off, data in level_writes(0, cfg.sector):
            img.write_at(off, data)
            model[off : off + len(data)] = data
    models = [bytes(model)]
    for level, block in enumerate(cfg.child_blocks, start=1):
        child = tmp_path / f"c{level}.a{ext}"
        assert pyvhdx.create(child, parent=paths[-1], block_size=block) == SIZE
        below = {p: file_hash(p) for p in paths}
        with pyvhdx.open(child, "r+") as img:
            assert img.parent is not None
            unit = img.block_size if cfg.fmt == "vhdx" else 512
            assert unit is not None
            for off, data in level_writes(level, cfg.sector):
                img.write_at(off, data)
                model[off : off + len(data)] = data
                # VHDX: the whole block is stored here; VHD: the touched sectors
                lo, hi = off // unit * unit, -(-(off + len(data)) // unit) * unit
                holder[lo // 512 : hi // 512] = level
        assert {p: file_hash(p) for p in paths} == below, "a write changed a parent"
        paths.append(child)
        models.append(bytes(model))
    return Chain(paths, models, holder)


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def chain(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Config, Chain]:
    cfg = CONFIGS[request.param]
    return cfg, build_chain(tmp_path, cfg)


def test_chain_reads_as_model_pyvhdi_and_names_holders(chain: tuple[Config, Chain]) -> None:
    cfg, ch = chain
    hashes = {p: file_hash(p) for p in ch.paths}
    for level, path in enumerate(ch.paths):
        with pyvhdx.open(path) as img:  # verify_parent stays on: the linkage holds
            assert img.read_at(0, SIZE) == ch.models[level], f"level {level}"
            if level:
                assert img.disk_type is pyvhdx.DiskType.DIFFERENCING
                assert img.logical_sector_size == cfg.sector
                assert img.parent is not None
                assert Path(img.parent.name).resolve() == ch.paths[level - 1].resolve()
    # unaligned reads through the whole chain
    rng = np.random.default_rng(7)
    with pyvhdx.open(ch.paths[-1]) as img:
        for _ in range(200):
            off = int(rng.integers(0, SIZE))
            n = int(rng.integers(1, 3 * MiB))
            assert img.read_at(off, n) == ch.models[-1][off : off + n]
        runs = list(img.chain_extents())
    # chain_extents: each run names the level that stores it
    assert sum(r.length for r in runs) == SIZE
    depth = np.empty(SIZE // 512, dtype=np.int64)
    top = len(ch.paths) - 1
    for r in runs:
        assert r.start % 512 == 0 and r.length % 512 == 0
        assert Path(r.image).resolve() == ch.paths[top - r.depth].resolve()
        if r.depth < top:
            assert r.kind is RunKind.DATA
        depth[r.start // 512 : (r.start + r.length) // 512] = r.depth
    assert (top - depth == ch.holder).all()
    assert set(depth.tolist()) == {0, 1, 2, 3}  # every level shows through somewhere
    # libvhdi, each level chained with set_parent
    for level in range(1, len(ch.paths)):
        if cfg.fmt == "vhdx":
            top_file, handles = pyvhdi_chain(ch.paths[: level + 1])
            theirs = top_file.read_buffer_at_offset(SIZE, 0)
            for h in reversed(handles):
                h.close()
            assert theirs == ch.models[level], f"libvhdi, level {level}"
        else:
            assert_libvhdi_reads(
                list(zip(ch.paths[: level + 1], ch.models[: level + 1], strict=True)),
                step=32 * KiB,
            )
    assert {p: file_hash(p) for p in ch.paths} == hashes, "a read changed a file"


def test_linkage_names_the_parents_current_identity(chain: tuple[Config, Chain]) -> None:
    cfg, ch = chain
    for parent, child in zip(ch.paths, ch.paths[1:], strict=False):
        with pyvhdx.open(parent) as p:
            fs = p.info().format_specific
            pid = p.handler.identity_as_parent()
        with pyvhdx.open(child) as c:
            info = c.info().parent
        assert info is not None
        relative, absolute = parent_locator_paths(child, parent)
        if cfg.fmt == "vhdx":
            assert pid == fs["data-write-guid"]
            locator = info["locator"]
            assert locator["parent_linkage"] == "{" + pid + "}"
            assert locator["relative_path"] == relative == ".\\" + parent.name
            assert locator["absolute_win32_path"] == absolute
        else:
            assert str(info["parent-unique-id"]) == pid == str(fs["unique-id"])
            assert info["parent-name"] == parent.name
            paths = {loc["platform-code"]: loc for loc in info["locators"]}
            assert paths["W2ru"]["path"] == relative == ".\\" + parent.name
            assert paths["W2ku"]["path"] == absolute
            for loc in paths.values():  # Platform Data Space in bytes, sector multiples
                assert loc["data-space"] % 512 == 0 and loc["data-space"] >= loc["data-length"]
                assert loc["data-offset"] % 512 == 0


def test_flatten_and_merge_give_the_models_hash(
    chain: tuple[Config, Chain], tmp_path: Path
) -> None:
    cfg, ch = chain
    want = sha(ch.models[-1])
    flat = tmp_path / f"flat.{cfg.fmt}"
    pyvhdx.convert(ch.paths[-1], flat)
    with pyvhdx.open(flat) as img:
        assert img.parent is None and img.disk_type is not pyvhdx.DiskType.DIFFERENCING
        assert sha(img.read_at(0, SIZE)) == want
    # merge the top into its parent, then that one into its parent, ...
    for level in range(len(ch.paths) - 1, 0, -1):
        child, parent = ch.paths[level], ch.paths[level - 1]
        below = {p: file_hash(p) for p in ch.paths[: level - 1]}
        pyvhdx.merge(child)
        assert not child.exists()
        assert {p: file_hash(p) for p in ch.paths[: level - 1]} == below
        with pyvhdx.open(parent, strict=True) as img:
            assert sha(img.read_at(0, SIZE)) == want, f"after merging level {level}"
            assert not img.info().problems
        if level > 1 and cfg.fmt == "vhdx":
            top_file, handles = pyvhdi_chain(ch.paths[:level])
            assert sha(top_file.read_buffer_at_offset(SIZE, 0)) == want
            for h in reversed(handles):
                h.close()
        elif level > 1:
            levels = list(zip(ch.paths[: level - 1], ch.models[: level - 1], strict=True))
            assert_libvhdi_reads([*levels, (parent, ch.models[-1])], step=32 * KiB)
    top_file, handles = pyvhdi_chain(ch.paths[:1])
    assert sha(top_file.read_buffer_at_offset(SIZE, 0)) == want
    handles[0].close()


# --- creating children: sizes, formats, locators ------------------------------------


def test_child_takes_the_parents_geometry(tmp_path: Path) -> None:
    base = tmp_path / "base.vhdx"
    pyvhdx.create(base, 5 * MiB, logical_sector_size=4096, physical_sector_size=512)
    child = tmp_path / "child.avhdx"
    assert pyvhdx.create(child, parent=base) == 5 * MiB
    with pyvhdx.open(child) as img:
        assert (img.virtual_size, img.logical_sector_size, img.physical_sector_size) == (
            5 * MiB,
            4096,
            512,
        )
        assert img.block_size == VHDX_CHILD_BLOCK_SIZE == 2 * MiB
        fs = img.info().format_specific
        assert fs["has-parent"] and fs["bat-entries"] == chunk_ratio(4096, 2 * MiB) + 1
        items = {m["name"]: m for m in fs["metadata-items"]}
        assert items["parent_locator"]["is-required"]
        assert not items["parent_locator"]["is-virtual-disk"]
        assert all(e.kind is RunKind.PARENT for e in img.extents())
        bat_offset = next(r["file-offset"] for r in fs["regions"] if r["name"] == "BAT")
    # every payload entry NOT_PRESENT; the chunk's sector bitmap block allocated
    # (SB_BLOCK_PRESENT, zeros), which libvhdi needs (see create_vhdx_child)
    ratio = chunk_ratio(4096, 2 * MiB)
    raw = child.read_bytes()
    bat = np.frombuffer(raw[bat_offset : bat_offset + 8 * (ratio + 1)], "<u8")
    assert not bat[:ratio].any()
    sb = int(bat[ratio])
    assert sb & 7 == 6 and not raw[sb & ~0xFFFFF : (sb & ~0xFFFFF) + MiB].strip(b"\0")
    vbase = tmp_path / "base.vhd"
    pyvhdx.create(vbase, 3 * MiB + 1024, block_size=512 * KiB)
    vchild = tmp_path / "child.avhd"
    assert pyvhdx.create(vchild, parent=vbase) == 3 * MiB + 1024
    with pyvhdx.open(vbase) as p, pyvhdx.open(vchild) as c:
        pf, cf = p.info().format_specific, c.info().format_specific
        assert cf["disk-type-code"] == 4 and cf["chs"] == pf["chs"]
        assert cf["current-size"] == pf["current-size"] == 3 * MiB + 1024
        assert c.block_size == 2 * MiB
        stamp = cf["parent-timestamp"]
    mtime = int(os.stat(vbase).st_mtime)
    expected = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc)
    assert stamp == expected.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_child_in_another_directory(tmp_path: Path) -> None:
    base = tmp_path / "disks" / "base.vhdx"
    base.parent.mkdir()
    pyvhdx.create(base, 4 * MiB)
    child = tmp_path / "checkpoints" / "c.avhdx"
    child.parent.mkdir()
    pyvhdx.create(child, parent=base)
    with pyvhdx.open(child, resolve_parent=False) as img:
        info = img.info().parent
    assert info is not None
    assert info["locator"]["relative_path"] == "..\\disks\\base.vhdx"
    # the reader never follows a locator out of the child's directory by itself
    with pytest.raises(pyvhdx.ParentError):
        pyvhdx.open(child)
    with pyvhdx.open(child, parent=base) as img:
        assert img.read_at(0, 4 * MiB) == bytes(4 * MiB)


@pytest.mark.parametrize(
    ("child", "kwargs", "match"),
    [
        ("c.avhdx", {"size": 8 * MiB}, "size"),
        ("c.avhdx", {"disk_type": "fixed"}, "differencing"),
        ("c.avhdx", {"logical_sector_size": 4096}, "logical sector size"),
        ("c.vhd", {}, "VHD child cannot have a VHDX parent"),
        ("c.avhdx", {"format": "vhd"}, "VHD child"),
        ("c.avhdx", {"block_size": 3 * MiB}, "block size"),
    ],
)
def test_child_refusals(tmp_path: Path, child: str, kwargs: dict[str, object], match: str) -> None:
    base = tmp_path / "base.vhdx"
    pyvhdx.create(base, 4 * MiB)
    before = file_hash(base)
    with pytest.raises(pyvhdx.InvalidArgumentError, match=match):
        pyvhdx.create(tmp_path / child, parent=base, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / child).exists()
    assert file_hash(base) == before
    vbase = tmp_path / "base.vhd"
    pyvhdx.create(vbase, 4 * MiB)
    with pytest.raises(pyvhdx.InvalidArgumentError, match="VHDX child cannot have a VHD"):
        pyvhdx.create(tmp_path / "x.vhdx", parent=vbase)


def test_child_never_overwrites_its_own_chain(tmp_path: Path) -> None:
    base = tmp_path / "base.vhdx"
    pyvhdx.create(base, 4 * MiB)
    child = tmp_path / "c.avhdx"
    pyvhdx.create(child, parent=base)
    hashes = (file_hash(base), file_hash(child))
    for target, parent in ((base, base), (base, child), (child, child)):
        with pytest.raises(pyvhdx.InvalidArgumentError, match="ancestors"):
            pyvhdx.create(target, parent=parent, overwrite=True)
    assert (file_hash(base), file_hash(child)) == hashes


def test_writing_the_parent_breaks_the_child(tmp_path: Path) -> None:
    """The linkage is the parent's DataWriteGuid when the child was made (Hyper-V)."""
    base = tmp_path / "base.vhdx"
    pyvhdx.create(base, 4 * MiB)
    child = tmp_path / "c.avhdx"
    pyvhdx.create(child, parent=base)
    with pyvhdx.open(base, "r+") as img:
        img.write_at(0, b"changed")
    with pytest.raises(pyvhdx.ParentError, match="DataWriteGuid"):
        pyvhdx.open(child)
    with pyvhdx.open(child, verify_parent=False) as img:
        assert img.read_at(0, 7) == b"changed"
    # a VHD parent keeps its unique id when written
    vbase = tmp_path / "base.vhd"
    pyvhdx.create(vbase, 4 * MiB)
    vchild = tmp_path / "c.vhd"
    pyvhdx.create(vchild, parent=vbase)
    with pyvhdx.open(vbase, "r+") as img:
        img.write_at(0, b"changed")
    with pyvhdx.open(vchild) as img:
        assert img.read_at(0, 7) == b"changed"
