"""Merge a differencing disk into its parent, as Hyper-V's Merge-VHD does.

Every range the child stores (its own data, and ranges it marks as zeros over
the parent) is written into the parent through the parent's crash-consistent
write path; ranges the child leaves to the parent are not read. Writing changes
the parent's DataWriteGuid, so the child no longer matches its parent afterwards
and is deleted (``keep_child`` keeps it, openable only with
``verify_parent=False``). A crash mid-merge leaves a parent that opens and reads
as a mix of old and merged ranges, each write old or new.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .constants import DiskType, RunKind
from .errors import InvalidArgumentError
from .image import open_image

__all__ = ["MergeResult", "merge_image"]

CHUNK = 4 << 20


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_image` did."""

    child: Path
    parent: Path
    bytes_merged: int
    child_deleted: bool


def merge_image(
    child: str | os.PathLike[str],
    *,
    parent: str | os.PathLike[str] | None = None,
    keep_child: bool = False,
    progress: Callable[[int], None] | None = None,
) -> MergeResult:
    """Merge ``child`` into its parent.

    Args:
        child: a differencing VHDX or VHD.
        parent: the parent, if not where the child's locators say.
        keep_child: do not delete the child afterwards.
        progress: called with the number of bytes merged so far.

    Raises:
        InvalidArgumentError: ``child`` is not a differencing disk.
        ParentError: the parent is missing or not the child's parent.
    """
    child_path = Path(child)
    with open_image(child_path, parent=parent) as chained:
        if chained.disk_type is not DiskType.DIFFERENCING:
            raise InvalidArgumentError(f"{child_path} is not a differencing disk")
        assert chained.parent is not None
        parent_path = Path(chained.parent.name)
    merged = 0
    with (
        open_image(child_path, resolve_parent=False) as src,
        open_image(parent_path, "r+") as dst,
    ):
        buf = bytearray(CHUNK)
        mv = memoryview(buf)
        zeros = bytes(CHUNK)
        for ext in src.extents():
            if ext.kind == RunKind.PARENT:
                continue
            pos, end = ext.start, ext.start + ext.length
            while pos < end:
                n = min(CHUNK, end - pos)
                if ext.kind == RunKind.DATA:
                    src.readinto_at(pos, mv[:n])
                    dst.write_at(pos, mv[:n])
                else:  # ZERO/UNMAPPED in a child hide the parent's data: store zeros
                    dst.write_at(pos, zeros[:n])
                pos += n
                merged += n
                if progress is not None:
                    progress(merged)
        dst.flush()
    deleted = False
    if not keep_child:
        child_path.unlink()
        deleted = True
    return MergeResult(child_path, parent_path, merged, deleted)
