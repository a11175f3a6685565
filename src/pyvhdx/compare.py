"""Compare the content of two images of any formats (``pyvhdx compare``).

:func:`find_difference` walks both images' allocation maps in step
(:func:`allocation_map`): where both read as zeros without being stored
(unallocated or ZERO blocks, holes of a raw or fixed VHD file) nothing is read;
where one side is such a run, the other side's bytes are read and checked to be
zeros; where both hold data, both are read and compared, in chunks of
:data:`CHUNK_SIZE` with numpy. Memory stays at two chunks whatever the disk
size, and two empty 64 TiB images compare without a single read.

Semantics follow ``qemu-img compare``: images of different virtual sizes are
equal when the common part is equal and the rest of the larger one reads as
zeros. Two differences: the offset reported is the exact first differing byte,
where qemu-img reports the start of the 512-byte sector holding it; and
``strict`` fails on a size difference or on a range stored (DATA) in one image
and not in the other, where qemu-img's strict mode compares its full block
status and so fails on almost any pair of different formats.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, Final, Literal, NamedTuple

import numpy as np

from .constants import DiskType, ImageFormat, RunKind
from .image import DiskImage, Extent, open_image
from .source import data_spans

__all__ = [
    "CHUNK_SIZE",
    "Allocation",
    "Difference",
    "allocation_map",
    "compare_images",
    "find_difference",
]

#: Bytes read per side and step when contents are compared.
CHUNK_SIZE: Final = 4 << 20

ImageArg = str | os.PathLike[str] | BinaryIO | DiskImage


@dataclasses.dataclass(frozen=True)
class Difference:
    """Where and why two images differ.

    ``reason`` is ``"content"`` (the bytes at ``offset`` differ), ``"size"``
    (strict mode: the virtual sizes differ; ``offset`` is the smaller size) or
    ``"allocation"`` (strict mode: ``offset`` starts a range stored in one image
    and not in the other).
    """

    offset: int
    reason: Literal["content", "size", "allocation"]


_STORED: Final = (RunKind.DATA, RunKind.PARENT)

# -- allocation ----------------------------------------------------------------------------


class Allocation(NamedTuple):
    """A run of the allocation map, resolved through the parent chain.

    ``depth`` is 0 for the image itself, 1 for its parent, and so on;
    ``filename`` names the image at that depth. ``kind`` is PARENT only where a
    differencing disk's parent is not open. ``hole`` marks DATA of a fixed VHD
    that is a hole in the file: stored, yet it reads as zeros.
    """

    start: int
    length: int
    kind: RunKind
    file_offset: int | None
    depth: int
    filename: str
    hole: bool = False

    @property
    def reads_zero(self) -> bool:
        """Known to read as zeros without reading (not stored, or a file hole)."""
        return self.hole or self.kind is RunKind.ZERO or self.kind is RunKind.UNMAPPED


def _is_linear(img: DiskImage) -> bool:
    """The virtual disk is stored as one run of the file (raw, fixed VHD)."""
    return img.format is ImageFormat.RAW or (
        img.format is ImageFormat.VHD and img.disk_type is DiskType.FIXED
    )


def _holes(fd: int, ext: Extent) -> Iterator[tuple[Extent, bool]]:
    """Split a DATA extent of a linear image by the file's holes (:func:`data_spans`).

    Yields ``(extent, is_hole)``; the extents keep the DATA kind and file offset.
    """
    assert ext.file_offset is not None
    delta = ext.start - ext.file_offset
    pos = ext.file_offset
    end = ext.file_offset + ext.length
    for begin, stop in data_spans(fd, pos, end):
        if begin > pos:
            yield Extent(pos + delta, begin - pos, RunKind.DATA, pos), True
        yield Extent(begin + delta, stop - begin, RunKind.DATA, begin), False
        pos = stop
    if pos < end:
        yield Extent(pos + delta, end - pos, RunKind.DATA, pos), True


def _own_extents(img: DiskImage, offset: int, length: int | None) -> Iterator[tuple[Extent, bool]]:
    """:meth:`DiskImage.extents` with file holes of a raw or fixed VHD image marked.

    A raw file has no metadata: its holes are UNMAPPED, as ``qemu-img map``
    reports them. A fixed VHD's holes stay DATA (the format stores them) and
    are marked as holes, which read as zeros.
    """
    fd = img.handler.source.fd
    seek = fd is not None and _is_linear(img)
    raw = img.format is ImageFormat.RAW
    for ext in img.extents(offset, length, merge_zero=True):
        if not (seek and ext.kind is RunKind.DATA):
            yield ext, False
            continue
        assert fd is not None
        for part, hole in _holes(fd, ext):
            if hole and raw:
                yield Extent(part.start, part.length, RunKind.UNMAPPED, None), False
            else:
                yield part, hole


def _resolve(img: DiskImage, offset: int, length: int | None, depth: int) -> Iterator[Allocation]:
    for ext, hole in _own_extents(img, offset, length):
        if ext.kind is RunKind.PARENT and img.parent is not None:
            yield from _resolve(img.parent, ext.start, ext.length, depth + 1)
        else:
            yield Allocation(
                ext.start, ext.length, ext.kind, ext.file_offset, depth, img.name, hole
            )


def _extends(pending: Allocation, run: Allocation) -> bool:
    """``run``, which starts where ``pending`` ends, is part of the same map entry.
    (ZERO and UNMAPPED runs of one depth are never neighbours here:
    :meth:`DiskImage.extents` with ``merge_zero`` has merged them.)"""
    if run.depth != pending.depth or run.hole != pending.hole or run.kind is not pending.kind:
        return False
    return run.kind is not RunKind.DATA or (
        pending.file_offset is not None and run.file_offset == pending.file_offset + pending.length
    )


def allocation_map(
    img: DiskImage, offset: int = 0, length: int | None = None
) -> Iterator[Allocation]:
    """The allocation map of ``[offset, offset + length)``, streamed as merged runs.

    Built on :meth:`DiskImage.extents` (window by window, so memory stays
    bounded, and merged with numpy, so the cost is per run, not per block),
    with the refinements ``qemu-img map`` makes too: ZERO and UNMAPPED runs
    next to each other at one depth are one run (ZERO if any part of it is),
    since both read as zeros; the holes of a raw or fixed VHD file
    (``SEEK_DATA``/``SEEK_HOLE``) read as zeros (UNMAPPED in a raw file,
    ``hole`` DATA in a fixed VHD); and the ranges a differencing disk leaves to
    its parent are the parent's runs, one ``depth`` further down.
    """
    pending: Allocation | None = None
    for run in _resolve(img, offset, length, 0):
        if pending is not None and _extends(pending, run):
            pending = pending._replace(length=pending.length + run.length)
            continue
        if pending is not None:
            yield pending
        pending = run
    if pending is not None:
        yield pending


# -- reading ------------------------------------------------------------------------------


class _Reader:
    """Chunked reads of one image into a reused buffer."""

    def __init__(self, img: DiskImage, chunk_size: int) -> None:
        self.img = img
        self.buf = bytearray(chunk_size)
        self.view = memoryview(self.buf)

    def read(self, offset: int, length: int) -> np.ndarray:
        mv = self.view[:length]
        n = self.img.readinto_at(offset, mv)
        if n != length:  # pragma: no cover - readinto_at fills fully inside the disk
            raise OSError(f"short read at {offset:#x}: {n} of {length} bytes")
        return np.frombuffer(mv, dtype=np.uint8)


def _first_nonzero(reader: _Reader, start: int, end: int, chunk: int) -> int | None:
    pos = start
    while pos < end:
        n = min(chunk, end - pos)
        arr = reader.read(pos, n)
        wide = arr[: n - n % 8].view(np.uint64)
        if wide.any() or arr[n - n % 8 :].any():
            return pos + int(np.flatnonzero(arr)[0])
        pos += n
    return None


def _first_mismatch(ra: _Reader, rb: _Reader, start: int, end: int, chunk: int) -> int | None:
    pos = start
    while pos < end:
        n = min(chunk, end - pos)
        a = ra.read(pos, n)
        b = rb.read(pos, n)
        w = n - n % 8
        if (a[:w].view(np.uint64) != b[:w].view(np.uint64)).any() or (a[w:] != b[w:]).any():
            return pos + int(np.flatnonzero(a != b)[0])
        pos += n
    return None


# -- comparing ----------------------------------------------------------------------------


def _walk(a: DiskImage, b: DiskImage, end: int, strict: bool, chunk: int) -> Difference | None:
    """Compare ``[0, end)`` of two images, extent by extent in step."""
    ita = allocation_map(a, 0, end)
    itb = allocation_map(b, 0, end)
    ra = rb = None
    ea = next(ita, None)
    eb = next(itb, None)
    pos = 0
    while pos < end and ea is not None and eb is not None:
        stop = min(ea.start + ea.length, eb.start + eb.length)
        za = ea.reads_zero
        zb = eb.reads_zero
        if strict and (ea.kind in _STORED) != (eb.kind in _STORED):
            return Difference(pos, "allocation")
        found: int | None = None
        if za and not zb:
            rb = rb or _Reader(b, chunk)
            found = _first_nonzero(rb, pos, stop, chunk)
        elif zb and not za:
            ra = ra or _Reader(a, chunk)
            found = _first_nonzero(ra, pos, stop, chunk)
        elif not za:
            ra = ra or _Reader(a, chunk)
            rb = rb or _Reader(b, chunk)
            found = _first_mismatch(ra, rb, pos, stop, chunk)
        if found is not None:
            return Difference(found, "content")
        pos = stop
        if ea.start + ea.length == stop:
            ea = next(ita, None)
        if eb.start + eb.length == stop:
            eb = next(itb, None)
    return None


def _tail(img: DiskImage, start: int, chunk: int) -> Difference | None:
    """The part of the larger image past the smaller one must read as zeros."""
    reader: _Reader | None = None
    for ext in allocation_map(img, start):
        if ext.reads_zero:
            continue
        reader = reader or _Reader(img, chunk)
        found = _first_nonzero(reader, ext.start, ext.start + ext.length, chunk)
        if found is not None:
            return Difference(found, "content")
    return None


def _open(image: ImageArg, fmt: str | ImageFormat | None) -> tuple[DiskImage, bool]:
    if isinstance(image, DiskImage):
        return image, False
    return open_image(image, "r", format=fmt), True


def find_difference(
    a: ImageArg,
    b: ImageArg,
    *,
    strict: bool = False,
    format_a: str | ImageFormat | None = None,
    format_b: str | ImageFormat | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Difference | None:
    """The first difference between two images' virtual contents, or None.

    Args:
        a, b: open images, paths or binary file objects (opened read-only and
            closed again; an open :class:`DiskImage` is left open).
        strict: differing virtual sizes, or a range stored in one image but not
            the other, are differences too (``qemu-img compare -s``).
        format_a, format_b: force the formats (``-f``/``-F``); detected if None.
        chunk_size: bytes read per image and step.

    Raises:
        PyvhdxError: an image cannot be opened or read.
        OSError: a file cannot be opened or read.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    img_a, own_a = _open(a, format_a)
    try:
        img_b, own_b = _open(b, format_b)
        try:
            size_a, size_b = img_a.virtual_size, img_b.virtual_size
            common = min(size_a, size_b)
            if strict and size_a != size_b:
                return Difference(common, "size")
            diff = _walk(img_a, img_b, common, strict, chunk_size)
            if diff is None and size_a != size_b:
                diff = _tail(img_a if size_a > size_b else img_b, common, chunk_size)
            return diff
        finally:
            if own_b:
                img_b.close()
    finally:
        if own_a:
            img_a.close()


def compare_images(a: ImageArg, b: ImageArg, **options: Any) -> int | None:
    """The offset of the first differing byte of two images' contents, or None if equal.

    The arguments are :func:`find_difference`'s (``strict``, ``format_a``,
    ``format_b``, ``chunk_size``); with ``strict``, the offset of a size or
    allocation difference is returned too.
    """
    diff = find_difference(a, b, **options)
    return None if diff is None else diff.offset
