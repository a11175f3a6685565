"""Writes into VHD images (issue 4, "Write"): in place and allocating, checked on
disk against the spec's layout and read back by pyvhdx, qemu-img and libvhdi.

Layout facts checked after an allocating write into a dynamic disk (VHD spec
"Block Allocation Table and Data Blocks"; SPEC-NOTES pitfalls 15, 17, 18):

* the new block (its sector bitmap, all ones, then its data) starts where the
  footer stood, and the footer, byte for byte the same, is at the new end;
* the BAT entry holds the block's sector number; the footer copy at offset 0, the
  dynamic header and the other BAT entries are unchanged;
* a write into an allocated block changes nothing but its bytes (and sets the
  sector bitmap bits of the written sectors when they were clear).

Errors (past the end, read-only, bad arguments) leave the file's SHA-256 as it
was. qemu 7.2 has no ``check`` for VHD, so qemu's own open (``qemu-img info -f
vpc``, which refuses a bad footer checksum or a block past the end of file) and
its content (``convert -O raw``) are the outside checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pyvhdx
from pyvhdx.errors import (
    InvalidArgumentError,
    PyvhdxWarning,
    ReadOnlyError,
    UnsupportedFeatureError,
)
from tests.conftest import decompress_realworld, find_qemu_img, import_pyvhdi, load_expected

pytestmark = pytest.mark.oracle

KiB = 1 << 10
MiB = 1 << 20
FOOTER = 512
TABLE = 1536  # where pyvhdx (and qemu) put the BAT


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pattern(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(1, 256, n, dtype=np.uint8).tobytes()


def bat(path: Path, entries: int) -> list[int]:
    with open(path, "rb") as f:
        f.seek(TABLE)
        return list(struct.unpack(f">{entries}I", f.read(4 * entries)))


def vhd_sum(data: bytes, field: int) -> int:
    return ~(sum(data[:field]) + sum(data[field + 4 :])) & 0xFFFFFFFF


def qemu_raw(path: Path, out: Path) -> bytes:
    qemu = find_qemu_img()
    subprocess.run([qemu, "convert", "-f", "vpc", "-O", "raw", str(path), str(out)], check=True)
    return out.read_bytes()


def qemu_size(path: Path) -> int:
    qemu = find_qemu_img()
    r = subprocess.run(
        [qemu, "info", "--output=json", "-f", "vpc", str(path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["virtual-size"])


def pyvhdi_read(path: Path) -> bytes:
    pyvhdi = import_pyvhdi()
    f = pyvhdi.file()
    f.open(str(path))
    try:
        return bytes(f.read_buffer_at_offset(f.get_media_size(), 0))
    finally:
        f.close()


# -- dynamic disks: the layout of an allocating write ---------------------------------


@pytest.mark.parametrize("block_size", [512 * KiB, 2 * MiB])
def test_allocating_write_layout(tmp_path: Path, block_size: int) -> None:
    size = 3 * block_size + 1024  # four blocks, the last one partial
    path = tmp_path / "d.vhd"
    pyvhdx.create(path, size, block_size=block_size)
    before = path.read_bytes()
    footer = before[-FOOTER:]
    assert before[:FOOTER] == footer
    old_end = len(before) - FOOTER
    data = pattern(3000, 1)
    with pyvhdx.open(path, "r+") as img:
        assert img.write_at(2 * block_size + 100, data) == len(data)  # block 2
    after = path.read_bytes()
    stride = 512 + block_size  # bitmap (padded to 512) + data
    assert len(after) == old_end + stride + FOOTER
    assert after[-FOOTER:] == footer  # moved, unchanged
    assert after[:TABLE] == before[:TABLE]  # footer copy and dynamic header unchanged
    assert bat(path, 4) == [0xFFFFFFFF, 0xFFFFFFFF, old_end // 512, 0xFFFFFFFF]
    bitmap = after[old_end : old_end + 512]
    assert bitmap == b"\xff" * 512  # all ones, as QEMU writes (pitfall 18)
    block = after[old_end + 512 : old_end + stride]
    expected = bytearray(block_size)
    expected[100 : 100 + len(data)] = data
    assert block == bytes(expected)

    # In place: the file does not grow and only the written bytes change.
    more = pattern(700, 2)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(2 * block_size + 5000, more)
    again = path.read_bytes()
    assert len(again) == len(after)
    diff = np.flatnonzero(np.frombuffer(again, np.uint8) != np.frombuffer(after, np.uint8))
    lo = old_end + 512 + 5000
    assert diff.size and diff.min() >= lo and diff.max() < lo + len(more)

    model = bytearray(size)
    model[2 * block_size + 100 : 2 * block_size + 100 + len(data)] = data
    model[2 * block_size + 5000 : 2 * block_size + 5000 + len(more)] = more
    with pyvhdx.open(path, strict=True) as img:
        assert img.read_at(0, size) == bytes(model)
        assert not img.info().problems
    assert qemu_size(path) == size
    assert qemu_raw(path, tmp_path / "q.raw") == bytes(model)
    assert pyvhdi_read(path) == bytes(model)


def test_write_across_blocks_and_bat_sectors(tmp_path: Path) -> None:
    """One write allocating blocks 127 and 128, whose BAT entries lie in two BAT
    sectors, between an allocated block 126 (in place) and the disk's end."""
    block = 4 * KiB
    size = 130 * block
    path = tmp_path / "d.vhd"
    pyvhdx.create(path, size, block_size=block)
    model = bytearray(size)
    first = pattern(block, 3)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(126 * block, first)
        model[126 * block : 127 * block] = first
        data = pattern(2 * block + 600, 4)
        img.write_at(126 * block + 300, data)
        model[126 * block + 300 : 126 * block + 300 + len(data)] = data
        assert img.read_at(0, size) == bytes(model)
    entries = bat(path, 130)
    assert [i for i, e in enumerate(entries) if e != 0xFFFFFFFF] == [126, 127, 128]
    assert entries[128] == entries[127] + (512 + block) // 512
    assert qemu_raw(path, tmp_path / "q.raw") == bytes(model)
    assert pyvhdi_read(path) == bytes(model)


