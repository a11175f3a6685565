"""Convert a disk image between raw, VHD and VHDX.

Sparse by design: the source's allocation map (and SEEK_DATA/SEEK_HOLE for a raw
source) says what to read; unallocated ranges are never read, all-zero chunks are
not written into a dynamic destination, and a raw destination gets holes, not
zeros. The destination is built under a temporary name in its own directory and
renamed into place only when complete (:mod:`pyvhdx.newfile`), so an error, a
full disk, Ctrl-C or a kill never leaves a half-written file under the
destination name. The one exception is raw output onto a block device (with
``force``): it is written in place, every byte of the virtual disk, zeros too.
Character devices, FIFOs, sockets and directories are refused. Memory stays
bounded: two copy buffers per reader thread, and the allocation map is walked
window by window. Reads run in worker threads, each on its own view of the
source, while the calling thread scans for zeros and writes (:mod:`pyvhdx.transfer`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .constants import DiskType, ImageFormat
from .errors import InvalidArgumentError
from .image import DiskImage, open_image
from .newfile import check_destination, new_file
from .progress import Progress, ProgressCallback, reporting
from .remote import is_url
from .suffix import format_from_suffix
from .transfer import CHUNK, ConvertResult, data_ranges, destination_sector_sizes, read_ahead

__all__ = ["ConvertResult", "convert_image", "data_ranges"]

_DEVICE_HINT = "only raw output (-O raw, format='raw') can be written onto a device"


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """``a`` and ``b`` are one file (or one block device under two names)."""
    # realpath, not Path.resolve: a loop of symbolic links raised RuntimeError (Python < 3.13)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if stat.S_ISBLK(sa.st_mode) and stat.S_ISBLK(sb.st_mode):
        return sa.st_rdev == sb.st_rdev
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def convert_image(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    format: ImageFormat | str | None = None,
    disk_type: DiskType | str = DiskType.DYNAMIC,
    block_size: int | None = None,
    logical_sector_size: int | None = None,
    physical_sector_size: int | None = None,
    src_format: ImageFormat | str | None = None,
    force: bool = False,
    progress: Progress = None,
    sync: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    source_options: Mapping[str, Any] | None = None,
) -> ConvertResult:
    """Convert ``src`` into a new image ``dst``.

    Args:
        src: the source image (format detected by content unless ``src_format``).
        dst: the destination path; its format comes from ``format`` or its name
            (``.vhdx``, ``.vhd``, else raw).
        disk_type: ``"dynamic"`` or ``"fixed"`` (ignored for raw).
        block_size: destination block size (VHDX default 32 MiB, VHD 2 MiB).
        logical_sector_size, physical_sector_size: VHDX sector sizes; default: the
            source's (a VHD or raw source: 512 and 4096). A VHD holds 512-byte
            sectors only: a source with 4096-byte logical sectors gives a warning
            (its partition table counts 4096-byte sectors).
        src_format: force the source format.
        force: replace an existing destination (a regular file; with raw
            output also a block device, written in place, which must hold
            the whole virtual disk).
        progress: a callable given the bytes processed since its last call, True
            for a bar on stderr (:mod:`pyvhdx.progress`), None or False for none.
        sync: fsync the new image before it is renamed into place (False, as
            ``qemu-img convert`` with its default cache mode, leaves it to the OS).
        storage_options: fsspec's options for a URL source or destination. A URL
            destination (``az://container/name.vhd``) is an Azure-ready fixed VHD
            page blob (:mod:`pyvhdx.azure`; ``disk_type`` and ``block_size`` do
            not apply).
        source_options: more keyword arguments of :func:`pyvhdx.open` for the source
            (``parent``, ``salvage``, ``allow_missing_parent``, ``force_share``,
            ``strict``).

    Raises:
        FileExistsError: ``dst`` exists and ``force`` is false.
        DestinationError: ``dst`` is a character device, FIFO, socket or
            directory, a block device without raw output, or a block device
            smaller than the virtual disk (an InvalidArgumentError).
        InvalidArgumentError: parameters the destination format cannot hold.
        PyvhdxError: the source is malformed.
        OSError: the disk is full (ENOSPC, EFBIG, EDQUOT; its filename is
            ``dst``); the destination is left as it was.
    """
    if is_url(dst):  # object storage: an Azure page blob
        from .azure import convert_to_azure

        given = (format, src_format, logical_sector_size, force, progress, storage_options)
        return convert_to_azure(src, str(dst), *given, source_options=source_options)
    dst_path = Path(dst)
    fmt = ImageFormat(format) if format is not None else format_from_suffix(dst_path)
    fmt = ImageFormat.RAW if fmt is None else fmt
    disk_type = DiskType(disk_type)
    if disk_type is DiskType.DIFFERENCING:
        raise InvalidArgumentError("convert makes standalone images: fixed or dynamic")
    check_destination(  # at once, before the source is read
        dst_path,
        overwrite=force,
        option="force",
        allow_block_device=fmt is ImageFormat.RAW,
        block_device_hint=_DEVICE_HINT,
    )
    if _same_file(src, dst_path):
        raise InvalidArgumentError("source and destination are the same file")

    def opener() -> DiskImage:  # one more view of the source, for a reader thread
        return open_image(
            src, format=src_format, storage_options=storage_options, **(source_options or {})
        )

    with opener() as img:
        size = img.virtual_size
        logical_sector_size, physical_sector_size = destination_sector_sizes(
            img, fmt, logical_sector_size, physical_sector_size
        )
        # VHD and VHDX sizes are whole sectors: round up, the tail reads as zeros.
        sector = logical_sector_size if fmt is ImageFormat.VHDX else 512
        out_size = size if fmt is ImageFormat.RAW else -(-size // sector) * sector
        with (
            reporting(progress, size) as update,
            new_file(
                dst_path,
                overwrite=force,
                sync=sync,
                option="force",
                allow_block_device=fmt is ImageFormat.RAW,
                block_device_hint=_DEVICE_HINT,
                size=out_size,
            ) as out,
        ):
            if fmt is ImageFormat.RAW:
                counts = _to_raw(img, out.fd, update, opener, dense=out.in_place)
            else:
                counts = _to_image(
                    img,
                    out.path,
                    fmt,
                    out_size,
                    disk_type,
                    block_size,
                    logical_sector_size,
                    physical_sector_size,
                    update,
                    opener,
                )
    return ConvertResult(dst_path, fmt, disk_type, out_size, *counts)


def _write_zeros(fd: int, start: int, end: int) -> int:
    """Write zeros over ``[start, end)`` of ``fd``; the count written."""
    zeros = bytes(min(CHUNK, max(0, end - start)))
    pos = start
    while pos < end:
        pos += os.pwrite(fd, memoryview(zeros)[: min(len(zeros), end - pos)], pos)
    return max(0, end - start)


def _to_raw(
    img: DiskImage,
    fd: int,
    update: ProgressCallback,
    opener: Callable[[], DiskImage] | None,
    *,
    dense: bool = False,
) -> tuple[int, int]:
    """Write ``img``'s virtual disk into the empty file ``fd``; ``dense`` (a block
    device, which holds old data and has no holes): the zeros too, no truncate."""
    size = img.virtual_size
    stats = {"read": 0}
    written = 0
    done = 0
    # Data goes in ascending order, extending the file; the skipped ranges
    # stay holes and the final truncate sets the length.
    for start, chunk, _ in read_ahead(img, CHUNK, stats, opener):
        if dense:
            written += _write_zeros(fd, done, start)
        n = len(chunk)
        pos = 0
        while pos < n:
            pos += os.pwrite(fd, chunk[pos:], start + pos)
        written += n
        update(start + n - done)
        done = start + n
    if dense:
        written += _write_zeros(fd, done, size)
    else:
        os.ftruncate(fd, size)
    if size > done:
        update(size - done)
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
    opener: Callable[[], DiskImage] | None,
) -> tuple[int, int]:
    from .create import create_vhd, create_vhdx  # not "from . import create": the function

    if fmt is ImageFormat.VHDX:
        create_vhdx(
            tmp,
            size,
            disk_type=disk_type,
            block_size=block_size,
            logical_sector_size=logical_sector_size,
            physical_sector_size=physical_sector_size,
            overwrite=True,
        )
    else:
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
        # area), so only the non-zero runs read_ahead yields are written.
        for start, chunk, _ in read_ahead(img, step, stats, opener):
            out.write_at(start, chunk)
            written += len(chunk)
            update(start + len(chunk) - done)
            done = start + len(chunk)
        if img.virtual_size > done:
            update(img.virtual_size - done)
        out.close()  # writes the last metadata (new_file syncs the file)
    return stats["read"], written
