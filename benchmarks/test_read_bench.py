"""Read benchmarks: pyvhdx against a raw-file read of the same bytes (and pyvhdi).

Run with ``python -m pytest benchmarks`` (see benchmarks/README.md). Each group has
the raw-file reference, so the ratio pyvhdx/raw is read off the same table. Content
is checked once per benchmark, outside the timed function.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest

import pyvhdx
from benchmarks.conftest import RANDOM_READ_SIZE, BenchImages

SEQ_CHUNK = 1024 * 1024
FORMATS = ["vhdx", "vhd"]


# --- read loops (the timed functions) -------------------------------------------


def _seq_raw(path: Any, buf: bytearray) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def _seq_pyvhdx(img: Any, size: int, view: memoryview) -> None:
    for offset in range(0, size, SEQ_CHUNK):
        img.readinto_at(offset, view)


def _seq_pyvhdi(f: Any, size: int) -> None:
    for offset in range(0, size, SEQ_CHUNK):
        f.read_buffer_at_offset(SEQ_CHUNK, offset)


def _random_raw(fd: int, offsets: list[int]) -> None:
    for offset in offsets:
        os.pread(fd, RANDOM_READ_SIZE, offset)


def _random_pyvhdx(img: Any, offsets: list[int], view: memoryview) -> None:
    for offset in offsets:
        img.readinto_at(offset, view)


def _random_read_at(img: Any, offsets: list[int]) -> None:
    read_at = img.read_at
    for offset in offsets:
        read_at(offset, RANDOM_READ_SIZE)


def _random_pyvhdi(f: Any, offsets: list[int]) -> None:
    for offset in offsets:
        f.read_buffer_at_offset(RANDOM_READ_SIZE, offset)


# --- content checks (not timed) ---------------------------------------------------


def _seq_digest(read: Callable[[int, int], bytes], size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, SEQ_CHUNK):
        digest.update(read(offset, SEQ_CHUNK))
    return digest.hexdigest()


def _random_digest(read: Callable[[int, int], bytes], offsets: list[int]) -> str:
    digest = hashlib.sha256()
    for offset in offsets:
        digest.update(read(offset, RANDOM_READ_SIZE))
    return digest.hexdigest()


def _raw_random_digest(bench: BenchImages, offsets: list[int]) -> str:
    fd = os.open(bench.raw, os.O_RDONLY)
    try:
        return _random_digest(lambda o, n: os.pread(fd, n, o), offsets)
    finally:
        os.close(fd)


def _pyvhdx_reader(img: Any) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        buf = bytearray(length)
        assert img.readinto_at(offset, buf) == length
        return bytes(buf)

    return read


# --- sequential 1 MiB reads ---------------------------------------------------------


@pytest.mark.benchmark(group="seq-1MiB")
def test_seq_raw(benchmark: Any, bench_images: BenchImages) -> None:
    buf = bytearray(SEQ_CHUNK)
    benchmark(_seq_raw, bench_images.raw, buf)


@pytest.mark.benchmark(group="seq-1MiB")
@pytest.mark.parametrize("fmt", FORMATS)
def test_seq_pyvhdx(benchmark: Any, bench_images: BenchImages, fmt: str) -> None:
    with pyvhdx.open(bench_images.images[fmt]) as img:
        assert img.virtual_size == bench_images.size
        assert _seq_digest(_pyvhdx_reader(img), bench_images.size) == bench_images.raw_sha256
        view = memoryview(bytearray(SEQ_CHUNK))
        benchmark(_seq_pyvhdx, img, bench_images.size, view)


@pytest.mark.benchmark(group="seq-1MiB")
@pytest.mark.parametrize("fmt", FORMATS)
def test_seq_pyvhdi(benchmark: Any, bench_images: BenchImages, pyvhdi: Any, fmt: str) -> None:
    f = pyvhdi.file()
    f.open(str(bench_images.images[fmt]))
    try:
        assert f.get_media_size() == bench_images.size
        digest = _seq_digest(lambda o, n: f.read_buffer_at_offset(n, o), bench_images.size)
        assert digest == bench_images.raw_sha256
        benchmark(_seq_pyvhdi, f, bench_images.size)
    finally:
        f.close()


# --- 4 KiB random reads ---------------------------------------------------------------


@pytest.mark.benchmark(group="random-4KiB")
def test_random_raw(benchmark: Any, bench_images: BenchImages, random_offsets: list[int]) -> None:
    fd = os.open(bench_images.raw, os.O_RDONLY)
    try:
        benchmark(_random_raw, fd, random_offsets)
    finally:
        os.close(fd)


@pytest.mark.benchmark(group="random-4KiB")
@pytest.mark.parametrize("api", ["readinto_at", "read_at"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_random_pyvhdx(
    benchmark: Any, bench_images: BenchImages, random_offsets: list[int], fmt: str, api: str
) -> None:
    """``readinto_at`` into one buffer, and the bytes API ``read_at``, which returns
    new bytes as ``os.pread`` and pyvhdi do in this group."""
    expected = _raw_random_digest(bench_images, random_offsets)
    with pyvhdx.open(bench_images.images[fmt]) as img:
        if api == "read_at":
            assert _random_digest(img.read_at, random_offsets) == expected
            benchmark(_random_read_at, img, random_offsets)
        else:
            assert _random_digest(_pyvhdx_reader(img), random_offsets) == expected
            view = memoryview(bytearray(RANDOM_READ_SIZE))
            benchmark(_random_pyvhdx, img, random_offsets, view)


@pytest.mark.benchmark(group="random-4KiB")
@pytest.mark.parametrize("fmt", FORMATS)
def test_random_pyvhdi(
    benchmark: Any, bench_images: BenchImages, random_offsets: list[int], pyvhdi: Any, fmt: str
) -> None:
    expected = _raw_random_digest(bench_images, random_offsets)
    f = pyvhdi.file()
    f.open(str(bench_images.images[fmt]))
    try:
        digest = _random_digest(lambda o, n: f.read_buffer_at_offset(n, o), random_offsets)
        assert digest == expected
        benchmark(_random_pyvhdi, f, random_offsets)
    finally:
        f.close()