def test_many_writes_match_a_model(tmp_path: Path) -> None:
    size = 11 * MiB + 7 * 512
    path = tmp_path / "d.vhd"
    pyvhdx.create(path, size, block_size=MiB)
    model = bytearray(size)
    rng = np.random.default_rng(5)
    for round_ in range(3):
        with pyvhdx.open(path, "r+") as img:
            for _ in range(15):
                off = int(rng.integers(0, size))
                n = min(size - off, int(rng.integers(1, 3 * MiB)))
                data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
                img.write_at(off, data)
                model[off : off + n] = data
            assert img.read_at(0, size) == bytes(model), f"round {round_}"
    assert qemu_size(path) == size
    assert qemu_raw(path, tmp_path / "q.raw") == bytes(model)
    assert pyvhdi_read(path) == bytes(model)


def test_clear_bitmap_bits_are_set(tmp_path: Path) -> None:
    """A block whose sector bitmap is not all ones (as other tools write them):
    an in-place write sets exactly the written sectors' bits, MSB first (pitfall 17)."""
    block = 64 * KiB  # 128 sectors: a 16-byte bitmap, padded to 512
    path = tmp_path / "d.vhd"
    pyvhdx.create(path, 2 * block, block_size=block)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, bytes(block))
    sector = bat(path, 2)[0]
    with open(path, "r+b") as f:
        f.seek(sector * 512)
        f.write(bytes(16))  # every sector "never written"
    data = pattern(3 * 512 - 10, 6)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(9 * 512 + 10, data)  # sectors 9, 10 and 11
        img.write_at(0, b"x")  # sector 0
    with open(path, "rb") as f:
        f.seek(sector * 512)
        bits = np.unpackbits(np.frombuffer(f.read(16), np.uint8))
    assert np.flatnonzero(bits).tolist() == [0, 9, 10, 11]
    with pyvhdx.open(path) as img:
        assert img.read_at(9 * 512 + 10, len(data)) == data


