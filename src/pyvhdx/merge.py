"""Merge a differencing disk into its parent, as Hyper-V's Merge-VHD does.

Every range the child stores (its own data, and ranges it marks as zeros over
the parent) is written into the parent through the parent's crash-consistent
write path; ranges the child leaves to the parent are not read.

Crash safety (issue "Never lose a user's disk"): before the first write into
the parent the merge is recorded beside the child (:mod:`pyvhdx.journal`), with
the DataWriteGuid the parent is about to get. While the record is there the
chain opens and reads as before the merge, ``info`` and ``check`` report the
merge, and calling :func:`merge_image` again resumes it (each write is
idempotent). The child's own children in its folder are re-parented onto the
parent (:func:`pyvhdx.setparent.set_parent`) before the child is deleted; the
record goes last.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .constants import DiskType, ImageFormat, RunKind
from .errors import ImageLockedError, InvalidArgumentError, PyvhdxError
from .image import DiskImage, open_image
from .journal import MergeRecord, read_record, remove_record, write_record
from .progress import Progress, reporting
from .suffix import IMAGE_SUFFIXES

__all__ = ["MergeResult", "find_children", "merge_chain", "merge_image"]

CHUNK = 4 << 20


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_image` did."""

    child: Path
    parent: Path
    bytes_merged: int
    child_deleted: bool
    reparented: tuple[Path, ...] = ()
    resumed: bool = False


def find_children(image: DiskImage, *, exclude: tuple[Path, ...] = ()) -> list[Path]:
    """Differencing disks beside ``image`` whose parent it is (by locator and identity).

    Only ``image``'s own folder is searched (where pyvhdx itself looks for a
    parent). A file there that is in use by a writer stops the search with
    :class:`~pyvhdx.errors.ImageLockedError`: a disk being written cannot be
    re-parented safely.
    """
    from .chain import candidate_paths

    here = Path(os.path.realpath(image.name))
    skip = {here, *(Path(os.path.realpath(p)) for p in exclude)}
    found: list[Path] = []
    for entry in sorted(os.scandir(here.parent), key=lambda e: e.name):
        if not entry.name.lower().endswith(tuple(IMAGE_SUFFIXES)) or not entry.is_file():
            continue
        path = Path(os.path.realpath(entry.path))
        if path in skip:
            continue
        try:
            other = open_image(path, resolve_parent=False)
        except ImageLockedError:
            raise
        except PyvhdxError:
            continue
        except OSError:
            continue
        with other:
            h = other.handler
            if other.disk_type is not DiskType.DIFFERENCING or other.format is not image.format:
                continue
            if here not in candidate_paths(path.parent, h.parent_locations()):
                continue
            if h.parent_identity_matches(image.handler)[0]:
                found.append(path)
    return found


def merge_image(
    child: str | os.PathLike[str],
    *,
    parent: str | os.PathLike[str] | None = None,
    keep_child: bool = False,
    progress: Progress = None,
    reparent: bool = True,
) -> MergeResult:
    """Merge ``child`` into its parent, or finish an interrupted merge of it.

    Args:
        child: a differencing VHDX or VHD.
        parent: the parent, if not where the child's locators say.
        keep_child: do not delete the child afterwards (it then no longer
            matches a VHDX parent, whose DataWriteGuid changed).
        reparent: point the child's own children at the parent (False: leave
            them alone, as :func:`pyvhdx.diff` deltas applied to a copy want).
        progress: called with the bytes merged since its last call; True for a bar
            on stderr (:mod:`pyvhdx.progress`).

    Returns:
        What was merged; ``reparented`` lists the child's children (in its
        folder) that now point at the parent.

    Raises:
        InvalidArgumentError: ``child`` is not a differencing disk, or a child of
            it could not be re-parented (checked before anything is written).
        ParentError: the parent is missing or not the child's parent.
        OSError: writing the parent failed (a full disk): the merge is recorded
            and resumes from the start when called again.
    """
    child_path = Path(child)
    # the record lives beside the file itself, as the reader looks (realpath, not
    # Path.resolve: a loop of symbolic links raises RuntimeError there before Python 3.13)
    real = Path(os.path.realpath(child_path))
    record = read_record(real)
    if record is not None and not real.exists():
        # stopped between deleting the child and its record: the merge is done
        remove_record(real)
        return MergeResult(child_path, record.parent_path(real), 0, True, (), True)
    with open_image(child_path, parent=parent) as chained:
        if chained.disk_type is not DiskType.DIFFERENCING:
            raise InvalidArgumentError(f"{child_path} is not a differencing disk")
        assert chained.parent is not None
        parent_path = Path(chained.parent.name)
        parent_now = chained.parent.handler.identity_as_parent()
        fmt = chained.format
        children = find_children(chained, exclude=(parent_path,)) if reparent else []
    resumed = record is not None and record.parent_path(real) == Path(os.path.realpath(parent_path))
    if record is None or not resumed:
        after = str(uuid.uuid4()) if fmt is ImageFormat.VHDX else parent_now
        record = MergeRecord(
            child=real.name,
            parent=os.path.relpath(os.path.realpath(parent_path), real.parent),
            format=fmt.value,
            parent_before=parent_now,
            parent_after=after,
            children=tuple(p.name for p in children),
        )
        _check_reparent(children, parent_path)
        fresh = True
    else:
        fresh = False
        names = set(record.children) | {p.name for p in children}
        children = [real.parent / n for n in sorted(names)]
        children = [p for p in children if p.exists()]

    def start() -> None:  # both images open (and locked): record before the first write
        if fresh:
            write_record(real, record)

    merged = _copy(child_path, parent_path, record, start, progress)
    from .setparent import set_parent

    reparented = []
    for grandchild in children:
        set_parent(grandchild, parent_path, ignore_id_mismatch=True)
        reparented.append(grandchild)
    deleted = False
    if not keep_child:
        child_path.unlink(missing_ok=True)
        deleted = True
    remove_record(real)
    return MergeResult(child_path, parent_path, merged, deleted, tuple(reparented), resumed)


