"""Convert a disk image between raw, VHD and VHDX.

Sparse by design: the source's allocation map (and SEEK_DATA/SEEK_HOLE for a raw
source) says what to read; unallocated ranges are never read, all-zero chunks are
not written into a dynamic destination, and a raw destination gets holes, not
zeros. The destination is built under a temporary name in its own directory and
renamed into place only when complete, so an error or Ctrl-C never leaves a
half-written file under the destination name. Memory stays bounded: one copy
buffer, and the allocation map is walked window by window.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .constants import DiskType, ImageFormat, RunKind
from .errors import InvalidArgumentError
from .image import DiskImage, open_image

__all__ = ["ConvertResult", "convert_image", "data_ranges"]

CHUNK = 4 << 20  # copy buffer
_BUFFERS = 4  # chunks in flight between the reader thread and the writer
ZERO_GRAIN = 64 << 10  # zero detection granularity: all-zero 64 KiB pieces are not written
ProgressCallback = Callable[[int], None]  # called with bytes of the source processed


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert_image` did."""

    destination: Path
    format: ImageFormat
    disk_type: DiskType
    virtual_size: int
    bytes_read: int
    bytes_written: int


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _format_from_name(path: Path) -> ImageFormat:
    suffix = path.suffix.lower()
    if suffix in (".vhd", ".avhd"):
        return ImageFormat.VHD
    if suffix in (".vhdx", ".avhdx"):
        return ImageFormat.VHDX
    return ImageFormat.RAW


def data_ranges(img: DiskImage) -> Iterator[tuple[int, int]]:
    """``(start, length)`` of the virtual ranges that may hold non-zero bytes.

    For a raw file the holes come from SEEK_DATA/SEEK_HOLE where the OS has
    them; for VHD/VHDX from the allocation map (zero and unmapped runs are left
    out, parent runs are kept).
    """
    h = img.handler
    fd = getattr(h.source, "fd", None)
    if img.format is ImageFormat.RAW and fd is not None and hasattr(os, "SEEK_DATA"):
        size = img.virtual_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    return
                yield pos, size - pos  # SEEK_DATA unsupported here: read the rest
                return
            if start >= size:
                return
            end = min(size, os.lseek(fd, start, os.SEEK_HOLE))
            yield start, end - start
            pos = end
        return
    for ext in img.extents():
        if ext.kind in (RunKind.DATA, RunKind.PARENT):
            yield ext.start, ext.length


def _noop() -> None:
    return None


