"""Reading a source image for a copy: what :func:`pyvhdx.convert` shares between
a file destination (:mod:`pyvhdx.convert`) and an Azure page blob (:mod:`pyvhdx.azure`).

:func:`read_ahead` yields the non-zero runs of a source's data: the allocation
map (and SEEK_DATA/SEEK_HOLE) says what to read (:func:`data_ranges`), worker
threads read it, each on its own view of the source, and the calling thread
scans for zeros (:func:`nonzero_runs`). Also the destination's sector sizes
(:func:`destination_sector_sizes`) and the record of a conversion
(:class:`ConvertResult`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .constants import DiskType, ImageFormat, RunKind
from .errors import InvalidArgumentError, PyvhdxWarning
from .source import data_spans

if TYPE_CHECKING:
    from .image import DiskImage

__all__ = [
    "BUFFERS",
    "CHUNK",
    "READERS",
    "ZERO_GRAIN",
    "ConvertResult",
    "data_ranges",
    "destination_sector_sizes",
    "nonzero_runs",
    "plan_chunks",
    "read_ahead",
]

CHUNK = 4 << 20  # copy buffer
READERS = max(1, min(4, os.cpu_count() or 1))  # reader threads of read_ahead
BUFFERS = 2  # chunks in flight per reader thread
ZERO_GRAIN = 64 << 10  # zero detection granularity: all-zero 64 KiB pieces are not written


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`pyvhdx.convert` did."""

    destination: Path
    format: ImageFormat
    disk_type: DiskType
    virtual_size: int
    bytes_read: int
    bytes_written: int


def data_ranges(img: DiskImage) -> Iterator[tuple[int, int]]:
    """``(start, length)`` of the virtual ranges that may hold non-zero bytes.

    For VHD/VHDX the allocation map says (zero and unmapped runs are left out,
    parent runs are kept). Holes of the image file read as zeros too, so where
    the OS reports them (SEEK_DATA/SEEK_HOLE) they are left out: of a raw file,
    and of the data runs of an image with no log replayed over its bytes. A
    sparse image file (qemu-img leaves the unwritten parts of its blocks as
    holes) is then read only where it stores something, as qemu-img does.
    """
    source = img.handler.source
    fd = getattr(source, "fd", None)
    if getattr(source, "overlay", None) is not None:
        fd = None  # the overlay may put data over a hole
    if img.format is ImageFormat.RAW:
        size = img.virtual_size
        if fd is None:
            yield 0, size
            return
        for begin, end in data_spans(fd, 0, size):
            yield begin, end - begin
        return
    for ext in img.extents():
        if ext.kind is RunKind.DATA and fd is not None and ext.file_offset is not None:
            shift = ext.start - ext.file_offset
            for begin, end in data_spans(fd, ext.file_offset, ext.file_offset + ext.length):
                yield begin + shift, end - begin
        elif ext.kind in (RunKind.DATA, RunKind.PARENT):
            yield ext.start, ext.length


def destination_sector_sizes(
    img: DiskImage, fmt: ImageFormat, logical: int | None, physical: int | None
) -> tuple[int, int]:
    """The destination's sector sizes: as given, else the source's (VHDX), else 512/4096."""
    vhdx_source = img.format is ImageFormat.VHDX
    if fmt is ImageFormat.VHD:
        if logical not in (None, 512):
            raise InvalidArgumentError(f"a VHD has 512-byte sectors, not {logical}")
        if vhdx_source and img.logical_sector_size != 512:
            warnings.warn(
                f"{img.name} has {img.logical_sector_size}-byte logical sectors and a VHD "
                "has 512-byte ones: a partition table or file system that counts "
                f"{img.logical_sector_size}-byte sectors will not read right; keep VHDX",
                PyvhdxWarning,
                stacklevel=3,
            )
        return 512, 512
    if logical is None:
        logical = img.logical_sector_size if vhdx_source else 512
    if physical is None:
        physical = img.physical_sector_size if vhdx_source else 4096
    return logical, physical