def merge_chain(
    child: str | os.PathLike[str],
    into: str | os.PathLike[str],
    *,
    progress: Progress = None,
) -> list[MergeResult]:
    """Merge ``child`` and every disk between it and its ancestor ``into`` into ``into``
    (as ``Merge-VHD -DestinationPath``), or finish such a merge that was interrupted.

    The disk just above ``into`` is merged first, its child re-parented onto
    ``into`` (:func:`merge_image`), and so on up to ``child``: after each step the
    chain is whole and one disk shorter, so calling this again resumes it. The
    merged disks are deleted, ``child`` last.

    Raises:
        InvalidArgumentError: ``into`` is not an ancestor of ``child``, or a disk of
            the chain is not beside its parent (its child could not be re-parented).
        ParentError: the chain is broken.
    """
    target = Path(os.path.realpath(into))
    results: list[MergeResult] = []
    record = read_record(Path(os.path.realpath(child)))
    if record is not None:  # the last step (the child itself) was interrupted
        results.append(merge_image(child, progress=progress))
        return results
    while True:
        chain = _chain_paths(Path(child))
        if target not in chain[1:]:
            if results:
                return results
            raise InvalidArgumentError(f"{into} is not an ancestor of {child}")
        k = chain.index(target)
        top = chain[k - 1]  # the disk just above the ancestor
        if k > 1 and chain[k - 2].parent != top.parent:
            raise InvalidArgumentError(
                f"{chain[k - 2]} is not in the folder of its parent {top.name}: it could not "
                "be re-parented when that is merged"
            )
        results.append(merge_image(top, progress=progress))
        if top == chain[0]:
            return results


def _chain_paths(child: Path) -> list[Path]:
    """The resolved paths of ``child`` and its ancestors, nearest first."""
    with open_image(child) as img:
        paths = [Path(os.path.realpath(img.name))]
        cur = img.parent
        while cur is not None:
            paths.append(Path(os.path.realpath(cur.name)))
            cur = cur.parent
    return paths


def _check_reparent(children: list[Path], parent: Path) -> None:
    """Refuse before any write if a child could not be pointed at ``parent``."""
    from .setparent import vhd_locator_paths
    from .vhd import VHDFile

    for path in children:
        with open_image(path, resolve_parent=False) as img:
            if isinstance(img.handler, VHDFile):  # VHDX: the locator can move in its region
                img.handler.check_parent_paths(vhd_locator_paths(path, parent))


def _copy(
    child: Path,
    parent: Path,
    record: MergeRecord,
    start: Callable[[], None],
    progress: Progress,
) -> int:
    merged = 0
    with (
        open_image(child, resolve_parent=False) as src,
        open_image(parent, "r+") as dst,
    ):
        runs = [e for e in src.extents() if e.kind != RunKind.PARENT]
        total = sum(e.length for e in runs)
        start()
        if record.format == ImageFormat.VHDX.value:
            dst.handler.next_data_write_guid = uuid.UUID(record.parent_after)  # type: ignore[attr-defined]
        buf = bytearray(CHUNK)
        mv = memoryview(buf)
        zeros = bytes(CHUNK)
        try:
            with reporting(progress, total) as update:
                for ext in runs:
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
                        update(n)
            dst.flush()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise OSError(
                    exc.errno,
                    f"{os.strerror(exc.errno)} while merging {child.name} into it; the "
                    f"merge is recorded: free space, then run 'pyvhdx merge {child}' to finish",
                    str(parent),
                ) from exc
            raise
    return merged