def test_allocation_goes_after_every_block(tmp_path: Path) -> None:
    """Space between the last block and the footer (left by a crash, or by another
    tool) is skipped, never reused while something may point into it."""
    path = tmp_path / "d.vhd"
    pyvhdx.create(path, 4 * MiB, block_size=MiB)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, b"a" * 512)
    raw = bytearray(path.read_bytes())
    footer = bytes(raw[-FOOTER:])
    raw[-FOOTER:] = b"\xee" * 4096  # an orphaned area after the last block
    raw += footer
    path.write_bytes(raw)
    end = len(raw) - FOOTER
    with pyvhdx.open(path, "r+") as img:
        img.write_at(MiB, b"b" * 512)
    assert bat(path, 4)[1] == end // 512
    with pyvhdx.open(path) as img:
        assert img.read_at(MiB, 513) == b"b" * 512 + b"\0"
    assert qemu_raw(path, tmp_path / "q.raw")[MiB : MiB + 513] == b"b" * 512 + b"\0"


@pytest.mark.parametrize("damage", ["footer-missing", "footer-511-bytes"])
def test_allocation_repairs_the_end_footer(tmp_path: Path, damage: str) -> None:
    """An image whose end footer is missing (read through the copy at offset 0)
    or 511 bytes long (before Virtual PC 2004) gets a full footer at its new end."""
    path = tmp_path / "d.vhd"
    pyvhdx.create(path, 4 * MiB, block_size=MiB)
    raw = path.read_bytes()
    footer = raw[-FOOTER:]
    path.write_bytes(raw[:-FOOTER] if damage == "footer-missing" else raw[:-1])
    missing = damage == "footer-missing"
    with (
        pytest.warns(PyvhdxWarning, match="missing") if missing else contextlib.nullcontext(),
        pyvhdx.open(path, "r+") as img,
    ):
        assert bool(img.info().problems) == missing
        img.write_at(MiB + 1, b"new")
    after = path.read_bytes()
    assert after[-FOOTER:] == footer and after[:FOOTER] == footer
    assert bat(path, 4)[1] == (len(raw) - FOOTER) // 512
    with pyvhdx.open(path, strict=True) as img:
        assert not img.info().problems
        assert img.read_at(MiB, 5) == b"\0new\0"
    assert qemu_raw(path, tmp_path / "q.raw")[MiB : MiB + 5] == b"\0new\0"


# -- fixed disks -------------------------------------------------------------------------


def test_fixed_writes_in_place(tmp_path: Path) -> None:
    size = 5 * MiB + 512
    path = tmp_path / "f.vhd"
    pyvhdx.create(path, size, disk_type="fixed")
    footer = path.read_bytes()[-FOOTER:]
    model = bytearray(size)
    with pyvhdx.open(path, "r+") as img:
        for off, n, seed in ((0, 4096, 7), (MiB - 7, 3 * MiB, 8), (size - 100, 100, 9)):
            data = pattern(n, seed)
            img.write_at(off, data)
            model[off : off + n] = data
    raw = path.read_bytes()
    assert len(raw) == size + FOOTER
    assert raw[:size] == bytes(model)  # the data area is the disk
    assert raw[size:] == footer
    assert qemu_raw(path, tmp_path / "q.raw") == bytes(model)
    assert pyvhdi_read(path) == bytes(model)


# -- refusals change nothing -------------------------------------------------------------