def plan_chunks(img: DiskImage, step: int) -> Iterator[tuple[int, int]]:
    """Data ranges cut at multiples of ``step`` (the destination block size)."""
    for start, length in data_ranges(img):
        pos, end = start, start + length
        while pos < end:
            stop = min(end, (pos // step + 1) * step)
            yield pos, stop - pos
            pos = stop


_ZERO_GRAIN_BYTES = bytes(ZERO_GRAIN)


def nonzero_runs(buf: bytearray, n: int) -> list[tuple[int, int]]:
    """``(begin, end)`` of the runs of ``buf[:n]`` holding non-zero bytes, in ZERO_GRAIN steps.

    One ``memcmp`` per grain against a zero grain (``bytearray.startswith``): it
    stops at the first non-zero byte, so a data grain costs almost nothing and
    only the zero grains are scanned whole.
    """
    zeros = _ZERO_GRAIN_BYTES
    runs: list[tuple[int, int]] = []
    begin = -1
    for pos in range(0, n, ZERO_GRAIN):
        end = min(n, pos + ZERO_GRAIN)
        zero = (
            buf.startswith(zeros, pos, end)
            if end - pos == ZERO_GRAIN
            else buf.startswith(memoryview(zeros)[: end - pos], pos, end)
        )
        if zero:
            if begin >= 0:
                runs.append((begin, pos))
                begin = -1
        elif begin < 0:
            begin = pos
    if begin >= 0:
        runs.append((begin, n))
    return runs


def read_ahead(
    img: DiskImage,
    step: int,
    stats: dict[str, int],
    opener: Callable[[], DiskImage] | None = None,
) -> Iterator[tuple[int, memoryview, bool]]:
    """``(start, data, True)`` for every non-zero run of data, read by worker threads.

    All-zero stretches (in ZERO_GRAIN steps) are left out: a new image and a
    sparse raw file read as zeros there already.

    ``img`` plans the chunks in the calling thread. The reads run in
    ``READERS`` worker threads, each on its own image from ``opener`` (opened
    here, so no image is ever used by two threads), or in one worker on ``img``
    when there is no opener. Positional reads, the zero scan and the writes all
    release the GIL or are short, so reading ahead overlaps with the caller
    writing, as qemu-img overlaps its I/O. At most ``BUFFERS`` chunks per
    worker are in flight; a chunk's buffer is reused once the caller asks for
    the next one.
    """
    readers: list[DiskImage] = []
    try:
        if opener is not None:
            with warnings.catch_warnings():  # the first open already warned
                warnings.simplefilter("ignore", PyvhdxWarning)
                for _ in range(READERS):
                    readers.append(opener())
        yield from _pipeline(img, readers or [img], step, stats)
    finally:
        for other in readers:
            other.close()


_Task = tuple["concurrent.futures.Future[int]", int, int, bytearray]


def _pipeline(
    img: DiskImage, readers: list[DiskImage], step: int, stats: dict[str, int]
) -> Iterator[tuple[int, memoryview, bool]]:
    """The body of :func:`read_ahead`: one thread per image in ``readers``."""
    tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()

    def work(reader: DiskImage) -> None:
        while (task := tasks.get()) is not None:
            future, start, length, buf = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(reader.readinto_at(start, memoryview(buf)[:length]))
            except BaseException as exc:  # raised in the consumer by future.result()
                future.set_exception(exc)

    threads = [
        threading.Thread(target=work, args=(r,), name="pyvhdx-convert-reader", daemon=True)
        for r in readers
    ]
    for t in threads:
        t.start()
    free = [bytearray(step) for _ in range(BUFFERS * len(readers))]
    pending: collections.deque[tuple[int, bytearray, concurrent.futures.Future[int]]]
    pending = collections.deque()
    plan = plan_chunks(img, step)
    try:
        while True:
            while free:  # keep every buffer busy
                nxt = next(plan, None)
                if nxt is None:
                    break
                buf = free.pop()
                future: concurrent.futures.Future[int] = concurrent.futures.Future()
                tasks.put((future, nxt[0], nxt[1], buf))
                pending.append((nxt[0], buf, future))
            if not pending:
                return
            start, buf, future = pending.popleft()
            n = future.result()
            stats["read"] += n
            mv = memoryview(buf)
            # The zero scan runs here, not in the readers: the readers' preadv and
            # this thread's scan and writes then share the cores about evenly.
            for a, z in nonzero_runs(buf, n):
                yield start + a, mv[a:z], True
            free.append(buf)
    finally:
        for _, _, future in pending:
            future.cancel()
        for _ in threads:
            tasks.put(None)
        for t in threads:
            t.join()
