"""VHDX images made by qemu-img from a known raw disk, read back by pyvhdx.

Oracle: the raw source itself (qemu-img convert must preserve it) and
``qemu-img info --output=json``; libvhdi (pyvhdi) is a second opinion on the size
and on sample reads.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from tests.conftest import (
    MiB,
    TiB,
    make_raw,
    qemu_convert,
    qemu_create,
    qemu_info,
    random_reads,
    sha256_of_file,
    sha256_of_image,
    sha256_of_stream,
)

pytestmark = pytest.mark.oracle

# An odd chunk size, so that full reads also start and end off block boundaries.
ODD_CHUNK = 3 * MiB + 4096 + 17


@dataclass(frozen=True)
class Case:
    id: str
    size: int
    options: dict[str, object]
    block_size: int | None = None  # expected block size, when the case fixes it
    seed: int = 1


CASES = [
    Case("dynamic-bs1M", 40 * MiB, {"subformat": "dynamic", "block_size": "1M"}, 1 * MiB),
    Case("dynamic-bs2M", 40 * MiB, {"subformat": "dynamic", "block_size": "2M"}, 2 * MiB),
    Case("dynamic-bs8M", 40 * MiB, {"subformat": "dynamic", "block_size": "8M"}, 8 * MiB),
    Case("dynamic-bs32M", 40 * MiB, {"subformat": "dynamic", "block_size": "32M"}, 32 * MiB),
    Case("dynamic-bs256M", 40 * MiB, {"subformat": "dynamic", "block_size": "256M"}, 256 * MiB),
    # qemu-img warns against block_state_zero=off with convert to dynamic, so
    # both zero-block policies are exercised on fixed images.
    Case("fixed-zero-on", 40 * MiB, {"subformat": "fixed", "block_state_zero": True}, seed=2),
    Case(
        "fixed-zero-off-bs8M",
        40 * MiB,
        {"subformat": "fixed", "block_state_zero": False, "block_size": "8M"},
        8 * MiB,
        seed=3,
    ),
    # Virtual sizes that are not a multiple of the block size.
    Case(
        "dynamic-bs32M-odd",
        40 * MiB + 3 * 4096,
        {"subformat": "dynamic", "block_size": "32M"},
        32 * MiB,
        seed=4,
    ),
    Case("dynamic-bs1M-odd", 5 * MiB + 512, {"subformat": "dynamic", "block_size": "1M"}, MiB, 5),
    Case("fixed-bs1M-odd", 5 * MiB + 512, {"subformat": "fixed", "block_size": "1M"}, MiB, 6),
    Case("dynamic-log4M", 12 * MiB, {"subformat": "dynamic", "log_size": "4M"}, seed=7),
]


@dataclass(frozen=True)
class Made:
    case: Case
    raw: Path
    raw_sha256: str
    image: Path


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def made(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Made:
    case: Case = request.param
    tmp = tmp_path_factory.mktemp(f"qemu-vhdx-{case.id}")
    raw = make_raw(tmp / "source.raw", case.size, seed=case.seed)
    image = qemu_convert(raw, tmp / "image.vhdx", "vhdx", case.options)
    return Made(case, raw, sha256_of_file(raw), image)


def test_geometry(made: Made) -> None:
    info = qemu_info(made.image)
    assert info["format"] == "vhdx"
    assert info["virtual-size"] == made.case.size
    with pyvhdx.open(made.image) as img:
        assert img.virtual_size == info["virtual-size"]
        assert img.format.value == "vhdx"
        assert img.disk_type.value == made.case.options["subformat"]
        if made.case.block_size is not None:
            assert img.block_size == made.case.block_size
        assert img.logical_sector_size == 512
        assert img.info().log_replayed is False


def test_full_read(made: Made) -> None:
    with pyvhdx.open(made.image) as img:
        assert sha256_of_image(img, chunk_size=4 * MiB) == made.raw_sha256
        assert sha256_of_image(img, chunk_size=ODD_CHUNK) == made.raw_sha256


def test_stream_digest(made: Made) -> None:
    with pyvhdx.open(made.image) as img, img.stream() as stream:
        assert isinstance(stream, io.RawIOBase)
        if hasattr(hashlib, "file_digest"):  # Python >= 3.11
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
        else:
            digest = sha256_of_stream(stream)
        assert digest == made.raw_sha256
        assert stream.tell() == made.case.size
        assert stream.read(1) == b""


def test_random_reads(made: Made) -> None:
    block = made.case.block_size or 32 * MiB
    reads = random_reads(made.case.size, 200, seed=made.case.seed, boundaries=block)
    fd = os.open(made.raw, os.O_RDONLY)
    try:
        with pyvhdx.open(made.image) as img:
            for i, (offset, length) in enumerate(reads):
                expected = os.pread(fd, length, offset)
                if i % 2:
                    buf = bytearray(length)
                    assert img.readinto_at(offset, buf) == length
                    got = bytes(buf)
                else:
                    got = img.read_at(offset, length)
                assert got == expected, f"read_at({offset:#x}, {length}) differs"
    finally:
        os.close(fd)


def test_pyvhdi_agrees(made: Made, pyvhdi: Any) -> None:
    f = pyvhdi.file()
    f.open(str(made.image))
    try:
        with pyvhdx.open(made.image) as img:
            assert f.get_media_size() == img.virtual_size
            for offset, length in random_reads(made.case.size, 20, seed=99):
                assert img.read_at(offset, length) == f.read_buffer_at_offset(length, offset)
    finally:
        f.close()


def test_empty_64tib(tmp_path: Path) -> None:
    size = 64 * TiB
    path = qemu_create(tmp_path / "huge.vhdx", "vhdx", "64T")
    assert qemu_info(path)["virtual-size"] == size
    start = time.monotonic()
    with pyvhdx.open(path) as img:
        assert img.virtual_size == size
        assert img.disk_type.value == "dynamic"
        for offset, length in [
            (0, 4096),
            (1 * MiB - 100, 200),
            (32 * TiB + 12345, 70000),
            (size - 4 * MiB, 4 * MiB),
            (size - 512, 512),
        ]:
            assert img.read_at(offset, length) == bytes(length)
        with img.stream() as stream:
            assert stream.seek(0, io.SEEK_END) == size
            stream.seek(size - 512)
            assert stream.read(4096) == bytes(512)
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"opening and reading an empty 64 TiB image took {elapsed:.1f} s"
