"""Grow or shrink a virtual disk in place, as Hyper-V's ``Resize-VHD`` does.

VHDX grows and shrinks (:mod:`pyvhdx.vhdx.resize`, through the log); VHD only
grows (:mod:`pyvhdx.vhd.resize`), as with Hyper-V. A shrink never goes below
:func:`minimum_size`: the end of the last partition (MBR or GPT, the GPT's
backup header included) or, on a disk without a partition table, its last
non-zero byte. Partition tables are never rewritten: a grown disk
keeps its GPT backup header where it was, for the guest's tools to move.

An image with differencing children beside it is refused unless ``force``: a
child made over the old disk no longer matches it (a documented Hyper-V
pitfall). A dynamic VHD's resize is recorded beside it (``IMAGE.pyvhdx-resize``,
:mod:`pyvhdx.journal`) while it runs: its two footer copies change one after the
other, and the record tells ``check`` why they may differ after a crash.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .constants import DiskType, ImageFormat, RunKind
from .create import size_argument
from .errors import InvalidArgumentError, PyvhdxError
from .image import DiskImage, open_image
from .journal import remove_resize_record, write_resize_record
from .newfile import SPACE_ERRNOS
from .partitions import read_partition_table

__all__ = ["ResizeResult", "minimum_size", "resize_image"]

_SCAN = 4 << 20  # bytes read per step when looking for the last non-zero byte


@dataclass(frozen=True)
class ResizeResult:
    """What :func:`resize_image` did (sizes in bytes)."""

    old_size: int
    new_size: int
    minimum_size: int | None  # computed when shrinking


def minimum_size(image: DiskImage) -> int:
    """The smallest size ``image`` can be shrunk to without losing data (Get-VHD's
    MinimumSize): the end of its partitions, else of its last non-zero byte; rounded
    up to a whole logical sector."""
    size = image.get_size()
    ss = image.handler.logical_sector_size
    table = read_partition_table(image.read_at, size, ss)
    end = table.end if table is not None else _data_end(image)
    return max(ss, -(-end // ss) * ss)


def _data_end(image: DiskImage) -> int:
    """The end of the last non-zero byte, searched backwards through the stored runs."""
    runs = [e for e in image.extents() if e.kind in (RunKind.DATA, RunKind.PARENT)]
    for ext in reversed(runs):
        stop = ext.start + ext.length
        while stop > ext.start:
            n = min(_SCAN, stop - ext.start)
            chunk = np.frombuffer(image.read_at(stop - n, n), np.uint8)
            hits = np.flatnonzero(chunk)
            if hits.size:
                return stop - n + int(hits[-1]) + 1
            stop -= n
    return 0


def resize_image(
    file: str | os.PathLike[str] | BinaryIO,
    size: int | str | None = None,
    *,
    shrink: bool = False,
    to_minimum: bool = False,
    force: bool = False,
) -> ResizeResult:
    """Give the VHDX or VHD ``file`` the virtual size ``size`` (or its minimum size).

    Args:
        file: the image (a path, or an open binary file for tests).
        size: the new virtual size in bytes (or a string such as ``"64G"``); None
            with ``to_minimum``.
        shrink: allow a smaller size (a VHDX only; never below the minimum).
        to_minimum: shrink to :func:`minimum_size` (implies ``shrink``).
        force: resize although differencing disks beside it have it as parent.

    Raises:
        InvalidArgumentError: a size the format cannot have, a smaller size without
            ``shrink``, one below the minimum, or children beside the image.
        UnsupportedFeatureError: a differencing disk, or a VHD layout pyvhdx
            cannot grow in place.
        OSError: the disk is full (ENOSPC, EFBIG, EDQUOT); the image reads as
            the disk of before or of after (the message says which size), and
            the same resize again finishes it once there is space.
    """
    try:
        return _resize(file, size, shrink=shrink, to_minimum=to_minimum, force=force)
    except OSError as exc:
        if exc.errno not in SPACE_ERRNOS or not isinstance(file, (str, os.PathLike)):
            raise
        raise _full_disk(exc.errno, file) from exc


def _full_disk(code: int, path: str | os.PathLike[str]) -> OSError:
    """The error of a resize the disk was too full for: what the image holds now and
    the way forward (DESIGN.md "Writes": old state or new, and a way on)."""
    try:
        with open_image(path, resolve_parent=False) as img:
            now = f"it reads as a {img.get_size()}-byte disk"
    except (PyvhdxError, OSError) as err:  # not expected: a write before the commit is unseen
        now = f"it does not open ({err}): run 'pyvhdx check' on it"
    return OSError(
        code,
        f"{os.strerror(code)} while resizing; {now}: free space, then run the resize again",
        os.fspath(path),
    )


def _resize(
    file: str | os.PathLike[str] | BinaryIO,
    size: int | str | None,
    *,
    shrink: bool,
    to_minimum: bool,
    force: bool,
) -> ResizeResult:
    from .vhd import resize as vhd_resize
    from .vhdx import resize as vhdx_resize
    from .vhdx.file import VHDXFile

    if (size is None) == (not to_minimum):
        raise InvalidArgumentError("give either a size or to_minimum")
    size = None if size is None else size_argument(size)
    with open_image(file, "r+", resolve_parent=False) as img:
        if img.format is ImageFormat.RAW:
            raise InvalidArgumentError(f"{img.name} is a raw image: resize it with truncate")
        h: Any = img.handler
        fmt = vhdx_resize if isinstance(h, VHDXFile) else vhd_resize
        old = img.get_size()
        floor = minimum_size(img) if to_minimum else None
        size = floor if size is None else size
        assert size is not None
        fmt.check_new_size(h, size)
        if size < old:
            if not (shrink or to_minimum):
                raise InvalidArgumentError(
                    f"{size} is smaller than the disk ({old} bytes): shrinking needs "
                    "shrink=True (--shrink)"
                )
            floor = minimum_size(img) if floor is None else floor
            if size < floor:
                raise InvalidArgumentError(
                    f"{size} is below the minimum size {floor} of {img.name} (the end of its "
                    "partitions or of its data)"
                )
        by_path = isinstance(file, (str, os.PathLike))
        if not force and by_path:
            _refuse_children(img)
        # A dynamic VHD's footer copies change one after the other: the record
        # tells check (and the next resize) why they may differ.
        record = by_path and fmt is vhd_resize and h.disk_type is DiskType.DYNAMIC
        if record and size != old:
            write_resize_record(img.name, old, size)
        fmt.resize(h, size)
    if record:
        remove_resize_record(img.name)
    return ResizeResult(old, size, floor)


def _refuse_children(img: DiskImage) -> None:
    from .merge import find_children

    children = find_children(img)
    if children:
        names = ", ".join(p.name for p in children)
        raise InvalidArgumentError(
            f"{Path(img.name).name} is the parent of {names}: resizing it would break "
            "them (merge them first, or force)"
        )
