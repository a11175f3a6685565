"""Give back the space of blocks a dynamic disk no longer needs, as Hyper-V's
``Optimize-VHD`` does, in place and crash-safe (:mod:`pyvhdx.vhdx.compact`,
:mod:`pyvhdx.vhd.compact`).

Modes, each doing more than the one before:

- ``zero``: stored blocks that read as zeros are released and their space is
  given back to the host file system as holes (fallocate PUNCH_HOLE, where it
  can); the file is cut after the last block still in use (nothing moves).
- ``quick``: the same, and the blocks furthest out move into the holes, so the
  file ends after the space the data needs.
- ``full``: also releases blocks that hold only space the guest file system
  marks free (:mod:`pyvhdx.fsfree`: ext2/3/4); those ranges read as zeros
  afterwards, as after a TRIM. Data the file system uses never changes.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .constants import ImageFormat
from .errors import InvalidArgumentError
from .fsfree import free_ranges
from .image import DiskImage, open_image
from .newfile import SPACE_ERRNOS
from .source import punch_hole

__all__ = ["MODES", "CompactResult", "compact_image"]

MODES = ("full", "quick", "zero")
_READ = 8 << 20  # bytes read per step while looking for data in a block


@dataclass(frozen=True)
class CompactResult:
    """What :func:`compact_image` did (or, with ``dry_run``, would do)."""

    mode: str
    dry_run: bool
    file_size_before: int
    file_size_after: int
    blocks_released: int
    blocks_moved: int
    bytes_punched: int = 0  # released space left inside the file as holes (mode zero)

    @property
    def bytes_reclaimed(self) -> int:
        """Space the host file system gets back: the cut, and the holes punched."""
        return self.file_size_before - self.file_size_after + self.bytes_punched


class _Free:
    """Sorted, disjoint ``(offset, length)`` ranges of the disk that may read as zeros."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.starts = [s for s, _ in ranges]
        self.ends = [s + n for s, n in ranges]

    def used_parts(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` outside every free range."""
        out = []
        pos = start
        i = max(0, bisect.bisect_right(self.starts, start) - 1)
        while pos < end and i < len(self.starts):
            s, e = self.starts[i], self.ends[i]
            if e <= pos:
                i += 1
                continue
            if s >= end:
                break
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
            i += 1
        if pos < end:
            out.append((pos, end))
        return out


def _holds_data(h: Any, file_offset: int, parts: list[tuple[int, int]], base: int) -> bool:
    """True if a non-zero byte lies in ``parts`` (disk ranges of a block at ``base``)."""
    for s, e in parts:
        pos = s
        while pos < e:
            n = min(_READ, e - pos)
            raw = h.source.read_exact(file_offset + pos - base, n, "data block")
            if np.any(np.frombuffer(raw, np.uint8)):
                return True
            pos += n
    return False


def _releasable(img: DiskImage, free: _Free, progress: Callable[[int], None] | None) -> list[int]:
    """Stored blocks whose bytes are zero wherever the file system does not mark them free."""
    h: Any = img.handler
    bs = h.table.block_size
    size = img.get_size()
    out = []
    for first, codes in h.table.iter_chunks():
        for i in np.flatnonzero(codes >= 0).tolist():
            block = first + i
            base = block * bs
            end = min(base + bs, size)
            if not _holds_data(h, int(codes[i]), free.used_parts(base, end), base):
                out.append(block)
            if progress is not None:
                progress(end - base)
    return out


def compact_image(
    file: str | os.PathLike[str] | BinaryIO,
    *,
    mode: str = "full",
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> CompactResult:
    """Compact the dynamic VHDX or VHD ``file`` in place.

    Args:
        file: the image (a path, or an open binary file for tests).
        mode: ``"full"``, ``"quick"`` or ``"zero"`` (see the module doc).
        dry_run: open read-only and only tell what would be reclaimed.
        progress: called with the bytes scanned or moved since its last call.

    Raises:
        InvalidArgumentError: an unknown mode, or a raw image.
        UnsupportedFeatureError: a fixed or differencing disk.
        OSError: the disk is full (ENOSPC, EFBIG, EDQUOT): moving a block into a hole
            the host file system does not back takes space. The image reads as
            before; the message says how to go on.
    """
    try:
        return _compact(file, mode, dry_run, progress)
    except OSError as exc:
        if exc.errno not in SPACE_ERRNOS or not isinstance(file, (str, os.PathLike)):
            raise
        raise OSError(
            exc.errno,
            f"{os.strerror(exc.errno)} while compacting (moving blocks into holes takes "
            "space until the file is cut); it reads as before: free space, or run "
            "'pyvhdx compact --mode zero', which moves nothing",
            os.fspath(file),
        ) from exc


def _compact(
    file: str | os.PathLike[str] | BinaryIO,
    mode: str,
    dry_run: bool,
    progress: Callable[[int], None] | None,
) -> CompactResult:
    from .vhd import compact as vhd_compact
    from .vhdx import compact as vhdx_compact
    from .vhdx.file import VHDXFile

    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    with open_image(file, "r" if dry_run else "r+", resolve_parent=False) as img:
        if img.format is ImageFormat.RAW:
            raise InvalidArgumentError(f"{img.name} is a raw image: nothing to compact")
        h: Any = img.handler
        fmt: Any = vhdx_compact if isinstance(h, VHDXFile) else vhd_compact
        fmt.check_compactable(h)
        before = h.source.physical_size
        size = img.get_size()
        ranges = free_ranges(img.read_at, size, h.logical_sector_size) if mode == "full" else []
        released = _releasable(img, _Free(ranges), progress)
        move = mode != "zero"
        # the plan once: released blocks left out read as they will once released
        planned = fmt.plan(h, released, move=move)
        moves, end = planned[2], planned[3]
        spans = [(s, n) for s, n in _spans(h, released) if s < end] if not move else []
        if dry_run:
            after = min(before, end + (0 if isinstance(h, VHDXFile) else h.footer_size))
            punched = sum(n for _, n in spans)
            return CompactResult(mode, True, before, after, len(released), len(moves), punched)
        fmt.release(h, released)
        after = fmt.pack(h, planned, progress)
        punched = sum(n for s, n in spans if punch_hole(h.source.fd, s, n))
    return CompactResult(mode, False, before, after, len(released), len(moves), punched)


def _spans(h: Any, blocks: list[int]) -> list[tuple[int, int]]:
    """File ranges of ``blocks`` (a VHD block's sector bitmap included)."""
    bitmap = getattr(h, "bitmap_size", None) or 0
    bs, size = h.table.block_size, h.virtual_size
    return [(h.table.code(b) - bitmap, bitmap + min(bs, size - b * bs)) for b in blocks]