@pytest.fixture(params=["dynamic", "fixed"])
def written(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"{request.param}.vhd"
    pyvhdx.create(path, 4 * MiB, disk_type=request.param, block_size=None)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(MiB - 10, pattern(100, 10))
    return path


def test_errors_change_nothing(written: Path) -> None:
    before = sha(written)
    size = 4 * MiB
    with pyvhdx.open(written, "r+") as img:
        for offset, length in ((size - 10, 11), (size, 1), (-1, 10), (2 * size, 512)):
            with pytest.raises(InvalidArgumentError):
                img.write_at(offset, bytes(length))
        with pytest.raises(TypeError):
            img.write_at(0, "not bytes")
        assert img.write_at(0, b"") == 0
        s = img.stream()
        s.seek(size)
        with pytest.raises(InvalidArgumentError):
            s.write(b"x")
    assert sha(written) == before
    with pyvhdx.open(written) as img:
        with pytest.raises(ReadOnlyError):
            img.write_at(0, b"x")
        with pytest.raises(Exception):  # noqa: B017 - io.UnsupportedOperation
            img.stream().write(b"x")
    assert sha(written) == before


def test_read_write_open_without_writes_changes_nothing(written: Path) -> None:
    before = sha(written)
    with pyvhdx.open(written, "r+") as img:
        img.read_at(0, 4 * MiB)
        img.flush()
    assert sha(written) == before


def test_closed_image_refuses_writes(written: Path) -> None:
    img = pyvhdx.open(written, "r+")
    img.close()
    with pytest.raises(ValueError):
        img.write_at(0, b"x")


def test_differencing_without_parent_refuses_write_open(tmp_path: Path) -> None:
    written = tmp_path / "child.vhd"
    pyvhdx.create(written, 4 * MiB)
    raw = bytearray(written.read_bytes())
    for at in (0, len(raw) - FOOTER):
        struct.pack_into(">I", raw, at + 60, 4)  # Disk Type: differencing
        struct.pack_into(">I", raw, at + 64, vhd_sum(bytes(raw[at : at + FOOTER]), 64))
    written.write_bytes(raw)
    before = sha(written)
    # A differencing disk opens for writing only with its parent; this one names none.
    with pytest.raises(pyvhdx.ParentError):
        pyvhdx.open(written, "r+")
    assert sha(written) == before


def test_context_manager_flushes_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    pyvhdx.create(path, 4 * MiB)
    calls: list[str] = []
    with pyvhdx.open(path, "r+") as img:
        source: Any = img.handler.source
        real_flush, real_close = source.flush, source.close

        def flush() -> None:
            calls.append("flush")
            real_flush()

        def close() -> None:
            calls.append("close")
            real_close()

        source.flush, source.close = flush, close
        s = img.stream()
        s.seek(MiB - 3)
        assert s.write(b"hello world") == 11
        calls.clear()
    assert img.closed
    assert calls[-2:] == ["flush", "close"]
    with pyvhdx.open(path) as ro:
        assert ro.read_at(MiB - 3, 11) == b"hello world"
    assert qemu_raw(path, tmp_path / "q.raw")[MiB - 3 : MiB + 8] == b"hello world"


@pytest.mark.parametrize("end_sector", [0xFFFFFFFE, 0xFFFFFFFF])
def test_bat_beyond_2tib_is_refused(tmp_path: Path, end_sector: int) -> None:
    """BAT entries are u32 sector numbers, all ones meaning "unused": a block can
    start at sector 0xFFFFFFFE at most. A dynamic disk whose footer (where the next
    block goes) sits there allocates; one sector further it refuses, unchanged."""
    path = tmp_path / "big.vhd"
    pyvhdx.create(path, 4 * MiB)
    raw = path.read_bytes()
    footer = raw[-FOOTER:]
    end = end_sector * 512
    try:
        with open(path, "r+b") as f:
            f.truncate(end)
            f.seek(end)
            f.write(footer)
    except OSError as exc:  # a file system without 2 TiB sparse files
        pytest.skip(f"cannot make a sparse 2 TiB file here: {exc}")

    def state() -> tuple[int, bytes]:
        with open(path, "rb") as f:
            return os.path.getsize(path), f.read(4096)

    before = state()
    if end_sector == 0xFFFFFFFE:
        with pyvhdx.open(path, "r+") as img:
            img.write_at(0, b"x")
        assert bat(path, 2) == [end_sector, 0xFFFFFFFF]
        with pyvhdx.open(path) as img:
            assert img.read_at(0, 2) == b"x\0"
        return
    with pyvhdx.open(path, "r+") as img, pytest.raises(UnsupportedFeatureError, match="2 TiB"):
        img.write_at(0, b"x")
    assert state() == before
    with open(path, "rb") as tail:
        tail.seek(end)
        assert tail.read() == footer


# -- qemu-img in both directions, and images made by Windows --------------------------


def test_qemu_writes_pyvhdx_reads(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    pyvhdx.create(path, 8 * MiB + 1024)
    qemu_io = shutil.which("qemu-io")
    if qemu_io is None:
        pytest.skip("qemu-io not installed (Debian qemu-utils)")
    for cmd in ("write -P 0xab 1M 64k", "write -P 0x11 2093056 8192", "write -P 0x5a 8M 1k"):
        subprocess.run(
            [qemu_io, "-f", "vpc", "-c", cmd, str(path)], check=True, capture_output=True
        )
    with pyvhdx.open(path, "r+") as img:  # then pyvhdx writes into qemu's blocks
        img.write_at(MiB + 100, b"\x22" * 100)
        img.write_at(4 * MiB, b"\x33" * 4096)
    model = bytearray(8 * MiB + 1024)
    model[MiB : MiB + 64 * KiB] = b"\xab" * (64 * KiB)
    model[2093056 : 2093056 + 8192] = b"\x11" * 8192
    model[8 * MiB : 8 * MiB + 1024] = b"\x5a" * 1024
    model[MiB + 100 : MiB + 200] = b"\x22" * 100
    model[4 * MiB : 4 * MiB + 4096] = b"\x33" * 4096
    with pyvhdx.open(path) as img:
        assert img.read_at(0, len(model)) == bytes(model)
    assert qemu_raw(path, tmp_path / "q.raw") == bytes(model)


def test_pyvhdx_writes_into_qemu_images(tmp_path: Path) -> None:
    qemu = find_qemu_img()
    for subformat in ("dynamic", "fixed"):
        path = tmp_path / f"{subformat}.vhd"
        subprocess.run(
            [qemu, "create", "-q", "-f", "vpc", "-o", f"subformat={subformat}", str(path), "6M"],
            check=True,
        )
        with pyvhdx.open(path) as img:
            size = img.virtual_size
        assert qemu_size(path) == size  # qemu's CHS-rounded size is its CurrentSize
        model = bytearray(size)
        with pyvhdx.open(path, "r+") as img:
            for off, n, seed in ((0, 700, 1), (2 * MiB - 5, 10, 2), (size - 512, 512, 3)):
                data = pattern(n, seed)
                img.write_at(off, data)
                model[off : off + n] = data
        assert qemu_raw(path, tmp_path / "q.raw") == bytes(model), subformat
        assert pyvhdi_read(path) == bytes(model), subformat


WINDOWS_DYNAMIC = ["dissect.hypervisor/dynamic.vhd.gz", "node-vhd/dynamic.vhd.gz"]


@pytest.mark.realworld
@pytest.mark.parametrize("name", WINDOWS_DYNAMIC)
def test_write_into_windows_made_dynamic_vhd(name: str, tmp_path: Path) -> None:
    """Windows places block data 4 KiB-aligned; pyvhdx writes in place into its
    blocks and appends new ones after the last, and every reader agrees."""
    entries = {e["file"]: e for e in load_expected()}
    if name not in entries:
        pytest.skip(f"{name} is not in expected.json")
    path = decompress_realworld(entries[name], tmp_path)  # a sparse copy of our own
    with pyvhdx.open(path) as img:
        size = img.virtual_size
        model = bytearray(img.read_at(0, size))
        codes = img.handler.table.codes(0, img.handler.table.block_count).tolist()
    assert hashlib.sha256(model).hexdigest() == entries[name]["content_sha256"]
    used = next(i for i, c in enumerate(codes) if c >= 0)
    free = next(i for i, c in enumerate(codes) if c < 0)
    block = 2 * MiB
    with pyvhdx.open(path, "r+") as img:
        for off, n, seed in (
            (used * block + 4096, 10000, 11),
            (free * block + 77, 3000, 12),
            ((free + 1) * block - 100, 200, 13),
            (size - 512, 512, 14),
        ):
            data = pattern(n, seed)
            img.write_at(off, data)
            model[off : off + n] = data
    with pyvhdx.open(path, strict=True) as img:
        assert img.read_at(0, size) == bytes(model)
    assert qemu_raw(path, tmp_path / "q.raw") == bytes(model)
    assert pyvhdi_read(path) == bytes(model)