def _progress_bar(total: int, enabled: bool | None) -> tuple[ProgressCallback, Callable[[], None]]:
    """A tqdm bar on stderr (when stderr is a terminal, or when forced)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return (lambda n: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return (lambda n: None), (lambda: None)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)
    return bar.update, bar.close


def convert_image(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    format: ImageFormat | str | None = None,
    disk_type: DiskType | str = DiskType.DYNAMIC,
    block_size: int | None = None,
    logical_sector_size: int = 512,
    physical_sector_size: int = 4096,
    src_format: ImageFormat | str | None = None,
    force: bool = False,
    progress: bool | ProgressCallback | None = None,
    sync: bool = True,
) -> ConvertResult:
    """Convert ``src`` into a new image ``dst``.

    Args:
        src: the source image (format detected by content unless ``src_format``).
        dst: the destination path; its format comes from ``format`` or its name
            (``.vhdx``, ``.vhd``, else raw).
        disk_type: ``"dynamic"`` or ``"fixed"`` (ignored for raw).
        block_size: destination block size (VHDX default 32 MiB, VHD 2 MiB).
        logical_sector_size, physical_sector_size: VHDX sector sizes.
        src_format: force the source format.
        force: replace an existing destination.
        progress: a callable given bytes processed, True/False to force a bar
            on stderr, None for a bar only when stderr is a terminal.
        sync: fsync the new image before it is renamed into place (False, as
            ``qemu-img convert`` with its default cache mode, leaves it to the OS).

    Raises:
        FileExistsError: ``dst`` exists and ``force`` is false.
        InvalidArgumentError: parameters the destination format cannot hold.
        PyvhdxError: the source is malformed.
    """
    dst_path = Path(dst)
    fmt = ImageFormat(format) if format is not None else _format_from_name(dst_path)
    disk_type = DiskType(disk_type)
    if disk_type is DiskType.DIFFERENCING:
        raise InvalidArgumentError("convert makes standalone images: fixed or dynamic")
    if dst_path.exists() and not force:
        raise FileExistsError(errno.EEXIST, "destination exists (use force)", str(dst_path))
    if Path(src).resolve() == dst_path.resolve():
        raise InvalidArgumentError("source and destination are the same file")

    with open_image(src, format=src_format) as img:
        size = img.virtual_size
        # VHD and VHDX sizes are whole sectors: round up, the tail reads as zeros.
        sector = logical_sector_size if fmt is ImageFormat.VHDX else 512
        out_size = size if fmt is ImageFormat.RAW else -(-size // sector) * sector
        tmp_fd, tmp_name = tempfile.mkstemp(
            prefix=f".{dst_path.name}.", suffix=".pyvhdx-tmp", dir=dst_path.parent or "."
        )
        os.close(tmp_fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600; a new file gets 0666 & ~umask
        if callable(progress):
            update, close_bar = progress, _noop
        else:
            update, close_bar = _progress_bar(size, progress)
        try:
            if fmt is ImageFormat.RAW:
                counts = _to_raw(img, tmp, update, sync)
            else:
                counts = _to_image(
                    img,
                    tmp,
                    fmt,
                    out_size,
                    disk_type,
                    block_size,
                    logical_sector_size,
                    physical_sector_size,
                    update,
                    sync,
                )
            os.replace(tmp, dst_path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        finally:
            close_bar()
    return ConvertResult(dst_path, fmt, disk_type, out_size, *counts)


def _chunks(img: DiskImage, step: int) -> Iterator[tuple[int, int]]:
    """Data ranges cut at multiples of ``step`` (the destination block size)."""
    for start, length in data_ranges(img):
        pos, end = start, start + length
        while pos < end:
            stop = min(end, (pos // step + 1) * step)
            yield pos, stop - pos
            pos = stop


_DONE = object()


def _nonzero_runs(mv: memoryview) -> list[tuple[int, int]]:
    """``(begin, end)`` of the runs of ``mv`` holding non-zero bytes, in ZERO_GRAIN steps."""
    n = len(mv)
    data = np.frombuffer(mv, dtype=np.uint8)
    whole = n // ZERO_GRAIN * ZERO_GRAIN
    flags = np.empty(-(-n // ZERO_GRAIN), dtype=bool)
    if whole:
        # view as u64 words: a faster "any" over each grain
        words = data[:whole].view(np.uint64).reshape(-1, ZERO_GRAIN // 8)
        flags[: whole // ZERO_GRAIN] = words.any(axis=1)
    if whole < n:
        flags[-1] = bool(data[whole:].any())
    edges = np.flatnonzero(np.diff(np.concatenate(([False], flags, [False])).view(np.int8)))
    return [
        (a * ZERO_GRAIN, min(n, z * ZERO_GRAIN))
        for a, z in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True)
    ]


def _read_ahead(
    img: DiskImage, step: int, stats: dict[str, int]
) -> Iterator[tuple[int, memoryview, bool]]:
    """``(start, data, True)`` for every non-zero run of data, read by a second thread.

    All-zero stretches (in ZERO_GRAIN steps) are left out: a new image and a
    sparse raw file read as zeros there already.

    Reading the next chunks (positional reads release the GIL) overlaps with the
    caller writing the current one, as qemu-img overlaps its I/O. At most
    ``_BUFFERS`` chunks are in flight; a chunk's buffer is reused once the caller
    asks for the next one.
    """
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(_BUFFERS):
        free.put(bytearray(step))
    ready: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def reader() -> None:
        try:
            for start, length in _chunks(img, step):
                buf = free.get()
                if stop.is_set():
                    return
                mv = memoryview(buf)[:length]
                n = img.readinto_at(start, mv)
                stats["read"] += n
                ready.put((start, buf, n, _nonzero_runs(mv[:n])))
            ready.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(exc)

    thread = threading.Thread(target=reader, name="pyvhdx-convert-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            start, buf, _n, runs = item
            mv = memoryview(buf)
            for a, z in runs:
                yield start + a, mv[a:z], True
            free.put(buf)
    finally:
        stop.set()
        free.put(bytearray(0))  # wake the reader if it waits for a buffer
        thread.join()


def _to_raw(img: DiskImage, tmp: Path, update: ProgressCallback, sync: bool) -> tuple[int, int]:
    size = img.virtual_size
    stats = {"read": 0}
    written = 0
    done = 0
    fd = os.open(tmp, os.O_WRONLY | getattr(os, "O_BINARY", 0))
    try:
        # Data goes in ascending order, extending the file; the skipped ranges
        # stay holes and the final truncate sets the length.
        for start, chunk, _ in _read_ahead(img, CHUNK, stats):
            n = len(chunk)
            pos = 0
            while pos < n:
                pos += os.pwrite(fd, chunk[pos:], start + pos)
            written += n
            update(start + n - done)
            done = start + n
        os.ftruncate(fd, size)
        if size > done:
            update(size - done)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return stats["read"], written


def _to_image(
    img: DiskImage,
    tmp: Path,
    fmt: ImageFormat,
    size: int,
    disk_type: DiskType,
    block_size: int | None,
    logical_sector_size: int,
    physical_sector_size: int,
    update: ProgressCallback,
    sync: bool,
) -> tuple[int, int]:
    # pyvhdx.create is the function; the module comes from sys.modules.
    import importlib

    create_module = importlib.import_module("pyvhdx.create")

    if fmt is ImageFormat.VHDX:
        create_module.create_vhdx(
            tmp,
            size,
            disk_type=disk_type,
            block_size=block_size,
            logical_sector_size=logical_sector_size,
            physical_sector_size=physical_sector_size,
            overwrite=True,
        )
    else:
        create_vhd: Any = getattr(create_module, "create_vhd", None)
        if create_vhd is None:
            raise InvalidArgumentError("creating VHD images is not supported yet")
        kwargs: dict[str, Any] = {"disk_type": disk_type, "overwrite": True}
        if block_size is not None:
            kwargs["block_size"] = block_size
        create_vhd(tmp, size, **kwargs)
    stats = {"read": 0}
    written = 0
    done = 0
    with open_image(tmp, "r+") as out:
        handler: Any = out.handler
        if hasattr(handler, "bulk"):
            handler.bulk = True  # a temporary file: no journaling needed
        handler.source.sync_writes = False  # one fsync at the end, if any
        step = min(CHUNK, out.block_size or CHUNK)
        # A new image reads as zeros (dynamic: unallocated; fixed: a sparse data
        # area), so only the non-zero runs _read_ahead yields are written.
        for start, chunk, _ in _read_ahead(img, step, stats):
            out.write_at(start, chunk)
            written += len(chunk)
            update(start + len(chunk) - done)
            done = start + len(chunk)
        if img.virtual_size > done:
            update(img.virtual_size - done)
        out.close()  # writes the last metadata
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return stats["read"], written
